//! NeMo format against the model card's strings; message parsing; `strftime`.
use super::*;

/// The model card's prompt template (README "Clients", docs/checkpoint-formats.md 7.4), empty system.
const CARD: &str = "<extra_id_0>System\n\n<extra_id_1>User\nWhat is Triton?\n<extra_id_1>Assistant\n";

#[test]
fn nemo_matches_the_card_example() {
    let t = ChatTemplate::Nemo(NemoTokens::default());
    assert_eq!(t.render(&[Message::new("user", "What is Triton?")], true).unwrap(), CARD);
    // An empty system message is the card's template too.
    let with_empty = [Message::new("system", ""), Message::new("user", "What is Triton?")];
    assert_eq!(t.render(&with_empty, true).unwrap(), CARD);
    assert_eq!(t.stop_strings(), vec!["<extra_id_1>".to_string()]);
}

#[test]
fn nemo_system_and_multi_turn_follow_the_sft_format() {
    // docs/checkpoint-formats.md: <extra_id_0>System\n{system}\n<extra_id_1>User\n{msg}\n<extra_id_1>Assistant\n
    // {reply}\n<extra_id_1>User\n...
    let t = ChatTemplate::Nemo(NemoTokens::default());
    let msgs = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello."),
        Message::new("user", "Bye"),
    ];
    let want = concat!(
        "<extra_id_0>System\nBe brief.\n<extra_id_1>User\nHi\n<extra_id_1>Assistant\nHello.\n",
        "<extra_id_1>User\nBye\n<extra_id_1>Assistant\n"
    );
    assert_eq!(t.render(&msgs, true).unwrap(), want);
    assert_eq!(t.render(&msgs, false).unwrap(), want.strip_suffix("<extra_id_1>Assistant\n").unwrap());
}

#[test]
fn nemo_tokens_come_from_the_config() {
    let pairs = [("turn_start".to_string(), "<T>".to_string()), ("end_of_name".to_string(), ": ".to_string())];
    let t = ChatTemplate::Nemo(NemoTokens::from_pairs(&pairs));
    assert_eq!(
        t.render(&[Message::new("user", "x")], true).unwrap(),
        "<extra_id_0>System: \n<T>User: x\n<T>Assistant: "
    );
    assert_eq!(t.stop_strings(), vec!["<T>".to_string()]);
}

#[test]
fn nemo_refuses_bad_roles() {
    let t = ChatTemplate::Nemo(NemoTokens::default());
    let e = t.render(&[Message::new("user", "a"), Message::new("system", "b")], true).unwrap_err().to_string();
    assert!(e.contains("system message may only come first"), "{e}");
    let e = t.render(&[Message::new("tool", "a")], true).unwrap_err().to_string();
    assert!(e.contains("unknown role `tool`"), "{e}");
    assert!(t.render(&[], true).unwrap_err().to_string().contains("empty"));
}

#[test]
fn messages_parse_strings_parts_and_refuse_the_rest() {
    let m = parse_messages(
        r#"[{"role":"user","content":"a"},{"role":"assistant","content":null},
        {"role":"user","content":[{"type":"text","text":"b"},{"type":"text","text":"c"}]}]"#,
    )
    .unwrap();
    assert_eq!(m, vec![Message::new("user", "a"), Message::new("assistant", ""), Message::new("user", "bc")]);
    for (bad, want) in [
        ("{}", "JSON list"),
        ("[1]", "no string `role`"),
        (r#"[{"role":"user","content":5}]"#, "must be a string"),
        (r#"[{"role":"user","content":[{"type":"image_url"}]}]"#, "only text"),
        ("[", "not valid JSON"),
    ] {
        let e = parse_messages(bad).unwrap_err().to_string();
        assert!(e.contains(want), "{bad}: {e}");
    }
}

#[test]
fn strftime_formats_a_known_instant() {
    // 2024-02-29 13:05:09 UTC = 1709211909 (date -u -d @1709211909).
    assert_eq!(
        jinja::strftime("%Y-%m-%d %H:%M:%S %d %b %Y %B %-d %%", 1709211909),
        "2024-02-29 13:05:09 29 Feb 2024 February 29 %"
    );
    assert_eq!(jinja::strftime("%Y-%m-%d", 0), "1970-01-01");
}

#[test]
fn jinja_compile_errors_are_config_errors() {
    let e = ChatTemplate::jinja("{% for %}", "<s>", "</s>").unwrap_err().to_string();
    assert!(e.contains("does not compile"), "{e}");
}
