//! Tokenizer parity with Python sentencepiece, on fixtures written by `scripts/fixtures/gen_tokenizer_fixtures.py`.
//!
//! Every expected value comes from the fixture files (computed by sentencepiece 0.2), never from this crate.

use serde_json::Value;
use std::path::{Path, PathBuf};
use triton_llama::tokenizer::{IncrementalDecoder, Tokenizer};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer").join(name)
}

fn tok() -> Tokenizer {
    Tokenizer::from_file(&fixture("llama_bpe.model")).expect("fixture model loads")
}

fn jsonl(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(name)).expect("fixture exists");
    text.lines().map(|l| serde_json::from_str(l).expect("valid JSON line")).collect()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().expect("id array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
    pieces: Vec<String>,
}

fn cases() -> Vec<Case> {
    let cases: Vec<Case> = jsonl("cases.jsonl")
        .iter()
        .map(|v| Case {
            text: v["text"].as_str().unwrap().to_string(),
            ids: ids_of(&v["ids"]),
            decoded: v["decoded"].as_str().unwrap().to_string(),
            pieces: v["pieces"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect(),
        })
        .collect();
    assert!(cases.len() >= 600, "only {} cases", cases.len());
    cases
}

/// Fails with the first few mismatches listed.
fn report(what: &str, failures: Vec<String>, total: usize) {
    assert!(
        failures.is_empty(),
        "{what}: {} of {total} differ, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(8)].join("\n")
    );
}

fn stream(t: &Tokenizer, mut d: IncrementalDecoder, ids: &[u32]) -> String {
    let mut out = String::new();
    for &id in ids {
        out += &d.push(t, id).unwrap();
    }
    out + &d.finish(t).unwrap()
}

#[test]
fn model_facts() {
    let t = tok();
    assert_eq!(t.vocab_size(), 1000);
    assert_eq!((t.bos_id(), t.eos_id()), (1, 2));
    assert_eq!(t.id_to_piece(0).as_deref(), Some("<unk>"));
    assert_eq!(t.id_to_piece(1).as_deref(), Some("<s>"));
    assert_eq!(t.id_to_piece(2).as_deref(), Some("</s>"));
    assert_eq!(t.id_to_piece(3).as_deref(), Some("<0x00>"));
    assert_eq!(t.id_to_piece(13).as_deref(), Some("<0x0A>"));
    assert_eq!(t.id_to_piece(258).as_deref(), Some("<0xFF>"));
    assert_eq!(t.id_to_piece(1000), None);
}

#[test]
fn encode_matches_sentencepiece() {
    let t = tok();
    let cases = cases();
    let mut failures = Vec::new();
    for c in &cases {
        let got = t.encode(&c.text, false).unwrap();
        if got != c.ids {
            failures.push(format!("{:?}: got {got:?}, sentencepiece {:?} {:?}", c.text, c.ids, c.pieces));
        }
        let with_bos = t.encode(&c.text, true).unwrap();
        assert_eq!(with_bos[0], 1);
        assert_eq!(with_bos[1..], got[..]);
    }
    report("encode", failures, cases.len());
}

#[test]
fn pieces_and_decode_match_sentencepiece() {
    let t = tok();
    let cases = cases();
    let mut failures = Vec::new();
    for c in &cases {
        let pieces: Vec<String> = c.ids.iter().map(|&id| t.id_to_piece(id).unwrap()).collect();
        assert_eq!(pieces, c.pieces, "{:?}", c.text);
        let got = t.decode(&c.ids).unwrap();
        if got != c.decoded {
            failures.push(format!("{:?}: got {got:?}, sentencepiece {:?}", c.ids, c.decoded));
        }
    }
    report("decode", failures, cases.len());
}

#[test]
fn decode_of_arbitrary_ids_matches_sentencepiece() {
    let t = tok();
    let cases = jsonl("decode_cases.jsonl");
    let mut failures = Vec::new();
    for v in &cases {
        let ids = ids_of(&v["ids"]);
        let got = t.decode(&ids).unwrap();
        if got != v["decoded"].as_str().unwrap() {
            failures.push(format!("{ids:?}: got {got:?}, sentencepiece {:?}", v["decoded"]));
        }
    }
    report("decode (arbitrary ids)", failures, cases.len());
}

/// checkpoint-formats.md §7.2: `<s>`, `</s>` and `<unk>` in user text are plain text, never control ids.
#[test]
fn literal_special_tokens_are_plain_text() {
    let t = tok();
    let cases = cases();
    for text in ["<s>", "</s>", "<unk>", "<s>hi</s>", " <s> </s> <unk> "] {
        let c = cases.iter().find(|c| c.text == text).expect("fixture has the case");
        let ids = t.encode(text, false).unwrap();
        assert_eq!(ids, c.ids, "{text:?}");
        assert!(ids.iter().all(|&id| id > 2), "{text:?} gave control ids {ids:?}");
        assert_eq!(t.decode(&ids).unwrap(), text);
    }
    // The NeMo chat markers are plain text too.
    let nemo = "<extra_id_0>System\n\n<extra_id_1>User\nHello\n<extra_id_1>Assistant\n";
    let c = cases.iter().find(|c| c.text == nemo).expect("fixture has the NeMo template");
    assert_eq!(t.encode(nemo, false).unwrap(), c.ids);
}

#[test]
fn streaming_equals_decode_for_every_case() {
    let t = tok();
    let mut failures = Vec::new();
    let mut lists: Vec<(Vec<u32>, String)> = cases().into_iter().map(|c| (c.ids, c.decoded)).collect();
    for v in jsonl("decode_cases.jsonl") {
        lists.push((ids_of(&v["ids"]), v["decoded"].as_str().unwrap().to_string()));
    }
    for (ids, expected) in &lists {
        let got = stream(&t, IncrementalDecoder::new(), ids);
        if &got != expected {
            failures.push(format!("{ids:?}: streamed {got:?}, sentencepiece {expected:?}"));
        }
        let mut with_bos = vec![t.bos_id()];
        with_bos.extend_from_slice(ids);
        let got = stream(&t, IncrementalDecoder::new(), &with_bos);
        if &got != expected {
            failures.push(format!("BOS + {ids:?}: streamed {got:?}, sentencepiece {expected:?}"));
        }
    }
    report("streaming", failures, lists.len() * 2);
}

#[test]
fn streaming_never_emits_half_a_character() {
    let t = tok();
    // "🤖" is byte fallback: <0xF0><0x9F><0xA4><0x96>; nothing may come out before the last byte.
    let robot = t.encode("a 🤖", false).unwrap();
    let mut d = IncrementalDecoder::new();
    let mut outs = Vec::new();
    for &id in &robot {
        outs.push(d.push(&t, id).unwrap());
    }
    assert!(outs.iter().all(|s| !s.contains('\u{FFFD}')), "{outs:?}");
    assert_eq!(outs.concat() + &d.finish(&t).unwrap(), "a 🤖");
    assert!(outs.last().unwrap().ends_with('🤖'), "{outs:?}");
}

#[test]
fn streaming_after_a_prompt_keeps_the_leading_space() {
    let t = tok();
    let cases = jsonl("stream_cases.jsonl");
    let mut failures = Vec::new();
    for v in &cases {
        let (prompt, generated) = (ids_of(&v["prompt"]), ids_of(&v["gen"]));
        let d = IncrementalDecoder::with_prefix(&t, &prompt).unwrap();
        let got = stream(&t, d, &generated);
        if got != v["expected"].as_str().unwrap() {
            failures.push(format!("{prompt:?} + {generated:?}: streamed {got:?}, expected {:?}", v["expected"]));
        }
    }
    report("with_prefix", failures, cases.len());
    // The fixture does exercise a generated first word that starts with a space.
    assert!(
        cases
            .iter()
            .any(|v| v["prompt"].as_array().unwrap().len() > 2 && v["expected"].as_str().unwrap().starts_with(' '))
    );
}

#[test]
fn streaming_any_split_point_matches_decode() {
    let t = tok();
    for c in cases().iter().step_by(7) {
        for k in 0..=c.ids.len() {
            let (prompt, generated) = c.ids.split_at(k);
            let full = t.decode(&c.ids).unwrap();
            let head = t.decode(prompt).unwrap();
            let Some(expected) = full.strip_prefix(head.as_str()) else { continue };
            let got = stream(&t, IncrementalDecoder::with_prefix(&t, prompt).unwrap(), generated);
            assert_eq!(got, expected, "{:?} split at {k}", c.text);
        }
    }
}

#[test]
fn invalid_ids_are_errors() {
    let t = tok();
    assert!(t.decode(&[1000]).is_err());
    assert!(t.decode(&[5, u32::MAX]).is_err());
    assert!(IncrementalDecoder::with_prefix(&t, &[1, 1000]).is_err());
    let mut d = IncrementalDecoder::new();
    assert_eq!(d.push(&t, 498).unwrap(), "H");
    assert!(d.push(&t, 1000).is_err());
    assert!(d.push(&t, u32::MAX).is_err());
    assert_eq!(d.push(&t, 392).unwrap(), " world"); // the bad ids left no trace
    assert_eq!(d.finish(&t).unwrap(), "");
}

#[test]
fn json_path_matches_sentencepiece() {
    let t = tok();
    // The converted pipeline as tokenizer.json, with HF Llama's special added tokens and an extra `<pad>` = 1000
    // past the vocabulary (as in some early Llama-2 snapshots), which must be dropped.
    let mut json: Value = serde_json::from_str(&t.to_json().unwrap()).unwrap();
    let added = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    json["added_tokens"] =
        serde_json::json!([added(0, "<unk>"), added(1, "<s>"), added(2, "</s>"), added(1000, "<pad>")]);
    let dir = std::env::temp_dir().join(format!("tok-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let j = Tokenizer::from_file(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!((j.vocab_size(), j.bos_id(), j.eos_id()), (1000, 1, 2));
    let cases = cases();
    let mut failures = Vec::new();
    for c in &cases {
        let ids = j.encode(&c.text, false).unwrap();
        if ids != c.ids {
            failures.push(format!("{:?}: got {ids:?}, sentencepiece {:?}", c.text, c.ids));
        }
        if j.decode(&c.ids).unwrap() != c.decoded {
            failures.push(format!("decode {:?}: got {:?}", c.ids, j.decode(&c.ids).unwrap()));
        }
    }
    report("tokenizer.json", failures, cases.len());
}

#[test]
fn unsupported_and_broken_models_are_errors() {
    let origin = Path::new("test.model");
    assert!(Tokenizer::from_sentencepiece_bytes(&[], origin).is_err(), "empty: unigram default, no pieces");
    assert!(Tokenizer::from_file(Path::new("/nonexistent/tokenizer.model")).is_err());
    let bytes = std::fs::read(fixture("llama_bpe.model")).unwrap();
    // model_type is trainer_spec field 3 = tag 0x18; value 2 (BPE). Rewrite it to 1 (UNIGRAM).
    let at = find_trainer_model_type(&bytes).expect("trainer_spec.model_type present");
    let mut unigram = bytes.clone();
    unigram[at + 1] = 1;
    let err = Tokenizer::from_sentencepiece_bytes(&unigram, origin).unwrap_err().to_string();
    assert!(err.contains("Unigram") && err.contains("not supported"), "{err}");
    let lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n";
    let dir = std::env::temp_dir().join(format!("tok-lfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.model"), lfs).unwrap();
    assert!(Tokenizer::from_file(&dir.join("tokenizer.model")).unwrap_err().to_string().contains("LFS"));
    std::fs::remove_dir_all(&dir).ok();
}

/// Offset of the `model_type` key inside `trainer_spec` (field 2 of ModelProto), found by walking the top level.
fn find_trainer_model_type(b: &[u8]) -> Option<usize> {
    let varint = |pos: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let byte = *b.get(*pos)?;
            *pos += 1;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    let mut pos = 0;
    while pos < b.len() {
        let key = varint(&mut pos)?;
        let len = varint(&mut pos)? as usize;
        if key == (2 << 3 | 2) {
            let body = &b[pos..pos + len];
            return body.windows(2).position(|w| w == [0x18, 0x02]).map(|i| pos + i);
        }
        pos += len;
    }
    None
}

#[test]
fn random_and_corrupted_model_bytes_never_panic() {
    let real = std::fs::read(fixture("llama_bpe.model")).unwrap();
    let origin = Path::new("fuzz.model");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut total) = (0, 0);
    for i in 0..3000 {
        let input: Vec<u8> = match i % 4 {
            0 => real[..(next() as usize) % (real.len() + 1)].to_vec(),
            1 => {
                let mut m = real.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % m.len();
                    m[at] ^= 1 << (next() % 8);
                }
                m
            }
            2 => (0..next() % 64).map(|_| next() as u8).collect(),
            _ => {
                let mut m = real.clone();
                let at = (next() as usize) % m.len();
                let junk: Vec<u8> = (0..1 + next() % 12).map(|_| next() as u8).collect();
                m.splice(at..at, junk);
                m
            }
        };
        total += 1;
        let result = std::panic::catch_unwind(|| {
            if let Ok(t) = Tokenizer::from_sentencepiece_bytes(&input, origin) {
                let ids = t.encode("Hello world 🤖 naïve 123", true).unwrap();
                t.decode(&ids).unwrap();
                true
            } else {
                false
            }
        });
        match result {
            Ok(built) => ok += built as usize,
            Err(_) => panic!("input {i} ({} bytes) panicked", input.len()),
        }
    }
    assert_eq!(total, 3000);
    assert!(ok > 0, "some mildly corrupted models still load");
}

#[test]
fn streaming_window_stays_bounded() {
    let t = tok();
    // 2000 lead bytes that never complete, then text: the decoder must not hold them all.
    let mut ids = vec![3 + 0xE4; 2000];
    ids.extend(t.encode("Hello world", false).unwrap());
    let mut d = IncrementalDecoder::new();
    let mut out = String::new();
    for &id in &ids {
        out += &d.push(&t, id).unwrap();
        assert!(d.pending().len() <= 8, "{} ids pending", d.pending().len());
    }
    out += &d.finish(&t).unwrap();
    assert_eq!(out, "\u{FFFD}".repeat(2000) + " Hello world");
}
