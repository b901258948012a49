//! The NeMo chat format of NVIDIA's Llama-2 chat models (NV-Llama2-70B-RLHF-Chat's card, NeMo's SFT
//! `chat_prompt_tokens`): `<extra_id_0>System\n{system}\n` then `<extra_id_1>{User|Assistant}\n{text}\n` per turn,
//! and `<extra_id_1>Assistant\n` to open the answer. The system turn is always there (empty when none is given).
use super::Message;
use crate::{Error, Result};

/// The markers of NeMo's `data.chat_prompt_tokens` (defaults: the model card's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NemoTokens {
    pub system_turn_start: String,
    pub turn_start: String,
    pub end_of_turn: String,
    pub end_of_name: String,
}

impl Default for NemoTokens {
    fn default() -> Self {
        NemoTokens {
            system_turn_start: "<extra_id_0>".into(),
            turn_start: "<extra_id_1>".into(),
            end_of_turn: "\n".into(),
            end_of_name: "\n".into(),
        }
    }
}

impl NemoTokens {
    /// The defaults overridden by the `(key, value)` pairs of `chat_prompt_tokens` (unknown keys ignored).
    pub fn from_pairs(pairs: &[(String, String)]) -> NemoTokens {
        let mut t = NemoTokens::default();
        for (k, v) in pairs {
            match k.as_str() {
                "system_turn_start" => t.system_turn_start = v.clone(),
                "turn_start" => t.turn_start = v.clone(),
                "end_of_turn" => t.end_of_turn = v.clone(),
                "end_of_name" => t.end_of_name = v.clone(),
                _ => {}
            }
        }
        t
    }

    pub(super) fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let (system, turns) = match messages.split_first() {
            Some((m, rest)) if m.role == "system" => (m.content.as_str(), rest),
            _ => ("", messages),
        };
        let mut s = format!("{}System{}{}{}", self.system_turn_start, self.end_of_name, system, self.end_of_turn);
        for (i, m) in turns.iter().enumerate() {
            let name = match m.role.as_str() {
                "user" => "User",
                "assistant" => "Assistant",
                "system" => {
                    return Err(Error::InvalidRequest(format!("message {i}: a system message may only come first")));
                }
                r => {
                    return Err(Error::InvalidRequest(format!(
                        "message {i}: unknown role `{r}` (system, user, assistant)"
                    )));
                }
            };
            s.push_str(&format!("{}{name}{}{}{}", self.turn_start, self.end_of_name, m.content, self.end_of_turn));
        }
        if add_generation_prompt {
            s.push_str(&format!("{}Assistant{}", self.turn_start, self.end_of_name));
        }
        Ok(s)
    }
}
