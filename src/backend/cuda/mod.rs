//! The CUDA backend: device buffers through cudarc, GEMMs through cuBLASLt (bf16 operands, f32 accumulation and
//! output), the fused kernels of `csrc/` through `ffi`. Activations are f32 (the `Backend` trait's `Buf`), the KV
//! cache bf16 by default (`alloc_kv`: two values per f32 element) or f32; matrices are stored in bf16 (or E4M3),
//! norm weights in f32. Every op checks shapes on the host first.
mod ffi;
pub mod meta;
pub mod sample;

use super::{AttnDims, Backend, CheckedStep, WeightFormat};
use crate::sampling::{Picked, SampleBatch};
use crate::tensor::{Tensor, TensorData};
use crate::{Error, Result};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use std::sync::{Arc, Mutex};

fn cuda_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| device_error(format!("CUDA {what}: {e}"), e.0 as i32)
}

/// Whether a CUDA error code (driver `CUresult` or runtime `cudaError_t`: the two agree on these values) leaves
/// the context unusable: every later call on it fails too, until the process ends. ECC uncorrectable (214), illegal
/// address (700), launch timeout (702), device assert (710), hardware stack error, illegal instruction, misaligned
/// address, invalid address space, invalid PC, launch failure (714-719).
pub fn is_sticky(code: i32) -> bool {
    matches!(code, 214 | 700 | 702 | 710 | 714..=719)
}

/// A CUDA failure as an error: a sticky one stops the engine ([`Error::EngineStopped`]: the model reports not ready
/// and `deploy_triton.py` stops the server, for its supervisor to restart), any other fails the step.
fn device_error(msg: String, code: i32) -> Error {
    if is_sticky(code) {
        Error::EngineStopped(format!("{msg}: the GPU context is unusable after this error; restart the server"))
    } else {
        Error::Internal(msg)
    }
}

/// Number of CUDA devices; an error (never a panic) when the driver library or a device is missing.
pub fn device_count() -> Result<usize> {
    if !ffi::driver_present() {
        return Err(Error::Unavailable("no CUDA driver (libcuda.so) found".into()));
    }
    let n = CudaContext::device_count().map_err(cuda_err("device count"))?;
    Ok(n.max(0) as usize)
}

/// A weight on the device: matrices in bf16 (or E4M3 with a scale per row under `WeightFormat::Fp8`), vectors
/// (norms) in f32.
pub enum CudaWeight {
    Bf16 { data: CudaSlice<u16>, rows: usize, cols: usize },
    Fp8 { codes: CudaSlice<u8>, scales: CudaSlice<f32>, rows: usize, cols: usize },
    F32 { data: CudaSlice<f32> },
}

/// An f32 device buffer.
pub struct CudaBuf(pub CudaSlice<f32>);

/// Reused device scratch: bf16 and FP8 GEMM inputs, the step metadata and the split-attention partials.
struct Scratch {
    bf16: Option<CudaSlice<u16>>,
    fp8: Option<CudaSlice<u8>>,
    fp8_scales: Option<CudaSlice<f32>>,
    /// Like `converted`, for the FP8 copy (codes and per-token scales) in `fp8`.
    converted_fp8: Option<(u64, usize)>,
    attn: Option<CudaSlice<f32>>,
    meta_dev: Option<meta::DeviceMeta>,
    /// Small per-step inputs of the embedding and row gather (`stage_i32`).
    ints: Option<CudaSlice<i32>>,
    /// The step `meta_dev` was packed for: (`CheckedStep::serial`, cache slots, prefill tile rows).
    meta_key: Option<(u64, usize, usize)>,
    /// (device pointer, elements) of the f32 buffer whose bf16 copy is in `bf16`, valid while the ops since
    /// were only GEMMs reading it (q/k/v and gate/up share one conversion).
    converted: Option<(u64, usize)>,
    /// Conversion kernels run for GEMM inputs (`convert_once` fills), for the tests of the fused copies.
    conversions: u64,
}

/// The converted copies of a GEMM input that `Scratch` keeps (see `Scratch::convert_once`).
#[derive(Clone, Copy)]
enum Converted {
    /// bf16, in `bf16`.
    Bf16,
    /// E4M3 codes and per-token scales, in `fp8` and `fp8_scales`.
    Fp8,
}

