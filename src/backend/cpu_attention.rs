//! CPU paged attention: each task is one token and one KV head, and its `group` query heads read every
//! cached K and V row of that head once (GQA shares the loads); scores and outputs are plain f32 loops that
//! the compiler vectorizes (AVX-512 or AVX2 where the CPU has them, the same bits on either: the 16 lanes and
//! their order are fixed in the source). A row's result depends only on its own query and cache rows, never
//! on the rest of the step, so a prefix reused from the cache gives the bits a full prefill gives.
use super::{AttnDims, CheckedStep};
use crate::{Error, Result};
use multiversion::multiversion;
use rayon::prelude::*;
use std::cell::RefCell;

/// `out [n, n_heads * head_dim]` = softmax(q kᵀ / sqrt(head_dim)) v per token and head, over the token's
/// visible cached positions (causal within the step); q `[n, n_heads * head_dim]`, caches
/// `[slots, n_kv_heads * head_dim]` addressed through each sequence's block table.
pub fn paged_attention(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    meta: CheckedStep,
    d: AttnDims,
) -> Result<()> {
    let work: usize = meta.seqs.iter().map(|m| m.n_tokens * m.context_len).sum::<usize>() * d.n_heads * d.head_dim;
    attention(out, q, k_cache, v_cache, meta, d, work < SERIAL_WORK)
}

/// `paged_attention`, its loops on the calling thread (`serial`) or on the pool; the same bits either way.
fn attention(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    meta: CheckedStep,
    d: AttnDims,
    serial: bool,
) -> Result<()> {
    let (hd, nh, nkv) = (d.head_dim, d.n_heads, d.n_kv_heads);
    let group = d.group()?;
    let qw = nh * hd;
    let n = meta.n_tokens();
    if out.len().min(q.len()) < n * qw {
        return Err(Error::Internal(format!(
            "attention: buffers of {} / {} floats for {n} tokens",
            out.len(),
            q.len()
        )));
    }
    // Which sequence each token belongs to (the ranges were checked with the step: `CheckedStep`).
    let mut seq_of = vec![0usize; n];
    for (s, m) in meta.seqs.iter().enumerate() {
        seq_of[m.token_start..m.token_start + m.n_tokens].fill(s);
    }
    let geo = Geometry { hd, kw: nkv * hd, bs: meta.block_size, scale: 1.0 / (hd as f32).sqrt() };
    let len = k_cache.len().min(v_cache.len());
    // Each (sequence, KV head)'s positions as block runs, and its K transposed once for the whole step.
    let runs: Vec<Vec<Run>> = (0..meta.seqs.len() * nkv)
        .map(|i| {
            let m = &meta.seqs[i / nkv];
            Rows { table: &m.block_table, visible: m.context_len, offset: (i % nkv) * hd }.blocks(&geo, len)
        })
        .collect::<Result<_>>()?;
    let widths: Vec<usize> = meta.seqs.iter().map(|m| kt_width(m.context_len)).collect();
    KT.with(|cell| -> Result<()> {
        let mut kt_all = cell.borrow_mut();
        let total: usize = widths.iter().map(|w| w * nkv * hd).sum();
        kt_all.clear();
        kt_all.resize(total, 0.0);
        let mut parts: Vec<&mut [f32]> = Vec::with_capacity(runs.len());
        let mut rest: &mut [f32] = &mut kt_all;
        for i in 0..runs.len() {
            let (a, b) = rest.split_at_mut(widths[i / nkv] * hd);
            parts.push(a);
            rest = b;
        }
        let transpose = |(i, kt): (usize, &mut &mut [f32])| transpose_k(kt, k_cache, &runs[i], &geo, widths[i / nkv]);
        if serial {
            parts.iter_mut().enumerate().for_each(transpose);
        } else {
            parts.par_iter_mut().enumerate().for_each(transpose);
        }
        let kts: Vec<&[f32]> = parts.into_iter().map(|p| &*p).collect();
        // One chunk = one token's `group` heads that share KV head g: they are adjacent in the output row.
        let attend = |(idx, o): (usize, &mut [f32])| {
            let (t, g) = (idx / nkv, idx % nkv);
            let s = seq_of[t];
            let m = &meta.seqs[s];
            // Causal: this token sees every cached position up to and including its own.
            let visible = m.context_len - m.n_tokens + (t - m.token_start) + 1;
            let qg = &q[t * qw + g * group * hd..t * qw + (g + 1) * group * hd];
            let task = Task { kt: kts[s * nkv + g], width: widths[s], runs: &runs[s * nkv + g], visible };
            SCRATCH.with(|sc| attend_group(o, qg, v_cache, &task, &geo, &mut sc.borrow_mut()))
        };
        if serial {
            out[..n * qw].chunks_mut(group * hd).enumerate().try_for_each(attend)
        } else {
            out[..n * qw].par_chunks_mut(group * hd).enumerate().try_for_each(attend)
        }
    })
}

