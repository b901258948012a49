//! Model hyper-parameters, as read from any checkpoint format.

/// Upper bounds `validate` enforces on each dimension: generous (Llama-2-70B has hidden 8192, intermediate 28672,
/// 80 layers, 64 heads, head_dim 128, vocab 32000, 4096 positions; these allow 8x to 256x that), but a hostile
/// config cannot make the loader or the KV sizing allocate by a giant dimension.
pub mod caps {
    pub const HIDDEN_SIZE: usize = 1 << 16;
    pub const INTERMEDIATE_SIZE: usize = 1 << 18;
    pub const NUM_LAYERS: usize = 1024;
    pub const NUM_HEADS: usize = 1024;
    pub const HEAD_DIM: usize = 1024;
    pub const VOCAB_SIZE: usize = 1 << 22;
    pub const MAX_POSITION_EMBEDDINGS: usize = 1 << 20;
}

/// Llama-2 architecture parameters (HF `config.json` or NeMo `model_config.yaml`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// H: model width.
    pub hidden_size: usize,
    /// F: SwiGLU inner width.
    pub intermediate_size: usize,
    /// L: number of transformer layers.
    pub num_layers: usize,
    /// nq: query heads.
    pub num_heads: usize,
    /// nkv: key/value heads (GQA groups); equals nq for MHA.
    pub num_kv_heads: usize,
    /// hd: width of one head.
    pub head_dim: usize,
    /// V: rows of the embedding and the LM head kept by the loader (tokenizer vocab).
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base (theta).
    pub rope_theta: f32,
    /// Linear RoPE scaling: positions are divided by this factor (1.0 = none).
    pub rope_scaling: f32,
    pub bos_id: u32,
    pub eos_id: u32,
}

impl LlamaConfig {
    /// Query heads per KV head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> crate::Result<()> {
        let e = |m: String| Err(crate::Error::Config(m));
        if self.hidden_size == 0 || self.num_layers == 0 || self.num_heads == 0 || self.num_kv_heads == 0 {
            return e(format!("zero-sized model dimension in {self:?}"));
        }
        for (name, v, cap) in [
            ("hidden_size", self.hidden_size, caps::HIDDEN_SIZE),
            ("intermediate_size", self.intermediate_size, caps::INTERMEDIATE_SIZE),
            ("num_layers", self.num_layers, caps::NUM_LAYERS),
            ("num_heads", self.num_heads, caps::NUM_HEADS),
            ("num_kv_heads", self.num_kv_heads, caps::NUM_HEADS),
            ("head_dim", self.head_dim, caps::HEAD_DIM),
            ("vocab_size", self.vocab_size, caps::VOCAB_SIZE),
            ("max_position_embeddings", self.max_position_embeddings, caps::MAX_POSITION_EMBEDDINGS),
        ] {
            if v > cap {
                return e(format!("{name} {v} is above this loader's limit of {cap}"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return e(format!("num_heads {} is not a multiple of num_kv_heads {}", self.num_heads, self.num_kv_heads));
        }
        if !self.head_dim.is_multiple_of(2) {
            return e(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        let positive = |x: f32| x.is_finite() && x > 0.0;
        if !positive(self.rope_theta) || !positive(self.rope_scaling) {
            return e(format!("RoPE base {} and scaling {} must be positive", self.rope_theta, self.rope_scaling));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return e(format!("rms_norm_eps {} must be a non-negative number", self.rms_norm_eps));
        }
        if self.max_position_embeddings < 2 {
            return e(format!("max_position_embeddings {} leaves no room to generate", self.max_position_embeddings));
        }
        if self.vocab_size == 0 || self.intermediate_size == 0 {
            return e("vocab_size and intermediate_size must be positive".into());
        }
        // Every tensor size and offset is computed from these; a hostile config must not overflow them.
        if self.checked_params().and_then(|p| p.checked_mul(4)).is_none() {
            return e(format!("model dimensions overflow: {self:?}"));
        }
        Ok(())
    }

    /// Number of weight parameters (embedding, layers, norm, head); `None` if it overflows.
    fn checked_params(&self) -> Option<usize> {
        let (h, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = h.checked_mul(self.num_heads)?.checked_mul(hd)?.checked_mul(2)?;
        let kv = h.checked_mul(self.num_kv_heads)?.checked_mul(hd)?.checked_mul(2)?;
        let mlp = h.checked_mul(f)?.checked_mul(3)?;
        let layer = q.checked_add(kv)?.checked_add(mlp)?.checked_add(h.checked_mul(2)?)?;
        let emb = self.vocab_size.checked_mul(h)?.checked_mul(2)?;
        self.num_layers.checked_mul(layer)?.checked_add(emb)?.checked_add(h)
    }

    /// Number of weight parameters (embedding, layers, norm, head); saturates for configs `validate` refuses.
    pub fn num_params(&self) -> usize {
        self.checked_params().unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::{LlamaConfig, caps};

    fn tiny() -> LlamaConfig {
        LlamaConfig {
            hidden_size: 64,
            intermediate_size: 176,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 4,
            head_dim: 16,
            vocab_size: 1000,
            max_position_embeddings: 256,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: 1.0,
            bos_id: 1,
            eos_id: 2,
        }
    }

    #[test]
    fn overflowing_dimensions_are_refused() {
        // fuzz/regressions/hf_config: `num_attention_heads` 2^62 overflowed canonical_shape.
        tiny().validate().unwrap();
        assert!(LlamaConfig { num_heads: 1 << 62, num_kv_heads: 1 << 62, ..tiny() }.validate().is_err());
        assert!(LlamaConfig { vocab_size: usize::MAX / 2, ..tiny() }.validate().is_err());
        assert!(LlamaConfig { num_layers: usize::MAX / 1000, ..tiny() }.validate().is_err());
        assert_eq!(LlamaConfig { num_layers: usize::MAX, ..tiny() }.num_params(), usize::MAX);
    }

    #[test]
    fn dimensions_above_the_caps_are_refused_and_70b_passes() {
        let l70b = LlamaConfig {
            hidden_size: 8192,
            intermediate_size: 28672,
            num_layers: 80,
            num_heads: 64,
            num_kv_heads: 8,
            head_dim: 128,
            vocab_size: 32000,
            max_position_embeddings: 4096,
            ..tiny()
        };
        l70b.validate().unwrap();
        let cases: [(&str, LlamaConfig); 7] = [
            ("hidden_size", LlamaConfig { hidden_size: caps::HIDDEN_SIZE + 1, ..tiny() }),
            ("intermediate_size", LlamaConfig { intermediate_size: caps::INTERMEDIATE_SIZE + 1, ..tiny() }),
            ("num_layers", LlamaConfig { num_layers: caps::NUM_LAYERS + 1, ..tiny() }),
            ("num_heads", LlamaConfig { num_heads: 2048, num_kv_heads: 4, ..tiny() }),
            ("head_dim", LlamaConfig { head_dim: caps::HEAD_DIM + 2, ..tiny() }),
            ("vocab_size", LlamaConfig { vocab_size: caps::VOCAB_SIZE + 1, ..tiny() }),
            (
                "max_position_embeddings",
                LlamaConfig { max_position_embeddings: caps::MAX_POSITION_EMBEDDINGS + 1, ..tiny() },
            ),
        ];
        for (name, c) in cases {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("limit"), "{name}: {err}");
        }
        // At the caps themselves each is accepted (the overflow check still applies on top).
        LlamaConfig { max_position_embeddings: caps::MAX_POSITION_EMBEDDINGS, vocab_size: caps::VOCAB_SIZE, ..tiny() }
            .validate()
            .unwrap();
    }
}
