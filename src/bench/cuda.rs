//! GPU benchmark on a random-weight model (Llama-2-7B shape by default), generated on the benchmarking machine:
//! decode ms/step at several batch sizes, prefill tokens/s, and the weight bytes streamed per second at batch 1
//! as a ratio to a device-to-device copy measured in the same run.
pub use super::DecodePoint;
use super::{CopyBaseline, bandwidth_ratio, decode_point, step_for};
use crate::backend::cuda::CudaBackend;
use crate::config::LlamaConfig;
use crate::engine::runner::Runner;
use crate::loader::CheckpointSource;
use crate::loader::random::RandomSource;
use crate::tensor::DType;
use crate::{Error, Result};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// Llama-2-7B: hidden 4096, 32 layers, 32 heads (MHA), FFN 11008, vocab 32000 (the rest as the CPU bench model).
pub fn llama2_7b() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 4096,
        intermediate_size: 11008,
        num_layers: 32,
        num_heads: 32,
        num_kv_heads: 32,
        head_dim: 128,
        ..RandomSource::bench_config()
    }
}

#[derive(Debug, Serialize)]
pub struct CudaBenchReport {
    pub device: String,
    pub model_params: usize,
    pub weight_bytes: u64,
    pub load_s: f64,
    pub kv_blocks: usize,
    /// A device-to-device copy of 1 GiB.
    pub copies: Vec<CopyBaseline>,
    pub decode: Vec<DecodePoint>,
    pub prefill: Vec<PrefillPoint>,
    /// See [`crate::bench::bandwidth_ratio`].
    pub batch1_bandwidth_ratio: f64,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PrefillPoint {
    pub tokens: usize,
    pub ms: f64,
    pub tok_s: f64,
}

/// Best-of-`reps` device-to-device copy of `bytes`, in bytes copied per second.
fn copy_gbps(gpu: usize, bytes: usize, reps: usize) -> Result<f64> {
    let b = CudaBackend::new(gpu)?;
    let n = bytes / 4;
    let src = crate::backend::Backend::alloc(&b, n)?;
    let mut dst = crate::backend::Backend::alloc(&b, n)?;
    let mut best = f64::MAX;
    for _ in 0..reps {
        b.synchronize()?;
        let t = Instant::now();
        b.copy_into(&mut dst, &src, n)?; // allocation stays outside the timed region
        b.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((n * 4) as f64 / best / 1e9)
}

/// Runs the benchmark on GPU `gpu`.
pub fn run(
    gpu: usize,
    cfg: LlamaConfig,
    batches: &[usize],
    decode_steps: usize,
    prefill_lens: &[usize],
) -> Result<CudaBenchReport> {
    let bs = 16;
    let vocab = cfg.vocab_size;
    let src = RandomSource::new(cfg.clone(), DType::BF16, 1)?;
    let weight_bytes: u64 = src.tensors().iter().map(|t| (t.shape.iter().product::<usize>() * 2) as u64).sum();
    let emb_bytes = (cfg.vocab_size * cfg.hidden_size * 2) as u64;
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let max_prefill = prefill_lens.iter().copied().max().unwrap_or(0);
    let decode_ctx = (16 + decode_steps + 2).div_ceil(bs);
    let prefill_ctx = max_prefill.div_ceil(bs).max(1);
    let blocks = (decode_ctx * max_batch).max(prefill_ctx);
    let copies = vec![CopyBaseline::new("device-to-device, 1 GiB", copy_gbps(gpu, 1 << 30, 10)?)];
    let t = Instant::now();
    let runner = Runner::start_cuda(Arc::new(src), &[gpu], bs, 0.9, Some(blocks))?;
    let load_s = t.elapsed().as_secs_f64();
    if runner.num_blocks < blocks {
        return Err(Error::Unavailable(format!("only {} KV blocks fit, {blocks} needed", runner.num_blocks)));
    }
    let decode = batches
        .iter()
        .map(|&b| decode_point(&runner, b, decode_steps, decode_ctx, bs, vocab, weight_bytes - emb_bytes))
        .collect::<Result<Vec<_>>>()?;
    let mut prefill = Vec::new();
    for &n in prefill_lens {
        runner.run(step_for(1, n, 0, prefill_ctx, bs, vocab))?; // warm-up at this size
        let t = Instant::now();
        runner.run(step_for(1, n, 0, prefill_ctx, bs, vocab))?;
        let s = t.elapsed().as_secs_f64();
        prefill.push(PrefillPoint { tokens: n, ms: s * 1e3, tok_s: n as f64 / s });
    }
    let device = CudaBackend::new(gpu).map(|b| crate::backend::Backend::name(&b)).unwrap_or_default();
    Ok(CudaBenchReport {
        device,
        model_params: cfg.num_params(),
        weight_bytes,
        load_s,
        kv_blocks: runner.num_blocks,
        batch1_bandwidth_ratio: bandwidth_ratio(&decode, &copies),
        copies,
        decode,
        prefill,
        notes: vec![
            "decode and prefill steps include host scheduling-free overhead: metadata upload, logits read-back".into(),
            "KV cache and activations are f32; no CUDA graphs".into(),
        ],
    })
}
