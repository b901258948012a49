//! One step's sampling work as plain data a backend can run: per-row knobs with their uniform draw, and the
//! penalty / mask id lists (CSR) that reproduce `Sampler::process`. The CPU twin of the GPU sampling kernel
//! lives here too, so the CPU backend and the kernel apply the same lists.
use super::{RowParams, SamplingParams, ngram_repeats, pick_row};
use std::collections::{BTreeMap, BTreeSet};

/// One row's sampling state, borrowed from its request.
pub struct SampleRow<'a> {
    pub params: &'a SamplingParams,
    /// Uniform in [0, 1) drawn from the request's generator (ignored when greedy).
    pub u: f64,
    /// Prompt followed by generated tokens.
    pub context: &'a [u32],
    /// The generated tail of `context`.
    pub generated: &'a [u32],
    pub eos: u32,
}

/// CSR lists of one batch: (offsets, ids) pairs as the kernel reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleLists {
    pub rep_off: Vec<i32>,
    pub rep_ids: Vec<i32>,
    pub gen_off: Vec<i32>,
    pub gen_ids: Vec<i32>,
    pub gen_counts: Vec<i32>,
    pub mask_off: Vec<i32>,
    pub mask_ids: Vec<i32>,
    /// Logit bias per row: ids and their bias as f32 bit patterns (one int buffer for the kernel).
    pub bias_off: Vec<i32>,
    pub bias_ids: Vec<i32>,
    pub bias_bits: Vec<i32>,
    /// Allowed tokens of guided rows (structured output): per row, none (no constraint) or `vocab.div_ceil(32)`
    /// words, bit `id % 32` of word `id / 32` set for an allowed id; every other id is masked.
    pub allow_off: Vec<i32>,
    pub allow_bits: Vec<i32>,
}

/// Everything a backend needs to pick one token per logits row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleBatch {
    pub rows: Vec<RowParams>,
    pub lists: SampleLists,
    /// Logits per row: the columns `0..vocab` of the vocabulary, the only ids that can be picked.
    pub vocab: usize,
    /// Per row: how many of the most likely tokens come back with the pick ([`SamplingParams::top_logprobs`]).
    pub top_logprobs: Vec<usize>,
}

/// Allowed-token bitmasks by row of a sampling batch.
pub type RowMasks = Vec<(usize, Vec<u32>)>;

/// The allowed-token masks of a step's guided rows, handed over while the forward pass runs: the engine computes
/// them on its thread and fills the slot, rank 0 waits for them before sampling. Filled exactly once (dropping
/// the engine's handle unfilled fills it empty, so no rank waits forever).
#[derive(Debug, Default)]
pub struct LateMasks {
    slot: std::sync::Mutex<Option<RowMasks>>,
    ready: std::sync::Condvar,
}

impl LateMasks {
    /// Hands over the masks (row in the sampling batch, bitmask); a second fill is ignored.
    pub fn fill(&self, masks: RowMasks) {
        let mut s = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_none() {
            *s = Some(masks);
            self.ready.notify_all();
        }
    }

