//! CPU paged attention: each task is one token and one KV head, and its `group` query heads read every
//! cached K and V row of that head once (GQA shares the loads); scores and outputs are plain f32 loops that
//! the compiler vectorizes (AVX-512 or AVX2 where the CPU has them, the same bits on either: the 16 lanes and
//! their order are fixed in the source). A row's result depends only on its own query and cache rows, never
//! on the rest of the step, so a prefix reused from the cache gives the bits a full prefill gives.
//!
//! Cache layouts (private to this backend: `rope_write_kv` writes them, this module reads them). V is one row
//! per slot, `[blocks, block_size, n_kv_heads, head_dim]`. K is stored transposed within each block,
//! `[blocks, n_kv_heads, head_dim, block_size]` (as vLLM's K cache), so the scores of 16 positions read one
//! contiguous run per element of the head and no step transposes the context again.
use super::{AttnDims, CheckedStep};
use crate::{Error, Result};
use multiversion::multiversion;
use rayon::prelude::*;
use std::cell::RefCell;

/// Float index of K element `c` (`kv_head * head_dim + d`) of `slot` in the block-transposed K cache.
pub fn k_index(slot: usize, c: usize, block_size: usize, kw: usize) -> usize {
    (slot / block_size) * block_size * kw + c * block_size + slot % block_size
}

/// A K cache in slot layout, `[slots, kw]`, from the block-transposed one (for tests and other backends).
pub fn k_cache_to_slots(k_cache: &[f32], block_size: usize, kw: usize) -> Vec<f32> {
    let mut out = vec![0f32; k_cache.len()];
    for slot in 0..k_cache.len() / kw {
        for c in 0..kw {
            out[slot * kw + c] = k_cache[k_index(slot, c, block_size, kw)];
        }
    }
    out
}

/// The block-transposed K cache from one in slot layout (`k_cache_to_slots` undone).
pub fn k_cache_from_slots(slots: &[f32], block_size: usize, kw: usize) -> Vec<f32> {
    let mut out = vec![0f32; slots.len()];
    for slot in 0..slots.len() / kw {
        for c in 0..kw {
            out[k_index(slot, c, block_size, kw)] = slots[slot * kw + c];
        }
    }
    out
}

/// `out [n, n_heads * head_dim]` = softmax(q kᵀ / sqrt(head_dim)) v per token and head, over the token's
/// visible cached positions (causal within the step); q `[n, n_heads * head_dim]`, caches in the layouts above,
/// addressed through each sequence's block table.
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
    // Each sequence's positions as block runs.
    let runs: Vec<Vec<Run>> =
        meta.seqs.iter().map(|m| blocks(&m.block_table, m.context_len, &geo, len)).collect::<Result<_>>()?;
    // One chunk = one token's `group` heads that share KV head g: they are adjacent in the output row.
    let attend = |(idx, o): (usize, &mut [f32])| {
        let (t, g) = (idx / nkv, idx % nkv);
        let s = seq_of[t];
        let m = &meta.seqs[s];
        // Causal: this token sees every cached position up to and including its own.
        let visible = m.context_len - m.n_tokens + (t - m.token_start) + 1;
        let qg = &q[t * qw + g * group * hd..t * qw + (g + 1) * group * hd];
        let task = Task { k_cache, v_cache, runs: &runs[s], visible, kv_head: g };
        SCRATCH.with(|sc| attend_group(o, qg, &task, &geo, &mut sc.borrow_mut()))
    };
    if serial {
        out[..n * qw].chunks_mut(group * hd).enumerate().try_for_each(attend)
    } else {
        out[..n * qw].par_chunks_mut(group * hd).enumerate().try_for_each(attend)
    }
}

/// Multiply-adds (tokens × visible positions × query width) under which a step's attention runs on the calling
/// thread: a batch-1 decode step at a short context does ~1e5, a few microseconds of work, which a parallel
/// loop per layer costs more than (1.1-1.4 ms of a TinyLlama decode step went to attention).
const SERIAL_WORK: usize = 1 << 18;

