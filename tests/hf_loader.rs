//! Hugging Face folder reader: every malformed checkpoint fails with its own error naming the file and tensor.
mod common;
use common::fixture;
use std::path::{Path, PathBuf};
use triton_llama::loader;
use triton_llama::{Error, ErrorKind};

/// A scratch copy of the f32 fixture folder that a test may corrupt.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tl-hf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.model"] {
        std::fs::copy(fixture("models/mha_f32/hf").join(f), dir.join(f)).unwrap();
    }
    dir
}

fn open_err(dir: &Path) -> Error {
    match loader::open(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e) => e,
    }
}

/// Rewrites the safetensors header with `edit` applied to its JSON.
fn edit_header(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut h);
    let mut hs = serde_json::to_vec(&h).unwrap();
    while hs.len() < n {
        hs.push(b' ');
    }
    assert_eq!(hs.len(), n, "edited header must keep its length");
    let mut out = bytes[..8].to_vec();
    out.extend(hs);
    out.extend(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
}

#[test]
fn good_folder_opens() {
    let src = loader::open(&fixture("models/mha_f32/hf")).unwrap();
    assert_eq!(src.config().hidden_size, 64);
    assert_eq!(src.tensors().len(), 3 + 9 * 2);
    assert!(src.format().contains("safetensors"));
}

#[test]
fn lfs_pointer_instead_of_weights() {
    let d = scratch("lfs");
    std::fs::write(
        d.join("model.safetensors"),
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 916840\n",
    )
    .unwrap();
    let e = open_err(&d);
    assert!(matches!(e, Error::LfsPointer { .. }), "{e}");
    assert!(e.to_string().contains("git lfs pull"));
}

#[test]
fn lfs_pointer_instead_of_config() {
    let d = scratch("lfs-config");
    std::fs::write(d.join("config.json"), "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 771\n")
        .unwrap();
    assert!(matches!(open_err(&d), Error::LfsPointer { .. }));
}

#[test]
fn truncated_weights() {
    let d = scratch("trunc");
    let p = d.join("model.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len - 100).unwrap();
    let e = open_err(&d);
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"));
}

#[test]
fn header_length_larger_than_file() {
    let d = scratch("hdr");
    let p = d.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    let e = open_err(&d);
    assert!(e.to_string().contains("header length"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let d = scratch("missing");
    edit_header(&d, |h| {
        let t = h.as_object_mut().unwrap().remove("model.layers.1.mlp.up_proj.weight").unwrap();
        h.as_object_mut().unwrap().insert("model.layers.1.mlp.up_projX.weight".into(), t);
    });
    let e = open_err(&d);
    assert!(matches!(&e, Error::MissingTensor { name, .. } if name == "model.layers.1.mlp.up_proj.weight"), "{e}");
}

#[test]
fn misshaped_tensor_is_named() {
    let d = scratch("shape");
    // Same byte size, different shape: [176, 64] -> [64, 176].
    edit_header(&d, |h| {
        h["model.layers.0.mlp.gate_proj.weight"]["shape"] = serde_json::json!([64, 176]);
    });
    let e = open_err(&d);
    assert!(matches!(&e, Error::TensorShape { name, .. } if name == "model.layers.0.mlp.gate_proj.weight"), "{e}");
}

#[test]
fn byte_size_not_matching_shape() {
    let d = scratch("bytes");
    edit_header(&d, |h| {
        h["model.norm.weight"]["shape"] = serde_json::json!([65]);
    });
    let e = open_err(&d);
    assert!(e.to_string().contains("does not match shape"), "{e}");
    assert!(e.to_string().contains("model.norm.weight"));
}

#[test]
fn bias_tensors_are_refused() {
    let d = scratch("bias");
    edit_header(&d, |h| {
        let t = h.as_object_mut().unwrap().remove("model.norm.weight").unwrap();
        h.as_object_mut().unwrap().insert("model.norm.bias".into(), t);
    });
    let e = open_err(&d);
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}

#[test]
fn pytorch_bin_only_says_convert() {
    let d = scratch("bin");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("pytorch_model.bin"), b"PK").unwrap();
    let e = open_err(&d);
    assert!(e.to_string().contains("safetensors"), "{e}");
}

#[test]
fn invalid_config_json() {
    let d = scratch("cfg");
    std::fs::write(d.join("config.json"), "{\"hidden_size\": 64,").unwrap();
    assert!(open_err(&d).to_string().contains("invalid JSON"));
    std::fs::write(d.join("config.json"), "{\"model_type\": \"gpt2\"}").unwrap();
    assert_eq!(open_err(&d).kind(), ErrorKind::Unsupported);
}

#[test]
fn shard_index_pointing_outside_the_folder() {
    let d = scratch("index");
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.norm.weight": "../evil.safetensors"}}"#,
    )
    .unwrap();
    assert!(matches!(open_err(&d), Error::UnsafePath { .. }));
}
