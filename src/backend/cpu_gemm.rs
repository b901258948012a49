//! CPU matmul kernels: weights packed once at load, SIMD micro-kernels chosen at run time.
//!
//! This is the one CPU module with `unsafe` (with its `x86` and `neon` submodules): the SIMD intrinsics of
//! `std::arch` (and, on aarch64, the inline assembly of `sdot` / `smmla` / `fcvtl`) and the raw output pointer
//! that lets the rayon tasks write disjoint column slices of one output. Every SIMD function is
//! `#[target_feature]` and is only called after `Kernel::available` confirmed the feature at run time;
//! every pointer offset is derived from lengths checked in `gemm_with` (see the `SAFETY` notes).
//!
//! Layouts (out `[n, m]` = x `[n, k]` · wᵀ, w `[m, k]`):
//! - `Bf16` weights: panels of 16 output rows; in a panel, for each pair of k, 16 lanes of two bf16
//!   (`w[r, 2j], w[r, 2j+1]`), the operand `vdpbf16ps` takes. m is padded to 32 (two panels, one micro-tile),
//!   k to even, with zeros.
//! - `Q8` weights: blocks of 32 along k (q8_0-like): `q = round(w / s)` with `s = max|w| / 127` stored as f16;
//!   per panel and block, 8 quads of k × 16 lanes × 4 bytes `q + 128` (the unsigned operand of `vpdpbusd`; the
//!   AVX2 and NEON kernels flip it back to signed with one xor), then the 16 rows' scales. Activations are
//!   quantized per 32-block to int8 at each call (q8_0 × q8_0, as llama.cpp does); `Σ (q_w + 128) q_x − 128 Σ q_x`
//!   recovers the signed dot.
//!
//! A micro-tile is 32 output rows × up to 8 (f32 on AVX-512), 4 (f32 on AVX2 and NEON, int8), or 6 (bf16)
//! activation rows, summed in registers over the whole of k; each rayon task owns a run of 32-row tiles and sweeps
//! every activation row over them, so the weights stream from memory once per call for any n (a 32-row tile, at
//! most 360 KB, stays in L2 while the row groups pass). Kernel families (`Kernel`):
//! - x86-64: `avx512bf16` rounds activations to bf16 (like llama.cpp's bf16 path; opt-in); `avx512` (the default
//!   where present) and `avx2` widen the bf16 weights exactly and keep f32 activations; int8 uses `vpdpbusd` where
//!   AVX512_VNNI is present, else `vpmaddubsw` (AVX2).
//! - aarch64: `neon` (f32 FMA; int8 by `smull`), `neon-dotprod` (int8 by `sdot`), `neon-i8mm` (int8 by `smmla`
//!   on pairs of rows), the best the CPU has chosen at run time.
//! - `portable`: plain Rust, compiled for the FMA targets too (`multiversion`), so it never calls libm's `fmaf`.
//!
//! `TL_CPU_KERNEL=avx512bf16|avx512|avx2|neon|neon-dotprod|neon-i8mm|portable|legacy` forces one (legacy: the
//! unpacked row-dot gemm); `kernels_in_use` says what runs, and the load logs it.
#![allow(unsafe_code)]
use super::cpu_mem::WeightMem;
use crate::tensor::{Tensor, TensorData};
use half::f16;
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::OnceLock;

const PANEL: usize = 16;
const TILE: usize = 32;
const QBLOCK: usize = 32;
/// The exact (f32) kernels sum in three levels, per lane: `FOLD_PAIRS` k pairs (16 products) in registers,
/// `MID_BLOCKS` of those block sums in f32 in L1, then into f64. Folding every block straight into f64 (a
/// conversion, a load, an add and a store per register) cost 30 % of the kernel (gemm_bench, avx512: 113-151
/// GFLOP/s, against 160-190 now and 182-204 with no f64 at all); the f32 middle level is one add per register.
/// The result stays within 3.1e-5 of transformers on the fixtures (tests/golden.rs), and a row's sum order
/// depends on k alone, so its bits do not depend on the batch.
const FOLD_PAIRS: usize = 8;
/// Blocks of `FOLD_PAIRS` pairs summed in f32 before the f64 fold (128 pairs, 256 products).
const MID_BLOCKS: usize = 16;
/// The f32 kernel with 4 or more activation rows is busy enough in FMAs that the hardware prefetcher falls
/// behind: it prefetches each panel's weights this many elements (2 KiB) ahead. Measured on a TinyLlama-shape
/// decode sweep, alternated in one process: 5 rows -20 %, 6 rows -21 %, 8 rows -9 %, 4 rows -3 %; 1 row +6 %
/// (so it is off below 4), 2 rows 0; the `vdpbf16ps` kernel at 1 and 6 rows +6-9 % (so it has none).
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 1024;
#[cfg(target_arch = "x86_64")]
const PREFETCH_MIN_ROWS: usize = 4;

/// A micro-kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// `vdpbf16ps` on bf16 activations; int8 through `vpdpbusd` (AVX512_VNNI).
    Avx512Bf16,
    /// f32 FMA on 16 lanes; int8 through `vpdpbusd` when AVX512_VNNI is present, else as `Avx2`.
    Avx512,
    /// f32 FMA on 8 lanes; int8 through `vpmaddubsw` / `vpmaddwd`.
    Avx2,
    /// aarch64 NEON: f32 FMA on 4 lanes; int8 through `smull` / `sadalp`.
    Neon,
    /// NEON with int8 through `sdot` (FEAT_DotProd).
    NeonDotprod,
    /// NEON with int8 through `smmla` on pairs of activation rows (FEAT_I8MM), `sdot` for a row left over.
    NeonI8mm,
    /// Plain Rust loops over the packed layouts.
    Portable,
}