/// Multiply-adds (tokens × visible positions × query width) under which a step's attention runs on the calling
/// thread: a batch-1 decode step at a short context does ~1e5, a few microseconds of work, which two parallel
/// loops per layer cost more than (1.1-1.4 ms of a TinyLlama decode step went to attention).
const SERIAL_WORK: usize = 1 << 18;

/// Positions a query's scores are computed for at once (one vector of 16 lanes).
const KEYS: usize = 16;

/// Floats per row of a transposed K: the context rounded up to 16 positions, then to an odd number of 64-byte
/// lines, so the rows of one 16-position column (read by every head of the group) fall in different L1 sets
/// instead of thrashing a few (a power-of-two stride, e.g. 512 positions, maps all 64 rows to 2 sets).
fn kt_width(context: usize) -> usize {
    let w = round_up(context, KEYS);
    if (w / KEYS).is_multiple_of(2) { w + KEYS } else { w }
}

fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

/// A block's run of cached positions: (first position, float offset of its first row, rows).
type Run = (usize, usize, usize);

/// What one task reads: its sequence's transposed K `[head_dim, width]` and block runs, and how many
/// positions it sees.
struct Task<'a> {
    kt: &'a [f32],
    width: usize,
    runs: &'a [Run],
    visible: usize,
}

/// `kt[d * width + j]` = K of position j, element d (positions past the context stay zero).
fn transpose_k(kt: &mut [f32], k_cache: &[f32], runs: &[Run], geo: &Geometry, width: usize) {
    for &(first, base, n) in runs {
        for i in 0..n {
            let k = &k_cache[base + i * geo.kw..base + i * geo.kw + geo.hd];
            for (d, &v) in k.iter().enumerate() {
                kt[d * width + first + i] = v;
            }
        }
    }
}

thread_local! {
    /// Per-thread scores `[group, visible]`, reused across tasks.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's transposed K of a step, reused across steps.
    static KT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Sizes shared by every task of a step.
struct Geometry {
    hd: usize,
    /// Floats per cache slot (all KV heads).
    kw: usize,
    bs: usize,
    scale: f32,
}

/// The cache rows one task reads: positions `0..visible` through `table`, at `offset` within each slot.
struct Rows<'a> {
    table: &'a [u32],
    visible: usize,
    offset: usize,
}

impl Rows<'_> {
    /// Each block's run of positions as (first position, float offset of its first row, rows), bounds-checked
    /// against a cache of `len` floats once per block.
    fn blocks(&self, geo: &Geometry, len: usize) -> Result<Vec<Run>> {
        let mut v = Vec::with_capacity(self.visible.div_ceil(geo.bs));
        for (b, &blk) in self.table.iter().enumerate() {
            let first = b * geo.bs;
            if first >= self.visible {
                break;
            }
            let rows = geo.bs.min(self.visible - first);
            let base = (blk as usize * geo.bs) * geo.kw + self.offset;
            if base + (rows - 1) * geo.kw + geo.hd > len {
                return Err(Error::Internal(format!("attention: block {blk} outside a cache of {len} floats")));
            }
            v.push((first, base, rows));
        }
        if v.last().map(|&(f, _, r)| f + r) != Some(self.visible) {
            return Err(Error::Internal(format!("attention: block table too short for {} positions", self.visible)));
        }
        Ok(v)
    }
}

