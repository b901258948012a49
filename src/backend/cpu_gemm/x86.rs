//! The x86-64 micro-kernels: one 32-row tile (two 16-row panels) × MR activation rows, register-resident
//! accumulators over the whole of k, results into `out[..MR]`.
use super::{FOLD_PAIRS, MID_BLOCKS, PANEL, PREFETCH, PREFETCH_MIN_ROWS, Q8_PANEL_BLOCK, QActs, QBLOCK, TILE};
use std::arch::x86_64::*;

// The int8 AVX2-family kernels issue no software prefetch: on 2026-12-07 a `prefetcht1` 16 KiB ahead (which an
// earlier day's runs had favoured, see the README) cost batch-1 int8 decode about 15 % (TinyLlama shape,
// TL_CPU_KERNEL=avx2, 6 alternated runs each: medians 23.9 tok/s with it, 27.3 / 27.6 with `prefetchnta` 8 / 4
// KiB ahead, 28.2 with none), as the AVX512_VNNI kernel never had one.

/// bf16 weights · bf16 activations with `vdpbf16ps`, f32 sums.
/// SAFETY (caller): avx512f + avx512bf16; `w` holds `TILE * kp * 2` values, x row t holds `kp * 2` at `t * ld`.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
pub unsafe fn bf16_dp<const MR: usize>(w: &[u16], kp: usize, x: &[u16], ld: usize, out: &mut [[f32; TILE]; 8]) {
    // Two sets of sums (even and odd pairs) hide the dot-product latency; every MR sums in this same order,
    // so a row gets the same bits in any batch (MR <= 6 keeps the 4 * MR sums and operands in 32 registers).
    let mut acc = [[[_mm512_setzero_ps(); 2]; MR]; 2];
    let (w0, w1) = (w.as_ptr(), unsafe { w.as_ptr().add(PANEL * kp * 2) });
    let xp = x.as_ptr() as *const i32;
    let step = |acc: &mut [[__m512; 2]; MR], j: usize| unsafe {
        let a0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w0.add(j * 32) as *const _));
        let a1: __m512bh = std::mem::transmute(_mm512_loadu_si512(w1.add(j * 32) as *const _));
        for (t, acc) in acc.iter_mut().enumerate() {
            let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(xp.add(t * ld / 2 + j).read_unaligned()));
            acc[0] = _mm512_dpbf16_ps(acc[0], a0, b);
            acc[1] = _mm512_dpbf16_ps(acc[1], a1, b);
        }
    };
    let mut j = 0;
    let [even, odd] = &mut acc;
    while j + 2 <= kp {
        step(even, j);
        step(odd, j + 1);
        j += 2;
    }
    while j < kp {
        step(&mut acc[0], j);
        j += 1;
    }
    for (t, o) in out[..MR].iter_mut().enumerate() {
        unsafe {
            _mm512_storeu_ps(o.as_mut_ptr(), _mm512_add_ps(acc[0][t][0], acc[1][t][0]));
            _mm512_storeu_ps(o.as_mut_ptr().add(PANEL), _mm512_add_ps(acc[0][t][1], acc[1][t][1]));
        }
    }
}

