//! The device interface the model is written against: a few fused ops named like the CUDA kernels.
//! Model code never knows which device runs it.
pub mod cpu;
mod cpu_attention;
pub mod cpu_gemm;
mod cpu_math;
pub mod cpu_mem;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod fp8;

use crate::sampling::{Picked, SampleBatch};
use crate::tensor::Tensor;
use crate::{Error, Result};

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

    /// Appends one sequence computing the tokens at `positions` (its context ends with them), cached through
    /// `table`: each token's slot is its position's block in `table` and offset in it. Returns the sequence's
    /// first row in the step.
    pub fn push_seq(&mut self, table: &[u32], positions: std::ops::Range<usize>) -> usize {
        let bs = self.block_size;
        let token_start = self.positions.len();
        for p in positions.clone() {
            self.positions.push(p as u32);
            self.slots.push(table[p / bs] * bs as u32 + (p % bs) as u32);
        }
        let (n_tokens, context_len) = (positions.len(), positions.end);
        self.seqs.push(SeqMeta { token_start, n_tokens, context_len, block_table: table.to_vec() });
        token_start
    }

    /// Checks the step is well formed on any device: one slot per token, a positive block size, each
    /// sequence's tokens a non-empty range inside the step, every token in exactly one sequence, a context at
    /// least as long as the new tokens and a block table covering it. The model checks each step once, before
    /// any backend op; backends take only a [`CheckedStep`] and check just their own buffers (cache slots,
    /// index widths).
    pub fn check(&self) -> Result<CheckedStep<'_>> {
        let bad = |m: String| Err(Error::Internal(format!("step metadata: {m}")));
        let n = self.n_tokens();
        let bs = self.block_size;
        if bs == 0 || self.slots.len() != n {
            return bad(format!("block size {bs}, {n} positions, {} slots", self.slots.len()));
        }
        let mut owned = vec![false; n];
        for (s, m) in self.seqs.iter().enumerate() {
            let end = m.token_start.checked_add(m.n_tokens).filter(|&e| e <= n && m.n_tokens > 0);
            let Some(end) = end else {
                return bad(format!("sequence {s}: tokens {}+{} outside a step of {n}", m.token_start, m.n_tokens));
            };
            if m.context_len < m.n_tokens || m.block_table.len().saturating_mul(bs) < m.context_len {
                let (ctx, len, blocks) = (m.context_len, m.n_tokens, m.block_table.len());
                return bad(format!("sequence {s}: context {ctx} with {len} new tokens and {blocks} blocks"));
            }
            for (t, o) in owned[m.token_start..end].iter_mut().enumerate() {
                if *o {
                    return bad(format!("token {} belongs to two sequences", m.token_start + t));
                }
                *o = true;
            }
        }
        if let Some(t) = owned.iter().position(|&o| !o) {
            return bad(format!("token {t} belongs to no sequence"));
        }
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(CheckedStep { meta: self, serial: SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed) })
    }
}

/// Share `[start, end)` of `rank` when `total` items are split over `world` ranks as evenly as possible (the first
/// `total % world` ranks hold one more). The vocabulary split of the LM head (`ShardSpec::range`) and the CUDA
/// kernel `tl_unshard_vocab` use this rule.
pub fn even_share(total: usize, world: usize, rank: usize) -> (usize, usize) {
    let base = total / world;
    let extra = total % world;
    let start = rank * base + rank.min(extra);
    (start, start + base + usize::from(rank < extra))
}

/// The argument check every backend's `unshard_vocab` makes: `world` ranks each own at least one of `vocab`
/// columns and `width <= vocab` are kept. Returns `w_max`, the largest share (each rank's padded slot).
pub fn unshard_shape(vocab: usize, world: usize, width: usize) -> Result<usize> {
    if world == 0 || vocab < world || width > vocab {
        return Err(Error::Internal(format!("unshard_vocab: {vocab} columns over {world} ranks, {width} kept")));
    }
    Ok(vocab.div_ceil(world))
}

