//! The FP8 (E4M3) reference arithmetic against PyTorch's `float8_e4m3fn` (tests/fixtures/fp8_e4m3.json, written by
//! scripts/fixtures/gen_fp8_fixtures.py): every code's value and the rounding of 2400+ f32 values (ties, their
//! neighbours, subnormals, signed zeros); the FP8 matmul against an f64 triple loop over the dequantized operands on
//! odd shapes.
mod common;
use common::*;
use serde_json::Value;
use triton_llama::backend::fp8::{Fp8Rows, e4m3_to_f32, f32_to_e4m3, gemm_fp8};
use triton_llama::sampling::Rng;

fn fixture_json() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("fp8_e4m3.json")).unwrap()).unwrap()
}

#[test]
fn codes_decode_as_pytorch_does() {
    let f = fixture_json();
    let want = f["decode"].as_array().unwrap();
    assert_eq!(want.len(), 256);
    for (c, w) in want.iter().enumerate() {
        let got = e4m3_to_f32(c as u8);
        match w.as_f64() {
            None => assert!(got.is_nan(), "code {c:#x}: {got}, PyTorch NaN"),
            Some(w) => assert!(got == w as f32 && got.is_sign_negative() == (c >= 0x80), "code {c:#x}: {got} vs {w}"),
        }
    }
}

#[test]
fn values_round_as_pytorch_does() {
    let f = fixture_json();
    let cases = f["encode"].as_array().unwrap();
    assert!(cases.len() > 2000, "{} cases", cases.len());
    let mut ties = 0;
    for case in cases {
        let x = f32::from_bits(case[0].as_u64().unwrap() as u32);
        let want = case[1].as_u64().unwrap() as u8;
        assert_eq!(f32_to_e4m3(x), want, "{x:e} ({:#010x})", x.to_bits());
        // A tie: |x| halfway between the code it got and a neighbour (it went to the even one).
        let (c, a) = (want & 0x7F, x.abs());
        let mid = |d: u8| (e4m3_to_f32(c) + e4m3_to_f32(d)) / 2.0 == a;
        ties += ((c > 0 && mid(c - 1)) || (c < 0x7E && mid(c + 1))) as usize;
    }
    assert!(ties > 100, "the fixture holds ties: {ties}");
}

/// The FP8 matmul equals the f64 sum over the dequantized operands (up to f32 accumulation), M, N and K odd.
#[test]
fn fp8_gemm_matches_an_f64_triple_loop() {
    let mut rng = Rng::new(3);
    for (m, n, k) in [(1, 1, 1), (3, 5, 7), (7, 13, 33), (2, 31, 257)] {
        let mut rand = |len: usize| -> Vec<f32> { (0..len).map(|_| (rng.next_f64() * 8.0 - 4.0) as f32).collect() };
        let (x, w) = (Fp8Rows::quantize(&rand(m * k), m, k), Fp8Rows::quantize(&rand(n * k), n, k));
        let mut out = vec![0f32; m * n];
        gemm_fp8(&mut out, &x, &w);
        let (xd, wd) = (x.dequantize(), w.dequantize());
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|t| xd[i * k + t] as f64 * wd[j * k + t] as f64).sum();
                let scale: f64 = (0..k).map(|t| (xd[i * k + t] as f64 * wd[j * k + t] as f64).abs()).sum();
                let got = out[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * scale.max(1e-30),
                    "[{m}, {n}, {k}] at ({i}, {j}): {got} vs {want}"
                );
            }
        }
        // The quantization error itself: E4M3 keeps 3 mantissa bits, so each value moves by at most 1/16 of itself
        // (1/2 of 2^-9 x scale below the normal range).
        let raw = rand(n * k);
        let q = Fp8Rows::quantize(&raw, n, k).dequantize();
        for (r, (a, b)) in raw.iter().zip(&q).enumerate() {
            let s = raw[r / k * k..(r / k + 1) * k].iter().fold(0f32, |mx, v| mx.max(v.abs())) / 448.0;
            assert!((a - b).abs() <= a.abs() / 16.0 + s * (-10f32).exp2() * 1.0001, "{a} -> {b}");
        }
    }
}

/// The CPU backend's FP8 weights (`--weights fp8`'s reference twin): `gemm` gives `gemm_fp8` of the per-token
/// quantized activations and the per-channel quantized weights, to f32 summation order, on odd shapes and the
/// kernels' tile edges.
#[test]
fn cpu_backend_fp8_weights_are_the_reference_gemm() {
    use triton_llama::backend::cpu::CpuBackend;
    use triton_llama::backend::{Backend, WeightFormat};
    use triton_llama::tensor::Tensor;
    let b = CpuBackend;
    let mut rng = Rng::new(11);
    for (n, m, k) in [(1, 1, 1), (3, 5, 7), (1, 67, 130), (9, 33, 257), (17, 64, 512)] {
        let mut rand = |len: usize| -> Vec<f32> { (0..len).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect() };
        let (x, w1) = (rand(n * k), rand(m * k));
        let up =
            |w: &[f32], rows| b.upload_matmul(Tensor::from_f32(&[rows, k], w.to_vec()), WeightFormat::Fp8).unwrap();
        let g1 = up(&w1, m);
        let mut out = vec![0f32; n * m];
        b.gemm(&mut out, &x, &g1, n).unwrap();
        let mut want = vec![0f32; n * m];
        let xq = Fp8Rows::quantize(&x, n, k);
        gemm_fp8(&mut want, &xq, &Fp8Rows::quantize(&w1, m, k));
        let (xd, wd) = (xq.dequantize(), Fp8Rows::quantize(&w1, m, k).dequantize());
        for (i, (g, w)) in out.iter().zip(&want).enumerate() {
            // Two f32 summation orders of the same exact products: each within k ulps of the sum of magnitudes.
            let (t, j) = (i / m, i % m);
            let mag: f32 = (0..k).map(|c| (xd[t * k + c] * wd[j * k + c]).abs()).sum();
            let tol = 2.0 * k as f32 * f32::EPSILON * mag;
            assert!((g - w).abs() <= tol.max(1e-30), "[{n}, {m}, {k}] at {i}: {g} vs {w}");
        }
    }
}