/// bf16 weights widened exactly (shift / mask), f32 activations, FMA on 16 lanes.
/// SAFETY (caller): avx512f; bounds as `bf16_dp`.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn f32_fma512<const MR: usize>(w: &[u16], kp: usize, x: &[f32], ld: usize, out: &mut [[f32; TILE]; 8]) {
    let mut tot = [[0f64; TILE]; MR];
    let mut mid = [[0f32; TILE]; MR];
    let (w0, w1) = (w.as_ptr(), unsafe { w.as_ptr().add(PANEL * kp * 2) });
    let hi = _mm512_set1_epi32(0xffff_0000u32 as i32);
    let xp = x.as_ptr();
    let (mut j0, mut blocks) = (0, 0);
    while j0 < kp {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for j in j0..(j0 + FOLD_PAIRS).min(kp) {
            unsafe {
                // Reads past a panel's end only prefetch (no fault); wrapping_add keeps the address math defined.
                if MR >= PREFETCH_MIN_ROWS {
                    _mm_prefetch::<_MM_HINT_T0>(w0.wrapping_add(j * 32 + PREFETCH) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(w1.wrapping_add(j * 32 + PREFETCH) as *const i8);
                }
                let v0 = _mm512_loadu_si512(w0.add(j * 32) as *const _);
                let v1 = _mm512_loadu_si512(w1.add(j * 32) as *const _);
                let (e0, o0) =
                    (_mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), _mm512_castsi512_ps(_mm512_and_si512(v0, hi)));
                let (e1, o1) =
                    (_mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)), _mm512_castsi512_ps(_mm512_and_si512(v1, hi)));
                for (t, acc) in acc.iter_mut().enumerate() {
                    let xe = _mm512_set1_ps(*xp.add(t * ld + 2 * j));
                    let xo = _mm512_set1_ps(*xp.add(t * ld + 2 * j + 1));
                    acc[0] = _mm512_fmadd_ps(o0, xo, _mm512_fmadd_ps(e0, xe, acc[0]));
                    acc[1] = _mm512_fmadd_ps(o1, xo, _mm512_fmadd_ps(e1, xe, acc[1]));
                }
            }
        }
        for (m, a) in mid.iter_mut().zip(&acc) {
            for (h, &v) in a.iter().enumerate() {
                unsafe {
                    let p = m.as_mut_ptr().add(h * PANEL);
                    _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), v));
                }
            }
        }
        (j0, blocks) = (j0 + FOLD_PAIRS, blocks + 1);
        if blocks == MID_BLOCKS || j0 >= kp {
            for (tt, m) in tot.iter_mut().zip(&mut mid) {
                for h in 0..2 {
                    unsafe {
                        let v = _mm512_loadu_ps(m.as_ptr().add(h * PANEL));
                        let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
                        let up = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
                        let p = tt.as_mut_ptr().add(h * PANEL);
                        _mm512_storeu_pd(p, _mm512_add_pd(_mm512_loadu_pd(p), lo));
                        _mm512_storeu_pd(p.add(8), _mm512_add_pd(_mm512_loadu_pd(p.add(8)), up));
                    }
                }
                *m = [0.0; TILE];
            }
            blocks = 0;
        }
    }
    for (o, tt) in out.iter_mut().zip(&tot) {
        for (d, v) in o.iter_mut().zip(tt) {
            *d = *v as f32;
        }
    }
}

/// As `f32_fma512` on 8 lanes, `PP` 16-row panels (two registers each) at a time: both panels for one activation
/// row (four independent FMA chains, so that a decode step is not bound by FMA latency), one panel for several.
/// Each output's products are summed in the same order for any `MR` and `PP`, so a row's bits do not depend on
/// the batch.
/// SAFETY (caller): avx2 + fma; bounds as `bf16_dp`; `PP` is 1 or 2.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn f32_fma256<const MR: usize, const PP: usize>(
    w: &[u16],
    kp: usize,
    x: &[f32],
    ld: usize,
    out: &mut [[f32; TILE]; 8],
) {
    let hi = _mm256_set1_epi32(0xffff_0000u32 as i32);
    let xp = x.as_ptr();
    let mut tot = [[0f64; TILE]; MR];
    let mut mid = [[0f32; TILE]; MR];
    for p0 in (0..2).step_by(PP) {
        let wp: [*const u16; PP] = std::array::from_fn(|i| w.as_ptr().wrapping_add((p0 + i) * PANEL * kp * 2));
        let (mut j0, mut blocks) = (0, 0);
        while j0 < kp {
            let mut acc = [[[_mm256_setzero_ps(); 2]; PP]; MR];
            for j in j0..(j0 + FOLD_PAIRS).min(kp) {
                for (pi, &wp) in wp.iter().enumerate() {
                    unsafe {
                        if MR >= PREFETCH_MIN_ROWS {
                            _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(j * 32 + PREFETCH) as *const i8);
                        }
                        let v0 = _mm256_loadu_si256(wp.add(j * 32) as *const _);
                        let v1 = _mm256_loadu_si256(wp.add(j * 32 + 16) as *const _);
                        let (e0, o0) = (
                            _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)),
                            _mm256_castsi256_ps(_mm256_and_si256(v0, hi)),
                        );
                        let (e1, o1) = (
                            _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16)),
                            _mm256_castsi256_ps(_mm256_and_si256(v1, hi)),
                        );
                        for (t, acc) in acc.iter_mut().enumerate() {
                            let xe = _mm256_set1_ps(*xp.add(t * ld + 2 * j));
                            let xo = _mm256_set1_ps(*xp.add(t * ld + 2 * j + 1));
                            let a = &mut acc[pi];
                            a[0] = _mm256_fmadd_ps(o0, xo, _mm256_fmadd_ps(e0, xe, a[0]));
                            a[1] = _mm256_fmadd_ps(o1, xo, _mm256_fmadd_ps(e1, xe, a[1]));
                        }
                    }
                }
            }
            for (m, a) in mid.iter_mut().zip(&acc) {
                for (pi, a) in a.iter().enumerate() {
                    for (h, &v) in a.iter().enumerate() {
                        unsafe {
                            let q = m.as_mut_ptr().add((p0 + pi) * PANEL + h * 8);
                            _mm256_storeu_ps(q, _mm256_add_ps(_mm256_loadu_ps(q), v));
                        }
                    }
                }
            }
            (j0, blocks) = (j0 + FOLD_PAIRS, blocks + 1);
            if blocks == MID_BLOCKS || j0 >= kp {
                for (tt, m) in tot.iter_mut().zip(&mut mid) {
                    for h in 0..2 * PP {
                        unsafe {
                            let v = _mm256_loadu_ps(m.as_ptr().add(p0 * PANEL + h * 8));
                            let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
                            let up = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
                            let q = tt.as_mut_ptr().add(p0 * PANEL + h * 8);
                            _mm256_storeu_pd(q, _mm256_add_pd(_mm256_loadu_pd(q), lo));
                            _mm256_storeu_pd(q.add(4), _mm256_add_pd(_mm256_loadu_pd(q.add(4)), up));
                        }
                    }
                    m[p0 * PANEL..(p0 + PP) * PANEL].fill(0.0);
                }
                blocks = 0;
            }
        }
    }
    for (o, tt) in out.iter_mut().zip(&tot) {
        for (d, v) in o.iter_mut().zip(tt) {
            *d = *v as f32;
        }
    }
}

