//! Unit tests of the guides: masks against a brute-force oracle on a tokenizer with byte-fallback pieces (every
//! token whose bytes keep the output a prefix of an answer, EOS exactly where an answer is complete), refusals
//! that name the problem, dead ends.
use super::*;
use std::path::PathBuf;

fn tokenizer() -> Tokenizer {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/llama_bpe.model");
    Tokenizer::from_file(&p).unwrap()
}

fn set(mask: &[u32]) -> Vec<u32> {
    (0..mask.len() as u32 * 32).filter(|&i| mask[i as usize / 32] >> (i % 32) & 1 == 1).collect()
}

/// The ids whose bytes extend `done` towards one of `answers` (byte prefixes, so a byte-fallback piece of a
/// multi-byte character counts), and EOS when `done` is an answer.
fn oracle(tok: &Tokenizer, answers: &[&str], done: &[u8]) -> Vec<u32> {
    let mut want: Vec<u32> = (0..tok.vocab_size() as u32)
        .filter(|&id| {
            let b = token_bytes(tok, id);
            if b.is_empty() || b[0] == TokTrie::SPECIAL_TOKEN_MARKER {
                return false;
            }
            let mut next = done.to_vec();
            next.extend_from_slice(&b);
            answers.iter().any(|a| a.as_bytes().starts_with(&next))
        })
        .collect();
    if answers.iter().any(|a| a.as_bytes() == done) {
        want.push(tok.eos_id());
        want.sort();
    }
    want
}

#[test]
fn choice_masks_equal_the_brute_force_oracle_at_every_step() {
    let tok = tokenizer();
    assert!((0..tok.vocab_size() as u32).any(|id| tok.byte_value(id).is_some()), "the fixture has byte pieces");
    let g = GuideCompiler::new(&tok).unwrap();
    let answers = ["yes", "no", "yes, señor", "naïve 火"];
    let guide = Guide::Choice(answers.iter().map(|s| s.to_string()).collect());
    // Walk each answer along the tokens the oracle allows, greedy by length, then by id (several paths).
    for target in answers {
        for longest in [true, false] {
            let mut c = g.compile(&guide).unwrap();
            let mut done: Vec<u8> = Vec::new();
            loop {
                let got = set(&c.allowed().unwrap());
                let want = oracle(&tok, &answers, &done);
                assert_eq!(got, want, "after {:?}", String::from_utf8_lossy(&done));
                if done == target.as_bytes() {
                    break;
                }
                let toward = |id: &&u32| {
                    let mut n = done.clone();
                    n.extend_from_slice(&token_bytes(&tok, **id));
                    **id != tok.eos_id() && target.as_bytes().starts_with(&n)
                };
                let pick = if longest {
                    got.iter().filter(toward).max_by_key(|&&id| token_bytes(&tok, id).len())
                } else {
                    got.iter().find(toward)
                };
                let id = *pick.expect("the target stays reachable");
                c.advance(id).unwrap();
                done.extend_from_slice(&token_bytes(&tok, id));
            }
            // Complete: finished at once unless a longer answer continues it, then after EOS.
            let extendable = answers.iter().any(|a| a.len() > target.len() && a.starts_with(target));
            assert_eq!(c.is_finished(), !extendable, "{target}");
            if extendable {
                c.advance(tok.eos_id()).unwrap();
                assert!(c.is_finished());
            }
        }
    }
}

#[test]
fn a_finite_json_schema_allows_its_values_only() {
    let tok = tokenizer();
    let g = GuideCompiler::new(&tok).unwrap();
    let schema = serde_json::json!({"enum": ["ab", 12, true]});
    let mut c = g.compile(&Guide::JsonSchema(schema)).unwrap();
    assert_eq!(set(&c.allowed().unwrap()), oracle(&tok, &["\"ab\"", "12", "true"], b""));
}

#[test]
fn bad_guides_are_refused_naming_the_problem() {
    let tok = tokenizer();
    let g = GuideCompiler::new(&tok).unwrap();
    let err = |guide: Guide| g.compile(&guide).unwrap_err().to_string();
    let e = err(Guide::JsonSchema(serde_json::json!({"type": "no-such-type"})));
    assert!(e.contains("JSON schema cannot be used"), "{e}");
    let e = err(Guide::Regex("(unclosed".into()));
    assert!(e.contains("regex cannot be used"), "{e}");
    let e = err(Guide::Lark("start: undefined_rule".into()));
    assert!(e.contains("grammar cannot be used"), "{e}");
    for (kind, text, want) in [
        ("json_schema", "{not json", "not valid JSON"),
        ("choice", "[]", "non-empty JSON list"),
        ("yaml", "a: 1", "unknown guide type `yaml`"),
    ] {
        let e = Guide::parse(kind, text).unwrap_err().to_string();
        assert!(e.contains(want), "{kind}: {e}");
    }
    let huge = "a".repeat(MAX_GUIDE_BYTES + 1);
    assert!(Guide::parse("regex", &huge).unwrap_err().to_string().contains("at most"));
    assert_eq!(Guide::parse("json", "").unwrap(), Guide::JsonObject);
}

#[test]
fn a_token_the_guide_forbids_is_a_dead_end_error() {
    let tok = tokenizer();
    let g = GuideCompiler::new(&tok).unwrap();
    let mut c = g.compile(&Guide::Regex("[0-9]+".into())).unwrap();
    let allowed = set(&c.allowed().unwrap());
    let letter = (0..tok.vocab_size() as u32).find(|id| token_bytes(&tok, *id) == b"a").unwrap();
    assert!(!allowed.contains(&letter));
    let e = c.advance(letter).unwrap_err().to_string();
    assert!(e.contains("dead end after 0 tokens"), "{e}");
}
