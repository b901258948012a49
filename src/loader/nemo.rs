//! NeMo 1.x checkpoints (`.nemo` tar or extracted folder) with a Megatron-core zarr dist-ckpt in `model_weights/`.
//!
//! Open validates everything cheap up front: the single `model_config.yaml` (root may be one folder down),
//! the tokenizer (its piece count is V), the weights backend (`zarr` only; torch_dist, legacy pickles and
//! NeMo 2.0 are refused), every `.zarray` against the config, the training TP size T (from `linear_proj`
//! chunks, cross-checked with `linear_qkv`), the `linear_fc1` layout (§3.6) and every chunk file's size.
//! `load` then reads one canonical tensor straight from the chunks of its layer, splitting the fused QKV by
//! query group (§5a), fc1 into gate/up, and trimming the padded vocab Vp to V (§5d), in the stored dtype.
use super::nemo_config::{NemoConfig, count_pieces, parse_yaml, resolve_tokenizer};
use super::tarfs::Fs;
use super::zarr::ZArray;
use super::{CheckpointSource, TensorInfo, canonical_names, canonical_shape};
use crate::config::LlamaConfig;
use crate::tensor::{DType, Tensor};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const EMB: &str = "model.embedding.word_embeddings.weight";
const OUT: &str = "model.output_layer.weight";
const FINAL_NORM: &str = "model.decoder.final_layernorm.weight";
const QKV: &str = "model.decoder.layers.self_attention.linear_qkv.weight";
const PROJ: &str = "model.decoder.layers.self_attention.linear_proj.weight";
const FC1: &str = "model.decoder.layers.mlp.linear_fc1.weight";
const FC2: &str = "model.decoder.layers.mlp.linear_fc2.weight";
/// Pre-attention and pre-MLP norms: Transformer Engine names, then the local-spec names.
const ATTN_NORMS: [&str; 2] =
    ["model.decoder.layers.self_attention.linear_qkv.layer_norm_weight", "model.decoder.layers.input_layernorm.weight"];
const MLP_NORMS: [&str; 2] =
    ["model.decoder.layers.mlp.linear_fc1.layer_norm_weight", "model.decoder.layers.pre_mlp_layernorm.weight"];

/// Where a canonical tensor comes from: array, layer (for stacked arrays), `(first row, rows)` pieces.
type Plan<'a> = (&'a ZArray, Option<usize>, Vec<(usize, usize)>);

/// How `linear_fc1` rows are laid out on disk (§3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fc1Layout {
    /// `[gate (F rows); up (F rows)]`: chunks of F/T rows (or T = 1).
    GluSplit,
    /// `concat_r [gate_r; up_r]`: chunks of 2F/T rows, T > 1.
    RankInterleaved,
}

/// The zarr arrays a Llama needs.
#[derive(Debug)]
struct Arrays {
    emb: ZArray,
    out: Option<ZArray>,
    final_norm: ZArray,
    attn_norm: ZArray,
    mlp_norm: ZArray,
    qkv: ZArray,
    proj: ZArray,
    fc1: ZArray,
    fc2: ZArray,
}

pub struct NemoSource {
    path: PathBuf,
    fs: Fs,
    /// Prefix of the checkpoint root inside the container (`""` or `folder/`).
    root: String,
    cfg: LlamaConfig,
    tokenizer_file: String,
    a: Arrays,
    tp: usize,
    fc1: Fc1Layout,
    chat: crate::chat::NemoTokens,
}

fn unsupported(path: PathBuf, format: &str, hint: &str) -> Error {
    Error::UnsupportedFormat { path, format: format.into(), hint: hint.into() }
}

/// Finds the one `model_config.yaml` and returns its folder prefix; refuses NeMo 2.0 layouts.
fn find_root(fs: &Fs) -> Result<String> {
    let found: Vec<&str> =
        fs.list().filter(|n| *n == "model_config.yaml" || n.ends_with("/model_config.yaml")).collect();
    match found.as_slice() {
        [one] => Ok(one[..one.len() - "model_config.yaml".len()].to_string()),
        [] => {
            let nemo2 = |p: &str| fs.is_dir(&format!("{p}context")) && fs.is_dir(&format!("{p}weights"));
            let subdirs: Vec<String> =
                fs.list().filter_map(|n| n.split_once('/').map(|(d, _)| format!("{d}/"))).collect();
            if nemo2("") || subdirs.iter().any(|d| nemo2(d)) {
                return Err(unsupported(
                    fs.path().into(),
                    "NeMo 2.0 checkpoint (context/ + weights/)",
                    "export it to Hugging Face safetensors or a NeMo 1.x .nemo with a zarr dist-ckpt",
                ));
            }
            Err(Error::ckpt(fs.path(), "no model_config.yaml found: not a NeMo checkpoint"))
        }
        many => Err(Error::ckpt(fs.path(), format!("several model_config.yaml files: {many:?}"))),
    }
}