/// The token-id check every backend's `embedding` makes (a bad id is the request's fault).
pub fn check_token_ids(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(id) => Err(Error::InvalidRequest(format!("token id {id} is outside the vocabulary of {vocab}"))),
        None => Ok(()),
    }
}

impl AttnDims {
    /// Query heads per KV head; an error unless the KV heads divide the query heads.
    pub fn group(&self) -> Result<usize> {
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(Error::Internal(format!("attention: unsupported heads {self:?}")));
        }
        Ok(self.n_heads / self.n_kv_heads)
    }
}

/// A step that passed [`StepMeta::check`] (only `check` makes one): token ranges, contexts and block tables are
/// consistent, so a backend indexes them without checking again.
#[derive(Debug, Clone, Copy)]
pub struct CheckedStep<'a> {
    meta: &'a StepMeta,
    /// Unique to this check: while it lives the step cannot change (it is borrowed), so a backend may key what
    /// it derives from the step (the CUDA backend's packed metadata) by it, once per step rather than per op.
    serial: u64,
}

impl CheckedStep<'_> {
    /// See the field: equal serials mean the same checked step.
    pub fn serial(&self) -> u64 {
        self.serial
    }
}

impl std::ops::Deref for CheckedStep<'_> {
    type Target = StepMeta;
    fn deref(&self) -> &StepMeta {
        self.meta
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
    /// What the KV cache stores: `rope_write_kv` rounds K and V to it as it writes them (the CUDA backend stores
    /// 4, 2 or 1 bytes per value; the CPU keeps the rounded values in f32: its twin).
    pub kv: KvStore,
}

/// The resolved KV cache dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvStore {
    #[default]
    F32,
    /// Rounded to nearest even.
    Bf16,
    /// E4M3 with scale 1 (vLLM's uncalibrated default): Llama's K and V after RoPE lie well inside +-448, where
    /// E4M3 keeps 3 mantissa bits; larger values saturate.
    Fp8,
}

impl KvStore {
    /// Bytes one value takes where the backend stores the dtype itself.
    pub fn bytes(self) -> usize {
        match self {
            KvStore::F32 => 4,
            KvStore::Bf16 => 2,
            KvStore::Fp8 => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            KvStore::F32 => "f32",
            KvStore::Bf16 => "bf16",
            KvStore::Fp8 => "fp8",
        }
    }
    /// The value the cache holds for `x` (the CPU twin's rounding, the CUDA kernels' `kv_store`).
    pub fn round(self, x: f32) -> f32 {
        match self {
            KvStore::F32 => x,
            KvStore::Bf16 => half::bf16::from_f32(x).to_f32(),
            KvStore::Fp8 => fp8::e4m3_to_f32(fp8::f32_to_e4m3(x)),
        }
    }
}

/// How a model is held: its matmul weights and its KV cache. A `WeightFormat` alone means `KvDtype::Auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Precision {
    pub weights: WeightFormat,
    pub kv: KvDtype,
}

impl From<WeightFormat> for Precision {
    fn from(weights: WeightFormat) -> Precision {
        Precision { weights, kv: KvDtype::Auto }
    }
}

/// How the KV cache holds K and V (`kv_cache_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// bf16 on CUDA (half the bytes of f32: twice the tokens per GB), f32 on the CPU (what its golden tests need).
    #[default]
    Auto,
    F32,
    Bf16,
    /// E4M3, scale 1 (`KvStore::Fp8`): a quarter of f32's bytes.
    Fp8,
}