impl Kernel {
    pub const ALL: [Kernel; 7] = [
        Kernel::Avx512Bf16,
        Kernel::Avx512,
        Kernel::Avx2,
        Kernel::Neon,
        Kernel::NeonDotprod,
        Kernel::NeonI8mm,
        Kernel::Portable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Bf16 => "avx512bf16",
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Neon => "neon",
            Kernel::NeonDotprod => "neon-dotprod",
            Kernel::NeonI8mm => "neon-i8mm",
            Kernel::Portable => "portable",
        }
    }

    pub fn parse(s: &str) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether this CPU runs the kernel.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Kernel::Avx512Bf16 => {
                    is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bf16")
                        && is_x86_feature_detected!("avx512bw")
                }
                Kernel::Avx512 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"),
                Kernel::Avx2 => {
                    is_x86_feature_detected!("avx2")
                        && is_x86_feature_detected!("fma")
                        && is_x86_feature_detected!("f16c")
                }
                Kernel::Neon | Kernel::NeonDotprod | Kernel::NeonI8mm => false,
                Kernel::Portable => true,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            match self {
                Kernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
                Kernel::NeonDotprod => {
                    std::arch::is_aarch64_feature_detected!("neon")
                        && std::arch::is_aarch64_feature_detected!("dotprod")
                }
                Kernel::NeonI8mm => {
                    std::arch::is_aarch64_feature_detected!("neon")
                        && std::arch::is_aarch64_feature_detected!("dotprod")
                        && std::arch::is_aarch64_feature_detected!("i8mm")
                }
                Kernel::Portable => true,
                _ => false,
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            self == Kernel::Portable
        }
    }

    /// The default: the fastest kernel this CPU runs that keeps f32 activations (the golden tests hold
    /// logits to 1e-4 of transformers in f32; bf16 activations move them by ~0.2 on the fixture model).
    /// `avx512bf16` is chosen only by `TL_CPU_KERNEL`.
    pub fn detect() -> Kernel {
        [Kernel::Avx512, Kernel::Avx2, Kernel::NeonI8mm, Kernel::NeonDotprod, Kernel::Neon]
            .into_iter()
            .find(|k| k.available())
            .unwrap_or(Kernel::Portable)
    }

    /// The int8 micro-kernel this family runs.
    pub fn int8(self) -> Int8Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Kernel::Avx512Bf16 | Kernel::Avx512 if is_x86_feature_detected!("avx512vnni") => Int8Kernel::Vnni512,
                Kernel::Avx512Bf16 | Kernel::Avx512 | Kernel::Avx2
                    if Kernel::Avx2.available() && is_x86_feature_detected!("avxvnni") =>
                {
                    Int8Kernel::AvxVnni
                }
                Kernel::Avx512Bf16 | Kernel::Avx512 | Kernel::Avx2 if Kernel::Avx2.available() => Int8Kernel::Avx2,
                _ => Int8Kernel::Portable,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            match self {
                Kernel::Neon => Int8Kernel::Neon,
                Kernel::NeonDotprod => Int8Kernel::Sdot,
                Kernel::NeonI8mm => Int8Kernel::Smmla,
                _ => Int8Kernel::Portable,
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            Int8Kernel::Portable
        }
    }

    /// The micro-kernel this family runs for bf16 weights with f32 (`f32_acts`) or bf16 activations.
    pub fn bf16_name(self, f32_acts: bool) -> &'static str {
        match self {
            Kernel::Avx512Bf16 if !f32_acts => "avx512bf16 vdpbf16ps",
            Kernel::Avx512Bf16 | Kernel::Avx512 => "avx512 f32 FMA",
            Kernel::Avx2 => "avx2 f32 FMA",
            Kernel::Neon | Kernel::NeonDotprod | Kernel::NeonI8mm => "neon f32 FMA",
            Kernel::Portable => "portable",
        }
    }
}

/// What runs the matmuls of each weight format (`TL_CPU_KERNEL` and the CPU decide), for the startup log and
/// `bench`'s JSON.
pub fn kernels_in_use() -> String {
    describe(selected())
}

fn describe(c: Choice) -> String {
    if c == Choice::Legacy {
        return "legacy row-dot gemm for bf16 and f32 weights; int8 unavailable".into();
    }
    let (exact, dot) = (kernel_for_choice(c, false), kernel_for_choice(c, true));
    format!(
        "bf16 weights, --weights f32: {}; bf16 weights, bf16 arithmetic (the default): {}; int8: {}; \
         f32 weights: row-dot gemm ({})",
        exact.bf16_name(true),
        dot.bf16_name(dot != Kernel::Avx512Bf16),
        exact.int8().name(),
        if Kernel::Avx2.available() { "avx2 FMA" } else { std::env::consts::ARCH },
    )
}

/// An int8 micro-kernel (see `Kernel::int8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// `vpdpbusd` on 16 lanes (AVX512_VNNI).
    Vnni512,
    /// `vpdpbusd` on 8 lanes, VEX-encoded (AVX-VNNI without AVX-512: Alder Lake and later Intel client cores,
    /// Sierra Forest; the int8 kernel of `avx2` where the CPU has it).
    AvxVnni,
    /// The same source EVEX-encoded (AVX512_VNNI + VL): chosen by no CPU default, only by the tests, so that
    /// `AvxVnni`'s code runs on the AVX-512 machines here (no CPU or emulator here has AVX-VNNI).
    Vnni256,
    /// `vpsignb` / `vpmaddubsw` / `vpmaddwd` on 8 lanes.
    Avx2,
    /// `smull` / `sadalp` on NEON.
    Neon,
    /// `sdot` (FEAT_DotProd).
    Sdot,
    /// `smmla` (FEAT_I8MM).
    Smmla,
    /// Plain Rust loops.
    Portable,
}

impl Int8Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Vnni512 => "avx512 vpdpbusd",
            Int8Kernel::AvxVnni => "avx-vnni vpdpbusd",
            Int8Kernel::Vnni256 => "avx512vl vpdpbusd (256-bit)",
            Int8Kernel::Avx2 => "avx2 vpmaddubsw",
            Int8Kernel::Neon => "neon smull",
            Int8Kernel::Sdot => "neon sdot",
            Int8Kernel::Smmla => "neon smmla",
            Int8Kernel::Portable => "portable",
        }
    }
}

/// Whether some SIMD kernel runs on this CPU (then the default must not be `portable` for any weight format).
pub fn simd_available() -> bool {
    Kernel::ALL.into_iter().any(|k| k != Kernel::Portable && k.available())
}

/// What `TL_CPU_KERNEL` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Unset or `auto`: `Kernel::detect`, or avx512bf16 for weights packed with bf16 activations.
    Auto,
    /// `legacy`: matmul weights stay unpacked and take the row-dot gemm of `cpu.rs`.
    Legacy,
    /// One kernel for every matmul.
    Forced(Kernel),
}

/// `TL_CPU_KERNEL`, read once.
pub fn selected() -> Choice {
    static SEL: OnceLock<Choice> = OnceLock::new();
    *SEL.get_or_init(|| {
        let want = std::env::var("TL_CPU_KERNEL").unwrap_or_default();
        let c = match want.as_str() {
            "" | "auto" => Choice::Auto,
            "legacy" => Choice::Legacy,
            s => match Kernel::parse(s) {
                Some(k) if k.available() => Choice::Forced(k),
                Some(k) => {
                    log::warn!("TL_CPU_KERNEL={s}: this CPU lacks {}; choosing automatically", k.name());
                    Choice::Auto
                }
                None => {
                    let names: Vec<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
                    log::warn!("TL_CPU_KERNEL={s} is not one of {}, legacy; ignored", names.join(", "));
                    Choice::Auto
                }
            },
        };
        log::info!("CPU matmul kernels: {}", describe(c));
        c
    })
}

/// A weight matrix `[m, k]` in a kernel layout (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub enum Packed {
    /// `bf16_acts`: multiply with activations rounded to bf16 (`vdpbf16ps`) where the CPU has it.
    Bf16 {
        m: usize,
        k: usize,
        data: WeightMem<u16>,
        bf16_acts: bool,
    },
    Q8 {
        m: usize,
        k: usize,
        data: WeightMem<u8>,
    },
}

fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

/// Bytes of one 16-row panel of one 32-block in the Q8 layout: 8 quads × 16 lanes × 4, then 16 f16 scales.
const Q8_PANEL_BLOCK: usize = QBLOCK * PANEL + PANEL * 2;

