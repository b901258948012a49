//! Structured output through the engine: sampled at temperature 1.0 from the random-weight fixture model (no
//! preference for any answer, so the guide alone shapes the output), under 32 JSON schemas and 12 regexes with
//! several seeds: every output ends by itself (finish `stop`), parses, and validates against its schema with the
//! `jsonschema` crate (or fully matches its regex with the `regex` crate), oracles independent of llguidance.
//! Batched guided and unguided rows do not disturb each other; a dead end ends its request alone with an error.
mod common;
use common::*;
use serde_json::{Value, json};
use triton_llama::engine::{Engine, EngineConfig, FinishReason, Request};
use triton_llama::guided::Guide;
use triton_llama::loader;
use triton_llama::sampling::SamplingParams;

fn engine() -> Engine {
    let ecfg = EngineConfig { max_num_seqs: 8, ..Default::default() };
    Engine::new(loader::open(&fixture("models/gqa_bf16/hf")).unwrap(), ecfg).unwrap()
}

fn schemas() -> Vec<Value> {
    let s = |max: u32| json!({"type": "string", "maxLength": max});
    vec![
        json!({"type": "integer"}),
        json!({"type": "number", "minimum": -1000, "maximum": 1000}),
        json!({"type": "boolean"}),
        json!({"type": "null"}),
        json!({"enum": ["red", "green", "blue"]}),
        json!({"const": "fixed"}),
        s(6),
        json!({"type": "string", "minLength": 2, "maxLength": 4}),
        json!({"type": "string", "pattern": "^[a-z]{2,5}$"}),
        json!({"type": "string", "enum": ["é", "naïve", "日本", "a\"b", "back\\slash", "tab\tnew\nline"]}),
        json!({"type": "integer", "minimum": -5, "maximum": 300}),
        json!({"type": "number", "minimum": 0, "maximum": 1}),
        json!({"type": "array", "items": {"type": "integer"}, "maxItems": 4}),
        json!({"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 3}),
        json!({"type": "array", "items": s(3), "maxItems": 3}),
        json!({"type": "array", "prefixItems": [{"type": "integer"}, s(4)], "items": false}),
        json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"name": s(5), "age": {"type": "integer", "minimum": 0}},
               "required": ["name", "age"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"x": {"type": "number", "minimum": 0, "maximum": 9},
               "y": {"type": "integer", "maximum": 99}}, "additionalProperties": false}),
        json!({"type": "object", "properties": {"tags": {"type": "array", "items": s(3), "maxItems": 2}},
               "required": ["tags"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"inner": {"type": "object", "properties": {"v": {"type": "boolean"}},
               "required": ["v"], "additionalProperties": false}}, "required": ["inner"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"kind": {"enum": ["a", "b"]}, "n": {"type": "integer"}},
               "required": ["kind", "n"], "additionalProperties": false}),
        json!({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}),
        json!({"anyOf": [s(3), {"type": "array", "items": {"type": "null"}, "maxItems": 2}]}),
        json!({"oneOf": [{"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"], "additionalProperties": false},
                         {"type": "object", "properties": {"b": {"const": 2}}, "required": ["b"], "additionalProperties": false}]}),
        json!({"type": ["integer", "null"]}),
        json!({"type": "object", "properties": {"v": {"type": ["string", "null"], "maxLength": 3}}, "required": ["v"],
               "additionalProperties": false}),
        json!({"$defs": {"p": {"type": "object", "properties": {"q": {"type": "integer"}}, "required": ["q"],
               "additionalProperties": false}}, "type": "array", "items": {"$ref": "#/$defs/p"}, "maxItems": 2}),
        json!({"type": "object", "properties": {"m": {"type": "array", "items": {"type": "array", "items":
               {"type": "integer"}, "maxItems": 2}, "maxItems": 2}}, "required": ["m"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"s": {"type": "string", "format": "date"}}, "required": ["s"],
               "additionalProperties": false}),
        json!({"type": "object", "properties": {"e": {"enum": [1, "two", null, true]}}, "required": ["e"],
               "additionalProperties": false}),
        json!({"type": "object", "properties": {"u": {"type": "string", "enum": ["\u{1F600}", "ü", "ß"]}},
               "required": ["u"], "additionalProperties": false}),
    ]
}

const REGEXES: [&str; 12] = [
    "[0-9]{3}-[0-9]{4}",
    "(yes|no|maybe)",
    "[a-z]{1,8}@[a-z]{1,8}\\.(com|org)",
    "-?[0-9]{1,4}(\\.[0-9]{1,2})?",
    "#[0-9a-f]{6}",
    "(ab){1,5}c?",
    "[A-Z][a-z]{0,6} [A-Z][a-z]{0,6}",
    "\\d{4}-\\d{2}-\\d{2}",
    "(é|ü|日本){1,4}",
    "[^\\n]{1,10}\\n",
    "\\(\\d\\+\\d\\)=\\d",
    "\"[a-z ]{0,8}\"",
];

fn run(e: &mut Engine, reqs: Vec<(Guide, u64)>) -> Vec<(String, FinishReason, Option<String>)> {
    let n = reqs.len();
    for (i, (g, seed)) in reqs.into_iter().enumerate() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            max_new_tokens: 200,
            guide: Some(g),
            ..Default::default()
        };
        e.add_request(Request { id: i as u64, prompt_ids: vec![1, 300, 301], params }).unwrap();
    }
    let mut out = vec![(String::new(), FinishReason::Abort, None); n];
    e.run_to_completion(|o| {
        let r = &mut out[o.id as usize];
        r.0.push_str(&o.text);
        if let Some(f) = o.finish {
            r.1 = f;
        }
        if o.error.is_some() {
            r.2 = o.error.clone();
        }
    })
    .unwrap();
    assert_eq!(e.kv_blocks_used(), 0, "blocks leaked");
    out
}

