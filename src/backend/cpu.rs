//! The CPU reference backend: plain loops over `&[f32]`, one function per op, named like the CUDA kernels.
//! Matmul weights are packed at load for the kernels of `cpu_gemm` (bf16, or int8); other weights stay in their
//! stored dtype. f32/f16 matmul weights (and TL_CPU_KERNEL=legacy) take the row-dot `gemm` below.
use super::cpu_attention::k_index;
pub use super::cpu_attention::{k_cache_from_slots, k_cache_to_slots};
use super::cpu_gemm::{self, Packed};
use super::fp8::{self, Fp8Rows};
use super::{AttnDims, Backend, CheckedStep, WeightFormat, check_token_ids, even_share, unshard_shape};
use crate::sampling::{Picked, SampleBatch, logprob_and_top};
use crate::tensor::{Tensor, TensorData};
use crate::{Error, Result};
use multiversion::multiversion;
use rayon::prelude::*;
use std::borrow::Cow;

/// Runs on the host; parallel over output rows with rayon.
#[derive(Debug, Clone, Default)]
pub struct CpuBackend;

/// A weight on the CPU: as loaded, or packed for the matmul kernels.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuWeight {
    Plain(Tensor),
    Packed(Packed),
    /// The reference twin of the GPU's FP8 weights: the E4M3 values of each row (exact in bf16) packed for the
    /// f32-activation kernels, and the row's scale (`fp8::Fp8Rows`).
    Fp8 {
        values: Packed,
        scales: Vec<f32>,
    },
}

impl CpuWeight {
    /// The tensor of a weight that is not packed (embedding, norms).
    fn plain(&self) -> Result<&Tensor> {
        match self {
            CpuWeight::Plain(t) => Ok(t),
            _ => Err(Error::Internal("a packed matmul weight used as a plain tensor".into())),
        }
    }

    /// (rows, columns) of a matrix.
    fn dims(&self) -> (usize, usize) {
        match self {
            CpuWeight::Plain(t) => (t.shape[0], t.shape.get(1).copied().unwrap_or(1)),
            CpuWeight::Packed(p) | CpuWeight::Fp8 { values: p, .. } => p.shape(),
        }
    }
}

/// FP8 weights for the CPU twin: `t` `[n, k]` quantized per output channel to E4M3 (`fp8::Fp8Rows`); the codes'
/// values (exact in bf16) packed for the kernels that keep activations in f32.
fn fp8_weight(t: &Tensor) -> CpuWeight {
    let (n, k) = (t.shape[0], t.shape[1]);
    let q = Fp8Rows::quantize(&t.to_f32_vec(), n, k);
    let table = fp8::e4m3_table();
    let values = Tensor::from_f32(&[n, k], q.codes.iter().map(|&c| table[c as usize]).collect()).to_bf16();
    CpuWeight::Fp8 { values: Packed::bf16(&values, false), scales: q.scales }
}

/// The GPU's FP8 GEMM on the CPU: `x` `[n, k]` quantized per token to E4M3, multiplied by each weight's E4M3
/// values in f32 (products of two E4M3 values are exact), then `out[t, j] = acc * x_scale[t] * w_scale[j]` (the
/// epilogue's order). One quantization of `x` serves every weight.
fn gemm_fp8(outs: &mut [&mut [f32]], x: &[f32], ws: &[(&Packed, &[f32])], n: usize) {
    let k = ws.first().map_or(0, |(p, _)| p.shape().1);
    let q = Fp8Rows::quantize(&x[..n * k], n, k);
    let table = fp8::e4m3_table();
    let xq: Vec<f32> = q.codes.iter().map(|&c| table[c as usize]).collect();
    let packed: Vec<&Packed> = ws.iter().map(|(p, _)| *p).collect();
    cpu_gemm::gemm_many(outs, &xq, &packed, n);
    for (out, (p, w_scales)) in outs.iter_mut().zip(ws) {
        let m = p.shape().0;
        for (row, &sx) in out[..n * m].chunks_exact_mut(m).zip(&q.scales) {
            for (o, &sw) in row.iter_mut().zip(w_scales.iter()) {
                *o = *o * sx * sw;
            }
        }
    }
}

/// Bytes of weights one rayon task handles in `gemm` (keeps tasks cache-sized).
const GEMM_TASK_BYTES: usize = 64 << 10;

