//! Chat templates: one function from messages (system / user / assistant turns) to a prompt string.
//!
//! Two kinds: the NeMo chat format of NVIDIA's Llama-2 chat models (the model card's template, tokens from the
//! `.nemo`'s `data.chat_prompt_tokens`), and a Hugging Face `chat_template` (Jinja, from `tokenizer_config.json`
//! or a `--chat-template FILE`) rendered with `minijinja` as TGI does. The Triton model's `messages` input, the
//! `chat` CLI and the OpenAI frontend (through that input) all render here, so there is one implementation.
mod jinja;
mod nemo;

pub use nemo::NemoTokens;

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

/// Most messages one conversation may hold (a bound on the work one request can ask for).
pub const MAX_MESSAGES: usize = 4096;

/// How a model turns a conversation into its prompt.
#[derive(Debug, Clone)]
pub enum ChatTemplate {
    /// NeMo / SteerLM chat: `<extra_id_0>System\n{system}\n<extra_id_1>User\n{msg}\n<extra_id_1>Assistant\n`.
    Nemo(NemoTokens),
    /// A Hugging Face Jinja `chat_template` with the special-token strings it may print.
    Jinja(jinja::JinjaTemplate),
}

impl ChatTemplate {
    /// A Jinja template; `bos` / `eos` are the strings `bos_token` / `eos_token` render as.
    pub fn jinja(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate> {
        Ok(ChatTemplate::Jinja(jinja::JinjaTemplate::new(source, bos, eos)?))
    }

    /// A `--chat-template FILE` override: `nemo` names the built-in NeMo format, anything else is a file holding a
    /// Jinja template or a `tokenizer_config.json`. `bos` / `eos` as for [`ChatTemplate::jinja`].
    pub fn from_override(spec: &str, bos: &str, eos: &str) -> Result<ChatTemplate> {
        if spec == "nemo" {
            return Ok(ChatTemplate::Nemo(NemoTokens::default()));
        }
        let path = Path::new(spec);
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        if text.trim_start().starts_with('{')
            && !text.trim_start().starts_with("{%")
            && !text.trim_start().starts_with("{{")
        {
            return from_tokenizer_config(&text, path)?
                .ok_or_else(|| Error::Config(format!("{}: no `chat_template` in this JSON file", path.display())));
        }
        ChatTemplate::jinja(&text, bos, eos)
    }

    /// A short name for logs and `inspect`.
    pub fn kind(&self) -> &'static str {
        match self {
            ChatTemplate::Nemo(_) => "nemo",
            ChatTemplate::Jinja(_) => "jinja",
        }
    }

    /// The prompt for `messages`, ending with the assistant's turn opening when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::InvalidRequest("`messages` is empty".into()));
        }
        if messages.len() > MAX_MESSAGES {
            return Err(Error::InvalidRequest(format!(
                "{} messages; at most {MAX_MESSAGES} are allowed",
                messages.len()
            )));
        }
        match self {
            ChatTemplate::Nemo(t) => t.render(messages, add_generation_prompt),
            ChatTemplate::Jinja(t) => t.render(messages, add_generation_prompt),
        }
    }

    /// Stop strings the format implies (NeMo: the next turn's opening `<extra_id_1>`; Jinja: none, EOS ends it).
    pub fn stop_strings(&self) -> Vec<String> {
        match self {
            ChatTemplate::Nemo(t) => vec![t.turn_start.clone()],
            ChatTemplate::Jinja(_) => Vec::new(),
        }
    }

    /// Token ids of a rendered prompt. NeMo's markers are plain text to its tokenizer (as in NeMo), so the text
    /// is encoded as is, without BOS. A Jinja template prints BOS / EOS as text (`<s>`, `</s>`), which the
    /// tokenizer treats as plain text; they are cut out here and become their ids, and each piece of text
    /// between them is encoded on its own (as Llama's `legacy` tokenizer does after a special token).
    pub fn encode(&self, tok: &Tokenizer, prompt: &str) -> Result<Vec<u32>> {
        match self {
            ChatTemplate::Nemo(_) => tok.encode(prompt, false),
            ChatTemplate::Jinja(t) => {
                let specials = [(t.bos.as_str(), tok.bos_id()), (t.eos.as_str(), tok.eos_id())];
                let mut ids = Vec::new();
                let mut rest = prompt;
                while !rest.is_empty() {
                    let next = specials
                        .iter()
                        .filter(|(s, _)| !s.is_empty())
                        .filter_map(|&(s, id)| rest.find(s).map(|at| (at, s, id)))
                        .min_by_key(|&(at, s, _)| (at, usize::MAX - s.len()));
                    let (text, special) = match next {
                        Some((at, s, id)) => (&rest[..at], Some((s, id))),
                        None => (rest, None),
                    };
                    if !text.is_empty() {
                        ids.extend(tok.encode(text, false)?);
                    }
                    match special {
                        Some((s, id)) => {
                            ids.push(id);
                            rest = &rest[text.len() + s.len()..];
                        }
                        None => rest = "",
                    }
                }
                Ok(ids)
            }
        }
    }
}

/// Parses a JSON list of messages (the Triton `messages` input): `[{"role": .., "content": ..}, ...]`.
/// `content` may also be OpenAI's list of parts; only `text` parts are accepted.
pub fn parse_messages(json: &str) -> Result<Vec<Message>> {
    let bad = |m: String| Error::InvalidRequest(format!("input `messages`: {m}"));
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    let arr = v.as_array().ok_or_else(|| bad("must be a JSON list of {\"role\", \"content\"} objects".into()))?;
    let mut out = Vec::with_capacity(arr.len().min(MAX_MESSAGES));
    for (i, m) in arr.iter().enumerate() {
        let role =
            m.get("role").and_then(|r| r.as_str()).ok_or_else(|| bad(format!("message {i} has no string `role`")))?;
        let content = match m.get("content") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(serde_json::Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.get("type").and_then(|t| t.as_str()), p.get("text").and_then(|t| t.as_str())) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        _ => return Err(bad(format!("message {i}: only text content parts are supported"))),
                    }
                }
                s
            }
            Some(_) => return Err(bad(format!("message {i}: `content` must be a string"))),
        };
        out.push(Message { role: role.to_string(), content });
    }
    Ok(out)
}

/// The `chat_template` of a `tokenizer_config.json` text, if it has one; `origin` names it in errors.
/// `bos_token` / `eos_token` come from the same file (strings or `{"content": ..}` objects).
pub fn from_tokenizer_config(text: &str, origin: &Path) -> Result<Option<ChatTemplate>> {
    let bad = |m: String| Error::Config(format!("{}: {m}", origin.display()));
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    let token = |k: &str| -> String {
        match v.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(o) => o.get("content").and_then(|c| c.as_str()).unwrap_or("").to_string(),
            None => String::new(),
        }
    };
    let source = match v.get("chat_template") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => s.clone(),
        // A list of named templates: the one called `default`.
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string))
            .ok_or_else(|| bad("`chat_template` is a list without a `default` entry".into()))?,
        Some(_) => return Err(bad("`chat_template` must be a string".into())),
    };
    ChatTemplate::jinja(&source, &token("bos_token"), &token("eos_token")).map(Some)
}

#[cfg(test)]
mod tests;
