//! The only raw CUDA calls of the backend: the bindgen declarations of `csrc/ops.h` and safe wrappers that
//! check every length before handing device pointers to a launcher, plus the GEMM (cuBLASLt, with cuBLAS GemmEx
//! as the fallback) and the library probes.
#![allow(unsafe_code)]
use super::meta::DeviceMeta;
use crate::backend::{AttnDims, KvStore};
use crate::{Error, Result};
use cudarc::cublas::{CudaBlas, sys as blas};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::ffi::{CStr, c_int, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

mod blaslt;
mod fp8;
pub use blaslt::timing_stats as gemm_algo_timing;
use blaslt::{Lt, Operands};
pub use fp8::{gemm_fp8, quantize_fp8_rows, quantize_fp8_rows_bf16, rms_norm_fp8, silu_mul_fp8};

#[allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, clippy::all)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/ops.rs"));
}

pub use sys::{TL_DECODE_SPLIT, TL_MAX_HEAD_DIM, TL_PREFILL_ROWS, TL_PREFILL_ROWS_TC, TlSampleParams};

/// Turns a launcher status into an error naming the op.
fn status(op: &str, s: c_int) -> Result<()> {
    if s == 0 {
        return Ok(());
    }
    // SAFETY: tl_status_string returns a static NUL-terminated string for any value.
    let msg = unsafe { CStr::from_ptr(sys::tl_status_string(s)) }.to_string_lossy().into_owned();
    Err(super::device_error(format!("CUDA kernel {op}: {msg} (status {s})"), s))
}

fn need(op: &str, what: &str, have: usize, want: usize) -> Result<()> {
    if have < want {
        return Err(Error::Internal(format!("{op}: {what} holds {have} elements, {want} needed")));
    }
    Ok(())
}

fn int(op: &str, v: usize) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| Error::Internal(format!("{op}: dimension {v} exceeds the kernels' int range")))
}

fn raw(st: &CudaStream) -> *mut c_void {
    st.cu_stream() as *mut c_void
}

/// Whether the CUDA driver library can be loaded at all (probing never panics, unlike a first call).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

pub fn cublas_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// Stops cudarc from recording an event per buffer access: every op of a rank runs on one stream, in order.
pub fn single_stream_mode(ctx: &CudaContext) {
    // SAFETY: all work of this context is issued on one stream, so no cross-stream ordering is needed.
    unsafe { ctx.disable_event_tracking() }
}

pub fn embedding(
    st: &CudaStream,
    out: &mut CudaSlice<f32>,
    table: &CudaSlice<u16>,
    vocab: usize,
    ids: &CudaSlice<i32>,
    n: usize,
    h: usize,
) -> Result<()> {
    need("embedding", "out", out.len(), n * h)?;
    need("embedding", "ids", ids.len(), n)?;
    need("embedding", "table", table.len(), vocab * h)?;
    let (o, _a) = out.device_ptr_mut(st);
    let (t, _b) = table.device_ptr(st);
    let (i, _c) = ids.device_ptr(st);
    // SAFETY: lengths checked above; ids were checked against the vocabulary on the host.
    status("embedding", unsafe {
        sys::tl_embedding(
            o as *mut f32,
            t as *const u16,
            i as *const i32,
            int("embedding", n)?,
            int("embedding", h)?,
            raw(st),
        )
    })
}