/// Attention of `group` query heads (`qg [group, hd]`) over one KV head's rows into `o [group, hd]`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn attend_group(
    o: &mut [f32],
    qg: &[f32],
    v_cache: &[f32],
    task: &Task,
    geo: &Geometry,
    scores: &mut Vec<f32>,
) -> Result<()> {
    let (hd, vis, width) = (geo.hd, task.visible, task.width);
    let group = qg.len() / hd;
    let padded = round_up(vis, KEYS);
    scores.clear();
    scores.resize(group * padded, 0.0);
    // Scores of 16 positions at a time: four interleaved sums over d (d mod 4), added in a fixed order.
    // Positions outer, heads inner: a chunk's 16 columns of K stay in L1 while every head of the group reads them.
    for c in (0..padded).step_by(KEYS) {
        for h in 0..group {
            let qh = &qg[h * hd..(h + 1) * hd];
            let row = |d: usize| -> &[f32; KEYS] {
                task.kt[d * width + c..d * width + c + KEYS].try_into().expect("KEYS floats")
            };
            let (mut a0, mut a1, mut a2, mut a3) = ([0f32; KEYS], [0f32; KEYS], [0f32; KEYS], [0f32; KEYS]);
            let mut d = 0;
            while d + 4 <= hd {
                let (r0, r1, r2, r3) = (row(d), row(d + 1), row(d + 2), row(d + 3));
                let (q0, q1, q2, q3) = (qh[d], qh[d + 1], qh[d + 2], qh[d + 3]);
                for j in 0..KEYS {
                    a0[j] = q0.mul_add(r0[j], a0[j]);
                    a1[j] = q1.mul_add(r1[j], a1[j]);
                    a2[j] = q2.mul_add(r2[j], a2[j]);
                    a3[j] = q3.mul_add(r3[j], a3[j]);
                }
                d += 4;
            }
            while d < hd {
                let (r0, q0) = (row(d), qh[d]);
                for j in 0..KEYS {
                    a0[j] = q0.mul_add(r0[j], a0[j]);
                }
                d += 1;
            }
            let out: &mut [f32; KEYS] = (&mut scores[h * padded + c..h * padded + c + KEYS]).try_into().expect("KEYS");
            for j in 0..KEYS {
                out[j] = ((a0[j] + a1[j]) + (a2[j] + a3[j])) * geo.scale;
            }
        }
    }
    for h in 0..group {
        softmax(&mut scores[h * padded..h * padded + vis]);
    }
    // Four heads at a time share each load of V: their outputs, 32 columns a pass, stay in registers.
    let mut h = 0;
    while h + 4 <= group && hd.is_multiple_of(QUAD_COLS) {
        let p: [&[f32]; 4] = std::array::from_fn(|u| &scores[(h + u) * padded..(h + u) * padded + vis]);
        for c0 in (0..hd).step_by(QUAD_COLS) {
            let (mut a0, mut a1, mut a2, mut a3) =
                ([0f32; QUAD_COLS], [0f32; QUAD_COLS], [0f32; QUAD_COLS], [0f32; QUAD_COLS]);
            for &(first, base, n) in task.runs {
                for i in 0..n.min(vis.saturating_sub(first)) {
                    let at = base + i * geo.kw + c0;
                    let v: &[f32; QUAD_COLS] = v_cache[at..at + QUAD_COLS].try_into().expect("QUAD_COLS floats");
                    let (p0, p1, p2, p3) = (p[0][first + i], p[1][first + i], p[2][first + i], p[3][first + i]);
                    for j in 0..QUAD_COLS {
                        a0[j] = p0.mul_add(v[j], a0[j]);
                        a1[j] = p1.mul_add(v[j], a1[j]);
                        a2[j] = p2.mul_add(v[j], a2[j]);
                        a3[j] = p3.mul_add(v[j], a3[j]);
                    }
                }
            }
            for (u, a) in [a0, a1, a2, a3].iter().enumerate() {
                o[(h + u) * hd + c0..(h + u) * hd + c0 + QUAD_COLS].copy_from_slice(a);
            }
        }
        h += 4;
    }
    // The other heads one at a time, in column runs of up to 64 held in registers over all the rows of V.
    for h in h..group {
        let p = &scores[h * padded..h * padded + vis];
        for c0 in (0..hd).step_by(COLS) {
            let w = COLS.min(hd - c0);
            let mut acc = [0f32; COLS];
            for &(first, base, n) in task.runs {
                for i in 0..n.min(vis.saturating_sub(first)) {
                    let at = base + i * geo.kw + c0;
                    let pi = p[first + i];
                    if w == COLS {
                        let v: &[f32; COLS] = v_cache[at..at + COLS].try_into().expect("COLS floats");
                        for j in 0..COLS {
                            acc[j] = pi.mul_add(v[j], acc[j]);
                        }
                    } else {
                        for (a, v) in acc.iter_mut().zip(&v_cache[at..at + w]) {
                            *a = pi.mul_add(*v, *a);
                        }
                    }
                }
            }
            o[h * hd + c0..h * hd + c0 + w].copy_from_slice(&acc[..w]);
        }
    }
    Ok(())
}

