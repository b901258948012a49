//! Token selection on the host: penalties, banned words, temperature, top-k, top-p, seeded randomness.
//! The reference for the GPU sampling kernel.
use crate::{Error, Result};

pub mod batch;
pub use batch::{LateMasks, Picked, SampleBatch, SampleLists, SampleRow};

/// Per-request sampling and stopping parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means no nucleus cut.
    pub top_p: f32,
    /// Same seed, same output; `None` seeds from the clock.
    pub seed: Option<u64>,
    /// HF-style: logits of seen tokens are divided (if > 0) or multiplied (if < 0) by this; 1.0 = off.
    pub repetition_penalty: f32,
    /// OpenAI-style: subtracted once from logits of generated tokens.
    pub presence_penalty: f32,
    /// OpenAI-style: subtracted per occurrence in the generated tokens.
    pub frequency_penalty: f32,
    pub min_new_tokens: usize,
    pub max_new_tokens: usize,
    /// Keep generating past EOS.
    pub ignore_eos: bool,
    /// Token sequences that must never be produced.
    pub banned: Vec<Vec<u32>>,
    /// A token that would complete an n-gram of this size already present in prompt + output is banned
    /// (HF / TensorRT-LLM `no_repeat_ngram_size`); 0 = off.
    pub no_repeat_ngram_size: usize,
    /// Text that ends generation; trimmed from the output.
    pub stop_strings: Vec<String>,
    /// Extra token ids that end generation (besides EOS).
    pub stop_token_ids: Vec<u32>,
    /// Added to these ids' logits before the penalties (TensorRT-LLM's embedding bias by words): one entry per id.
    pub logit_bias: Vec<(u32, f32)>,
    /// Which raw logits rows come back with the outputs (TensorRT-LLM's `return_*_logits`).
    pub return_logits: ReturnLogits,
    /// Structured output: what the generated text must match (the engine compiles it into a per-sequence
    /// constraint whose allowed-token mask is applied after the penalties).
    pub guide: Option<crate::guided::Guide>,
    /// The most likely tokens and their log-probabilities (raw logits) returned with each sampled token: 0 = none,
    /// at most [`MAX_TOP_LOGPROBS`].
    pub top_logprobs: usize,
    /// Return each prompt token's log-probability given the tokens before it (and the `top_logprobs` most likely
    /// tokens at that position): OpenAI completions' `echo` with `logprobs`.
    pub prompt_logprobs: bool,
}

/// The most alternatives [`SamplingParams::top_logprobs`] may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Raw logits a request wants back, besides its tokens: every prompt position's (`context`: row i predicts token
/// i + 1), and each generated token's (`generation`: the row it was sampled from, before penalties).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReturnLogits {
    pub context: bool,
    pub generation: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            min_new_tokens: 0,
            max_new_tokens: 64,
            ignore_eos: false,
            banned: Vec::new(),
            no_repeat_ngram_size: 0,
            stop_strings: Vec::new(),
            stop_token_ids: Vec::new(),
            logit_bias: Vec::new(),
            return_logits: ReturnLogits::default(),
            guide: None,
            top_logprobs: 0,
            prompt_logprobs: false,
        }
    }
}

