//! The device interface the model is written against: a few fused ops named like the CUDA kernels.
//! Model code never knows which device runs it.
pub mod cpu;
pub mod cpu_gemm;
#[cfg(feature = "cuda")]
pub mod cuda;

use crate::{Error, Result};
use crate::sampling::{Picked, SampleBatch};
use crate::tensor::Tensor;

/// Per-step batch layout, plain host data: tokens of several sequences, prefill and decode mixed.
#[derive(Debug, Clone, Default)]
pub struct StepMeta {
    /// Position of each token in its sequence, `[n_tokens]`.
    pub positions: Vec<u32>,
    /// KV-cache slot each token writes (`block * block_size + offset`), `[n_tokens]`.
    pub slots: Vec<u32>,
    /// One entry per sequence in the step; their token ranges are contiguous and in order.
    pub seqs: Vec<SeqMeta>,
    pub block_size: usize,
}

/// One sequence's part of a step.
#[derive(Debug, Clone, Default)]
pub struct SeqMeta {
    /// First token of this sequence in the step's token arrays.
    pub token_start: usize,
    /// Number of new tokens this step (prompt chunk, or 1 for decode).
    pub n_tokens: usize,
    /// Tokens in the KV cache once this step's tokens are written.
    pub context_len: usize,
    /// Physical KV blocks, in order, covering `context_len` tokens.
    pub block_table: Vec<u32>,
}

impl StepMeta {
    pub fn n_tokens(&self) -> usize {
        self.positions.len()
    }
}

/// Attention geometry of one tensor-parallel rank.
#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    /// Query heads on this rank.
    pub n_heads: usize,
    /// KV heads on this rank.
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    /// Positions are divided by this before RoPE (linear scaling; 1.0 = none).
    pub rope_scale: f32,
}

/// How matmul weights are held on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// In the checkpoint's dtype (bf16, f16 or f32), multiplied with f32 activations (exact).
    #[default]
    AsLoaded,
    /// bf16 weights multiplied with activations rounded to bf16 (AVX512_BF16 dot products where present, as
    /// llama.cpp's bf16 path does): faster for prefill and batches, logits move by ~1e-2 of their spread.
    Bf16,
    /// Weight-only int8, one scale per row and 32-block of k (q8_0-like), quantized at load.
    Int8,
}

impl WeightFormat {
    /// `as-loaded` (the checkpoint's dtype, f32 activations), `bf16` (bf16 dot products) or `int8`.
    pub fn parse(s: &str) -> Result<WeightFormat> {
        match s.to_ascii_lowercase().as_str() {
            "as-loaded" | "as_loaded" | "auto" => Ok(WeightFormat::AsLoaded),
            "bf16" => Ok(WeightFormat::Bf16),
            "int8" | "q8" | "q8_0" => Ok(WeightFormat::Int8),
            o => Err(Error::Config(format!("weights must be as-loaded, bf16 or int8, got `{o}`"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::AsLoaded => "as-loaded",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Int8 => "int8",
        }
    }
}

/// A compute device. `Buf` holds f32 activations or KV cache; `Weight` holds a parameter in its stored dtype.
pub trait Backend: Send + Sync + 'static {
    type Buf: Send;
    type Weight: Send + Sync;

    fn name(&self) -> String;
    /// Moves a host tensor to the device (the host copy is consumed).
    fn upload(&self, t: Tensor) -> Result<Self::Weight>;
    /// Moves a matmul weight `[m, k]` (the `w` of `gemm`) to the device in `fmt`; backends that lack a
    /// format refuse it with a clear error.
    fn upload_matmul(&self, t: Tensor, fmt: WeightFormat) -> Result<Self::Weight>;
    /// A zeroed f32 buffer of `n` elements.
    fn alloc(&self, n: usize) -> Result<Self::Buf>;
    /// Copies `src` into the start of `dst`.
    fn write(&self, dst: &mut Self::Buf, src: &[f32]) -> Result<()>;
    /// Copies the first `n` elements of `src` to the host.
    fn read(&self, src: &Self::Buf, n: usize) -> Result<Vec<f32>>;

    /// out[i, :] = table[ids[i], :]; out `[n, h]`, table `[V, h]`.
    fn embedding(&self, out: &mut Self::Buf, table: &Self::Weight, ids: &[u32], h: usize) -> Result<()>;
    /// out = rmsnorm(x) * w over rows of width h; x, out `[n, h]`, w `[h]`.
    fn rms_norm(&self, out: &mut Self::Buf, x: &Self::Buf, w: &Self::Weight, n: usize, h: usize, eps: f32) -> Result<()>;
    /// residual += x; out = rmsnorm(residual) * w. residual, x, out `[n, h]`.
    #[allow(clippy::too_many_arguments)]
    fn add_rms_norm(&self, residual: &mut Self::Buf, x: &Self::Buf, out: &mut Self::Buf, w: &Self::Weight, n: usize, h: usize, eps: f32) -> Result<()>;
    /// out = x · wᵀ; x `[n, k]`, w `[m, k]`, out `[n, m]` (f32 accumulation).
    fn gemm(&self, out: &mut Self::Buf, x: &Self::Buf, w: &Self::Weight, n: usize) -> Result<()>;
    /// Rotates q `[n, nh*hd]` and k `[n, nkv*hd]` in place (split-halves RoPE), then writes k and v
    /// into the paged caches `[blocks, block_size, nkv, hd]` at `meta.slots`.
    fn rope_write_kv(&self, q: &mut Self::Buf, k: &mut Self::Buf, v: &Self::Buf, k_cache: &mut Self::Buf, v_cache: &mut Self::Buf, meta: &StepMeta, d: AttnDims) -> Result<()>;
    /// Causal attention of each new token over its sequence's cached keys; out `[n, nh*hd]`.
    fn paged_attention(&self, out: &mut Self::Buf, q: &Self::Buf, k_cache: &Self::Buf, v_cache: &Self::Buf, meta: &StepMeta, d: AttnDims) -> Result<()>;
    /// out = silu(gate) * up, all `[len]`.
    fn silu_mul(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf, len: usize) -> Result<()>;
    /// Copies rows `rows` of x `[*, h]` into out `[rows.len(), h]`.
    fn gather_rows(&self, out: &mut Self::Buf, x: &Self::Buf, rows: &[usize], h: usize) -> Result<()>;
    /// Reassembles vocabulary-split logits: `parts` `[world, rows * w_max]` holds each rank's `[rows, w_k]`
    /// (rank k owns `ShardSpec::range(vocab)`, `w_max` is the largest share); out `[rows, width]` keeps
    /// columns `0..width` (width <= vocab).
    #[allow(clippy::too_many_arguments)]
    fn unshard_vocab(&self, out: &mut Self::Buf, parts: &Self::Buf, rows: usize, vocab: usize, world: usize, width: usize) -> Result<()>;
    /// Applies each row's penalties and masks to logits `[batch.len(), batch.vocab]` in place and picks one token
    /// per row, returned with its log-probability under the logits as they were. Only the picks leave the device.
    fn sample(&self, logits: &mut Self::Buf, batch: &SampleBatch) -> Result<Vec<Picked>>;
}
