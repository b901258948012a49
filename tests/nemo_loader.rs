//! NeMo `.nemo` reader tests on small synthetic checkpoints (zarr dist-ckpt written from Rust, tars built with
//! the `tar` crate), covering layouts (TP, fc1, QKV grouping, vocab padding, tying) and every refusal.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use triton_llama::Error;
use triton_llama::loader::CheckpointSource;
use triton_llama::loader::nemo::{Fc1Layout, NemoSource};
use triton_llama::tensor::{DType, Tensor};

const QKV: &str = "model.decoder.layers.self_attention.linear_qkv.weight";
const FC1: &str = "model.decoder.layers.mlp.linear_fc1.weight";
const FC2: &str = "model.decoder.layers.mlp.linear_fc2.weight";
const EMB: &str = "model.embedding.word_embeddings.weight";
const TOK: &str = "0123456789abcdef0123456789abcdef_tokenizer.model";

/// A temp folder removed on drop.
struct Tmp(PathBuf);
impl Tmp {
    fn new() -> Tmp {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "nemo_loader_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Value of element (row r, column c) of layer l of tensor kind t: unique and exact in f32.
fn code(t: usize, l: usize, r: usize, c: usize) -> f32 {
    (t * 100_000 + l * 10_000 + r * 100 + c) as f32
}

#[derive(Clone)]
struct Spec {
    l: usize,
    h: usize,
    nq: usize,
    nkv: usize,
    hd: usize,
    f: usize,
    v: usize,
    vp: usize,
    tp: usize,
    interleaved: bool,
    tied: bool,
    te: bool,
    dtype: &'static str,
    ragged: bool,
    sep: &'static str,
}

fn spec() -> Spec {
    Spec {
        l: 2,
        h: 8,
        nq: 4,
        nkv: 2,
        hd: 2,
        f: 12,
        v: 10,
        vp: 12,
        tp: 1,
        interleaved: false,
        tied: false,
        te: true,
        dtype: "<f4",
        ragged: false,
        sep: ".",
    }
}

/// Files of a checkpoint, relative to its root.
type Files = BTreeMap<String, Vec<u8>>;

fn encode(dtype: &str, data: &[f32]) -> Vec<u8> {
    match dtype {
        "<f2" => data.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        "bfloat16" => data.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        _ => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Writes a zarr array (`.zarray` + every chunk, edge chunks zero-padded) under `model_weights/<key>/`.
fn put_array(files: &mut Files, s: &Spec, key: &str, shape: &[usize], chunks: &[usize], data: &[f32]) {
    let dir = format!("model_weights/{key}");
    let sep = if s.sep == "/" { ", \"dimension_separator\": \"/\"" } else { "" };
    let zarray = format!(
        "{{\
         \n    \"chunks\": {chunks:?},\
         \n    \"compressor\": null,\
         \n    \"dtype\": \"{}\",\
         \n    \"fill_value\": null,\
         \n    \"filters\": null,\
         \n    \"order\": \"C\",\
         \n    \"shape\": {shape:?},\
         \n    \"zarr_format\": 2{sep}\
         \n}}",
        s.dtype
    );
    files.insert(format!("{dir}/.zarray"), zarray.into_bytes());
    let nd = shape.len();
    let grid: Vec<usize> = (0..nd).map(|a| shape[a].div_ceil(chunks[a])).collect();
    let n: usize = grid.iter().product();
    for ci in 0..n {
        let mut idx = vec![0; nd];
        let mut rem = ci;
        for a in (0..nd).rev() {
            idx[a] = rem % grid[a];
            rem /= grid[a];
        }
        let cn: usize = chunks.iter().product();
        let mut buf = vec![0f32; cn];
        for (e, slot) in buf.iter_mut().enumerate() {
            let (mut rem, mut gi, mut inside) = (e, 0, true);
            let mut g = vec![0; nd];
            for a in (0..nd).rev() {
                g[a] = idx[a] * chunks[a] + rem % chunks[a];
                rem /= chunks[a];
                inside &= g[a] < shape[a];
            }
            if inside {
                for a in 0..nd {
                    gi = gi * shape[a] + g[a];
                }
                *slot = data[gi];
            }
        }
        let name: Vec<String> = idx.iter().map(|i| i.to_string()).collect();
        files.insert(format!("{dir}/{}", name.join(s.sep)), encode(s.dtype, &buf));
    }
}

/// Global mcore arrays for a spec; the qkv array is filled directly in its grouped layout.
struct Globals {
    qkv: Vec<f32>,
    emb: Vec<f32>,
}

fn fill(shape: &[usize], t: usize) -> Vec<f32> {
    let (l, r, c) = match shape.len() {
        1 => (1, 1, shape[0]),
        2 => (1, shape[0], shape[1]),
        _ => (shape[0], shape[1], shape[2]),
    };
    let mut v = Vec::new();
    for li in 0..l {
        for ri in 0..r {
            for ci in 0..c {
                v.push(code(t, li, ri, ci));
            }
        }
    }
    v
}

/// A SentencePiece-like protobuf with `n` pieces (field 1) and a trainer spec (field 2) to skip.
fn spm(n: usize) -> Vec<u8> {
    let mut b = vec![0x12, 0x04, 0x08, 0x02, 0x10, 0x01]; // field 2 (trainer spec), 4 bytes: {1: 2, 2: 1}
    for i in 0..n {
        let piece = format!("p{i}");
        let mut msg = vec![0x0a, piece.len() as u8];
        msg.extend_from_slice(piece.as_bytes());
        msg.push(0x15); // field 2, fixed32 score
        msg.extend_from_slice(&(-(i as f32)).to_le_bytes());
        b.push(0x0a);
        b.push(msg.len() as u8);
        b.extend_from_slice(&msg);
    }
    b
}

fn yaml(s: &Spec) -> String {
    format!(
        "mcore_gpt: true\nnum_layers: {}\nhidden_size: {}\nffn_hidden_size: {}\n\
         num_attention_heads: {}\nnum_query_groups: {}\n\
         kv_channels: null\nmax_position_embeddings: 4096\nencoder_seq_length: 4096\nlayernorm_epsilon: 1.0e-05\n\
         normalization: rmsnorm\nactivation: fast-swiglu\nbias: false\nposition_embedding_type: rope\n\
         rotary_percentage: 1.0\n\
         share_embeddings_and_output_weights: {}\nmake_vocab_size_divisible_by: 128\ntensor_model_parallel_size: {}\n\
         precision: bf16\ntokenizer:\n  library: sentencepiece\n  type: null\n  model: nemo:{TOK}\n\
         \x20 vocab_file: null\n",
        s.l, s.h, s.f, s.nq, s.nkv, s.tied, s.tp
    )
}

fn build(s: &Spec) -> (Files, Globals) {
    let (l, h, f, t) = (s.l, s.h, s.f, s.tp);
    let q = s.nq * s.hd;
    let rows = q + 2 * s.nkv * s.hd;
    let mut files = Files::new();
    files.insert("model_config.yaml".into(), yaml(s).into_bytes());
    files.insert(TOK.into(), spm(s.v));
    let metadata = concat!(
        r#"{"sharded_backend": "zarr", "sharded_backend_version": 1, "#,
        r#""common_backend": "torch", "common_backend_version": 1}"#
    );
    files.insert("model_weights/metadata.json".into(), metadata.as_bytes().to_vec());
    files.insert("model_weights/common.pt".into(), b"PK\x03\x04 not read".to_vec());
    files
        .insert("model_weights/model.decoder.layers.mlp.linear_fc1._extra_state/shard_0_2.pt".into(), b"junk".to_vec());
    let qkv = fill(&[l, rows, h], 1);
    put_array(&mut files, s, QKV, &[l, rows, h], &[1, rows / t, h], &qkv);
    put_array(
        &mut files,
        s,
        "model.decoder.layers.self_attention.linear_proj.weight",
        &[l, h, q],
        &[1, h, q / t],
        &fill(&[l, h, q], 2),
    );
    // fc1 from canonical gate (code 3) and up (code 4), in the requested on-disk layout.
    let mut fc1 = Vec::new();
    for li in 0..l {
        let part = |kind: usize, r0: usize, n: usize, out: &mut Vec<f32>| {
            for r in r0..r0 + n {
                out.extend((0..h).map(|c| code(kind, li, r, c)));
            }
        };
        if s.interleaved {
            for r in 0..t {
                part(3, r * f / t, f / t, &mut fc1);
                part(4, r * f / t, f / t, &mut fc1);
            }
        } else {
            part(3, 0, f, &mut fc1);
            part(4, 0, f, &mut fc1);
        }
    }
    let fc1_rows = if s.interleaved { 2 * f / t } else { f / t };
    put_array(&mut files, s, FC1, &[l, 2 * f, h], &[1, fc1_rows, h], &fc1);
    put_array(&mut files, s, FC2, &[l, h, f], &[1, h, f / t], &fill(&[l, h, f], 5));
    let nc = if s.ragged { 3 } else { h };
    let (an, mn) = if s.te {
        (
            "model.decoder.layers.self_attention.linear_qkv.layer_norm_weight",
            "model.decoder.layers.mlp.linear_fc1.layer_norm_weight",
        )
    } else {
        ("model.decoder.layers.input_layernorm.weight", "model.decoder.layers.pre_mlp_layernorm.weight")
    };
    put_array(&mut files, s, an, &[l, h], &[1, nc], &fill(&[l, 1, h], 6));
    put_array(&mut files, s, mn, &[l, h], &[1, nc], &fill(&[l, 1, h], 7));
    put_array(&mut files, s, "model.decoder.final_layernorm.weight", &[h], &[nc], &fill(&[1, 1, h], 8));
    let vc = if s.ragged { 5 } else { s.vp / t };
    let emb = fill(&[s.vp, h], 9);
    put_array(&mut files, s, EMB, &[s.vp, h], &[vc, h], &emb);
    if !s.tied {
        put_array(&mut files, s, "model.output_layer.weight", &[s.vp, h], &[vc, h], &fill(&[s.vp, h], 10));
    }
    (files, Globals { qkv, emb })
}

fn write_dir(root: &Path, files: &Files) {
    for (n, d) in files {
        let p = root.join(n);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, d).unwrap();
    }
}

/// Appends a member with its name written raw (so `./`, `/abs` and `..` survive), GNU long names as `L` records.
fn raw_append(b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8], kind: tar::EntryType) {
    let mut long = None;
    if name.len() > 100 {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(name.len() as u64 + 1);
        h.set_mode(0o644);
        h.set_cksum();
        let mut d = name.as_bytes().to_vec();
        d.push(0);
        b.append(&h, d.as_slice()).unwrap();
        long = Some(&name[..100]);
    }
    let short = long.unwrap_or(name);
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..short.len()].copy_from_slice(short.as_bytes());
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// A GNU hard-link member `name` -> earlier member `target`.
fn link_append(b: &mut tar::Builder<std::fs::File>, name: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_link_name(target).unwrap();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, std::io::empty()).unwrap();
}

/// A member named through a PAX `path=` record.
fn pax_append(b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
    let body = format!(" path={name}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    let rec = format!("{len}{body}");
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders/x").unwrap();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(rec.len() as u64);
    h.set_cksum();
    b.append(&h, rec.as_bytes()).unwrap();
    raw_append(b, "placeholder", data, tar::EntryType::Regular);
}

/// A member named through the ustar `prefix` field.
fn ustar_append(b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
    let (prefix, base) = name.rsplit_once('/').unwrap();
    let mut h = tar::Header::new_ustar();
    let u = h.as_ustar_mut().unwrap();
    u.prefix[..prefix.len()].copy_from_slice(prefix.as_bytes());
    u.name[..base.len()].copy_from_slice(base.as_bytes());
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[derive(Default)]
struct TarOpts {
    /// Folder the checkpoint sits in (a repo-root tar), e.g. `Model/`.
    prefix: &'static str,
    /// `./` before every name, plus the `./` root entry (GNU `tar -cf x.nemo .`).
    dot: bool,
    git_junk: bool,
    /// Name some members through PAX and ustar prefix records.
    exotic: bool,
    extra: Vec<(String, Vec<u8>)>,
}

fn write_tar(path: &Path, files: &Files, o: &TarOpts) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let d = if o.dot { "./" } else { "" };
    if o.dot {
        raw_append(&mut b, "./", &[], tar::EntryType::Directory);
    }
    if o.git_junk {
        raw_append(&mut b, &format!("{d}.git/config"), b"[core]", tar::EntryType::Regular);
        raw_append(
            &mut b,
            &format!("{d}.git/lfs/objects/ab/cd/model_config.yaml"),
            b"junk: 1",
            tar::EntryType::Regular,
        );
        raw_append(&mut b, &format!("{d}README.md"), b"# readme", tar::EntryType::Regular);
    }
    for (i, (n, data)) in files.iter().enumerate() {
        let name = format!("{d}{}{n}", o.prefix);
        if o.git_junk && n.ends_with("/.zarray") && name.len() <= 100 {
            // The LFS object comes first (as in `.git/` sorted before the model folder); the file is a hard link.
            let obj = format!("{d}.git/lfs/objects/{i:04}");
            raw_append(&mut b, &obj, data, tar::EntryType::Regular);
            link_append(&mut b, &name, &obj);
            continue;
        }
        match (o.exotic, i % 3) {
            (true, 1) => pax_append(&mut b, &name, data),
            (true, 2) if name.len() < 150 && name.contains('/') => ustar_append(&mut b, &name, data),
            _ => raw_append(&mut b, &name, data, tar::EntryType::Regular),
        }
    }
    for (n, data) in &o.extra {
        raw_append(&mut b, n, data, tar::EntryType::Regular);
    }
    b.finish().unwrap();
}

fn open_dir(tmp: &Tmp, files: &Files) -> Result<NemoSource, Error> {
    let root = tmp.0.join("ckpt");
    write_dir(&root, files);
    NemoSource::open(&root)
}

fn open_tar(tmp: &Tmp, files: &Files, o: &TarOpts) -> Result<NemoSource, Error> {
    let p = tmp.0.join("model.nemo");
    write_tar(&p, files, o);
    NemoSource::open(&p)
}

fn rows_of(t: &Tensor) -> Vec<Vec<f32>> {
    let v = t.to_f32_vec();
    v.chunks(t.shape[1..].iter().product()).map(<[f32]>::to_vec).collect()
}

/// Expected canonical tensor, from the spec's formulas (§5a for QKV).
fn expected(s: &Spec, g: &Globals, name: &str) -> Vec<Vec<f32>> {
    let (h, hd, grp) = (s.h, s.hd, s.nq / s.nkv);
    let rows = (s.nq + 2 * s.nkv) * hd;
    let qkv_row = |l: usize, r: usize| g.qkv[(l * rows + r) * h..(l * rows + r + 1) * h].to_vec();
    let canon = |t: usize, l: usize, n: usize, cols: usize| {
        (0..n).map(|r| (0..cols).map(|c| code(t, l, r, c)).collect()).collect()
    };
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["tok_emb"] => (0..s.v).map(|r| g.emb[r * h..(r + 1) * h].to_vec()).collect(),
        ["lm_head"] if s.tied => expected(s, g, "tok_emb"),
        ["lm_head"] => canon(10, 0, s.v, h),
        ["final_norm"] => canon(8, 0, 1, h),
        ["layers", l, t] => {
            let l: usize = l.parse().unwrap();
            match *t {
                "wq" => (0..s.nq * hd)
                    .map(|r| qkv_row(l, ((r / hd / grp) * (grp + 2) + (r / hd) % grp) * hd + r % hd))
                    .collect(),
                "wk" => (0..s.nkv * hd).map(|r| qkv_row(l, ((r / hd) * (grp + 2) + grp) * hd + r % hd)).collect(),
                "wv" => (0..s.nkv * hd).map(|r| qkv_row(l, ((r / hd) * (grp + 2) + grp + 1) * hd + r % hd)).collect(),
                "wo" => canon(2, l, h, s.nq * hd),
                "w_gate" => canon(3, l, s.f, h),
                "w_up" => canon(4, l, s.f, h),
                "w_down" => canon(5, l, h, s.f),
                "attn_norm" => canon(6, l, 1, h),
                "mlp_norm" => canon(7, l, 1, h),
                _ => panic!("{t}"),
            }
        }
        _ => panic!("{name}"),
    }
}

/// Loads every canonical tensor and compares it with the formulas, in the given stored dtype.
fn check_all(src: &NemoSource, s: &Spec, g: &Globals) {
    let want_dtype = match s.dtype {
        "<f2" => DType::F16,
        "bfloat16" => DType::BF16,
        _ => DType::F32,
    };
    let infos = src.tensors();
    assert_eq!(infos.len(), 3 + 9 * s.l);
    for info in infos {
        let t = src.load(&info.name).unwrap();
        assert_eq!(t.shape, info.shape, "{}", info.name);
        assert_eq!(t.dtype(), want_dtype, "{}", info.name);
        let mut want = expected(s, g, &info.name);
        if want.len() == 1 && t.shape.len() == 1 {
            want = vec![want.concat()];
        } else {
            assert_eq!(t.shape[0], want.len(), "{}", info.name);
        }
        let conv = |x: f32| match s.dtype {
            "<f2" => half::f16::from_f32(x).to_f32(),
            "bfloat16" => half::bf16::from_f32(x).to_f32(),
            _ => x,
        };
        let want: Vec<Vec<f32>> = want.iter().map(|r| r.iter().map(|x| conv(*x)).collect()).collect();
        let got = if t.shape.len() == 1 { vec![t.to_f32_vec()] } else { rows_of(&t) };
        assert_eq!(got, want, "{}", info.name);
    }
}

fn detail(src: &NemoSource, k: &str) -> String {
    src.details().into_iter().find(|(a, _)| a == k).map(|(_, v)| v).unwrap()
}

#[path = "nemo_loader/cases.rs"]
mod cases;