/// rms_norm (no residual) or add_rms_norm; with `out16`, the output also as bf16 (the next GEMM's input).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm(
    st: &CudaStream,
    out: &mut CudaSlice<f32>,
    residual: Option<&mut CudaSlice<f32>>,
    out16: Option<&mut CudaSlice<u16>>,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    n: usize,
    h: usize,
    eps: f32,
) -> Result<()> {
    need("rms_norm", "out", out.len(), n * h)?;
    need("rms_norm", "x", x.len(), n * h)?;
    need("rms_norm", "weight", w.len(), h)?;
    let (ni, hi) = (int("rms_norm", n)?, int("rms_norm", h)?);
    let (o, _a) = out.device_ptr_mut(st);
    let (xp, _b) = x.device_ptr(st);
    let (wp, _c) = w.device_ptr(st);
    let mut guards = Vec::new();
    let rp = match residual {
        Some(r) => {
            need("add_rms_norm", "residual", r.len(), n * h)?;
            let (rp, g) = r.device_ptr_mut(st);
            guards.push(g);
            rp as *mut f32
        }
        None => std::ptr::null_mut(),
    };
    let (o, xp, wp) = (o as *mut f32, xp as *const f32, wp as *const f32);
    match (out16, rp.is_null()) {
        (Some(o16), _) => {
            need("rms_norm_bf16", "out16", o16.len(), n * h)?;
            let (bp, g) = o16.device_ptr_mut(st);
            guards.push(g);
            // SAFETY: lengths checked above; the borrow checker keeps the buffers distinct; a null residual is the
            // plain norm.
            status("rms_norm_bf16", unsafe {
                sys::tl_rms_norm_bf16(o, rp, bp as *mut u16, xp, wp, ni, hi, eps, raw(st))
            })
        }
        // SAFETY: lengths checked above.
        (None, true) => status("rms_norm", unsafe { sys::tl_rms_norm(o, xp, wp, ni, hi, eps, raw(st)) }),
        // SAFETY: lengths checked above; the borrow checker keeps the three buffers distinct.
        (None, false) => status("add_rms_norm", unsafe { sys::tl_add_rms_norm(rp, xp, o, wp, ni, hi, eps, raw(st)) }),
    }
}

/// out `[n, f]` = silu(gate) * up from `gate_up` `[n, 2f]` (each row's gate, then its up); with `out16`, out
/// also as bf16 (the down GEMM's input).
pub fn silu_mul(
    st: &CudaStream,
    out: &mut CudaSlice<f32>,
    out16: Option<&mut CudaSlice<u16>>,
    gate_up: &CudaSlice<f32>,
    n: usize,
    f: usize,
) -> Result<()> {
    need("silu_mul", "out", out.len(), n * f)?;
    need("silu_mul", "gate_up", gate_up.len(), 2 * n * f)?;
    if let Some(o16) = &out16 {
        need("silu_mul", "out16", o16.len(), n * f)?;
    }
    let (o, _a) = out.device_ptr_mut(st);
    let (g, _b) = gate_up.device_ptr(st);
    let o16 = out16.map(|b| b.device_ptr_mut(st));
    let bp = o16.as_ref().map_or(std::ptr::null_mut(), |(p, _)| *p as *mut u16);
    // SAFETY: lengths checked above; a null out16 writes f32 only.
    status("silu_mul", unsafe { sys::tl_silu_mul(o as *mut f32, bp, g as *const f32, n as i64, f as i64, raw(st)) })
}

pub fn gather_rows(
    st: &CudaStream,
    out: &mut CudaSlice<f32>,
    x: &CudaSlice<f32>,
    rows: &CudaSlice<i32>,
    max_row: usize,
    r: usize,
    h: usize,
) -> Result<()> {
    need("gather_rows", "out", out.len(), r * h)?;
    need("gather_rows", "rows", rows.len(), r)?;
    need("gather_rows", "x", x.len(), (max_row + 1) * h)?;
    let (o, _a) = out.device_ptr_mut(st);
    let (xp, _b) = x.device_ptr(st);
    let (rp, _c) = rows.device_ptr(st);
    // SAFETY: lengths checked above; every row index is <= max_row (checked by the caller on the host).
    status("gather_rows", unsafe {
        sys::tl_gather_rows(
            o as *mut f32,
            xp as *const f32,
            rp as *const i32,
            int("gather_rows", r)?,
            int("gather_rows", h)?,
            raw(st),
        )
    })
}

pub fn f32_to_bf16(st: &CudaStream, dst: &mut CudaSlice<u16>, src: &CudaSlice<f32>, len: usize) -> Result<()> {
    need("f32_to_bf16", "buffers", dst.len().min(src.len()), len)?;
    let (d, _a) = dst.device_ptr_mut(st);
    let (s, _b) = src.device_ptr(st);
    // SAFETY: lengths checked above.
    status("f32_to_bf16", unsafe { sys::tl_f32_to_bf16(d as *mut u16, s as *const f32, len as i64, raw(st)) })
}