    /// Blocks until the masks are there.
    pub fn wait(&self) -> RowMasks {
        let mut s = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(m) = s.as_ref() {
                return m.clone();
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The engine's side of a [`LateMasks`]: fills it empty if dropped unfilled (an error between submitting a step
/// and computing its masks).
pub struct MaskSender(pub std::sync::Arc<LateMasks>);

impl Drop for MaskSender {
    fn drop(&mut self) {
        self.0.fill(Vec::new());
    }
}

/// A sampled token and its log-probability under the unprocessed logits, with the row's most likely tokens
/// under them if asked (`top_logprobs`, best first).
#[derive(Debug, Clone, PartialEq)]
pub struct Picked {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Builds the penalty and mask lists of `rows` for a vocabulary of `vocab` (ids outside it are dropped).
pub fn lists(rows: &[SampleRow], vocab: usize) -> SampleLists {
    let mut l = SampleLists {
        rep_off: vec![0],
        gen_off: vec![0],
        mask_off: vec![0],
        bias_off: vec![0],
        allow_off: vec![0; rows.len() + 1],
        ..Default::default()
    };
    let ok = |t: u32| (t as usize) < vocab;
    for r in rows {
        let p = r.params;
        if p.repetition_penalty != 1.0 {
            let seen: BTreeSet<u32> = r.context.iter().copied().filter(|&t| ok(t)).collect();
            l.rep_ids.extend(seen.into_iter().map(|t| t as i32));
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut count = BTreeMap::<u32, i32>::new();
            for &t in r.generated.iter().filter(|&&t| ok(t)) {
                *count.entry(t).or_default() += 1;
            }
            for (t, c) in count {
                l.gen_ids.push(t as i32);
                l.gen_counts.push(c);
            }
        }
        let mut mask = BTreeSet::new();
        if r.generated.len() < p.min_new_tokens && ok(r.eos) {
            mask.insert(r.eos);
            mask.extend(p.stop_token_ids.iter().copied().filter(|&s| ok(s)));
        }
        for b in &p.banned {
            if let Some((last, prefix)) = b.split_last()
                && r.context.ends_with(prefix)
                && ok(*last)
            {
                mask.insert(*last);
            }
        }
        mask.extend(ngram_repeats(r.context, p.no_repeat_ngram_size).into_iter().filter(|&t| ok(t)));
        l.mask_ids.extend(mask.into_iter().map(|t| t as i32));
        for (t, b) in super::merged_bias(&p.logit_bias).into_iter().filter(|&(t, _)| ok(t)) {
            l.bias_ids.push(t as i32);
            l.bias_bits.push(b.to_bits() as i32);
        }
        l.bias_off.push(l.bias_ids.len() as i32);
        l.rep_off.push(l.rep_ids.len() as i32);
        l.gen_off.push(l.gen_ids.len() as i32);
        l.mask_off.push(l.mask_ids.len() as i32);
    }
    l
}

impl SampleBatch {
    /// The batch of `rows` over a vocabulary of `vocab` logits per row.
    pub fn new(rows: &[SampleRow], vocab: usize) -> Self {
        SampleBatch {
            rows: rows.iter().map(|r| RowParams::new(r.params, r.u)).collect(),
            lists: lists(rows, vocab),
            vocab,
            top_logprobs: rows.iter().map(|r| r.params.top_logprobs.min(vocab)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The most alternatives any row wants back (what the top log-probs kernel computes for every row).
    pub fn max_top_logprobs(&self) -> usize {
        self.top_logprobs.iter().copied().max().unwrap_or(0)
    }

    /// This batch with the allowed-token bitmasks of some rows (row, `vocab.div_ceil(32)` words); other rows
    /// stay unconstrained. A mask of another length is an error.
    pub fn with_allowed(&self, masks: &[(usize, Vec<u32>)]) -> crate::Result<SampleBatch> {
        let words = self.vocab.div_ceil(32);
        let mut by_row = vec![None; self.len()];
        for (r, m) in masks {
            if *r >= self.len() || m.len() < words {
                return Err(crate::Error::Internal(format!("allowed-token mask of {} words for row {r}", m.len())));
            }
            by_row[*r] = Some(&m[..words]);
        }
        let mut b = self.clone();
        let l = &mut b.lists;
        (l.allow_off, l.allow_bits) = (vec![0], Vec::with_capacity(masks.len() * words));
        for m in by_row {
            if let Some(m) = m {
                l.allow_bits.extend(m.iter().map(|&w| w as i32));
            }
            l.allow_off.push(l.allow_bits.len() as i32);
        }
        Ok(b)
    }

    /// Applies row `row`'s penalties and masks to its logits (the CPU twin of the penalties kernel).
    pub fn apply_lists(&self, row: usize, logits: &mut [f32]) {
        let (p, l) = (&self.rows[row], &self.lists);
        let range = |off: &[i32]| off[row] as usize..off[row + 1] as usize;
        let r = range(&l.bias_off);
        for (&t, &b) in l.bias_ids[r.clone()].iter().zip(&l.bias_bits[r]) {
            logits[t as usize] += f32::from_bits(b as u32);
        }
        if p.repetition_penalty != 1.0 {
            for &t in &l.rep_ids[range(&l.rep_off)] {
                let v = &mut logits[t as usize];
                *v = if *v > 0.0 { *v / p.repetition_penalty } else { *v * p.repetition_penalty };
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let r = range(&l.gen_off);
            for (&t, &c) in l.gen_ids[r.clone()].iter().zip(&l.gen_counts[r]) {
                logits[t as usize] -= p.presence_penalty + p.frequency_penalty * c as f32;
            }
        }
        for &t in &l.mask_ids[range(&l.mask_off)] {
            logits[t as usize] = f32::NEG_INFINITY;
        }
        let allow = &l.allow_bits[range(&l.allow_off)];
        if !allow.is_empty() {
            for (i, v) in logits.iter_mut().enumerate().take(self.vocab) {
                if (allow[i / 32] as u32 >> (i % 32)) & 1 == 0 {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// Processes row `row` of logits in place and picks its token (the CPU twin of the sampling kernel).
    pub fn pick(&self, row: usize, logits: &mut [f32]) -> u32 {
        self.apply_lists(row, logits);
        pick_row(&self.rows[row], logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Sampler;

    fn sample_params() -> Vec<SamplingParams> {
        let p = |temperature, top_k, top_p| SamplingParams { temperature, top_k, top_p, ..Default::default() };
        vec![
            p(0.0, 0, 1.0),
            p(0.7, 0, 1.0),
            p(1.3, 40, 0.95),
            SamplingParams {
                repetition_penalty: 1.3,
                presence_penalty: 0.4,
                frequency_penalty: 0.2,
                min_new_tokens: 9,
                banned: vec![vec![7, 11], vec![3]],
                stop_token_ids: vec![4],
                ..p(0.8, 0, 0.9)
            },
            SamplingParams { repetition_penalty: 0.7, ..p(0.0, 0, 1.0) },
            SamplingParams { no_repeat_ngram_size: 2, ..p(0.0, 0, 1.0) },
            SamplingParams { no_repeat_ngram_size: 1, banned: vec![vec![9, 7]], ..p(1.1, 0, 1.0) },
            SamplingParams {
                logit_bias: vec![(5, 3.5), (6, -2.0), (99, 1.0)],
                repetition_penalty: 1.2,
                ..p(0.0, 0, 1.0)
            },
        ]
    }

    fn logits(seed: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 1000) as f32 / 170.0 - 3.0)
            .collect()
    }

    /// The lists reproduce `Sampler::process`, and a batch pick equals `Sampler::pick` with the same draw.
    #[test]
    fn batch_matches_sampler() {
        let vocab = 50;
        let context = [1u32, 7, 9, 9, 7, 2, 60];
        let generated = &context[3..];
        let params = sample_params();
        for seed in 0..20u64 {
            let mut samplers: Vec<Sampler> =
                params.iter().map(|p| Sampler::new(SamplingParams { seed: Some(seed), ..p.clone() }, 0)).collect();
            let rows: Vec<SampleRow> = params
                .iter()
                .zip(&mut samplers)
                .map(|(p, s)| SampleRow { params: p, u: s.clone().draw(), context: &context, generated, eos: 2 })
                .collect();
            let batch = SampleBatch::new(&rows, vocab);
            for (i, s) in samplers.iter_mut().enumerate() {
                let raw = logits(seed as u32 * 7 + i as u32, vocab);
                let (mut want, mut got) = (raw.clone(), raw.clone());
                s.process(&mut want, &context, generated, 2);
                batch.apply_lists(i, &mut got);
                assert_eq!(got, want, "{:?}", params[i]);
                let mut got = raw.clone();
                assert_eq!(batch.pick(i, &mut got), s.pick(&want), "{:?}", params[i]);
            }
        }
    }

    #[test]
    fn ids_outside_the_vocabulary_are_dropped() {
        let p = SamplingParams { repetition_penalty: 1.2, banned: vec![vec![70]], ..Default::default() };
        let ctx = [3u32, 64, 5];
        let b = SampleBatch::new(&[SampleRow { params: &p, u: 0.0, context: &ctx, generated: &[], eos: 2 }], 10);
        assert_eq!(b.lists.rep_ids, vec![3, 5]);
        assert!(b.lists.mask_ids.is_empty());
    }
}
