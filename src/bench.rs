//! CPU throughput benchmark on a random-weight model: decode tokens/s at several batch sizes, prefill
//! tokens/s, and weight bytes streamed per second as a ratio to a memory copy measured in the same run.
use crate::backend::SeqMeta;
use crate::engine::runner::{KvPlan, Runner, StepInput};
use crate::loader::CheckpointSource;
use crate::loader::random::RandomSource;
use crate::tensor::DType;
use crate::Result;
use rayon::prelude::*;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model_params: usize,
    pub weight_bytes: u64,
    pub threads: usize,
    /// Bytes copied per second by a parallel memcpy of a buffer far larger than the caches.
    pub copy_gbps: f64,
    pub copy_gbps_1thread: f64,
    pub decode: Vec<DecodePoint>,
    pub prefill_tokens: usize,
    pub prefill_tok_s: f64,
    /// Weight bytes read per second at batch 1 divided by the faster of the two copy bandwidths.
    pub batch1_bandwidth_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct DecodePoint {
    pub batch: usize,
    pub ms_per_step: f64,
    pub tok_s: f64,
    pub weight_gbps: f64,
}

/// Best-of-`reps` parallel copy bandwidth of `bytes`-sized buffers, GB/s (bytes copied / s).
fn copy_bandwidth(bytes: usize, reps: usize, parallel: bool) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let chunk = bytes / rayon::current_num_threads().max(1) / 4;
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        if parallel {
            dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
        } else {
            dst.copy_from_slice(&src);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    bytes as f64 / best / 1e9
}

fn step_for(seqs: usize, len: usize, start: usize, blocks_per_seq: usize, block_size: usize) -> StepInput {
    let mut input = StepInput::default();
    input.meta.block_size = block_size;
    for s in 0..seqs {
        let table: Vec<u32> = (0..blocks_per_seq).map(|b| (s * blocks_per_seq + b) as u32).collect();
        let token_start = input.tokens.len();
        for p in start..start + len {
            input.tokens.push(((s * 7919 + p * 31) % 30000 + 3) as u32);
            input.meta.positions.push(p as u32);
            input.meta.slots.push(table[p / block_size] * block_size as u32 + (p % block_size) as u32);
        }
        input.meta.seqs.push(SeqMeta { token_start, n_tokens: len, context_len: start + len, block_table: table });
        input.logit_rows.push(token_start + len - 1);
    }
    input
}

/// Runs the benchmark; `decode_steps` per batch size.
pub fn run(batches: &[usize], decode_steps: usize, prefill_tokens: usize) -> Result<BenchReport> {
    let cfg = RandomSource::bench_config();
    let src = RandomSource::new(cfg.clone(), DType::BF16, 1)?;
    let weight_bytes: u64 = src.tensors().iter().map(|t| (t.shape.iter().product::<usize>() * t.dtype.size()) as u64).sum();
    let emb_bytes = (cfg.vocab_size * cfg.hidden_size * 2) as u64;
    let block_size = 16;
    let max_batch = batches.iter().cloned().max().unwrap_or(1);
    let ctx = (prefill_tokens.max(16 + decode_steps + 8)).div_ceil(block_size);
    let runner = Runner::start_cpu(Arc::new(src), 1, KvPlan { num_blocks: ctx * max_batch, block_size })?;
    let copy_gbps = copy_bandwidth(256 << 20, 5, true);
    let copy_gbps_1thread = copy_bandwidth(256 << 20, 5, false);
    let mut decode = Vec::new();
    for &b in batches {
        runner.run(step_for(b, 16, 0, ctx, block_size))?; // prompt
        runner.run(step_for(b, 1, 16, ctx, block_size))?; // warm-up
        let t = Instant::now();
        for i in 0..decode_steps {
            runner.run(step_for(b, 1, 17 + i, ctx, block_size))?;
        }
        let step = t.elapsed().as_secs_f64() / decode_steps as f64;
        // Every weight except the embedding table is read once per step.
        let gbps = (weight_bytes - emb_bytes) as f64 / step / 1e9;
        decode.push(DecodePoint { batch: b, ms_per_step: step * 1e3, tok_s: b as f64 / step, weight_gbps: gbps });
    }
    let t = Instant::now();
    runner.run(step_for(1, prefill_tokens, 0, ctx, block_size))?;
    let prefill_tok_s = prefill_tokens as f64 / t.elapsed().as_secs_f64();
    let b1 = decode.iter().find(|d| d.batch == 1).map(|d| d.weight_gbps).unwrap_or(0.0);
    Ok(BenchReport {
        model_params: cfg.num_params(),
        weight_bytes,
        threads: rayon::current_num_threads(),
        copy_gbps,
        copy_gbps_1thread,
        decode,
        prefill_tokens,
        prefill_tok_s,
        batch1_bandwidth_ratio: b1 / copy_gbps.max(copy_gbps_1thread),
    })
}
