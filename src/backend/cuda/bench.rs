//! GPU benchmark on a random-weight model (Llama-2-7B shape by default), generated on the benchmarking machine:
//! decode ms/step at several batch sizes, prefill tokens/s, and the weight bytes streamed per second at batch 1
//! as a ratio to a device-to-device copy measured in the same run.
use super::CudaBackend;
use crate::backend::SeqMeta;
pub use crate::bench::DecodePoint;
use crate::config::LlamaConfig;
use crate::engine::runner::{Runner, StepInput};
use crate::loader::{CheckpointSource, TensorInfo, canonical_names, canonical_shape};
use crate::tensor::{DType, Tensor, TensorData};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Llama-2-7B: hidden 4096, 32 layers, 32 heads (MHA), FFN 11008, vocab 32000.
pub fn llama2_7b() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 4096,
        intermediate_size: 11008,
        num_layers: 32,
        num_heads: 32,
        num_kv_heads: 32,
        head_dim: 128,
        vocab_size: 32000,
        max_position_embeddings: 4096,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: 1.0,
        bos_id: 1,
        eos_id: 2,
    }
}

/// bf16 weights from a counter-based hash, filled in parallel (seconds for 7B, unlike the sequential RNG).
pub struct FastRandomSource {
    cfg: LlamaConfig,
}

