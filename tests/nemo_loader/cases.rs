//! The test cases of `nemo_loader`: good layouts first, then one test per refused checkpoint.
use super::*;

const LFS: &[u8] = b"version https://git-lfs.github.com/spec/v1\n\
    oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n";

fn rows(ids: &[usize], layer: usize, cols: usize) -> Vec<Vec<f32>> {
    ids.iter().map(|r| (0..cols).map(|c| code(1, layer, *r, c)).collect()).collect()
}

fn edit(files: &mut Files, name: &str, from: &str, to: &str) {
    let s = String::from_utf8(files[name].clone()).unwrap();
    assert!(s.contains(from), "{name} lacks {from:?}");
    files.insert(name.into(), s.replace(from, to).into_bytes());
}

fn dir_err(files: &Files) -> Error {
    let tmp = Tmp::new();
    match open_dir(&tmp, files) {
        Ok(_) => panic!("opened a bad checkpoint"),
        Err(e) => e,
    }
}

fn tar_err(files: &Files, o: &TarOpts) -> Error {
    let tmp = Tmp::new();
    match open_tar(&tmp, files, o) {
        Ok(_) => panic!("opened a bad checkpoint"),
        Err(e) => e,
    }
}

#[test]
fn tp1_folder_gqa_loads_every_tensor() {
    let s = spec();
    let (files, g) = build(&s);
    let tmp = Tmp::new();
    let src = open_dir(&tmp, &files).unwrap();
    let c = src.config();
    assert_eq!(
        (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size),
        (2, 8, 4, 2, 2, 12)
    );
    assert_eq!(
        (c.vocab_size, c.max_position_embeddings, c.rms_norm_eps, c.rope_theta, c.rope_scaling),
        (10, 4096, 1e-5, 10000.0, 1.0)
    );
    assert_eq!((src.tp_size(), src.fc1_layout(), src.padded_vocab(), src.tied()), (1, Fc1Layout::GluSplit, 12, false));
    assert_eq!(src.format(), "nemo (folder, zarr dist-ckpt, TP=1 chunks)");
    assert_eq!(src.tokenizer_file(), TOK);
    assert_eq!(detail(&src, "root"), ".");
    assert_eq!(detail(&src, "dtype"), "f32");
    assert!(!src.default_add_bos());
    assert_eq!(src.default_stop_strings(), vec!["<extra_id_1>".to_string()]);
    check_all(&src, &s, &g);
    assert!(matches!(src.load("layers.2.wq"), Err(Error::MissingTensor { .. })));
    assert!(matches!(src.load("layers.0.bogus"), Err(Error::MissingTensor { .. })));
}

#[test]
fn qkv_gqa_rows_land_where_the_spec_says() {
    // nq=4, nkv=2, hd=2, g=2: each group is 8 rows: q(2g) q(2g+1) k v, 2 rows each.
    for tp in [1, 2] {
        let s = Spec { tp, ..spec() };
        let (files, _) = build(&s);
        let tmp = Tmp::new();
        let src = open_dir(&tmp, &files).unwrap();
        assert_eq!(rows_of(&src.load("layers.1.wq").unwrap()), rows(&[0, 1, 2, 3, 8, 9, 10, 11], 1, 8));
        assert_eq!(rows_of(&src.load("layers.1.wk").unwrap()), rows(&[4, 5, 12, 13], 1, 8));
        assert_eq!(rows_of(&src.load("layers.1.wv").unwrap()), rows(&[6, 7, 14, 15], 1, 8));
    }
}

#[test]
fn qkv_mha_rows_land_where_the_spec_says() {
    // nq=nkv=4, hd=2, g=1: per head [q; k; v], 6 rows a head.
    let s = Spec { nkv: 4, tp: 2, ..spec() };
    let (files, g) = build(&s);
    let tmp = Tmp::new();
    let src = open_dir(&tmp, &files).unwrap();
    assert_eq!(rows_of(&src.load("layers.0.wq").unwrap()), rows(&[0, 1, 6, 7, 12, 13, 18, 19], 0, 8));
    assert_eq!(rows_of(&src.load("layers.0.wk").unwrap()), rows(&[2, 3, 8, 9, 14, 15, 20, 21], 0, 8));
    assert_eq!(rows_of(&src.load("layers.0.wv").unwrap()), rows(&[4, 5, 10, 11, 16, 17, 22, 23], 0, 8));
    check_all(&src, &s, &g);
}