impl Packed {
    /// Packs a 2-D weight as bf16 (exact for bf16 weights; f32/f16 are rounded), for f32 activations or,
    /// with `bf16_acts`, bf16 ones.
    pub fn bf16(t: &Tensor, bf16_acts: bool) -> Packed {
        let (m, k) = (t.shape[0], t.shape[1]);
        let (mp, kp) = (round_up(m, TILE), k.div_ceil(2));
        let mut data = WeightMem::<u16>::zeroed(mp * kp * 2);
        data.par_chunks_mut(PANEL * kp * 2).enumerate().for_each(|(p, panel)| {
            let mut row = vec![0f32; k];
            for l in 0..PANEL {
                let r = p * PANEL + l;
                if r >= m {
                    break;
                }
                row_f32(t, r, &mut row);
                for (c, &v) in row.iter().enumerate() {
                    panel[((c / 2) * PANEL + l) * 2 + c % 2] = half::bf16::from_f32(v).to_bits();
                }
            }
        });
        Packed::Bf16 { m, k, data, bf16_acts }
    }

    /// Quantizes a 2-D weight to int8 with one scale per row and 32-block of k.
    pub fn q8(t: &Tensor) -> Packed {
        let (m, k) = (t.shape[0], t.shape[1]);
        let (mp, nb) = (round_up(m, TILE), k.div_ceil(QBLOCK));
        let mut data = WeightMem::<u8>::zeroed(mp / PANEL * nb * Q8_PANEL_BLOCK);
        data.par_chunks_mut(nb * Q8_PANEL_BLOCK).enumerate().for_each(|(p, panel)| {
            let mut row = vec![0f32; nb * QBLOCK];
            for l in 0..PANEL {
                let r = p * PANEL + l;
                row.fill(0.0);
                if r < m {
                    row_f32(t, r, &mut row[..k]);
                }
                for b in 0..nb {
                    let xs = &row[b * QBLOCK..(b + 1) * QBLOCK];
                    let (q, s) = quantize_block(xs);
                    let blk = &mut panel[b * Q8_PANEL_BLOCK..(b + 1) * Q8_PANEL_BLOCK];
                    for (c, &v) in q.iter().enumerate() {
                        blk[((c / 4) * PANEL + l) * 4 + c % 4] = (v as i16 + 128) as u8;
                    }
                    let sb = f16::from_f32(s).to_bits().to_le_bytes();
                    blk[QBLOCK * PANEL + 2 * l..QBLOCK * PANEL + 2 * l + 2].copy_from_slice(&sb);
                }
            }
        });
        Packed::Q8 { m, k, data }
    }

    /// (output rows, inner dimension).
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Packed::Bf16 { m, k, .. } | Packed::Q8 { m, k, .. } => (*m, *k),
        }
    }

    pub fn nbytes(&self) -> usize {
        match self {
            Packed::Bf16 { data, .. } => data.len() * 2,
            Packed::Q8 { data, .. } => data.len(),
        }
    }

    /// The matrix these weights compute with, as f32 `[m, k]` (dequantized for Q8); for tests and drift checks.
    pub fn to_f32(&self) -> Vec<f32> {
        let (m, k) = self.shape();
        let mut out = vec![0f32; m * k];
        match self {
            Packed::Bf16 { data, .. } => {
                let kp = k.div_ceil(2);
                for r in 0..m {
                    let (p, l) = (r / PANEL, r % PANEL);
                    for c in 0..k {
                        let v = data[p * PANEL * kp * 2 + ((c / 2) * PANEL + l) * 2 + c % 2];
                        out[r * k + c] = f32::from_bits((v as u32) << 16);
                    }
                }
            }
            Packed::Q8 { data, .. } => {
                let nb = k.div_ceil(QBLOCK);
                for r in 0..m {
                    let (p, l) = (r / PANEL, r % PANEL);
                    for c in 0..k {
                        let blk = &data[(p * nb + c / QBLOCK) * Q8_PANEL_BLOCK..];
                        let cc = c % QBLOCK;
                        let q = blk[((cc / 4) * PANEL + l) * 4 + cc % 4] as i16 - 128;
                        out[r * k + c] = q as f32 * q8_scale(blk, l);
                    }
                }
            }
        }
        out
    }
}

fn q8_scale(blk: &[u8], l: usize) -> f32 {
    let o = QBLOCK * PANEL + 2 * l;
    f16::from_bits(u16::from_le_bytes([blk[o], blk[o + 1]])).to_f32()
}

fn row_f32(t: &Tensor, r: usize, dst: &mut [f32]) {
    let k = dst.len();
    match &t.data {
        TensorData::F32(v) => dst.copy_from_slice(&v[r * k..(r + 1) * k]),
        TensorData::BF16(v) => dst.iter_mut().zip(&v[r * k..(r + 1) * k]).for_each(|(d, s)| *d = s.to_f32()),
        TensorData::F16(v) => dst.iter_mut().zip(&v[r * k..(r + 1) * k]).for_each(|(d, s)| *d = s.to_f32()),
    }
}

/// q8_0: int8 values and the f16-representable scale `max|x| / 127`, rounded to nearest.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
fn quantize_block(xs: &[f32]) -> ([i8; QBLOCK], f32) {
    let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
    let s = f16::from_f32(amax / 127.0).to_f32();
    let mut q = [0i8; QBLOCK];
    if s > 0.0 {
        let inv = 1.0 / s;
        for (q, v) in q.iter_mut().zip(xs) {
            // An integer in [-127, 127] taken from the low bits of 1.5 * 2^23 + it (exact): the saturating
            // `as i8` cast would keep this loop (and `round`, inlined once SSE4.1 is on) from vectorizing.
            let r = (v * inv).round().clamp(-127.0, 127.0) + 12_582_912.0;
            *q = r.to_bits().wrapping_sub(12_582_912f32.to_bits()) as i8;
        }
    }
    (q, s)
}

/// Per-call activation copies in the layout a kernel reads, reused across calls on one thread.
#[derive(Default)]
struct Scratch {
    f: Vec<f32>,
    h: Vec<u16>,
    q: Vec<i8>,
    qs: Vec<f32>,
    qsum: Vec<i32>,
    qabs: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The output matrix shared by the tasks; each writes only its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of rows of one `&mut [f32]` that outlives the parallel loop.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Activations as one kernel family reads them: row stride in elements (or bytes for int8).
#[derive(Clone, Copy)]
enum Acts<'a> {
    F32 {
        x: &'a [f32],
        ld: usize,
    },
    Bf16 {
        x: &'a [u16],
        ld: usize,
    },
    /// `abs`: |q|, for the AVX2 kernel (empty for the others).
    Q8 {
        q: &'a [i8],
        s: &'a [f32],
        sum: &'a [i32],
        abs: &'a [u8],
        nb: usize,
    },
}

/// out `[n, m]` = x `[n, k]` · wᵀ with the kernel `TL_CPU_KERNEL`, the weight and the CPU select.
pub fn gemm(out: &mut [f32], x: &[f32], w: &Packed, n: usize) {
    gemm_with(kernel_for(w), out, x, w, n)
}

