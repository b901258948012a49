//! Hugging Face Llama folders: `config.json`, one `model.safetensors` or a sharded index, f32/f16/bf16.
//! Tensors are read at their offsets with positioned reads straight into their final buffer.
use super::{CheckpointSource, TensorInfo, canonical_names, canonical_names_iter, canonical_shape, check_lfs};
use crate::config::LlamaConfig;
use crate::tensor::{DType, Tensor};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where one stored tensor lives.
#[derive(Debug, Clone)]
pub struct Stored {
    pub file: PathBuf,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in `file`.
    pub offset: u64,
}

pub struct HfSource {
    path: PathBuf,
    cfg: LlamaConfig,
    /// Stored HF name -> location.
    stored: BTreeMap<String, Stored>,
    tied: bool,
    shards: usize,
}

/// Upper bound on a safetensors JSON header; larger is treated as corrupt.
const MAX_HEADER: u64 = 100 << 20;

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    check_lfs(path, &bytes)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::ckpt(path, format!("invalid JSON: {e}")))
}

fn parse_config(path: &Path, v: &Value) -> Result<(LlamaConfig, bool)> {
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    let req = |k: &str| -> Result<usize> {
        get(k)
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| Error::ckpt(path, format!("missing or non-integer `{k}`")))
    };
    if let Some(mt) = get("model_type").and_then(Value::as_str)
        && mt != "llama"
    {
        return Err(Error::UnsupportedFormat {
            path: path.into(),
            format: format!("model_type `{mt}`"),
            hint: "only Llama checkpoints are served".into(),
        });
    }
    if get("attention_bias").and_then(Value::as_bool) == Some(true)
        || get("mlp_bias").and_then(Value::as_bool) == Some(true)
    {
        return Err(Error::UnsupportedFormat {
            path: path.into(),
            format: "Llama with biases".into(),
            hint: "Llama-2 has no bias terms".into(),
        });
    }
    if let Some(act) = get("hidden_act").and_then(Value::as_str)
        && act != "silu"
    {
        return Err(Error::UnsupportedFormat {
            path: path.into(),
            format: format!("hidden_act `{act}`"),
            hint: "Llama-2 uses silu".into(),
        });
    }
    let hidden = req("hidden_size")?;
    let heads = req("num_attention_heads")?;
    let kv = get("num_key_value_heads").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(heads);
    let head_dim = get("head_dim").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(hidden / heads.max(1));
    let mut rope_scaling = 1.0;
    if let Some(rs) = get("rope_scaling") {
        let ty = rs.get("type").or_else(|| rs.get("rope_type")).and_then(Value::as_str).unwrap_or("");
        let factor = rs.get("factor").and_then(Value::as_f64).unwrap_or(1.0);
        if ty != "linear" && ty != "default" {
            return Err(Error::UnsupportedFormat {
                path: path.into(),
                format: format!("rope_scaling type `{ty}`"),
                hint: "only linear RoPE scaling is implemented".into(),
            });
        }
        if ty == "linear" {
            rope_scaling = factor as f32;
        }
    }
    let cfg = LlamaConfig {
        hidden_size: hidden,
        intermediate_size: req("intermediate_size")?,
        num_layers: req("num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim,
        vocab_size: req("vocab_size")?,
        max_position_embeddings: get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(4096) as usize,
        rms_norm_eps: get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6) as f32,
        rope_theta: get("rope_theta")
            .or_else(|| get("rope_parameters").and_then(|r| r.get("rope_theta")))
            .and_then(Value::as_f64)
            .unwrap_or(10000.0) as f32,
        rope_scaling,
        bos_id: get("bos_token_id").and_then(Value::as_u64).unwrap_or(1) as u32,
        eos_id: get("eos_token_id").and_then(Value::as_u64).unwrap_or(2) as u32,
    };
    cfg.validate().map_err(|e| Error::ckpt(path, e.to_string()))?;
    let tied = get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false);
    Ok((cfg, tied))
}