impl KvDtype {
    /// `auto`, `f32`, `bf16` or `fp8` (also `fp8_e4m3`).
    pub fn parse(s: &str) -> Result<KvDtype> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(KvDtype::Auto),
            "f32" | "float32" => Ok(KvDtype::F32),
            "bf16" | "bfloat16" => Ok(KvDtype::Bf16),
            "fp8" | "fp8_e4m3" => Ok(KvDtype::Fp8),
            o => Err(Error::Config(format!("kv_cache_dtype must be auto, f32, bf16 or fp8, got `{o}`"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::Auto => "auto",
            KvDtype::F32 => "f32",
            KvDtype::Bf16 => "bf16",
            KvDtype::Fp8 => "fp8",
        }
    }
    /// What the cache stores on a backend whose `Auto` is bf16 (`bf16_by_default`) or f32.
    pub fn resolve(self, bf16_by_default: bool) -> KvStore {
        match self {
            KvDtype::Auto if bf16_by_default => KvStore::Bf16,
            KvDtype::Auto | KvDtype::F32 => KvStore::F32,
            KvDtype::Bf16 => KvStore::Bf16,
            KvDtype::Fp8 => KvStore::Fp8,
        }
    }
}

/// How matmul weights are held on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// The default: `Bf16` for a checkpoint whose matmul weights are bf16 (the arithmetic the GPU and llama.cpp
    /// use on the same checkpoint), `AsLoaded` otherwise (f32 and f16 checkpoints keep f32 activations).
    #[default]
    Auto,
    /// In the checkpoint's dtype (bf16, f16 or f32), multiplied with f32 activations: the exact path (`f32`),
    /// within 1e-4 of transformers.
    AsLoaded,
    /// bf16 weights multiplied with activations rounded to bf16 (AVX512_BF16 dot products where present, as
    /// llama.cpp's bf16 path does): faster for prefill and batches, logits move by ~1e-2 of their spread.
    Bf16,
    /// Weight-only int8, one scale per row and 32-block of k (q8_0-like), quantized at load.
    Int8,
    /// FP8 E4M3 weights with one scale per output channel, quantized at load, multiplied with activations
    /// quantized to E4M3 per token (one dynamic scale per row), f32 accumulation: the GPU's FP8 tensor-core path
    /// (compute capability 8.9+). The LM head and the embedding stay bf16. On the CPU only the reference twin
    /// runs it (`fp8_cpu_reference`), for tests and drift measurements.
    Fp8,
}

/// The environment variable that lets the CPU engine run `WeightFormat::Fp8` through its reference twin (exact
/// E4M3 values in bf16 through the f32 kernels: no memory or speed gain) instead of refusing it.
pub const FP8_CPU_REFERENCE_ENV: &str = "TL_CPU_FP8_REFERENCE";

/// Whether the CPU engine may run FP8 weights (only as the reference, when [`FP8_CPU_REFERENCE_ENV`] is 1).
pub fn fp8_cpu_reference() -> bool {
    std::env::var(FP8_CPU_REFERENCE_ENV).is_ok_and(|v| v == "1")
}

impl WeightFormat {
    /// `auto` (the default), `f32` (exact: the checkpoint's dtype, f32 activations; also `as-loaded`), `bf16`
    /// (bf16 dot products), `int8` or `fp8` (also `fp8_e4m3`).
    pub fn parse(s: &str) -> Result<WeightFormat> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(WeightFormat::Auto),
            "f32" | "exact" | "as-loaded" | "as_loaded" => Ok(WeightFormat::AsLoaded),
            "bf16" => Ok(WeightFormat::Bf16),
            "int8" | "q8" | "q8_0" => Ok(WeightFormat::Int8),
            "fp8" | "fp8_e4m3" | "e4m3" => Ok(WeightFormat::Fp8),
            o => Err(Error::Config(format!("weights must be auto, f32, bf16, int8 or fp8, got `{o}`"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::Auto => "auto",
            WeightFormat::AsLoaded => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Int8 => "int8",
            WeightFormat::Fp8 => "fp8",
        }
    }
    /// `Auto` made concrete for a checkpoint whose matmul weights are stored as `dtype`; the others unchanged.
    pub fn resolve(self, dtype: crate::tensor::DType) -> WeightFormat {
        match (self, dtype) {
            (WeightFormat::Auto, crate::tensor::DType::BF16) => WeightFormat::Bf16,
            (WeightFormat::Auto, _) => WeightFormat::AsLoaded,
            (f, _) => f,
        }
    }
    /// `resolve` for a checkpoint: the dtype of its first layer's query projection stands for its matmuls.
    pub fn resolve_for(self, src: &dyn crate::loader::CheckpointSource) -> WeightFormat {
        let wq = crate::loader::layer_name(0, "wq");
        match src.tensors().into_iter().find(|t| t.name == wq) {
            Some(t) => self.resolve(t.dtype),
            None => self.resolve(crate::tensor::DType::F32),
        }
    }
}

/// A compute device. `Buf` holds f32 activations or KV cache; `Weight` holds a parameter in its stored dtype.
pub trait Backend: Send + Sync + 'static {
    type Buf: Send;
    type Weight: Send + Sync;