/// Lanes of independent f32 partial sums in `dot_with` (4 AVX registers: enough to hide add latency).
const LANES: usize = 32;
/// Chunks of LANES elements summed in f32 before the partial sums are folded into f64.
const FOLD: usize = 8;

/// Dot product of f32 `a` with `b` widened by `f`: products are summed in f32 over short runs, then in f64,
/// so the result barely depends on summation order and tensor-parallel ranks (which split the sums) agree
/// with one rank to ~1e-7.
#[inline(always)]
fn dot_with<W: Copy>(a: &[f32], b: &[W], f: impl Fn(W) -> f32) -> f32 {
    let (ca, ra) = a.as_chunks::<LANES>();
    let (cb, rb) = b.as_chunks::<LANES>();
    let mut total = [0f64; LANES];
    for (xs, ys) in ca.chunks(FOLD).zip(cb.chunks(FOLD)) {
        let mut acc = [0f32; LANES];
        for (x, y) in xs.iter().zip(ys) {
            for j in 0..LANES {
                acc[j] += x[j] * f(y[j]);
            }
        }
        for j in 0..LANES {
            total[j] += acc[j] as f64;
        }
    }
    let mut s = 0f64;
    for (x, y) in ra.iter().zip(rb) {
        s += (x * f(*y)) as f64;
    }
    for v in total {
        s += v;
    }
    s as f32
}

/// Four dot products of `a` with the rows of `w` `[4, len]` (one load of `a` serves four weight rows);
/// the same summation as `dot_with`, lane for lane, so a row's result does not depend on how many rows the step
/// has (which path it took): prefix caching reuses K/V computed in other batches bit for bit.
#[multiversion(targets("x86_64+avx2+fma", "x86_64+avx"))]
fn dot4(a: &[f32], w: &[f32]) -> [f32; 4] {
    const L: usize = LANES;
    let k = a.len();
    let (ca, ra) = a.as_chunks::<L>();
    let rows: [&[f32]; 4] = [&w[..k], &w[k..2 * k], &w[2 * k..3 * k], &w[3 * k..4 * k]];
    let cw = rows.map(|r| r.as_chunks::<L>().0);
    let mut total = [[0f64; L]; 4];
    let mut c = 0;
    while c < ca.len() {
        let end = (c + FOLD).min(ca.len());
        let mut acc = [[0f32; L]; 4];
        for i in c..end {
            let x = &ca[i];
            for r in 0..4 {
                let y = &cw[r][i];
                for j in 0..L {
                    acc[r][j] += x[j] * y[j];
                }
            }
        }
        for r in 0..4 {
            for j in 0..L {
                total[r][j] += acc[r][j] as f64;
            }
        }
        c = end;
    }
    let tail = ca.len() * L;
    let mut out = [0f32; 4];
    for r in 0..4 {
        let mut s = 0f64;
        for (i, x) in ra.iter().enumerate() {
            s += (x * rows[r][tail + i]) as f64;
        }
        for v in total[r] {
            s += v;
        }
        out[r] = s as f32;
    }
    out
}

#[multiversion(targets("x86_64+avx2+fma", "x86_64+avx"))]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(a, b, |v| v)
}

#[multiversion(targets("x86_64+avx2+fma", "x86_64+avx"))]
fn dot_bf16(a: &[f32], b: &[half::bf16]) -> f32 {
    dot_with(a, b, |v| f32::from_bits((v.to_bits() as u32) << 16))
}

#[multiversion(targets("x86_64+avx2+fma", "x86_64+avx"))]
fn widen_bf16(src: &[half::bf16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((s.to_bits() as u32) << 16);
    }
}

fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

/// Row `r` of a `[m, k]` weight as f32, widened into `scratch` when stored in 16 bits.
fn weight_row<'a>(w: &'a Tensor, r: usize, k: usize, scratch: &'a mut [f32]) -> &'a [f32] {
    match &w.data {
        TensorData::F32(v) => &v[r * k..(r + 1) * k],
        TensorData::BF16(v) => {
            widen_bf16(&v[r * k..(r + 1) * k], scratch);
            scratch
        }
        TensorData::F16(v) => {
            widen_f16(&v[r * k..(r + 1) * k], scratch);
            scratch
        }
    }
}

