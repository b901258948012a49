//! NeMo `model_config.yaml` (with NeMo's defaults for absent keys), tokenizer resolution through `nemo:`
//! references, and the SentencePiece piece count that fixes the unpadded vocab size V.
use super::tarfs::Fs;
use crate::config::LlamaConfig;
use crate::{Error, Result};
use std::path::Path;
use yaml_rust2::{Yaml, YamlLoader};

/// What the loader needs from `model_config.yaml`.
#[derive(Debug, Clone)]
pub struct NemoConfig {
    /// Architecture; `vocab_size` is 0 until the tokenizer is counted.
    pub cfg: LlamaConfig,
    /// `share_embeddings_and_output_weights` (default true).
    pub share_embeddings: bool,
    /// `bias` (default true; only matters if bias tensors exist).
    pub bias: bool,
    /// `(key, value)` of `tokenizer.model` / `tokenizer.tokenizer_model`, in that order.
    pub tokenizer_refs: Vec<(String, String)>,
    /// `make_vocab_size_divisible_by` (informational).
    pub vocab_divisor: usize,
    /// `data.chat_prompt_tokens` (key, value) pairs, if the config has them.
    pub chat_prompt_tokens: Vec<(String, String)>,
}

fn present(y: &Yaml) -> Option<&Yaml> {
    (!y.is_null() && !y.is_badvalue()).then_some(y)
}