/// Output columns of each of four heads one pass over V keeps in registers (8 AVX-512 or 16 AVX2 registers).
const QUAD_COLS: usize = 32;

/// Output columns one pass over V keeps in registers (4 AVX-512 or 8 AVX2 registers).
const COLS: usize = 64;

/// In-place softmax, max-subtracted.
#[inline(always)]
fn softmax(x: &mut [f32]) {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = super::cpu_math::exp(*v - max);
    }
    let sum: f32 = x.iter().sum();
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::attention;
    use crate::backend::{AttnDims, SeqMeta, StepMeta};

    /// The plain definition: per token and head, softmax of scaled dot products over the visible positions
    /// (found through the block table), then the weighted sum of V rows; f64 throughout.
    fn reference(q: &[f32], kc: &[f32], vc: &[f32], meta: &StepMeta, d: AttnDims) -> Vec<f32> {
        let (hd, nh, group) = (d.head_dim, d.n_heads, d.n_heads / d.n_kv_heads);
        let (qw, kw, bs) = (nh * hd, d.n_kv_heads * hd, meta.block_size);
        let mut out = vec![0f32; meta.n_tokens() * qw];
        for m in &meta.seqs {
            for t in m.token_start..m.token_start + m.n_tokens {
                let visible = m.context_len - m.n_tokens + (t - m.token_start) + 1;
                for h in 0..nh {
                    let row = |c: &[f32], j: usize| {
                        let at = (m.block_table[j / bs] as usize * bs + j % bs) * kw + (h / group) * hd;
                        c[at..at + hd].to_vec()
                    };
                    let qh = &q[t * qw + h * hd..t * qw + (h + 1) * hd];
                    let s: Vec<f64> = (0..visible)
                        .map(|j| {
                            let k = row(kc, j);
                            qh.iter().zip(&k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..hd {
                        let v: f64 = (0..visible).map(|j| e[j] / sum * row(vc, j)[c] as f64).sum();
                        out[t * qw + h * hd + c] = v as f32;
                    }
                }
            }
        }
        out
    }

    /// Odd sizes: head_dim 20 and 72 (not multiples of 16 or 64), GQA groups of 3, 1, 5 (four heads sharing V
    /// loads, then one) and 8, block size 5, a
    /// prefill chunk after cached positions beside decode rows, scattered physical blocks.
    #[test]
    fn matches_the_plain_definition_on_odd_sizes() {
        for (hd, nh, nkv) in [(20, 6, 2), (72, 2, 2), (16, 4, 1), (64, 10, 2), (32, 8, 1)] {
            let d = AttnDims { n_heads: nh, n_kv_heads: nkv, head_dim: hd, rope_theta: 10000.0, rope_scale: 1.0 };
            let bs = 5;
            let num_blocks = 40;
            let kw = nkv * hd;
            let val = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.0 - 1.0) * 1.7;
            let kc: Vec<f32> = (0..num_blocks * bs * kw).map(|i| val(i, 1)).collect();
            let vc: Vec<f32> = (0..num_blocks * bs * kw).map(|i| val(i, 2)).collect();
            // A 7-token chunk after 9 cached positions, one decode row at position 23, a fresh 3-token prompt.
            let seqs = vec![
                SeqMeta { token_start: 0, n_tokens: 7, context_len: 16, block_table: vec![3, 11, 0, 27] },
                SeqMeta { token_start: 7, n_tokens: 1, context_len: 24, block_table: vec![5, 6, 39, 1, 2] },
                SeqMeta { token_start: 8, n_tokens: 3, context_len: 3, block_table: vec![17] },
            ];
            let n = 11;
            let meta = StepMeta { positions: vec![0; n], slots: vec![0; n], seqs, block_size: bs };
            let q: Vec<f32> = (0..n * nh * hd).map(|i| val(i, 3)).collect();
            let want = reference(&q, &kc, &vc, &meta, d);
            let mut outs = Vec::new();
            for serial in [true, false] {
                let mut out = vec![0f32; n * nh * hd];
                attention(&mut out, &q, &kc, &vc, meta.check().unwrap(), d, serial).unwrap();
                let err = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 1e-5, "hd {hd} heads {nh}/{nkv} serial {serial}: max err {err}");
                outs.push(out);
            }
            assert_eq!(outs[0], outs[1], "serial and parallel loops differ");
        }
    }
}