/// Reads a safetensors header from disk and indexes its tensors (see [`parse_header`]).
fn index_safetensors(file: &Path, out: &mut BTreeMap<String, Stored>) -> Result<()> {
    let f = File::open(file).map_err(|e| Error::io(file, e))?;
    let len = f.metadata().map_err(|e| Error::io(file, e))?.len();
    let mut head = [0u8; 8];
    f.read_exact_at(&mut head, 0).map_err(|_| Error::ckpt(file, "file too short for a safetensors header"))?;
    check_lfs(file, &head)?;
    let n = match header_len(file, head, len) {
        Ok(n) => n,
        Err(e) => {
            if len < 200 {
                let mut all = vec![0u8; len as usize];
                let _ = f.read_exact_at(&mut all, 0);
                check_lfs(file, &all)?;
            }
            return Err(e);
        }
    };
    let mut hdr = vec![0u8; n as usize];
    f.read_exact_at(&mut hdr, 8).map_err(|e| Error::io(file, e))?;
    out.extend(parse_header(file, &hdr, len)?);
    Ok(())
}

/// The JSON header length `n` from the 8-byte little-endian prefix of a `len`-byte safetensors file,
/// checked against `MAX_HEADER` and the file size before anything is allocated.
fn header_len(file: &Path, head: [u8; 8], len: u64) -> Result<u64> {
    let n = u64::from_le_bytes(head);
    if n > MAX_HEADER || n.checked_add(8).is_none_or(|end| end > len) {
        return Err(Error::ckpt(file, format!("safetensors header length {n} is invalid for a {len}-byte file")));
    }
    Ok(n)
}

/// Indexes a whole safetensors file held in memory (length prefix, JSON header, data), exactly as the
/// loader does for a file on disk; `file` names it in errors. Used by the fuzz targets.
pub fn parse_file_bytes(file: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Stored>> {
    let head: [u8; 8] = bytes
        .get(..8)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| Error::ckpt(file, "file too short for a safetensors header"))?;
    check_lfs(file, &head)?;
    let n = header_len(file, head, bytes.len() as u64)?;
    parse_header(file, &bytes[8..8 + n as usize], bytes.len() as u64)
}

/// Parses the JSON header `hdr` (bytes `8..8+hdr.len()`) of a `len`-byte safetensors file and checks that
/// every float tensor lies inside the file with a byte size matching its shape; other dtypes are skipped.
pub fn parse_header(file: &Path, hdr: &[u8], len: u64) -> Result<BTreeMap<String, Stored>> {
    let mut out = BTreeMap::new();
    let v: Value =
        serde_json::from_slice(hdr).map_err(|e| Error::ckpt(file, format!("invalid safetensors header: {e}")))?;
    let obj = v.as_object().ok_or_else(|| Error::ckpt(file, "safetensors header is not an object"))?;
    let data_start = 8 + hdr.len() as u64;
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = |m: &str| Error::ckpt(file, format!("tensor `{name}`: {m}"));
        let dtype = match t.get("dtype").and_then(Value::as_str) {
            Some("F32") => DType::F32,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            Some(d) => {
                // Non-float tensors (e.g. int buffers) are not weights we use; record nothing.
                log::debug!("{}: skipping tensor `{name}` of dtype {d}", file.display());
                continue;
            }
            None => return Err(bad("missing dtype")),
        };
        let shape: Vec<usize> = t
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("missing shape"))?
            .iter()
            .map(|x| x.as_u64().map(|x| x as usize).ok_or_else(|| bad("non-integer shape")))
            .collect::<Result<_>>()?;
        let offs = t.get("data_offsets").and_then(Value::as_array).ok_or_else(|| bad("missing data_offsets"))?;
        let (b, e) = match (offs.first().and_then(Value::as_u64), offs.get(1).and_then(Value::as_u64)) {
            (Some(b), Some(e)) if b <= e => (b, e),
            _ => return Err(bad("invalid data_offsets")),
        };
        let numel =
            shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).ok_or_else(|| bad("shape overflows"))?;
        let want = numel.checked_mul(dtype.size() as u64).ok_or_else(|| bad("shape overflows"))?;
        if e - b != want {
            return Err(bad(&format!(
                "byte size {} does not match shape {shape:?} of {} ({want} bytes)",
                e - b,
                dtype.name()
            )));
        }
        // Offsets are untrusted u64s: `data_start + e` may overflow (and would then pass a wrapped check).
        match data_start.checked_add(e) {
            Some(end) if end <= len => {}
            end => {
                return Err(Error::Truncated {
                    path: file.into(),
                    name: name.clone(),
                    expected: end.unwrap_or(u64::MAX),
                    got: len,
                });
            }
        }
        out.insert(name.clone(), Stored { file: file.into(), dtype, shape, offset: data_start + b });
    }
    Ok(out)
}

