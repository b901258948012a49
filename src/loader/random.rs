//! A checkpoint of deterministic pseudo-random weights of any Llama shape, generated on demand:
//! for benchmarks and demos without a real model.
use super::{CheckpointSource, TensorInfo, canonical_names, canonical_shape};
use crate::config::LlamaConfig;
use crate::sampling::Rng;
use crate::tensor::{DType, Tensor, TensorData};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use half::{bf16, f16};
use std::path::{Path, PathBuf};

pub struct RandomSource {
    cfg: LlamaConfig,
    dtype: DType,
    seed: u64,
    path: PathBuf,
}

impl RandomSource {
    pub fn new(cfg: LlamaConfig, dtype: DType, seed: u64) -> Result<Self> {
        cfg.validate()?;
        Ok(RandomSource { cfg, dtype, seed, path: PathBuf::from("<random>") })
    }

    /// The benchmark model of the engine issue: ~44M parameters, hidden 512, 4 layers, 8 heads, 2 KV heads, vocab 32000.
    pub fn bench_config() -> LlamaConfig {
        LlamaConfig {
            hidden_size: 512,
            intermediate_size: 1408,
            num_layers: 4,
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 64,
            vocab_size: 32000,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: 1.0,
            bos_id: 1,
            eos_id: 2,
        }
    }
}

impl CheckpointSource for RandomSource {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format(&self) -> String {
        format!("random {} weights (seed {})", self.dtype.name(), self.seed)
    }
    fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
    fn tensors(&self) -> Vec<TensorInfo> {
        canonical_names(&self.cfg)
            .into_iter()
            .map(|n| TensorInfo { shape: canonical_shape(&self.cfg, &n).expect("canonical"), dtype: self.dtype, origin: "random".into(), name: n })
            .collect()
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        let shape = canonical_shape(&self.cfg, name).ok_or_else(|| Error::MissingTensor { path: self.path.clone(), name: name.into() })?;
        let n: usize = shape.iter().product();
        let mut rng = Rng::new(self.seed ^ name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3)));
        let is_norm = shape.len() == 1;
        // Matrices: uniform with std ~ 1/sqrt(fan_in); norms: 1 +- 0.1.
        let scale = if is_norm { 0.1 } else { (3.0 / shape[1] as f64).sqrt() };
        let vals = (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale + if is_norm { 1.0 } else { 0.0 }) as f32);
        let data = match self.dtype {
            DType::F32 => TensorData::F32(vals.collect()),
            DType::F16 => TensorData::F16(vals.map(f16::from_f32).collect()),
            DType::BF16 => TensorData::BF16(vals.map(bf16::from_f32).collect()),
        };
        Ok(Tensor { shape, data })
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
