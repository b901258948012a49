//! The Llama-2 forward pass over any `Backend` and `Communicator`: RMSNorm, split-halves RoPE, grouped-query
//! attention on a paged KV cache, SwiGLU, untied LM head. One instance is one tensor-parallel rank.
use super::shard::ShardSpec;
use crate::backend::{AttnDims, Backend, StepMeta, WeightFormat};
use crate::comm::Communicator;
use crate::config::LlamaConfig;
use crate::loader::{CheckpointSource, TensorReader, layer_name};
use crate::sampling::{LateMasks, Picked, SampleBatch};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// One layer's weights on one rank.
pub struct LayerWeights<B: Backend> {
    pub attn_norm: B::Weight,
    /// The q, k and v projections stacked `[nh hd + 2 nkv hd, h]` (this rank's heads): one GEMM for all three.
    pub w_qkv: B::Weight,
    pub wo: B::Weight,
    pub mlp_norm: B::Weight,
    /// The gate and up projections stacked `[2 f, h]` (gate rows first): one GEMM for both.
    pub w_gate_up: B::Weight,
    pub w_down: B::Weight,
}

/// One rank's paged KV cache: per layer, k and v of `num_blocks * block_size * n_kv_heads_local * head_dim` floats,
/// laid out as the backend's `rope_write_kv` and `paged_attention` agree (CUDA: one row per slot; CPU: V per slot,
/// K transposed within each block).
pub struct KvCache<B: Backend> {
    pub k: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    pub num_blocks: usize,
    pub block_size: usize,
}

/// A step's activation buffers, kept from step to step and fitted to each step's token count (`Backend::fit`):
/// a step allocates none of them once one as large has run (on CUDA no allocation or memset per step).
struct StepBufs<Buf> {
    /// The residual stream `[n, h]`.
    x: Buf,
    normed: Buf,
    /// Each token's q, k and v `[n, nh hd + 2 nkv hd]`, as the QKV GEMM writes them.
    qkv: Buf,
    /// The rotated q `[n, nh hd]`.
    q: Buf,
    attn: Buf,
    /// The output of wo / w_down `[n, h]`, added to the residual.
    proj: Buf,
    /// Gate and up of each token, `[n, 2 f]`.
    gate_up: Buf,
    act: Buf,
}

impl<Buf> StepBufs<Buf> {
    /// Buffers of no elements, fitted by the first step.
    fn empty<B: Backend<Buf = Buf>>(be: &B) -> Result<Self> {
        Ok(StepBufs {
            x: be.alloc(0)?,
            normed: be.alloc(0)?,
            qkv: be.alloc(0)?,
            q: be.alloc(0)?,
            attn: be.alloc(0)?,
            proj: be.alloc(0)?,
            gate_up: be.alloc(0)?,
            act: be.alloc(0)?,
        })
    }
}

/// Matrices of one width (the reader checked their shapes) stacked along rows; parts stored in different dtypes
/// (a checkpoint may mix them) are widened to f32 first, exactly, rather than refused.
fn stack_rows(parts: Vec<Tensor>) -> Tensor {
    if parts.windows(2).all(|p| p[0].dtype() == p[1].dtype()) {
        return Tensor::concat_rows(&parts);
    }
    let wide: Vec<Tensor> = parts.iter().map(|t| Tensor::from_f32(&t.shape, t.to_f32_vec())).collect();
    Tensor::concat_rows(&wide)
}

pub struct Llama<B: Backend, C: Communicator<B>> {
    pub cfg: LlamaConfig,
    pub shard: ShardSpec,
    pub backend: B,
    comm: C,
    tok_emb: B::Weight,
    layers: Vec<LayerWeights<B>>,
    final_norm: B::Weight,
    /// This rank's rows of the LM head (`ShardSpec::range(vocab)`).
    lm_head: B::Weight,
    dims: AttnDims,
    ffn_local: usize,
    /// The step buffers (one step at a time runs on a rank; the lock is never contended).
    bufs: std::sync::Mutex<Option<StepBufs<B::Buf>>>,
}

impl<B: Backend, C: Communicator<B>> Llama<B, C> {
    /// Reads every tensor from `src`, keeps this rank's shard, and uploads it. Logs progress.
    pub fn load(src: &dyn CheckpointSource, backend: B, comm: C) -> Result<Self> {
        Self::load_with(src, backend, comm, WeightFormat::AsLoaded)
    }

