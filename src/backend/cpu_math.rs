//! Vectorizable f32 `exp` for the CPU ops (softmax, SiLU): the libm call in a loop stays scalar, this one
//! becomes SIMD inside the callers' `multiversion` functions. Within 2 ulp of the exact value on the range
//! the ops use (tested against f64 `exp`); the same bits on every ISA (fused multiply-adds, fixed order).

/// e^x for x in [-87.3, 88] (clamped there: tiny results become ~1e-38, not 0; huge ones 1.65e38).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer (ties to even).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let t = x.mul_add(LOG2E, ROUND);
    let n = t - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    // e^r on [-ln2/2, ln2/2]: Cephes' expf polynomial.
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5e-1);
    let e = p.mul_add(r * r, r) + 1.0;
    // 2^n from the bits of t = 1.5 * 2^23 + n (n in [-126, 127] here): the integer n sits in its low mantissa
    // bits. `n as i32` would be the same number, but Rust's saturating cast keeps the compiler from vectorizing.
    e * f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::exp;

    #[test]
    fn exp_within_two_ulp_of_f64() {
        let mut worst = 0f64;
        for i in 0..=400_000 {
            let x = -87.0 + 175.0 * i as f32 / 400_000.0;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let ulp = (want as f32).abs() * f32::EPSILON;
            worst = worst.max((got - want).abs() / ulp as f64);
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        // The exponent trick: 1.5 * 2^23 + n holds n in its low bits for every n the clamp allows.
        let round = 12_582_912.0f32;
        for n in -126..=127i32 {
            assert_eq!((round + n as f32).to_bits().wrapping_sub(round.to_bits()) as i32, n);
        }
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0) > 1e38 && exp(1000.0).is_finite());
    }
}