/// Checks `model_weights/metadata.json` (or the legacy layouts) and refuses anything but zarr.
fn check_backend(fs: &Fs, root: &str) -> Result<()> {
    let meta = format!("{root}model_weights/metadata.json");
    if fs.size(&meta).is_some() {
        let origin = fs.display(&meta);
        let v: serde_json::Value =
            serde_json::from_slice(&fs.read(&meta)?).map_err(|e| Error::ckpt(&origin, format!("invalid JSON: {e}")))?;
        return match v.get("sharded_backend").and_then(|b| b.as_str()) {
            Some("zarr") => Ok(()),
            Some("torch_dist") => Err(unsupported(
                origin,
                "the torch_dist distributed-checkpoint format (NeMo >= 24.x)",
                "convert to HF safetensors or re-save with the zarr backend",
            )),
            Some(b) => {
                Err(unsupported(origin, &format!("dist-ckpt sharded_backend `{b}`"), "only the zarr backend is read"))
            }
            None => Err(Error::ckpt(origin, "no `sharded_backend` in metadata.json")),
        };
    }
    let legacy = fs.list().find(|n| {
        n.strip_prefix(root).and_then(|r| r.strip_suffix("model_weights.ckpt")).is_some_and(|d| {
            let d = d.trim_end_matches('/');
            d.is_empty()
                || (!d.contains('/')
                    && (d.starts_with("mp_rank_") || (d.starts_with("tp_rank_") && d.contains("_pp_rank_"))))
        })
    });
    if let Some(l) = legacy {
        return Err(unsupported(
            fs.display(l),
            "legacy NeMo checkpoint (PyTorch pickle model_weights.ckpt, not a distributed checkpoint)",
            "re-save it with NeMo >= 1.21 (mcore dist-ckpt, zarr backend) or convert it to Hugging Face safetensors",
        ));
    }
    if fs.is_dir(&format!("{root}model_weights")) {
        return Err(Error::ckpt(
            fs.display(&format!("{root}model_weights")),
            "no metadata.json: not a Megatron-core distributed checkpoint",
        ));
    }
    Err(Error::ckpt(
        fs.display(&format!("{root}model_config.yaml")),
        "no model_weights/ folder or model_weights.ckpt next to it",
    ))
}

impl NemoSource {
    pub fn open(path: &Path) -> Result<NemoSource> {
        let fs = Fs::open(path)?;
        let root = find_root(&fs)?;
        let yaml = format!("{root}model_config.yaml");
        let nc: NemoConfig = parse_yaml(&fs.display(&yaml), &fs.read(&yaml)?)?;
        check_backend(&fs, &root)?;
        let tokenizer_file = resolve_tokenizer(&fs, &root, &nc)?;
        let mut cfg = nc.cfg.clone();
        cfg.vocab_size = count_pieces(&fs.display(&tokenizer_file), &fs.read(&tokenizer_file)?)?;
        cfg.validate()?;

        // Index the arrays: folders of model_weights/ that hold a .zarray (the rest are _extra_state objects).
        let wdir = format!("{root}model_weights/");
        let mut arrays = BTreeMap::new();
        for n in fs.list() {
            let Some(key) = n.strip_prefix(&wdir).and_then(|r| r.strip_suffix("/.zarray")) else { continue };
            if !key.contains('/') {
                arrays.insert(key.to_string(), ZArray::open(&fs, &format!("{wdir}{key}"), key)?);
            }
        }
        if let Some(b) = arrays.keys().find(|k| k.ends_with(".bias") || k.ends_with("layer_norm_bias")) {
            return Err(unsupported(
                fs.display(&format!("{wdir}{b}")),
                &format!("bias tensor `{b}` (bias: {})", nc.bias),
                "Llama-2 has no bias terms; this is not a Llama checkpoint",
            ));
        }
        if nc.bias {
            log::warn!("{}: `bias` is true or absent but no bias tensors exist; reading as bias-free", path.display());
        }
        let a = Self::pick_arrays(&fs, &wdir, &mut arrays, &cfg, nc.share_embeddings)?;
        let (tp, fc1) = detect_tp(&fs, &a, &cfg)?;
        for za in [Some(&a.emb), a.out.as_ref(), Some(&a.final_norm), Some(&a.attn_norm), Some(&a.mlp_norm)]
            .into_iter()
            .flatten()
            .chain([&a.qkv, &a.proj, &a.fc1, &a.fc2])
        {
            za.check_all_chunks(&fs)?;
        }
        let chat = crate::chat::NemoTokens::from_pairs(&nc.chat_prompt_tokens);
        let src = NemoSource { path: path.into(), fs, root, cfg, tokenizer_file, a, tp, fc1, chat };
        log::info!("{}: {}", path.display(), src.format());
        Ok(src)
    }

