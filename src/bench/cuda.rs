//! GPU benchmark on a random-weight model (Llama-2-7B shape by default, NV-Llama2-70B's with `--shape 70b`),
//! generated on the benchmarking machine: decode ms/step at several batch sizes, prefill tokens/s, the weight
//! bytes streamed per second at batch 1 as a ratio to a device-to-device copy, and prefill's TFLOP/s as a ratio
//! to one large GEMM of the same weight format, both measured in the same run.
pub use super::DecodePoint;
use super::{CopyBaseline, bandwidth_ratio, decode_point, step_for};
use crate::backend::cuda::CudaBackend;
use crate::backend::{Precision, WeightFormat};
use crate::config::LlamaConfig;
use crate::engine::runner::{CudaPlan, Runner};
use crate::loader::CheckpointSource;
use crate::loader::random::RandomSource;
use crate::tensor::DType;
use crate::{Error, Result};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// NV-Llama2-70B (Llama-2-70B): hidden 8192, 80 layers, 64 query / 8 KV heads, FFN 28672, vocab 32000.
pub fn llama2_70b() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 8192,
        intermediate_size: 28672,
        num_layers: 80,
        num_heads: 64,
        num_kv_heads: 8,
        head_dim: 128,
        ..RandomSource::bench_config()
    }
}

/// One tensor-parallel rank of NV-Llama2-70B at TP=2: hidden 8192, 32 query / 4 KV heads, FFN 14336, 80 layers (the
/// vocabulary kept whole).
pub fn llama2_70b_tp2_rank() -> LlamaConfig {
    LlamaConfig { num_heads: 32, num_kv_heads: 4, intermediate_size: 14336, ..llama2_70b() }
}

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
    /// How the matmul weights were held (`WeightFormat::name`: bf16, fp8).
    pub weights: String,
    pub num_layers: usize,
    /// The KV cache's dtype (`bf16`, CUDA's default, or `f32`).
    pub kv_cache: String,
    pub model_params: usize,
    pub weight_bytes: u64,
    pub load_s: f64,
    pub kv_blocks: usize,
    /// A device-to-device copy of 1 GiB.
    pub copies: Vec<CopyBaseline>,
    pub decode: Vec<DecodePoint>,
    /// Decode at batch x context (`--contexts`).
    pub decode_at_context: Vec<ContextPoint>,
    pub prefill: Vec<PrefillPoint>,
    /// See [`crate::bench::bandwidth_ratio`].
    pub batch1_bandwidth_ratio: f64,
    /// Causal prefill attention alone, tensor cores against the f32 kernel.
    pub attention: AttentionPoint,
    /// TFLOP/s of one GEMM of 4096 tokens by an 8192 x 8192 weight in this format (best of 5), the compute
    /// baseline of the prefill points' `gemm_ratio`.
    pub gemm_tflops: f64,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PrefillPoint {
    pub tokens: usize,
    pub ms: f64,
    pub tok_s: f64,
    /// 2 FLOPs per projection weight per token plus causal attention's 2 x tokens² x heads x head_dim per layer
    /// (QKᵀ and PV over half the square each), per second.
    pub tflops: f64,
    /// `tflops` over the run's `gemm_tflops`.
    pub gemm_ratio: f64,
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

/// TFLOP/s of `out [4096, 8192] = x [4096, 8192] · wᵀ` with `w` in `fmt` (activation conversion included, as in
/// the model's GEMMs), best of `reps`.
fn gemm_tflops(gpu: usize, fmt: WeightFormat, reps: usize) -> Result<f64> {
    use crate::backend::Backend;
    let (n, d) = (4096, 8192);
    let b = CudaBackend::new(gpu)?;
    let w = RandomSource::new(llama2_70b(), DType::BF16, 7)?.load("layers.0.wq")?;
    let w = b.upload_matmul(w, fmt)?;
    let x = b.alloc(n * d)?;
    let mut out = b.alloc(n * d)?;
    let mut best = f64::MAX;
    for _ in 0..reps {
        b.invalidate()?; // convert the activations every time, as each layer's first GEMM does
        b.synchronize()?;
        let t = Instant::now();
        b.gemm(&mut out, &x, &w, n)?;
        b.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n * d * d) as f64 / best / 1e12)
}

/// Decode at a batch size with every sequence at a given context (its cached K/V present but not computed: the
/// step reads it as a real one would), against the copy bandwidth with the KV it reads counted.
#[derive(Debug, Serialize)]
pub struct ContextPoint {
    pub batch: usize,
    pub context: usize,
    /// `None` with `skipped` when its KV blocks do not fit beside the weights.
    pub ms_per_step: Option<f64>,
    pub tok_s: Option<f64>,
    /// Weight bytes plus the K and V rows (bf16 or f32, the report's `kv_cache`) the step's attention reads, per step.
    pub bytes_per_step: u64,
    /// (bytes per step / step time) over the copy's read+write traffic.
    pub fraction_of_copy: Option<f64>,
    pub skipped: Option<String>,
}

