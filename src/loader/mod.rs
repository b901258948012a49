//! Checkpoint sources: one trait over Hugging Face safetensors folders and NeMo `.nemo` archives or folders,
//! yielding canonical per-layer tensors (HF layout, row-major [out, in]) in their stored dtype.
pub mod hf;
pub mod nemo;
pub mod nemo_config;
pub mod random;
pub mod tarfs;
pub mod zarr;

use crate::config::LlamaConfig;
use crate::tensor::{DType, Tensor};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::path::Path;

/// Canonical per-layer tensor names (suffixes of `layers.{i}.`).
pub const LAYER_TENSORS: [&str; 9] = ["attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down"];

/// `layers.{i}.{t}`.
pub fn layer_name(i: usize, t: &str) -> String {
    format!("layers.{i}.{t}")
}

/// Every canonical tensor name of a model, in load order.
pub fn canonical_names(cfg: &LlamaConfig) -> Vec<String> {
    canonical_names_iter(cfg).collect()
}

/// [`canonical_names`] one at a time, for checks that must stop at the first missing tensor without
/// materialising a list sized by an untrusted layer count.
pub fn canonical_names_iter(cfg: &LlamaConfig) -> impl Iterator<Item = String> + '_ {
    let layers = (0..cfg.num_layers).flat_map(|i| LAYER_TENSORS.iter().map(move |t| layer_name(i, t)));
    std::iter::once("tok_emb".to_string()).chain(layers).chain(["final_norm".to_string(), "lm_head".to_string()])
}

/// The shape a canonical tensor must have.
pub fn canonical_shape(cfg: &LlamaConfig, name: &str) -> Option<Vec<usize>> {
    let (h, f, hd, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.vocab_size);
    let t = name.rsplit('.').next()?;
    Some(match t {
        "tok_emb" | "lm_head" => vec![v, h],
        "final_norm" | "attn_norm" | "mlp_norm" => vec![h],
        "wq" => vec![cfg.num_heads * hd, h],
        "wk" | "wv" => vec![cfg.num_kv_heads * hd, h],
        "wo" => vec![h, cfg.num_heads * hd],
        "w_gate" | "w_up" => vec![f, h],
        "w_down" => vec![h, f],
        _ => return None,
    })
}

/// Dtype, shape and origin of one canonical tensor, without reading it.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Where the bytes come from (stored tensor name or zarr array), for `inspect`.
    pub origin: String,
}

/// A loaded checkpoint description: reads tensors on demand.
pub trait CheckpointSource: Send + Sync {
    /// The path the user gave.
    fn path(&self) -> &Path;
    /// Human-readable format name, e.g. `huggingface safetensors` or `nemo (tar, zarr dist-ckpt)`.
    fn format(&self) -> String;
    fn config(&self) -> &LlamaConfig;
    /// All canonical tensors with dtype and shape (after regrouping and vocab trimming).
    fn tensors(&self) -> Vec<TensorInfo>;
    /// Reads one canonical tensor in its stored dtype.
    fn load(&self, name: &str) -> Result<Tensor>;
    fn tokenizer(&self) -> Result<Tokenizer>;
    /// Whether prompts get BOS by default (NeMo chat: no; HF Llama-2: yes).
    fn default_add_bos(&self) -> bool;
    /// Stop strings the model's chat format implies (NeMo chat: `<extra_id_1>`).
    fn default_stop_strings(&self) -> Vec<String>;
    /// Detected layout facts for `inspect` (key, value).
    fn details(&self) -> Vec<(String, String)>;
    /// The chat template the checkpoint declares (NeMo chat format, or a Hugging Face `chat_template`).
    fn chat_template(&self) -> Result<Option<crate::chat::ChatTemplate>> {
        Ok(None)
    }
}

/// Opens a checkpoint, detecting its format: a `.nemo` tar, a NeMo folder (`model_config.yaml`),
/// or a Hugging Face folder (`config.json` + safetensors).
pub fn open(path: &Path) -> Result<Box<dyn CheckpointSource>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok(Box::new(nemo::NemoSource::open(path)?));
    }
    if path.join("config.json").is_file() {
        return Ok(Box::new(hf::HfSource::open(path)?));
    }
    if path.join("context").is_dir() && path.join("weights").is_dir() {
        return Err(Error::UnsupportedFormat {
            path: path.into(),
            format: "NeMo 2.0 checkpoint (context/ + weights/)".into(),
            hint: "export it to Hugging Face safetensors or a NeMo 1.x .nemo with a zarr dist-ckpt".into(),
        });
    }
    // A NeMo folder: model_config.yaml at the root or one folder down.
    Ok(Box::new(nemo::NemoSource::open(path)?))
}

/// Git LFS pointer files begin with this line.
pub const LFS_PREFIX: &[u8] = b"version https://git-lfs.github.com/spec/v1";

/// Fails with `LfsPointer` when `head` (the first bytes of a file) is a Git LFS pointer.
pub fn check_lfs(path: &Path, head: &[u8]) -> Result<()> {
    if head.starts_with(LFS_PREFIX) {
        return Err(Error::LfsPointer { path: path.into() });
    }
    Ok(())
}

/// Reads a checkpoint's canonical tensors one at a time, checking each one's shape and logging the progress of
/// the whole load.
pub struct TensorReader<'a> {
    src: &'a dyn CheckpointSource,
    progress: Progress,
}

impl<'a> TensorReader<'a> {
    /// `what` names the load in the progress lines.
    pub fn new(src: &'a dyn CheckpointSource, what: impl Into<String>) -> Self {
        let total: u64 =
            src.tensors().iter().map(|t| (t.shape.iter().product::<usize>() * t.dtype.size()) as u64).sum();
        TensorReader { src, progress: Progress::new(what, total) }
    }

    /// Canonical tensor `name`, in its stored dtype and canonical shape.
    pub fn read(&mut self, name: &str) -> Result<Tensor> {
        let t = self.src.load(name)?;
        let want = canonical_shape(self.src.config(), name)
            .ok_or_else(|| Error::Internal(format!("unknown tensor {name}")))?;
        if t.shape != want {
            return Err(Error::TensorShape {
                path: self.src.path().into(),
                name: name.into(),
                expected: want,
                got: t.shape,
            });
        }
        self.progress.add(t.nbytes() as u64);
        Ok(t)
    }
}

/// Logs load progress (% and GB/s) at most every ~5% of the bytes.
struct Progress {
    what: String,
    total: u64,
    done: u64,
    next_log: u64,
    start: std::time::Instant,
}

impl Progress {
    fn new(what: impl Into<String>, total: u64) -> Self {
        let what = what.into();
        log::info!("loading {what}: {:.2} GB", total as f64 / 1e9);
        Progress { what, total, done: 0, next_log: total / 20, start: std::time::Instant::now() }
    }

    fn add(&mut self, bytes: u64) {
        self.done += bytes;
        if self.done >= self.next_log || self.done == self.total {
            let secs = self.start.elapsed().as_secs_f64().max(1e-9);
            log::info!(
                "loading {}: {:.0}% ({:.2}/{:.2} GB, {:.2} GB/s)",
                self.what,
                100.0 * self.done as f64 / self.total.max(1) as f64,
                self.done as f64 / 1e9,
                self.total as f64 / 1e9,
                self.done as f64 / 1e9 / secs
            );
            self.next_log = self.done + self.total / 20;
        }
    }
}