impl Scratch {
    fn key_of(&mut self, c: Converted) -> &mut Option<(u64, usize)> {
        match c {
            Converted::Bf16 => &mut self.converted,
            Converted::Fp8 => &mut self.converted_fp8,
        }
    }

    /// Runs `fill`, which writes the `c` copy of the f32 buffer `key` (device pointer, elements), unless that
    /// copy is current, and records it: the GEMMs that read one input (q/k/v, gate/up) share one conversion.
    fn convert_once(
        &mut self,
        c: Converted,
        key: (u64, usize),
        fill: impl FnOnce(&mut Scratch) -> Result<()>,
    ) -> Result<()> {
        if *self.key_of(c) == Some(key) {
            return Ok(());
        }
        *self.key_of(c) = None;
        self.conversions += 1;
        fill(self)?;
        *self.key_of(c) = Some(key);
        Ok(())
    }
}

/// One GPU: its primary context, one stream for all work, and the cuBLASLt/cuBLAS handles bound to that stream.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: Arc<ffi::Blas>,
    scratch: Arc<Mutex<Scratch>>,
    /// Prompt chunks' attention on the f32 CUDA-core kernel instead of tensor cores (`TL_PREFILL_ATTENTION=f32`,
    /// or `set_exact_prefill_attention`): the exact path, for tests.
    exact_prefill: Arc<std::sync::atomic::AtomicBool>,
    /// FP8 weights were loaded: the norms also quantize their outputs for the FP8 GEMMs after them.
    fp8_weights: Arc<std::sync::atomic::AtomicBool>,
}

/// The environment variable that selects the exact f32 prefill attention (value `f32`) over tensor cores.
pub const PREFILL_ATTENTION_ENV: &str = "TL_PREFILL_ATTENTION";

impl Clone for CudaBackend {
    fn clone(&self) -> Self {
        CudaBackend {
            ctx: self.ctx.clone(),
            stream: self.stream.clone(),
            blas: self.blas.clone(),
            scratch: self.scratch.clone(),
            exact_prefill: self.exact_prefill.clone(),
            fp8_weights: self.fp8_weights.clone(),
        }
    }
}