fn as_f64(y: &Yaml) -> Option<f64> {
    match y {
        Yaml::Integer(i) => Some(*i as f64),
        Yaml::Real(_) => y.as_f64(),
        Yaml::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_str(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses `model_config.yaml`; `origin` names it in errors.
pub fn parse_yaml(origin: &Path, bytes: &[u8]) -> Result<NemoConfig> {
    let bad = |m: String| Error::ckpt(origin, m);
    let unsupported =
        |format: String, hint: &str| Error::UnsupportedFormat { path: origin.into(), format, hint: hint.into() };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("model_config.yaml is not UTF-8".into()))?;
    let docs = YamlLoader::load_from_str(text).map_err(|e| bad(format!("invalid YAML: {e}")))?;
    let y = match docs.first() {
        Some(y @ Yaml::Hash(_)) => y,
        _ => return Err(bad("model_config.yaml is not a mapping".into())),
    };
    let int = |k: &str| -> Result<Option<usize>> {
        match present(&y[k]) {
            None => Ok(None),
            Some(Yaml::Integer(i)) if *i > 0 && *i <= u32::MAX as i64 => Ok(Some(*i as usize)),
            Some(v) => Err(bad(format!("`{k}` must be a positive integer, got {v:?}"))),
        }
    };
    let req = |k: &str| -> Result<usize> { int(k)?.ok_or_else(|| bad(format!("missing `{k}`"))) };
    let float = |k: &str, d: f64| -> Result<f64> {
        match present(&y[k]) {
            None => Ok(d),
            Some(v) => as_f64(v).ok_or_else(|| bad(format!("`{k}` must be a number, got {v:?}"))),
        }
    };
    let string = |k: &str, d: &str| -> String { present(&y[k]).and_then(as_str).unwrap_or_else(|| d.to_string()) };
    let boolean = |k: &str, d: bool| -> Result<bool> {
        match present(&y[k]) {
            None => Ok(d),
            Some(Yaml::Boolean(b)) => Ok(*b),
            Some(v) => Err(bad(format!("`{k}` must be true or false, got {v:?}"))),
        }
    };

    let norm = string("normalization", "layernorm");
    if norm != "rmsnorm" {
        return Err(unsupported(
            format!("normalization `{norm}`"),
            "Llama-2 uses rmsnorm (an absent key means layernorm)",
        ));
    }
    let act = string("activation", "gelu");
    if !act.ends_with("swiglu") {
        return Err(unsupported(format!("activation `{act}`"), "Llama-2 uses SwiGLU (`fast-swiglu` or `swiglu`)"));
    }
    let pos = string("position_embedding_type", "learned_absolute");
    if pos != "rope" {
        return Err(unsupported(
            format!("position_embedding_type `{pos}`"),
            "Llama-2 uses rope (an absent key means learned_absolute)",
        ));
    }
    let pct = float("rotary_percentage", 1.0)?;
    if pct != 1.0 {
        return Err(unsupported(format!("rotary_percentage {pct}"), "partial RoPE is not implemented"));
    }
    if boolean("rotary_interleaved", false)? {
        return Err(unsupported("rotary_interleaved: true".into(), "only split-halves RoPE is implemented"));
    }
    if boolean("headscale", false)? || !boolean("normalize_attention_scores", true)? {
        return Err(unsupported(
            "headscale / unnormalized attention scores".into(),
            "Llama-2 uses plain 1/sqrt(hd) attention",
        ));
    }
    let block = string("transformer_block_type", "pre_ln");
    if block != "pre_ln" {
        return Err(unsupported(format!("transformer_block_type `{block}`"), "Llama-2 is pre-norm"));
    }

    let hidden = req("hidden_size")?;
    let heads = req("num_attention_heads")?;
    let kv = if boolean("multi_query_mode", false)? { 1 } else { int("num_query_groups")?.unwrap_or(heads) };
    let head_dim = match int("kv_channels")? {
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => return Err(bad(format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}"))),
    };
    let max_pos = match int("max_position_embeddings")? {
        Some(m) => m,
        None => int("encoder_seq_length")?.ok_or_else(|| bad("missing `max_position_embeddings`".into()))?,
    };
    let interp = float("seq_len_interpolation_factor", 1.0)?;
    if !(interp.is_finite() && interp >= 1.0) {
        return Err(bad(format!("invalid seq_len_interpolation_factor {interp}")));
    }
    let eps = float("layernorm_epsilon", 1e-5)?;
    let base = float("rotary_base", 10000.0)?;
    if !(eps.is_finite() && eps > 0.0 && base.is_finite() && base > 1.0) {
        return Err(bad(format!("invalid layernorm_epsilon {eps} or rotary_base {base}")));
    }
    let cfg = LlamaConfig {
        hidden_size: hidden,
        intermediate_size: req("ffn_hidden_size")?,
        num_layers: req("num_layers")?,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim,
        vocab_size: 0,
        max_position_embeddings: max_pos,
        rms_norm_eps: eps as f32,
        rope_theta: base as f32,
        rope_scaling: interp as f32,
        bos_id: 1,
        eos_id: 2,
    };
    if kv == 0 || heads % kv != 0 {
        return Err(bad(format!("num_attention_heads {heads} is not a multiple of num_query_groups {kv}")));
    }
    let tok = &y["tokenizer"];
    if let Some(lib) = present(&tok["library"]).and_then(as_str)
        && lib != "sentencepiece"
    {
        return Err(unsupported(
            format!("tokenizer library `{lib}`"),
            "only SentencePiece tokenizers are read from .nemo files",
        ));
    }
    let tokenizer_refs = ["model", "tokenizer_model"]
        .iter()
        .filter_map(|k| present(&tok[*k]).and_then(as_str).map(|v| (format!("tokenizer.{k}"), v)))
        .collect();
    Ok(NemoConfig {
        cfg,
        share_embeddings: boolean("share_embeddings_and_output_weights", true)?,
        bias: boolean("bias", true)?,
        tokenizer_refs,
        vocab_divisor: int("make_vocab_size_divisible_by")?.unwrap_or(128),
        chat_prompt_tokens: match &y["data"]["chat_prompt_tokens"] {
            Yaml::Hash(h) => h.iter().filter_map(|(k, v)| Some((as_str(k)?, as_str(v)?))).collect(),
            _ => Vec::new(),
        },
    })
}

/// Files directly in folder `root` (`""` or `dir/`) whose name ends with `suffix`.
fn root_files<'a>(fs: &'a Fs, root: &'a str, pred: impl Fn(&str) -> bool + 'a) -> Vec<&'a str> {
    fs.list().filter(|n| n.strip_prefix(root).is_some_and(|rest| !rest.contains('/') && pred(rest))).collect()
}

/// Finds the SentencePiece model: `nemo:<name>` references, absolute paths by basename, else the one `*.model`.
pub fn resolve_tokenizer(fs: &Fs, root: &str, nc: &NemoConfig) -> Result<String> {
    let origin = fs.display(&format!("{root}model_config.yaml"));
    for (key, value) in &nc.tokenizer_refs {
        let want = match value.strip_prefix("nemo:") {
            Some(rest) => rest.to_string(),
            None => value.rsplit('/').next().unwrap_or(value).to_string(),
        };
        if want.is_empty() {
            continue;
        }
        let hits = root_files(fs, root, |n| n.ends_with(want.as_str()));
        match hits.as_slice() {
            [one] => return Ok(one.to_string()),
            [] => log::warn!("{}: `{key}: {value}` matches no file; trying the next reference", origin.display()),
            many => return Err(Error::ckpt(&origin, format!("`{key}: {value}` matches several files: {many:?}"))),
        }
    }
    let hits = root_files(fs, root, |n| n.ends_with(".model"));
    match hits.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Error::ckpt(
            &origin,
            "no tokenizer: neither tokenizer.model / tokenizer.tokenizer_model nor a single *.model file resolves",
        )),
        many => Err(Error::ckpt(&origin, format!("several *.model files and no usable tokenizer reference: {many:?}"))),
    }
}

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Number of pieces in a SentencePiece `ModelProto` (repeated field 1), by a minimal protobuf walk.
pub fn count_pieces(origin: &Path, b: &[u8]) -> Result<usize> {
    let bad = || Error::ckpt(origin, "not a SentencePiece model (malformed protobuf)");
    let (mut pos, mut n) = (0usize, 0usize);
    while pos < b.len() {
        let key = varint(b, &mut pos).ok_or_else(bad)?;
        let skip = match key & 7 {
            0 => {
                varint(b, &mut pos).ok_or_else(bad)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = varint(b, &mut pos).ok_or_else(bad)?;
                if key >> 3 == 1 {
                    n += 1;
                }
                usize::try_from(len).map_err(|_| bad())?
            }
            _ => return Err(bad()),
        };
        pos = pos.checked_add(skip).filter(|&p| p <= b.len()).ok_or_else(bad)?;
    }
    if n == 0 {
        return Err(Error::ckpt(origin, "SentencePiece model has no pieces"));
    }
    Ok(n)
}
