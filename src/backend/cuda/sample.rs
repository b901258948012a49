//! Sampling on the GPU: the host sends each row's knobs and its penalty / mask id lists (`SampleBatch`, the
//! same rules as `Sampler::process`), the kernels apply them, pick the token and take its log-probability
//! under the unprocessed logits (and the rows' most likely tokens, when asked); only ids and log-probabilities
//! come back.
use super::{CudaBackend, CudaBuf, ffi};
use crate::backend::Backend;
use crate::sampling::{Picked, RowParams, SampleBatch};
use crate::{Error, Result};

fn params_bytes(rows: &[RowParams]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * std::mem::size_of::<ffi::TlSampleParams>());
    for r in rows {
        let sp = ffi::TlSampleParams {
            temperature: r.temperature,
            top_k: i32::try_from(r.top_k).unwrap_or(i32::MAX),
            top_p: r.top_p,
            repetition_penalty: r.repetition_penalty,
            presence_penalty: r.presence_penalty,
            frequency_penalty: r.frequency_penalty,
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
    /// `Backend::sample` on this GPU: logits `[batch.len(), batch.vocab]` processed in place.
    pub(super) fn sample_rows(&self, logits: &mut CudaBuf, batch: &SampleBatch) -> Result<Vec<Picked>> {
        let vocab = batch.vocab;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if std::mem::size_of::<ffi::TlSampleParams>() != 32 {
            return Err(Error::Internal("unexpected TlSampleParams layout".into()));
        }
        let n = batch.len();
        let l = &batch.lists;
        let mut ints = Vec::new();
        let mut off = [0usize; 12];
        let lists = [
            &l.rep_off,
            &l.rep_ids,
            &l.gen_off,
            &l.gen_ids,
            &l.gen_counts,
            &l.mask_off,
            &l.mask_ids,
            &l.bias_off,
            &l.bias_ids,
            &l.bias_bits,
            &l.allow_off,
            &l.allow_bits,
        ];
        for (i, v) in lists.into_iter().enumerate() {
            off[i] = ints.len();
            ints.extend_from_slice(v);
        }
        let words = vocab.div_ceil(32) as i32;
        if l.allow_off.len() != n + 1 || l.allow_off.windows(2).any(|w| w[1] - w[0] != 0 && w[1] - w[0] != words) {
            return Err(Error::Internal(format!("allowed-token masks of {n} rows are not 0 or {words} words each")));
        }
        if let Some(&bad) = [&l.rep_ids, &l.gen_ids, &l.mask_ids, &l.bias_ids]
            .into_iter()
            .flatten()
            .find(|&&t| t < 0 || t as usize >= vocab)
        {
            return Err(Error::Internal(format!("sampling list id {bad} outside a vocabulary of {vocab}")));
        }
        self.bind()?;
        // The log-probabilities are taken from a copy of the logits as they were.
        let mut raw = self.alloc(n * vocab)?;
        self.copy_into(&mut raw, logits, n * vocab)?;
        let ints = self.upload_i32(&ints)?;
        let params = self.upload_bytes(&params_bytes(&batch.rows))?;
        let mut scratch = self.alloc_bytes(ffi::sample_scratch_bytes(n, vocab))?;
        let mut ids = self.upload_i32(&vec![0; n])?;
        let inp = ffi::SampleInputs { params: &params, ints: &ints, off };
        ffi::sample(&self.stream, &mut ids, &mut logits.0, &inp, &mut scratch, n, vocab)?;
        let mut lp = self.alloc(n)?;
        ffi::token_logprob(&self.stream, &mut lp.0, &raw.0, &ids, n, vocab)?;
        let k = batch.max_top_logprobs();
        let mut tops = vec![Vec::new(); n];
        if k > 0 {
            let (mut top_ids, mut top_lps) = (self.upload_i32(&vec![0; n * k])?, self.alloc(n * k)?);
            ffi::top_logprobs(&self.stream, &mut top_ids, &mut top_lps.0, &raw.0, n, vocab, k)?;
            let (top_ids, top_lps) = (self.read_i32(&top_ids, n * k)?, self.read(&top_lps, n * k)?);
            for (r, top) in tops.iter_mut().enumerate() {
                let want = batch.top_logprobs.get(r).copied().unwrap_or(0);
                let row = top_ids[r * k..r * k + want].iter().zip(&top_lps[r * k..r * k + want]);
                *top = row.filter(|(id, _)| **id >= 0).map(|(&id, &lp)| (id as u32, lp)).collect();
            }
        }
        let ids = self.read_i32(&ids, n)?;
        let lps = self.read(&lp, n)?;
        let picks = ids.into_iter().zip(lps).zip(tops);
        Ok(picks.map(|((id, logprob), top)| Picked { id: id.max(0) as u32, logprob, top }).collect())
    }
}
