//! Fuzz harness bodies, one function per target: each feeds one input to a library entry point and asserts
//! the invariants that must hold for any input (no panic, errors for bad ids, outputs inside their inputs).
//!
//! The `cargo fuzz` binaries in `fuzz_targets/` call these, and `tests/fuzz_regressions.rs` includes this
//! file by path to replay `fuzz/regressions/` and the seed corpus under plain `cargo test`, so the same code
//! runs in both places. It depends on nothing but `triton_llama` and std.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use triton_llama::loader;
use triton_llama::tokenizer::{IncrementalDecoder, Tokenizer};

/// Every target, by name (the folder names under `fuzz/corpus/` and `fuzz/regressions/`).
pub const TARGETS: [&str; 9] = [
    "tokenizer_model",
    "tokenizer_encode",
    "detokenizer",
    "zarray",
    "nemo_yaml",
    "nemo_tar",
    "safetensors",
    "hf_config",
    "triton_request",
];

/// Runs target `name` on one input; panics on a finding.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "tokenizer_model" => tokenizer_model(data),
        "tokenizer_encode" => tokenizer_encode(data),
        "detokenizer" => detokenizer(data),
        "zarray" => zarray(data),
        "nemo_yaml" => nemo_yaml(data),
        "nemo_tar" => nemo_tar(data),
        "safetensors" => safetensors(data),
        "hf_config" => hf_config(data),
        "triton_request" => triton_request(data),
        _ => panic!("unknown fuzz target `{name}`"),
    }
}

const SPM_MODEL: &[u8] = include_bytes!("../../tests/fixtures/tokenizer/llama_bpe.model");
const HF_SAFETENSORS: &[u8] = include_bytes!("../../tests/fixtures/models/mha_f32/hf/model.safetensors");

/// The committed SentencePiece fixture, loaded once per process.
pub fn fixture_tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_sentencepiece_bytes(SPM_MODEL, Path::new("llama_bpe.model")).expect("fixture model loads")
    })
}