#[test]
fn tp2_both_fc1_layouts_give_the_same_gate_and_up() {
    let mut loaded = Vec::new();
    for (interleaved, layout) in [(false, Fc1Layout::GluSplit), (true, Fc1Layout::RankInterleaved)] {
        let s = Spec { tp: 2, interleaved, ..spec() };
        let (files, g) = build(&s);
        let tmp = Tmp::new();
        // With `.git/` junk first and every `.zarray` a GNU hard link to its LFS object there.
        let src = open_tar(&tmp, &files, &TarOpts { dot: true, git_junk: true, ..Default::default() }).unwrap();
        assert_eq!((src.tp_size(), src.fc1_layout()), (2, layout));
        assert_eq!(src.format(), "nemo (tar, zarr dist-ckpt, TP=2 chunks)");
        assert_eq!(detail(&src, "container"), "tar");
        check_all(&src, &s, &g);
        loaded.push((src.load("layers.1.w_gate").unwrap(), src.load("layers.1.w_up").unwrap()));
    }
    assert_eq!(loaded[0], loaded[1]);
    assert_ne!(loaded[0].0, loaded[0].1);
}

#[test]
fn padded_vocab_is_trimmed_to_the_tokenizer() {
    let s = Spec { vp: 16, tp: 2, ..spec() };
    let (files, g) = build(&s);
    let tmp = Tmp::new();
    let src = open_dir(&tmp, &files).unwrap();
    assert_eq!((src.padded_vocab(), src.config().vocab_size), (16, 10));
    assert_eq!(src.load("tok_emb").unwrap().shape, vec![10, 8]);
    assert_eq!(src.load("lm_head").unwrap().shape, vec![10, 8]);
    check_all(&src, &s, &g);
}

#[test]
fn tied_embeddings_use_the_embedding_as_lm_head() {
    let s = Spec { tied: true, ..spec() };
    let (mut files, g) = build(&s);
    // The key absent means true.
    edit(&mut files, "model_config.yaml", "share_embeddings_and_output_weights: true\n", "");
    let tmp = Tmp::new();
    let src = open_dir(&tmp, &files).unwrap();
    assert!(src.tied());
    assert_eq!(src.load("lm_head").unwrap(), src.load("tok_emb").unwrap());
    check_all(&src, &s, &g);
    // Not shared but no output layer: the output layer is missing.
    edit(&mut files, "model_config.yaml", "make_vocab", "share_embeddings_and_output_weights: false\nmake_vocab");
    match dir_err(&files) {
        Error::MissingTensor { name, .. } => assert_eq!(name, "model.output_layer.weight"),
        e => panic!("{e}"),
    }
}

#[test]
fn repo_root_tar_with_git_long_pax_and_ustar_names() {
    let s = Spec { tp: 2, ..spec() };
    let (files, g) = build(&s);
    let prefix = "NV-Llama2-70B-RLHF-Chat-a-folder-name-long-enough-to-need-gnu-long-name-records/";
    let tmp = Tmp::new();
    let o = TarOpts { prefix, dot: true, git_junk: true, exotic: true, extra: vec![] };
    let src = open_tar(&tmp, &files, &o).unwrap();
    assert_eq!(detail(&src, "root"), prefix.trim_end_matches('/'));
    assert_eq!(src.tokenizer_file(), format!("{prefix}{TOK}"));
    check_all(&src, &s, &g);
}

#[test]
fn half_dtypes_stay_stored_with_ragged_chunks_and_nested_keys() {
    for dtype in ["bfloat16", "<f2"] {
        let s = Spec { dtype, ragged: true, sep: "/", tp: 2, ..spec() };
        let (files, g) = build(&s);
        assert!(files.contains_key(&format!("model_weights/{EMB}/2/0")), "ragged nested chunk keys");
        let tmp = Tmp::new();
        let src = open_dir(&tmp, &files).unwrap();
        check_all(&src, &s, &g);
    }
}

#[test]
fn local_spec_norm_names_are_accepted() {
    let s = Spec { te: false, ..spec() };
    let (files, g) = build(&s);
    let tmp = Tmp::new();
    check_all(&open_dir(&tmp, &files).unwrap(), &s, &g);
}

