//! cuBLASLt for the GEMMs: one handle, workspace and matmul descriptor per stream, and per shape (and operand
//! alignment and type) the layouts and the heuristic's candidate algorithms; for shapes of up to
//! `LT_TIMED_MAX_ROWS` rows the candidates are timed on first use and the fastest kept (issue 18 item 5).
#![allow(unsafe_code)]
use super::raw;
use cudarc::cublas::sys as blas;
use cudarc::cublaslt::{result as ltr, sys as lt};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// cuBLASLt workspace, allocated once per backend (NVIDIA's recommendation for Hopper; enough for Ampere).
const LT_WORKSPACE_BYTES: usize = 32 << 20;

/// A cuBLASLt handle, its workspace, the shared matmul descriptor and the per-shape plans.
pub(super) struct Lt {
    /// Plans by shape and operand alignment; `None` records a shape cuBLASLt has no algorithm for.
    plans: Mutex<HashMap<PlanKey, Option<Plan>>>,
    /// Whether shapes of up to `LT_TIMED_MAX_ROWS` rows are timed (`TL_CUBLASLT_TIMING` is not `0`).
    timing: bool,
    desc: LtDesc,
    workspace: CudaSlice<u8>,
    handle: LtHandle,
}

/// (n, m, k, alignment of x, w, out in bytes, operand type).
type PlanKey = (usize, usize, usize, u32, u32, u32, Operands);

/// The type of a GEMM's x and w: bf16 (`gemm_bf16`) or E4M3 (`fp8::gemm_fp8`); the output is f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Operands {
    Bf16,
    E4m3,
}

/// An owned cuBLASLt object: destroyed once, on drop (errors while destroying are ignored).
macro_rules! lt_owned {
    ($name:ident, $ty:ty, $destroy:path) => {
        struct $name($ty);
        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: the value came from the matching create call and is destroyed only here.
                let _ = unsafe { $destroy(self.0) };
            }
        }
    };
}
// `Lt` declares its plans and descriptor before the handle, so they are destroyed first.
lt_owned!(LtHandle, lt::cublasLtHandle_t, ltr::destroy_handle);
lt_owned!(LtDesc, lt::cublasLtMatmulDesc_t, ltr::destroy_matmul_desc);
lt_owned!(LtLayout, lt::cublasLtMatrixLayout_t, ltr::destroy_matrix_layout);
lt_owned!(LtPref, lt::cublasLtMatmulPreference_t, ltr::destroy_matmul_pref);

/// Candidates asked of the heuristic per shape.
const LT_CANDIDATES: usize = 8;

/// Shapes of up to this many rows (activation rows n: decode and small batches, where the GEMMs stream their
/// weights and the heuristic's first split-K choice is the one most often off) have their candidates timed once;
/// larger ones keep the heuristic's first. Each new such shape costs one pause of its candidates' runs.
const LT_TIMED_MAX_ROWS: usize = 256;

/// Timed runs per candidate (after one untimed run).
const LT_TIMING_REPS: usize = 3;

/// The environment variable that turns the timing off (value `0`): the heuristic's first algorithm everywhere.
const LT_TIMING_ENV: &str = "TL_CUBLASLT_TIMING";

/// Shapes whose candidates were timed in this process, and of those the ones where a candidate other than the
/// heuristic's first was faster.
static TIMED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// (shapes timed, shapes where a candidate other than the heuristic's first was faster), all GPUs of the process.
pub fn timing_stats() -> (u64, u64) {
    (TIMED[0].load(Ordering::Relaxed), TIMED[1].load(Ordering::Relaxed))
}

/// The layouts of one shape and the heuristic's candidate algorithms for them; `algos[0]` is the one used.
struct Plan {
    a: LtLayout,
    b: LtLayout,
    d: LtLayout,
    algos: Vec<lt::cublasLtMatmulAlgo_t>,
    /// Whether the candidates were timed (or timing was skipped for this shape) already.
    timed: bool,
}

// SAFETY: cuBLASLt handles and descriptors are plain host objects, usable from any thread; every use here is
// serialised by the plan mutex or by the backend's single stream.
unsafe impl Send for LtHandle {}
unsafe impl Sync for LtHandle {}
unsafe impl Send for LtDesc {}
unsafe impl Sync for LtDesc {}
unsafe impl Send for LtLayout {}

fn lt_err(what: &str) -> impl Fn(ltr::CublasError) -> String + '_ {
    move |e| format!("cuBLASLt {what}: {e}")
}

/// Largest power of two (at most 256) dividing a device address: the alignment the heuristic may assume.
fn alignment(ptr: u64) -> u32 {
    if ptr == 0 { 256 } else { 1u32 << ptr.trailing_zeros().min(8) }
}