/// `outs[i]` `[n, m_i]` = x `[n, k]` · `ws[i]`ᵀ. Weights of one layout and inner dimension (Q, K and V; gate and
/// up) run as one parallel loop over all their tiles: the activations are prepared once and the pool woken once,
/// not per matrix. Each output gets the bits `gemm` gives it.
pub fn gemm_many(outs: &mut [&mut [f32]], x: &[f32], ws: &[&Packed], n: usize) {
    assert_eq!(outs.len(), ws.len(), "gemm_many: outputs and weights differ in number");
    if ws.len() <= MAX_MANY && ws.windows(2).all(|p| same_layout(p[0], p[1])) {
        if let Some(&w) = ws.first() {
            gemm_many_with(kernel_for(w), outs, x, ws, n);
        }
        return;
    }
    for (out, w) in outs.iter_mut().zip(ws) {
        gemm(out, x, w, n);
    }
}

/// Weights `gemm_many` runs in one loop at most.
const MAX_MANY: usize = 4;

/// The kernel `gemm` uses for `w`.
fn kernel_for(w: &Packed) -> Kernel {
    kernel_for_choice(selected(), matches!(w, Packed::Bf16 { bf16_acts: true, .. }))
}

/// The kernel for weights packed with bf16 activations (`bf16_acts`) or any other, under choice `c`.
fn kernel_for_choice(c: Choice, bf16_acts: bool) -> Kernel {
    match c {
        Choice::Forced(k) => k,
        _ if bf16_acts && Kernel::Avx512Bf16.available() => Kernel::Avx512Bf16,
        _ => Kernel::detect(),
    }
}

/// Whether the same prepared activations serve both weights.
fn same_layout(a: &Packed, b: &Packed) -> bool {
    match (a, b) {
        (Packed::Bf16 { k: ka, bf16_acts: ba, .. }, Packed::Bf16 { k: kb, bf16_acts: bb, .. }) => ka == kb && ba == bb,
        (Packed::Q8 { k: ka, .. }, Packed::Q8 { k: kb, .. }) => ka == kb,
        _ => false,
    }
}

/// out `[n, m]` = x `[n, k]` · wᵀ with `kernel` (which must be `available`).
pub fn gemm_with(kernel: Kernel, out: &mut [f32], x: &[f32], w: &Packed, n: usize) {
    gemm_many_with(kernel, &mut [out], x, &[w], n)
}

/// `gemm_many` with `kernel`, for up to `MAX_MANY` weights of one layout.
fn gemm_many_with(kernel: Kernel, outs: &mut [&mut [f32]], x: &[f32], ws: &[&Packed], n: usize) {
    gemm_many_int8(kernel, kernel.int8(), outs, x, ws, n)
}

/// `gemm_many_with`, int8 weights taking the micro-kernel `ik` (tests choose one no CPU default picks).
fn gemm_many_int8(kernel: Kernel, ik: Int8Kernel, outs: &mut [&mut [f32]], x: &[f32], ws: &[&Packed], n: usize) {
    assert!(kernel.available(), "kernel {} is not available on this CPU", kernel.name());
    assert!(ws.len() <= MAX_MANY && ws.len() == outs.len() && !ws.is_empty());
    let k = ws[0].shape().1;
    let mut ptrs = [OutPtr(std::ptr::null_mut()); MAX_MANY];
    for (i, (out, w)) in outs.iter_mut().zip(ws).enumerate() {
        let m = w.shape().0;
        assert!(same_layout(w, ws[0]), "gemm_many: weights of different layouts");
        assert!(out.len() >= n * m && x.len() >= n * k, "gemm: buffers too small for {n}x{m}x{k}");
        ptrs[i] = OutPtr(out.as_mut_ptr());
    }
    let tiles_of = |w: &Packed| round_up(w.shape().0, TILE) / TILE;
    let tiles: usize = ws.iter().map(|w| tiles_of(w)).sum();
    if n == 0 || tiles == 0 {
        return;
    }
    // Global tile g -> (weight, its tile).
    let locate = |mut g: usize| {
        for (i, w) in ws.iter().enumerate() {
            if g < tiles_of(w) {
                return (i, g);
            }
            g -= tiles_of(w);
        }
        unreachable!("tile beyond the weights")
    };
    SCRATCH.with(|cell| {
        // A gemm nested in another on this thread (a rayon worker stealing work) gets its own buffers.
        let mut own = None;
        let mut guard = cell.try_borrow_mut().ok();
        let s: &mut Scratch = match guard.as_deref_mut() {
            Some(s) => s,
            None => own.insert(Scratch::default()),
        };
        let acts = prepare(kernel, ik, ws[0], x, n, k, s);
        // Enough tasks to balance two cores, each a contiguous run of tiles.
        let per_task = tiles.div_ceil(rayon::current_num_threads() * 8).max(1);
        (0..tiles.div_ceil(per_task)).into_par_iter().for_each(|task| {
            // Rebound so the closure captures the whole (Send) array, not raw pointer fields.
            #[allow(clippy::redundant_locals)]
            let ptrs = ptrs;
            for g in task * per_task..((task + 1) * per_task).min(tiles) {
                let (i, tile) = locate(g);
                run_tile(kernel, ik, ws[i], acts, n, ws[i].shape().0, tile, ptrs[i]);
            }
        });
    });
}

fn prepare<'a>(
    kernel: Kernel,
    ik: Int8Kernel,
    w: &Packed,
    x: &[f32],
    n: usize,
    k: usize,
    s: &'a mut Scratch,
) -> Acts<'a> {
    match w {
        Packed::Bf16 { .. } => {
            let ld = act_stride(k);
            if kernel == Kernel::Avx512Bf16 {
                grow(&mut s.h, n * ld);
                // Rows in parallel once there is enough to share (a prefill's activations are megabytes).
                let rows_per_task = (ROUND_TASK_FLOATS / k.max(1)).max(1);
                s.h[..n * ld]
                    .par_chunks_mut(ld * rows_per_task)
                    .zip(x[..n * k].par_chunks(k * rows_per_task))
                    .for_each(|(dst, src)| {
                        for (d, v) in dst.chunks_mut(ld).zip(src.chunks(k)) {
                            round_to_bf16(&mut d[..k], v);
                            // The kernels read k rounded up to even, nothing past it; the extra element meets a zero
                            // weight, and must not be a stale NaN.
                            if k % 2 == 1 {
                                d[k] = 0;
                            }
                        }
                    });
                Acts::Bf16 { x: &s.h[..n * ld], ld }
            } else {
                grow(&mut s.f, n * ld);
                for t in 0..n {
                    s.f[t * ld..t * ld + k].copy_from_slice(&x[t * k..(t + 1) * k]);
                    if k % 2 == 1 {
                        s.f[t * ld + k] = 0.0;
                    }
                }
                Acts::F32 { x: &s.f[..n * ld], ld }
            }
        }
        Packed::Q8 { .. } => {
            let nb = k.div_ceil(QBLOCK);
            grow(&mut s.q, n * nb * QBLOCK);
            grow(&mut s.qs, n * nb);
            grow(&mut s.qsum, n * nb);
            let mut buf = [0f32; QBLOCK];
            for t in 0..n {
                for b in 0..nb {
                    let (lo, hi) = (b * QBLOCK, ((b + 1) * QBLOCK).min(k));
                    buf.fill(0.0);
                    buf[..hi - lo].copy_from_slice(&x[t * k + lo..t * k + hi]);
                    let (q, sc) = quantize_block(&buf);
                    let i = t * nb + b;
                    s.q[i * QBLOCK..(i + 1) * QBLOCK].copy_from_slice(&q);
                    s.qs[i] = sc;
                    s.qsum[i] = q.iter().map(|&v| v as i32).sum();
                }
            }
            // The AVX2 kernel's unsigned operand, made once here rather than per tile.
            let abs_len = if ik == Int8Kernel::Avx2 { n * nb * QBLOCK } else { 0 };
            grow(&mut s.qabs, abs_len);
            for (a, &v) in s.qabs[..abs_len].iter_mut().zip(&s.q[..abs_len]) {
                *a = v.unsigned_abs();
            }
            let (q, abs) = (&s.q[..n * nb * QBLOCK], &s.qabs[..abs_len]);
            Acts::Q8 { q, s: &s.qs[..n * nb], sum: &s.qsum[..n * nb], abs, nb }
        }
    }
}