#[test]
fn yaml_defaults_and_overrides() {
    let s = Spec { nkv: 4, ..spec() };
    let (mut files, _) = build(&s);
    for k in ["num_query_groups: 4\n", "kv_channels: null\n", "layernorm_epsilon: 1.0e-05\n", "bias: false\n"] {
        edit(&mut files, "model_config.yaml", k, "");
    }
    edit(
        &mut files,
        "model_config.yaml",
        "precision",
        "rotary_base: 500000\nseq_len_interpolation_factor: 4\nprecision",
    );
    let tmp = Tmp::new();
    let src = open_dir(&tmp, &files).unwrap();
    let c = src.config();
    assert_eq!((c.num_kv_heads, c.head_dim, c.rms_norm_eps, c.rope_theta, c.rope_scaling), (4, 2, 1e-5, 500000.0, 4.0));
}

#[test]
fn lfs_pointers_are_refused() {
    let (files, _) = build(&spec());
    let targets = [
        "model_config.yaml".to_string(),
        format!("model_weights/{QKV}/.zarray"),
        format!("model_weights/{QKV}/1.0.0"),
        TOK.to_string(),
        "model_weights/metadata.json".to_string(),
    ];
    for t in targets {
        let mut f = files.clone();
        f.insert(t.clone(), LFS.to_vec());
        match dir_err(&f) {
            Error::LfsPointer { path } => assert!(path.ends_with(&t), "{path:?} vs {t}"),
            e => panic!("{t}: {e}"),
        }
    }
    let tmp = Tmp::new();
    let p = tmp.0.join("model.nemo");
    std::fs::write(&p, LFS).unwrap();
    assert!(matches!(NemoSource::open(&p), Err(Error::LfsPointer { .. })));
}

#[test]
fn torch_dist_backend_is_refused() {
    let (mut files, _) = build(&spec());
    edit(&mut files, "model_weights/metadata.json", "\"zarr\"", "\"torch_dist\"");
    match tar_err(&files, &TarOpts::default()) {
        Error::UnsupportedFormat { format, hint, .. } => {
            assert!(format.contains("torch_dist"), "{format}");
            assert!(hint.contains("zarr backend"), "{hint}");
        }
        e => panic!("{e}"),
    }
}

