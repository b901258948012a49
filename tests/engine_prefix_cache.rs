//! Prefix caching through the engine: a prompt that shares a prefix with an earlier (finished or still
//! running) one gives exactly the greedy tokens and per-token log-probs it gives with the cache off, for shared
//! prefixes of 0, 1, block-1, block, block+1 and many blocks, on TP=1 and TP=2 (threads); the cache is hit.
//!
//! Every case is exact: the CPU matmul kernels give a token row the same bits whatever the step's other rows
//! (`gemm_rows_do_not_depend_on_the_batch`, `every_kernel_gives_a_row_the_same_bits_in_any_batch`), so K/V
//! cached from prefill chunks, from decode steps (a first turn's answer) or for a prompt identical to a cached
//! one are bit for bit the recomputed ones.
mod common;
use common::*;
use std::collections::HashMap;
use triton_llama::backend::KvDtype;
use triton_llama::engine::{Engine, EngineConfig, Output, Request};
use triton_llama::loader;
use triton_llama::sampling::SamplingParams;

/// Per request: (tokens, log-probs).
type Outs = HashMap<u64, (Vec<u32>, Vec<f32>)>;

fn engine(ckpt: &str, tp: usize, block_size: usize, cache: bool, kv_cache_dtype: KvDtype) -> Engine {
    let ecfg = EngineConfig {
        tp,
        block_size,
        num_blocks: Some(256),
        enable_prefix_caching: cache,
        kv_cache_dtype,
        ..Default::default()
    };
    Engine::new(loader::open(&fixture(ckpt)).unwrap(), ecfg).unwrap()
}

fn req(id: u64, prompt_ids: Vec<u32>) -> Request {
    Request { id, prompt_ids, params: SamplingParams { max_new_tokens: 8, ignore_eos: true, ..Default::default() } }
}

fn collect(out: &mut Outs, o: &Output) {
    let e = out.entry(o.id).or_default();
    if let Some(t) = o.token {
        e.0.push(t);
        e.1.push(o.logprob);
    }
}

/// `a` runs to completion, then `b` (sequential), or `b` arrives right after `a`'s first step (concurrent).
fn run_pair(e: &mut Engine, a: Request, b: Request, concurrent: bool) -> Outs {
    let mut out = Outs::new();
    e.add_request(a).unwrap();
    if concurrent {
        for o in e.step().unwrap() {
            collect(&mut out, &o);
        }
    } else {
        e.run_to_completion(|o| collect(&mut out, o)).unwrap();
    }
    e.add_request(b).unwrap();
    e.run_to_completion(|o| collect(&mut out, o)).unwrap();
    assert_eq!(e.kv_blocks_used(), 0, "blocks leaked");
    out
}

/// `n` pseudo-random token ids (an LCG seeded with `seed`), inside the fixtures' vocabulary of 1000.
fn tokens(seed: u64, n: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            3 + (x >> 33) as u32 % 990
        })
        .collect()
}

fn check(ckpt: &str, tp: usize, bs: usize, kv: KvDtype) {
    let (mut on, mut off) = (engine(ckpt, tp, bs, true, kv), engine(ckpt, tp, bs, false, kv));
    let mut id = 0;
    for (k, shared) in [0, 1, bs - 1, bs, bs + 1, 6 * bs + 3].into_iter().enumerate() {
        for concurrent in [false, true] {
            // A fresh prefix for each case, so earlier cases' cached blocks do not add hits.
            let seed = 3 * (2 * k as u64 + concurrent as u64);
            let prefix = tokens(seed, shared);
            let a: Vec<u32> = prefix.iter().copied().chain(tokens(seed + 1, 5)).collect();
            let b: Vec<u32> = prefix.iter().copied().chain(tokens(seed + 2, 6)).collect();
            let before = on.prefix_cache_stats();
            id += 2;
            let got = run_pair(&mut on, req(id, a.clone()), req(id + 1, b.clone()), concurrent);
            let hits = on.prefix_cache_stats().hits - before.hits;
            let want = run_pair(&mut off, req(id, a), req(id + 1, b), concurrent);
            let case = format!("{ckpt} TP={tp} block {bs}, shared {shared}, concurrent {concurrent}");
            assert_eq!(hits as usize, shared / bs * bs, "{case}: prompt tokens found in the cache");
            for r in [id, id + 1] {
                assert_eq!(got[&r].0, want[&r].0, "{case}: request {r}'s tokens");
                assert_eq!(got[&r].1, want[&r].1, "{case}: request {r}'s log-probs (exactly equal)");
            }
        }
    }
    assert_eq!(off.prefix_cache_stats().queries, 0);
}