    /// Takes the needed arrays out of `arrays` and checks each shape against the config.
    fn pick_arrays(
        fs: &Fs,
        wdir: &str,
        arrays: &mut BTreeMap<String, ZArray>,
        cfg: &LlamaConfig,
        share: bool,
    ) -> Result<Arrays> {
        let (l, h, f, v) = (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let over = || Error::Config(format!("model dimensions overflow: {cfg:?}"));
        let q = cfg.num_heads.checked_mul(cfg.head_dim).ok_or_else(over)?;
        let qkv_rows =
            cfg.num_kv_heads.checked_mul(2 * cfg.head_dim).and_then(|kv| kv.checked_add(q)).ok_or_else(over)?;
        let f2 = f.checked_mul(2).ok_or_else(over)?;
        let missing = |k: &str| Error::MissingTensor { path: fs.display(wdir.trim_end_matches('/')), name: k.into() };
        let shape_err = |za: &ZArray, expected: Vec<usize>| Error::TensorShape {
            path: fs.display(&format!("{}/.zarray", za.dir)),
            name: za.key.clone(),
            expected,
            got: za.shape.clone(),
        };
        let mut take = |names: &[&str], expected: Vec<usize>| -> Result<ZArray> {
            let key = names.iter().find(|k| arrays.contains_key(**k)).ok_or_else(|| missing(names[0]))?;
            let za = arrays.remove(*key).ok_or_else(|| missing(key))?;
            if za.shape != expected {
                return Err(shape_err(&za, expected));
            }
            Ok(za)
        };
        let qkv = take(&[QKV], vec![l, qkv_rows, h])?;
        let proj = take(&[PROJ], vec![l, h, q])?;
        let fc1 = take(&[FC1], vec![l, f2, h])?;
        let fc2 = take(&[FC2], vec![l, h, f])?;
        let attn_norm = take(&ATTN_NORMS, vec![l, h])?;
        let mlp_norm = take(&MLP_NORMS, vec![l, h])?;
        let final_norm = take(&[FINAL_NORM], vec![h])?;
        // Embedding and output layer: [Vp, H] with Vp >= V (padded, §5d).
        let mut vocab = |key: &str| -> Result<Option<ZArray>> {
            let Some(za) = arrays.remove(key) else { return Ok(None) };
            if za.shape.len() != 2 || za.shape[1] != h || za.shape[0] < v {
                return Err(shape_err(&za, vec![v, h]));
            }
            Ok(Some(za))
        };
        let emb = vocab(EMB)?.ok_or_else(|| missing(EMB))?;
        let out = vocab(OUT)?;
        if out.is_none() && !share {
            return Err(missing(OUT));
        }
        Ok(Arrays { emb, out, final_norm, attn_norm, mlp_norm, qkv, proj, fc1, fc2 })
    }

    /// Training tensor-parallel size T, derived from the `linear_proj` chunks.
    pub fn tp_size(&self) -> usize {
        self.tp
    }

    pub fn fc1_layout(&self) -> Fc1Layout {
        self.fc1
    }

    /// Rows of the stored embedding (Vp, before trimming to V).
    pub fn padded_vocab(&self) -> usize {
        self.a.emb.shape[0]
    }

    /// Whether the LM head is the embedding (no `output_layer` array).
    pub fn tied(&self) -> bool {
        self.a.out.is_none()
    }

    /// Container name of the SentencePiece model used.
    pub fn tokenizer_file(&self) -> &str {
        &self.tokenizer_file
    }

    /// Reads `nrows` rows from `row0` on the row axis (after the layer axis, if `layer` is given), all columns.
    fn read_rows(&self, za: &ZArray, layer: Option<usize>, row0: usize, nrows: usize, out: &mut [u8]) -> Result<()> {
        let mut start = vec![0; za.shape.len()];
        let mut size = za.shape.clone();
        let r = usize::from(layer.is_some());
        if let Some(l) = layer {
            start[0] = l;
            size[0] = 1;
        }
        start[r] = row0;
        size[r] = nrows;
        za.read_region(&self.fs, &start, &size, out)
    }

    /// Which array, and which rows of it, make up canonical tensor `t` of layer `l`: `(array, [(src row, rows)])`.
    fn layer_plan(&self, t: &str) -> Option<(&ZArray, Vec<(usize, usize)>)> {
        let c = &self.cfg;
        let (hd, nkv, g, f) = (c.head_dim, c.num_kv_heads, c.group_size(), c.intermediate_size);
        let group = |slot: usize, n: usize| (0..nkv).map(|j| ((j * (g + 2) + slot) * hd, n * hd)).collect();
        let a = &self.a;
        Some(match t {
            "attn_norm" => (&a.attn_norm, vec![(0, c.hidden_size)]),
            "mlp_norm" => (&a.mlp_norm, vec![(0, c.hidden_size)]),
            "wq" => (&a.qkv, group(0, g)),
            "wk" => (&a.qkv, group(g, 1)),
            "wv" => (&a.qkv, group(g + 1, 1)),
            "wo" => (&a.proj, vec![(0, c.hidden_size)]),
            "w_down" => (&a.fc2, vec![(0, c.hidden_size)]),
            "w_gate" | "w_up" => {
                let up = usize::from(t == "w_up");
                let rows = match self.fc1 {
                    Fc1Layout::GluSplit => vec![(up * f, f)],
                    Fc1Layout::RankInterleaved => {
                        let per = f / self.tp;
                        (0..self.tp).map(|r| ((2 * r + up) * per, per)).collect()
                    }
                };
                (&a.fc1, rows)
            }
            _ => return None,
        })
    }

    /// `(array, layer, row pieces)` for a canonical name; pieces are `(first row, rows)` in output order.
    fn plan(&self, name: &str) -> Result<Plan<'_>> {
        let missing = || Error::MissingTensor { path: self.path.clone(), name: name.into() };
        let v = self.cfg.vocab_size;
        Ok(match name {
            "tok_emb" => (&self.a.emb, None, vec![(0, v)]),
            "lm_head" => (self.a.out.as_ref().unwrap_or(&self.a.emb), None, vec![(0, v)]),
            "final_norm" => (&self.a.final_norm, None, vec![(0, self.cfg.hidden_size)]),
            _ => {
                let mut it = name.split('.');
                let (Some("layers"), Some(i), Some(t), None) = (it.next(), it.next(), it.next(), it.next()) else {
                    return Err(missing());
                };
                let l: usize = i.parse().map_err(|_| missing())?;
                if l >= self.cfg.num_layers {
                    return Err(missing());
                }
                let (za, rows) = self.layer_plan(t).ok_or_else(missing)?;
                (za, Some(l), rows)
            }
        })
    }
}