#[test]
fn legacy_pickle_checkpoints_are_refused() {
    let (files, _) = build(&spec());
    for legacy in ["model_weights.ckpt", "mp_rank_00/model_weights.ckpt", "tp_rank_00_pp_rank_000/model_weights.ckpt"] {
        let mut f: Files = files
            .iter()
            .filter(|(k, _)| !k.starts_with("model_weights/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        f.insert(legacy.into(), b"PK\x03\x04".to_vec());
        match dir_err(&f) {
            Error::UnsupportedFormat { format, path, .. } => {
                assert!(format.contains("legacy") && format.contains("pickle"), "{format}");
                assert!(path.ends_with(legacy));
            }
            e => panic!("{legacy}: {e}"),
        }
    }
}

#[test]
fn nemo2_checkpoints_are_refused() {
    let mut f = Files::new();
    f.insert("context/model.yaml".into(), b"_target_: x".to_vec());
    f.insert("weights/metadata.json".into(), b"{}".to_vec());
    for e in [dir_err(&f), tar_err(&f, &TarOpts { prefix: "m/", ..Default::default() })] {
        assert!(matches!(&e, Error::UnsupportedFormat { format, .. } if format.contains("NeMo 2.0")), "{e}");
    }
}

#[test]
fn missing_array_is_named() {
    let (files, _) = build(&spec());
    let f: Files = files.into_iter().filter(|(k, _)| !k.contains(FC2)).collect();
    match dir_err(&f) {
        Error::MissingTensor { name, .. } => assert_eq!(name, FC2),
        e => panic!("{e}"),
    }
}

#[test]
fn misshaped_arrays_are_named() {
    let (files, _) = build(&spec());
    let mut f = files.clone();
    edit(&mut f, &format!("model_weights/{QKV}/.zarray"), "[2, 16, 8]", "[2, 18, 8]");
    match dir_err(&f) {
        Error::TensorShape { name, expected, got, path } => {
            assert_eq!((name.as_str(), expected, got), (QKV, vec![2, 16, 8], vec![2, 18, 8]));
            assert!(path.ends_with(format!("{QKV}/.zarray")));
        }
        e => panic!("{e}"),
    }
    // Padded vocab smaller than the tokenizer's.
    let mut f = files.clone();
    f.insert(TOK.into(), spm(20));
    assert!(matches!(dir_err(&f), Error::TensorShape { name, .. } if name == EMB));
}

#[test]
fn chunk_files_must_exist_with_their_exact_size() {
    let (files, _) = build(&spec());
    let chunk = format!("model_weights/{QKV}/1.0.0");
    let mut f = files.clone();
    f.get_mut(&chunk).unwrap().truncate(100);
    match dir_err(&f) {
        Error::Truncated { path, name, expected, got } => {
            assert!(path.ends_with(&chunk));
            assert_eq!((name.as_str(), expected, got), (QKV, 16 * 8 * 4, 100));
        }
        e => panic!("{e}"),
    }
    let mut f = files.clone();
    f.get_mut(&chunk).unwrap().extend_from_slice(&[0; 4]);
    assert!(
        matches!(dir_err(&f), Error::Checkpoint { path, msg } if path.ends_with(&chunk) && msg.contains("expected"))
    );
    let mut f = files.clone();
    f.remove(&chunk);
    assert!(
        matches!(dir_err(&f), Error::Checkpoint { path, msg } if path.ends_with(&chunk) && msg.contains("missing"))
    );
}

#[test]
fn unsafe_tar_entries_are_refused() {
    let (files, _) = build(&spec());
    for bad in ["/etc/passwd", "./model_weights/../../evil", "../x.model"] {
        let o = TarOpts { extra: vec![(bad.to_string(), b"x".to_vec())], ..Default::default() };
        match tar_err(&files, &o) {
            Error::UnsafePath { entry, .. } => assert_eq!(entry, bad),
            e => panic!("{bad}: {e}"),
        }
    }
}

#[test]
fn symlink_escaping_a_folder_is_refused() {
    let (files, g) = build(&spec());
    let tmp = Tmp::new();
    let root = tmp.0.join("ckpt");
    write_dir(&root, &files);
    // A link that stays inside is fine.
    std::os::unix::fs::symlink(root.join("model_config.yaml"), root.join("model_weights/copy.yaml")).unwrap();
    check_all(&NemoSource::open(&root).unwrap(), &spec(), &g);
    std::fs::write(tmp.0.join("outside.model"), b"x").unwrap();
    std::os::unix::fs::symlink(tmp.0.join("outside.model"), root.join("evil.model")).unwrap();
    match NemoSource::open(&root) {
        Err(Error::UnsafePath { entry, .. }) => assert_eq!(entry, "evil.model"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("followed an escaping symlink"),
    }
}

#[test]
fn bad_zarray_metadata_is_refused() {
    let (files, _) = build(&spec());
    let za = format!("model_weights/{QKV}/.zarray");
    for (from, to, what) in [
        ("\"<f4\"", "\">f4\"", "big-endian"),
        ("\"<f4\"", "\"<i4\"", "dtype"),
        ("\"compressor\": null", "\"compressor\": {\"id\": \"blosc\"}", "compressor"),
        ("\"filters\": null", "\"filters\": [{\"id\": \"delta\"}]", "filters"),
        ("\"order\": \"C\"", "\"order\": \"F\"", "order"),
    ] {
        let mut f = files.clone();
        edit(&mut f, &za, from, to);
        assert!(matches!(dir_err(&f), Error::UnsupportedFormat { format, .. } if format.contains(what)), "{what}");
    }
    let mut f = files.clone();
    f.insert(za.clone(), b"{\"shape\": [".to_vec());
    assert!(matches!(dir_err(&f), Error::Checkpoint { msg, .. } if msg.contains("JSON")));
    let mut f = files.clone();
    edit(&mut f, &za, "\"chunks\": [1, 16, 8]", "\"chunks\": [1, 16]");
    assert!(matches!(dir_err(&f), Error::Checkpoint { msg, .. } if msg.contains("rank")));
}

#[test]
fn inconsistent_tp_chunking_is_refused() {
    let (files, _) = build(&Spec { tp: 2, ..spec() });
    let mut f = files.clone();
    edit(&mut f, &format!("model_weights/{FC1}/.zarray"), "[1, 6, 8]", "[1, 4, 8]");
    assert!(matches!(dir_err(&f), Error::Checkpoint { msg, .. } if msg.contains("neither")));
    let mut f = files.clone();
    edit(&mut f, &format!("model_weights/{QKV}/.zarray"), "[1, 8, 8]", "[1, 16, 8]");
    assert!(matches!(dir_err(&f), Error::Checkpoint { msg, .. } if msg.contains("TP size")));
}

#[test]
fn non_llama_configs_are_refused() {
    let (files, _) = build(&spec());
    for (from, to, what) in [
        ("normalization: rmsnorm\n", "normalization: layernorm1p\n", "normalization"),
        ("normalization: rmsnorm\n", "", "normalization"),
        ("activation: fast-swiglu", "activation: gelu", "activation"),
        ("position_embedding_type: rope", "position_embedding_type: learned_absolute", "position_embedding_type"),
        ("rotary_percentage: 1.0", "rotary_percentage: 0.5", "rotary_percentage"),
    ] {
        let mut f = files.clone();
        edit(&mut f, "model_config.yaml", from, to);
        assert!(matches!(dir_err(&f), Error::UnsupportedFormat { format, .. } if format.contains(what)), "{what}");
    }
    let mut f = files.clone();
    put_array(&mut f, &spec(), "model.decoder.layers.self_attention.linear_proj.bias", &[2, 8], &[1, 8], &[0.0; 16]);
    assert!(matches!(dir_err(&f), Error::UnsupportedFormat { format, .. } if format.contains("bias")));
    let mut f = files.clone();
    f.insert("model_config.yaml".into(), b"num_layers: [1, 2\n".to_vec());
    assert!(matches!(dir_err(&f), Error::Checkpoint { msg, .. } if msg.contains("YAML")));
    let mut f = files.clone();
    edit(&mut f, "model_config.yaml", "hidden_size: 8", "hidden_size: eight");
    assert!(matches!(dir_err(&f), Error::Checkpoint { msg, .. } if msg.contains("hidden_size")));
}

#[test]
fn tokenizer_resolution() {
    let (files, _) = build(&spec());
    // Absolute path: matched by basename.
    let mut f = files.clone();
    edit(&mut f, "model_config.yaml", &format!("nemo:{TOK}"), "/artifacts/tokenizer.model");
    let tmp = Tmp::new();
    assert_eq!(open_dir(&tmp, &f).unwrap().tokenizer_file(), TOK);
    // No reference: the one *.model; two of them is ambiguous.
    let mut f = files.clone();
    edit(&mut f, "model_config.yaml", &format!("  model: nemo:{TOK}\n"), "");
    let tmp = Tmp::new();
    assert_eq!(open_dir(&tmp, &f).unwrap().tokenizer_file(), TOK);
    f.insert("other.model".into(), spm(10));
    assert!(matches!(dir_err(&f), Error::Checkpoint { msg, .. } if msg.contains("several")));
    // Garbage instead of a SentencePiece model.
    let mut f = files.clone();
    f.insert(TOK.into(), vec![0xff; 7]);
    assert!(matches!(dir_err(&f), Error::Checkpoint { msg, .. } if msg.contains("SentencePiece")));
}

#[test]
fn broken_containers_are_refused() {
    let tmp = Tmp::new();
    let p = tmp.0.join("model.nemo");
    std::fs::write(&p, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).unwrap();
    assert!(matches!(NemoSource::open(&p), Err(Error::UnsupportedFormat { format, .. }) if format.contains("gzip")));
    std::fs::write(&p, vec![7u8; 2048]).unwrap();
    assert!(matches!(NemoSource::open(&p), Err(Error::Checkpoint { msg, .. }) if msg.contains("tar")));
    // A tar cut inside its last member (a 384-byte chunk in the block before the two end blocks), or after it.
    let (files, _) = build(&spec());
    write_tar(&p, &files, &TarOpts::default());
    let len = std::fs::metadata(&p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len - 1024).unwrap();
    assert!(matches!(NemoSource::open(&p), Err(Error::Checkpoint { msg, .. }) if msg.contains("truncated")));
    f.set_len(len - 1024 - 512 + 100).unwrap();
    match NemoSource::open(&p) {
        Err(Error::Truncated { name, expected, got, .. }) => {
            assert_eq!((name.as_str(), expected - got), ("model_weights/model.output_layer.weight/0.0", 284));
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened a cut tar"),
    }
    // No model_config.yaml at all.
    let mut f = Files::new();
    f.insert("README.md".into(), b"hi".to_vec());
    assert!(matches!(dir_err(&f), Error::Checkpoint { msg, .. } if msg.contains("model_config.yaml")));
}