    fn name(&self) -> String;
    /// Whether the ops run on host threads (rayon). A single-rank runner then runs its steps inside a thread
    /// pool of its own, on one of its workers, so that each op's parallel loop starts without a cross-thread
    /// wake-up.
    fn host_threads(&self) -> bool {
        false
    }
    /// Moves a host tensor to the device (the host copy is consumed).
    fn upload(&self, t: Tensor) -> Result<Self::Weight>;
    /// Moves a matmul weight `[m, k]` (the `w` of `gemm`) to the device in `fmt`; backends that lack a
    /// format refuse it with a clear error.
    fn upload_matmul(&self, t: Tensor, fmt: WeightFormat) -> Result<Self::Weight>;
    /// A zeroed f32 buffer of `n` elements.
    fn alloc(&self, n: usize) -> Result<Self::Buf>;
    /// Makes `buf`, a buffer reused from step to step, fit `n` elements: what it holds is left undefined (a step
    /// writes before it reads) and its memory kept where it can be (the CPU's resized in place to `n`, a device's
    /// replaced only by a larger one).
    fn fit(&self, buf: &mut Self::Buf, n: usize) -> Result<()>;
    /// Whether `KvDtype::Auto` means bf16 here (CUDA) rather than f32 (the CPU).
    fn kv_bf16_by_default(&self) -> bool {
        false
    }
    /// Bytes one K or V value takes in a cache of `d` (`alloc_kv`): 4 here (the rounded values kept in f32).
    fn kv_value_bytes(&self, d: AttnDims) -> usize {
        let _ = d;
        4
    }
    /// A zeroed K or V cache of `n` values for the attention geometry `d` (`d.kv`: stored as the backend stores
    /// that dtype).
    fn alloc_kv(&self, n: usize, d: AttnDims) -> Result<Self::Buf> {
        let _ = d;
        self.alloc(n)
    }
    /// Copies `src` into the start of `dst`.
    fn write(&self, dst: &mut Self::Buf, src: &[f32]) -> Result<()>;
    /// Copies the first `n` elements of `src` to the host.
    fn read(&self, src: &Self::Buf, n: usize) -> Result<Vec<f32>>;