#[test]
fn cached_prefixes_give_identical_tokens_and_logprobs_tp1() {
    check("models/mha_f32/hf", 1, 16, KvDtype::Auto);
}

/// A bf16 or fp8 KV cache (bf16 is the CUDA default; on the CPU their twins) rounds each value once as it is
/// written, so cached blocks are still the recomputed ones bit for bit.
#[test]
fn cached_prefixes_give_identical_tokens_and_logprobs_with_bf16_and_fp8_kv_caches() {
    check("models/gqa_bf16/hf", 1, 16, KvDtype::Bf16);
    check("models/mha_f32/hf", 1, 4, KvDtype::Fp8);
}

#[test]
fn cached_prefixes_give_identical_tokens_and_logprobs_tp2_small_blocks() {
    check("models/gqa_bf16/hf", 2, 4, KvDtype::Auto);
}

/// The chat pattern: turn 2 re-sends turn 1 and its answer; it hits the blocks of both, and a follow-up
/// after `score` (which writes the KV cache outside the scheduler and so clears the cache) still agrees.
#[test]
fn second_turn_reuses_the_first_turns_prompt_and_answer() {
    let c = &golden("gqa_bf16")[0];
    let mut outs = Vec::new();
    for cache in [true, false] {
        let mut e = engine("models/gqa_bf16/hf", 1, 4, cache, KvDtype::Auto);
        let mut out = Outs::new();
        e.add_request(req(1, c.input_ids.clone())).unwrap();
        e.run_to_completion(|o| collect(&mut out, o)).unwrap();
        let mut turn2 = c.input_ids.clone();
        turn2.extend(&out[&1].0);
        turn2.extend(&c.input_ids[1..4]);
        let before = e.prefix_cache_stats().hits;
        e.add_request(req(2, turn2.clone())).unwrap();
        e.run_to_completion(|o| collect(&mut out, o)).unwrap();
        if cache {
            // Turn 1 computed its prompt and all answer tokens but the last: those full blocks are cached.
            let computed = c.input_ids.len() + 8 - 1;
            assert_eq!((e.prefix_cache_stats().hits - before) as usize, computed / 4 * 4);
        }
        e.score(&turn2).unwrap();
        e.add_request(req(3, turn2)).unwrap();
        e.run_to_completion(|o| collect(&mut out, o)).unwrap();
        close(&out[&3], &out[&2], &format!("cache {cache}: after score"));
        // An identical prompt: all its full blocks but the last are cached; one row is recomputed.
        e.add_request(req(4, c.input_ids.clone())).unwrap();
        e.run_to_completion(|o| collect(&mut out, o)).unwrap();
        close(&out[&4], &out[&1], &format!("cache {cache}: identical prompt"));
        outs.push(out);
    }
    for r in 1..=4 {
        close(&outs[0][&r], &outs[1][&r], &format!("request {r}: cache on vs off"));
    }
}

/// Same tokens and bit-identical log-probs (see the module note).
fn close(a: &(Vec<u32>, Vec<f32>), b: &(Vec<u32>, Vec<f32>), what: &str) {
    assert_eq!(a.0, b.0, "{what}: tokens");
    assert_eq!(a.1, b.1, "{what}: log-probs (exactly equal)");
}
