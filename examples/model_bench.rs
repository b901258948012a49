//! Decode (batch 1 and 8) and prefill (128 tokens) of a TinyLlama-1.1B-shape random bf16 model on the CPU
//! engine, for each `--weights` format given: `cargo run --release --example model_bench -- f32,bf16,int8`.
//! Run it once with `TL_CPU_KERNEL=legacy` for the unpacked row-dot gemm of before.
use std::sync::Arc;
use std::time::Instant;
use triton_llama::backend::WeightFormat;
use triton_llama::config::LlamaConfig;
use triton_llama::engine::runner::{KvPlan, Runner, StepInput};
use triton_llama::loader::random::RandomSource;
use triton_llama::tensor::DType;

fn tinyllama() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 2048,
        intermediate_size: 5632,
        num_layers: 22,
        num_heads: 32,
        num_kv_heads: 4,
        head_dim: 64,
        vocab_size: 32000,
        max_position_embeddings: 2048,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: 1.0,
        bos_id: 1,
        eos_id: 2,
    }
}

/// One step: sequences `first..first + seqs` with `len` tokens from position `start`; sequence q owns blocks
/// q*per.. .
fn step(first: usize, seqs: usize, len: usize, start: usize, per: usize, bs: usize) -> StepInput {
    let mut s = StepInput::default();
    s.meta.block_size = bs;
    for q in first..first + seqs {
        let table: Vec<u32> = ((q * per) as u32..((q + 1) * per) as u32).collect();
        let ids: Vec<u32> = (0..len).map(|i| ((start + i) * 7 + q * 13) as u32 % 32000).collect();
        s.push_seq(&ids, start, &table, false);
    }
    s
}

fn main() {
    let fmts = std::env::args().nth(1).unwrap_or_else(|| "auto".into());
    let kernel = std::env::var("TL_CPU_KERNEL").unwrap_or_else(|_| "auto".into());
    for f in fmts.split(',') {
        let fmt = WeightFormat::parse(f).unwrap();
        let (bs, per) = (16, 24);
        let src = RandomSource::new(tinyllama(), DType::BF16, 1).unwrap();
        let t = Instant::now();
        let r = Runner::start_cpu_with(Arc::new(src), 1, KvPlan { num_blocks: 11 * per, block_size: bs }, fmt).unwrap();
        let load = t.elapsed().as_secs_f64();
        // Best of three 128-token prefills of fresh sequences (8..11), then decode 16 steps at batch 1 and 8
        // (sequences 0..8, after a 16-token prompt each).
        r.run(step(0, 8, 16, 0, per, bs)).unwrap();
        let mut prefill = 0f64;
        for q in 8..11 {
            let t = Instant::now();
            r.run(step(q, 1, 128, 0, per, bs)).unwrap();
            prefill = prefill.max(128.0 / t.elapsed().as_secs_f64());
        }
        let mut tok_s = Vec::new();
        for b in [1usize, 8] {
            let steps = 16;
            let t = Instant::now();
            for i in 0..steps {
                r.run(step(0, b, 1, 16 + i, per, bs)).unwrap();
            }
            tok_s.push((b * steps) as f64 / t.elapsed().as_secs_f64());
        }
        println!(
            "kernel {kernel:<10} weights {f:<9} load {load:5.1} s  prefill128 {prefill:7.1} tok/s  decode b1 {:6.1} tok/s  b8 {:6.1} tok/s",
            tok_s[0], tok_s[1]
        );
    }
}
