//! The model's `config.pbtxt` (as Triton's JSON): parameters -> engine and serving settings with defaults,
//! contradictions refused naming the field, and auto-complete of inputs/outputs when the config omits them.
use super::interface::{INPUTS, Limits, OUTPUTS};
use super::server::ServeSettings;
use crate::backend::{KvDtype, WeightFormat};
use crate::engine::{Device, EngineConfig};
use crate::{Error, Result};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Every parameter key the backend reads (others are refused, to catch typos).
pub const PARAMS: [&str; 23] = [
    "checkpoint",
    "device",
    "tensor_parallel_size",
    "gpu_device_ids",
    "max_input_len",
    "max_output_len",
    "max_num_seqs",
    "kv_cache_bytes",
    "max_queue_size",
    "add_bos",
    "stop_strings",
    "exclude_input_in_output",
    "default_max_tokens",
    "block_size",
    "max_batched_tokens",
    "num_blocks",
    "kv_cache_fraction",
    "enable_prefix_caching",
    "chat_template",
    "mixed_prefill_tokens",
    "weight_dtype",
    "kv_cache_dtype",
    "step_timeout_s",
];

/// Everything a model's config decides.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub checkpoint: PathBuf,
    pub engine: EngineConfig,
    pub serve: ServeSettings,
    pub limits: Limits,
    pub max_batch_size: usize,
}

fn cfg_err<T>(m: String) -> Result<T> {
    Err(Error::Config(m))
}

fn param(cfg: &Value, key: &str) -> Option<String> {
    cfg.get("parameters")?
        .get(key)?
        .get("string_value")?
        .as_str()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn num<T: std::str::FromStr>(cfg: &Value, key: &str) -> Result<Option<T>> {
    match param(cfg, key) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).or_else(|_| cfg_err(format!("parameter `{key}`: `{s}` is not a valid number"))),
    }
}

fn boolean(cfg: &Value, key: &str) -> Result<Option<bool>> {
    match param(cfg, key).as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("auto") => Ok(None),
        Some("true" | "1" | "yes") => Ok(Some(true)),
        Some("false" | "0" | "no") => Ok(Some(false)),
        Some(o) => cfg_err(format!("parameter `{key}`: expected true, false or auto, got `{o}`")),
    }
}

