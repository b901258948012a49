//! Logits returned with the outputs (TensorRT-LLM's `return_context_logits` / `return_generation_logits`):
//! the prompt's rows equal transformers' logits (the exact path) whatever the prefill chunking and even when
//! the prompt's prefix is cached; each generated token's row is the one it was sampled from (its log-softmax
//! at the token is the token's log-prob, greedy picks its argmax); the last prompt row is the first token's.
mod common;
use common::*;
use triton_llama::engine::{EngineConfig, Output, Request};
use triton_llama::sampling::{ReturnLogits, SamplingParams, logprob_of};

fn params(n: usize, context: bool, generation: bool) -> SamplingParams {
    let return_logits = ReturnLogits { context, generation };
    SamplingParams { max_new_tokens: n, ignore_eos: true, return_logits, ..Default::default() }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Chunked prefill (4 tokens a step), a concurrent request, and a second run whose prompt is cached.
#[test]
fn context_logits_equal_transformers_in_any_chunking() {
    for (ckpt, model, tp) in GOLDEN_ENGINES {
        let mut e = engine(ckpt, chunked_exact(tp));
        let w = e.logits_width();
        for c in golden(model) {
            let n = c.input_ids.len();
            for round in 0..2 {
                let other = Request { id: 9, prompt_ids: c.input_ids.clone(), params: params(3, false, false) };
                let mine = Request { id: 1, prompt_ids: c.input_ids.clone(), params: params(2, true, false) };
                let outs = run_requests(&mut e, vec![other, mine]);
                let ctx: Vec<&Output> = outs[1].iter().filter(|o| !o.context_logits.is_empty()).collect();
                assert_eq!(ctx.len(), 1, "the context logits come once");
                assert!(ctx[0].token.is_some() && outs[1][0].context_logits.len() == n * w, "with the first token");
                for (i, want) in c.logits.iter().enumerate().take(n) {
                    let got = &ctx[0].context_logits[i * w..(i + 1) * w];
                    let d = max_diff(got, &want[..w]);
                    assert!(d < 1e-4, "{ckpt} TP={tp} case {} round {round} position {i}: max diff {d}", c.name);
                }
                assert!(outs[0].iter().all(|o| o.context_logits.is_empty() && o.logits.is_empty()), "not asked");
            }
        }
    }
}

#[test]
fn generation_logits_are_the_rows_tokens_are_sampled_from() {
    let mut e = engine("models/gqa_bf16/hf", EngineConfig::default());
    let w = e.logits_width();
    let prompt = golden("gqa_bf16")[0].input_ids.clone();
    for (temperature, seed) in [(0.0, None), (0.9, Some(7))] {
        let mut p = params(6, true, true);
        (p.temperature, p.seed) = (temperature, seed);
        let outs = run_requests(&mut e, vec![Request { id: 3, prompt_ids: prompt.clone(), params: p.clone() }]);
        let toks: Vec<&Output> = outs[0].iter().filter(|o| o.token.is_some()).collect();
        assert_eq!(toks.len(), 6);
        for (k, o) in toks.iter().enumerate() {
            let (t, row) = (o.token.unwrap() as usize, &o.logits);
            assert_eq!(row.len(), w);
            let lp = logprob_of(row, t);
            assert!((lp - o.logprob).abs() < 1e-5, "token {k}: log-softmax {lp} vs log-prob {}", o.logprob);
            if temperature == 0.0 {
                let arg = (0..w).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
                assert_eq!(arg, t, "greedy token {k} is its row's argmax");
            }
        }
        let n = prompt.len();
        let last = &toks[0].context_logits[(n - 1) * w..];
        assert_eq!(last, &toks[0].logits[..], "the last prompt row is the first token's");
        // Asking for logits changes nothing else.
        let plain =
            run_requests(&mut e, vec![Request { id: 4, prompt_ids: prompt.clone(), params: params(6, false, false) }]);
        let mut q = params(6, false, false);
        (q.temperature, q.seed) = (temperature, seed);
        let plain = if temperature == 0.0 {
            plain
        } else {
            run_requests(&mut e, vec![Request { id: 3, prompt_ids: prompt.clone(), params: q }])
        };
        let a: Vec<_> = toks.iter().map(|o| o.token).collect();
        let b: Vec<_> = plain[0].iter().filter_map(|o| o.token.map(Some)).collect();
        assert_eq!(a, b);
    }
}

#[test]
fn too_many_logits_are_refused_by_size() {
    let mut e = engine("models/gqa_bf16/hf", EngineConfig::default());
    let w = e.logits_width();
    let n = triton_llama::engine::MAX_RETURN_LOGITS / w + 1;
    let r = Request { id: 1, prompt_ids: vec![1, 2], params: params(n, false, true) };
    let err = e.add_request(r).unwrap_err().to_string();
    assert!(err.contains("MiB"), "{err}");
    assert!(!e.has_work());
}
