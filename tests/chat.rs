//! Chat templates against their references: Hugging Face templates against `transformers`' apply_chat_template
//! (and Llama-2's ids against Meta's reference encoding), committed by scripts/fixtures/gen_chat_fixtures.py; the
//! checkpoints' detected templates (NeMo chat from the `.nemo`, Jinja from `tokenizer_config.json`).
use std::path::{Path, PathBuf};
use triton_llama::chat::{ChatTemplate, Message, from_tokenizer_config};
use triton_llama::loader;
use triton_llama::tokenizer::Tokenizer;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn renderings() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("chat/renderings.json")).unwrap()).unwrap()
}

fn template(name: &str) -> ChatTemplate {
    let p = fixture(&format!("chat/{name}/tokenizer_config.json"));
    from_tokenizer_config(&std::fs::read_to_string(&p).unwrap(), &p).unwrap().unwrap()
}

fn messages(v: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn hf_templates_match_transformers() {
    let r = renderings();
    let tok = Tokenizer::from_file(&fixture("tokenizer/llama_bpe.model")).unwrap();
    let mut checked = (0, 0, 0);
    for (name, cases) in r["templates"].as_object().unwrap() {
        let t = template(name);
        for c in cases.as_array().unwrap() {
            let msgs = messages(&c["messages"]);
            let add_gen = c["add_generation_prompt"].as_bool().unwrap();
            let got = t.render(&msgs, add_gen);
            let what = format!("{name}/{} gen={add_gen}", c["conversation"]);
            if let Some(err) = c["error"].as_str() {
                let e = got.expect_err(&what).to_string();
                assert!(e.contains(err), "{what}: {e}");
                checked.1 += 1;
                continue;
            }
            let text = got.unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(text, c["text"].as_str().unwrap(), "{what}");
            checked.0 += 1;
            if let Some(ids) = c["ids"].as_array() {
                let want: Vec<u32> = ids.iter().map(|i| i.as_u64().unwrap() as u32).collect();
                assert_eq!(t.encode(&tok, &text).unwrap(), want, "{what}: ids");
                checked.2 += 1;
            }
        }
    }
    assert!(checked.0 >= 20 && checked.1 >= 2 && checked.2 >= 8, "{checked:?}");
}

#[test]
fn nemo_fixture_gets_the_card_format() {
    let src = loader::open(&fixture("models/gqa_bf16/model.nemo")).unwrap();
    let t = src.chat_template().unwrap().expect("a NeMo chat template");
    assert_eq!(t.kind(), "nemo");
    let p = t.render(&[Message::new("user", "What is 2+2?")], true).unwrap();
    // The string gen_fixtures.py and the model card use.
    assert_eq!(p, "<extra_id_0>System\n\n<extra_id_1>User\nWhat is 2+2?\n<extra_id_1>Assistant\n");
    assert_eq!(src.default_stop_strings(), t.stop_strings());
    // The markers are plain text to the tokenizer, no BOS: the ids are the plain encoding.
    let tok = src.tokenizer().unwrap();
    assert_eq!(t.encode(&tok, &p).unwrap(), tok.encode(&p, false).unwrap());
}

#[test]
fn hf_checkpoint_reads_tokenizer_config_and_override_files() {
    let dir = std::env::temp_dir().join(format!("tl-chat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let hf = fixture("models/mha_f32/hf");
    for f in std::fs::read_dir(&hf).unwrap() {
        let f = f.unwrap().path();
        std::os::unix::fs::symlink(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    assert!(loader::open(&dir).unwrap().chat_template().unwrap().is_none(), "no tokenizer_config.json: no template");
    std::fs::copy(fixture("chat/llama2_chat/tokenizer_config.json"), dir.join("tokenizer_config.json")).unwrap();
    let t = loader::open(&dir).unwrap().chat_template().unwrap().unwrap();
    assert_eq!(t.render(&[Message::new("user", "x")], true).unwrap(), "<s>[INST] x [/INST]");
    // --chat-template: a tokenizer_config.json, a bare Jinja file, or `nemo`.
    let o = ChatTemplate::from_override(fixture("chat/chatml/tokenizer_config.json").to_str().unwrap(), "<s>", "</s>")
        .unwrap();
    assert!(o.render(&[Message::new("user", "x")], true).unwrap().starts_with("<|im_start|>user\nx<|im_end|>"));
    let j = dir.join("t.jinja");
    std::fs::write(&j, "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}").unwrap();
    let o = ChatTemplate::from_override(j.to_str().unwrap(), "<s>", "</s>").unwrap();
    assert_eq!(o.render(&[Message::new("user", "x")], false).unwrap(), "<s>user: x\n");
    assert_eq!(ChatTemplate::from_override("nemo", "", "").unwrap().kind(), "nemo");
    assert!(ChatTemplate::from_override(dir.join("missing").to_str().unwrap(), "", "").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn cli(args: &[&str], stdin: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_triton-llama"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{args:?}");
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn cli_chat_is_multi_turn_and_equals_generate_on_the_rendered_prompt() {
    let ckpt = fixture("models/gqa_bf16/model.nemo");
    let ckpt = ckpt.to_str().unwrap();
    let turns =
        cli(&["chat", ckpt, "--max-tokens", "6", "--system", "Be brief.", "--json"], "What is 2+2?\n\nAnd 3+3?\n");
    assert_eq!(turns.len(), 2, "the empty line is skipped");
    let (p1, p2) = (turns[0]["prompt"].as_str().unwrap(), turns[1]["prompt"].as_str().unwrap());
    assert_eq!(p1, "<extra_id_0>System\nBe brief.\n<extra_id_1>User\nWhat is 2+2?\n<extra_id_1>Assistant\n");
    // Turn 2 carries turn 1's answer.
    let a1 = turns[0]["text"].as_str().unwrap();
    assert_eq!(p2, format!("{p1}{a1}\n<extra_id_1>User\nAnd 3+3?\n<extra_id_1>Assistant\n"));
    // render-chat gives the same prompt, and greedy `generate` on it gives the same tokens.
    let msgs = r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"What is 2+2?"}]"#;
    let r = &cli(&["render-chat", ckpt, "--messages", msgs, "--json"], "")[0];
    assert_eq!(r["prompt"].as_str().unwrap(), p1);
    assert_eq!(r["ids"], turns[0]["prompt_ids"]);
    let g = &cli(&["generate", ckpt, "--prompt", p1, "--max-tokens", "6", "--json"], "")[0];
    assert_eq!(g["prompt_ids"], turns[0]["prompt_ids"]);
    assert_eq!(g["ids"], turns[0]["ids"]);
}