impl Lt {
    pub(super) fn new(st: &Arc<CudaStream>) -> std::result::Result<Lt, String> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { lt::is_culib_present() } {
            return Err(
                "cuBLASLt (libcublasLt.so.13 or .12) not found: put the CUDA libraries' folder on LD_LIBRARY_PATH"
                    .into(),
            );
        }
        let handle = LtHandle(ltr::create_handle().map_err(lt_err("create"))?);
        let desc = LtDesc(
            ltr::create_matmul_desc(lt::cublasComputeType_t::CUBLAS_COMPUTE_32F, lt::cudaDataType::CUDA_R_32F)
                .map_err(lt_err("matmul descriptor"))?,
        );
        // out = x · wᵀ in row-major is, column-major, D (m×n) = op(A) · B with A = w stored k×m (ld k),
        // transposed, and B = x stored k×n (ld k): TRANSA = T, TRANSB = N.
        let (t, n) = (blas::cublasOperation_t::CUBLAS_OP_T as i32, blas::cublasOperation_t::CUBLAS_OP_N as i32);
        for (attr, v) in [
            (lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, t),
            (lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, n),
        ] {
            // SAFETY: the descriptor is live; the attribute is an int32 (cublasOperation_t).
            unsafe {
                ltr::set_matmul_desc_attribute(
                    desc.0,
                    attr,
                    &v as *const i32 as *const c_void,
                    std::mem::size_of::<i32>(),
                )
            }
            .map_err(lt_err("transpose attribute"))?;
        }
        let workspace = st
            .alloc_zeros::<u8>(LT_WORKSPACE_BYTES)
            .map_err(|e| format!("cuBLASLt workspace of {LT_WORKSPACE_BYTES} bytes: {e}"))?;
        let timing = std::env::var(LT_TIMING_ENV).map_or(true, |v| v != "0");
        Ok(Lt { plans: Mutex::new(HashMap::new()), timing, desc, workspace, handle })
    }

    /// Layouts and the heuristic's candidates (best first) for a shape; `Ok(None)` when cuBLASLt offers none.
    fn plan(&self, key: PlanKey) -> std::result::Result<Option<Plan>, String> {
        let (n, m, k, al_x, al_w, al_o, ops) = key;
        let layout = |ty, rows: usize, cols: usize, ld: usize| {
            ltr::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64)
                .map(LtLayout)
                .map_err(lt_err("matrix layout"))
        };
        // FP8 needs this "TN" form too (A transposed, B not), and k and m multiples of 16 (checked by the caller).
        let ty = match ops {
            Operands::Bf16 => lt::cudaDataType::CUDA_R_16BF,
            Operands::E4m3 => lt::cudaDataType::CUDA_R_8F_E4M3,
        };
        let a = layout(ty, k, m, k)?;
        let b = layout(ty, k, n, k)?;
        let d = layout(lt::cudaDataType::CUDA_R_32F, m, n, m)?;
        let pref = LtPref(ltr::create_matmul_pref().map_err(lt_err("preference"))?);
        let ws = LT_WORKSPACE_BYTES as u64;
        // SAFETY: the preference is live; MAX_WORKSPACE_BYTES is a uint64, the alignments are uint32.
        unsafe {
            use lt::cublasLtMatmulPreferenceAttributes_t as P;
            ltr::set_matmul_pref_attribute(
                pref.0,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                8,
            )
            .map_err(lt_err("workspace preference"))?;
            for (attr, al) in [
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_w),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_x),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_o),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_o),
            ] {
                ltr::set_matmul_pref_attribute(pref.0, attr, &al as *const u32 as *const c_void, 4)
                    .map_err(lt_err("alignment preference"))?;
            }
        }
        // SAFETY: plain data (an algorithm's opaque words, sizes, a status whose zero is SUCCESS).
        let mut found: Vec<lt::cublasLtMatmulHeuristicResult_t> = vec![unsafe { std::mem::zeroed() }; LT_CANDIDATES];
        let mut count: c_int = 0;
        // SAFETY: handle, descriptor, layouts and preference are live; C and D share one layout (beta = 0);
        // `found` holds LT_CANDIDATES results for cuBLASLt to fill and `count` receives how many it filled.
        let status = unsafe {
            lt::cublasLtMatmulAlgoGetHeuristic(
                self.handle.0,
                self.desc.0,
                a.0,
                b.0,
                d.0,
                d.0,
                pref.0,
                LT_CANDIDATES as c_int,
                found.as_mut_ptr(),
                &mut count,
            )
        };
        match status.result() {
            Ok(()) => {}
            Err(ltr::CublasError(lt::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED)) => return Ok(None),
            Err(e) => return Err(lt_err("heuristic")(e)),
        }
        let filled = &found[..(count.max(0) as usize).min(LT_CANDIDATES)];
        let algos: Vec<_> =
            filled.iter().filter(|h| h.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS).map(|h| h.algo).collect();
        if algos.is_empty() {
            return Ok(None);
        }
        Ok(Some(Plan { a, b, d, algos, timed: false }))
    }

    /// One matmul of `p`'s shape with candidate `i`.
    fn run(&self, st: &CudaStream, p: &Plan, i: usize, o: u64, xp: u64, wp: u64) -> std::result::Result<(), String> {
        let (alpha, beta) = (1f32, 0f32);
        let (ws, _w) = self.workspace.device_ptr(st);
        // SAFETY: operand lengths were checked by the caller; the layouts describe exactly those buffers; the
        // workspace is ours and used only on this stream; the plan stays alive (locked) during the call.
        unsafe {
            ltr::matmul(
                self.handle.0,
                self.desc.0,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                wp as *const c_void,
                p.a.0,
                xp as *const c_void,
                p.b.0,
                o as *const c_void,
                p.d.0,
                o as *mut c_void,
                p.d.0,
                &p.algos[i],
                ws as *mut c_void,
                LT_WORKSPACE_BYTES,
                raw(st) as lt::cudaStream_t,
            )
        }
        .map_err(lt_err("matmul"))
    }

    /// Times `p`'s candidates on the call's own operands (one untimed run, then `LT_TIMING_REPS` between two
    /// events) and moves the fastest to the front; beta is 0, so the runs only rewrite the output the real call
    /// writes next. A candidate that fails is left out of the choice; if none can be timed the order stays.
    #[allow(clippy::too_many_arguments)]
    fn choose(&self, st: &CudaStream, p: &mut Plan, o: u64, xp: u64, wp: u64, n: usize, m: usize, k: usize) {
        let time = |i: usize| -> std::result::Result<f32, String> {
            let ev = |what| move |e: cudarc::driver::DriverError| format!("cuBLASLt timing {what}: {e}");
            self.run(st, p, i, o, xp, wp)?;
            let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
            let start = st.record_event(flags).map_err(ev("event"))?;
            for _ in 0..LT_TIMING_REPS {
                self.run(st, p, i, o, xp, wp)?;
            }
            let end = st.record_event(flags).map_err(ev("event"))?;
            start.elapsed_ms(&end).map_err(ev("elapsed"))
        };
        let times: Vec<Option<f32>> = (0..p.algos.len())
            .map(|i| time(i).map_err(|e| log::debug!("candidate {i} for {n}x{k} · {m}x{k}ᵀ: {e}")).ok())
            .collect();
        let best = times.iter().enumerate().filter_map(|(i, t)| t.map(|t| (i, t))).min_by(|a, b| a.1.total_cmp(&b.1));
        let Some((i, ms)) = best else { return };
        TIMED[0].fetch_add(1, Ordering::Relaxed);
        if i != 0 {
            TIMED[1].fetch_add(1, Ordering::Relaxed);
            p.algos.swap(0, i);
        }
        let first = times[0].map_or("failed".to_string(), |t| format!("{:.4} ms", t / LT_TIMING_REPS as f32));
        log::debug!(
            "cuBLASLt {n}x{k} · {m}x{k}ᵀ: candidate {i} of {} fastest, {:.4} ms (the heuristic's first: {first})",
            times.len(),
            ms / LT_TIMING_REPS as f32
        );
    }

    /// `Ok(false)` when this shape has no cuBLASLt algorithm (the caller falls back).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(
        &self,
        st: &CudaStream,
        o: u64,
        xp: u64,
        wp: u64,
        n: usize,
        m: usize,
        k: usize,
        ops: Operands,
    ) -> std::result::Result<bool, String> {
        let key = (n, m, k, alignment(xp), alignment(wp), alignment(o), ops);
        let mut plans = self.plans.lock().map_err(|_| "cuBLASLt plan cache poisoned".to_string())?;
        let p = match plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(self.plan(key)?),
        };
        let Some(p) = p.as_mut() else { return Ok(false) };
        if !p.timed {
            p.timed = true;
            if self.timing && n <= LT_TIMED_MAX_ROWS && p.algos.len() > 1 {
                self.choose(st, p, o, xp, wp, n, m, k);
            }
        }
        self.run(st, p, 0, o, xp, wp)?;
        Ok(true)
    }

    /// Records that `key`'s shape must use the fallback from now on.
    pub(super) fn give_up(&self, n: usize, m: usize, k: usize, ops: Operands) {
        if let Ok(mut plans) = self.plans.lock() {
            for (key, p) in plans.iter_mut() {
                if (key.0, key.1, key.2, key.6) == (n, m, k, ops) {
                    *p = None;
                }
            }
        }
    }
}