impl SamplingParams {
    /// Rejects values no sampler can honour, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!("repetition_penalty must be > 0, got {}", self.repetition_penalty));
        }
        if !self.presence_penalty.is_finite() || !self.frequency_penalty.is_finite() {
            return bad("presence_penalty and frequency_penalty must be finite".into());
        }
        if self.min_new_tokens > self.max_new_tokens {
            return bad(format!(
                "min_new_tokens {} exceeds max_new_tokens {}",
                self.min_new_tokens, self.max_new_tokens
            ));
        }
        if self.banned.iter().any(|b| b.is_empty()) {
            return bad("banned word lists must not be empty".into());
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return bad(format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {}", self.top_logprobs));
        }
        if self.stop_strings.iter().any(|s| s.is_empty()) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, reproducible across platforms.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng { s: [next(), next(), next(), next()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Per-sequence sampler state.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
}

/// Log-softmax value of `logits[id]`.
pub fn logprob_of(logits: &[f32], id: usize) -> f32 {
    let (max, log_sum) = log_sum_exp(logits);
    (logits[id] - max) - log_sum
}

/// (max, ln of the f64 sum of exp(l - max)): the log-softmax of `l` is `(l - max) - ln_sum`.
fn log_sum_exp(logits: &[f32]) -> (f32, f32) {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (max, sum.ln() as f32)
}

/// The `k` most likely ids of raw `logits` in (logit desc, id asc) order, with their log-softmax values (the CPU
/// twin of the top log-probs kernel).
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 || logits.is_empty() {
        return Vec::new();
    }
    top_with(logits, k, log_sum_exp(logits))
}

/// `logprob_of(logits, id)` and `top_logprobs(logits, k)` with one pass for their common normalizer; an id past
/// the row (a prompt id the tokenizer cannot decode) has log-prob NaN.
pub fn logprob_and_top(logits: &[f32], id: usize, k: usize) -> (f32, Vec<(u32, f32)>) {
    if logits.is_empty() {
        return (f32::NAN, Vec::new());
    }
    let (max, log_sum) = log_sum_exp(logits);
    let top = if k == 0 { Vec::new() } else { top_with(logits, k, (max, log_sum)) };
    (logits.get(id).map_or(f32::NAN, |l| (l - max) - log_sum), top)
}

/// The `k` best of `logits` (k > 0) as log-softmax values, given its (max, log-sum).
fn top_with(logits: &[f32], k: usize, (max, log_sum): (f32, f32)) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_finite() || (best.len() == k && l <= best[k - 1].1) {
            continue;
        }
        // Ties keep the lower id first: it was seen first, and `<=` above never lets a later equal one past it.
        let at = best.partition_point(|&(_, b)| b >= l);
        best.insert(at, (i as u32, l));
        best.truncate(k);
    }
    best.into_iter().map(|(i, l)| (i, (l - max) - log_sum)).collect()
}

impl Sampler {
    pub fn new(params: SamplingParams, fallback_seed: u64) -> Self {
        let rng = Rng::new(params.seed.unwrap_or(fallback_seed));
        Sampler { params, rng }
    }

    /// Applies penalties and bans to `logits` in place. `context` is prompt + generated, `generated` the tail.
    pub fn process(&self, logits: &mut [f32], context: &[u32], generated: &[u32], eos: u32) {
        let p = &self.params;
        let v = logits.len();
        for (t, b) in merged_bias(&p.logit_bias) {
            if (t as usize) < v {
                logits[t as usize] += b;
            }
        }
        if p.repetition_penalty != 1.0 {
            let mut seen = vec![false; v];
            for &t in context {
                if (t as usize) < v && !seen[t as usize] {
                    seen[t as usize] = true;
                    let l = &mut logits[t as usize];
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut count = std::collections::HashMap::<u32, u32>::new();
            for &t in generated {
                *count.entry(t).or_default() += 1;
            }
            for (t, c) in count {
                if (t as usize) < v {
                    logits[t as usize] -= p.presence_penalty + p.frequency_penalty * c as f32;
                }
            }
        }
        if generated.len() < p.min_new_tokens && (eos as usize) < v {
            logits[eos as usize] = f32::NEG_INFINITY;
            for &s in &p.stop_token_ids {
                if (s as usize) < v {
                    logits[s as usize] = f32::NEG_INFINITY;
                }
            }
        }
        for b in &p.banned {
            let (last, prefix) = b.split_last().expect("validated non-empty");
            if context.ends_with(prefix) && (*last as usize) < v {
                logits[*last as usize] = f32::NEG_INFINITY;
            }
        }
        for t in ngram_repeats(context, p.no_repeat_ngram_size) {
            if (t as usize) < v {
                logits[t as usize] = f32::NEG_INFINITY;
            }
        }
    }

    /// The uniform draw for this request's next token: one value of its generator when sampling, none
    /// (0.0) when greedy.
    pub fn draw(&mut self) -> f64 {
        if self.params.is_greedy() { 0.0 } else { self.rng.next_f64() }
    }

    /// Picks a token from processed logits.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        let u = self.draw();
        pick_row(&RowParams::new(&self.params, u), logits)
    }
}

/// The knobs of one row's pick with its uniform draw: what the sampling kernel reads per row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowParams {
    /// 0 means greedy (also set for top_k == 1).
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Uniform in [0, 1) (ignored when greedy).
    pub u: f64,
}

