//! A checkpoint of deterministic pseudo-random weights of any Llama shape, generated on demand:
//! for benchmarks (the CPU bench model and the Llama-2-7B-shape GPU bench) and demos without a real model.
//! Every value is a counter-based hash of (seed, tensor name, index), so a tensor is filled in parallel
//! (seconds for 7B) and is the same whatever the thread count.
use super::{CheckpointSource, TensorInfo, canonical_names, canonical_shape};
use crate::config::LlamaConfig;
use crate::tensor::{DType, Tensor, TensorData};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use half::{bf16, f16};
use rayon::prelude::*;
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

    /// The benchmark model of the engine issue: ~44M parameters, hidden 512, 4 layers, 8 heads, 2 KV heads,
    /// vocab 32000.
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

/// SplitMix64's finaliser: a strong 64-bit mix, so hashing consecutive counters gives independent values.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` values `bias + scale * u`, u uniform in [-1, 1) from the hash of (seed, index), filled in parallel.
fn fill<T: Copy + Default + Send>(
    n: usize,
    seed: u64,
    scale: f32,
    bias: f32,
    conv: impl Fn(f32) -> T + Sync,
) -> Vec<T> {
    const CHUNK: usize = 1 << 16;
    let mut v = vec![T::default(); n];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        for (i, x) in chunk.iter_mut().enumerate() {
            let r = mix(seed.wrapping_add(((c * CHUNK + i) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            let u = (r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            *x = conv(u * scale + bias);
        }
    });
    v
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
            .map(|n| TensorInfo {
                shape: canonical_shape(&self.cfg, &n).expect("canonical"),
                dtype: self.dtype,
                origin: "random".into(),
                name: n,
            })
            .collect()
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        let shape = canonical_shape(&self.cfg, name)
            .ok_or_else(|| Error::MissingTensor { path: self.path.clone(), name: name.into() })?;
        let n: usize = shape.iter().product();
        let seed = mix(
            self.seed ^ name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
        );
        // Matrices: uniform with std ~ 1/sqrt(fan_in); norms: 1 +- 0.1.
        let (scale, bias) = if shape.len() == 1 { (0.1, 1.0) } else { ((3.0 / shape[1] as f32).sqrt(), 0.0) };
        let data = match self.dtype {
            DType::F32 => TensorData::F32(fill(n, seed, scale, bias, |x| x)),
            DType::F16 => TensorData::F16(fill(n, seed, scale, bias, f16::from_f32)),
            DType::BF16 => TensorData::BF16(fill(n, seed, scale, bias, bf16::from_f32)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_deterministic_per_tensor_and_scaled_to_the_fan_in() {
        let cfg = RandomSource::bench_config();
        let names = canonical_names(&cfg);
        let up = names.iter().find(|n| n.ends_with("w_up")).unwrap();
        let up2 = names.iter().rfind(|n| n.ends_with("w_up")).unwrap();
        let a = RandomSource::new(cfg.clone(), DType::F32, 7).unwrap();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let one_thread = pool.install(|| a.load(up).unwrap());
        let t = a.load(up).unwrap();
        assert_eq!(t.shape, vec![cfg.intermediate_size, cfg.hidden_size]);
        let v = t.to_f32_vec();
        assert_eq!(v, one_thread.to_f32_vec(), "same values whatever the thread count");
        let bound = (3.0 / cfg.hidden_size as f32).sqrt();
        assert!(v.iter().all(|x| x.abs() <= bound));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        let want = 1.0 / (cfg.hidden_size as f64).sqrt();
        assert!(mean.abs() < 1e-3 && (std - want).abs() < 0.01 * want, "mean {mean}, std {std}, want {want}");
        assert_ne!(up, up2);
        assert_ne!(v, a.load(up2).unwrap().to_f32_vec(), "tensors differ");
        assert_ne!(
            v,
            RandomSource::new(cfg.clone(), DType::F32, 8).unwrap().load(up).unwrap().to_f32_vec(),
            "seeds differ"
        );
        let norm = RandomSource::new(cfg, DType::BF16, 7).unwrap().load("final_norm").unwrap().to_f32_vec();
        assert!(norm.iter().all(|x| (0.89..=1.11).contains(x)));
    }
}