/// Copies row `r` of a `[m, k]` weight into `dst` as f32.
fn widen_row_into(w: &Tensor, r: usize, k: usize, dst: &mut [f32]) {
    match &w.data {
        TensorData::F32(v) => dst.copy_from_slice(&v[r * k..(r + 1) * k]),
        TensorData::BF16(v) => widen_bf16(&v[r * k..(r + 1) * k], dst),
        TensorData::F16(v) => widen_f16(&v[r * k..(r + 1) * k], dst),
    }
}

/// out `[n, m]` = x `[n, k]` · wᵀ, w `[m, k]`. Each weight row is read once per call, whatever n is.
fn gemm(out: &mut [f32], x: &[f32], w: &Tensor, n: usize) {
    let (m, k) = (w.shape[0], w.shape[1]);
    let rows_per_task = (GEMM_TASK_BYTES / (k * w.dtype().size())).max(1);
    // Computed transposed ([m, n]) so each task owns a contiguous slice; n == 1 needs no transpose.
    let mut transposed = if n == 1 { Vec::new() } else { vec![0f32; m * n] };
    let target: &mut [f32] = if n == 1 { &mut out[..m] } else { &mut transposed };
    target.par_chunks_mut(rows_per_task * n).enumerate().for_each(|(task, chunk)| {
        let first = task * rows_per_task;
        let rows = chunk.len() / n;
        if let (TensorData::BF16(v), true) = (&w.data, n <= 2) {
            // Few rows of x: widening on the fly beats a separate widening pass.
            for (i, o) in chunk.chunks_mut(n).enumerate() {
                let r = first + i;
                for (t, o) in o.iter_mut().enumerate() {
                    *o = dot_bf16(&x[t * k..(t + 1) * k], &v[r * k..(r + 1) * k]);
                }
            }
            return;
        }
        let mut scratch = vec![0f32; 4 * k];
        let mut i = 0;
        // Groups of four weight rows against every token, then the leftover rows one by one.
        while i + 4 <= rows && n > 2 {
            for j in 0..4 {
                widen_row_into(w, first + i + j, k, &mut scratch[j * k..(j + 1) * k]);
            }
            for t in 0..n {
                let d = dot4(&x[t * k..(t + 1) * k], &scratch);
                for j in 0..4 {
                    chunk[(i + j) * n + t] = d[j];
                }
            }
            i += 4;
        }
        for i in i..rows {
            let row = weight_row(w, first + i, k, &mut scratch[..k]);
            for t in 0..n {
                chunk[i * n + t] = dot(&x[t * k..(t + 1) * k], row);
            }
        }
    });
    if n > 1 {
        for r in 0..m {
            for t in 0..n {
                out[t * m + r] = transposed[r * n + t];
            }
        }
    }
}

/// One row of RMSNorm: out = x / sqrt(mean(x²) + eps) * w. The squares are summed in 16 lanes folded in a
/// fixed order (one running sum is a chain of 2048 dependent adds).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn rms_norm_row(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let mut lanes = [0f32; 16];
    for c in x.chunks(16) {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = v.mul_add(*v, *l);
        }
    }
    let ss = lanes.iter().sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ss + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * w;
    }
}

/// A norm's weights as f32 (`upload` widens 1-D weights, so this borrows unless a caller built another).
fn norm_weights(w: &CpuWeight) -> Result<Cow<'_, [f32]>> {
    let t = w.plain()?;
    Ok(match &t.data {
        TensorData::F32(v) => Cow::Borrowed(v.as_slice()),
        _ => Cow::Owned(t.to_f32_vec()),
    })
}

/// Elements of a step's activations from which the row-wise ops (norms, SiLU) split their rows over the pool:
/// a batch-8 decode step's 8 x 5632 SwiGLU input is past it, a batch-1 step stays on the calling thread.
const PAR_ELEMS: usize = 1 << 14;

/// `cs[i]` = (cos, sin) of split-halves RoPE's angle_i = pos * theta^(-2i/hd) for one position, `i < hd / 2`:
/// the same for every head, so computed once per token (a powf and a sin_cos per pair were ~1 ms of a TinyLlama
/// decode step when every head recomputed them).
fn rope_angles(cs: &mut [(f32, f32)], pos: f32, theta: f32, hd: usize) {
    for (i, c) in cs.iter_mut().enumerate() {
        let inv_freq = 1.0 / theta.powf((2 * i) as f32 / hd as f32);
        let (sin, cos) = (pos * inv_freq).sin_cos();
        *c = (cos, sin);
    }
}

