//! Sampling on the GPU: the host turns each row's request state into short id lists (the same rules as
//! `Sampler::process`), the kernel applies them and picks the token, and only the ids come back.
use super::{CudaBackend, CudaBuf, ffi};
use crate::sampling::SamplingParams;
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

/// One row's sampling state.
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
#[derive(Debug, Default, PartialEq)]
pub struct SampleLists {
    pub rep_off: Vec<i32>,
    pub rep_ids: Vec<i32>,
    pub gen_off: Vec<i32>,
    pub gen_ids: Vec<i32>,
    pub gen_counts: Vec<i32>,
    pub mask_off: Vec<i32>,
    pub mask_ids: Vec<i32>,
}

/// Builds the penalty and mask lists of `rows` for a vocabulary of `vocab` (ids outside it are dropped).
pub fn lists(rows: &[SampleRow], vocab: usize) -> SampleLists {
    let mut l = SampleLists { rep_off: vec![0], gen_off: vec![0], mask_off: vec![0], ..Default::default() };
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
        l.mask_ids.extend(mask.into_iter().map(|t| t as i32));
        l.rep_off.push(l.rep_ids.len() as i32);
        l.gen_off.push(l.gen_ids.len() as i32);
        l.mask_off.push(l.mask_ids.len() as i32);
    }
    l
}

fn params_bytes(rows: &[SampleRow]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * std::mem::size_of::<ffi::TlSampleParams>());
    for r in rows {
        let p = r.params;
        let sp = ffi::TlSampleParams {
            temperature: if p.is_greedy() { 0.0 } else { p.temperature },
            top_k: i32::try_from(p.top_k).unwrap_or(i32::MAX),
            top_p: p.top_p,
            repetition_penalty: p.repetition_penalty,
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            u: r.u,
        };
        // Field by field in the C layout: six 4-byte fields, then the f64 at offset 24 (32 bytes in all).
        out.extend_from_slice(&sp.temperature.to_ne_bytes());
        out.extend_from_slice(&sp.top_k.to_ne_bytes());
        out.extend_from_slice(&sp.top_p.to_ne_bytes());
        out.extend_from_slice(&sp.repetition_penalty.to_ne_bytes());
        out.extend_from_slice(&sp.presence_penalty.to_ne_bytes());
        out.extend_from_slice(&sp.frequency_penalty.to_ne_bytes());
        out.extend_from_slice(&sp.u.to_ne_bytes());
    }
    out
}

impl CudaBackend {
    /// Processes `logits` `[rows.len(), vocab]` in place and returns one sampled id per row.
    pub fn sample(&self, logits: &mut CudaBuf, vocab: usize, rows: &[SampleRow]) -> Result<Vec<u32>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if std::mem::size_of::<ffi::TlSampleParams>() != 32 {
            return Err(Error::Internal("unexpected TlSampleParams layout".into()));
        }
        let n = rows.len();
        let l = lists(rows, vocab);
        let mut ints = Vec::new();
        let mut off = [0usize; 7];
        for (i, v) in [&l.rep_off, &l.rep_ids, &l.gen_off, &l.gen_ids, &l.gen_counts, &l.mask_off, &l.mask_ids].into_iter().enumerate() {
            off[i] = ints.len();
            ints.extend_from_slice(v);
        }
        self.bind()?;
        let ints = self.upload_i32(&ints)?;
        let params = self.upload_bytes(&params_bytes(rows))?;
        let mut scratch = self.alloc_bytes(ffi::sample_scratch_bytes(n, vocab))?;
        let mut out = self.upload_i32(&vec![0; n])?;
        let inp = ffi::SampleInputs { params: &params, ints: &ints, off };
        ffi::sample(&self.stream, &mut out, &mut logits.0, &inp, &mut scratch, n, vocab)?;
        Ok(self.read_i32(&out, n)?.into_iter().map(|v| v.max(0) as u32).collect())
    }
}
