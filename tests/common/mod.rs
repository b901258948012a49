//! Shared helpers for the integration tests: fixture paths, golden files, and running raw steps.
#![allow(dead_code)]
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use triton_llama::engine::runner::{KvPlan, Runner, StepInput};
use triton_llama::engine::{Engine, EngineConfig, Output, Request};
use triton_llama::loader;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// One prompt of a golden file, as transformers computed it.
pub struct Case {
    pub name: String,
    pub prompt: String,
    pub add_bos: bool,
    pub input_ids: Vec<u32>,
    /// `[len][V]`
    pub logits: Vec<Vec<f32>>,
    pub greedy_ids: Vec<u32>,
    pub greedy_margins: Vec<f32>,
    pub prompt_logprobs: Vec<f64>,
    pub greedy_text: String,
    /// sentencepiece decode of prompt + greedy ids.
    pub full_text: String,
}

pub fn golden(model: &str) -> Vec<Case> {
    let path = fixture(&format!("models/{model}/golden.json"));
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let ids = |x: &Value| x.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let floats = |x: &Value| x.as_array().unwrap().iter().map(|f| f.as_f64().unwrap()).collect::<Vec<_>>();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().into(),
            prompt: c["prompt"].as_str().unwrap().into(),
            add_bos: c["add_bos"].as_bool().unwrap(),
            input_ids: ids(&c["input_ids"]),
            logits: c["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| floats(r).into_iter().map(|f| f as f32).collect())
                .collect(),
            greedy_ids: ids(&c["greedy_ids"]),
            greedy_margins: floats(&c["greedy_margins"]).into_iter().map(|f| f as f32).collect(),
            prompt_logprobs: floats(&c["prompt_logprobs"]),
            greedy_text: c["greedy_text"].as_str().unwrap().into(),
            full_text: c["full_text"].as_str().unwrap().into(),
        })
        .collect()
}

pub fn runner(ckpt: &str, tp: usize) -> Runner {
    let src = loader::open(&fixture(ckpt)).unwrap_or_else(|e| panic!("{ckpt}: {e}"));
    Runner::start_cpu(Arc::from(src), tp, KvPlan { num_blocks: 64, block_size: 4 }).unwrap()
}

/// Logits at every position of `ids` in one prefill step, `[len * V]`.
pub fn prompt_logits(r: &Runner, ids: &[u32]) -> Vec<f32> {
    let mut input = StepInput::default();
    input.meta.block_size = r.block_size;
    let table: Vec<u32> = (0..ids.len().div_ceil(r.block_size) as u32).collect();
    input.push_seq(ids, 0, &table, true);
    r.run(input).unwrap().logits
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    // A NaN counts as an infinite difference (f32::max alone would skip it).
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).map(|d| if d.is_nan() { f32::INFINITY } else { d }).fold(0.0, f32::max)
}

/// The engine on a fixture checkpoint.
pub fn engine(ckpt: &str, ecfg: EngineConfig) -> Engine {
    Engine::new(loader::open(&fixture(ckpt)).unwrap(), ecfg).unwrap()
}

/// Runs the requests together to the end; per request (in order): its outputs. Checks that no block leaked.
pub fn run_requests(e: &mut Engine, reqs: Vec<Request>) -> Vec<Vec<Output>> {
    let ids: Vec<u64> = reqs.iter().map(|r| r.id).collect();
    for r in reqs {
        e.add_request(r).unwrap();
    }
    let mut outs = vec![Vec::new(); ids.len()];
    e.run_to_completion(|o| outs[ids.iter().position(|&i| i == o.id).unwrap()].push(o.clone())).unwrap();
    assert_eq!(e.kv_blocks_used(), 0, "blocks leaked");
    outs
}

/// The golden fixtures' engines: (checkpoint, golden file, tensor-parallel ranks).
pub const GOLDEN_ENGINES: [(&str, &str, usize); 2] =
    [("models/gqa_bf16/hf", "gqa_bf16", 1), ("models/mha_f32/hf", "mha_f32", 2)];

/// The exact path (weights as loaded, f32 activations) with the prompt computed 4 tokens a step in blocks of 4.
pub fn chunked_exact(tp: usize) -> EngineConfig {
    let weights = triton_llama::backend::WeightFormat::AsLoaded;
    EngineConfig { tp, block_size: 4, max_batched_tokens: 4, weights, ..Default::default() }
}