/// Rotates one head's pairs `(x[i], x[i + hd/2])` by the angles of `rope_angles`.
fn rope_row(x: &mut [f32], cs: &[(f32, f32)]) {
    let half = x.len() / 2;
    for (i, &(cos, sin)) in cs[..half].iter().enumerate() {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos - b * sin;
        x[i + half] = b * cos + a * sin;
    }
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + super::cpu_math::exp(-x))
}

/// `out[i] = silu(gate[i]) * up[i]`, vectorized.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn silu_mul_rows(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(*g) * u;
    }
}

fn check_len(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::Internal(format!("{what}: buffer of {have} elements, {need} needed")));
    }
    Ok(())
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn host_threads(&self) -> bool {
        true
    }

    fn upload(&self, t: Tensor) -> Result<CpuWeight> {
        // Norm weights in f32 (exact), so the norms read them as a slice.
        if t.shape.len() == 1 && t.dtype() != crate::tensor::DType::F32 {
            return Ok(CpuWeight::Plain(Tensor::from_f32(&t.shape, t.to_f32_vec())));
        }
        Ok(CpuWeight::Plain(t))
    }

    fn upload_matmul(&self, t: Tensor, fmt: WeightFormat) -> Result<CpuWeight> {
        if t.shape.len() != 2 {
            return Err(Error::Internal(format!("matmul weight of shape {:?}", t.shape)));
        }
        let legacy = cpu_gemm::selected() == cpu_gemm::Choice::Legacy;
        // `resolve` never returns `Auto`: its arms are the exact path's only so that no request can reach a panic.
        Ok(match (fmt.resolve(t.dtype()), t.dtype()) {
            (WeightFormat::Int8, _) => CpuWeight::Packed(Packed::q8(&t)),
            (WeightFormat::Fp8, _) => fp8_weight(&t),
            (WeightFormat::Bf16, _) => CpuWeight::Packed(Packed::bf16(&t, true)),
            (WeightFormat::AsLoaded | WeightFormat::Auto, crate::tensor::DType::BF16) if !legacy => {
                CpuWeight::Packed(Packed::bf16(&t, false))
            }
            (WeightFormat::AsLoaded | WeightFormat::Auto, _) => CpuWeight::Plain(t),
        })
    }

    fn alloc(&self, n: usize) -> Result<Vec<f32>> {
        let mut v = Vec::new();
        v.try_reserve_exact(n).map_err(|e| Error::Internal(format!("cannot allocate {n} floats: {e}")))?;
        v.resize(n, 0.0);
        Ok(v)
    }

    fn fit(&self, buf: &mut Vec<f32>, n: usize) -> Result<()> {
        if n > buf.capacity() {
            buf.try_reserve_exact(n - buf.len())
                .map_err(|e| Error::Internal(format!("cannot allocate {n} floats: {e}")))?;
        }
        buf.resize(n, 0.0);
        Ok(())
    }

    fn write(&self, dst: &mut Vec<f32>, src: &[f32]) -> Result<()> {
        check_len("write", dst.len(), src.len())?;
        dst[..src.len()].copy_from_slice(src);
        Ok(())
    }

    fn read(&self, src: &Vec<f32>, n: usize) -> Result<Vec<f32>> {
        check_len("read", src.len(), n)?;
        Ok(src[..n].to_vec())
    }

    fn embedding(&self, out: &mut Vec<f32>, table: &CpuWeight, ids: &[u32], h: usize) -> Result<()> {
        check_len("embedding", out.len(), ids.len() * h)?;
        let table = table.plain()?;
        check_token_ids(ids, table.shape[0])?;
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            for j in 0..h {
                out[i * h + j] = table.get_f32(id * h + j);
            }
        }
        Ok(())
    }

    fn rms_norm(&self, out: &mut Vec<f32>, x: &Vec<f32>, w: &CpuWeight, n: usize, h: usize, eps: f32) -> Result<()> {
        let w = norm_weights(w)?;
        check_len("rms_norm", out.len().min(x.len()), n * h)?;
        let row = |(o, x): (&mut [f32], &[f32])| rms_norm_row(o, x, &w, eps);
        if n * h >= PAR_ELEMS {
            out[..n * h].par_chunks_mut(h).zip(x[..n * h].par_chunks(h)).for_each(row);
        } else {
            out[..n * h].chunks_mut(h).zip(x[..n * h].chunks(h)).for_each(row);
        }
        Ok(())
    }

    #[rustfmt::skip]
    fn add_rms_norm(&self, residual: &mut Vec<f32>, x: &Vec<f32>, out: &mut Vec<f32>, w: &CpuWeight, n: usize, h: usize,
                    eps: f32) -> Result<()> {
        let w = norm_weights(w)?;
        check_len("add_rms_norm", residual.len().min(x.len()).min(out.len()), n * h)?;
        let row = |((r, x), o): ((&mut [f32], &[f32]), &mut [f32])| {
            for (r, v) in r.iter_mut().zip(x) {
                *r += v;
            }
            rms_norm_row(o, r, &w, eps);
        };
        let (r, x, o) = (&mut residual[..n * h], &x[..n * h], &mut out[..n * h]);
        if n * h >= PAR_ELEMS {
            r.par_chunks_mut(h).zip(x.par_chunks(h)).zip(o.par_chunks_mut(h)).for_each(row);
        } else {
            r.chunks_mut(h).zip(x.chunks(h)).zip(o.chunks_mut(h)).for_each(row);
        }
        Ok(())
    }

    fn gemm(&self, out: &mut Vec<f32>, x: &Vec<f32>, w: &CpuWeight, n: usize) -> Result<()> {
        let (m, k) = w.dims();
        check_len("gemm out", out.len(), n * m)?;
        check_len("gemm x", x.len(), n * k)?;
        match w {
            CpuWeight::Plain(t) => gemm(out, x, t, n),
            CpuWeight::Packed(p) => cpu_gemm::gemm(out, x, p, n),
            CpuWeight::Fp8 { values, scales } => gemm_fp8(&mut [&mut out[..]], x, &[(values, scales)], n),
        }
        Ok(())
    }

    fn rope_write_kv(
        &self,
        q: &mut Vec<f32>,
        qkv: &Vec<f32>,
        k_cache: &mut Vec<f32>,
        v_cache: &mut Vec<f32>,
        meta: CheckedStep,
        d: AttnDims,
    ) -> Result<()> {
        let (hd, qw, kw) = (d.head_dim, d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim);
        let (n, bs, w) = (meta.n_tokens(), meta.block_size, qw + 2 * kw);
        check_len("rope q", q.len(), n * qw)?;
        check_len("rope qkv", qkv.len(), n * w)?;
        let mut cs = vec![(0f32, 0f32); hd / 2];
        let mut k = vec![0f32; kw];
        for t in 0..n {
            let row = &qkv[t * w..(t + 1) * w];
            rope_angles(&mut cs, meta.positions[t] as f32 / d.rope_scale, d.rope_theta, hd);
            let qt = &mut q[t * qw..(t + 1) * qw];
            qt.copy_from_slice(&row[..qw]);
            for h in 0..d.n_heads {
                rope_row(&mut qt[h * hd..(h + 1) * hd], &cs);
            }
            k.copy_from_slice(&row[qw..qw + kw]);
            for h in 0..d.n_kv_heads {
                rope_row(&mut k[h * hd..(h + 1) * hd], &cs);
            }
            // V one row per slot; K transposed within its block (`cpu_attention`'s layouts). A bf16 or fp8 cache
            // (the CUDA one's twin) keeps each value rounded to that dtype, in f32.
            let slot = meta.slots[t] as usize;
            let block_end = (slot / bs + 1) * bs * kw;
            check_len("kv cache", k_cache.len().min(v_cache.len()), block_end)?;
            let kv_value = |x: f32| d.kv.round(x);
            for (dst, &x) in v_cache[slot * kw..(slot + 1) * kw].iter_mut().zip(&row[qw + kw..]) {
                *dst = kv_value(x);
            }
            for (c, &x) in k.iter().enumerate() {
                k_cache[k_index(slot, c, bs, kw)] = kv_value(x);
            }
        }
        Ok(())
    }

    fn paged_attention(
        &self,
        out: &mut Vec<f32>,
        q: &Vec<f32>,
        k_cache: &Vec<f32>,
        v_cache: &Vec<f32>,
        meta: CheckedStep,
        d: AttnDims,
    ) -> Result<()> {
        super::cpu_attention::paged_attention(out, q, k_cache, v_cache, meta, d)
    }

    fn silu_mul(&self, out: &mut Vec<f32>, gate_up: &Vec<f32>, n: usize, f: usize) -> Result<()> {
        check_len("silu_mul out", out.len(), n * f)?;
        check_len("silu_mul gate_up", gate_up.len(), 2 * n * f)?;
        let row = |(o, gu): (&mut [f32], &[f32])| {
            let (g, u) = gu.split_at(f);
            if f >= PAR_ELEMS && n < rayon::current_num_threads() {
                // Few long rows (decode): each row's columns in parallel.
                let chunk = f.div_ceil(rayon::current_num_threads() * 4).next_multiple_of(16);
                o.par_chunks_mut(chunk)
                    .zip(g.par_chunks(chunk))
                    .zip(u.par_chunks(chunk))
                    .for_each(|((o, g), u)| silu_mul_rows(o, g, u));
            } else {
                silu_mul_rows(o, g, u);
            }
        };
        if f == 0 {
            return Ok(());
        }
        let (out, gate_up) = (&mut out[..n * f], &gate_up[..2 * n * f]);
        if n * f >= PAR_ELEMS && n >= rayon::current_num_threads() {
            out.par_chunks_mut(f).zip(gate_up.par_chunks(2 * f)).for_each(row);
        } else {
            out.chunks_mut(f).zip(gate_up.chunks(2 * f)).for_each(row);
        }
        Ok(())
    }

    fn gather_rows(&self, out: &mut Vec<f32>, x: &Vec<f32>, rows: &[usize], h: usize) -> Result<()> {
        check_len("gather_rows", out.len(), rows.len() * h)?;
        for (i, &r) in rows.iter().enumerate() {
            check_len("gather_rows x", x.len(), (r + 1) * h)?;
            out[i * h..(i + 1) * h].copy_from_slice(&x[r * h..(r + 1) * h]);
        }
        Ok(())
    }

    fn unshard_vocab(
        &self,
        out: &mut Vec<f32>,
        parts: &Vec<f32>,
        rows: usize,
        vocab: usize,
        world: usize,
        width: usize,
    ) -> Result<()> {
        let w_max = unshard_shape(vocab, world, width)?;
        check_len("unshard_vocab out", out.len(), rows * width)?;
        check_len("unshard_vocab parts", parts.len(), world * rows * w_max)?;
        for rank in 0..world {
            let (a, b) = even_share(vocab, world, rank);
            let (w, base) = (b - a, rank * rows * w_max);
            let keep = b.min(width).saturating_sub(a);
            for i in 0..rows {
                let src = &parts[base + i * w..base + i * w + keep];
                out[i * width + a..i * width + a + keep].copy_from_slice(src);
            }
        }
        Ok(())
    }

    fn sample(&self, logits: &mut Vec<f32>, batch: &SampleBatch) -> Result<Vec<Picked>> {
        let vocab = batch.vocab;
        check_len("sample logits", logits.len(), batch.len() * vocab)?;
        if batch.is_empty() || vocab == 0 {
            return Ok(Vec::new());
        }
        // On the rayon pool like every other op: a rank thread working next to the pool's spinning workers
        // would compete with them for the cores.
        let picks = logits[..batch.len() * vocab]
            .par_chunks_mut(vocab)
            .enumerate()
            .map(|(i, row)| {
                let raw = row.to_vec();
                let id = batch.pick(i, row);
                let k = batch.top_logprobs.get(i).copied().unwrap_or(0);
                let (logprob, top) = logprob_and_top(&raw, id as usize, k);
                Picked { id, logprob, top }
            })
            .collect();
        Ok(picks)
    }
}