/// int8 weights (stored + 128, flipped back to signed by an xor) · int8 activations on AVX2: `vpmaddubsw` takes
/// |x| (made in `prepare`) as its unsigned operand and the weight with x's sign (`vpsignb`), so no pair of
/// products can saturate its 16-bit sums (2 · 127 · 127 < 2^15), then `vpmaddwd` by ones makes 32-bit sums of 4
/// (llama.cpp's q8_0 dot on AVX2). One 16-row panel at a time for 2 to 4 activation rows (one row takes
/// `q8_avx2_row`); per-32-block f32 scaling in the same order as the other int8 kernels. With 16 ymm registers
/// four rows' sums still spill some (see the README).
/// SAFETY (caller): avx2 + fma + f16c; `w` holds two panels of `x.nb` blocks, `x` (with `abs`) MR rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_avx2<const MR: usize>(w: &[u8], x: QActs, out: &mut [[f32; TILE]; 8]) {
    let nb = x.nb;
    let (xq, xa) = (x.q.as_ptr() as *const i32, x.abs.as_ptr() as *const i32);
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    for p in 0..2 {
        let mut res = [[_mm256_setzero_ps(); 2]; MR];
        for b in 0..nb {
            unsafe {
                let bp = w.as_ptr().add((p * nb + b) * Q8_PANEL_BLOCK);
                let mut acc = [[_mm256_setzero_si256(); 2]; MR];
                // An opaque trip count, as in `q8_avx2_row`.
                for q in 0..std::hint::black_box(QBLOCK / 4) {
                    let a0 = _mm256_xor_si256(_mm256_loadu_si256(bp.add(q * 64) as *const _), flip);
                    let a1 = _mm256_xor_si256(_mm256_loadu_si256(bp.add(q * 64 + 32) as *const _), flip);
                    for (t, acc) in acc.iter_mut().enumerate() {
                        let i = (t * nb + b) * (QBLOCK / 4) + q;
                        let bx = _mm256_set1_epi32(xq.add(i).read_unaligned());
                        let ax = _mm256_set1_epi32(xa.add(i).read_unaligned());
                        let d0 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(a0, bx));
                        let d1 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(a1, bx));
                        acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(d0, ones));
                        acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(d1, ones));
                    }
                }
                let s0 = _mm256_cvtph_ps(_mm_loadu_si128(bp.add(QBLOCK * PANEL) as *const _));
                let s1 = _mm256_cvtph_ps(_mm_loadu_si128(bp.add(QBLOCK * PANEL + 16) as *const _));
                for (t, (r, a)) in res.iter_mut().zip(&acc).enumerate() {
                    let d = _mm256_set1_ps(x.s[t * nb + b]);
                    r[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[0]), _mm256_mul_ps(s0, d), r[0]);
                    r[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[1]), _mm256_mul_ps(s1, d), r[1]);
                }
            }
        }
        for (o, r) in out.iter_mut().zip(&res) {
            unsafe {
                _mm256_storeu_ps(o.as_mut_ptr().add(p * PANEL), r[0]);
                _mm256_storeu_ps(o.as_mut_ptr().add(p * PANEL + 8), r[1]);
            }
        }
    }
}