impl HfSource {
    pub fn open(path: &Path) -> Result<HfSource> {
        let cfg_path = path.join("config.json");
        let (cfg, tied) = parse_config(&cfg_path, &read_json(&cfg_path)?)?;
        let mut stored = BTreeMap::new();
        let index = path.join("model.safetensors.index.json");
        let shards = if index.is_file() {
            let v = read_json(&index)?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| Error::ckpt(&index, "missing `weight_map`"))?;
            let mut files: Vec<&str> = map.values().filter_map(Value::as_str).collect();
            files.sort();
            files.dedup();
            for f in &files {
                if f.contains('/') || f.contains("..") {
                    return Err(Error::UnsafePath { archive: index.clone(), entry: f.to_string() });
                }
                index_safetensors(&path.join(f), &mut stored)?;
            }
            files.len()
        } else if path.join("model.safetensors").is_file() {
            index_safetensors(&path.join("model.safetensors"), &mut stored)?;
            1
        } else {
            let bin = path.join("pytorch_model.bin");
            let hint = if bin.exists() || path.join("pytorch_model.bin.index.json").exists() {
                "only safetensors weights are read; convert pytorch_model.bin with `transformers` \
                 (save_pretrained(safe_serialization=True))"
            } else {
                "expected model.safetensors or model.safetensors.index.json"
            };
            return Err(Error::ckpt(path, hint));
        };
        if let Some(name) = stored.keys().find(|k| k.ends_with(".bias")) {
            return Err(Error::UnsupportedFormat {
                path: path.into(),
                format: format!("tensor `{name}`"),
                hint: "Llama-2 has no bias terms".into(),
            });
        }
        // The embedding decides V; config.json may disagree only if it is corrupt.
        if let Some(e) = stored.get("model.embed_tokens.weight")
            && e.shape.len() == 2
            && e.shape[0] != cfg.vocab_size
        {
            return Err(Error::TensorShape {
                path: path.into(),
                name: "model.embed_tokens.weight".into(),
                expected: vec![cfg.vocab_size, cfg.hidden_size],
                got: e.shape.clone(),
            });
        }
        let src = HfSource { path: path.into(), cfg: cfg.clone(), stored, tied, shards };
        // Validate every tensor now so errors appear before any allocation; names are generated lazily, so
        // a config claiming absurdly many layers fails at the first missing one.
        for name in canonical_names_iter(&cfg) {
            let s = src.stored_for(&name)?;
            let want = canonical_shape(&cfg, &name).expect("canonical");
            if s.shape != want {
                return Err(Error::TensorShape {
                    path: s.file.clone(),
                    name: src.hf_name(&name),
                    expected: want,
                    got: s.shape.clone(),
                });
            }
        }
        cfg.validate()?;
        Ok(src)
    }

    fn hf_name(&self, canonical: &str) -> String {
        let map_layer = |t: &str| match t {
            "attn_norm" => "input_layernorm.weight",
            "wq" => "self_attn.q_proj.weight",
            "wk" => "self_attn.k_proj.weight",
            "wv" => "self_attn.v_proj.weight",
            "wo" => "self_attn.o_proj.weight",
            "mlp_norm" => "post_attention_layernorm.weight",
            "w_gate" => "mlp.gate_proj.weight",
            "w_up" => "mlp.up_proj.weight",
            "w_down" => "mlp.down_proj.weight",
            _ => "?",
        };
        match canonical {
            "tok_emb" => "model.embed_tokens.weight".into(),
            "final_norm" => "model.norm.weight".into(),
            "lm_head" if self.tied => "model.embed_tokens.weight".into(),
            "lm_head" => "lm_head.weight".into(),
            _ => {
                let mut it = canonical.split('.');
                let (_, i, t) = (it.next(), it.next().unwrap_or("?"), it.next().unwrap_or("?"));
                format!("model.layers.{i}.{}", map_layer(t))
            }
        }
    }

    fn stored_for(&self, canonical: &str) -> Result<&Stored> {
        let name = self.hf_name(canonical);
        self.stored.get(&name).ok_or_else(|| Error::MissingTensor { path: self.path.clone(), name })
    }
}

