//! FP8 on the GPU: safe wrappers of csrc/fp8.cu's launchers and the FP8 GEMM (cuBLASLt's E4M3 tensor-core kernels
//! with f32 accumulation and output, then the per-token and per-channel scales by `tl_fp8_scale_out`; the plain
//! kernel for shapes cuBLASLt's FP8 kernels refuse, which no Llama-2 shape is).
#![allow(unsafe_code)]
use super::{Blas, Operands, int, need, raw, status, sys};
use crate::Result;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

/// `out` `[n, k]` E4M3 codes and `scales` `[n]` of the f32 rows `x` `[n, k]` (`tl_quantize_fp8_rows`).
pub fn quantize_fp8_rows(
    st: &CudaStream,
    out: &mut CudaSlice<u8>,
    scales: &mut CudaSlice<f32>,
    x: &CudaSlice<f32>,
    n: usize,
    k: usize,
) -> Result<()> {
    need("quantize_fp8_rows", "x", x.len(), n * k)?;
    need("quantize_fp8_rows", "out", out.len(), n * k)?;
    need("quantize_fp8_rows", "scales", scales.len(), n)?;
    let (ni, ki) = (int("quantize_fp8_rows", n)?, int("quantize_fp8_rows", k)?);
    let (o, _a) = out.device_ptr_mut(st);
    let (s, _b) = scales.device_ptr_mut(st);
    let (xp, _c) = x.device_ptr(st);
    // SAFETY: lengths checked above.
    status("quantize_fp8_rows", unsafe {
        sys::tl_quantize_fp8_rows(o as *mut u8, s as *mut f32, xp as *const f32, ni, ki, raw(st))
    })
}

/// `rms_norm` (with `residual`: `add_rms_norm`) that also writes the output rows' E4M3 codes `[n, h]` and scales
/// `[n]` (`tl_rms_norm_fp8`): the next FP8 GEMM's input, quantized by the norm's kernel.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_fp8(
    st: &CudaStream,
    out: &mut CudaSlice<f32>,
    residual: Option<&mut CudaSlice<f32>>,
    codes: &mut CudaSlice<u8>,
    scales: &mut CudaSlice<f32>,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    n: usize,
    h: usize,
    eps: f32,
) -> Result<()> {
    const OP: &str = "rms_norm_fp8";
    need(OP, "out", out.len(), n * h)?;
    need(OP, "x", x.len(), n * h)?;
    need(OP, "weight", w.len(), h)?;
    need(OP, "codes", codes.len(), n * h)?;
    need(OP, "scales", scales.len(), n)?;
    let (ni, hi) = (int(OP, n)?, int(OP, h)?);
    let (o, _a) = out.device_ptr_mut(st);
    let (cp, _b) = codes.device_ptr_mut(st);
    let (sp, _c) = scales.device_ptr_mut(st);
    let (xp, _d) = x.device_ptr(st);
    let (wp, _e) = w.device_ptr(st);
    let mut guard = None;
    let rp = match residual {
        Some(r) => {
            need(OP, "residual", r.len(), n * h)?;
            let (rp, g) = r.device_ptr_mut(st);
            guard = Some(g);
            rp as *mut f32
        }
        None => std::ptr::null_mut(),
    };
    // SAFETY: lengths checked above; the borrow checker keeps the buffers distinct; a null residual is the plain
    // norm.
    let s = unsafe {
        sys::tl_rms_norm_fp8(
            o as *mut f32,
            rp,
            cp as *mut u8,
            sp as *mut f32,
            xp as *const f32,
            wp as *const f32,
            ni,
            hi,
            eps,
            raw(st),
        )
    };
    drop(guard);
    status(OP, s)
}

