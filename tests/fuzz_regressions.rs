//! Replays every committed fuzz input under plain `cargo test`, through the same harness the fuzzers run
//! (`fuzz/src/lib.rs`, included by path): the crashing inputs in `fuzz/regressions/<target>/` and the seed
//! corpus in `fuzz/corpus/<target>/`. CI thereby checks past findings even where cargo-fuzz is absent.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.map(|e| e.expect("readable entry").path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `target` on each file, naming the file that panics.
fn replay(kind: &str, target: &str) -> usize {
    let files = inputs(kind, target);
    for f in &files {
        let data = std::fs::read(f).expect("readable input");
        if std::panic::catch_unwind(|| harness::run(target, &data)).is_err() {
            panic!("fuzz input {} fails target `{target}`", f.display());
        }
    }
    files.len()
}

#[test]
fn regressions_replay_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(harness::TARGETS.contains(&name.as_str()), "fuzz/regressions/{name} is not a fuzz target");
        }
    }
    let n: usize = harness::TARGETS.iter().map(|t| replay("regressions", t)).sum();
    eprintln!("replayed {n} regression inputs");
}

#[test]
fn seed_corpus_replays_clean() {
    for t in harness::TARGETS {
        assert!(replay("corpus", t) > 0, "no seeds for fuzz target `{t}`");
    }
}

#[test]
fn nemo_seeds_open_and_load() {
    // The tiny tars are meant to reach tensor loading; if they stopped opening, the fuzzer would only ever
    // see the error paths.
    for f in inputs("corpus", "nemo_tar") {
        let src = triton_llama::loader::open(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for t in src.tensors() {
            src.load(&t.name).unwrap_or_else(|e| panic!("{}: {}: {e}", f.display(), t.name));
        }
        src.tokenizer().unwrap();
    }
}

#[test]
fn triton_seeds_decode_to_accepted_requests() {
    // The request encoding must reach the parser's success path, or the fuzzer starts from refusals only.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/triton_request");
    for name in ["nemo_query", "batch2_stops", "text_input_stream"] {
        let (inputs, requested, lim) = harness::decode_request(&std::fs::read(dir.join(name)).unwrap());
        let job = triton_llama::triton::interface::parse_job(&inputs, &requested, &lim)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!job.prompts.is_empty());
    }
}