impl CudaBackend {
    /// Opens device `ordinal` with a new stream.
    pub fn new(ordinal: usize) -> Result<Self> {
        let n = device_count()?;
        if ordinal >= n {
            return Err(Error::Unavailable(format!("CUDA device {ordinal} requested, {n} present")));
        }
        if !ffi::cublas_present() {
            return Err(Error::Unavailable(
                "cuBLAS (libcublas.so.13 or .12) not found: put the CUDA libraries' folder on LD_LIBRARY_PATH".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("context"))?;
        ffi::single_stream_mode(&ctx);
        let stream = ctx.new_stream().map_err(cuda_err("stream"))?;
        let blas = ffi::Blas::new(&stream)?;
        let scratch = Scratch {
            bf16: None,
            fp8: None,
            fp8_scales: None,
            converted_fp8: None,
            attn: None,
            meta_dev: None,
            ints: None,
            meta_key: None,
            converted: None,
            conversions: 0,
        };
        let exact = std::env::var(PREFILL_ATTENTION_ENV).is_ok_and(|v| v == "f32");
        Ok(CudaBackend {
            ctx,
            stream,
            blas: Arc::new(blas),
            scratch: Arc::new(Mutex::new(scratch)),
            exact_prefill: Arc::new(std::sync::atomic::AtomicBool::new(exact)),
            fp8_weights: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// Prompt chunks' attention on the exact f32 kernel (true) or on tensor cores (false, the default).
    pub fn set_exact_prefill_attention(&self, exact: bool) {
        self.exact_prefill.store(exact, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(cuda_err("memory info"))
    }

    /// (shapes whose cuBLASLt candidates were timed, shapes where one other than the heuristic's first won), for
    /// every GPU of the process; `TL_CUBLASLT_TIMING=0` turns the timing off.
    pub fn gemm_algo_timing() -> (u64, u64) {
        ffi::gemm_algo_timing()
    }

    /// (cuBLASLt loaded, GEMMs run by cuBLASLt, GEMMs that fell back to cuBLAS GemmEx) since the backend opened.
    pub fn gemm_stats(&self) -> (bool, u64, u64) {
        self.blas.stats()
    }

    /// Conversion kernels run so far for GEMM inputs (bf16 or FP8) not written by the op before the GEMM.
    pub fn conversions(&self) -> Result<u64> {
        Ok(self.lock()?.conversions)
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("synchronize"))
    }

    /// Binds the context to this thread before an op that may write device buffers (which also
    /// invalidates the cached bf16 conversion of a GEMM input).
    fn bind(&self) -> Result<()> {
        self.invalidate()?;
        self.ctx.bind_to_thread().map_err(cuda_err("bind context"))
    }

    /// Forgets the cached bf16 copy of the last GEMM input; call after anything that may write a buffer.
    pub fn invalidate(&self) -> Result<()> {
        let mut s = self.lock()?;
        s.converted = None;
        s.converted_fp8 = None;
        Ok(())
    }

    /// Whether this GPU has FP8 tensor cores (compute capability 8.9 or later: Ada, Hopper, Blackwell).
    pub fn has_fp8(&self) -> Result<bool> {
        Ok(self.ctx.compute_capability().map_err(cuda_err("compute capability"))? >= (8, 9))
    }

    /// A matrix quantized to E4M3 per row on the device (`tl_quantize_fp8_rows*`): bf16 and f32 are uploaded as
    /// they are (f16 widened to f32 first), so the codes are those the CPU twin computes from the same values.
    fn upload_fp8(&self, t: &Tensor) -> Result<CudaWeight> {
        let cc = self.ctx.compute_capability().map_err(cuda_err("compute capability"))?;
        if cc < (8, 9) {
            return Err(Error::Config(format!(
                "weights fp8 need FP8 tensor cores (compute capability 8.9+: Ada, Hopper, Blackwell); {} is {}.{}: \
                 use weight_dtype bf16",
                self.ctx.name().unwrap_or_else(|_| "this GPU".into()),
                cc.0,
                cc.1
            )));
        }
        self.bind()?;
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let mut codes = self.alloc_bytes(rows * cols)?;
        let mut scales = self.stream.alloc_zeros::<f32>(rows.max(1)).map_err(cuda_err("alloc"))?;
        match &t.data {
            TensorData::BF16(v) => {
                let src = self.stream.clone_htod(bytemuck::cast_slice::<_, u16>(v)).map_err(cuda_err("upload"))?;
                ffi::quantize_fp8_rows_bf16(&self.stream, &mut codes, &mut scales, &src, rows, cols)?;
            }
            _ => {
                let src = self.stream.clone_htod(&f32_vec(t)).map_err(cuda_err("upload"))?;
                ffi::quantize_fp8_rows(&self.stream, &mut codes, &mut scales, &src, rows, cols)?;
            }
        }
        self.fp8_weights.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(CudaWeight::Fp8 { codes, scales, rows, cols })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Scratch>> {
        self.scratch.lock().map_err(|_| Error::Internal("CUDA scratch lock poisoned".into()))
    }

    pub(crate) fn upload_i32(&self, v: &[i32]) -> Result<CudaSlice<i32>> {
        let v: &[i32] = if v.is_empty() { &[0] } else { v };
        self.stream.clone_htod(v).map_err(cuda_err("upload"))
    }

    pub(crate) fn upload_bytes(&self, v: &[u8]) -> Result<CudaSlice<u8>> {
        let v: &[u8] = if v.is_empty() { &[0] } else { v };
        self.stream.clone_htod(v).map_err(cuda_err("upload"))
    }

    pub(crate) fn alloc_bytes(&self, n: usize) -> Result<CudaSlice<u8>> {
        self.stream.alloc_zeros::<u8>(n.max(1)).map_err(cuda_err("alloc"))
    }

    /// Copies a device i32 buffer to the host.
    pub(crate) fn read_i32(&self, src: &CudaSlice<i32>, n: usize) -> Result<Vec<i32>> {
        let mut out = vec![0i32; n];
        if n > src.len() {
            return Err(Error::Internal(format!("read of {n} ints from {}", src.len())));
        }
        self.stream.memcpy_dtoh(&src.slice(0..n), &mut out).map_err(cuda_err("download"))?;
        Ok(out)
    }

    /// Copies the first `n` floats of `src` into the start of `dst`, on the device.
    pub fn copy_into(&self, dst: &mut CudaBuf, src: &CudaBuf, n: usize) -> Result<()> {
        if n > src.0.len() || n > dst.0.len() {
            return Err(Error::Internal(format!("copy of {n} floats from {} into {}", src.0.len(), dst.0.len())));
        }
        if n > 0 {
            self.stream.memcpy_dtod(&src.0.slice(0..n), &mut dst.0.slice_mut(0..n)).map_err(cuda_err("copy"))?;
        }
        Ok(())
    }

    /// The step metadata on the device, uploaded once and reused while the step is unchanged.
    fn with_meta<T>(
        &self,
        meta: CheckedStep,
        num_slots: usize,
        d: AttnDims,
        f: impl FnOnce(&meta::DeviceMeta, &mut Scratch) -> Result<T>,
    ) -> Result<T> {
        // Tensor cores for prompt chunks unless the exact f32 kernel was asked for or the head size does not
        // split into 16-wide fragments.
        let tc = !self.exact_prefill.load(std::sync::atomic::Ordering::Relaxed) && d.head_dim.is_multiple_of(16);
        let prefill_rows = if tc { ffi::TL_PREFILL_ROWS_TC } else { ffi::TL_PREFILL_ROWS } as usize;
        let tiling = meta::Tiling { decode_split: ffi::TL_DECODE_SPLIT as usize, prefill_rows };
        let mut s = self.lock()?;
        // Packed once per step (the first op of the step that needs it), not once per layer and op.
        let key = (meta.serial(), num_slots, prefill_rows);
        if s.meta_key != Some(key) {
            s.meta_key = None;
            let host = meta::pack(meta, num_slots, tiling)?;
            self.upload_meta(&mut s, host)?;
            s.meta_key = Some(key);
        }
        let dm = s.meta_dev.take().ok_or_else(|| Error::Internal("metadata missing".into()))?;
        let r = f(&dm, &mut s);
        s.meta_dev = Some(dm);
        r
    }

    /// `v` copied into the reused device array of small per-step inputs (token ids, row indices): grown by powers
    /// of two, so steps allocate nothing for them. Stream order keeps a later copy behind the kernels that read
    /// the earlier one.
    fn stage_i32<'a>(&self, s: &'a mut Scratch, v: &[i32]) -> Result<&'a CudaSlice<i32>> {
        self.grow(&mut s.ints, v.len())?;
        let buf = s.ints.as_mut().ok_or_else(|| Error::Internal("int scratch missing".into()))?;
        if !v.is_empty() {
            self.stream.memcpy_htod(v, &mut buf.slice_mut(0..v.len())).map_err(cuda_err("upload"))?;
        }
        Ok(buf)
    }

    /// Puts a packed step on the device, unless the device copy already holds the same pack.
    fn upload_meta(&self, s: &mut Scratch, host: meta::HostMeta) -> Result<()> {
        if s.meta_dev.as_ref().is_none_or(|d| d.host != host) {
            // The device array is kept from step to step while the pack fits it, and grows by powers of two:
            // decode steps (whose block tables grow a block at a time) allocate nothing.
            let len = host.data.len();
            let mut buf = match s.meta_dev.take() {
                Some(d) if d.buf.len() >= len => d.buf,
                _ => self.stream.alloc_zeros::<i32>(len.next_power_of_two()).map_err(cuda_err("metadata alloc"))?,
            };
            self.stream.memcpy_htod(&host.data, &mut buf.slice_mut(0..len)).map_err(cuda_err("metadata upload"))?;
            s.meta_dev = Some(meta::DeviceMeta { buf, host });
        }
        Ok(())
    }

    /// out `[n, m]` = x `[n, k]` · wᵀ, x converted to bf16 once for the GEMMs that read it (q/k/v, gate/up).
    fn gemm_bf16(
        &self,
        out: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaSlice<u16>,
        n: usize,
        m: usize,
        k: usize,
    ) -> Result<()> {
        self.ctx.bind_to_thread().map_err(cuda_err("bind context"))?;
        let key = (x.0.device_ptr(&self.stream).0, n * k);
        let mut s = self.lock()?;
        s.convert_once(Converted::Bf16, key, |s| {
            self.grow(&mut s.bf16, n * k)?;
            let xb = s.bf16.as_mut().ok_or_else(|| Error::Internal("gemm scratch missing".into()))?;
            ffi::f32_to_bf16(&self.stream, xb, &x.0, n * k)
        })?;
        let xb = s.bf16.as_ref().ok_or_else(|| Error::Internal("gemm scratch missing".into()))?;
        ffi::gemm_bf16(&self.blas, &self.stream, &mut out.0, xb, w, n, m, k)
    }

    /// The norm (`residual`: with the residual add), its kernel also writing the input of the GEMMs that read its
    /// output next (q/k/v, gate/up): E4M3 codes and per-token scales under FP8 weights, bf16 otherwise (the bits
    /// the conversion kernels give), recorded as the cached copy of `out`. No conversion kernel runs for them.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_fused(
        &self,
        out: &mut CudaBuf,
        residual: Option<&mut CudaBuf>,
        x: &CudaBuf,
        w: &CudaSlice<f32>,
        n: usize,
        h: usize,
        eps: f32,
    ) -> Result<()> {
        self.bind()?;
        let mut s = self.lock()?;
        let r = residual.map(|r| &mut r.0);
        let kind = if self.fp8_weights.load(std::sync::atomic::Ordering::Relaxed) {
            let (codes, scales) = self.fp8_scratch(&mut s, n * h, n)?;
            ffi::rms_norm_fp8(&self.stream, &mut out.0, r, codes, scales, &x.0, w, n, h, eps)?;
            Converted::Fp8
        } else {
            self.grow(&mut s.bf16, n * h)?;
            let out16 = s.bf16.as_mut().ok_or_else(|| Error::Internal("gemm scratch missing".into()))?;
            ffi::rms_norm(&self.stream, &mut out.0, r, Some(out16), &x.0, w, n, h, eps)?;
            Converted::Bf16
        };
        *s.key_of(kind) = Some((out.0.device_ptr(&self.stream).0, n * h));
        Ok(())
    }

    /// The FP8 GEMM: x `[n, k]` quantized per token to E4M3 once for the GEMMs that read it, then
    /// `ffi::gemm_fp8` with the weight's codes `[m, k]` and per-channel scales.
    #[allow(clippy::too_many_arguments)]
    fn gemm_fp8(
        &self,
        out: &mut CudaBuf,
        x: &CudaBuf,
        codes: &CudaSlice<u8>,
        w_scales: &CudaSlice<f32>,
        n: usize,
        m: usize,
        k: usize,
    ) -> Result<()> {
        self.ctx.bind_to_thread().map_err(cuda_err("bind context"))?;
        let key = (x.0.device_ptr(&self.stream).0, n * k);
        let mut s = self.lock()?;
        s.convert_once(Converted::Fp8, key, |s| {
            let (xq, sx) = self.fp8_scratch(s, n * k, n)?;
            ffi::quantize_fp8_rows(&self.stream, xq, sx, &x.0, n, k)
        })?;
        let (Some(xq), Some(sx)) = (s.fp8.as_ref(), s.fp8_scales.as_ref()) else {
            return Err(Error::Internal("fp8 scratch missing".into()));
        };
        ffi::gemm_fp8(&self.blas, &self.stream, &mut out.0, xq, sx, codes, w_scales, n, m, k)
    }

    /// The FP8 scratch (codes, per-token scales) for `elems` values of `rows` rows.
    fn fp8_scratch<'a>(
        &self,
        s: &'a mut Scratch,
        elems: usize,
        rows: usize,
    ) -> Result<(&'a mut CudaSlice<u8>, &'a mut CudaSlice<f32>)> {
        self.grow(&mut s.fp8, elems)?;
        self.grow(&mut s.fp8_scales, rows)?;
        match (s.fp8.as_mut(), s.fp8_scales.as_mut()) {
            (Some(codes), Some(scales)) => Ok((codes, scales)),
            _ => Err(Error::Internal("fp8 scratch missing".into())),
        }
    }

    /// A reusable scratch slice of at least `n` elements.
    fn grow<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        slot: &mut Option<CudaSlice<T>>,
        n: usize,
    ) -> Result<()> {
        if slot.as_ref().is_none_or(|b| b.len() < n) {
            *slot = None;
            *slot =
                Some(self.stream.alloc_zeros::<T>(n.max(1).next_power_of_two()).map_err(cuda_err("scratch alloc"))?);
        }
        Ok(())
    }
}

fn f32_vec(t: &Tensor) -> Vec<f32> {
    match &t.data {
        TensorData::F32(v) => v.clone(),
        _ => t.to_f32_vec(),
    }
}

/// The bf16 bit patterns of a matrix: borrowed when already bf16 (no host copy), converted otherwise.
fn bf16_bits(t: &Tensor) -> std::borrow::Cow<'_, [u16]> {
    use std::borrow::Cow;
    match &t.data {
        TensorData::BF16(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        TensorData::F32(v) => Cow::Owned(v.iter().map(|&f| half::bf16::from_f32(f).to_bits()).collect()),
        TensorData::F16(v) => Cow::Owned(v.iter().map(|&f| half::bf16::from_f32(f.to_f32()).to_bits()).collect()),
    }
}

fn norm_weight<'a>(w: &'a CudaWeight, what: &str) -> Result<&'a CudaSlice<f32>> {
    match w {
        CudaWeight::F32 { data } => Ok(data),
        _ => Err(Error::Internal(format!("{what}: expected a vector weight, got a matrix"))),
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Weight = CudaWeight;

    fn name(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        format!("cuda:{} ({name})", self.ctx.ordinal())
    }

    fn upload_matmul(&self, t: Tensor, fmt: WeightFormat) -> Result<CudaWeight> {
        match fmt {
            // The GPU's GEMMs already take bf16 activations.
            WeightFormat::Auto | WeightFormat::AsLoaded | WeightFormat::Bf16 => self.upload(t),
            WeightFormat::Fp8 if t.shape.len() == 2 => self.upload_fp8(&t),
            WeightFormat::Fp8 => self.upload(t),
            WeightFormat::Int8 => Err(Error::Config(
                "the CUDA backend does not implement int8 weights yet: use weight_dtype auto, f32 or bf16 \
                 (--weights bf16), or int8 on the CPU engine"
                    .into(),
            )),
        }
    }

    fn upload(&self, t: Tensor) -> Result<CudaWeight> {
        self.bind()?;
        match t.shape.len() {
            1 => Ok(CudaWeight::F32 { data: self.stream.clone_htod(&f32_vec(&t)).map_err(cuda_err("upload"))? }),
            2 => {
                let (rows, cols) = (t.shape[0], t.shape[1]);
                let data = self.stream.clone_htod(bf16_bits(&t).as_ref()).map_err(cuda_err("upload"))?;
                Ok(CudaWeight::Bf16 { data, rows, cols })
            }
            _ => Err(Error::Internal(format!("cannot upload a tensor of shape {:?}", t.shape))),
        }
    }

    fn kv_bf16_by_default(&self) -> bool {
        true
    }

    fn kv_value_bytes(&self, d: AttnDims) -> usize {
        d.kv.bytes()
    }

    /// A bf16 (E4M3) cache of `n` values is a buffer of `n / 2` (`n / 4`) f32 elements, read as such by the kernels.
    fn alloc_kv(&self, n: usize, d: AttnDims) -> Result<CudaBuf> {
        self.alloc((n * d.kv.bytes()).div_ceil(4))
    }

    fn alloc(&self, n: usize) -> Result<CudaBuf> {
        self.bind()?;
        Ok(CudaBuf(self.stream.alloc_zeros::<f32>(n.max(1)).map_err(cuda_err(&format!("alloc of {n} floats")))?))
    }

    fn fit(&self, buf: &mut CudaBuf, n: usize) -> Result<()> {
        if buf.0.len() < n {
            *buf = self.alloc(n)?;
        }
        Ok(())
    }

    fn write(&self, dst: &mut CudaBuf, src: &[f32]) -> Result<()> {
        self.invalidate()?;
        if src.len() > dst.0.len() {
            return Err(Error::Internal(format!("write of {} floats into {}", src.len(), dst.0.len())));
        }
        if src.is_empty() {
            return Ok(());
        }
        self.stream.memcpy_htod(src, &mut dst.0.slice_mut(0..src.len())).map_err(cuda_err("upload"))
    }

    fn read(&self, src: &CudaBuf, n: usize) -> Result<Vec<f32>> {
        if n > src.0.len() {
            return Err(Error::Internal(format!("read of {n} floats from {}", src.0.len())));
        }
        let mut out = vec![0f32; n];
        if n > 0 {
            self.stream.memcpy_dtoh(&src.0.slice(0..n), &mut out).map_err(cuda_err("download"))?;
        }
        Ok(out)
    }

    fn embedding(&self, out: &mut CudaBuf, table: &CudaWeight, ids: &[u32], h: usize) -> Result<()> {
        let CudaWeight::Bf16 { data, rows, cols } = table else {
            return Err(Error::Internal("embedding: table is not a matrix".into()));
        };
        if *cols != h {
            return Err(Error::Internal(format!("embedding: table width {cols}, hidden {h}")));
        }
        super::check_token_ids(ids, *rows)?;
        self.bind()?;
        let mut s = self.lock()?;
        let dev_ids = self.stage_i32(&mut s, &ids.iter().map(|&i| i as i32).collect::<Vec<_>>())?;
        ffi::embedding(&self.stream, &mut out.0, data, *rows, dev_ids, ids.len(), h)
    }

    fn rms_norm(&self, out: &mut CudaBuf, x: &CudaBuf, w: &CudaWeight, n: usize, h: usize, eps: f32) -> Result<()> {
        self.rms_norm_fused(out, None, x, norm_weight(w, "rms_norm")?, n, h, eps)
    }

    fn add_rms_norm(
        &self,
        residual: &mut CudaBuf,
        x: &CudaBuf,
        out: &mut CudaBuf,
        w: &CudaWeight,
        n: usize,
        h: usize,
        eps: f32,
    ) -> Result<()> {
        self.rms_norm_fused(out, Some(residual), x, norm_weight(w, "add_rms_norm")?, n, h, eps)
    }

    fn gemm(&self, out: &mut CudaBuf, x: &CudaBuf, w: &CudaWeight, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        match w {
            CudaWeight::Bf16 { data, rows, cols } => self.gemm_bf16(out, x, data, n, *rows, *cols),
            CudaWeight::Fp8 { codes, scales, rows, cols } => self.gemm_fp8(out, x, codes, scales, n, *rows, *cols),
            CudaWeight::F32 { .. } => Err(Error::Internal("gemm: weight is not a matrix".into())),
        }
    }

    fn rope_write_kv(
        &self,
        q: &mut CudaBuf,
        qkv: &CudaBuf,
        k_cache: &mut CudaBuf,
        v_cache: &mut CudaBuf,
        meta: CheckedStep,
        d: AttnDims,
    ) -> Result<()> {
        let kw = (d.n_kv_heads * d.head_dim).max(1);
        let num_slots = ffi::kv_values(&k_cache.0, d).min(ffi::kv_values(&v_cache.0, d)) / kw;
        self.bind()?;
        self.with_meta(meta, num_slots, d, |dm, _| {
            ffi::rope_write_kv(&self.stream, &mut q.0, &qkv.0, &mut k_cache.0, &mut v_cache.0, dm, d)
        })
    }

    fn paged_attention(
        &self,
        out: &mut CudaBuf,
        q: &CudaBuf,
        k_cache: &CudaBuf,
        v_cache: &CudaBuf,
        meta: CheckedStep,
        d: AttnDims,
    ) -> Result<()> {
        let kw = (d.n_kv_heads * d.head_dim).max(1);
        let num_slots = ffi::kv_values(&k_cache.0, d).min(ffi::kv_values(&v_cache.0, d)) / kw;
        self.bind()?;
        // With bf16 GEMMs the kernels also write the output in bf16: the wo GEMM's input, recorded as the cached
        // copy of `out` (FP8 weights quantize it on their own).
        let bf16 = !self.fp8_weights.load(std::sync::atomic::Ordering::Relaxed);
        self.with_meta(meta, num_slots, d, |dm, s| {
            let need = if dm.dec_splits > 1 { dm.n_dec * d.n_heads * dm.dec_splits * (d.head_dim + 2) } else { 1 };
            let len = dm.n_tokens * d.n_heads * d.head_dim;
            self.grow(&mut s.attn, need)?;
            if bf16 {
                self.grow(&mut s.bf16, len)?;
            }
            let scratch = s.attn.as_mut().ok_or_else(|| Error::Internal("attention scratch missing".into()))?;
            let out16 = if bf16 { s.bf16.as_mut() } else { None };
            ffi::paged_attention(&self.stream, &mut out.0, out16, &q.0, &k_cache.0, &v_cache.0, scratch, dm, d)?;
            if bf16 {
                *s.key_of(Converted::Bf16) = Some((out.0.device_ptr(&self.stream).0, len));
            }
            Ok(())
        })
    }

    fn silu_mul(&self, out: &mut CudaBuf, gate_up: &CudaBuf, n: usize, f: usize) -> Result<()> {
        self.bind()?;
        if self.fp8_weights.load(std::sync::atomic::Ordering::Relaxed) {
            // The down GEMM's FP8 input (codes and per-token scales) from the same kernel, recorded as the cached
            // FP8 copy of `out`.
            let mut s = self.lock()?;
            let (codes, scales) = self.fp8_scratch(&mut s, n * f, n)?;
            ffi::silu_mul_fp8(&self.stream, &mut out.0, codes, scales, &gate_up.0, n, f)?;
            *s.key_of(Converted::Fp8) = Some((out.0.device_ptr(&self.stream).0, n * f));
            return Ok(());
        }
        // The down GEMM's bf16 input written by the same kernel, recorded as the cached copy of `out`.
        let mut s = self.lock()?;
        self.grow(&mut s.bf16, n * f)?;
        let out16 = s.bf16.as_mut().ok_or_else(|| Error::Internal("gemm scratch missing".into()))?;
        ffi::silu_mul(&self.stream, &mut out.0, Some(out16), &gate_up.0, n, f)?;
        *s.key_of(Converted::Bf16) = Some((out.0.device_ptr(&self.stream).0, n * f));
        Ok(())
    }

    fn gather_rows(&self, out: &mut CudaBuf, x: &CudaBuf, rows: &[usize], h: usize) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let max_row = rows.iter().copied().max().unwrap_or(0);
        self.bind()?;
        let mut s = self.lock()?;
        let idx = rows.iter().map(|&r| i32::try_from(r).unwrap_or(i32::MAX)).collect::<Vec<_>>();
        let idx = self.stage_i32(&mut s, &idx)?;
        ffi::gather_rows(&self.stream, &mut out.0, &x.0, idx, max_row, rows.len(), h)
    }

    fn unshard_vocab(
        &self,
        out: &mut CudaBuf,
        parts: &CudaBuf,
        rows: usize,
        vocab: usize,
        world: usize,
        width: usize,
    ) -> Result<()> {
        self.bind()?;
        ffi::unshard_vocab(&self.stream, &mut out.0, &parts.0, rows, vocab, world, width)
    }

    fn sample(&self, logits: &mut CudaBuf, batch: &SampleBatch) -> Result<Vec<Picked>> {
        self.sample_rows(logits, batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::driver::sys::CUresult;

    /// The sticky codes as cuda.h names them (cudarc's bindings of the header), and errors a context survives.
    /// (`cuda_err` itself needs a driver: a DriverError's text comes from cuGetErrorString.)
    #[test]
    fn sticky_device_errors_stop_the_engine_and_others_fail_the_step() {
        for c in [
            CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
            CUresult::CUDA_ERROR_LAUNCH_FAILED,
            CUresult::CUDA_ERROR_MISALIGNED_ADDRESS,
            CUresult::CUDA_ERROR_ILLEGAL_INSTRUCTION,
            CUresult::CUDA_ERROR_ASSERT,
            CUresult::CUDA_ERROR_ECC_UNCORRECTABLE,
            CUresult::CUDA_ERROR_LAUNCH_TIMEOUT,
        ] {
            let e = device_error(format!("{c:?}"), c as i32);
            assert!(matches!(e, Error::EngineStopped(_)), "{c:?}: {e}");
            assert!(e.to_string().contains("restart the server"), "{e}");
        }
        for c in
            [CUresult::CUDA_ERROR_OUT_OF_MEMORY, CUresult::CUDA_ERROR_INVALID_VALUE, CUresult::CUDA_ERROR_NOT_READY]
        {
            assert!(matches!(device_error(format!("{c:?}"), c as i32), Error::Internal(_)), "{c:?}");
        }
        assert!(!is_sticky(100_000), "TL_ERR_ARGS (csrc/ops.h), a launcher's argument check, is not a device error");
    }
}
