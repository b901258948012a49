//! Top log-probs and prompt log-probs (OpenAI's `top_logprobs`, completions' `echo` with `logprobs`): the prompt
//! tokens' log-probs equal transformers' (the golden files' `prompt_logprobs`) whatever the prefill chunking and
//! even when the prompt is cached; the alternatives at each position are the k best of transformers' log-softmax,
//! and at generated positions those of the row the token was sampled from; asking changes no token.
mod common;
use common::*;
use triton_llama::engine::{EngineConfig, Output, Request};
use triton_llama::sampling::SamplingParams;

/// Log-softmax in f64 and every id sorted by it (best first): the plain reference.
fn ranked(logits: &[f32]) -> Vec<(u32, f64)> {
    let max = logits.iter().map(|&x| x as f64).fold(f64::NEG_INFINITY, f64::max);
    let lse = max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    let mut all: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &x)| (i as u32, x as f64 - lse)).collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1));
    all
}

/// `top` is the k best of `want`'s distribution: the same values in order, and each id's own value matches
/// (ids may swap only between near-equal values).
fn assert_top(top: &[(u32, f32)], want: &[(u32, f64)], k: usize, tol: f64, what: &str) {
    assert_eq!(top.len(), k, "{what}: {k} alternatives");
    for (j, (&(id, lp), &(_, w))) in top.iter().zip(want).enumerate() {
        assert!((lp as f64 - w).abs() < tol, "{what}: rank {j} log-prob {lp} vs {w}");
        let own = want.iter().find(|x| x.0 == id).unwrap().1;
        assert!((lp as f64 - own).abs() < tol, "{what}: rank {j} id {id} log-prob {lp} vs its own {own}");
    }
}

#[test]
fn prompt_logprobs_equal_transformers_in_any_chunking() {
    for (ckpt, model, tp) in GOLDEN_ENGINES {
        let mut e = engine(ckpt, chunked_exact(tp));
        for c in golden(model) {
            let n = c.input_ids.len();
            let k = 5;
            for round in 0..2 {
                let p =
                    SamplingParams { max_new_tokens: 2, prompt_logprobs: true, top_logprobs: k, ..Default::default() };
                let plain = SamplingParams { max_new_tokens: 3, ..Default::default() };
                let other = Request { id: 9, prompt_ids: c.input_ids.clone(), params: plain };
                let mine = Request { id: 1, prompt_ids: c.input_ids.clone(), params: p };
                let outs = run_requests(&mut e, vec![other, mine]);
                let with: Vec<&Output> = outs[1].iter().filter(|o| !o.prompt_logprobs.is_empty()).collect();
                assert_eq!(with.len(), 1, "the prompt log-probs come once");
                assert!(with[0].token.is_some(), "with the first token");
                let lps = &with[0].prompt_logprobs;
                assert_eq!(lps.len(), n);
                assert!(lps[0].logprob.is_nan() && lps[0].top.is_empty(), "nothing predicts the first token");
                for (i, p) in lps.iter().enumerate() {
                    assert_eq!(p.token, c.input_ids[i]);
                    if i == 0 {
                        continue;
                    }
                    let what = format!("{ckpt} TP={tp} case {} round {round} position {i}", c.name);
                    let want = c.prompt_logprobs[i - 1];
                    assert!((p.logprob as f64 - want).abs() < 1e-4, "{what}: {} vs transformers {want}", p.logprob);
                    assert_top(&p.top, &ranked(&c.logits[i - 1]), k, 1e-4, &what);
                }
                assert!(outs[0].iter().all(|o| o.prompt_logprobs.is_empty() && o.top_logprobs.is_empty()));
            }
        }
    }
}

#[test]
fn top_logprobs_are_the_best_of_the_sampled_rows() {
    let mut e = engine("models/gqa_bf16/hf", EngineConfig::default());
    let prompt = golden("gqa_bf16")[0].input_ids.clone();
    for (temperature, seed, k) in [(0.0, None, 1), (0.0, None, 20), (0.9, Some(7), 3)] {
        let return_logits = triton_llama::sampling::ReturnLogits { context: false, generation: true };
        let base = SamplingParams { max_new_tokens: 6, ignore_eos: true, temperature, seed, ..Default::default() };
        let p = SamplingParams { top_logprobs: k, return_logits, ..base.clone() };
        let outs = run_requests(&mut e, vec![Request { id: 3, prompt_ids: prompt.clone(), params: p }]);
        let toks: Vec<&Output> = outs[0].iter().filter(|o| o.token.is_some()).collect();
        assert_eq!(toks.len(), 6);
        for (j, o) in toks.iter().enumerate() {
            let what = format!("T={temperature} k={k} token {j}");
            assert_top(&o.top_logprobs, &ranked(&o.logits), k, 1e-5, &what);
            if temperature == 0.0 {
                assert_eq!(o.top_logprobs[0].0, o.token.unwrap(), "{what}: greedy picks the best");
                assert_eq!(o.top_logprobs[0].1, o.logprob, "{what}: same log-prob as the token's");
            }
        }
        // Asking changes no token.
        let plain = run_requests(&mut e, vec![Request { id: 3, prompt_ids: prompt.clone(), params: base }]);
        let a: Vec<_> = toks.iter().map(|o| o.token).collect();
        let b: Vec<_> = plain[0].iter().filter(|o| o.token.is_some()).map(|o| o.token).collect();
        assert_eq!(a, b);
    }
}

#[test]
fn more_than_twenty_alternatives_are_refused() {
    let mut e = engine("models/gqa_bf16/hf", EngineConfig::default());
    let p = SamplingParams { top_logprobs: 21, ..Default::default() };
    let err = e.add_request(Request { id: 1, prompt_ids: vec![1, 2], params: p }).unwrap_err().to_string();
    assert!(err.contains("top_logprobs"), "{err}");
}