/// Derives T from `linear_proj` chunks (cross-checked with `linear_qkv`) and the fc1 layout (§3.6).
fn detect_tp(fs: &Fs, a: &Arrays, cfg: &LlamaConfig) -> Result<(usize, Fc1Layout)> {
    let bad = |za: &ZArray, m: String| Error::ckpt(fs.display(&format!("{}/.zarray", za.dir)), m);
    let (ps, pc) = (a.proj.shape[2], a.proj.chunks[2]);
    if ps % pc != 0 {
        return Err(bad(
            &a.proj,
            format!("chunks {:?} do not divide shape {:?} on the TP axis", a.proj.chunks, a.proj.shape),
        ));
    }
    let tp = ps / pc;
    let (qs, qc) = (a.qkv.shape[1], a.qkv.chunks[1]);
    if qs % qc != 0 || qs / qc != tp {
        return Err(bad(
            &a.qkv,
            format!("chunks {:?} imply a TP size other than T={tp} from linear_proj", a.qkv.chunks),
        ));
    }
    if !cfg.num_kv_heads.is_multiple_of(tp) {
        return Err(bad(&a.qkv, format!("TP size {tp} does not divide num_query_groups {}", cfg.num_kv_heads)));
    }
    let (f, c) = (cfg.intermediate_size, a.fc1.chunks[1]);
    let layout = if tp == 1 || c.checked_mul(tp) == Some(f) {
        Fc1Layout::GluSplit
    } else if c.checked_mul(tp) == Some(2 * f) && f % tp == 0 {
        Fc1Layout::RankInterleaved
    } else {
        return Err(bad(
            &a.fc1,
            format!("fc1 chunk rows {c} are neither F/T nor 2F/T (F={f}, T={tp}): unknown layout"),
        ));
    };
    Ok((tp, layout))
}