/// Causal prefill attention alone: one 4096-token prompt, Llama-2-7B's 32 heads of 128, K/V in the paged cache.
#[derive(Debug, Serialize)]
pub struct AttentionPoint {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// 2 x tokens² x heads x head_dim (QKᵀ and PV over the causal half) per second, tensor-core kernel.
    pub tensor_core_tflops: f64,
    /// The same for the f32 CUDA-core kernel (`TL_PREFILL_ATTENTION=f32`), in the same run.
    pub f32_tflops: f64,
}

/// Times the prefill attention kernels on GPU `gpu` (best of 3 after a warm-up each).
fn attention_point(gpu: usize) -> Result<AttentionPoint> {
    use crate::backend::{AttnDims, Backend, KvStore, SeqMeta, StepMeta};
    let (n, nh, hd, bs) = (4096usize, 32usize, 128usize, 16usize);
    let b = CudaBackend::new(gpu)?;
    let d =
        AttnDims { n_heads: nh, n_kv_heads: nh, head_dim: hd, rope_theta: 10000.0, rope_scale: 1.0, kv: KvStore::F32 };
    let meta = StepMeta {
        positions: (0..n as u32).collect(),
        slots: (0..n as u32).collect(),
        seqs: vec![SeqMeta {
            token_start: 0,
            n_tokens: n,
            context_len: n,
            block_table: (0..(n / bs) as u32).collect(),
        }],
        block_size: bs,
    };
    let meta = meta.check()?;
    let (q, kc, vc) = (b.alloc(n * nh * hd)?, b.alloc(n * nh * hd)?, b.alloc(n * nh * hd)?);
    let mut out = b.alloc(n * nh * hd)?;
    let mut time = |exact: bool| -> Result<f64> {
        b.set_exact_prefill_attention(exact);
        b.paged_attention(&mut out, &q, &kc, &vc, meta, d)?;
        let mut best = f64::MAX;
        for _ in 0..3 {
            b.synchronize()?;
            let t = Instant::now();
            b.paged_attention(&mut out, &q, &kc, &vc, meta, d)?;
            b.synchronize()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(2.0 * (n * n * nh * hd) as f64 / best / 1e12)
    };
    let (tensor_core_tflops, f32_tflops) = (time(false)?, time(true)?);
    Ok(AttentionPoint { tokens: n, heads: nh, head_dim: hd, tensor_core_tflops, f32_tflops })
}

/// Bytes the weights take on the device in `fmt`: fp8 holds the projections as one byte per weight plus an f32
/// scale per row, the embedding and the LM head in bf16; bf16 holds every matrix in two bytes.
fn held_bytes(t: &crate::loader::TensorInfo, fmt: WeightFormat) -> u64 {
    let n = t.shape.iter().product::<usize>();
    let projection = t.shape.len() == 2 && t.name != "tok_emb" && t.name != "lm_head";
    match (fmt, projection) {
        (WeightFormat::Fp8, true) => (n + 4 * t.shape[0]) as u64,
        _ if t.shape.len() == 1 => 4 * n as u64,
        _ => 2 * n as u64,
    }
}

/// Runs the benchmark on GPU `gpu` with the matmul weights in `precision.weights` (bf16 or fp8) and its KV cache.
pub fn run(
    gpu: usize,
    cfg: LlamaConfig,
    precision: crate::backend::Precision,
    batches: &[usize],
    contexts: &[usize],
    decode_steps: usize,
    prefill_lens: &[usize],
) -> Result<CudaBenchReport> {
    let bs = 16;
    let vocab = cfg.vocab_size;
    let src = RandomSource::new(cfg.clone(), DType::BF16, 1)?;
    let fmt = precision.weights.resolve(DType::BF16);
    let weight_bytes: u64 = src.tensors().iter().map(|t| held_bytes(t, fmt)).sum();
    let emb_bytes = (cfg.vocab_size * cfg.hidden_size * 2) as u64;
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let max_prefill = prefill_lens.iter().copied().max().unwrap_or(0);
    let decode_ctx = (16 + decode_steps + 2).div_ceil(bs);
    let prefill_ctx = max_prefill.div_ceil(bs).max(1);
    let blocks = (decode_ctx * max_batch).max(prefill_ctx);
    let max_context = contexts.iter().copied().max().unwrap_or(0);
    // As many blocks as the largest context point wants; the points that do not fit are skipped, not failed.
    let wanted = blocks.max((max_context + decode_steps + 2).div_ceil(bs) * max_batch);
    let copies = vec![CopyBaseline::new("device-to-device, 1 GiB", copy_gbps(gpu, 1 << 30, 10)?)];
    let gemm = gemm_tflops(gpu, fmt, 5)?;
    let attention = attention_point(gpu)?;
    let t = Instant::now();
    let plan = CudaPlan {
        block_size: bs,
        kv_fraction: 0.9,
        max_blocks: Some(wanted),
        step_tokens: max_prefill.max(max_batch),
        step_rows: max_batch,
    };
    let runner = Runner::start_cuda_planned(Arc::new(src), &[gpu], plan, Precision { weights: fmt, ..precision })?;
    let load_s = t.elapsed().as_secs_f64();
    if runner.num_blocks < blocks {
        return Err(Error::Unavailable(format!("only {} KV blocks fit, {blocks} needed", runner.num_blocks)));
    }
    let decode = batches
        .iter()
        .map(|&b| decode_point(&runner, b, decode_steps, decode_ctx, bs, vocab, weight_bytes - emb_bytes))
        .collect::<Result<Vec<_>>>()?;
    // Every projection once per prompt token; the LM head runs for the last token only.
    let kv_value_bytes = runner.kv.bytes();
    let kv_token_bytes = (2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * kv_value_bytes) as u64;
    let fastest = copies.iter().map(|c| c.traffic_gbps).fold(0f64, f64::max);
    let mut decode_at_context = Vec::new();
    for &ctx in contexts {
        for &b in batches {
            let per_seq = (ctx + decode_steps + 2).div_ceil(bs);
            let bytes_per_step = weight_bytes - emb_bytes + b as u64 * ctx as u64 * kv_token_bytes;
            let mut p = ContextPoint {
                batch: b,
                context: ctx,
                ms_per_step: None,
                tok_s: None,
                bytes_per_step,
                fraction_of_copy: None,
                skipped: None,
            };
            if per_seq * b > runner.num_blocks {
                p.skipped = Some(format!("needs {} KV blocks, {} fit", per_seq * b, runner.num_blocks));
                decode_at_context.push(p);
                continue;
            }
            runner.run(step_for(b, 1, ctx, per_seq, bs, vocab))?; // warm-up
            let t = Instant::now();
            for i in 0..decode_steps {
                runner.run(step_for(b, 1, ctx + 1 + i, per_seq, bs, vocab))?;
            }
            let step = t.elapsed().as_secs_f64() / decode_steps.max(1) as f64;
            p.ms_per_step = Some(step * 1e3);
            p.tok_s = Some(b as f64 / step);
            p.fraction_of_copy = Some(bytes_per_step as f64 / step / 1e9 / fastest);
            decode_at_context.push(p);
        }
    }
    let matmul_params = (cfg.num_params() - 2 * cfg.vocab_size * cfg.hidden_size) as f64;
    let mut prefill = Vec::new();
    for &n in prefill_lens {
        runner.run(step_for(1, n, 0, prefill_ctx, bs, vocab))?; // warm-up at this size
        let t = Instant::now();
        runner.run(step_for(1, n, 0, prefill_ctx, bs, vocab))?;
        let s = t.elapsed().as_secs_f64();
        let attn = 2.0 * (cfg.num_layers * n * n * cfg.num_heads * cfg.head_dim) as f64;
        let tflops = (2.0 * matmul_params * n as f64 + attn) / s / 1e12;
        prefill.push(PrefillPoint { tokens: n, ms: s * 1e3, tok_s: n as f64 / s, tflops, gemm_ratio: tflops / gemm });
    }
    let device = CudaBackend::new(gpu).map(|b| crate::backend::Backend::name(&b)).unwrap_or_default();
    let (timed, switched) = CudaBackend::gemm_algo_timing();
    Ok(CudaBenchReport {
        device,
        weights: fmt.name().into(),
        num_layers: cfg.num_layers,
        kv_cache: runner.kv.name().into(),
        model_params: cfg.num_params(),
        weight_bytes,
        load_s,
        kv_blocks: runner.num_blocks,
        batch1_bandwidth_ratio: bandwidth_ratio(&decode, &copies),
        gemm_tflops: gemm,
        attention,
        copies,
        decode,
        decode_at_context,
        prefill,
        notes: vec![
            "decode and prefill steps include host scheduling-free overhead: metadata upload, logits read-back".into(),
            "activations are f32, the KV cache bf16; no CUDA graphs; prompt attention on tensor cores (bf16 mma) \
             unless TL_PREFILL_ATTENTION=f32; the norms, attention and silu_mul also write their outputs' bf16 \
             copies for the GEMMs after them (no conversion kernels in a layer)"
                .into(),
            "fp8: the norms and silu_mul quantize their outputs per token in the same kernel, the attention \
             output by a kernel of its own; the scales applied by a kernel after cuBLASLt's"
                .into(),
            format!(
                "cuBLASLt: {timed} GEMM shapes of up to 256 rows had their heuristic's candidates timed, in {switched} \
                 of them one other than its first was faster (TL_CUBLASLT_TIMING=0: the first everywhere)"
            ),
        ],
    })
}