/// K or V values a cache buffer holds: its f32 elements, or 2 bf16 or 4 E4M3 values per element (`d.kv`).
pub fn kv_values(cache: &CudaSlice<f32>, d: AttnDims) -> usize {
    cache.len() * 4 / d.kv.bytes()
}

/// The launchers' `kv_dtype`: 0 f32, 1 bf16, 2 E4M3.
fn kv_code(d: AttnDims) -> c_int {
    match d.kv {
        KvStore::F32 => 0,
        KvStore::Bf16 => 1,
        KvStore::Fp8 => 2,
    }
}

#[allow(clippy::too_many_arguments)]
pub fn rope_write_kv(
    st: &CudaStream,
    q: &mut CudaSlice<f32>,
    qkv: &CudaSlice<f32>,
    kc: &mut CudaSlice<f32>,
    vc: &mut CudaSlice<f32>,
    m: &DeviceMeta,
    d: AttnDims,
) -> Result<()> {
    let n = m.n_tokens;
    let (qw, kw) = (d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim);
    need("rope_write_kv", "q", q.len(), n * qw)?;
    need("rope_write_kv", "qkv", qkv.len(), n * (qw + 2 * kw))?;
    need("rope_write_kv", "kv cache", kv_values(kc, d).min(kv_values(vc, d)), m.num_slots * kw)?;
    let dev = m.buf.device_ptr(st);
    let (qp, _a) = q.device_ptr_mut(st);
    let (xp, _b) = qkv.device_ptr(st);
    let (kcp, _d) = kc.device_ptr_mut(st);
    let (vcp, _e) = vc.device_ptr_mut(st);
    let at = |off: usize| (dev.0 + (off * 4) as u64) as *const i32;
    let (n, nh, nkv, hd) =
        (int("rope", n)?, int("rope", d.n_heads)?, int("rope", d.n_kv_heads)?, int("rope", d.head_dim)?);
    let (theta, scale) = (d.rope_theta, d.rope_scale);
    // SAFETY: buffer lengths checked above; slots were checked against num_slots when the metadata was built.
    status("rope_write_kv", unsafe {
        sys::tl_rope_write_kv(
            qp as *mut f32,
            xp as *const f32,
            kcp as *mut c_void,
            vcp as *mut c_void,
            at(m.off.positions),
            at(m.off.slots),
            n,
            nh,
            nkv,
            hd,
            theta,
            scale,
            kv_code(d),
            raw(st),
        )
    })
}

