//! Model hyper-parameters, as read from any checkpoint format.

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
        if self.num_heads % self.num_kv_heads != 0 {
            return e(format!("num_heads {} is not a multiple of num_kv_heads {}", self.num_heads, self.num_kv_heads));
        }
        if self.head_dim % 2 != 0 {
            return e(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) || !(self.rope_scaling.is_finite() && self.rope_scaling > 0.0) {
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
        Ok(())
    }

    /// Number of weight parameters (embedding, layers, norm, head).
    pub fn num_params(&self) -> usize {
        let (h, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let attn = h * self.num_heads * hd * 2 + h * self.num_kv_heads * hd * 2;
        let layer = attn + 3 * h * f + 2 * h;
        self.num_layers * layer + 2 * self.vocab_size * h + h
    }
}