/// Makes `v` at least `len` long without rewriting what it holds: `prepare` writes every element a kernel
/// reads, so clearing megabytes of a prefill's activations first would be wasted.
fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// Elements per prepared activation row: k rounded up to even, then padded so that a row is an odd number of
/// 64-byte lines for bf16 (k = 2048 would put the rows a micro-tile broadcasts from 4 KiB apart, all in one L1
/// set).
fn act_stride(k: usize) -> usize {
    let ld = round_up(k, 2);
    if (ld * 2).is_multiple_of(128) { ld + 32 } else { ld }
}

/// Activation floats one rayon task rounds to bf16 in `prepare`.
const ROUND_TASK_FLOATS: usize = 1 << 16;

/// `dst[i]` = the bf16 bits of `src[i]`, rounded to nearest even (NaN stays a quiet NaN): the bits of
/// `half::bf16::from_f32`, branch-free so that it vectorizes.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
fn round_to_bf16(dst: &mut [u16], src: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        let b = v.to_bits();
        let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1))) >> 16;
        let nan = (b & 0x7FFF_FFFF) > 0x7F80_0000;
        *d = if nan { ((b >> 16) | 0x40) as u16 } else { rounded as u16 };
    }
}

/// All activation rows against one 32-row tile.
#[allow(clippy::too_many_arguments)]
fn run_tile(kernel: Kernel, ik: Int8Kernel, w: &Packed, acts: Acts, n: usize, m: usize, tile: usize, out: OutPtr) {
    let r0 = tile * TILE;
    let valid = (m - r0).min(TILE);
    let mut t0 = 0;
    while t0 < n {
        let mut buf = [[0f32; TILE]; 8];
        let rows = match (w, acts) {
            (Packed::Bf16 { k, data, .. }, Acts::Bf16 { x, ld }) => {
                let rows = (n - t0).min(6);
                tile_bf16(kernel, data, k.div_ceil(2), tile, &x[t0 * ld..], ld, rows, &mut buf);
                rows
            }
            (Packed::Bf16 { k, data, .. }, Acts::F32 { x, ld }) => {
                let rows = (n - t0).min(f32_rows(kernel));
                tile_f32(kernel, data, k.div_ceil(2), tile, &x[t0 * ld..], ld, rows, &mut buf);
                rows
            }
            (Packed::Q8 { data, .. }, Acts::Q8 { q, s, sum, abs, nb }) => {
                let rows = (n - t0).min(4);
                let abs = abs.get(t0 * nb * QBLOCK..).unwrap_or(&[]);
                let xa = QActs { q: &q[t0 * nb * QBLOCK..], s: &s[t0 * nb..], sum: &sum[t0 * nb..], abs, nb };
                tile_q8(ik, data, tile, xa, rows, &mut buf);
                rows
            }
            _ => unreachable!("activations prepared for another weight layout"),
        };
        for (i, b) in buf[..rows].iter().enumerate() {
            // SAFETY: row t0+i < n and columns r0..r0+valid < m lie inside `out` (len >= n*m, checked in
            // gemm_with); no other task writes these columns.
            unsafe {
                let dst = out.0.add((t0 + i) * m + r0);
                std::ptr::copy_nonoverlapping(b.as_ptr(), dst, valid);
            }
        }
        t0 += rows;
    }
}

/// Activation rows one f32 micro-tile takes: 8 on 32 zmm registers, 4 on AVX2's 16 and on NEON (a panel at a
/// time).
fn f32_rows(kernel: Kernel) -> usize {
    match kernel {
        Kernel::Avx2 | Kernel::Neon | Kernel::NeonDotprod | Kernel::NeonI8mm => 4,
        _ => 8,
    }
}

#[derive(Clone, Copy)]
struct QActs<'a> {
    q: &'a [i8],
    s: &'a [f32],
    sum: &'a [i32],
    /// |q| where the kernel reads it (AVX2), else empty.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    abs: &'a [u8],
    nb: usize,
}

#[allow(clippy::too_many_arguments)]
fn tile_bf16(
    kernel: Kernel,
    w: &[u16],
    kp: usize,
    tile: usize,
    x: &[u16],
    ld: usize,
    rows: usize,
    out: &mut [[f32; TILE]; 8],
) {
    let w = &w[tile * TILE * kp * 2..(tile + 1) * TILE * kp * 2];
    assert!(x.len() >= (rows - 1) * ld + kp * 2 && ld >= kp * 2);
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512Bf16 {
        // SAFETY: the caller checked `available` (avx512f + avx512bf16); slice bounds asserted above.
        unsafe {
            match rows {
                1 => x86::bf16_dp::<1>(w, kp, x, ld, out),
                2 => x86::bf16_dp::<2>(w, kp, x, ld, out),
                3 => x86::bf16_dp::<3>(w, kp, x, ld, out),
                4 => x86::bf16_dp::<4>(w, kp, x, ld, out),
                5 => x86::bf16_dp::<5>(w, kp, x, ld, out),
                _ => x86::bf16_dp::<6>(w, kp, x, ld, out),
            }
        }
        return;
    }
    // Only the avx512bf16 kernel reads bf16 activations; others get f32 ones.
    let _ = (kernel, w, out);
    unreachable!("bf16 activations outside the avx512bf16 kernel")
}