impl FastRandomSource {
    pub fn new(cfg: LlamaConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(FastRandomSource { cfg })
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl CheckpointSource for FastRandomSource {
    fn path(&self) -> &Path {
        Path::new("<random bf16>")
    }
    fn format(&self) -> String {
        "random bf16 weights (hash-filled)".into()
    }
    fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
    fn tensors(&self) -> Vec<TensorInfo> {
        canonical_names(&self.cfg)
            .into_iter()
            .filter_map(|n| Some(TensorInfo { shape: canonical_shape(&self.cfg, &n)?, dtype: DType::BF16, origin: "random".into(), name: n }))
            .collect()
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        let shape = canonical_shape(&self.cfg, name).ok_or_else(|| Error::MissingTensor { path: "<random>".into(), name: name.into() })?;
        let n: usize = shape.iter().product();
        let seed = mix(name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)));
        let (scale, bias) = if shape.len() == 1 { (0.1f32, 1.0f32) } else { ((3.0 / shape[1] as f32).sqrt(), 0.0) };
        let mut v = vec![half::bf16::ZERO; n];
        v.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
            for (i, x) in chunk.iter_mut().enumerate() {
                let r = mix(seed ^ ((c << 16) + i) as u64);
                let u = (r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                *x = half::bf16::from_f32(u * scale + bias);
            }
        });
        Ok(Tensor { shape, data: TensorData::BF16(v) })
    }
    fn tokenizer(&self) -> Result<Tokenizer> {
        Err(Error::Tokenizer("a random-weight model has no tokenizer".into()))
    }
    fn default_add_bos(&self) -> bool {
        true
    }
    fn default_stop_strings(&self) -> Vec<String> {
        Vec::new()
    }
    fn details(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

#[derive(Debug, Serialize)]
pub struct CudaBenchReport {
    pub device: String,
    pub model_params: usize,
    pub weight_bytes: u64,
    pub load_s: f64,
    pub kv_blocks: usize,
    /// Device-to-device copy: bytes copied per second, and the HBM traffic it implies (read + write).
    pub copy_gbps: f64,
    pub copy_traffic_gbps: f64,
    pub decode: Vec<DecodePoint>,
    pub prefill: Vec<PrefillPoint>,
    /// Weight bytes read per second at batch 1 divided by the copy's traffic (read + write) bandwidth.
    pub batch1_bandwidth_ratio: f64,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PrefillPoint {
    pub tokens: usize,
    pub ms: f64,
    pub tok_s: f64,
}

fn step_for(seqs: usize, len: usize, start: usize, blocks_per_seq: usize, bs: usize, vocab: usize) -> StepInput {
    let mut input = StepInput::default();
    input.meta.block_size = bs;
    for s in 0..seqs {
        let table: Vec<u32> = (0..blocks_per_seq).map(|b| (s * blocks_per_seq + b) as u32).collect();
        let token_start = input.tokens.len();
        for p in start..start + len {
            input.tokens.push(((s * 7919 + p * 31) % (vocab - 3) + 3) as u32);
            input.meta.positions.push(p as u32);
            input.meta.slots.push(table[p / bs] * bs as u32 + (p % bs) as u32);
        }
        input.meta.seqs.push(SeqMeta { token_start, n_tokens: len, context_len: start + len, block_table: table });
        input.logit_rows.push(token_start + len - 1);
    }
    input
}

/// Best-of-`reps` device-to-device copy of `bytes`, in bytes copied per second.
fn copy_gbps(gpu: usize, bytes: usize, reps: usize) -> Result<f64> {
    let b = CudaBackend::new(gpu)?;
    let n = bytes / 4;
    let src = crate::backend::Backend::alloc(&b, n)?;
    let mut best = f64::MAX;
    for _ in 0..reps {
        b.synchronize()?;
        let t = Instant::now();
        let dst = b.copy_padded(&src, n, n)?;
        b.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
        drop(dst);
    }
    Ok((n * 4) as f64 / best / 1e9)
}

/// Runs the benchmark on GPU `gpu`.
pub fn run(gpu: usize, cfg: LlamaConfig, batches: &[usize], decode_steps: usize, prefill_lens: &[usize]) -> Result<CudaBenchReport> {
    let bs = 16;
    let vocab = cfg.vocab_size;
    let src = FastRandomSource::new(cfg.clone())?;
    let weight_bytes: u64 = src.tensors().iter().map(|t| (t.shape.iter().product::<usize>() * 2) as u64).sum();
    let emb_bytes = (cfg.vocab_size * cfg.hidden_size * 2) as u64;
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let max_prefill = prefill_lens.iter().copied().max().unwrap_or(0);
    let decode_ctx = (16 + decode_steps + 2).div_ceil(bs);
    let prefill_ctx = max_prefill.div_ceil(bs).max(1);
    let blocks = (decode_ctx * max_batch).max(prefill_ctx);
    let copy = copy_gbps(gpu, 1 << 30, 10)?;
    let t = Instant::now();
    let runner = Runner::start_cuda(Arc::new(src), &[gpu], bs, 0.9, Some(blocks))?;
    let load_s = t.elapsed().as_secs_f64();
    if runner.num_blocks < blocks {
        return Err(Error::Unavailable(format!("only {} KV blocks fit, {blocks} needed", runner.num_blocks)));
    }
    let mut decode = Vec::new();
    for &b in batches {
        runner.run(step_for(b, 16, 0, decode_ctx, bs, vocab))?; // prompt
        runner.run(step_for(b, 1, 16, decode_ctx, bs, vocab))?; // warm-up
        let t = Instant::now();
        for i in 0..decode_steps {
            runner.run(step_for(b, 1, 17 + i, decode_ctx, bs, vocab))?;
        }
        let step = t.elapsed().as_secs_f64() / decode_steps.max(1) as f64;
        let gbps = (weight_bytes - emb_bytes) as f64 / step / 1e9;
        decode.push(DecodePoint { batch: b, ms_per_step: step * 1e3, tok_s: b as f64 / step, weight_gbps: gbps });
    }
    let mut prefill = Vec::new();
    for &n in prefill_lens {
        runner.run(step_for(1, n, 0, prefill_ctx, bs, vocab))?; // warm-up at this size
        let t = Instant::now();
        runner.run(step_for(1, n, 0, prefill_ctx, bs, vocab))?;
        let s = t.elapsed().as_secs_f64();
        prefill.push(PrefillPoint { tokens: n, ms: s * 1e3, tok_s: n as f64 / s });
    }
    let b1 = decode.iter().find(|d| d.batch == 1).map_or(0.0, |d| d.weight_gbps);
    let device = CudaBackend::new(gpu).map(|b| crate::backend::Backend::name(&b)).unwrap_or_default();
    Ok(CudaBenchReport {
        device,
        model_params: cfg.num_params(),
        weight_bytes,
        load_s,
        kv_blocks: runner.num_blocks,
        copy_gbps: copy,
        copy_traffic_gbps: 2.0 * copy,
        decode,
        prefill,
        batch1_bandwidth_ratio: b1 / (2.0 * copy),
        notes: vec![
            "decode and prefill steps include host scheduling-free overhead: metadata upload, logits read-back".into(),
            "KV cache and activations are f32; no CUDA graphs".into(),
        ],
    })
}