/// Attention of the step's tokens; with `out16`, the output also in bf16 (the wo GEMM's input).
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    st: &CudaStream,
    out: &mut CudaSlice<f32>,
    out16: Option<&mut CudaSlice<u16>>,
    q: &CudaSlice<f32>,
    kc: &CudaSlice<f32>,
    vc: &CudaSlice<f32>,
    scratch: &mut CudaSlice<f32>,
    m: &DeviceMeta,
    d: AttnDims,
) -> Result<()> {
    let (qw, kw) = (d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim);
    need("paged_attention", "out/q", out.len().min(q.len()), m.n_tokens * qw)?;
    if let Some(o16) = &out16 {
        need("paged_attention", "out16", o16.len(), m.n_tokens * qw)?;
    }
    need("paged_attention", "kv cache", kv_values(kc, d).min(kv_values(vc, d)), m.num_slots * kw)?;
    if m.dec_splits > 1 {
        need("paged_attention", "scratch", scratch.len(), m.n_dec * d.n_heads * m.dec_splits * (d.head_dim + 2))?;
    }
    d.group()?;
    if d.head_dim > TL_MAX_HEAD_DIM as usize {
        return Err(Error::Internal(format!("paged_attention: head_dim {} > {TL_MAX_HEAD_DIM}", d.head_dim)));
    }
    let dev = m.buf.device_ptr(st);
    let at = |off: usize| (dev.0 + (off * 4) as u64) as *const i32;
    let o16 = out16.map(|o| o.device_ptr_mut(st));
    let meta = sys::TlAttnMeta {
        tok_seq: at(m.off.tok_seq),
        seq_start: at(m.off.seq_start),
        seq_len: at(m.off.seq_len),
        seq_ctx: at(m.off.seq_ctx),
        seq_bt: at(m.off.seq_bt),
        block_tables: at(m.off.block_tables),
        dec_tokens: at(m.off.dec_tokens),
        tiles: at(m.off.tiles),
        n_dec: int("attention", m.n_dec)?,
        n_tiles: int("attention", m.n_tiles)?,
        dec_splits: int("attention", m.dec_splits)?,
        block_size: int("attention", m.block_size)?,
        tile_rows: int("attention", m.tile_rows)?,
        out16: o16.as_ref().map_or(std::ptr::null_mut(), |(p, _)| *p as *mut u16),
    };
    let (o, _a) = out.device_ptr_mut(st);
    let (qp, _b) = q.device_ptr(st);
    let (kcp, _c) = kc.device_ptr(st);
    let (vcp, _d) = vc.device_ptr(st);
    let (sp, _e) = scratch.device_ptr_mut(st);
    let (nh, nkv, hd) = (int("attention", d.n_heads)?, int("attention", d.n_kv_heads)?, int("attention", d.head_dim)?);
    // SAFETY: lengths checked above; every block id, context length and token range in the metadata was
    // validated against the cache size on the host (meta.rs).
    status("paged_attention", unsafe {
        sys::tl_paged_attention(
            o as *mut f32,
            qp as *const f32,
            kcp as *const c_void,
            vcp as *const c_void,
            sp as *mut f32,
            &meta,
            nh,
            nkv,
            hd,
            kv_code(d),
            raw(st),
        )
    })
}

/// The GEMM handles of one stream: cuBLASLt (heuristic algorithm per shape, cached) with the classic cuBLAS
/// GemmEx as the fallback when cuBLASLt is missing, finds no algorithm for a shape, or fails.
pub struct Blas {
    lt: Option<Lt>,
    classic: CudaBlas,
    /// Whether a fallback to GemmEx was logged already (once per backend, at warn level).
    warned: AtomicBool,
    /// GEMMs run by cuBLASLt and by the GemmEx fallback.
    counts: [AtomicU64; 2],
}

impl Blas {
    /// Handles bound to `st`. A missing or failing cuBLASLt is not an error: every GEMM then uses GemmEx.
    pub fn new(st: &Arc<CudaStream>) -> Result<Blas> {
        let classic = CudaBlas::new(st.clone()).map_err(|e| Error::Internal(format!("cuBLAS init: {e}")))?;
        let lt = Lt::new(st).map_err(|e| log::warn!("{e}; GEMMs use cuBLAS GemmEx")).ok();
        Ok(Blas { lt, classic, warned: AtomicBool::new(false), counts: [AtomicU64::new(0), AtomicU64::new(0)] })
    }

    /// (whether cuBLASLt was loaded, GEMMs it ran, GEMMs that fell back to GemmEx).
    pub fn stats(&self) -> (bool, u64, u64) {
        (self.lt.is_some(), self.counts[0].load(Ordering::Relaxed), self.counts[1].load(Ordering::Relaxed))
    }