#[allow(clippy::too_many_arguments)]
fn tile_f32(
    kernel: Kernel,
    w: &[u16],
    kp: usize,
    tile: usize,
    x: &[f32],
    ld: usize,
    rows: usize,
    out: &mut [[f32; TILE]; 8],
) {
    let w = &w[tile * TILE * kp * 2..(tile + 1) * TILE * kp * 2];
    assert!(x.len() >= (rows - 1) * ld + kp * 2 && ld >= kp * 2);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `kernel` was checked `available` by gemm_with; slice bounds asserted above.
        macro_rules! dispatch {
            ($f:ident) => {
                unsafe {
                    match rows {
                        1 => x86::$f::<1>(w, kp, x, ld, out),
                        2 => x86::$f::<2>(w, kp, x, ld, out),
                        3 => x86::$f::<3>(w, kp, x, ld, out),
                        4 => x86::$f::<4>(w, kp, x, ld, out),
                        5 => x86::$f::<5>(w, kp, x, ld, out),
                        6 => x86::$f::<6>(w, kp, x, ld, out),
                        7 => x86::$f::<7>(w, kp, x, ld, out),
                        _ => x86::$f::<8>(w, kp, x, ld, out),
                    }
                }
            };
        }
        match kernel {
            Kernel::Avx512 => return dispatch!(f32_fma512),
            // SAFETY: as above; one row takes both panels at once, more rows one panel at a time.
            Kernel::Avx2 => unsafe {
                return match rows {
                    1 => x86::f32_fma256::<1, 2>(w, kp, x, ld, out),
                    2 => x86::f32_fma256::<2, 1>(w, kp, x, ld, out),
                    3 => x86::f32_fma256::<3, 1>(w, kp, x, ld, out),
                    _ => x86::f32_fma256::<4, 1>(w, kp, x, ld, out),
                };
            },
            _ => {}
        }
    }
    #[cfg(target_arch = "aarch64")]
    if matches!(kernel, Kernel::Neon | Kernel::NeonDotprod | Kernel::NeonI8mm) {
        // SAFETY: `kernel` was checked `available` (NEON); slice bounds asserted above.
        unsafe {
            return match rows {
                1 => neon::f32_fma::<1, 2>(w, kp, x, ld, out),
                2 => neon::f32_fma::<2, 1>(w, kp, x, ld, out),
                3 => neon::f32_fma::<3, 1>(w, kp, x, ld, out),
                _ => neon::f32_fma::<4, 1>(w, kp, x, ld, out),
            };
        }
    }
    let _ = kernel;
    portable_f32(w, kp, x, ld, rows, out)
}

/// Plain loops in the kernels' order: per lane, even then odd element of each k pair, the three-level sums of
/// `FOLD_PAIRS`. Compiled for the FMA targets too, so `mul_add` is an instruction there, not a call into libm.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn portable_f32(w: &[u16], kp: usize, x: &[f32], ld: usize, rows: usize, out: &mut [[f32; TILE]; 8]) {
    let wide = |v: u16| f32::from_bits((v as u32) << 16);
    for (t, o) in out[..rows].iter_mut().enumerate() {
        let xr = &x[t * ld..t * ld + kp * 2];
        for p in 0..2 {
            let wp = &w[p * PANEL * kp * 2..(p + 1) * PANEL * kp * 2];
            let (mut tot, mut mid) = ([0f64; PANEL], [0f32; PANEL]);
            for (b, j0) in (0..kp).step_by(FOLD_PAIRS).enumerate() {
                let mut acc = [0f32; PANEL];
                for j in j0..(j0 + FOLD_PAIRS).min(kp) {
                    let (xe, xo) = (xr[2 * j], xr[2 * j + 1]);
                    let wj = &wp[j * PANEL * 2..(j + 1) * PANEL * 2];
                    for l in 0..PANEL {
                        acc[l] = wide(wj[2 * l]).mul_add(xe, acc[l]);
                        acc[l] = wide(wj[2 * l + 1]).mul_add(xo, acc[l]);
                    }
                }
                for (m, a) in mid.iter_mut().zip(acc) {
                    *m += a;
                }
                if (b + 1) % MID_BLOCKS == 0 || j0 + FOLD_PAIRS >= kp {
                    for (t, m) in tot.iter_mut().zip(&mut mid) {
                        *t += *m as f64;
                        *m = 0.0;
                    }
                }
            }
            for (d, t) in o[p * PANEL..(p + 1) * PANEL].iter_mut().zip(tot) {
                *d = t as f32;
            }
        }
    }
}

fn tile_q8(ik: Int8Kernel, w: &[u8], tile: usize, x: QActs, rows: usize, out: &mut [[f32; TILE]; 8]) {
    let span = 2 * x.nb * Q8_PANEL_BLOCK;
    let w = &w[tile * span..(tile + 1) * span];
    assert!(x.q.len() >= rows * x.nb * QBLOCK && x.s.len() >= rows * x.nb && x.sum.len() >= rows * x.nb);
    macro_rules! dispatch {
        ($m:ident::$f:ident) => {
            // SAFETY: `Kernel::int8` chose this kernel after confirming its features; bounds asserted above.
            unsafe {
                match rows {
                    1 => $m::$f::<1>(w, x, out),
                    2 => $m::$f::<2>(w, x, out),
                    3 => $m::$f::<3>(w, x, out),
                    _ => $m::$f::<4>(w, x, out),
                }
            }
        };
    }
    // One activation row takes both panels at once (a decode step keeps both panels' lines in flight).
    #[cfg(target_arch = "x86_64")]
    macro_rules! dispatch_pp {
        ($m:ident::$f:ident) => {
            // SAFETY: as in `dispatch`.
            unsafe {
                match rows {
                    1 => $m::$f::<1, 2>(w, x, out),
                    2 => $m::$f::<2, 1>(w, x, out),
                    3 => $m::$f::<3, 1>(w, x, out),
                    _ => $m::$f::<4, 1>(w, x, out),
                }
            }
        };
    }
    match ik {
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Vnni512 => dispatch!(x86::q8_vnni),
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::AvxVnni => dispatch_pp!(x86::q8_avxvnni),
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Vnni256 => dispatch_pp!(x86::q8_vnni256),
        // SAFETY: as in `dispatch`, and |x| checked here; one row takes its own kernel (both panels at once).
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx2 => unsafe {
            assert!(x.abs.len() >= rows * x.nb * QBLOCK, "|x| not prepared for the avx2 int8 kernel");
            match rows {
                1 => x86::q8_avx2_row(w, x, out),
                2 => x86::q8_avx2::<2>(w, x, out),
                3 => x86::q8_avx2::<3>(w, x, out),
                _ => x86::q8_avx2::<4>(w, x, out),
            }
        },
        #[cfg(target_arch = "aarch64")]
        Int8Kernel::Neon => dispatch!(neon::q8_smull),
        #[cfg(target_arch = "aarch64")]
        Int8Kernel::Sdot => dispatch!(neon::q8_sdot),
        #[cfg(target_arch = "aarch64")]
        Int8Kernel::Smmla => dispatch!(neon::q8_smmla),
        _ => portable_q8(w, x, rows, out),
    }
}