    /// out[i, :] = table[ids[i], :]; out `[n, h]`, table `[V, h]`.
    fn embedding(&self, out: &mut Self::Buf, table: &Self::Weight, ids: &[u32], h: usize) -> Result<()>;
    /// out = rmsnorm(x) * w over rows of width h; x, out `[n, h]`, w `[h]`.
    fn rms_norm(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Weight,
        n: usize,
        h: usize,
        eps: f32,
    ) -> Result<()>;
    /// residual += x; out = rmsnorm(residual) * w. residual, x, out `[n, h]`.
    #[allow(clippy::too_many_arguments)]
    fn add_rms_norm(
        &self,
        residual: &mut Self::Buf,
        x: &Self::Buf,
        out: &mut Self::Buf,
        w: &Self::Weight,
        n: usize,
        h: usize,
        eps: f32,
    ) -> Result<()>;
    /// out = x · wᵀ; x `[n, k]`, w `[m, k]`, out `[n, m]` (f32 accumulation).
    fn gemm(&self, out: &mut Self::Buf, x: &Self::Buf, w: &Self::Weight, n: usize) -> Result<()>;
    /// From `qkv` `[n, nh*hd + 2 nkv*hd]` (each row's q, k and v side by side: the fused QKV GEMM's output):
    /// writes q rotated (split-halves RoPE) into `q` `[n, nh*hd]`, and k rotated and v into the paged caches
    /// (`blocks * block_size * nkv * hd` values each) at `meta.slots`, in the layout this backend's
    /// `paged_attention` reads (CUDA: one row per slot; CPU: K transposed within each block).
    fn rope_write_kv(
        &self,
        q: &mut Self::Buf,
        qkv: &Self::Buf,
        k_cache: &mut Self::Buf,
        v_cache: &mut Self::Buf,
        meta: CheckedStep,
        d: AttnDims,
    ) -> Result<()>;
    /// Causal attention of each new token over its sequence's cached keys; out `[n, nh*hd]`.
    fn paged_attention(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        meta: CheckedStep,
        d: AttnDims,
    ) -> Result<()>;
    /// out `[n, f]` = silu(gate) * up, where `gate_up` `[n, 2f]` holds each row's gate then its up (the output of
    /// the fused gate/up GEMM).
    fn silu_mul(&self, out: &mut Self::Buf, gate_up: &Self::Buf, n: usize, f: usize) -> Result<()>;
    /// Copies rows `rows` of x `[*, h]` into out `[rows.len(), h]`.
    fn gather_rows(&self, out: &mut Self::Buf, x: &Self::Buf, rows: &[usize], h: usize) -> Result<()>;
    /// Reassembles vocabulary-split logits: `parts` `[world, rows * w_max]` holds each rank's `[rows, w_k]`
    /// (rank k owns `ShardSpec::range(vocab)`, `w_max` is the largest share); out `[rows, width]` keeps
    /// columns `0..width` (width <= vocab).
    #[allow(clippy::too_many_arguments)]
    fn unshard_vocab(
        &self,
        out: &mut Self::Buf,
        parts: &Self::Buf,
        rows: usize,
        vocab: usize,
        world: usize,
        width: usize,
    ) -> Result<()>;
    /// Applies each row's penalties and masks to logits `[batch.len(), batch.vocab]` in place and picks one token
    /// per row, returned with its log-probability under the logits as they were. Only the picks leave the device.
    fn sample(&self, logits: &mut Self::Buf, batch: &SampleBatch) -> Result<Vec<Picked>>;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A well-formed step: a 3-token prefill in block 1 and a decode at position 7 over blocks 2 and 3.
    pub(crate) fn step() -> StepMeta {
        StepMeta {
            positions: vec![0, 1, 2, 7],
            slots: vec![16, 17, 18, 39],
            seqs: vec![
                SeqMeta { token_start: 0, n_tokens: 3, context_len: 3, block_table: vec![1] },
                SeqMeta { token_start: 3, n_tokens: 1, context_len: 8, block_table: vec![2, 3] },
            ],
            block_size: 4,
        }
    }

    /// Each check is its own step for the backends' per-step caches; copies of one check are the same step.
    #[test]
    fn each_check_has_its_own_serial() {
        let m = step();
        let (a, b) = (m.check().unwrap(), m.check().unwrap());
        let copy = a;
        assert_ne!(a.serial(), b.serial());
        assert_eq!(copy.serial(), a.serial());
    }

    /// Every malformed step is an error from the one check, before any backend could index with it.
    #[test]
    fn malformed_steps_are_errors() {
        assert!(step().check().is_ok());
        let cases: [fn(&mut StepMeta); 8] = [
            |s| s.block_size = 0,
            |s| {
                s.slots.pop();
            },
            |s| s.seqs[1].token_start = 4, // outside the step
            |s| s.seqs[1].n_tokens = 0,    // empty range
            |s| s.seqs[0].n_tokens = 2,    // token 2 in no sequence
            |s| s.seqs[1].token_start = 2, // token 2 in two sequences
            |s| s.seqs[1].context_len = 0, // context shorter than the new tokens
            |s| s.seqs[1].context_len = 9, // needs 3 blocks, has 2
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut s = step();
            f(&mut s);
            assert!(s.check().is_err(), "case {i}");
        }
        let mut s = step();
        s.seqs[0].token_start = usize::MAX; // overflowing range
        assert!(s.check().is_err());
    }
}