    /// `load` with the matmul weights (not the norms) held in `fmt`. Under `WeightFormat::Bf16` the embedding
    /// table is rounded to bf16 too, as the CUDA backend and llama.cpp's bf16 files hold it. Under
    /// `WeightFormat::Fp8` the LM head and the embedding stay bf16 (as TensorRT-LLM's and vLLM's FP8 checkpoints
    /// keep them): the head is 3 % of a 70B model's bytes and its logits are what sampling reads.
    /// The KV cache holds what `precision.kv` says (`KvDtype::Auto`: the backend's default).
    pub fn load_with(
        src: &dyn CheckpointSource,
        backend: B,
        comm: C,
        precision: impl Into<crate::backend::Precision>,
    ) -> Result<Self> {
        let precision = precision.into();
        let fmt = precision.weights.resolve_for(src);
        let kv = precision.kv.resolve(backend.kv_bf16_by_default());
        let cfg = src.config().clone();
        let shard = ShardSpec { rank: comm.rank(), world: comm.world_size() };
        ShardSpec::check(&cfg, shard.world)?;
        let mut reader =
            TensorReader::new(src, format!("{} rank {}/{}", src.path().display(), shard.rank, shard.world));
        let mut read = |name: &str| -> Result<Tensor> { Ok(shard.shard(&cfg, name, reader.read(name)?)) };
        let upload = |name: &str, t: Tensor| -> Result<B::Weight> {
            const MATMULS: [&str; 4] = ["w_qkv", "wo", "w_gate_up", "w_down"];
            let matmul = name == "lm_head" || MATMULS.iter().any(|m| name.ends_with(m));
            match (matmul, fmt) {
                (true, WeightFormat::Fp8) if name == "lm_head" => backend.upload_matmul(t, WeightFormat::Bf16),
                (true, _) => backend.upload_matmul(t, fmt),
                (false, WeightFormat::Bf16 | WeightFormat::Fp8) if name == "tok_emb" => backend.upload(t.to_bf16()),
                (false, _) => backend.upload(t),
            }
        };
        let tok_emb = upload("tok_emb", read("tok_emb")?)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let name = |t: &str| layer_name(i, t);
            let mut w = |t: &str| upload(&name(t), read(&name(t))?);
            let attn_norm = w("attn_norm")?;
            // This rank's q, k and v rows stacked, and its gate and up rows: each output column is what the
            // matrix's own GEMM would give.
            let qkv = stack_rows(vec![read(&name("wq"))?, read(&name("wk"))?, read(&name("wv"))?]);
            let w_qkv = upload(&name("w_qkv"), qkv)?;
            let (wo, mlp_norm) =
                (upload(&name("wo"), read(&name("wo"))?)?, upload(&name("mlp_norm"), read(&name("mlp_norm"))?)?);
            let gate_up = stack_rows(vec![read(&name("w_gate"))?, read(&name("w_up"))?]);
            let w_gate_up = upload(&name("w_gate_up"), gate_up)?;
            let w_down = upload(&name("w_down"), read(&name("w_down"))?)?;
            layers.push(LayerWeights { attn_norm, w_qkv, wo, mlp_norm, w_gate_up, w_down });
        }
        let final_norm = upload("final_norm", read("final_norm")?)?;
        let lm_head = upload("lm_head", read("lm_head")?)?;
        let dims = AttnDims {
            n_heads: cfg.num_heads / shard.world,
            n_kv_heads: cfg.num_kv_heads / shard.world,
            head_dim: cfg.head_dim,
            rope_theta: cfg.rope_theta,
            rope_scale: cfg.rope_scaling,
            kv,
        };
        let ffn_local = cfg.intermediate_size / shard.world;
        let bufs = std::sync::Mutex::new(None);
        Ok(Llama { cfg, shard, backend, comm, tok_emb, layers, final_norm, lm_head, dims, ffn_local, bufs })
    }

    /// Bytes one KV block takes on this rank, k and v together, all layers (2 per value for a bf16 cache on CUDA,
    /// 4 otherwise).
    pub fn kv_bytes_per_block(&self, block_size: usize) -> usize {
        2 * self.cfg.num_layers
            * block_size
            * self.dims.n_kv_heads
            * self.dims.head_dim
            * self.backend.kv_value_bytes(self.dims)
    }

    /// Device bytes one step of `tokens` tokens with `rows` logit rows holds at its peak (`forward`'s buffers, the
    /// GEMM inputs' bf16 and FP8 copies, the logits and their gathered parts): an analytic count, the activation
    /// reserve of the memory plan.
    pub fn step_bytes(&self, tokens: usize, rows: usize) -> usize {
        let (h, f) = (self.cfg.hidden_size, self.ffn_local);
        let (qw, kw) = (self.dims.n_heads * self.dims.head_dim, self.dims.n_kv_heads * self.dims.head_dim);
        let per_token = 4 * (3 * h + 3 * qw + 2 * kw + 3 * f) + 3 * h.max(f).max(qw);
        let vocab = self.cfg.vocab_size;
        tokens * per_token + rows * 4 * (h + 2 * vocab + vocab.div_ceil(self.shard.world))
    }

    /// What the KV cache stores.
    pub fn kv_store(&self) -> crate::backend::KvStore {
        self.dims.kv
    }

    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache<B>> {
        let n = num_blocks * block_size * self.dims.n_kv_heads * self.dims.head_dim;
        let mut k = Vec::with_capacity(self.cfg.num_layers);
        let mut v = Vec::with_capacity(self.cfg.num_layers);
        for _ in 0..self.cfg.num_layers {
            k.push(self.backend.alloc_kv(n, self.dims)?);
            v.push(self.backend.alloc_kv(n, self.dims)?);
        }
        Ok(KvCache { k, v, num_blocks, block_size })
    }

    /// Runs one step: writes the tokens' K/V into `kv` and returns full-vocabulary logits `[logit_rows.len(), V]`
    /// for the requested token rows (row-major), on the host of rank 0 (the other ranks return nothing).
    pub fn forward(
        &self,
        tokens: &[u32],
        meta: &StepMeta,
        logit_rows: &[usize],
        kv: &mut KvCache<B>,
    ) -> Result<Vec<f32>> {
        let v = self.cfg.vocab_size;
        match self.forward_logits(tokens, meta, logit_rows, kv, v)? {
            Some(l) => self.backend.read(&l, logit_rows.len() * v),
            None => Ok(Vec::new()),
        }
    }

    /// Runs one step and picks one token per logit row on the device, never one of the columns
    /// `batch.vocab..V`; only the picks cross to the host, plus the raw logits (columns `0..batch.vocab`) of the
    /// token rows `keep`, `[keep.len(), batch.vocab]` in `keep`'s order (a row may be both sampled and kept, and
    /// is kept before sampling changes it). With `late`, rank 0 waits for the guided rows' allowed-token masks
    /// after the forward pass and applies them. Rank 0 samples and returns them; the other ranks return nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_sample(
        &self,
        tokens: &[u32],
        meta: &StepMeta,
        logit_rows: &[usize],
        kv: &mut KvCache<B>,
        batch: &SampleBatch,
        keep: &[usize],
        late: Option<&LateMasks>,
    ) -> Result<(Vec<Picked>, Vec<f32>)> {
        let width = batch.vocab;
        if batch.len() != logit_rows.len() || width == 0 || width > self.cfg.vocab_size {
            return Err(Error::Internal(format!(
                "{} sampling rows for {} logit rows of width {width}",
                batch.len(),
                logit_rows.len()
            )));
        }
        // The sampled rows come first (the sampler reads the first `batch.len()` rows), then kept rows not
        // sampled; `at` maps a token row to its logits row.
        let mut rows = logit_rows.to_vec();
        let mut at: std::collections::HashMap<usize, usize> = rows.iter().enumerate().map(|(i, &r)| (r, i)).collect();
        for &r in keep {
            at.entry(r).or_insert_with(|| {
                rows.push(r);
                rows.len() - 1
            });
        }
        let Some(mut l) = self.forward_logits(tokens, meta, &rows, kv, width)? else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut kept = Vec::with_capacity(keep.len() * width);
        if !keep.is_empty() {
            let all = self.backend.read(&l, rows.len() * width)?;
            for r in keep {
                let i = at[r];
                kept.extend_from_slice(&all[i * width..(i + 1) * width]);
            }
        }
        let picks = match late {
            Some(m) => self.backend.sample(&mut l, &batch.with_allowed(&m.wait())?)?,
            None => self.backend.sample(&mut l, batch)?,
        };
        Ok((picks, kept))
    }

    /// The step's logits `[logit_rows.len(), width]` (columns `0..width` of the vocabulary) on rank 0's device;
    /// None on the other ranks and when no row is asked for.
    fn forward_logits(
        &self,
        tokens: &[u32],
        meta: &StepMeta,
        logit_rows: &[usize],
        kv: &mut KvCache<B>,
        width: usize,
    ) -> Result<Option<B::Buf>> {
        let n = tokens.len();
        if n == 0 || meta.n_tokens() != n || meta.slots.len() != n {
            return Err(Error::Internal(format!("step of {n} tokens with {} positions", meta.n_tokens())));
        }
        if meta.block_size != kv.block_size {
            return Err(Error::Internal("step block size differs from the cache's".into()));
        }
        let step = meta.check()?;
        let be = &self.backend;
        let (h, hd, eps) = (self.cfg.hidden_size, self.dims.head_dim, self.cfg.rms_norm_eps);
        let (qw, kw, f) = (self.dims.n_heads * hd, self.dims.n_kv_heads * hd, self.ffn_local);
        let mut guard = self.bufs.lock().unwrap_or_else(|p| p.into_inner());
        let bufs = match guard.as_mut() {
            Some(b) => b,
            None => guard.insert(StepBufs::empty(be)?),
        };
        let StepBufs { x, normed, qkv, q, attn, proj, gate_up, act } = bufs;
        let widths = [(&mut *x, h), (normed, h), (qkv, qw + 2 * kw), (q, qw), (attn, qw), (proj, h), (gate_up, 2 * f)];
        for (buf, len) in widths.into_iter().chain([(&mut *act, f)]) {
            be.fit(buf, n * len)?;
        }
        be.embedding(x, &self.tok_emb, tokens, h)?;
        for (i, l) in self.layers.iter().enumerate() {
            if i == 0 {
                be.rms_norm(normed, x, &l.attn_norm, n, h, eps)?;
            } else {
                be.add_rms_norm(x, proj, normed, &l.attn_norm, n, h, eps)?;
            }
            be.gemm(qkv, normed, &l.w_qkv, n)?;
            be.rope_write_kv(q, qkv, &mut kv.k[i], &mut kv.v[i], step, self.dims)?;
            be.paged_attention(attn, q, &kv.k[i], &kv.v[i], step, self.dims)?;
            be.gemm(proj, attn, &l.wo, n)?;
            self.comm.all_reduce_sum(be, proj, n * h)?;
            be.add_rms_norm(x, proj, normed, &l.mlp_norm, n, h, eps)?;
            be.gemm(gate_up, normed, &l.w_gate_up, n)?;
            be.silu_mul(act, gate_up, n, f)?;
            be.gemm(proj, act, &l.w_down, n)?;
            self.comm.all_reduce_sum(be, proj, n * h)?;
        }
        be.add_rms_norm(x, proj, normed, &self.final_norm, n, h, eps)?;
        let r = logit_rows.len();
        if r == 0 {
            return Ok(None);
        }
        if let Some(&bad) = logit_rows.iter().find(|&&i| i >= n) {
            return Err(Error::Internal(format!("logit row {bad} outside a step of {n} tokens")));
        }
        let mut last = be.alloc(r * h)?;
        be.gather_rows(&mut last, normed, logit_rows, h)?;
        // Each rank's share padded to the largest one, so the gather moves equal counts.
        let (vocab, world) = (self.cfg.vocab_size, self.shard.world);
        let w_max = vocab.div_ceil(world);
        let mut local = be.alloc(r * w_max)?;
        be.gemm(&mut local, &last, &self.lm_head, r)?;
        if world == 1 && width == vocab {
            return Ok(Some(local));
        }
        let parts = if world == 1 { local } else { self.comm.all_gather(be, &local, r * w_max)? };
        if self.shard.rank != 0 {
            return Ok(None);
        }
        let mut out = be.alloc(r * width)?;
        be.unshard_vocab(&mut out, &parts, r, vocab, world, width)?;
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    /// A checkpoint storing q in bf16 and k in f32 still loads: the stacked matrix holds each part's values.
    #[test]
    fn parts_of_mixed_dtypes_stack_widened_to_f32() {
        let q = Tensor::from_f32(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).to_bf16();
        let k = Tensor::from_f32(&[1, 3], vec![0.1, 0.2, 0.3]);
        let s = stack_rows(vec![q.clone(), k.clone()]);
        assert_eq!((s.shape.clone(), s.dtype()), (vec![3, 3], DType::F32));
        assert_eq!(s.to_f32_vec(), [q.to_f32_vec(), k.to_f32_vec()].concat());
        let same = stack_rows(vec![q.clone(), q.clone()]);
        assert_eq!(same.dtype(), DType::BF16, "one dtype stays as it is");
    }
}