/// In-place softmax, max-subtracted.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rank's `[rows, w_k]` block in its padded slot comes back at its vocabulary columns.
    #[test]
    fn unshard_vocab_places_each_rank_share() {
        for (rows, vocab, world, width) in
            [(3usize, 11usize, 4usize, 11usize), (2, 10, 3, 7), (1, 5, 1, 4), (4, 9, 2, 9)]
        {
            let w_max = vocab.div_ceil(world);
            // Value = 1000 * row + column, written where rank k keeps it; padding holds -1.
            let mut parts = vec![-1f32; world * rows * w_max];
            for rank in 0..world {
                let (a, b) = even_share(vocab, world, rank);
                for i in 0..rows {
                    for j in a..b {
                        parts[rank * rows * w_max + i * (b - a) + (j - a)] = (1000 * i + j) as f32;
                    }
                }
            }
            let mut out = vec![0f32; rows * width];
            CpuBackend.unshard_vocab(&mut out, &parts, rows, vocab, world, width).unwrap();
            let want: Vec<f32> = (0..rows).flat_map(|i| (0..width).map(move |j| (1000 * i + j) as f32)).collect();
            assert_eq!(out, want, "rows {rows} vocab {vocab} world {world} width {width}");
        }
        assert!(CpuBackend.unshard_vocab(&mut vec![0.0; 4], &vec![0.0; 8], 1, 3, 4, 3).is_err());
    }

    #[test]
    fn gemm_matches_naive_on_odd_sizes_and_dtypes() {
        let (n, m, k) = (3, 37, 29);
        let x: Vec<f32> = (0..n * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let wf: Vec<f32> = (0..m * k).map(|i| ((i * 11 % 17) as f32 - 8.0) / 8.0).collect();
        let w32 = Tensor::from_f32(&[m, k], wf.clone());
        let w16 =
            Tensor { shape: vec![m, k], data: TensorData::BF16(wf.iter().map(|&v| half::bf16::from_f32(v)).collect()) };
        for w in [&w32, &w16] {
            let mut out = vec![0f32; n * m];
            gemm(&mut out, &x, w, n);
            for t in 0..n {
                for r in 0..m {
                    let want: f32 = (0..k).map(|j| x[t * k + j] * w.get_f32(r * k + j)).sum();
                    assert!((out[t * m + r] - want).abs() < 1e-4, "{t},{r}: {} vs {want}", out[t * m + r]);
                }
            }
        }
    }

    /// RMSNorm and add+RMSNorm against f64 on an odd width, as a batch large enough to split its rows over
    /// the pool and as one row on the calling thread: the same bits either way. SiLU·up likewise.
    #[test]
    fn row_ops_match_f64_and_give_a_row_the_same_bits_in_any_batch() {
        let (n, h, eps) = (9, 2049, 1e-5f32);
        assert!(n * h >= PAR_ELEMS && h < PAR_ELEMS);
        let x: Vec<f32> = (0..n * h).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 333.0).collect();
        let res: Vec<f32> = (0..n * h).map(|i| ((i * 31 % 97) as f32 - 48.0) / 50.0).collect();
        let wv: Vec<f32> = (0..h).map(|i| 0.7 + (i % 13) as f32 / 20.0).collect();
        let w = CpuBackend
            .upload(Tensor {
                shape: vec![h],
                data: TensorData::BF16(wv.iter().map(|&v| half::bf16::from_f32(v)).collect()),
            })
            .unwrap();
        let wv: Vec<f64> = wv.iter().map(|&v| half::bf16::from_f32(v).to_f64()).collect();
        let norm64 = |r: &[f32]| -> Vec<f64> {
            let ms = r.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / h as f64;
            r.iter().zip(&wv).map(|(&v, w)| v as f64 / (ms + eps as f64).sqrt() * w).collect()
        };
        let (mut out, mut resid) = (vec![0f32; n * h], res.clone());
        CpuBackend.add_rms_norm(&mut resid, &x, &mut out, &w, n, h, eps).unwrap();
        let mut plain = vec![0f32; n * h];
        CpuBackend.rms_norm(&mut plain, &x, &w, n, h, eps).unwrap();
        for t in 0..n {
            let sum: Vec<f32> = (0..h).map(|i| res[t * h + i] + x[t * h + i]).collect();
            assert_eq!(resid[t * h..(t + 1) * h], sum[..], "residual row {t}");
            for (got, want) in [(&out, norm64(&sum)), (&plain, norm64(&x[t * h..(t + 1) * h]))] {
                let err = got[t * h..(t + 1) * h]
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (*a as f64 - b).abs())
                    .fold(0f64, |m, e| if e.is_nan() { e } else { m.max(e) });
                assert!(err < 1e-5, "row {t}: error {err}");
            }
        }
        let (mut one, mut r1) = (vec![0f32; h], res[..h].to_vec());
        CpuBackend.add_rms_norm(&mut r1, &x[..h].to_vec(), &mut one, &w, 1, h, eps).unwrap();
        assert_eq!(one, out[..h], "add_rms_norm: one row alone vs in a batch");
        CpuBackend.rms_norm(&mut one, &x[..h].to_vec(), &w, 1, h, eps).unwrap();
        assert_eq!(one, plain[..h], "rms_norm: one row alone vs in a batch");
        // gate `x`, up `res`, interleaved by row as the fused gate/up GEMM writes them.
        let gate_up: Vec<f32> =
            (0..n).flat_map(|t| [&x[t * h..(t + 1) * h], &res[t * h..(t + 1) * h]].concat()).collect();
        let (mut big, mut small) = (vec![0f32; n * h], vec![0f32; h]);
        CpuBackend.silu_mul(&mut big, &gate_up, n, h).unwrap();
        CpuBackend.silu_mul(&mut small, &gate_up[..2 * h].to_vec(), 1, h).unwrap();
        assert_eq!(small, big[..h], "silu_mul: one row alone vs in a batch");
        for i in 0..n * h {
            let g = x[i] as f64;
            let want = g / (1.0 + (-g).exp()) * res[i] as f64;
            assert!((big[i] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()), "silu_mul {i}");
        }
    }

    /// The model stacks q, k and v (and gate and up) into one matrix: in every weight format each part's columns of
    /// the stacked GEMM are the bits of that part's own GEMM (the parts' sizes odd, so panels straddle them).
    #[test]
    fn a_stacked_gemm_gives_each_part_the_bits_of_its_own() {
        let (n, k) = (5, 96);
        let parts = [37usize, 9, 9];
        let rnd = |seed: usize, len: usize| -> Vec<f32> {
            (0..len).map(|i| (((i + seed) * 7919 % 1013) as f32 - 506.0) / 333.0).collect()
        };
        let x = rnd(1, n * k);
        let ws: Vec<Tensor> =
            parts.iter().enumerate().map(|(i, &m)| Tensor::from_f32(&[m, k], rnd(10 + i, m * k))).collect();
        let total: usize = parts.iter().sum();
        let fmts = [WeightFormat::AsLoaded, WeightFormat::Bf16, WeightFormat::Int8, WeightFormat::Fp8];
        for (fmt, dtype) in fmts.iter().flat_map(|&f| [(f, crate::tensor::DType::F32), (f, crate::tensor::DType::BF16)])
        {
            let cast = |t: &Tensor| if dtype == crate::tensor::DType::BF16 { t.clone().to_bf16() } else { t.clone() };
            let stacked = CpuBackend.upload_matmul(cast(&Tensor::concat_rows(&ws)), fmt).unwrap();
            let mut all = vec![0f32; n * total];
            CpuBackend.gemm(&mut all, &x, &stacked, n).unwrap();
            let mut col = 0;
            for (w, &m) in ws.iter().zip(&parts) {
                let mut own = vec![0f32; n * m];
                CpuBackend.gemm(&mut own, &x, &CpuBackend.upload_matmul(cast(w), fmt).unwrap(), n).unwrap();
                for t in 0..n {
                    assert_eq!(
                        all[t * total + col..t * total + col + m],
                        own[t * m..(t + 1) * m],
                        "{fmt:?} {dtype:?} row {t}"
                    );
                }
                col += m;
            }
        }
    }

    /// A row's result is bit-identical whatever the number of rows computed with it (1, 2 and 3+ take different
    /// loops): prefix caching reuses K/V computed in another batch, and cache on/off must agree exactly.
    #[test]
    fn gemm_rows_do_not_depend_on_the_batch() {
        let (n, m, k) = (6, 41, 301);
        let x: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 333.0).collect();
        let wf: Vec<f32> = (0..m * k).map(|i| ((i * 104_729 % 2003) as f32 - 1001.0) / 977.0).collect();
        let w32 = Tensor::from_f32(&[m, k], wf.clone());
        let w16 =
            Tensor { shape: vec![m, k], data: TensorData::F16(wf.iter().map(|&v| half::f16::from_f32(v)).collect()) };
        for w in [&w32, &w16] {
            let mut all = vec![0f32; n * m];
            gemm(&mut all, &x, w, n);
            for rows in [1, 2, 3] {
                let mut part = vec![0f32; rows * m];
                gemm(&mut part, &x[..rows * k], w, rows);
                assert_eq!(part, all[..rows * m], "{rows} rows vs {n}");
            }
        }
    }

    #[test]
    fn rope_rotates_pairs_split_halves() {
        let mut x = vec![1.0, 0.0, 0.0, 1.0];
        let mut cs = [(0.0, 0.0); 2];
        rope_angles(&mut cs, 1.0, 10000.0, 4);
        rope_row(&mut x, &cs);
        // pair (0,2) rotates by 1 rad, pair (1,3) by 1/100 rad.
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
        assert!((x[1] + (0.01f32).sin()).abs() < 1e-6 && (x[3] - (0.01f32).cos()).abs() < 1e-6);
    }
}