/// `silu_mul` of `gate_up` `[n, 2f]` into `out` `[n, f]` that also writes the output rows' E4M3 codes `[n, f]` and
/// scales `[n]` (`tl_silu_mul_fp8`): the down GEMM's FP8 input, quantized by the same kernel.
pub fn silu_mul_fp8(
    st: &CudaStream,
    out: &mut CudaSlice<f32>,
    codes: &mut CudaSlice<u8>,
    scales: &mut CudaSlice<f32>,
    gate_up: &CudaSlice<f32>,
    n: usize,
    f: usize,
) -> Result<()> {
    const OP: &str = "silu_mul_fp8";
    need(OP, "out", out.len(), n * f)?;
    need(OP, "gate_up", gate_up.len(), 2 * n * f)?;
    need(OP, "codes", codes.len(), n * f)?;
    need(OP, "scales", scales.len(), n)?;
    let (ni, fi) = (int(OP, n)?, int(OP, f)?);
    let (o, _a) = out.device_ptr_mut(st);
    let (cp, _b) = codes.device_ptr_mut(st);
    let (sp, _c) = scales.device_ptr_mut(st);
    let (gp, _d) = gate_up.device_ptr(st);
    // SAFETY: lengths checked above; the borrow checker keeps the buffers distinct.
    status(OP, unsafe {
        sys::tl_silu_mul_fp8(o as *mut f32, cp as *mut u8, sp as *mut f32, gp as *const f32, ni, fi, raw(st))
    })
}

/// `quantize_fp8_rows` of bf16 rows `x` `[n, k]` (`tl_quantize_fp8_rows_bf16`).
pub fn quantize_fp8_rows_bf16(
    st: &CudaStream,
    out: &mut CudaSlice<u8>,
    scales: &mut CudaSlice<f32>,
    x: &CudaSlice<u16>,
    n: usize,
    k: usize,
) -> Result<()> {
    need("quantize_fp8_rows_bf16", "x", x.len(), n * k)?;
    need("quantize_fp8_rows_bf16", "out", out.len(), n * k)?;
    need("quantize_fp8_rows_bf16", "scales", scales.len(), n)?;
    let (ni, ki) = (int("quantize_fp8_rows_bf16", n)?, int("quantize_fp8_rows_bf16", k)?);
    let (o, _a) = out.device_ptr_mut(st);
    let (s, _b) = scales.device_ptr_mut(st);
    let (xp, _c) = x.device_ptr(st);
    // SAFETY: lengths checked above.
    status("quantize_fp8_rows_bf16", unsafe {
        sys::tl_quantize_fp8_rows_bf16(o as *mut u8, s as *mut f32, xp as *const u16, ni, ki, raw(st))
    })
}

const PLAIN: &str = "the plain FP8 kernel (tl_gemm_fp8_plain)";

/// out `[n, m]` (f32) = (xq `[n, k]` · wqᵀ with wq `[m, k]`, E4M3, f32 accumulation) * sx `[n]` (per token) *
/// sw `[m]` (per output channel). cuBLASLt where k and m are multiples of 16 (its FP8 kernels' rule), else and on
/// any cuBLASLt failure the plain kernel (logged once, as the bf16 GEMM's fallback is).
#[allow(clippy::too_many_arguments)]
pub fn gemm_fp8(
    blas: &Blas,
    st: &CudaStream,
    out: &mut CudaSlice<f32>,
    xq: &CudaSlice<u8>,
    sx: &CudaSlice<f32>,
    wq: &CudaSlice<u8>,
    sw: &CudaSlice<f32>,
    n: usize,
    m: usize,
    k: usize,
) -> Result<()> {
    const OP: &str = "gemm_fp8";
    need(OP, "out", out.len(), n * m)?;
    need(OP, "xq", xq.len(), n * k)?;
    need(OP, "wq", wq.len(), m * k)?;
    need(OP, "sx", sx.len(), n)?;
    need(OP, "sw", sw.len(), m)?;
    let (ni, mi, ki) = (int(OP, n)?, int(OP, m)?, int(OP, k)?);
    if n == 0 {
        return Ok(());
    }
    let (o, _a) = out.device_ptr_mut(st);
    let (xp, _b) = xq.device_ptr(st);
    let (wp, _c) = wq.device_ptr(st);
    let (sxp, _d) = sx.device_ptr(st);
    let (swp, _e) = sw.device_ptr(st);
    if blas.try_lt(st, o, xp, wp, n, m, k, Operands::E4m3, PLAIN) {
        // SAFETY: out holds n * m floats, sx n and sw m (checked above).
        return status(OP, unsafe {
            sys::tl_fp8_scale_out(o as *mut f32, sxp as *const f32, swp as *const f32, ni, mi, raw(st))
        });
    }
    // SAFETY: lengths checked above.
    status(OP, unsafe {
        sys::tl_gemm_fp8_plain(
            o as *mut f32,
            xp as *const u8,
            sxp as *const f32,
            wp as *const u8,
            swp as *const f32,
            ni,
            mi,
            ki,
            raw(st),
        )
    })
}