/// Positions a query's scores are computed for at once (one vector of 16 lanes).
const KEYS: usize = 16;

fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

/// A block's run of cached positions: (first position, float offset of the block, rows).
type Run = (usize, usize, usize);

/// What one task reads: the caches, its sequence's block runs, how many positions it sees, and its KV head.
struct Task<'a> {
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    runs: &'a [Run],
    visible: usize,
    kv_head: usize,
}

/// Per-thread buffers of `attend_group`, reused across tasks.
#[derive(Default)]
struct Scratch {
    /// Scores `[group, visible rounded up to 16]`.
    scores: Vec<f32>,
    /// 16 positions' K columns `[head_dim][16]`, copied out for block sizes other than 16.
    cols: Vec<[f32; KEYS]>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { scores: Vec::new(), cols: Vec::new() }) };
}

/// Sizes shared by every task of a step.
struct Geometry {
    hd: usize,
    /// Floats per cache slot (all KV heads).
    kw: usize,
    bs: usize,
    scale: f32,
}

/// The blocks of positions `0..visible` through `table`, as (first position, float offset of the block, rows),
/// each block checked to lie inside a cache of `len` floats.
fn blocks(table: &[u32], visible: usize, geo: &Geometry, len: usize) -> Result<Vec<Run>> {
    let mut v = Vec::with_capacity(visible.div_ceil(geo.bs));
    for (b, &blk) in table.iter().enumerate() {
        let first = b * geo.bs;
        if first >= visible {
            break;
        }
        let base = blk as usize * geo.bs * geo.kw;
        if base + geo.bs * geo.kw > len {
            return Err(Error::Internal(format!("attention: block {blk} outside a cache of {len} floats")));
        }
        v.push((first, base, geo.bs.min(visible - first)));
    }
    if v.last().map(|&(f, _, r)| f + r) != Some(visible) {
        return Err(Error::Internal(format!("attention: block table too short for {visible} positions")));
    }
    Ok(v)
}