    /// Runs out = x · wᵀ on cuBLASLt (counted) when it is loaded, takes the shape (FP8: k and m multiples of 16,
    /// its kernels' rule) and has an algorithm for it. Otherwise, or when cuBLASLt fails (the shape then stays off
    /// it), logs why once and returns false: the caller runs `to` (counted here).
    #[allow(clippy::too_many_arguments)]
    fn try_lt(
        &self,
        st: &CudaStream,
        o: u64,
        xp: u64,
        wp: u64,
        n: usize,
        m: usize,
        k: usize,
        ops: Operands,
        to: &str,
    ) -> bool {
        let what = match ops {
            Operands::Bf16 => "bf16",
            Operands::E4m3 => "FP8",
        };
        let shape_ok = ops == Operands::Bf16 || (k.is_multiple_of(16) && m.is_multiple_of(16));
        if let Some(lt) = self.lt.as_ref().filter(|_| shape_ok) {
            match lt.gemm(st, o, xp, wp, n, m, k, ops) {
                Ok(true) => {
                    self.counts[0].fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Ok(false) => self.fallback(&format!("cuBLASLt has no {what} algorithm for {n}x{k} · {m}x{k}ᵀ"), to),
                Err(e) => {
                    lt.give_up(n, m, k, ops);
                    self.fallback(&format!("{e} ({what} GEMM {n}x{k} · {m}x{k}ᵀ)"), to);
                }
            }
        }
        self.counts[1].fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Logs (at warn level once per backend) that a GEMM runs on `to` instead of cuBLASLt, and why.
    fn fallback(&self, why: &str, to: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            log::warn!("{why}; this GEMM and any like it use {to} (logged once)");
        } else {
            log::debug!("{why}; using {to}");
        }
    }
}

const GEMM_EX: &str = "cuBLAS GemmEx";

/// out `[n, m]` (f32) = x `[n, k]` (bf16) · wᵀ with w `[m, k]` (bf16), f32 accumulation, on `st`: cuBLASLt
/// with the cached heuristic algorithm of the shape, else cuBLAS GemmEx.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
    blas: &Blas,
    st: &CudaStream,
    out: &mut CudaSlice<f32>,
    x: &CudaSlice<u16>,
    w: &CudaSlice<u16>,
    n: usize,
    m: usize,
    k: usize,
) -> Result<()> {
    need("gemm", "out", out.len(), n * m)?;
    need("gemm", "x", x.len(), n * k)?;
    need("gemm", "w", w.len(), m * k)?;
    let (ni, mi, ki) = (int("gemm", n)?, int("gemm", m)?, int("gemm", k)?);
    let (o, _a) = out.device_ptr_mut(st);
    let (xp, _b) = x.device_ptr(st);
    let (wp, _c) = w.device_ptr(st);
    if blas.try_lt(st, o, xp, wp, n, m, k, Operands::Bf16, GEMM_EX) {
        return Ok(());
    }
    let (alpha, beta) = (1f32, 0f32);
    // Column-major view: C (m×n) = op(A) · B with A = w stored k×m (transposed) and B = x stored k×n.
    // SAFETY: lengths checked above; the handle is bound to `st`.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.classic.handle(),
            blas::cublasOperation_t::CUBLAS_OP_T,
            blas::cublasOperation_t::CUBLAS_OP_N,
            mi,
            ni,
            ki,
            &alpha as *const f32 as *const c_void,
            wp as *const c_void,
            blas::cudaDataType::CUDA_R_16BF,
            ki,
            xp as *const c_void,
            blas::cudaDataType::CUDA_R_16BF,
            ki,
            &beta as *const f32 as *const c_void,
            o as *mut c_void,
            blas::cudaDataType::CUDA_R_32F,
            mi,
            blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| Error::Internal(format!("cuBLAS GemmEx ({n}x{k} · {m}x{k}ᵀ): {e}")))
}

/// Scratch bytes `sample` needs.
pub fn sample_scratch_bytes(rows: usize, vocab: usize) -> usize {
    // SAFETY: pure arithmetic on the host.
    let b = unsafe { sys::tl_sample_scratch_bytes(rows as c_int, vocab as c_int) };
    b.max(0) as usize
}

/// Device inputs of `sample`: CSR lists of penalised / masked ids per row.
pub struct SampleInputs<'a> {
    pub params: &'a CudaSlice<u8>,
    pub ints: &'a CudaSlice<i32>,
    /// Offsets into `ints` of rep_off, rep_ids, gen_off, gen_ids, gen_counts, mask_off, mask_ids, bias_off,
    /// bias_ids, bias_bits, allow_off, allow_bits.
    pub off: [usize; 12],
}