/// A scratch folder private to this process (`$TMPDIR/triton-llama-fuzz-<pid>`); folders of dead processes
/// are removed when it is first made.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("triton-llama-fuzz-")
                    && pid.parse::<u32>().is_ok()
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(ent.path());
                }
            }
        }
        let dir = tmp.join(format!("triton-llama-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

/// Ids from input bytes, two bytes each. Mostly inside the vocabulary; byte values >= 0xF0 in the high byte
/// give ids past it (up to `u32::MAX`), which must be errors everywhere.
fn ids_from(data: &[u8], vocab: usize) -> Vec<u32> {
    data.chunks_exact(2)
        .map(|c| {
            let v = u16::from_le_bytes([c[0], c[1]]);
            match c[1] {
                0xFF => u32::MAX - u32::from(c[0]),
                0xF0..=0xFE => vocab as u32 + u32::from(c[0]),
                _ => u32::from(v) % vocab as u32,
            }
        })
        .collect()
}

/// Arbitrary bytes as a SentencePiece model; a model that loads must encode and decode without panicking,
/// and its ids must stay inside its vocabulary.
pub fn tokenizer_model(data: &[u8]) {
    let origin = Path::new("fuzz.model");
    let counted = loader::nemo_config::count_pieces(origin, data);
    let Ok(tok) = Tokenizer::from_sentencepiece_bytes(data, origin) else { return };
    assert!(counted.is_ok(), "a model the tokenizer accepts must have countable pieces");
    let v = tok.vocab_size();
    assert!(v > 0 && (tok.bos_id() as usize) < v && (tok.eos_id() as usize) < v);
    for text in ["Hello world", " a  b\n\tc", "héllo 你好 🤖", ""] {
        if let Ok(ids) = tok.encode(text, true) {
            assert!(ids.iter().all(|&id| (id as usize) < v), "encode gave an id past the vocabulary");
            tok.decode(&ids).expect("decode of encoded ids");
        }
    }
    let all: Vec<u32> = (0..v.min(512) as u32).collect();
    tok.decode(&all).expect("decode of in-range ids");
    assert!(tok.decode(&[v as u32]).is_err());
}

/// Arbitrary text through the fixture tokenizer: ids in range, BOS only when asked, `decode(encode(t)) == t`,
/// and streaming the ids gives exactly `decode`.
pub fn tokenizer_encode(data: &[u8]) {
    let tok = fixture_tokenizer();
    let text = String::from_utf8_lossy(data);
    let add_bos = data.first().is_some_and(|b| b & 1 == 1);
    let ids = tok.encode(&text, add_bos).expect("encode never fails on valid UTF-8");
    assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
    // BOS only where asked for: a literal `<s>` in the text is plain text.
    let bos_at: Vec<usize> = ids.iter().enumerate().filter(|(_, id)| **id == tok.bos_id()).map(|(i, _)| i).collect();
    assert_eq!(bos_at, if add_bos { vec![0] } else { vec![] }, "BOS positions for {text:?}");
    let decoded = tok.decode(&ids).expect("decode of encoded ids");
    // Identity normaliser and byte fallback: every text round-trips, except that `▁` decodes as a space.
    if !text.contains('\u{2581}') {
        assert_eq!(decoded, text, "round trip");
    }
    // Streaming the ids gives exactly `decode`.
    let mut d = IncrementalDecoder::new();
    let mut streamed = String::new();
    for &id in &ids {
        streamed += &d.push(tok, id).expect("push of an in-range id");
    }
    streamed += &d.finish(tok).expect("finish");
    assert_eq!(streamed, decoded);
}

/// Arbitrary id sequences (some past the vocabulary) through `decode` and the streaming decoder: an
/// out-of-range id is an error that leaves the decoder unchanged; when all ids are valid, the streamed text
/// equals `decode(all)`, and after a prompt it equals `decode(prompt + gen)` past `decode(prompt)`.
pub fn detokenizer(data: &[u8]) {
    let tok = fixture_tokenizer();
    let v = tok.vocab_size();
    let split = data.first().map_or(0, |&b| b as usize);
    let ids = ids_from(data.get(1..).unwrap_or_default(), v);
    let valid = |s: &[u32]| s.iter().all(|&id| (id as usize) < v);
    let full = tok.decode(&ids);
    assert_eq!(full.is_ok(), valid(&ids), "decode must fail exactly on out-of-range ids");

    // From the start of the sequence, skipping invalid ids (each must be refused).
    let mut d = IncrementalDecoder::new();
    let mut streamed = String::new();
    let mut kept = Vec::new();
    for &id in &ids {
        match d.push(tok, id) {
            Ok(s) => {
                assert!((id as usize) < v);
                streamed += &s;
                kept.push(id);
            }
            Err(_) => assert!((id as usize) >= v, "push refused a valid id {id}"),
        }
    }
    streamed += &d.finish(tok).expect("finish");
    assert_eq!(streamed, tok.decode(&kept).expect("decode of valid ids"), "stream of {kept:?}");

    // After a prompt.
    let (prompt, generated) = ids.split_at(split.min(ids.len()));
    match IncrementalDecoder::with_prefix(tok, prompt) {
        Err(_) => assert!(!valid(prompt), "with_prefix refused a valid prompt"),
        Ok(mut d) => {
            assert!(valid(prompt), "with_prefix accepted an out-of-range id");
            let generated: Vec<u32> = generated.iter().copied().filter(|&id| (id as usize) < v).collect();
            let mut out = String::new();
            for &id in &generated {
                out += &d.push(tok, id).expect("push of a valid id");
            }
            out += &d.finish(tok).expect("finish");
            let all: Vec<u32> = prompt.iter().chain(&generated).copied().collect();
            let (whole, head) = (tok.decode(&all).unwrap(), tok.decode(prompt).unwrap());
            if let Some(expected) = whole.strip_prefix(head.as_str()) {
                assert_eq!(out, expected, "prompt {prompt:?} + {generated:?}");
            }
        }
    }
}

/// Arbitrary `.zarray` JSON: an array that parses has a bounded chunk grid and consistent sizes.
pub fn zarray(data: &[u8]) {
    let Ok(za) = loader::zarr::ZArray::parse(PathBuf::from("w/.zarray"), "w", "w", data) else { return };
    assert_eq!(za.shape.len(), za.chunks.len());
    let grid = za.grid();
    let n: u128 = grid.iter().map(|&g| g as u128).product();
    assert!(n <= 1 << 24, "chunk grid {grid:?} too large");
    let chunk_elems: u128 = za.chunks.iter().map(|&c| c as u128).product();
    assert_eq!(chunk_elems * za.dtype.size() as u128, za.chunk_bytes as u128);
    let last: Vec<usize> = grid.iter().map(|g| g - 1).collect();
    assert!(za.chunk_name(&last).starts_with("w/"));
    let _ = za.region_bytes(&za.shape);
}

/// Arbitrary `model_config.yaml`: parses or errors; an accepted config is internally consistent.
pub fn nemo_yaml(data: &[u8]) {
    let Ok(nc) = loader::nemo_config::parse_yaml(Path::new("model_config.yaml"), data) else { return };
    let c = &nc.cfg;
    assert!(c.hidden_size > 0 && c.num_heads > 0 && c.num_kv_heads > 0 && c.num_layers > 0);
    assert_eq!(c.num_heads % c.num_kv_heads, 0);
}

/// Arbitrary bytes as a `.nemo` file, opened with `loader::open`; a checkpoint that opens must load
/// every tensor it lists and its tokenizer (errors allowed, panics not).
pub fn nemo_tar(data: &[u8]) {
    let path = scratch_dir().join("model.nemo");
    std::fs::write(&path, data).expect("write scratch file");
    let Ok(src) = loader::open(&path) else { return };
    exercise(src.as_ref());
}

fn exercise(src: &dyn loader::CheckpointSource) {
    for t in src.tensors() {
        // Only what the input can justify: the fixture-sized checkpoints hold a few MB.
        let bytes = t.shape.iter().try_fold(t.dtype.size(), |a, &d| a.checked_mul(d));
        assert!(
            bytes.is_some_and(|b| b <= 64 << 20),
            "tensor {} of shape {:?} is larger than any input",
            t.name,
            t.shape
        );
        if let Ok(x) = src.load(&t.name) {
            assert_eq!(x.shape, t.shape);
        }
    }
    let _ = src.tokenizer();
}

/// Arbitrary bytes as a whole `model.safetensors`: every float tensor indexed lies inside the file.
pub fn safetensors(data: &[u8]) {
    let Ok(map) = loader::hf::parse_file_bytes(Path::new("model.safetensors"), data) else { return };
    for (name, s) in &map {
        let bytes = s.shape.iter().try_fold(s.dtype.size() as u64, |a, &d| a.checked_mul(d as u64));
        let end = bytes.and_then(|b| b.checked_add(s.offset));
        assert!(
            end.is_some_and(|e| e <= data.len() as u64),
            "tensor {name} at {} of {:?} is outside the file",
            s.offset,
            s.shape
        );
    }
}

/// Arbitrary `config.json` next to the committed Hugging Face fixture's weights, opened with `loader::open`.
pub fn hf_config(data: &[u8]) {
    let dir = scratch_dir().join("hf");
    if !dir.join("model.safetensors").is_file() {
        std::fs::create_dir_all(&dir).expect("scratch folder");
        std::fs::write(dir.join("model.safetensors"), HF_SAFETENSORS).expect("write fixture");
        std::fs::write(dir.join("tokenizer.model"), SPM_MODEL).expect("write fixture");
    }
    std::fs::write(dir.join("config.json"), data).expect("write scratch file");
    let Ok(src) = loader::open(&dir) else { return };
    exercise(src.as_ref());
}

/// Input tensors of one Triton request decoded from fuzz bytes, with the limits and requested outputs.
///
/// Layout: `[flags, max_output_len, outputs mask]`, then tensors `[name, dtype, ndims, dims.., len lo, len hi,
/// data..]` until the input ends. `name` indexes the backend's input names (past them: an unknown name),
/// `dtype` is taken modulo 16 (0 and 15 are invalid types), each dim byte maps to a small size, -1, or a huge
/// one, and BYTES data is raw, so length prefixes may lie about the bytes that follow.
pub fn decode_request(
    data: &[u8],
) -> (Vec<triton_llama::triton::tensors::InputTensor>, Vec<String>, triton_llama::triton::interface::Limits) {
    use triton_llama::triton::interface::{INPUTS, Limits, OUTPUTS};
    use triton_llama::triton::tensors::InputTensor;
    let mut it = data.iter().copied();
    let flags = it.next().unwrap_or(0);
    let lim = Limits {
        max_prompt_bytes: 4096,
        max_input_tokens: 128,
        max_output_len: usize::from(it.next().unwrap_or(100)),
        default_max_tokens: 16,
        decoupled: flags & 1 != 0,
        exclude_input_default: flags & 2 != 0,
    };
    // One bit per output for the first 8 (the committed seeds' layout); the later outputs are never requested here.
    let mask = u32::from(it.next().unwrap_or(0));
    let requested =
        OUTPUTS.iter().enumerate().filter(|(i, _)| mask & (1u32 << i) != 0).map(|(_, o)| o.to_string()).collect();
    let mut inputs = Vec::new();
    while let Some(n) = it.next() {
        let name = INPUTS.get(usize::from(n)).map_or_else(|| format!("unknown_{n}"), |i| i.0.to_string());
        let dtype = u32::from(it.next().unwrap_or(13) % 16);
        let ndims = it.next().unwrap_or(2) % 5;
        let shape = (0..ndims)
            .map(|_| match it.next().unwrap_or(1) {
                0xFF => -1,
                0xFE => i64::MAX,
                0xFD => 1 << 32,
                0xFC => 1 << 40,
                0xFB => i64::MIN,
                d => i64::from(d % 8),
            })
            .collect();
        let len = usize::from(u16::from_le_bytes([it.next().unwrap_or(0), it.next().unwrap_or(0)]));
        let data: Vec<u8> = it.by_ref().take(len).collect();
        inputs.push(InputTensor { name, dtype, shape, data });
    }
    (inputs, requested, lim)
}

/// Arbitrary request tensors (lying BYTES length prefixes, negative or huge dims, wrong dtypes and row
/// counts) through the backend's request parser: an error or a job consistent with its limits.
pub fn triton_request(data: &[u8]) {
    use triton_llama::triton::interface::{OUTPUTS, parse_job};
    let (inputs, requested, lim) = decode_request(data);
    for t in &inputs {
        if t.dtype == 13 {
            let _ = t.as_bytes();
        } else {
            let _ = (t.as_f64s(), t.as_ints());
        }
    }
    let Ok(job) = parse_job(&inputs, &requested, &lim) else { return };
    assert!(!job.prompts.is_empty());
    let names = ["prompts", "text_input", "messages"];
    let mut given = inputs.iter().filter(|t| names.contains(&t.name.as_str()));
    // The parser reads the first tensor of a name (Triton itself refuses a request naming an input twice).
    let prompts = given.next().expect("an accepted job has a prompt input");
    assert!(given.all(|t| t.name == prompts.name), "an accepted job has one prompt input name");
    assert_eq!(prompts.as_bytes().expect("accepted prompts parse").len(), job.prompts.len());
    for p in &job.prompts {
        assert!(!p.text.is_empty());
        assert_eq!(p.chat, prompts.name == "messages");
        assert!(p.params.max_new_tokens >= 1 && p.params.min_new_tokens <= p.params.max_new_tokens);
        assert!(p.params.max_new_tokens <= lim.max_output_len.max(lim.default_max_tokens));
    }
    assert!(job.outputs.names.iter().all(|o| OUTPUTS.contains(o)));
    assert!(!job.stream || lim.decoupled);
}