fn int_field(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

impl ModelSettings {
    /// Reads the settings from the model config JSON; `model_dir` anchors a relative checkpoint path. The steps
    /// run in this order, so the first problem found is the one reported.
    pub fn from_config(cfg: &Value, model_dir: &Path) -> Result<ModelSettings> {
        refuse_unknown_params(cfg)?;
        let checkpoint = checkpoint_path(cfg, model_dir)?;
        let (device, tp, gpus) = device_and_ranks(cfg)?;
        let len = Lengths::read(cfg)?;
        let (max_num_seqs, max_queue_size) = queue_sizes(cfg)?;
        let engine = engine_config(cfg, &device, tp, gpus, &len, max_num_seqs)?;
        let stop_strings = stop_strings(cfg)?;
        let chat_template = chat_template(cfg, model_dir);
        let max_batch_size = max_batch_size(cfg)?;
        let decoupled = cfg
            .get("model_transaction_policy")
            .and_then(|p| p.get("decoupled"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(ModelSettings {
            checkpoint,
            engine,
            serve: ServeSettings {
                max_input_len: len.max_input_len,
                capacity: max_num_seqs + max_queue_size,
                add_bos: boolean(cfg, "add_bos")?,
                stop_strings,
                chat_template,
                fault_panic_at_step: super::server::fault_panic_at_step(),
            },
            // The prompt byte bound needs the tokenizer: ModelInitialize sets it once the engine is loaded.
            limits: Limits {
                max_prompt_bytes: usize::MAX,
                max_input_tokens: len.max_input_len.unwrap_or(usize::MAX),
                max_output_len: len.max_output_len,
                default_max_tokens: len.default_max_tokens,
                decoupled,
                exclude_input_default: boolean(cfg, "exclude_input_in_output")?.is_none_or(|b| b),
            },
            max_batch_size,
        })
    }

    /// Models with equal keys share one engine (weights in memory once).
    pub fn engine_key(&self) -> String {
        let canon = std::fs::canonicalize(&self.checkpoint).unwrap_or_else(|_| self.checkpoint.clone());
        format!("{}|{:?}|{:?}", canon.display(), self.engine, self.serve)
    }
}

/// Refuses parameter keys the backend does not read (typos).
fn refuse_unknown_params(cfg: &Value) -> Result<()> {
    if let Some(p) = cfg.get("parameters").and_then(Value::as_object)
        && let Some(k) = p.keys().find(|k| !PARAMS.contains(&k.as_str()))
    {
        return cfg_err(format!("unknown parameter `{k}`; known: {}", PARAMS.join(", ")));
    }
    Ok(())
}

/// The `checkpoint` parameter, relative to the model's folder unless absolute.
fn checkpoint_path(cfg: &Value, model_dir: &Path) -> Result<PathBuf> {
    let Some(ckpt) = param(cfg, "checkpoint") else {
        return cfg_err("parameter `checkpoint` is required (a .nemo file or folder, or a Hugging Face folder)".into());
    };
    Ok(if Path::new(&ckpt).is_absolute() { PathBuf::from(&ckpt) } else { model_dir.join(&ckpt) })
}

/// `device` (cpu or cuda, lowercased), `tensor_parallel_size` and `gpu_device_ids`, checked against each other.
fn device_and_ranks(cfg: &Value) -> Result<(String, usize, Vec<usize>)> {
    let device = param(cfg, "device").unwrap_or_else(|| "cpu".into()).to_ascii_lowercase();
    let tp: usize = num(cfg, "tensor_parallel_size")?.unwrap_or(1);
    if tp == 0 {
        return cfg_err("parameter `tensor_parallel_size` must be >= 1".into());
    }
    let gpus: Vec<usize> = match param(cfg, "gpu_device_ids") {
        None => Vec::new(),
        Some(s) => s
            .split([',', ';'])
            .map(|x| {
                let bad = || Error::Config(format!("parameter `gpu_device_ids`: `{x}` is not a GPU index"));
                x.trim().parse().map_err(|_| bad())
            })
            .collect::<Result<_>>()?,
    };
    match device.as_str() {
        "cpu" if !gpus.is_empty() => return cfg_err("parameter `gpu_device_ids` is set but `device` is cpu".into()),
        "cpu" => {}
        "cuda" if !gpus.is_empty() && gpus.len() != tp => {
            let n = gpus.len();
            return cfg_err(format!("parameter `gpu_device_ids` lists {n} GPUs but `tensor_parallel_size` is {tp}"));
        }
        "cuda" => {}
        o => return cfg_err(format!("parameter `device` must be cpu or cuda, got `{o}`")),
    }
    Ok((device, tp, gpus))
}

/// The length limits: prompt tokens, output tokens, and the output length of a request that names none.
struct Lengths {
    max_input_len: Option<usize>,
    max_output_len: usize,
    default_max_tokens: usize,
}

impl Lengths {
    fn read(cfg: &Value) -> Result<Lengths> {
        let max_input_len: Option<usize> = num(cfg, "max_input_len")?;
        let max_output_len: usize = num(cfg, "max_output_len")?.unwrap_or(1024);
        if max_input_len == Some(0) || max_output_len == 0 {
            return cfg_err("parameters `max_input_len` and `max_output_len` must be >= 1".into());
        }
        let default_max_tokens: usize = num(cfg, "default_max_tokens")?.unwrap_or(64.min(max_output_len));
        if default_max_tokens == 0 || default_max_tokens > max_output_len {
            return cfg_err(format!(
                "parameter `default_max_tokens` ({default_max_tokens}) must be in \
                 [1, max_output_len = {max_output_len}]"
            ));
        }
        Ok(Lengths { max_input_len, max_output_len, default_max_tokens })
    }
}

/// `max_num_seqs` (running) and `max_queue_size` (waiting).
fn queue_sizes(cfg: &Value) -> Result<(usize, usize)> {
    let max_num_seqs: usize = num(cfg, "max_num_seqs")?.unwrap_or(16);
    let max_queue_size: usize = num(cfg, "max_queue_size")?.unwrap_or(64);
    if max_num_seqs == 0 {
        return cfg_err("parameter `max_num_seqs` must be >= 1".into());
    }
    Ok((max_num_seqs, max_queue_size))
}

/// The engine's sizing: device and ranks, KV cache, batch limits, prefix caching, weight format.
fn engine_config(
    cfg: &Value,
    device: &str,
    tp: usize,
    gpus: Vec<usize>,
    len: &Lengths,
    max_num_seqs: usize,
) -> Result<EngineConfig> {
    let d = EngineConfig::default();
    let kv_fraction: f64 = num(cfg, "kv_cache_fraction")?.unwrap_or(0.9);
    if !(kv_fraction > 0.0 && kv_fraction <= 1.0) {
        return cfg_err(format!("parameter `kv_cache_fraction` must be in (0, 1], got {kv_fraction}"));
    }
    let cuda = device == "cuda";
    let device = match device {
        "cuda" => Device::Cuda { gpu_ids: if gpus.is_empty() { (0..tp).collect() } else { gpus }, kv_fraction },
        _ => Device::Cpu,
    };
    Ok(EngineConfig {
        device,
        tp,
        block_size: num(cfg, "block_size")?.unwrap_or(d.block_size),
        num_blocks: num(cfg, "num_blocks")?,
        kv_cache_bytes: num(cfg, "kv_cache_bytes")?.unwrap_or(d.kv_cache_bytes),
        max_num_seqs,
        max_batched_tokens: num(cfg, "max_batched_tokens")?.unwrap_or(d.max_batched_tokens),
        mixed_prefill_tokens: num(cfg, "mixed_prefill_tokens")?,
        max_model_len: len.max_input_len.map(|i| i + len.max_output_len),
        enable_prefix_caching: boolean(cfg, "enable_prefix_caching")?.unwrap_or(d.enable_prefix_caching),
        weights: match param(cfg, "weight_dtype") {
            None => WeightFormat::Auto,
            Some(s) => WeightFormat::parse(&s).map_err(|e| Error::Config(format!("parameter `weight_dtype`: {e}")))?,
        },
        kv_cache_dtype: match param(cfg, "kv_cache_dtype") {
            None => KvDtype::Auto,
            Some(s) => KvDtype::parse(&s).map_err(|e| Error::Config(format!("parameter `kv_cache_dtype`: {e}")))?,
        },
        step_timeout: step_timeout(cfg, cuda)?,
    })
}

/// `step_timeout_s`: seconds a step may take before the engine counts a rank as stuck and stops (0: no limit).
/// Unset: 600 s on CUDA (a 2048-token prefill chunk of a 70B shape takes seconds there), no limit on the CPU
/// (a long prefill of a large model on a few cores can take minutes).
fn step_timeout(cfg: &Value, cuda: bool) -> Result<Option<std::time::Duration>> {
    let s: f64 = num(cfg, "step_timeout_s")?.unwrap_or(if cuda { 600.0 } else { 0.0 });
    if !(s >= 0.0 && s.is_finite()) {
        return cfg_err(format!("parameter `step_timeout_s` must be >= 0 (0: no limit), got {s}"));
    }
    Ok((s > 0.0).then(|| std::time::Duration::from_secs_f64(s)))
}

/// `stop_strings`: a JSON list (no empty string), or `auto` / unset for the checkpoint's.
fn stop_strings(cfg: &Value) -> Result<Option<Vec<String>>> {
    let stop_strings =
        match param(cfg, "stop_strings") {
            None => None,
            Some(s) if s == "auto" => None,
            Some(s) => Some(serde_json::from_str::<Vec<String>>(&s).map_err(|e| {
                Error::Config(format!("parameter `stop_strings`: a JSON list of strings or `auto` ({e})"))
            })?),
        };
    if stop_strings.as_ref().is_some_and(|v| v.iter().any(String::is_empty)) {
        return cfg_err("parameter `stop_strings` must not contain an empty string".into());
    }
    Ok(stop_strings)
}

/// `chat_template`: `auto` / unset for the checkpoint's, `nemo`, or a file (relative to the model's folder).
fn chat_template(cfg: &Value, model_dir: &Path) -> Option<String> {
    match param(cfg, "chat_template") {
        None => None,
        Some(s) if s == "auto" => None,
        Some(s) if s == "nemo" || Path::new(&s).is_absolute() => Some(s),
        Some(s) => Some(model_dir.join(s).to_string_lossy().into_owned()),
    }
}

/// `max_batch_size`, at least 1 (the interface has a batch dimension).
fn max_batch_size(cfg: &Value) -> Result<usize> {
    let max_batch_size = cfg.get("max_batch_size").and_then(int_field).unwrap_or(0);
    if max_batch_size < 1 {
        return cfg_err("`max_batch_size` must be >= 1: the interface has a batch dimension ([N,1] prompts)".into());
    }
    Ok(max_batch_size as usize)
}

/// Fills in the inputs, outputs and batch size when the config leaves them out. Returns whether it changed.
pub fn autocomplete(cfg: &mut Value) -> bool {
    let mut changed = false;
    let Some(obj) = cfg.as_object_mut() else { return false };
    if obj.get("max_batch_size").and_then(int_field).unwrap_or(0) == 0 {
        obj.insert("max_batch_size".into(), json!(64));
        changed = true;
    }
    let empty = |v: Option<&Value>| v.and_then(Value::as_array).is_none_or(|a| a.is_empty());
    if empty(obj.get("input")) {
        let inputs: Vec<Value> =
            INPUTS.iter().map(|(n, t, d)| json!({"name": n, "data_type": t, "dims": d, "optional": true})).collect();
        obj.insert("input".into(), Value::Array(inputs));
        changed = true;
    }
    if empty(obj.get("output")) {
        let outputs: Vec<Value> = OUTPUTS
            .iter()
            .map(|n| {
                let (t, d): (_, &[i64]) = match *n {
                    "num_input_tokens" | "num_output_tokens" => ("TYPE_INT32", &[1]),
                    "output_log_probs" => ("TYPE_FP32", &[-1]),
                    "output_tokens" => ("TYPE_STRING", &[-1]),
                    "cum_log_probs" => ("TYPE_FP32", &[1]),
                    "batch_index" | "sequence_index" => ("TYPE_INT32", &[1]),
                    "context_logits" => ("TYPE_FP32", &[-1, -1]),
                    "generation_logits" => ("TYPE_FP32", &[-1, -1, -1]),
                    "output_top_log_probs" | "prompt_top_log_probs" => ("TYPE_FP32", &[-1, -1]),
                    "output_top_token_ids" | "prompt_top_token_ids" => ("TYPE_INT32", &[-1, -1]),
                    "output_top_tokens" | "prompt_top_tokens" => ("TYPE_STRING", &[-1, -1]),
                    "prompt_log_probs" => ("TYPE_FP32", &[-1]),
                    "prompt_token_ids" => ("TYPE_INT32", &[-1]),
                    "prompt_tokens" => ("TYPE_STRING", &[-1]),
                    _ => ("TYPE_STRING", &[1]),
                };
                json!({"name": n, "data_type": t, "dims": d})
            })
            .collect();
        obj.insert("output".into(), Value::Array(outputs));
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(params: Value) -> Value {
        let p: serde_json::Map<String, Value> = params
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), json!({"string_value": v.as_str().unwrap()})))
            .collect();
        json!({"name": "m", "max_batch_size": 8, "parameters": p})
    }

    fn err(params: Value) -> String {
        ModelSettings::from_config(&cfg(params), Path::new("/models/m")).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_relative_checkpoint() {
        let s = ModelSettings::from_config(
            &cfg(json!({"checkpoint": "ckpt/hf", "max_input_len": "100", "max_output_len": "20"})),
            Path::new("/models/m"),
        )
        .unwrap();
        assert_eq!(s.checkpoint, PathBuf::from("/models/m/ckpt/hf"));
        assert_eq!(s.engine.max_model_len, Some(120));
        assert_eq!(s.limits.default_max_tokens, 20);
        assert!(s.limits.exclude_input_default && !s.limits.decoupled);
        assert_eq!(s.serve.capacity, 16 + 64);
        assert!(s.engine.enable_prefix_caching, "prefix caching is on by default");
        let read = |p| ModelSettings::from_config(&cfg(p), Path::new("/m")).unwrap();
        let off = read(json!({"checkpoint": "x", "enable_prefix_caching": "false"}));
        assert!(!off.engine.enable_prefix_caching);
        let on = read(json!({"checkpoint": "x"}));
        assert_ne!(off.engine_key(), on.engine_key(), "no engine shared across the switch");
        assert_eq!(s.engine.weights, WeightFormat::Auto);
        let int8 = cfg(json!({"checkpoint": "c", "weight_dtype": "int8"}));
        assert_eq!(ModelSettings::from_config(&int8, Path::new("/m")).unwrap().engine.weights, WeightFormat::Int8);
        let fp8 = cfg(json!({"checkpoint": "c", "weight_dtype": "fp8"}));
        assert_eq!(ModelSettings::from_config(&fp8, Path::new("/m")).unwrap().engine.weights, WeightFormat::Fp8);
        let kv = cfg(json!({"checkpoint": "c", "kv_cache_dtype": "bf16"}));
        assert_eq!(ModelSettings::from_config(&kv, Path::new("/m")).unwrap().engine.kv_cache_dtype, KvDtype::Bf16);
        let fp8 = cfg(json!({"checkpoint": "c", "kv_cache_dtype": "fp8"}));
        assert_eq!(ModelSettings::from_config(&fp8, Path::new("/m")).unwrap().engine.kv_cache_dtype, KvDtype::Fp8);
        let e = ModelSettings::from_config(&cfg(json!({"checkpoint": "c", "kv_cache_dtype": "int4"})), Path::new("/m"));
        assert!(e.unwrap_err().to_string().contains("`kv_cache_dtype`"));
    }

    #[test]
    fn step_timeout_defaults_by_device() {
        let read = |p| ModelSettings::from_config(&cfg(p), Path::new("/m")).map(|s| s.engine.step_timeout);
        let secs = |s: f64| Some(std::time::Duration::from_secs_f64(s));
        assert_eq!(read(json!({"checkpoint": "x"})).unwrap(), None, "no limit on the CPU");
        assert_eq!(read(json!({"checkpoint": "x", "device": "cuda"})).unwrap(), secs(600.0));
        assert_eq!(read(json!({"checkpoint": "x", "device": "cuda", "step_timeout_s": "0"})).unwrap(), None);
        assert_eq!(read(json!({"checkpoint": "x", "step_timeout_s": "2.5"})).unwrap(), secs(2.5));
        assert!(err(json!({"checkpoint": "x", "step_timeout_s": "-1"})).contains("`step_timeout_s` must be >= 0"));
    }

    #[test]
    fn contradictions_name_the_field() {
        assert!(err(json!({})).contains("`checkpoint` is required"));
        assert!(
            err(json!({"checkpoint": "x", "gpu_device_ids": "0,1"}))
                .contains("`gpu_device_ids` is set but `device` is cpu")
        );
        assert!(
            err(json!({"checkpoint": "x", "device": "cuda", "gpu_device_ids": "0", "tensor_parallel_size": "2"}))
                .contains("`tensor_parallel_size` is 2")
        );
        assert!(err(json!({"checkpoint": "x", "device": "tpu"})).contains("`device` must be cpu or cuda"));
        assert!(
            err(json!({"checkpoint": "x", "max_output_len": "8", "default_max_tokens": "9"}))
                .contains("`default_max_tokens`")
        );
        assert!(err(json!({"checkpoint": "x", "max_num_seq": "8"})).contains("unknown parameter `max_num_seq`"));
        // It was once accepted and never read; the CPU engine's threads are the process's rayon pool.
        assert!(err(json!({"checkpoint": "x", "engine_threads": "4"})).contains("unknown parameter `engine_threads`"));
        assert!(err(json!({"checkpoint": "x", "stop_strings": "<x>"})).contains("`stop_strings`"));
        assert!(err(json!({"checkpoint": "x", "add_bos": "maybe"})).contains("`add_bos`"));
        assert!(err(json!({"checkpoint": "x", "enable_prefix_caching": "on"})).contains("`enable_prefix_caching`"));
        assert!(err(json!({"checkpoint": "x", "weight_dtype": "fp4"})).contains("`weight_dtype`"));
    }

    #[test]
    fn autocomplete_fills_only_what_is_missing() {
        let mut c = json!({"name": "m"});
        assert!(autocomplete(&mut c));
        assert_eq!(c["max_batch_size"], 64);
        assert_eq!(c["output"][0]["name"], "outputs");
        assert_eq!(c["input"][0]["name"], "prompts");
        assert!(!autocomplete(&mut c));
    }
}