pub fn sample(
    st: &CudaStream,
    out: &mut CudaSlice<i32>,
    logits: &mut CudaSlice<f32>,
    inp: &SampleInputs,
    scratch: &mut CudaSlice<u8>,
    rows: usize,
    vocab: usize,
) -> Result<()> {
    need("sample", "out", out.len(), rows)?;
    need("sample", "logits", logits.len(), rows * vocab)?;
    need("sample", "params", inp.params.len(), rows * std::mem::size_of::<TlSampleParams>())?;
    need("sample", "scratch", scratch.len(), sample_scratch_bytes(rows, vocab))?;
    let (o, _a) = out.device_ptr_mut(st);
    let (l, _b) = logits.device_ptr_mut(st);
    let (p, _c) = inp.params.device_ptr(st);
    let (ip, _d) = inp.ints.device_ptr(st);
    let (sp, _e) = scratch.device_ptr_mut(st);
    let at = |i: usize| (ip + (inp.off[i] * 4) as u64) as *const i32;
    // SAFETY: lengths checked above; the CSR lists were built on the host with every id < vocab.
    status("sample", unsafe {
        sys::tl_sample(
            o as *mut i32,
            l as *mut f32,
            p as *const TlSampleParams,
            at(0),
            at(1),
            at(2),
            at(3),
            at(4),
            at(5),
            at(6),
            at(7),
            at(8),
            at(9),
            at(10),
            at(11),
            sp as *mut c_void,
            int("sample", rows)?,
            int("sample", vocab)?,
            raw(st),
        )
    })
}

pub fn unshard_vocab(
    st: &CudaStream,
    out: &mut CudaSlice<f32>,
    parts: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    world: usize,
    width: usize,
) -> Result<()> {
    let w_max = crate::backend::unshard_shape(vocab, world, width)?;
    need("unshard_vocab", "out", out.len(), rows * width)?;
    need("unshard_vocab", "parts", parts.len(), world * rows * w_max)?;
    let (o, _a) = out.device_ptr_mut(st);
    let (p, _b) = parts.device_ptr(st);
    let op = "unshard_vocab";
    // SAFETY: lengths checked above for the layout the kernel reads.
    status(op, unsafe {
        sys::tl_unshard_vocab(
            o as *mut f32,
            p as *const f32,
            int(op, rows)?,
            int(op, vocab)?,
            int(op, world)?,
            int(op, width)?,
            raw(st),
        )
    })
}

/// `ids` must hold values < vocab (the sampling kernel's output does).
pub fn token_logprob(
    st: &CudaStream,
    lp: &mut CudaSlice<f32>,
    logits: &CudaSlice<f32>,
    ids: &CudaSlice<i32>,
    rows: usize,
    vocab: usize,
) -> Result<()> {
    need("token_logprob", "lp", lp.len(), rows)?;
    need("token_logprob", "ids", ids.len(), rows)?;
    need("token_logprob", "logits", logits.len(), rows * vocab)?;
    let (o, _a) = lp.device_ptr_mut(st);
    let (l, _b) = logits.device_ptr(st);
    let (i, _c) = ids.device_ptr(st);
    let op = "token_logprob";
    // SAFETY: lengths checked above; every id is < vocab (the caller's contract).
    status(op, unsafe {
        sys::tl_token_logprob(o as *mut f32, l as *const f32, i as *const i32, int(op, rows)?, int(op, vocab)?, raw(st))
    })
}

/// The `k` most likely ids per row of `logits` `[rows, vocab]` with their log-probabilities, `[rows, k]` each.
pub fn top_logprobs(
    st: &CudaStream,
    ids: &mut CudaSlice<i32>,
    lps: &mut CudaSlice<f32>,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    k: usize,
) -> Result<()> {
    let op = "top_logprobs";
    need(op, "ids", ids.len(), rows * k)?;
    need(op, "lps", lps.len(), rows * k)?;
    need(op, "logits", logits.len(), rows * vocab)?;
    let (i, _a) = ids.device_ptr_mut(st);
    let (o, _b) = lps.device_ptr_mut(st);
    let (l, _c) = logits.device_ptr(st);
    let (rows, vocab, k) = (int(op, rows)?, int(op, vocab)?, int(op, k)?);
    // SAFETY: lengths checked above.
    status(op, unsafe { sys::tl_top_logprobs(i as *mut i32, o as *mut f32, l as *const f32, rows, vocab, k, raw(st)) })
}