/// Plain loops; compiled for the FMA targets too (see `portable_f32`).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn portable_q8(w: &[u8], x: QActs, rows: usize, out: &mut [[f32; TILE]; 8]) {
    let nb = x.nb;
    for (t, o) in out[..rows].iter_mut().enumerate() {
        for p in 0..2 {
            let mut acc = [0f32; PANEL];
            for b in 0..nb {
                let blk = &w[(p * nb + b) * Q8_PANEL_BLOCK..(p * nb + b + 1) * Q8_PANEL_BLOCK];
                let xq = &x.q[(t * nb + b) * QBLOCK..(t * nb + b + 1) * QBLOCK];
                // In the layout's order (quad, lane, byte), so that the lanes' sums vectorize.
                let mut d = [-128 * x.sum[t * nb + b]; PANEL];
                for (q, quad) in blk[..QBLOCK * PANEL].chunks_exact(4 * PANEL).enumerate() {
                    let xs = &xq[4 * q..4 * q + 4];
                    for (d, wl) in d.iter_mut().zip(quad.chunks_exact(4)) {
                        *d += wl.iter().zip(xs).map(|(&w, &x)| w as i32 * x as i32).sum::<i32>();
                    }
                }
                for (l, (a, d)) in acc.iter_mut().zip(d).enumerate() {
                    *a = (d as f32).mul_add(q8_scale(blk, l) * x.s[t * nb + b], *a);
                }
            }
            o[p * PANEL..(p + 1) * PANEL].copy_from_slice(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(test)]
mod rounding_tests {
    use super::round_to_bf16;

    /// The branch-free rounding gives `half`'s bits on ties, carries into the exponent, infinities, NaNs,
    /// subnormals and a sweep of ordinary values.
    #[test]
    fn round_to_bf16_matches_half() {
        let mut v: Vec<f32> = [
            0x3F80_8000u32,
            0x3F81_8000,
            0x3F80_8001,
            0x7F7F_FFFF,
            0x7F80_0000,
            0xFF80_0000,
            0x7FC0_0000,
            0x7F80_0001,
            0xFFFF_FFFF,
            0x0000_0001,
            0x807F_FFFF,
            0x0000_8000,
            0x8000_0000,
        ]
        .iter()
        .map(|&b| f32::from_bits(b))
        .collect();
        v.extend((0..100_003u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))));
        let mut got = vec![0u16; v.len()];
        round_to_bf16(&mut got, &v);
        for (g, x) in got.iter().zip(&v) {
            assert_eq!(*g, half::bf16::from_f32(*x).to_bits(), "{:#010x}", x.to_bits());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// Plain triple loop in f64.
    fn reference(x: &[f32], w: &[f32], n: usize, m: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * m];
        for t in 0..n {
            for r in 0..m {
                out[t * m + r] = (0..k).map(|c| x[t * k + c] as f64 * w[r * k + c] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    fn bf16_tensor(m: usize, k: usize, v: &[f32]) -> Tensor {
        Tensor { shape: vec![m, k], data: TensorData::BF16(v.iter().map(|&f| half::bf16::from_f32(f)).collect()) }
    }

    const SHAPES: [(usize, usize, usize); 6] =
        [(1, 37, 29), (3, 33, 65), (5, 1, 7), (9, 70, 131), (13, 100, 33), (17, 45, 200)];

    #[test]
    fn bf16_packing_round_trips() {
        for &(_, m, k) in &SHAPES {
            let t = bf16_tensor(m, k, &rand(1, m * k, 1.0));
            assert_eq!(Packed::bf16(&t, false).to_f32(), t.to_f32_vec(), "{m}x{k}");
        }
    }

    #[test]
    fn every_bf16_kernel_matches_a_plain_loop_on_odd_shapes() {
        for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
            // NaN activations first: the scratch rows reused by the odd-k shapes below hold NaN past their k.
            let (t, x) = (bf16_tensor(4, 301, &rand(9, 4 * 301, 0.5)), vec![f32::NAN; 20 * 301]);
            gemm_with(kernel, &mut vec![0f32; 20 * 4], &x, &Packed::bf16(&t, false), 20);
            for (i, &(n, m, k)) in SHAPES.iter().enumerate() {
                let t = bf16_tensor(m, k, &rand(10 + i as u64, m * k, 0.5));
                let x = rand(20 + i as u64, n * k, 2.0);
                let w = Packed::bf16(&t, false);
                let mut out = vec![f32::NAN; n * m];
                gemm_with(kernel, &mut out, &x, &w, n);
                // avx512bf16 rounds the activations to bf16: compare with a reference on those.
                let xr: Vec<f32> = if kernel == Kernel::Avx512Bf16 {
                    x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect()
                } else {
                    x.clone()
                };
                let want = reference(&xr, &t.to_f32_vec(), n, m, k);
                // NaN-aware: f32::max would skip a NaN output.
                let err = out
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, |m, e| if e.is_nan() { e } else { m.max(e) });
                assert!(err < 1e-4 * (k as f32).sqrt(), "{} {n}x{m}x{k}: max abs error {err}", kernel.name());
            }
        }
    }

    #[test]
    fn every_int8_kernel_matches_a_plain_loop_on_odd_shapes() {
        for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
            for (i, &(n, m, k)) in SHAPES.iter().enumerate() {
                let wf = rand(30 + i as u64, m * k, 0.5);
                let x = rand(40 + i as u64, n * k, 2.0);
                let w = Packed::q8(&Tensor::from_f32(&[m, k], wf.clone()));
                let mut out = vec![f32::NAN; n * m];
                gemm_with(kernel, &mut out, &x, &w, n);
                // Exact reference: dequantized weights against q8_0-quantized activations.
                let nb = k.div_ceil(QBLOCK);
                let mut xq = vec![0f32; n * k];
                for t in 0..n {
                    for b in 0..nb {
                        let (lo, hi) = (b * QBLOCK, ((b + 1) * QBLOCK).min(k));
                        let mut buf = [0f32; QBLOCK];
                        buf[..hi - lo].copy_from_slice(&x[t * k + lo..t * k + hi]);
                        let (q, s) = quantize_block(&buf);
                        for c in lo..hi {
                            xq[t * k + c] = q[c - lo] as f32 * s;
                        }
                    }
                }
                let want = reference(&xq, &w.to_f32(), n, m, k);
                // NaN-aware: f32::max would skip a NaN output.
                let err = out
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, |m, e| if e.is_nan() { e } else { m.max(e) });
                assert!(err < 1e-4 * (k as f32).sqrt(), "{} int8 {n}x{m}x{k}: max abs error {err}", kernel.name());
                // And the quantization error itself stays small against the unquantized product.
                let exact = reference(&x, &wf, n, m, k);
                let rms = (exact.iter().map(|v| v * v).sum::<f32>() / exact.len() as f32).sqrt();
                let qerr = out
                    .iter()
                    .zip(&exact)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, |m, e| if e.is_nan() { e } else { m.max(e) });
                assert!(
                    qerr < 0.03 * rms.max(1e-3) * 4.0,
                    "{} int8 {n}x{m}x{k}: quantization error {qerr} (rms {rms})",
                    kernel.name()
                );
            }
        }
    }

    /// The AVX-VNNI kernel's source, run EVEX-encoded (`Vnni256`) on the AVX512_VNNI machines here, gives the AVX2
    /// kernel's bits on odd shapes for every row count (one row: both panels at once), remainders included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx_vnni_source_gives_the_bits_of_the_avx2_int8_kernel() {
        let evex = is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512vnni");
        if !(evex && Kernel::Avx2.available()) {
            eprintln!("no AVX512_VNNI + VL on this CPU: the AVX-VNNI source is not run");
            return;
        }
        for (i, &(_, m, k)) in SHAPES.iter().enumerate() {
            let w = Packed::q8(&Tensor::from_f32(&[m, k], rand(50 + i as u64, m * k, 0.5)));
            for n in [1, 2, 3, 4, 5, 9] {
                let x = rand(60 + i as u64, n * k, 2.0);
                let run = |ik| {
                    let mut out = vec![f32::NAN; n * m];
                    gemm_many_int8(Kernel::Avx2, ik, &mut [&mut out[..]], &x, &[&w], n);
                    out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                assert_eq!(run(Int8Kernel::Vnni256), run(Int8Kernel::Avx2), "{n}x{m}x{k}");
            }
        }
    }

    /// Every kernel gives a row the same bits whatever the number of rows computed with it, so prefix caching
    /// (K/V reused across batches) is exact.
    #[test]
    fn every_kernel_gives_a_row_the_same_bits_in_any_batch() {
        let (n, m, k) = (11, 70, 131);
        let t = bf16_tensor(m, k, &rand(3, m * k, 0.5));
        let x = rand(4, n * k, 2.0);
        for w in [Packed::bf16(&t, false), Packed::q8(&t)] {
            for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
                let mut all = vec![f32::NAN; n * m];
                gemm_with(kernel, &mut all, &x, &w, n);
                for rows in [1, 2, 3, 5, 8, 9] {
                    let mut part = vec![f32::NAN; rows * m];
                    gemm_with(kernel, &mut part, &x[..rows * k], &w, rows);
                    assert_eq!(part, all[..rows * m], "{}: {rows} rows vs {n}", kernel.name());
                }
            }
        }
    }

    /// Q, K, V-like weights (different row counts, one of them under a tile) in one `gemm_many` loop give each
    /// output the bits of its own `gemm`, for bf16 (both activation kinds) and int8; mixed layouts fall back.
    #[test]
    fn gemm_many_gives_each_output_the_bits_of_gemm() {
        let (n, k) = (5, 131);
        let ms = [70, 19, 33];
        let x = rand(7, n * k, 2.0);
        let ts: Vec<Tensor> =
            ms.iter().enumerate().map(|(i, &m)| bf16_tensor(m, k, &rand(30 + i as u64, m * k, 0.5))).collect();
        let layouts: [fn(&Tensor) -> Packed; 3] = [|t| Packed::bf16(t, false), |t| Packed::bf16(t, true), Packed::q8];
        for (l, pack) in layouts.iter().enumerate() {
            let ws: Vec<Packed> = ts.iter().map(pack).collect();
            let mut sep: Vec<Vec<f32>> = ms.iter().map(|&m| vec![f32::NAN; n * m]).collect();
            for (o, w) in sep.iter_mut().zip(&ws) {
                gemm(o, &x, w, n);
            }
            let mut many: Vec<Vec<f32>> = ms.iter().map(|&m| vec![f32::NAN; n * m]).collect();
            let mut outs: Vec<&mut [f32]> = many.iter_mut().map(|o| o.as_mut_slice()).collect();
            gemm_many(&mut outs, &x, &ws.iter().collect::<Vec<_>>(), n);
            assert_eq!(many, sep, "layout {l}");
        }
        let mixed = [Packed::bf16(&ts[0], false), Packed::q8(&ts[1])];
        let mut sep: Vec<Vec<f32>> = ms[..2].iter().map(|&m| vec![f32::NAN; n * m]).collect();
        for (o, w) in sep.iter_mut().zip(&mixed) {
            gemm(o, &x, w, n);
        }
        let mut many: Vec<Vec<f32>> = ms[..2].iter().map(|&m| vec![f32::NAN; n * m]).collect();
        let mut outs: Vec<&mut [f32]> = many.iter_mut().map(|o| o.as_mut_slice()).collect();
        gemm_many(&mut outs, &x, &[&mixed[0], &mixed[1]], n);
        assert_eq!(many, sep, "mixed layouts");
    }

    /// The vectorized rounding gives the saturating cast's integers, ties (x.5, rounded away from zero) included.
    #[test]
    fn quantize_block_rounds_half_away_like_the_plain_cast() {
        for seed in 0..200u64 {
            let mut xs: [f32; QBLOCK] = rand(seed, QBLOCK, 3.0).try_into().unwrap();
            if seed % 2 == 0 {
                // Exact ties: amax 127 makes the scale 1, so k + 0.5 sits halfway.
                for (i, x) in xs.iter_mut().enumerate() {
                    *x = (i as f32 * 7.0 - 110.5) * if i % 3 == 0 { -1.0 } else { 1.0 };
                }
                xs[0] = 127.0;
            }
            let (q, sc) = quantize_block(&xs);
            for (i, &v) in xs.iter().enumerate() {
                let want = (v * (1.0 / sc)).round().clamp(-127.0, 127.0) as i8;
                assert_eq!(q[i], want, "seed {seed} element {i}: {v} at scale {sc}");
            }
        }
    }

    /// No slow fallback by accident: where this CPU runs a SIMD kernel, the default is one for every weight
    /// format, and no SIMD family hands its int8 matmuls to the plain loops (as AVX2 once did: 0.03x llama.cpp).
    #[test]
    fn a_simd_cpu_never_defaults_to_the_portable_kernels() {
        if cfg!(target_arch = "aarch64") || (cfg!(target_arch = "x86_64") && Kernel::Avx2.available()) {
            assert!(simd_available(), "no SIMD kernel on a CPU that has one");
        }
        if simd_available() {
            let k = Kernel::detect();
            assert_ne!(k, Kernel::Portable, "default kernel");
            assert_ne!(k.bf16_name(true), "portable");
            assert_ne!(k.int8(), Int8Kernel::Portable, "default int8 kernel of {}", k.name());
        }
        for k in Kernel::ALL.into_iter().filter(|k| k.available() && *k != Kernel::Portable) {
            assert_ne!(k.int8(), Int8Kernel::Portable, "{}: int8 falls back to portable", k.name());
        }
        let described = kernels_in_use();
        eprintln!("kernels in use: {described}");
        assert!(selected() != Choice::Auto || !simd_available() || !described.contains("portable"), "{described}");
    }

    /// A kernel named in `TL_CPU_KERNEL` (scripts/test_cpu_kernels.sh forces each) is the one that runs: a CPU
    /// without it would fall back to the default with a warning, and the forced test runs would prove nothing.
    #[test]
    fn forced_kernel_is_the_one_that_runs() {
        let want = std::env::var("TL_CPU_KERNEL").unwrap_or_default();
        match Kernel::parse(&want) {
            Some(k) => assert_eq!(selected(), Choice::Forced(k), "TL_CPU_KERNEL={want} is not available here"),
            None => eprintln!("TL_CPU_KERNEL={want:?} names no kernel: nothing to check"),
        }
    }

    #[test]
    fn kernel_names_parse() {
        for k in Kernel::ALL {
            assert_eq!(Kernel::parse(k.name()), Some(k));
        }
        assert_eq!(Kernel::parse("sse"), None);
        assert!(Kernel::Portable.available() && Kernel::detect().available());
    }
}