impl RowParams {
    pub fn new(p: &SamplingParams, u: f64) -> Self {
        RowParams {
            temperature: if p.is_greedy() { 0.0 } else { p.temperature },
            top_k: p.top_k,
            top_p: p.top_p,
            repetition_penalty: p.repetition_penalty,
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            u,
        }
    }
}

/// Picks a token from processed logits: argmax when greedy, else candidates in (logit desc, id asc) order,
/// top-k, softmax with temperature in f64, top-p, and the draw `p.u`.
pub fn pick_row(p: &RowParams, logits: &[f32]) -> u32 {
    if p.temperature == 0.0 {
        return argmax(logits) as u32;
    }
    let mut cand: Vec<(usize, f32)> = logits.iter().cloned().enumerate().filter(|(_, l)| l.is_finite()).collect();
    if cand.is_empty() {
        return argmax(logits) as u32;
    }
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 {
        cand.truncate(p.top_k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|(_, l)| (((l - max) / p.temperature) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|q| *q /= total);
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, q) in probs.iter().enumerate() {
            acc += q;
            if acc >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        let t: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= t);
    }
    let mut r = p.u;
    for (i, q) in probs.iter().enumerate() {
        if r < *q {
            return cand[i].0 as u32;
        }
        r -= q;
    }
    cand[probs.len() - 1].0 as u32
}

