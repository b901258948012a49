//! The aarch64 micro-kernels: one 32-row tile (two 16-row panels, four 128-bit registers each) × MR activation
//! rows, results into `out[..MR]`, over the same packed layouts as the x86-64 kernels (module doc of `cpu_gemm`).
//! `sdot`, `smmla` and the f16 scale widening (`fcvtl`) are written as inline assembly: their intrinsics are not
//! stable in Rust yet; each sits in a function whose `target_feature` the CPU was checked for (`Kernel::available`).
use super::{FOLD_PAIRS, MID_BLOCKS, PANEL, Q8_PANEL_BLOCK, QActs, QBLOCK, TILE};
use std::arch::aarch64::*;
use std::arch::asm;

/// `acc + Σ₄ a·b` per 32-bit lane (`sdot`, FEAT_DotProd); only inside a `dotprod` function.
macro_rules! sdot {
    ($acc:expr, $a:expr, $b:expr) => {{
        let mut acc: int32x4_t = $acc;
        asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) $a, b = in(vreg) $b,
            options(pure, nomem, nostack, preserves_flags));
        acc
    }};
}

/// `acc + A · Bᵀ` for A, B 2 × 8 int8 (rows in the halves), acc 2 × 2 row-major (`smmla`, FEAT_I8MM); only
/// inside an `i8mm` function.
macro_rules! smmla {
    ($acc:expr, $a:expr, $b:expr) => {{
        let mut acc: int32x4_t = $acc;
        asm!("smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) $a, b = in(vreg) $b,
            options(pure, nomem, nostack, preserves_flags));
        acc
    }};
}

/// The 16 f16 scales of a Q8 panel block (at `p`) as four f32 registers (`fcvtl`/`fcvtl2`, base Armv8).
/// SAFETY (caller): `p` points at 32 readable bytes.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn scales(p: *const u8) -> [float32x4_t; 4] {
    let mut s = [vdupq_n_f32(0.0); 4];
    for h in 0..2 {
        unsafe {
            let v = vld1q_u16(p.add(h * 16) as *const u16);
            let (lo, hi): (float32x4_t, float32x4_t);
            asm!("fcvtl {lo:v}.4s, {v:v}.4h", "fcvtl2 {hi:v}.4s, {v:v}.8h", lo = out(vreg) lo, hi = out(vreg) hi,
                v = in(vreg) v, options(pure, nomem, nostack, preserves_flags));
            (s[2 * h], s[2 * h + 1]) = (lo, hi);
        }
    }
    s
}