/// `q8_avx2` for one activation row (a decode step), both panels at once, written out with one accumulator per
/// 8 lanes: the generic loop's arrays led the compiler to copy each block's weights to the stack before using
/// them. Same sums in the same order as `q8_avx2`.
/// SAFETY (caller): as `q8_avx2` with MR = 1.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_avx2_row(w: &[u8], x: QActs, out: &mut [[f32; TILE]; 8]) {
    let nb = x.nb;
    let (xq, xa) = (x.q.as_ptr() as *const i32, x.abs.as_ptr() as *const i32);
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    let mut res = [_mm256_setzero_ps(); 4];
    for b in 0..nb {
        unsafe {
            let (b0, b1) = (w.as_ptr().add(b * Q8_PANEL_BLOCK), w.as_ptr().add((nb + b) * Q8_PANEL_BLOCK));
            let mut c = [_mm256_setzero_si256(); 4];
            // An opaque trip count: fully unrolled, the loop's 32 loads were hoisted together and spilled.
            for q in 0..std::hint::black_box(QBLOCK / 4) {
                let bx = _mm256_set1_epi32(xq.add(b * (QBLOCK / 4) + q).read_unaligned());
                let ax = _mm256_set1_epi32(xa.add(b * (QBLOCK / 4) + q).read_unaligned());
                for (h, p) in [(0, b0), (1, b0.add(32)), (2, b1), (3, b1.add(32))] {
                    let a = _mm256_xor_si256(_mm256_loadu_si256(p.add(q * 64) as *const _), flip);
                    let d = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(a, bx));
                    c[h] = _mm256_add_epi32(c[h], _mm256_madd_epi16(d, ones));
                }
            }
            let d = _mm256_set1_ps(x.s[b]);
            for (h, p) in [(0, b0), (1, b0.add(16)), (2, b1), (3, b1.add(16))] {
                let s = _mm256_cvtph_ps(_mm_loadu_si128(p.add(QBLOCK * PANEL) as *const _));
                res[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c[h]), _mm256_mul_ps(s, d), res[h]);
            }
        }
    }
    for (h, r) in res.iter().enumerate() {
        // SAFETY: lanes h * 8 .. h * 8 + 8 of a 32-float row.
        unsafe { _mm256_storeu_ps(out[0].as_mut_ptr().add(h * 8), *r) };
    }
}