/// The tokens that would complete an `n`-gram already present in `context` (prompt + output): every token
/// that follows an earlier occurrence of the last `n - 1` tokens (`n` = 1: every token seen). Empty for
/// `n` = 0 or a context shorter than `n`. Ids in ascending order, without duplicates.
pub fn ngram_repeats(context: &[u32], n: usize) -> Vec<u32> {
    if n == 0 || context.len() < n {
        return Vec::new();
    }
    let tail = &context[context.len() + 1 - n..];
    let mut out: Vec<u32> = context.windows(n).filter(|w| &w[..n - 1] == tail).map(|w| w[n - 1]).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// A logit-bias list with one entry per id (repeated ids summed, in list order), by id: what the kernel adds.
pub fn merged_bias(bias: &[(u32, f32)]) -> Vec<(u32, f32)> {
    let mut m = std::collections::BTreeMap::<u32, f32>::new();
    for &(t, b) in bias {
        *m.entry(t).or_default() += b;
    }
    m.into_iter().collect()
}

/// Index of the largest value; the lowest index wins ties.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, k: usize, p: f32, seed: u64) -> SamplingParams {
        SamplingParams { temperature: t, top_k: k, top_p: p, seed: Some(seed), ..Default::default() }
    }

    #[test]
    fn same_seed_same_choices() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0, 0, 1.0, seed), 0);
            (0..30).map(|_| s.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_and_top_p_restrict_support() {
        let logits = vec![5.0, 4.0, 3.0, 0.0, -1.0];
        let mut s = Sampler::new(params(1.0, 2, 1.0, 1), 0);
        for _ in 0..200 {
            assert!(s.pick(&logits) < 2);
        }
        // p(0) = 0.66, p(1) = 0.24: top_p 0.5 keeps only token 0.
        let mut s = Sampler::new(params(1.0, 0, 0.5, 1), 0);
        for _ in 0..200 {
            assert_eq!(s.pick(&logits), 0);
        }
    }

    #[test]
    fn sampled_frequencies_follow_softmax() {
        let logits = vec![1.0f32, 0.0, -1.0];
        let mut s = Sampler::new(params(1.0, 0, 1.0, 3), 0);
        let mut hist = [0usize; 3];
        let n = 20000;
        for _ in 0..n {
            hist[s.pick(&logits) as usize] += 1;
        }
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        for i in 0..3 {
            let want = logits[i].exp() / z;
            let got = hist[i] as f32 / n as f32;
            assert!((got - want).abs() < 0.015, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn penalties_and_bans() {
        let s = Sampler::new(
            SamplingParams {
                repetition_penalty: 2.0,
                presence_penalty: 0.5,
                frequency_penalty: 0.25,
                banned: vec![vec![1, 3]],
                min_new_tokens: 5,
                ..Default::default()
            },
            0,
        );
        let mut l = vec![2.0, -2.0, 1.0, 1.0, 0.0];
        // context 0,1 then generated 1,1: 0 seen (2 -> 1), 1 seen (-2 -> -4, then -0.5 - 0.5 = -5), ban 3 after 1,
        // eos 2 masked.
        s.process(&mut l, &[0, 1, 1, 1], &[1, 1], 2);
        assert_eq!(l[0], 1.0);
        assert_eq!(l[1], -5.0);
        assert_eq!(l[2], f32::NEG_INFINITY);
        assert_eq!(l[3], f32::NEG_INFINITY);
        assert_eq!(l[4], 0.0);
    }

    /// Plain reference: `t` is banned iff the last n-gram of `context + [t]` already occurs earlier in it.
    fn completes_a_seen_ngram(context: &[u32], t: u32, n: usize) -> bool {
        let mut ext = context.to_vec();
        ext.push(t);
        if n == 0 || ext.len() < n {
            return false;
        }
        let last = ext.len() - n;
        (0..last).any(|i| ext[i..i + n] == ext[last..])
    }

    #[test]
    fn no_repeat_ngram_matches_a_plain_reference() {
        let mut rng = Rng::new(11);
        let vocab = 6u32;
        for case in 0..400 {
            let len = (rng.next_u64() % 24) as usize;
            let context: Vec<u32> = (0..len).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
            let n = case % 6;
            let want: Vec<u32> = (0..vocab).filter(|&t| completes_a_seen_ngram(&context, t, n)).collect();
            assert_eq!(ngram_repeats(&context, n), want, "context {context:?}, n {n}");
            let s = Sampler::new(SamplingParams { no_repeat_ngram_size: n, ..Default::default() }, 0);
            let mut l = vec![1.0f32; vocab as usize];
            s.process(&mut l, &context, &[], 99);
            let masked: Vec<u32> = (0..vocab).filter(|&t| l[t as usize] == f32::NEG_INFINITY).collect();
            assert_eq!(masked, want, "context {context:?}, n {n}");
        }
        // Spelled out: after 5 6 7 5 6, n = 3 bans 7 (5 6 7 again) and n = 2 bans 7 (6 7 again).
        assert_eq!(ngram_repeats(&[5, 6, 7, 5, 6], 3), vec![7]);
        assert_eq!(ngram_repeats(&[5, 6, 7, 5, 6], 2), vec![7]);
        assert_eq!(ngram_repeats(&[5, 6, 7, 5, 6], 1), vec![5, 6, 7]);
        assert!(ngram_repeats(&[5, 6, 7, 5, 6], 4).is_empty());
    }

    /// The k best by a plain sort on (logit desc, id asc), with ties and a k beyond the vocabulary.
    #[test]
    fn top_logprobs_match_a_plain_sort() {
        let mut rng = Rng::new(5);
        for case in 0..200 {
            let v = 1 + case % 40;
            let logits: Vec<f32> = (0..v).map(|_| (rng.next_u64() % 7) as f32 * 0.5).collect();
            let k = case % 25;
            let mut all: Vec<usize> = (0..v).collect();
            all.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            let want: Vec<(u32, f32)> = all.iter().take(k).map(|&i| (i as u32, logprob_of(&logits, i))).collect();
            assert_eq!(top_logprobs(&logits, k), want, "{logits:?} k {k}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let e = SamplingParams { top_p: 1.5, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("top_p"));
        let e = SamplingParams { temperature: -1.0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("temperature"));
    }
}