/// bf16 weights widened exactly (shift / mask), f32 activations, FMA on 4 lanes, `PP` panels at a time (both for
/// one row: eight independent FMA chains), the three-level sums of the x86 kernels in the same order for every
/// `MR` and `PP`, so a row's bits do not depend on the batch.
/// SAFETY (caller): NEON; `w` holds `TILE * kp * 2` values, x row t holds `kp * 2` at `t * ld`; `PP` is 1 or 2.
#[target_feature(enable = "neon")]
pub unsafe fn f32_fma<const MR: usize, const PP: usize>(
    w: &[u16],
    kp: usize,
    x: &[f32],
    ld: usize,
    out: &mut [[f32; TILE]; 8],
) {
    let hi = vdupq_n_u32(0xffff_0000);
    let xp = x.as_ptr();
    let mut tot = [[0f64; TILE]; MR];
    let mut mid = [[0f32; TILE]; MR];
    for p0 in (0..2).step_by(PP) {
        let wp: [*const u16; PP] = std::array::from_fn(|i| w.as_ptr().wrapping_add((p0 + i) * PANEL * kp * 2));
        let (mut j0, mut blocks) = (0, 0);
        while j0 < kp {
            let mut acc = [[[vdupq_n_f32(0.0); 4]; PP]; MR];
            for j in j0..(j0 + FOLD_PAIRS).min(kp) {
                for (pi, &wp) in wp.iter().enumerate() {
                    unsafe {
                        let mut e = [vdupq_n_f32(0.0); 4];
                        let mut o = [vdupq_n_f32(0.0); 4];
                        for h in 0..4 {
                            let v = vld1q_u32(wp.add(j * 32 + h * 8) as *const u32);
                            e[h] = vreinterpretq_f32_u32(vshlq_n_u32::<16>(v));
                            o[h] = vreinterpretq_f32_u32(vandq_u32(v, hi));
                        }
                        for (t, acc) in acc.iter_mut().enumerate() {
                            let xe = vdupq_n_f32(*xp.add(t * ld + 2 * j));
                            let xo = vdupq_n_f32(*xp.add(t * ld + 2 * j + 1));
                            for h in 0..4 {
                                acc[pi][h] = vfmaq_f32(vfmaq_f32(acc[pi][h], e[h], xe), o[h], xo);
                            }
                        }
                    }
                }
            }
            for (m, a) in mid.iter_mut().zip(&acc) {
                for (pi, a) in a.iter().enumerate() {
                    for (h, &v) in a.iter().enumerate() {
                        unsafe {
                            let q = m.as_mut_ptr().add((p0 + pi) * PANEL + h * 4);
                            vst1q_f32(q, vaddq_f32(vld1q_f32(q), v));
                        }
                    }
                }
            }
            (j0, blocks) = (j0 + FOLD_PAIRS, blocks + 1);
            if blocks == MID_BLOCKS || j0 >= kp {
                for (tt, m) in tot.iter_mut().zip(&mut mid) {
                    let span = p0 * PANEL..(p0 + PP) * PANEL;
                    for (t, v) in tt[span.clone()].iter_mut().zip(&mut m[span]) {
                        *t += *v as f64;
                        *v = 0.0;
                    }
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

/// The 64 bytes of quad `q` of a Q8 panel block at `bp` (16 lanes × 4 k), flipped back to signed.
/// SAFETY (caller): `bp` points at a whole panel block.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn quad(bp: *const u8, q: usize) -> [int8x16_t; 4] {
    let flip = vdupq_n_u8(0x80);
    std::array::from_fn(|h| unsafe { vreinterpretq_s8_u8(veorq_u8(vld1q_u8(bp.add(q * 64 + h * 16)), flip)) })
}

/// Activation row `t`'s quad `q` of block `b`, repeated in the four 32-bit lanes.
/// SAFETY (caller): row t, block b lie inside `x.q`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn x_quad(x: &QActs, t: usize, b: usize, q: usize) -> int8x16_t {
    let p = x.q.as_ptr().wrapping_add((t * x.nb + b) * QBLOCK + q * 4) as *const i32;
    unsafe { vreinterpretq_s8_s32(vdupq_n_s32(p.read_unaligned())) }
}

/// `res[t]` (16 lanes of one panel) += each 32-bit block dot × weight scale × activation scale, in the order of
/// the x86 kernels (`fma(dot, s_w · s_x, res)`).
#[target_feature(enable = "neon")]
#[inline]
fn scale_into<const MR: usize>(
    res: &mut [[float32x4_t; 4]; MR],
    dots: &[[int32x4_t; 4]; MR],
    s: &[float32x4_t; 4],
    x: &QActs,
    b: usize,
) {
    for t in 0..MR {
        let d = x.s[t * x.nb + b];
        for h in 0..4 {
            res[t][h] = vfmaq_f32(res[t][h], vcvtq_f32_s32(dots[t][h]), vmulq_n_f32(s[h], d));
        }
    }
}

#[target_feature(enable = "neon")]
#[inline]
fn store<const MR: usize>(out: &mut [[f32; TILE]; 8], res: &[[float32x4_t; 4]; MR], p: usize) {
    for (o, r) in out.iter_mut().zip(res) {
        for (h, &v) in r.iter().enumerate() {
            let dst: &mut [f32; 4] = (&mut o[p * PANEL + h * 4..p * PANEL + h * 4 + 4]).try_into().unwrap();
            // SAFETY: `dst` is four writable floats.
            unsafe { vst1q_f32(dst.as_mut_ptr(), v) };
        }
    }
}

/// The frame the NEON int8 kernels share: for each panel and 32-block, `$dots` (the block's exact 32-bit dots,
/// `[[int32x4_t; 4]; MR]`, given `$bp`, the panel block, and `$b`, its index) scaled into the panel's sums
/// (`scale_into`), which are then stored. Expanded inside each kernel, so its body has the kernel's features.
macro_rules! q8_frame {
    ($w:expr, $x:expr, $out:expr, $mr:expr, |$bp:ident, $b:ident| $dots:block) => {{
        for p in 0..2 {
            let mut res = [[vdupq_n_f32(0.0); 4]; $mr];
            for $b in 0..$x.nb {
                unsafe {
                    let $bp = $w.as_ptr().add((p * $x.nb + $b) * Q8_PANEL_BLOCK);
                    let dots: [[int32x4_t; 4]; $mr] = $dots;
                    scale_into(&mut res, &dots, &scales($bp.add(QBLOCK * PANEL)), &$x, $b);
                }
            }
            store($out, &res, p);
        }
    }};
}

/// int8 weights · int8 activations on plain NEON: `smull` / `smull2` make 16-bit products, `sadalp` adds pairs
/// into 32-bit sums (lanes 0-1 and 2-3 of each register apart), one `addp` per block joins them.
/// SAFETY (caller): NEON; `w` holds two panels of `x.nb` blocks, `x` MR rows.
#[target_feature(enable = "neon")]
pub unsafe fn q8_smull<const MR: usize>(w: &[u8], x: QActs, out: &mut [[f32; TILE]; 8]) {
    q8_frame!(w, x, out, MR, |bp, b| {
        let mut lo = [[vdupq_n_s32(0); 4]; MR];
        let mut hi = [[vdupq_n_s32(0); 4]; MR];
        for q in 0..QBLOCK / 4 {
            let a = quad(bp, q);
            for t in 0..MR {
                let bx = x_quad(&x, t, b, q);
                for h in 0..4 {
                    lo[t][h] = vpadalq_s16(lo[t][h], vmull_s8(vget_low_s8(a[h]), vget_low_s8(bx)));
                    hi[t][h] = vpadalq_s16(hi[t][h], vmull_high_s8(a[h], bx));
                }
            }
        }
        std::array::from_fn(|t| std::array::from_fn(|h| vpaddq_s32(lo[t][h], hi[t][h])))
    })
}

/// int8 weights · int8 activations with `sdot`: each instruction sums 4 products into each of 4 lanes.
/// SAFETY (caller): NEON + dotprod; bounds as `q8_smull`.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn q8_sdot<const MR: usize>(w: &[u8], x: QActs, out: &mut [[f32; TILE]; 8]) {
    q8_frame!(w, x, out, MR, |bp, b| {
        let mut dots = [[vdupq_n_s32(0); 4]; MR];
        for q in 0..QBLOCK / 4 {
            let a = quad(bp, q);
            for (t, d) in dots.iter_mut().enumerate() {
                let bx = x_quad(&x, t, b, q);
                for h in 0..4 {
                    d[h] = sdot!(d[h], a[h], bx);
                }
            }
        }
        dots
    })
}

/// int8 weights · int8 activations with `smmla` on pairs of activation rows: two quads of four lanes, zipped,
/// are 2 lanes × 8 k, the operand a 2 × 8 block of two rows multiplies; 32 products an instruction against
/// `sdot`'s 16. One row (a decode step) takes `q8_sdot`; an odd last row is paired with itself. The 32-bit
/// block dots are exact, so every path gives a row the same bits.
/// SAFETY (caller): NEON + dotprod + i8mm; bounds as `q8_smull`.
#[target_feature(enable = "neon,dotprod,i8mm")]
pub unsafe fn q8_smmla<const MR: usize>(w: &[u8], x: QActs, out: &mut [[f32; TILE]; 8]) {
    const { assert!(MR <= 4, "two pairs of rows at most") };
    if MR == 1 {
        return unsafe { q8_sdot::<1>(w, x, out) };
    }
    let nb = x.nb;
    let pairs = MR.div_ceil(2);
    q8_frame!(w, x, out, MR, |bp, b| {
        // acc[pair][h][z]: rows (2·pair, 2·pair+1) × lanes (4h + 2z, 4h + 2z + 1).
        let mut acc = [[[vdupq_n_s32(0); 2]; 4]; 2];
        for u in 0..QBLOCK / 8 {
            let (a, c) = (quad(bp, 2 * u), quad(bp, 2 * u + 1));
            let z: [[int8x16_t; 2]; 4] = std::array::from_fn(|h| {
                let (a, c) = (vreinterpretq_s32_s8(a[h]), vreinterpretq_s32_s8(c[h]));
                [vreinterpretq_s8_s32(vzip1q_s32(a, c)), vreinterpretq_s8_s32(vzip2q_s32(a, c))]
            });
            for (pr, acc) in acc.iter_mut().enumerate().take(pairs) {
                let (t0, t1) = (2 * pr, (2 * pr + 1).min(MR - 1));
                let row = |t: usize| vld1_s8(x.q.as_ptr().add((t * nb + b) * QBLOCK + u * 8));
                let xx = vcombine_s8(row(t0), row(t1));
                for h in 0..4 {
                    acc[h][0] = smmla!(acc[h][0], xx, z[h][0]);
                    acc[h][1] = smmla!(acc[h][1], xx, z[h][1]);
                }
            }
        }
        let mut dots = [[vdupq_n_s32(0); 4]; MR];
        for (pr, acc) in acc.iter().enumerate().take(pairs) {
            for h in 0..4 {
                let (a, c) = (vreinterpretq_s64_s32(acc[h][0]), vreinterpretq_s64_s32(acc[h][1]));
                dots[2 * pr][h] = vreinterpretq_s32_s64(vzip1q_s64(a, c));
                if 2 * pr + 1 < MR {
                    dots[2 * pr + 1][h] = vreinterpretq_s32_s64(vzip2q_s64(a, c));
                }
            }
        }
        dots
    })
}
