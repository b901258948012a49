//! FP8 arithmetic on the host, the CPU reference of FP8 weights and activations (E4M3 in its `e4m3fn` form: 4
//! exponent bits with bias 7, 3 mantissa bits, no infinities, 0x7F / 0xFF NaN, largest finite 448): rounding to
//! the nearest code (ties to even, saturating to +-448 as CUDA's `__NV_SATFINITE` conversion), per-row scales
//! (a row's largest magnitude maps to 448), and the matmul of two quantized operands with f32 accumulation of
//! exact products, so that the GPU's FP8 kernels can be tested against it without a GPU.

/// The largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;

/// The value of an E4M3 code.
pub fn e4m3_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = ((code >> 3) & 0x0F, code & 0x07);
    if e == 0x0F && m == 0x07 {
        return f32::NAN;
    }
    let magnitude = if e == 0 {
        m as f32 * (-9f32).exp2() // subnormal: m x 2^-9
    } else {
        (e as f32 - 7.0).exp2() * (1.0 + m as f32 / 8.0)
    };
    sign * magnitude
}

/// The values of all 256 codes (`e4m3_to_f32` as a table, for decoding many codes).
pub fn e4m3_table() -> [f32; 256] {
    std::array::from_fn(|c| e4m3_to_f32(c as u8))
}

/// The E4M3 code nearest to `x` (ties to the even code); beyond +-448 it saturates to +-448; NaN gives 0x7F.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs();
    if a >= E4M3_MAX {
        return sign | 0x7E;
    }
    // Below 2^-6 the codes are the multiples of 2^-9 (code = multiple, 8 being the smallest normal); above,
    // 8 steps per binade: a / 2^(exp - 3) lies in [8, 16) and its rounding r gives code (exp + 7) * 8 + r - 8,
    // a carry into the next binade (r = 16) included.
    let exp = ((a.to_bits() >> 23) & 0xFF) as i32 - 127;
    let code = if exp < -6 {
        (a * 512.0).round_ties_even() as u32
    } else {
        // 2^(exp - 3) built from its bits (exp - 3 >= -9: a normal f32), not by a libm call per value.
        let step = f32::from_bits(((exp - 3 + 127) as u32) << 23);
        let r = (a / step).round_ties_even() as u32;
        (((exp + 7) as u32) << 3) + r - 8
    };
    sign | code.min(0x7E) as u8
}

/// Rows quantized to E4M3 with one f32 scale each: row i's values are `e4m3_to_f32(codes[i, j]) * scales[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Rows {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols]`.
    pub codes: Vec<u8>,
    /// `[rows]`: the row's largest magnitude / 448 (1 for a row of zeros).
    pub scales: Vec<f32>,
}

impl Fp8Rows {
    /// Quantizes `x` `[rows, cols]` row by row: per output channel for weights `[N, K]`, per token for activations
    /// `[M, K]` (a dynamic scale, as the GPU computes it inside the kernel that writes the activations).
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Fp8Rows {
        use rayon::prelude::*;
        assert_eq!(x.len(), rows * cols, "Fp8Rows::quantize: {} values for [{rows}, {cols}]", x.len());
        let mut codes = vec![0u8; x.len()];
        let mut scales = vec![1f32; rows];
        let row = |((src, dst), scale): ((&[f32], &mut [u8]), &mut f32)| {
            let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
            *scale = if amax > 0.0 && amax.is_finite() { amax / E4M3_MAX } else { 1.0 };
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = f32_to_e4m3(v / *scale);
            }
        };
        let c = cols.max(1);
        // Weights at load are large (rows in parallel); a step's activations are a few rows.
        if x.len() >= 1 << 16 {
            x.par_chunks(c).zip(codes.par_chunks_mut(c)).zip(scales.par_iter_mut()).for_each(row);
        } else {
            x.chunks(c).zip(codes.chunks_mut(c)).zip(scales.iter_mut()).for_each(row);
        }
        Fp8Rows { rows, cols, codes, scales }
    }

    /// The values the codes and scales stand for, `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.codes.len());
        for (row, &s) in self.codes.chunks_exact(self.cols.max(1)).zip(&self.scales) {
            out.extend(row.iter().map(|&c| e4m3_to_f32(c) * s));
        }
        out
    }
}

/// `out[m, n] = x.scales[m] * w.scales[n] * sum_k e4m3(x[m, k]) * e4m3(w[n, k])` for activations `x` `[M, K]` and
/// weights `w` `[N, K]`: products of two E4M3 values are exact in f32, summed in f32 in k order, then scaled (an
/// FP8 GEMM with f32 accumulation and the scales in its epilogue).
pub fn gemm_fp8(out: &mut [f32], x: &Fp8Rows, w: &Fp8Rows) {
    assert_eq!(x.cols, w.cols, "gemm_fp8: K of x {} and w {}", x.cols, w.cols);
    assert_eq!(out.len(), x.rows * w.rows, "gemm_fp8: out of {} for [{}, {}]", out.len(), x.rows, w.rows);
    let k = x.cols;
    let table = e4m3_table();
    for (m, out_row) in out.chunks_exact_mut(w.rows.max(1)).enumerate() {
        let xr = &x.codes[m * k..(m + 1) * k];
        for (n, o) in out_row.iter_mut().enumerate() {
            let wr = &w.codes[n * k..(n + 1) * k];
            let sum = xr.iter().zip(wr).fold(0f32, |acc, (&a, &b)| acc + table[a as usize] * table[b as usize]);
            *o = sum * x.scales[m] * w.scales[n];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every finite code survives a round trip; the saturation and NaN rules.
    #[test]
    fn codes_round_trip_and_saturate() {
        for c in 0..=255u8 {
            let v = e4m3_to_f32(c);
            if v.is_nan() {
                assert!(c & 0x7F == 0x7F, "code {c:#x}");
                continue;
            }
            assert_eq!(f32_to_e4m3(v), c, "code {c:#x} = {v}");
        }
        for big in [448.5, 464.0, 1e6, f32::INFINITY] {
            assert_eq!(f32_to_e4m3(big), 0x7E, "{big} saturates to 448");
            assert_eq!(f32_to_e4m3(-big), 0xFE, "-{big} saturates to -448");
        }
        assert_eq!(f32_to_e4m3(f32::NAN), 0x7F);
    }

    /// A row's largest magnitude maps to the code of 448 and comes back to within f32 rounding of the scale.
    #[test]
    fn a_rows_largest_value_maps_to_448() {
        let x = [0.5f32, -3.25, 1e-3, 0.0, 2.0, 7.0, -7.5, 0.25];
        let q = Fp8Rows::quantize(&x, 2, 4);
        assert_eq!(q.scales, vec![3.25 / 448.0, 7.5 / 448.0]);
        assert_eq!((q.codes[1], q.codes[6]), (0xFE, 0xFE));
        let d = q.dequantize();
        assert!((d[1] + 3.25).abs() < 1e-6 && (d[6] + 7.5).abs() < 1e-6, "{d:?}");
        assert_eq!(Fp8Rows::quantize(&[0.0; 3], 1, 3).scales, vec![1.0], "a row of zeros keeps scale 1");
    }
}
