//! Unit tests of request parsing: the seed's five inputs, batches, every refusal.
use super::*;
use crate::sampling::ReturnLogits;
use crate::triton::ffi;
use crate::triton::tensors::encode_bytes;

fn bytes(name: &str, rows: &[&[&str]]) -> InputTensor {
    let k = rows.first().map_or(0, |r| r.len());
    let flat: Vec<&str> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    InputTensor {
        name: name.into(),
        dtype: ffi::TYPE_BYTES,
        shape: vec![rows.len() as i64, k as i64],
        data: encode_bytes(&flat),
    }
}
fn i64s(name: &str, v: &[i64]) -> InputTensor {
    InputTensor {
        name: name.into(),
        dtype: ffi::TYPE_INT64,
        shape: vec![v.len() as i64, 1],
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}
fn f32s(name: &str, v: &[f32]) -> InputTensor {
    InputTensor {
        name: name.into(),
        dtype: ffi::TYPE_FP32,
        shape: vec![v.len() as i64, 1],
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}
fn boolean(name: &str, b: bool) -> InputTensor {
    InputTensor { name: name.into(), dtype: ffi::TYPE_BOOL, shape: vec![1, 1], data: vec![b as u8] }
}
fn lim(decoupled: bool) -> Limits {
    Limits {
        max_prompt_bytes: 64 * 32,
        max_input_tokens: 64,
        max_output_len: 100,
        default_max_tokens: 16,
        decoupled,
        exclude_input_default: true,
    }
}
fn err(inputs: &[InputTensor]) -> String {
    parse_job(inputs, &[], &lim(false)).unwrap_err().to_string()
}

#[test]
fn nemo_query_batch_keeps_each_prompts_values() {
    let inputs = [
        bytes("prompts", &[&["a"], &["b"]]),
        i64s("max_output_token", &[5, 7]),
        i64s("top_k", &[1, 3]),
        f32s("top_p", &[0.0, 0.5]),
        f32s("temperature", &[1.0, 0.7]),
    ];
    let j = parse_job(&inputs, &["outputs".into()], &lim(false)).unwrap();
    assert_eq!(j.prompts.len(), 2);
    assert_eq!((j.prompts[0].params.max_new_tokens, j.prompts[1].params.max_new_tokens), (5, 7));
    assert_eq!((j.prompts[0].params.top_k, j.prompts[1].params.top_k), (1, 3));
    assert_eq!((j.prompts[0].params.top_p, j.prompts[1].params.top_p), (1.0, 0.5));
    assert!(!j.stream);
    assert_eq!(j.outputs.names, vec!["outputs"]);
}

#[test]
fn trt_style_names_and_stops() {
    let inputs = [
        bytes("text_input", &[&["hi"]]),
        bytes("stop_words", &[&["x", "y"]]),
        bytes("stop_words_list", &[&["p,q"]]),
        bytes("bad_words", &[&["z"]]),
        boolean("stream", false),
        boolean("return_num_input_tokens", false),
    ];
    let j = parse_job(&inputs, &[], &lim(true)).unwrap();
    assert_eq!(j.prompts[0].params.stop_strings, vec!["p", "q", "x", "y"]);
    assert_eq!(j.prompts[0].bad_words, vec!["z"]);
    assert!(!j.stream);
    assert!(!j.outputs.has("num_input_tokens") && j.outputs.has("text_output"));
    assert!(parse_job(&[bytes("text_input", &[&["hi"]])], &[], &lim(true)).unwrap().stream);
}

#[test]
fn output_tokens_only_when_named() {
    let p = [bytes("text_input", &[&["hi"]])];
    assert!(!parse_job(&p, &[], &lim(true)).unwrap().outputs.has("output_tokens"));
    let j = parse_job(&p, &["text_output".into(), "output_tokens".into()], &lim(true)).unwrap();
    assert_eq!(j.outputs.names, vec!["text_output", "output_tokens"]);
}

#[test]
fn messages_mark_the_prompt_as_chat() {
    let j = parse_job(&[bytes("messages", &[&[r#"[{"role":"user","content":"hi"}]"#]])], &[], &lim(true)).unwrap();
    assert!(j.prompts[0].chat);
    assert_eq!(j.prompts[0].text, r#"[{"role":"user","content":"hi"}]"#);
    assert!(!parse_job(&[bytes("text_input", &[&["hi"]])], &[], &lim(true)).unwrap().prompts[0].chat);
}

#[test]
fn refusals_name_the_input() {
    assert!(err(&[i64s("top_k", &[1])]).contains("missing required input `prompts`"));
    assert!(err(&[bytes("prompts", &[&[""]])]).contains("empty prompt"));
    let mut bad_utf8 = bytes("prompts", &[&["ab"]]);
    bad_utf8.data[4] = 0xff;
    assert!(err(&[bad_utf8]).contains("not valid UTF-8"));
    assert!(
        err(&[bytes("prompts", &[&["a"]]), i64s("max_output_token", &[0])]).contains("`max_output_token` must be >= 1")
    );
    assert!(err(&[bytes("prompts", &[&["a"]]), i64s("max_output_token", &[1000])]).contains("max_output_len is 100"));
    assert!(err(&[bytes("prompts", &[&["a"]]), i64s("top_k", &[-1])]).contains("`top_k` must be >= 0, got -1"));
    assert!(err(&[bytes("prompts", &[&["a"]]), f32s("top_p", &[1.5])]).contains("`top_p` must be in [0, 1]"));
    assert!(
        err(&[bytes("prompts", &[&["a"]]), bytes("lora_uids", &[&["l1"]])]).contains("`lora_uids` is not supported")
    );
    assert!(parse_job(&[bytes("prompts", &[&["a"]]), bytes("lora_uids", &[&[""]])], &[], &lim(false)).is_ok());
    assert!(err(&[bytes("prompts", &[&["a"]]), boolean("stream", true)]).contains("not decoupled"));
    assert!(err(&[bytes("prompts", &[&["a"], &["b"]]), i64s("top_k", &[1, 2, 3])]).contains("3 rows"));
    assert!(err(&[bytes("prompts", &[&["a"]]), bytes("text_input", &[&["a"]])]).contains("not several"));
    assert!(err(&[bytes("messages", &[&["[]"]]), bytes("text_input", &[&["a"]])]).contains("not several"));
    let wide = bytes("prompts", &[&["a", "b"]]);
    assert!(err(&[wide]).contains("shape [batch, 1]"));
}

#[test]
fn a_huge_batch_dimension_is_refused_before_allocating() {
    // fuzz/regressions/triton_request: shape [2^40, 1] sized a Vec<String> before the BYTES buffer was
    // checked against it (capacity overflow panic, or a multi-terabyte allocation).
    for rows in [1i64 << 40, i64::MAX / 2, 1 << 32] {
        let mut p = bytes("prompts", &[&["a"]]);
        p.shape = vec![rows, 1];
        assert!(err(&[p]).contains("shape says"), "{rows}");
    }
}

#[test]
fn prompt_bytes_and_stop_and_bad_word_lists_are_bounded() {
    // lim(): 64 tokens, 2048 bytes.
    let long = "x".repeat(2049);
    let e = err(&[bytes("prompts", &[&[&long]])]);
    assert!(e.contains("2049 bytes") && e.contains("at most 2048 bytes"), "{e}");
    assert!(parse_job(&[bytes("prompts", &[&[&"x".repeat(2048)]])], &[], &lim(false)).is_ok());
    assert_eq!(max_prompt_bytes(4096, 48), 4096 * 48 * 2);
    assert_eq!(max_prompt_bytes(100, 3), 100 * MIN_BYTES_PER_TOKEN * 2);
    assert_eq!(max_prompt_bytes(usize::MAX, 16), usize::MAX);
    let many: Vec<String> = (0..=MAX_STOP_STRINGS).map(|i| format!("s{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let at_cap = &many[..MAX_STOP_STRINGS];
    for name in ["stop_words", "end_strings", "bad_words", "bad_words_list"] {
        let e = err(&[bytes("prompts", &[&["a"]]), bytes(name, &[&many])]);
        assert!(e.contains("33") && e.contains("at most 32"), "{name}: {e}");
        assert!(parse_job(&[bytes("prompts", &[&["a"]]), bytes(name, &[at_cap])], &[], &lim(false)).is_ok(), "{name}");
        let big = "y".repeat(MAX_STOP_BYTES + 1);
        let e = err(&[bytes("prompts", &[&["a"]]), bytes(name, &[&[&big]])]);
        assert!(e.contains("257 bytes") && e.contains("at most 256"), "{name}: {e}");
    }
    // NeMo's comma-separated stop_words_list counts each stop.
    let csv = many.join(",");
    assert!(err(&[bytes("prompts", &[&["a"]]), bytes("stop_words_list", &[&[&csv]])]).contains("at most 32"));
    // stop_words and end_strings add up.
    let e = err(&[bytes("prompts", &[&["a"]]), bytes("stop_words", &[at_cap]), bytes("end_strings", &[&["z"]])]);
    assert!(e.contains("33 stop strings"), "{e}");
}

/// NeMo 2.x `NemoQueryLLM.query_llm`: `np.full(prompts.shape, v)` columns with its dtypes (np.int_ = INT64,
/// np.single = FP32, np.bool_ = BOOL), `no_repeat_ngram_size` FP32, and the two logits flags it always sends.
#[test]
fn nemo2_query_llm_inputs() {
    let nemo2 = |ngram: &[f32]| {
        vec![
            bytes("prompts", &[&["a"], &["b"]]),
            i64s("max_output_len", &[9, 9]),
            i64s("top_k", &[1, 1]),
            f32s("top_p", &[0.0, 0.0]),
            f32s("temperature", &[1.0, 1.0]),
            i64s("random_seed", &[4, 4]),
            bytes("stop_words_list", &[&["x"], &["y"]]),
            bytes("bad_words_list", &[&["z"], &["z"]]),
            f32s("no_repeat_ngram_size", ngram),
            bytes("task_id", &[&[""], &[""]]),
            boolean("output_context_logits", false),
            boolean("output_generation_logits", false),
        ]
    };
    let j = parse_job(&nemo2(&[3.0, 0.0]), &[], &lim(false)).unwrap();
    let p: Vec<_> = j.prompts.iter().map(|p| &p.params).collect();
    assert_eq!((p[0].no_repeat_ngram_size, p[1].no_repeat_ngram_size), (3, 0));
    assert_eq!((p[0].max_new_tokens, p[0].seed, p[1].stop_strings.clone()), (9, Some(4), vec!["y".to_string()]));
    assert_eq!(j.prompts[0].bad_words, vec!["z"]);
    for bad_n in [2.5, -1.0, f32::NAN] {
        let e = parse_job(&nemo2(&[bad_n, 0.0]), &[], &lim(false)).unwrap_err().to_string();
        assert!(e.contains("`no_repeat_ngram_size` must be a whole number >= 0"), "{e}");
    }
    let mut asks_logits = nemo2(&[0.0, 0.0]);
    asks_logits[11] = boolean("output_generation_logits", true);
    let j = parse_job(&asks_logits, &[], &lim(false)).unwrap();
    assert!(j.prompts.iter().all(|p| p.params.return_logits == ReturnLogits { context: false, generation: true }));
    assert!(j.outputs.has("generation_logits") && !j.outputs.has("context_logits"));
    assert!(err(&[bytes("prompts", &[&["a"]]), boolean("all_probs", true)]).contains("`all_probs`"));
    let mut task = nemo2(&[0.0, 0.0]);
    task[9] = bytes("task_id", &[&["squad"], &["squad"]]);
    assert!(err(&task).contains("`task_id` is not supported"));
}

fn i32s(name: &str, v: &[i32]) -> InputTensor {
    InputTensor {
        name: name.into(),
        dtype: ffi::TYPE_INT32,
        shape: vec![v.len() as i64, 1],
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}
fn raw(name: &str, dtype: u32, shape: &[i64], bytes: usize) -> InputTensor {
    InputTensor { name: name.into(), dtype, shape: shape.to_vec(), data: vec![0; bytes] }
}

/// TensorRT-LLM's ensemble inputs at their neutral values parse to the same job as without them.
#[test]
fn tensorrt_llm_inputs_at_neutral_values_change_nothing() {
    let base = vec![bytes("text_input", &[&["hi"]]), i32s("max_tokens", &[5])];
    let mut all = base.clone();
    all.extend([
        f32s("length_penalty", &[1.0]),
        boolean("early_stopping", false),
        f32s("beam_search_diversity_rate", &[0.0]),
        i32s("pad_id", &[2]),
        boolean("return_context_logits", false),
        boolean("return_generation_logits", false),
        boolean("return_perf_metrics", false),
        boolean("return_kv_cache_reuse_stats", false),
        bytes("embedding_bias_words", &[&[""]]),
        raw("embedding_bias_weights", ffi::TYPE_FP32, &[1, 0], 0),
        i32s("prompt_vocab_size", &[0]),
        i32s("num_draft_tokens", &[0]),
        boolean("use_draft_logits", false),
        bytes("guided_decoding_guide_type", &[&[""]]),
        bytes("guided_decoding_guide", &[&[""]]),
        i32s("beam_width", &[1]),
        i32s("num_return_sequences", &[1]),
    ]);
    let a = parse_job(&base, &[], &lim(false)).unwrap();
    let b = parse_job(&all, &[], &lim(false)).unwrap();
    assert_eq!(a, b);
    // Beam-search knobs act on beams only: any finite value is as neutral at beam_width 1.
    let mut lp = base.clone();
    lp.extend([
        f32s("length_penalty", &[2.5]),
        boolean("early_stopping", true),
        f32s("beam_search_diversity_rate", &[0.3]),
    ]);
    assert_eq!(parse_job(&lp, &[], &lim(false)).unwrap(), a);
}

/// The missing features are refused naming the input, never as an unexpected input.
#[test]
fn tensorrt_llm_features_this_backend_lacks_are_refused_by_name() {
    let base = || vec![bytes("text_input", &[&["hi"]])];
    let cases: Vec<(InputTensor, &str)> = vec![
        (boolean("return_perf_metrics", true), "`return_perf_metrics` = true is not supported"),
        (boolean("use_draft_logits", true), "`use_draft_logits` = true is not supported"),
        (i32s("num_draft_tokens", &[4]), "`num_draft_tokens` other than 0"),
        (f32s("embedding_bias_weights", &[1.0]), "`embedding_bias_weights` needs `embedding_bias_words`"),
        (raw("prompt_embedding_table", ffi::TYPE_FP16, &[1, 2, 4], 16), "`prompt_embedding_table` is not supported"),
        (i32s("prompt_vocab_size", &[8]), "`prompt_vocab_size` is not supported"),
        (raw("lora_task_id", ffi::TYPE_UINT64, &[1, 1], 8), "`lora_task_id` is not supported"),
        (raw("lora_weights", ffi::TYPE_FP16, &[1, 2, 4], 16), "`lora_weights` is not supported"),
        (raw("lora_config", ffi::TYPE_INT32, &[1, 2, 3], 24), "`lora_config` is not supported"),
        (bytes("guided_decoding_guide", &[&["{}"]]), "`guided_decoding_guide` needs `guided_decoding_guide_type`"),
        (bytes("guided_decoding_guide_type", &[&["regex"]]), "type `regex` needs `guided_decoding_guide`"),
        (bytes("guided_decoding_guide_type", &[&["yaml"]]), "unknown guide type `yaml`"),
        (bytes("decoder_text_input", &[&["x"]]), "`decoder_text_input` is not supported"),
        (f32s("length_penalty", &[f32::NAN]), "`length_penalty` must be a finite number"),
        (i32s("beam_width", &[2]), "`beam_width` > 1"),
    ];
    for (t, want) in cases {
        let mut inputs = base();
        inputs.push(t);
        let e = err(&inputs);
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn batch_and_sequence_index_only_when_named() {
    let inputs = [bytes("text_input", &[&["a"], &["b"]])];
    let j = parse_job(&inputs, &[], &lim(false)).unwrap();
    assert!(!j.outputs.has("batch_index") && !j.outputs.has("sequence_index") && j.outputs.has("cum_log_probs"));
    let j = parse_job(&inputs, &["batch_index".into(), "sequence_index".into()], &lim(false)).unwrap();
    assert_eq!(j.outputs.names, ["batch_index", "sequence_index"]);
}

/// TensorRT-LLM's embedding bias: (word, weight) per prompt by position, empty words dropped, one row broadcast.
#[test]
fn embedding_bias_words_pair_with_their_weights() {
    let words = bytes("embedding_bias_words", &[&["Paris", "", "London"], &["a", "b", ""]]);
    let weights = InputTensor {
        name: "embedding_bias_weights".into(),
        dtype: ffi::TYPE_FP32,
        shape: vec![2, 3],
        data: [2.0f32, 9.0, -1.5, 0.5, 0.25, 7.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    let j = parse_job(&[bytes("text_input", &[&["x"], &["y"]]), words, weights], &[], &lim(false)).unwrap();
    assert_eq!(j.prompts[0].bias_words, [("Paris".to_string(), 2.0), ("London".to_string(), -1.5)]);
    assert_eq!(j.prompts[1].bias_words, [("a".to_string(), 0.5), ("b".to_string(), 0.25)]);
    let short = InputTensor {
        name: "embedding_bias_weights".into(),
        dtype: ffi::TYPE_FP32,
        shape: vec![1, 1],
        data: 1.0f32.to_le_bytes().to_vec(),
    };
    let e = err(&[bytes("text_input", &[&["x"]]), bytes("embedding_bias_words", &[&["a", "b"]]), short]);
    assert!(e.contains("one weight per word"), "{e}");
    let inf = f32s("embedding_bias_weights", &[f32::INFINITY]);
    let e = err(&[bytes("text_input", &[&["x"]]), bytes("embedding_bias_words", &[&["a"]]), inf]);
    assert!(e.contains("must be finite"), "{e}");
}

/// The logits flags switch their outputs on per prompt; an output list that leaves one out leaves it out.
#[test]
fn logits_flags_ask_for_their_outputs() {
    let two = || vec![bytes("text_input", &[&["a"], &["b"]])];
    let flags = |c: [bool; 2], g: bool| {
        let mut v = two();
        v.push(InputTensor {
            name: "return_context_logits".into(),
            dtype: ffi::TYPE_BOOL,
            shape: vec![2, 1],
            data: c.iter().map(|&b| b as u8).collect(),
        });
        v.push(boolean("return_generation_logits", g));
        v
    };
    let j = parse_job(&flags([true, false], false), &[], &lim(false)).unwrap();
    let want = |c, g| ReturnLogits { context: c, generation: g };
    assert_eq!(j.prompts[0].params.return_logits, want(true, false));
    assert_eq!(j.prompts[1].params.return_logits, want(false, false));
    assert!(j.outputs.has("context_logits") && !j.outputs.has("generation_logits"));
    let j = parse_job(&flags([false, false], true), &[], &lim(false)).unwrap();
    assert!(j.prompts.iter().all(|p| p.params.return_logits == want(false, true)));
    assert!(j.outputs.has("generation_logits") && !j.outputs.has("context_logits"));
    let named = parse_job(&flags([true, true], true), &["text_output".into()], &lim(false)).unwrap();
    assert_eq!(named.outputs.names, vec!["text_output"]);
    assert!(parse_job(&two(), &[], &lim(false)).unwrap().outputs.names.iter().all(|n| !n.ends_with("_logits")));
}

/// TensorRT-LLM's guided decoding inputs become each prompt's guide.
#[test]
fn guided_decoding_inputs_set_the_guide() {
    use crate::guided::Guide;
    let job = |kind: &str, guide: &str| {
        let mut v = vec![bytes("text_input", &[&["a"]])];
        v.push(bytes("guided_decoding_guide_type", &[&[kind]]));
        if !guide.is_empty() {
            v.push(bytes("guided_decoding_guide", &[&[guide]]));
        }
        parse_job(&v, &[], &lim(false)).map(|j| j.prompts[0].params.guide.clone())
    };
    assert_eq!(job("json", "").unwrap(), Some(Guide::JsonObject));
    assert_eq!(
        job("json_schema", r#"{"type":"integer"}"#).unwrap(),
        Some(Guide::JsonSchema(serde_json::json!({"type": "integer"})))
    );
    assert_eq!(job("regex", "[0-9]+").unwrap(), Some(Guide::Regex("[0-9]+".into())));
    assert_eq!(job("ebnf_grammar", "start: \"x\"").unwrap(), Some(Guide::Lark("start: \"x\"".into())));
    assert_eq!(job("choice", r#"["a","b"]"#).unwrap(), Some(Guide::Choice(vec!["a".into(), "b".into()])));
    let e = job("json_schema", "{oops").unwrap_err().to_string();
    assert!(e.contains("`guided_decoding_guide`") && e.contains("not valid JSON"), "{e}");
}

#[test]
fn top_and_prompt_logprobs_switch_their_outputs_on() {
    let text = bytes("text_input", &[&["a"]]);
    let names = |inputs: &[InputTensor], requested: &[&str]| {
        let req: Vec<String> = requested.iter().map(|s| s.to_string()).collect();
        parse_job(inputs, &req, &lim(false)).unwrap().outputs.names
    };
    let plain = names(std::slice::from_ref(&text), &[]);
    assert!(!plain.iter().any(|n| n.contains("top") || n.starts_with("prompt_")), "{plain:?}");
    let top = [text.clone(), i64s("top_logprobs", &[3])];
    let j = parse_job(&top, &[], &lim(false)).unwrap();
    assert_eq!(j.prompts[0].params.top_logprobs, 3);
    let n = names(&top, &[]);
    assert!(n.contains(&"output_top_log_probs") && n.contains(&"output_top_token_ids"), "{n:?}");
    assert!(!n.contains(&"output_top_tokens") && !n.contains(&"prompt_log_probs"), "texts only when named: {n:?}");
    assert_eq!(names(&top, &["text_output", "output_top_tokens"]), vec!["text_output", "output_top_tokens"]);
    let both = [text.clone(), i64s("top_logprobs", &[2]), boolean("return_prompt_log_probs", true)];
    assert!(parse_job(&both, &[], &lim(false)).unwrap().prompts[0].params.prompt_logprobs);
    let n = names(&both, &[]);
    for o in ["prompt_log_probs", "prompt_token_ids", "prompt_top_log_probs", "prompt_top_token_ids"] {
        assert!(n.contains(&o), "{o} in {n:?}");
    }
    let only_prompt = names(&[text.clone(), boolean("return_prompt_log_probs", true)], &[]);
    assert!(only_prompt.contains(&"prompt_log_probs") && !only_prompt.contains(&"prompt_top_log_probs"));
    let e = err(&[text, i64s("top_logprobs", &[21])]);
    assert!(e.contains("`top_logprobs`") && e.contains("[0, 20]"), "{e}");
}
