//! Generation through the engine: greedy tokens against transformers, the CLI's output, scores, continuous
//! batching (with preemption) against solo runs, seeds, stop strings, stop tokens, banned words, limits.
mod common;
use common::*;
use std::collections::HashMap;
use triton_llama::backend::WeightFormat;
use triton_llama::engine::{Engine, EngineConfig, FinishReason, Output, Request};
use triton_llama::loader;
use triton_llama::sampling::SamplingParams;

/// The exact path (bf16 weights widened, f32 activations): what the transformers oracle is compared with. The
/// default for a bf16 checkpoint is bf16 arithmetic (its drift: tests/weights.rs).
fn exact() -> EngineConfig {
    EngineConfig { weights: WeightFormat::AsLoaded, ..Default::default() }
}

fn greedy(max_new_tokens: usize) -> SamplingParams {
    SamplingParams { max_new_tokens, ignore_eos: true, ..Default::default() }
}

/// Runs all requests together; returns per id (token ids, text, finish reason).
fn run_all(e: &mut Engine, reqs: Vec<Request>) -> HashMap<u64, (Vec<u32>, String, FinishReason)> {
    for r in reqs {
        e.add_request(r).unwrap();
    }
    let mut out: HashMap<u64, (Vec<u32>, String, Option<FinishReason>)> = HashMap::new();
    e.run_to_completion(|o: &Output| {
        let entry = out.entry(o.id).or_default();
        assert!(entry.2.is_none(), "output after finish for {}", o.id);
        entry.0.extend(o.token);
        entry.1.push_str(&o.text);
        entry.2 = o.finish;
    })
    .unwrap();
    out.into_iter().map(|(k, (ids, t, f))| (k, (ids, t, f.expect("every request finishes")))).collect()
}

/// Greedy generation equals transformers' greedy tokens at every step whose top-2 margin exceeds 1e-3.
#[allow(clippy::needless_range_loop)] // steps index several parallel arrays
fn check_greedy(ckpt: &str, model: &str, tp: usize) {
    let mut e = engine(ckpt, EngineConfig { tp, ..exact() });
    for c in golden(model) {
        let n = c.greedy_ids.len();
        let out = run_all(&mut e, vec![Request { id: 1, prompt_ids: c.input_ids.clone(), params: greedy(n) }]);
        let (ids, text, finish) = &out[&1];
        for i in 0..n {
            if c.greedy_margins[i] <= 1e-3 {
                break; // later tokens may legitimately diverge
            }
            assert_eq!(ids[i], c.greedy_ids[i], "{ckpt} TP={tp} case {} step {i}", c.name);
        }
        if c.greedy_margins.iter().all(|&m| m > 1e-3) {
            // Streamed text continues the prompt: decode(prompt) + text == sentencepiece's decode(prompt + output).
            let prompt_text = e.tokenizer().decode(&c.input_ids).unwrap();
            assert_eq!(format!("{prompt_text}{text}"), c.full_text, "{ckpt} case {}: streamed text differs", c.name);
        }
        assert_eq!(*finish, FinishReason::Length);
        assert_eq!(e.kv_blocks_used(), 0, "blocks leaked");
    }
}

#[test]
fn greedy_matches_transformers_hf_f32() {
    check_greedy("models/mha_f32/hf", "mha_f32", 1);
}

#[test]
fn greedy_matches_transformers_hf_bf16_tp2() {
    check_greedy("models/gqa_bf16/hf", "gqa_bf16", 2);
}

#[test]
fn greedy_matches_transformers_nemo_tp2_chunks() {
    check_greedy("models/gqa_bf16/model_tp2.nemo", "gqa_bf16", 1);
}

#[test]
fn score_matches_transformers_prompt_logprobs() {
    let mut e = engine("models/gqa_bf16/hf", exact());
    for c in golden("gqa_bf16") {
        let lp = e.score(&c.input_ids).unwrap();
        assert_eq!(lp.len(), c.prompt_logprobs.len());
        for (i, (a, b)) in lp.iter().zip(&c.prompt_logprobs).enumerate() {
            assert!((*a as f64 - b).abs() < 1e-4, "case {} token {i}: {a} vs {b}", c.name);
        }
    }
}