/// Attention of `group` query heads (`qg [group, hd]`) over one KV head's rows into `o [group, hd]`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn attend_group(o: &mut [f32], qg: &[f32], task: &Task, geo: &Geometry, scratch: &mut Scratch) -> Result<()> {
    let (hd, vis, bs, kw) = (geo.hd, task.visible, geo.bs, geo.kw);
    let group = qg.len() / hd;
    let padded = round_up(vis, KEYS);
    let Scratch { scores, cols: copy } = scratch;
    scores.clear();
    scores.resize(group * padded, 0.0);
    let (k_off, v_off) = (task.kv_head * hd * bs, task.kv_head * hd);
    if bs != KEYS {
        copy.resize(hd, [0f32; KEYS]);
    }
    for &(first, base, rows) in task.runs {
        let rows = rows.min(vis.saturating_sub(first));
        // This KV head's K in this block: `[hd, bs]`.
        let kb = &task.k_cache[base + k_off..base + k_off + hd * bs];
        let mut c = 0;
        while c < rows {
            if c + KEYS > bs || first + c + KEYS > padded {
                // A block size that is not a multiple of 16: the last positions one by one, the same bits.
                for j in c..rows {
                    for h in 0..group {
                        scores[h * padded + first + j] = score_one(&qg[h * hd..(h + 1) * hd], kb, j, bs) * geo.scale;
                    }
                }
                break;
            }
            // Scores of 16 positions at a time. Heads inner: the block's 16 columns stay in L1 while every head
            // of the group reads them. With 16-position blocks the columns are the block itself; otherwise they
            // are copied out first (one copy for the whole group).
            let cols: &[[f32; KEYS]] = if bs == KEYS {
                kb.as_chunks::<KEYS>().0
            } else {
                for (d, row) in copy[..hd].iter_mut().enumerate() {
                    row.copy_from_slice(&kb[d * bs + c..d * bs + c + KEYS]);
                }
                &copy[..hd]
            };
            for h in 0..group {
                let s = dot16(&qg[h * hd..(h + 1) * hd], cols);
                let at = h * padded + first + c;
                for (o, v) in scores[at..at + KEYS].iter_mut().zip(s) {
                    *o = v * geo.scale;
                }
            }
            c += KEYS;
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
                if first >= vis {
                    break;
                }
                let rows = n.min(vis - first);
                // Zipped iterators: one bounds check per V row instead of five.
                let vs = task.v_cache[base..base + rows * kw].chunks_exact(kw);
                let ps = p[0][first..first + rows].iter().zip(&p[1][first..]).zip(&p[2][first..]).zip(&p[3][first..]);
                for (row, (((&p0, &p1), &p2), &p3)) in vs.zip(ps) {
                    let v: &[f32; QUAD_COLS] = row[v_off + c0..v_off + c0 + QUAD_COLS].try_into().expect("QUAD_COLS");
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
                    let at = base + i * kw + v_off + c0;
                    let pi = p[first + i];
                    if w == COLS {
                        let v: &[f32; COLS] = task.v_cache[at..at + COLS].try_into().expect("COLS floats");
                        for j in 0..COLS {
                            acc[j] = pi.mul_add(v[j], acc[j]);
                        }
                    } else {
                        for (a, v) in acc.iter_mut().zip(&task.v_cache[at..at + w]) {
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

/// Unscaled scores of 16 positions, `cols[d][j]` = K element d of position j: four interleaved sums over d
/// (d mod 4, the rest into the first), added in a fixed order.
#[inline(always)]
fn dot16(qh: &[f32], cols: &[[f32; KEYS]]) -> [f32; KEYS] {
    let (q4, q_rest) = qh.as_chunks::<4>();
    let (c4, c_rest) = cols.as_chunks::<4>();
    // Four named accumulators (an array of them would live on the stack).
    let (mut a0, mut a1, mut a2, mut a3) = ([0f32; KEYS], [0f32; KEYS], [0f32; KEYS], [0f32; KEYS]);
    for (q, r) in q4.iter().zip(c4) {
        for j in 0..KEYS {
            a0[j] = q[0].mul_add(r[0][j], a0[j]);
            a1[j] = q[1].mul_add(r[1][j], a1[j]);
            a2[j] = q[2].mul_add(r[2][j], a2[j]);
            a3[j] = q[3].mul_add(r[3][j], a3[j]);
        }
    }
    for (q, r) in q_rest.iter().zip(c_rest) {
        for j in 0..KEYS {
            a0[j] = q.mul_add(r[j], a0[j]);
        }
    }
    for j in 0..KEYS {
        a0[j] = (a0[j] + a1[j]) + (a2[j] + a3[j]);
    }
    a0
}

/// The unscaled score of position `j` of a block (`kb [hd, bs]`) for query `qh`: the operations of one lane of
/// the 16-position loop in `attend_group`, in its order, so either path gives the same bits.
#[inline(always)]
fn score_one(qh: &[f32], kb: &[f32], j: usize, bs: usize) -> f32 {
    let hd = qh.len();
    let (mut a0, mut a1, mut a2, mut a3) = (0f32, 0f32, 0f32, 0f32);
    let mut d = 0;
    while d + 4 <= hd {
        a0 = qh[d].mul_add(kb[d * bs + j], a0);
        a1 = qh[d + 1].mul_add(kb[(d + 1) * bs + j], a1);
        a2 = qh[d + 2].mul_add(kb[(d + 2) * bs + j], a2);
        a3 = qh[d + 3].mul_add(kb[(d + 3) * bs + j], a3);
        d += 4;
    }
    while d < hd {
        a0 = qh[d].mul_add(kb[d * bs + j], a0);
        d += 1;
    }
    (a0 + a1) + (a2 + a3)
}

/// Output columns of each of four heads one pass over V keeps in registers (8 AVX-512 or 16 AVX2 registers).
const QUAD_COLS: usize = 32;

/// Output columns one pass over V keeps in registers (4 AVX-512 or 8 AVX2 registers).
const COLS: usize = 64;

/// In-place softmax, max-subtracted. The max and the sum run in 16 lanes, folded in a fixed order: a single
/// running sum is a chain of dependent adds, a quarter of a long prompt's attention time.
#[inline(always)]
fn softmax(x: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; KEYS];
    for c in x.chunks(KEYS) {
        for (l, &v) in lanes.iter_mut().zip(c) {
            // A plain compare (one vmaxps), not f32::max's NaN handling: a NaN score poisons the row anyway.
            *l = if v > *l { v } else { *l };
        }
    }
    let max = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0f32; KEYS];
    for c in x.chunks_mut(KEYS) {
        for (s, v) in sums.iter_mut().zip(c) {
            *v = super::cpu_math::exp(*v - max);
            *s += *v;
        }
    }
    let inv = 1.0 / sums.iter().sum::<f32>();
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::{attention, k_cache_from_slots, k_cache_to_slots};
    use crate::backend::{AttnDims, KvStore, SeqMeta, StepMeta};

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
    /// loads, then one) and 8; a prefill chunk after cached positions beside decode rows, scattered physical
    /// blocks; block sizes 5 (every score on the one-position path), 16 (every score on the 16-position path)
    /// and 20 (both). The same logical cache gives the same bits under every block size and on either loop.
    #[test]
    fn matches_the_plain_definition_on_odd_sizes() {
        for (hd, nh, nkv) in [(20, 6, 2), (72, 2, 2), (16, 4, 1), (64, 10, 2), (32, 8, 1)] {
            let d = AttnDims {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                rope_theta: 10000.0,
                rope_scale: 1.0,
                kv: KvStore::F32,
            };
            let kw = nkv * hd;
            let val = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.0 - 1.0) * 1.7;
            // (new tokens, context): a 7-token chunk after 9 cached positions, one decode row at position 23,
            // a fresh 3-token prompt.
            let shape: [(usize, usize); 3] = [(7, 16), (1, 24), (3, 3)];
            let n = 11;
            let q: Vec<f32> = (0..n * nh * hd).map(|i| val(i, 3)).collect();
            let mut outs = Vec::new();
            for bs in [5, 16, 20] {
                let num_blocks = 40;
                let mut ids = (0..num_blocks).map(|i| (i * 17 + 5) % num_blocks);
                let (mut kc, mut vc) = (vec![0f32; num_blocks * bs * kw], vec![0f32; num_blocks * bs * kw]);
                let mut seqs = Vec::new();
                let mut start = 0;
                for (s, &(new, ctx)) in shape.iter().enumerate() {
                    let table: Vec<u32> = (0..ctx.div_ceil(bs)).map(|_| ids.next().unwrap() as u32).collect();
                    for p in 0..ctx {
                        let slot = table[p / bs] as usize * bs + p % bs;
                        for c in 0..kw {
                            kc[slot * kw + c] = val((s * 100 + p) * kw + c, 1);
                            vc[slot * kw + c] = val((s * 100 + p) * kw + c, 2);
                        }
                    }
                    seqs.push(SeqMeta { token_start: start, n_tokens: new, context_len: ctx, block_table: table });
                    start += new;
                }
                let meta = StepMeta { positions: vec![0; n], slots: vec![0; n], seqs, block_size: bs };
                let want = reference(&q, &kc, &vc, &meta, d);
                let kt = k_cache_from_slots(&kc, bs, kw);
                assert_eq!(k_cache_to_slots(&kt, bs, kw), kc, "K layout round trip");
                for serial in [true, false] {
                    let mut out = vec![0f32; n * nh * hd];
                    attention(&mut out, &q, &kt, &vc, meta.check().unwrap(), d, serial).unwrap();
                    let err = out
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, |m, e| if e.is_nan() { e } else { m.max(e) });
                    assert!(err < 1e-5, "hd {hd} heads {nh}/{nkv} bs {bs} serial {serial}: max err {err}");
                    outs.push(out);
                }
            }
            assert!(outs.iter().all(|o| *o == outs[0]), "hd {hd}: block sizes or loops give different bits");
        }
    }
}