/// int8 weights (stored + 128) · int8 activations with `vpdpbusd` on 8 lanes, the bias of the + 128 removed by
/// starting each block's sums at -128 · Σx (as `q8_vnni`): exact block sums, scaled per 32-block in the other
/// int8 kernels' order, so every int8 kernel gives the same bits. `PP` panels at a time (2 for one activation
/// row, so that a decode step keeps both panels' lines in flight, 1 for 2 to 4 rows); running sums in `out`.
/// One source, two encodings: `q8_avxvnni` (VEX, AVX-VNNI: CPUs with AVX2 and no AVX-512) and `q8_vnni256`
/// (EVEX, AVX512_VNNI + VL), which only the tests choose, so that this code runs on the AVX-512 machines here.
/// SAFETY (caller): the named features; `w` holds two panels of `x.nb` blocks, `x` MR rows; `PP` is 1 or 2.
macro_rules! q8_dpbusd256 {
    ($name:ident, $features:literal, $dp:ident) => {
        #[target_feature(enable = $features)]
        pub unsafe fn $name<const MR: usize, const PP: usize>(w: &[u8], x: QActs, out: &mut [[f32; TILE]; 8]) {
            let nb = x.nb;
            let xq = x.q.as_ptr() as *const i32;
            for p0 in (0..2).step_by(PP) {
                for o in out[..MR].iter_mut() {
                    o[p0 * PANEL..(p0 + PP) * PANEL].fill(0.0);
                }
                for b in 0..nb {
                    unsafe {
                        let bp: [*const u8; PP] =
                            std::array::from_fn(|i| w.as_ptr().add(((p0 + i) * nb + b) * Q8_PANEL_BLOCK));
                        let mut acc = [[[_mm256_setzero_si256(); 2]; PP]; MR];
                        for (t, a) in acc.iter_mut().enumerate() {
                            let c = _mm256_set1_epi32(-128 * x.sum[t * nb + b]);
                            *a = [[c, c]; PP];
                        }
                        // An opaque trip count, as in `q8_avx2_row`.
                        for q in 0..std::hint::black_box(QBLOCK / 4) {
                            for (pi, &bp) in bp.iter().enumerate() {
                                let a0 = _mm256_loadu_si256(bp.add(q * 64) as *const _);
                                let a1 = _mm256_loadu_si256(bp.add(q * 64 + 32) as *const _);
                                for (t, acc) in acc.iter_mut().enumerate() {
                                    let i = (t * nb + b) * (QBLOCK / 4) + q;
                                    let bx = _mm256_set1_epi32(xq.add(i).read_unaligned());
                                    acc[pi][0] = $dp(acc[pi][0], a0, bx);
                                    acc[pi][1] = $dp(acc[pi][1], a1, bx);
                                }
                            }
                        }
                        for (pi, &bp) in bp.iter().enumerate() {
                            let s0 = _mm256_cvtph_ps(_mm_loadu_si128(bp.add(QBLOCK * PANEL) as *const _));
                            let s1 = _mm256_cvtph_ps(_mm_loadu_si128(bp.add(QBLOCK * PANEL + 16) as *const _));
                            for (t, (o, a)) in out.iter_mut().zip(&acc).enumerate() {
                                let d = _mm256_set1_ps(x.s[t * nb + b]);
                                for (h, s) in [(0, s0), (1, s1)] {
                                    let r = o.as_mut_ptr().add((p0 + pi) * PANEL + h * 8);
                                    let v = _mm256_cvtepi32_ps(a[pi][h]);
                                    _mm256_storeu_ps(r, _mm256_fmadd_ps(v, _mm256_mul_ps(s, d), _mm256_loadu_ps(r)));
                                }
                            }
                        }
                    }
                }
            }
        }
    };
}

q8_dpbusd256!(q8_avxvnni, "avx2,fma,f16c,avxvnni", _mm256_dpbusd_avx_epi32);
q8_dpbusd256!(q8_vnni256, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", _mm256_dpbusd_epi32);

/// int8 weights (stored + 128) · int8 activations with `vpdpbusd`, per-32-block f32 scaling.
/// SAFETY (caller): avx512f + avx512bw + avx512vnni; `w` holds two panels of `x.nb` blocks, `x` MR rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
pub unsafe fn q8_vnni<const MR: usize>(w: &[u8], x: QActs, out: &mut [[f32; TILE]; 8]) {
    let nb = x.nb;
    let mut res = [[_mm512_setzero_ps(); 2]; MR];
    let wp = w.as_ptr();
    let xq = x.q.as_ptr() as *const i32;
    for b in 0..nb {
        unsafe {
            let (b0, b1) = (wp.add(b * Q8_PANEL_BLOCK), wp.add((nb + b) * Q8_PANEL_BLOCK));
            let mut acc = [[_mm512_setzero_si512(); 2]; MR];
            for (t, a) in acc.iter_mut().enumerate() {
                let c = _mm512_set1_epi32(-128 * x.sum[t * nb + b]);
                *a = [c, c];
            }
            for q in 0..QBLOCK / 4 {
                let a0 = _mm512_loadu_si512(b0.add(q * 64) as *const _);
                let a1 = _mm512_loadu_si512(b1.add(q * 64) as *const _);
                for (t, acc) in acc.iter_mut().enumerate() {
                    let bx = _mm512_set1_epi32(xq.add((t * nb + b) * (QBLOCK / 4) + q).read_unaligned());
                    acc[0] = _mm512_dpbusd_epi32(acc[0], a0, bx);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], a1, bx);
                }
            }
            let s0 = _mm512_cvtph_ps(_mm256_loadu_si256(b0.add(QBLOCK * PANEL) as *const _));
            let s1 = _mm512_cvtph_ps(_mm256_loadu_si256(b1.add(QBLOCK * PANEL) as *const _));
            for t in 0..MR {
                let d = _mm512_set1_ps(x.s[t * nb + b]);
                res[t][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t][0]), _mm512_mul_ps(s0, d), res[t][0]);
                res[t][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t][1]), _mm512_mul_ps(s1, d), res[t][1]);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(&res) {
        unsafe {
            _mm512_storeu_ps(o.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(o.as_mut_ptr().add(PANEL), a[1]);
        }
    }
}