impl CheckpointSource for NemoSource {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format(&self) -> String {
        format!("nemo ({}, zarr dist-ckpt, TP={} chunks)", self.fs.container(), self.tp)
    }
    fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
    fn tensors(&self) -> Vec<TensorInfo> {
        canonical_names(&self.cfg)
            .into_iter()
            .filter_map(|name| {
                let (za, layer, _) = self.plan(&name).ok()?;
                let origin = match layer {
                    Some(l) => format!("{}[{l}]", za.key),
                    None => za.key.clone(),
                };
                Some(TensorInfo { dtype: za.dtype, shape: canonical_shape(&self.cfg, &name)?, origin, name })
            })
            .collect()
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        let (za, layer, pieces) = self.plan(name)?;
        let shape = canonical_shape(&self.cfg, name)
            .ok_or_else(|| Error::MissingTensor { path: self.path.clone(), name: name.into() })?;
        let row_bytes = shape[1..].iter().product::<usize>() * za.dtype.size();
        let mut t = Tensor::zeros(za.dtype, &shape);
        let buf = t.bytes_mut();
        let mut off = 0;
        for (row0, n) in pieces {
            let len = n * row_bytes;
            let dst = buf
                .get_mut(off..off + len)
                .ok_or_else(|| Error::Internal(format!("{name}: row plan exceeds the tensor")))?;
            self.read_rows(za, layer, row0, n, dst)?;
            off += len;
        }
        if off != buf.len() {
            return Err(Error::Internal(format!("{name}: row plan covers {off} of {} bytes", buf.len())));
        }
        Ok(t)
    }
    fn tokenizer(&self) -> Result<Tokenizer> {
        let bytes = self.fs.read(&self.tokenizer_file)?;
        Tokenizer::from_sentencepiece_bytes(&bytes, &self.fs.display(&self.tokenizer_file))
    }
    fn default_add_bos(&self) -> bool {
        false
    }
    fn default_stop_strings(&self) -> Vec<String> {
        vec![self.chat.turn_start.clone()]
    }
    /// NeMo chat models (NVIDIA's Llama-2 chat family): the card's format, markers from `data.chat_prompt_tokens`.
    fn chat_template(&self) -> Result<Option<crate::chat::ChatTemplate>> {
        Ok(Some(crate::chat::ChatTemplate::Nemo(self.chat.clone())))
    }
    fn details(&self) -> Vec<(String, String)> {
        let dtype = |d: DType| d.name().to_string();
        vec![
            ("container".into(), self.fs.container().into()),
            ("root".into(), if self.root.is_empty() { ".".into() } else { self.root.trim_end_matches('/').into() }),
            ("sharded_backend".into(), "zarr".into()),
            ("training_tp".into(), self.tp.to_string()),
            ("fc1_layout".into(), format!("{:?}", self.fc1)),
            ("padded_vocab".into(), self.padded_vocab().to_string()),
            ("vocab".into(), self.cfg.vocab_size.to_string()),
            ("tied_embeddings".into(), self.tied().to_string()),
            ("dtype".into(), dtype(self.a.qkv.dtype)),
            ("tokenizer".into(), self.tokenizer_file.clone()),
        ]
    }
}