impl CheckpointSource for HfSource {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format(&self) -> String {
        format!("huggingface safetensors ({} file{})", self.shards, if self.shards == 1 { "" } else { "s" })
    }
    fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
    fn tensors(&self) -> Vec<TensorInfo> {
        canonical_names(&self.cfg)
            .into_iter()
            .filter_map(|n| {
                let s = self.stored_for(&n).ok()?;
                Some(TensorInfo { origin: self.hf_name(&n), dtype: s.dtype, shape: s.shape.clone(), name: n })
            })
            .collect()
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        let s = self.stored_for(name)?;
        let mut t = Tensor::zeros(s.dtype, &s.shape);
        let f = File::open(&s.file).map_err(|e| Error::io(&s.file, e))?;
        f.read_exact_at(t.bytes_mut(), s.offset).map_err(|e| Error::io(&s.file, e))?;
        Ok(t)
    }
    fn tokenizer(&self) -> Result<Tokenizer> {
        let spm = self.path.join("tokenizer.model");
        if spm.is_file() {
            return Tokenizer::from_file(&spm);
        }
        let json = self.path.join("tokenizer.json");
        if json.is_file() {
            return Tokenizer::from_file(&json);
        }
        Err(Error::Tokenizer(format!("{}: no tokenizer.model or tokenizer.json", self.path.display())))
    }
    fn default_add_bos(&self) -> bool {
        true
    }
    fn default_stop_strings(&self) -> Vec<String> {
        vec![]
    }
    /// `chat_template` of `tokenizer_config.json` (or the older `chat_template.jinja` file), if any.
    fn chat_template(&self) -> Result<Option<crate::chat::ChatTemplate>> {
        let cfg = self.path.join("tokenizer_config.json");
        let text =
            if cfg.is_file() { std::fs::read_to_string(&cfg).map_err(|e| Error::io(&cfg, e))? } else { String::new() };
        let jinja = self.path.join("chat_template.jinja");
        if jinja.is_file() {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let token = |k: &str| match &v[k] {
                serde_json::Value::String(s) => s.clone(),
                o => o["content"].as_str().unwrap_or_default().to_string(),
            };
            let src = std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?;
            return crate::chat::ChatTemplate::jinja(&src, &token("bos_token"), &token("eos_token")).map(Some);
        }
        if text.is_empty() {
            return Ok(None);
        }
        crate::chat::from_tokenizer_config(&text, &cfg)
    }
    fn details(&self) -> Vec<(String, String)> {
        vec![("tied_embeddings".into(), self.tied.to_string())]
    }
}

/// Total bytes of all canonical tensors (for progress).
pub fn total_bytes(src: &dyn CheckpointSource) -> u64 {
    src.tensors().iter().map(|t| (t.shape.iter().product::<usize>() * t.dtype.size()) as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::parse_file_bytes;
    use crate::Error;
    use std::path::Path;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn offsets_near_u64_max_are_truncation_errors() {
        // fuzz/regressions/safetensors: `data_start + end` overflowed (a panic with overflow checks,
        // and in release a wrapped sum that accepted a tensor "inside" the file at a wrapped offset).
        let p = Path::new("x.safetensors");
        let max = u64::MAX;
        for (b, e, shape) in [(max, max, "[0]"), (max - 4, max, "[1]")] {
            let h = format!(r#"{{"x":{{"dtype":"F32","shape":{shape},"data_offsets":[{b},{e}]}}}}"#);
            match parse_file_bytes(p, &file(&h, &[0; 8])) {
                Err(Error::Truncated { expected, .. }) => assert_eq!(expected, u64::MAX),
                other => panic!("{other:?}"),
            }
        }
        let h = r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let ok = parse_file_bytes(p, &file(h, &[0; 8])).unwrap();
        assert_eq!(ok["x"].offset, 8 + h.len() as u64);
    }
}