#[test]
fn sampled_json_is_valid_under_every_schema() {
    let mut e = engine();
    let schemas = schemas();
    assert!(schemas.len() >= 30);
    for (k, chunk) in schemas.chunks(8).enumerate() {
        for seed in 0..3u64 {
            let reqs = chunk.iter().map(|s| (Guide::JsonSchema(s.clone()), seed * 100 + k as u64)).collect();
            for ((text, finish, err), schema) in run(&mut e, reqs).into_iter().zip(chunk) {
                assert_eq!((finish, err), (FinishReason::Stop, None), "{schema}: {text:?}");
                let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{schema}: {text:?}: {e}"));
                let valid = jsonschema::validator_for(schema).unwrap();
                assert!(valid.is_valid(&v), "{schema}: {text:?} does not validate");
            }
        }
    }
}

#[test]
fn sampled_text_fully_matches_every_regex() {
    let mut e = engine();
    for seed in 0..3u64 {
        let reqs = REGEXES.iter().map(|r| (Guide::Regex(r.to_string()), seed)).collect();
        for ((text, finish, err), r) in run(&mut e, reqs).into_iter().zip(REGEXES) {
            assert_eq!((finish, err), (FinishReason::Stop, None), "{r}: {text:?}");
            let full = regex::Regex::new(&format!("^(?:{r})$")).unwrap();
            assert!(full.is_match(&text), "{r}: {text:?}");
        }
    }
}

/// A guided row next to unguided ones: the unguided rows give exactly what they give alone.
#[test]
fn guided_rows_leave_their_neighbours_alone() {
    let mut e = engine();
    let plain = |seed| SamplingParams { temperature: 1.0, seed: Some(seed), max_new_tokens: 12, ..Default::default() };
    let alone: Vec<Vec<u32>> = (0..3u64)
        .map(|s| {
            e.add_request(Request { id: 50 + s, prompt_ids: vec![1, 5, 6], params: plain(s) }).unwrap();
            let mut ids = Vec::new();
            e.run_to_completion(|o| ids.extend(o.token)).unwrap();
            ids
        })
        .collect();
    for s in 0..3u64 {
        e.add_request(Request { id: 50 + s, prompt_ids: vec![1, 5, 6], params: plain(s) }).unwrap();
    }
    let guide = Some(Guide::Regex("[0-9]{20}".into()));
    let guided = SamplingParams { guide, max_new_tokens: 40, ..plain(9) };
    e.add_request(Request { id: 99, prompt_ids: vec![1, 5, 6], params: guided }).unwrap();
    let mut got = vec![Vec::new(); 3];
    let mut digits = String::new();
    e.run_to_completion(|o| match o.id {
        99 => digits.push_str(&o.text),
        id => got[(id - 50) as usize].extend(o.token),
    })
    .unwrap();
    assert_eq!(got, alone);
    assert!(digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()), "{digits:?}");
}

/// no_repeat_ngram_size 1 bans every digit token once used, so 60 digits cannot be written: that request ends
/// alone with a clear error.
#[test]
fn a_dead_end_fails_its_request_alone() {
    let mut e = engine();
    let guide = Some(Guide::Regex("[0-9]{60}".into()));
    let params = SamplingParams { no_repeat_ngram_size: 1, max_new_tokens: 100, guide, ..Default::default() };
    e.add_request(Request { id: 1, prompt_ids: vec![1, 5], params }).unwrap();
    let other = SamplingParams { max_new_tokens: 6, ignore_eos: true, ..Default::default() };
    e.add_request(Request { id: 2, prompt_ids: vec![1, 5], params: other }).unwrap();
    let (mut err, mut other_tokens) = (None, 0);
    e.run_to_completion(|o| {
        if o.id == 1 && o.error.is_some() {
            err = o.error.clone();
        }
        if o.id == 2 {
            other_tokens += o.token.is_some() as usize;
        }
    })
    .unwrap();
    let err = err.expect("the guided request fails");
    assert!(err.contains("dead end"), "{err}");
    assert_eq!(other_tokens, 6);
    assert_eq!(e.kv_blocks_used(), 0);
}

#[test]
fn a_bad_schema_is_refused_at_request_time() {
    let mut e = engine();
    let params = SamplingParams { guide: Some(Guide::JsonSchema(json!({"type": 5}))), ..Default::default() };
    let err = e.add_request(Request { id: 1, prompt_ids: vec![1, 5], params }).unwrap_err().to_string();
    assert!(err.contains("JSON schema cannot be used"), "{err}");
    assert!(!e.has_work());
}

/// `triton-llama bench-guided` runs end to end on the fixture (its numbers are measured, never asserted): every
/// timed step had the whole batch, and it leaves nothing running.
#[test]
fn the_structured_output_benchmark_runs() {
    let ecfg = EngineConfig { max_num_seqs: 2, enable_prefix_caching: false, ..Default::default() };
    let mut e = Engine::new(loader::open(&fixture("models/gqa_bf16/hf")).unwrap(), ecfg).unwrap();
    let r = triton_llama::bench::guided::run(&mut e, 2, 4, 1).unwrap();
    assert_eq!((r.batch, r.plain_steps), (2, 4));
    assert!(r.guided_steps > 0 && r.compile_ms > 0.0 && r.ttft_guided_ms > 0.0, "{r:?}");
    assert!(r.mask_ms_per_step > 0.0, "the guided rows computed masks: {r:?}");
    assert!(!e.has_work() && e.kv_blocks_used() == 0, "the benchmark leaves nothing running");
}