#[test]
fn cli_generate_prints_the_golden_greedy_text() {
    for (ckpt, model, extra) in [
        ("models/mha_f32/hf", "mha_f32", vec![]),
        ("models/gqa_bf16/model.nemo", "gqa_bf16", vec!["--no-default-stops"]),
    ] {
        for c in golden(model).iter().filter(|c| c.greedy_margins.iter().all(|&m| m > 1e-3)) {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_triton-llama"))
                .arg("generate")
                .arg(fixture(ckpt))
                .args([
                    "--prompt",
                    &c.prompt,
                    "--max-tokens",
                    &c.greedy_ids.len().to_string(),
                    "--ignore-eos",
                    "--json",
                    "--weights",
                    "f32",
                ])
                .arg(if c.add_bos { "--bos" } else { "--no-bos" })
                .args(&extra)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let prompt_ids: Vec<u32> =
                v["prompt_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let ids: Vec<u32> = v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(prompt_ids, c.input_ids, "{ckpt} case {}: tokenization differs from sentencepiece", c.name);
            assert_eq!(ids, c.greedy_ids, "{ckpt} case {}", c.name);
            // decode(prompt) + printed text == sentencepiece's decode(prompt + greedy ids).
            let tok = loader::open(&fixture(ckpt)).unwrap().tokenizer().unwrap();
            let prompt_text = tok.decode(&c.input_ids).unwrap();
            assert_eq!(format!("{prompt_text}{}", v["text"].as_str().unwrap()), c.full_text, "{ckpt} case {}", c.name);
        }
    }
}

/// `generate --json` reports its timings: the prompt token count the tokenizer produced, one prefill, one decode
/// time per token after the first, and consistent totals (values are wall-clock, so only their relations are
/// checked, never a speed).
#[test]
fn cli_generate_json_reports_timings() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_triton-llama"))
        .arg("generate")
        .arg(fixture("models/gqa_bf16/hf"))
        .args(["--prompt", "hello world, the kernel thread", "--max-tokens", "7", "--ignore-eos", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &v["timings"];
    let n_prompt = v["prompt_ids"].as_array().unwrap().len();
    let tok = loader::open(&fixture("models/gqa_bf16/hf")).unwrap().tokenizer().unwrap();
    assert_eq!(n_prompt, tok.encode("hello world, the kernel thread", true).unwrap().len());
    assert_eq!(t["prompt_tokens"].as_u64().unwrap() as usize, n_prompt);
    assert_eq!(v["ids"].as_array().unwrap().len(), 7);
    assert_eq!(t["decode_tokens"].as_u64().unwrap(), 6, "every token after the first is a decode token");
    let f = |k: &str| t[k].as_f64().unwrap();
    let (load, prefill, decode) = (f("load_s"), f("prefill_ms"), f("decode_ms"));
    assert!(load > 0.0 && prefill > 0.0 && decode > 0.0, "{t}");
    let per_token = t["decode_ms_per_token"].as_f64().unwrap();
    assert!((per_token * 6.0 - decode).abs() <= 1e-9 * decode.max(1.0), "{t}");
    // One generated token: no decode time per token.
    let one = std::process::Command::new(env!("CARGO_BIN_EXE_triton-llama"))
        .arg("generate")
        .arg(fixture("models/gqa_bf16/hf"))
        .args(["--prompt", "hello", "--max-tokens", "1", "--ignore-eos", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(v["timings"]["decode_tokens"], 0);
    assert!(v["timings"]["decode_ms_per_token"].is_null());
}

/// `score --ids ... --logits-out FILE` writes every position's logits; the log-probs it prints (and the file's
/// rows) match transformers' prompt log-probs.
#[test]
fn cli_score_writes_the_logits_of_every_position() {
    let c = &golden("gqa_bf16")[0];
    let file = std::env::temp_dir().join(format!("tl_score_logits_{}.f32", std::process::id()));
    let ids = c.input_ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_triton-llama"))
        .arg("score")
        .arg(fixture("models/gqa_bf16/hf"))
        .args(["--ids", &ids, "--json", "--weights", "f32", "--logits-out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lp: Vec<f64> = v["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let raw = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let vocab = loader::open(&fixture("models/gqa_bf16/hf")).unwrap().config().vocab_size;
    assert_eq!(raw.len(), c.input_ids.len() * vocab * 4);
    let logits: Vec<f64> = raw.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect();
    assert_eq!(lp.len(), c.prompt_logprobs.len());
    let d = logits
        .iter()
        .zip(c.logits.iter().flatten())
        .map(|(a, b)| (a - *b as f64).abs())
        .map(|d| if d.is_nan() { f64::INFINITY } else { d })
        .fold(0.0, f64::max);
    assert!(d < 1e-3, "max-abs logit diff to transformers {d}");
    for i in 1..c.input_ids.len() {
        let row = &logits[(i - 1) * vocab..i * vocab];
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let from_file = row[c.input_ids[i] as usize] - m - row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        let want = c.prompt_logprobs[i - 1];
        assert!((from_file - want).abs() < 1e-4, "token {i}: {from_file} vs {want}");
        assert!((lp[i - 1] - c.prompt_logprobs[i - 1]).abs() < 1e-4, "token {i}");
    }
}

/// Requests batched together each get their own timings on their final output only.
#[test]
fn timings_come_with_each_final_output() {
    let mut e = engine("models/gqa_bf16/hf", EngineConfig { max_batched_tokens: 8, ..Default::default() });
    let prompts: [Vec<u32>; 2] = [(3..23).collect(), vec![5, 6, 7]];
    for (i, p) in prompts.iter().enumerate() {
        e.add_request(Request { id: i as u64, prompt_ids: p.clone(), params: greedy(4 + i) }).unwrap();
    }
    let mut finals = HashMap::new();
    e.run_to_completion(|o| {
        assert_eq!(o.timings.is_some(), o.finish.is_some(), "timings come with the final output only");
        if let Some(t) = &o.timings {
            finals.insert(o.id, t.clone());
        }
    })
    .unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let t = &finals[&(i as u64)];
        assert_eq!(t.prompt_tokens, p.len());
        assert_eq!(t.decode_tokens, 3 + i);
        assert!(t.prefill_ms > 0.0 && t.decode_ms > 0.0);
    }
}

/// `bench --checkpoint` runs the requested batch sizes and prefill lengths on a real checkpoint.
#[test]
fn cli_bench_runs_a_checkpoint_at_the_given_batches() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_triton-llama"))
        .args(["bench", "--checkpoint"])
        .arg(fixture("models/gqa_bf16/hf"))
        .args(["--batches", "1,3", "--prefill", "5,17", "--steps", "2", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let src = loader::open(&fixture("models/gqa_bf16/hf")).unwrap();
    assert_eq!(v["model_params"].as_u64().unwrap() as usize, src.config().num_params());
    assert!(v["model"].as_str().unwrap().contains("safetensors"), "{}", v["model"]);
    let decode = v["decode"].as_array().unwrap();
    assert_eq!(decode.iter().map(|d| d["batch"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 3]);
    for d in decode {
        let f = |k: &str| d[k].as_f64().unwrap();
        let (b, ms, tok_s) = (f("batch"), f("ms_per_step"), f("tok_s"));
        assert!((tok_s - b * 1e3 / ms).abs() <= 1e-6 * tok_s, "{d}");
    }
    // The batch-1 ceiling is the measured read bandwidth over the bytes the batch-1 point streams per token.
    let (read, ceil) = (v["read_gbps"].as_f64().unwrap(), v["batch1_ceiling_tok_s"].as_f64().unwrap());
    let b1 = |k: &str| decode[0][k].as_f64().unwrap();
    assert!(read > 0.0 && (ceil - read * b1("tok_s") / b1("weight_gbps")).abs() <= 1e-6 * ceil, "{v}");
    let prefill = v["prefill"].as_array().unwrap();
    assert_eq!(prefill.iter().map(|p| p["tokens"].as_u64().unwrap()).collect::<Vec<_>>(), [5, 17]);
    let cli = env!("CARGO_BIN_EXE_triton-llama");
    let bad = std::process::Command::new(cli).args(["bench", "--batches", "1,x"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--batches"));
}

/// Many requests of different lengths admitted at different times, in a cache so small that sequences are
/// preempted and recomputed, give exactly their solo outputs and leave no block behind.
#[test]
fn continuous_batching_with_preemption_matches_solo_runs() {
    let cases = golden("gqa_bf16");
    let mut solo = engine("models/gqa_bf16/hf", EngineConfig::default());
    let reqs: Vec<Request> = (0..8u64)
        .map(|i| {
            let c = &cases[i as usize % cases.len()];
            let cut = c.input_ids.len() - (i as usize % 3);
            Request { id: i, prompt_ids: c.input_ids[..cut].to_vec(), params: greedy(10 + i as usize * 3) }
        })
        .collect();
    let want: HashMap<u64, Vec<u32>> =
        reqs.iter().map(|r| (r.id, run_all(&mut solo, vec![r.clone()])[&r.id].0.clone())).collect();
    // 14 blocks of 16 tokens: not enough for 8 sequences of up to ~80 tokens at once.
    let mut e = engine(
        "models/gqa_bf16/hf",
        EngineConfig { num_blocks: Some(14), max_num_seqs: 6, max_batched_tokens: 40, ..Default::default() },
    );
    let got = run_all(&mut e, reqs);
    for (id, ids) in &want {
        assert_eq!(&got[id].0, ids, "request {id} differs when batched");
    }
    assert_eq!(e.kv_blocks_used(), 0);
}

#[test]
fn same_seed_same_text_and_different_seed_differs() {
    let c = &golden("mha_f32")[0];
    let mut e = engine("models/mha_f32/hf", EngineConfig::default());
    let p = |seed| SamplingParams {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.95,
        seed: Some(seed),
        max_new_tokens: 20,
        ignore_eos: true,
        ..Default::default()
    };
    let a = run_all(&mut e, vec![Request { id: 1, prompt_ids: c.input_ids.clone(), params: p(42) }]);
    let b = run_all(&mut e, vec![Request { id: 2, prompt_ids: c.input_ids.clone(), params: p(42) }]);
    let d = run_all(&mut e, vec![Request { id: 3, prompt_ids: c.input_ids.clone(), params: p(43) }]);
    assert_eq!(a[&1].0, b[&2].0);
    assert_ne!(a[&1].0, d[&3].0);
    // Seeded requests batched together still reproduce their solo output.
    let both = run_all(
        &mut e,
        vec![
            Request { id: 4, prompt_ids: c.input_ids.clone(), params: p(42) },
            Request { id: 5, prompt_ids: c.input_ids.clone(), params: p(43) },
        ],
    );
    assert_eq!(both[&4].0, a[&1].0);
    assert_eq!(both[&5].0, d[&3].0);
}

#[test]
fn stop_string_ends_generation_and_is_trimmed() {
    let mut e = engine("models/mha_f32/hf", EngineConfig::default());
    let tok = e.tokenizer().clone();
    for c in golden("mha_f32").iter().filter(|c| c.greedy_margins.iter().all(|&m| m > 1e-3)) {
        // The generated continuation as sentencepiece decodes it after the prompt.
        let full = c.full_text[tok.decode(&c.input_ids).unwrap().len()..].to_string();
        // A stop string from the middle of the greedy text, spanning a few characters.
        let chars: Vec<(usize, char)> = full.char_indices().collect();
        if chars.len() < 12 {
            continue;
        }
        let (a, b) = (chars[chars.len() / 2].0, chars[chars.len() / 2 + 3].0);
        let stop = full[a..b].to_string();
        let first = full.find(&stop).unwrap();
        let params = SamplingParams { stop_strings: vec![stop.clone()], ..greedy(c.greedy_ids.len()) };
        let out = run_all(&mut e, vec![Request { id: 9, prompt_ids: c.input_ids.clone(), params }]);
        let (_, text, finish) = &out[&9];
        assert_eq!(*finish, FinishReason::Stop, "case {}", c.name);
        assert_eq!(text, &full[..first], "case {}: stop {stop:?}", c.name);
    }
}

#[test]
fn stop_token_and_min_tokens() {
    let c = &golden("mha_f32")[0];
    let mut e = engine("models/mha_f32/hf", EngineConfig::default());
    let stop_tok = c.greedy_ids[3];
    let first_at = c.greedy_ids.iter().position(|&t| t == stop_tok).unwrap();
    let p = SamplingParams { stop_token_ids: vec![stop_tok], ..greedy(20) };
    let out = run_all(&mut e, vec![Request { id: 1, prompt_ids: c.input_ids.clone(), params: p }]);
    assert_eq!(out[&1].0, c.greedy_ids[..=first_at].to_vec());
    assert_eq!(out[&1].2, FinishReason::Stop);
    // With min_new_tokens the stop token cannot appear before it is allowed.
    let p = SamplingParams { stop_token_ids: vec![stop_tok], min_new_tokens: 8, ..greedy(20) };
    let out = run_all(&mut e, vec![Request { id: 2, prompt_ids: c.input_ids.clone(), params: p }]);
    assert!(out[&2].0.len() >= 8);
    assert!(!out[&2].0[..7].contains(&stop_tok));
}

#[test]
fn banned_words_are_never_produced() {
    let c = &golden("gqa_bf16")[0];
    let mut e = engine("models/gqa_bf16/hf", EngineConfig::default());
    let (g0, g1) = (c.greedy_ids[0], c.greedy_ids[1]);
    let p = SamplingParams { banned: vec![vec![g0], vec![c.greedy_ids[2], c.greedy_ids[3]]], ..greedy(24) };
    let out = run_all(&mut e, vec![Request { id: 1, prompt_ids: c.input_ids.clone(), params: p }]);
    let ids = &out[&1].0;
    assert!(!ids.contains(&g0), "banned single token produced: {ids:?}");
    assert!(!ids.windows(2).any(|w| w == [c.greedy_ids[2], c.greedy_ids[3]]), "banned pair produced");
    assert_eq!(ids.len(), 24);
    let _ = g1;
}

#[test]
fn bad_requests_are_refused_and_nothing_is_queued() {
    let mut e = engine("models/mha_f32/hf", EngineConfig { max_model_len: Some(64), ..Default::default() });
    let ok = vec![1u32, 5, 9];
    let cases: Vec<(Vec<u32>, SamplingParams, &str)> = vec![
        (vec![], greedy(4), "empty"),
        (vec![7; 64], greedy(4), "limit"),
        (vec![1, 5000], greedy(4), "vocabulary"),
        (ok.clone(), greedy(0), "max_new_tokens"),
        (ok.clone(), SamplingParams { top_p: 0.0, ..greedy(4) }, "top_p"),
        (ok.clone(), SamplingParams { temperature: f32::NAN, ..greedy(4) }, "temperature"),
        (ok.clone(), SamplingParams { min_new_tokens: 9, ..greedy(4) }, "min_new_tokens"),
        (ok.clone(), SamplingParams { stop_strings: vec![String::new()], ..greedy(4) }, "stop"),
    ];
    for (i, (ids, params, needle)) in cases.into_iter().enumerate() {
        let err = e.add_request(Request { id: i as u64, prompt_ids: ids, params }).unwrap_err();
        assert!(err.to_string().contains(needle), "{err} should mention {needle}");
        assert_eq!(err.kind(), triton_llama::ErrorKind::InvalidArg);
    }
    assert!(!e.has_work());
    // The engine still serves after refusing.
    let out = run_all(&mut e, vec![Request { id: 100, prompt_ids: ok, params: greedy(3) }]);
    assert_eq!(out[&100].0.len(), 3);
}

#[test]
fn abort_frees_blocks_at_once() {
    let mut e = engine("models/mha_f32/hf", EngineConfig::default());
    let c = &golden("mha_f32")[2];
    for id in 0..4 {
        e.add_request(Request { id, prompt_ids: c.input_ids.clone(), params: greedy(50) }).unwrap();
    }
    e.step().unwrap();
    assert!(e.kv_blocks_used() > 0);
    for id in 0..4 {
        assert_eq!(e.abort(id).unwrap().finish, Some(FinishReason::Abort));
    }
    assert_eq!(e.kv_blocks_used(), 0);
    assert!(!e.has_work());
}

/// A KV cache of 4 blocks of 16 tokens (64 slots): a prompt that fills it is refused up front; a generation
/// that outgrows it ends with `length` after exactly the tokens that fit, equal to the solo run's first tokens,
/// and frees every block; the engine keeps serving.
#[test]
fn work_beyond_the_whole_kv_cache_is_refused_or_ends_with_length() {
    let c = &golden("gqa_bf16")[0];
    let mut e = engine(
        "models/gqa_bf16/hf",
        EngineConfig { num_blocks: Some(4), max_model_len: Some(256), ..Default::default() },
    );
    assert_eq!(e.kv_blocks_total() * 16, 64);
    let err = e.add_request(Request { id: 1, prompt_ids: vec![5; 64], params: greedy(4) }).unwrap_err();
    assert!(err.to_string().contains("whole KV cache holds 64"), "{err}");
    assert_eq!(err.kind(), triton_llama::ErrorKind::InvalidArg);
    assert!(!e.has_work());
    let n = c.input_ids.len();
    let fits = 64 - n + 1;
    let mut solo = engine("models/gqa_bf16/hf", EngineConfig::default());
    let want = run_all(&mut solo, vec![Request { id: 2, prompt_ids: c.input_ids.clone(), params: greedy(fits) }]);
    let got = run_all(&mut e, vec![Request { id: 2, prompt_ids: c.input_ids.clone(), params: greedy(200) }]);
    assert_eq!(got[&2].2, FinishReason::Length);
    assert_eq!(got[&2].0, want[&2].0, "the tokens that fit are the solo run's");
    assert_eq!(got[&2].1, want[&2].1);
    assert_eq!(e.kv_blocks_used(), 0);
    // Two that each fit but not together: both finish by preemption with their solo tokens.
    let reqs: Vec<Request> =
        (10..12).map(|id| Request { id, prompt_ids: c.input_ids.clone(), params: greedy(40 - n) }).collect();
    let want = run_all(&mut solo, vec![reqs[0].clone()]);
    let got = run_all(&mut e, reqs);
    assert_eq!(got[&10].0, want[&10].0);
    assert_eq!(got[&11].0, want[&10].0);
    assert_eq!(e.kv_blocks_used(), 0);
}
