//! What every frontend (the Triton backend, the CLI) does around the engine: a prompt's text or chat messages and
//! its options become a tokenized request with the serving defaults applied (BOS, default and chat-template stop
//! strings, banned words, the input limit), and each prompt's output is tracked so a response carries the stream
//! delta or the whole answer.
use super::{Engine, FinishReason, Output, Request, TokenLogprob};
use crate::sampling::SamplingParams;
use crate::{Error, Result};

/// One prompt as a frontend received it, with its own sampling values.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSpec {
    pub text: String,
    /// `banned` is left empty: [`Engine::prepare`] tokenizes `bad_words` into it.
    pub params: SamplingParams,
    pub bad_words: Vec<String>,
    /// (word, bias): [`Engine::prepare`] adds the bias to every token of the word (TensorRT-LLM's embedding bias).
    pub bias_words: Vec<(String, f32)>,
    /// `None`: the serving default, else the checkpoint's.
    pub add_bos: Option<bool>,
    /// `text` is a JSON list of chat messages (the `messages` input), rendered by the model's chat template.
    pub chat: bool,
}

/// Serving defaults applied to every prompt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptDefaults {
    /// Longest prompt in tokens; `None`: only the engine's own limits.
    pub max_input_len: Option<usize>,
    /// `None`: the checkpoint's default.
    pub add_bos: Option<bool>,
    /// Stop strings added to every prompt's own; `None`: the checkpoint's default stop strings.
    pub stop_strings: Option<Vec<String>>,
}

/// A prompt ready for [`Engine::add_request`].
#[derive(Debug, Clone)]
pub struct Prepared {
    pub request: Request,
    /// The prompt as the model reads it (chat messages rendered by the template).
    pub text: String,
}

impl Engine {
    /// Turns prompt `index` of a request into engine request `id`. A text prompt is tokenized with BOS as asked
    /// (else the serving default, else the checkpoint's); chat messages are rendered by the chat template (which
    /// decides BOS) and add its stop strings. The default stop strings follow the prompt's own; bad words are
    /// tokenized into banned sequences (words that tokenize to nothing are dropped). Refuses a prompt over
    /// `max_input_len` tokens, naming its index. Nothing is queued.
    pub fn prepare(&self, id: u64, index: usize, p: &PromptSpec, d: &PromptDefaults) -> Result<Prepared> {
        let tok = self.tokenizer();
        let (text, prompt_ids, chat_stops) = if p.chat {
            if p.add_bos.is_some() {
                let m = "input `add_BOS` cannot be combined with `messages` (the chat template decides)";
                return Err(Error::InvalidRequest(m.into()));
            }
            let msgs = crate::chat::parse_messages(&p.text)?;
            let (text, ids) = self.render_chat(&msgs)?;
            (text, ids, self.chat_template().map(|t| t.stop_strings()).unwrap_or_default())
        } else {
            let bos = p.add_bos.or(d.add_bos).unwrap_or(self.default_add_bos());
            (p.text.clone(), tok.encode(&p.text, bos)?, Vec::new())
        };
        if let Some(m) = d.max_input_len
            && prompt_ids.len() > m
        {
            let n = prompt_ids.len();
            return Err(Error::InvalidRequest(format!(
                "prompt {index} has {n} tokens; this model's max_input_len is {m}"
            )));
        }
        let default_stops = d.stop_strings.as_deref().unwrap_or(self.default_stop_strings());
        let mut params = p.params.clone();
        params.stop_strings.extend(default_stops.iter().cloned());
        params.stop_strings.extend(chat_stops.into_iter().filter(|s| !default_stops.contains(s)));
        for w in &p.bad_words {
            let t = tok.encode(w, false)?;
            if !t.is_empty() {
                params.banned.push(t);
            }
        }
        for (w, b) in &p.bias_words {
            params.logit_bias.extend(tok.encode(w, false)?.into_iter().map(|t| (t, *b)));
        }
        Ok(Prepared { request: Request { id, prompt_ids, params }, text })
    }

    /// Replaces the checkpoint's chat template with `spec` (a template file, or `nemo`; `None` keeps it); BOS
    /// and EOS print as the tokenizer's pieces.
    pub fn apply_chat_override(&mut self, spec: Option<&str>) -> Result<()> {
        if let Some(spec) = spec {
            let tok = self.tokenizer().clone();
            let piece = |id| tok.id_to_piece(id).unwrap_or_default();
            let t = crate::chat::ChatTemplate::from_override(spec, &piece(tok.bos_id()), &piece(tok.eos_id()))?;
            log::info!("chat template: {} from {spec}", t.kind());
            self.set_chat_template(t);
        }
        Ok(())
    }
}

/// What one response carries for one prompt of a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowReply {
    /// Text so far (NeMo's streaming contract), with the prompt in front unless it is excluded.
    pub outputs: String,
    /// New text when streaming, the whole text otherwise.
    pub text_output: String,
    pub num_input_tokens: i32,
    /// Tokens in this response when streaming, all tokens otherwise.
    pub num_output_tokens: i32,
    /// None until the row finishes.
    pub finish_reason: Option<FinishReason>,
    pub output_log_probs: Vec<f32>,
    pub cum_log_prob: f32,
    /// Each token's own text (`output_tokens`, only when asked for), aligned with `output_log_probs`.
    pub output_tokens: Vec<String>,
    /// The prompt's logits `[num_input_tokens, logits_width]` when asked for: in the first reply that carries
    /// tokens (streaming), or the whole answer; else empty.
    pub context_logits: Vec<f32>,
    /// The logits of this reply's tokens `[tokens, logits_width]`, aligned with `output_log_probs`, when asked for.
    pub generation_logits: Vec<f32>,
    /// Columns of the logits above (0 when none was asked for).
    pub logits_width: usize,
    /// With `top_logprobs` k: the k most likely tokens at each of this reply's tokens (id, log-prob), best first,
    /// and their texts when tokens' texts are kept; aligned with `output_log_probs`.
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    pub top_tokens: Vec<Vec<String>>,
    /// With `prompt_logprobs`, once (the first reply that carries tokens, or the whole answer): every prompt
    /// token's log-probability given those before it (NaN for the first) and its most likely tokens; texts when
    /// kept.
    pub prompt_logprobs: Vec<TokenLogprob>,
    pub prompt_tokens: Vec<String>,
    pub prompt_top_tokens: Vec<Vec<String>>,
}

/// One prompt's output so far and how much of it was already sent.
#[derive(Debug, Clone, Default)]
pub struct OutputTracker {
    /// Put in front of the text (the prompt, unless the request excludes it).
    prefix: String,
    num_input: usize,
    text: String,
    sent_text: usize,
    tokens: usize,
    sent_tokens: usize,
    logprobs: Vec<f32>,
    /// Each token's text, when the frontend keeps it.
    token_texts: Vec<String>,
    /// Logits asked back, as the engine returned them (`Output::context_logits`, `Output::logits`).
    context_logits: Vec<f32>,
    context_sent: bool,
    gen_logits: Vec<f32>,
    logits_width: usize,
    finish: Option<FinishReason>,
    top: Vec<Vec<(u32, f32)>>,
    top_texts: Vec<Vec<String>>,
    prompt: Vec<TokenLogprob>,
    prompt_texts: Vec<String>,
    prompt_top_texts: Vec<Vec<String>>,
    prompt_sent: bool,
}

/// A token's text, for the outputs that carry texts (`output_tokens` and the like).
pub type TokenTexts<'a> = Option<&'a dyn Fn(u32) -> String>;

impl OutputTracker {
    pub fn new(prefix: String, num_input: usize) -> Self {
        OutputTracker { prefix, num_input, ..Default::default() }
    }

    /// Adds one engine output of this prompt, with the tokens' own texts when the frontend wants them (`texts`);
    /// true when it carried a token.
    pub fn record(&mut self, o: &Output, texts: TokenTexts) -> bool {
        self.text.push_str(&o.text);
        let all = |ids: &[(u32, f32)], f: &dyn Fn(u32) -> String| ids.iter().map(|&(t, _)| f(t)).collect();
        if let Some(t) = o.token {
            self.tokens += 1;
            self.logprobs.push(o.logprob);
            self.top.push(o.top_logprobs.clone());
            if let Some(f) = texts {
                self.token_texts.push(f(t));
                self.top_texts.push(all(&o.top_logprobs, f));
            }
            if !o.logits.is_empty() {
                self.logits_width = o.logits.len();
                self.gen_logits.extend_from_slice(&o.logits);
            }
        }
        if !o.prompt_logprobs.is_empty() {
            self.prompt = o.prompt_logprobs.clone();
            if let Some(f) = texts {
                self.prompt_texts = self.prompt.iter().map(|p| f(p.token)).collect();
                self.prompt_top_texts = self.prompt.iter().map(|p| all(&p.top, f)).collect();
            }
        }
        if !o.context_logits.is_empty() {
            self.logits_width = o.context_logits.len() / self.num_input.max(1);
            self.context_logits = o.context_logits.clone();
        }
        if let Some(f) = o.finish {
            self.finish = Some(f);
        }
        o.token.is_some()
    }

    pub fn num_input(&self) -> usize {
        self.num_input
    }
    pub fn tokens(&self) -> usize {
        self.tokens
    }
    pub fn finish(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Whether a streamed response would carry something new: text, or the first tokens (even without text).
    pub fn has_news(&self) -> bool {
        self.text.len() > self.sent_text || (self.sent_tokens == 0 && self.tokens > 0)
    }

    /// The next response's row, and everything in it counted as sent. Streaming: the text and tokens since the
    /// previous reply (the prefix with the first); otherwise the whole answer. `done`: the request is answered
    /// in full, and a row without a reason of its own finished with `stop`.
    pub fn reply(&mut self, stream: bool, done: bool) -> RowReply {
        let first = self.sent_text == 0 && self.sent_tokens == 0;
        let w = self.logits_width.max(1);
        let gen_from = if stream { (self.sent_tokens * w).min(self.gen_logits.len()) } else { 0 };
        let context_logits = if stream && self.context_sent { Vec::new() } else { self.context_logits.clone() };
        self.context_sent |= !self.context_logits.is_empty();
        let prompt_once = !(stream && self.prompt_sent);
        self.prompt_sent |= !self.prompt.is_empty();
        let from = |v_len: usize| if stream { self.sent_tokens.min(v_len) } else { 0 };
        let (text, prefix) = (&self.text, &self.prefix);
        let reply = RowReply {
            outputs: format!("{prefix}{text}"),
            text_output: if stream {
                format!("{}{}", if first { prefix.as_str() } else { "" }, &text[self.sent_text..])
            } else {
                format!("{prefix}{text}")
            },
            num_input_tokens: self.num_input as i32,
            num_output_tokens: if stream { (self.tokens - self.sent_tokens) as i32 } else { self.tokens as i32 },
            finish_reason: if done { Some(self.finish.unwrap_or(FinishReason::Stop)) } else { self.finish },
            output_log_probs: if stream { self.logprobs[self.sent_tokens..].to_vec() } else { self.logprobs.clone() },
            cum_log_prob: self.logprobs.iter().sum(),
            output_tokens: self.token_texts[from(self.token_texts.len())..].to_vec(),
            top_logprobs: self.top[from(self.top.len())..].to_vec(),
            top_tokens: self.top_texts[from(self.top_texts.len())..].to_vec(),
            prompt_logprobs: if prompt_once { self.prompt.clone() } else { Vec::new() },
            prompt_tokens: if prompt_once { self.prompt_texts.clone() } else { Vec::new() },
            prompt_top_tokens: if prompt_once { self.prompt_top_texts.clone() } else { Vec::new() },
            context_logits,
            generation_logits: self.gen_logits[gen_from..].to_vec(),
            logits_width: self.logits_width,
        };
        self.sent_text = self.text.len();
        self.sent_tokens = self.tokens;
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(text: &str, token: Option<u32>, finish: Option<FinishReason>) -> Output {
        Output { token, logprob: -0.5, finish, ..Output::ended(1, text.into(), FinishReason::Stop, None) }
    }

    /// Streamed deltas concatenate to the unary answer; the prefix comes once, with the first delta.
    #[test]
    fn stream_deltas_add_up_to_the_whole_answer() {
        let steps = [out("He", Some(5), None), out("", Some(6), None), out("llo", Some(7), Some(FinishReason::Length))];
        let (mut streamed, mut whole) = (OutputTracker::new("P: ".into(), 3), OutputTracker::new("P: ".into(), 3));
        let mut replies = Vec::new();
        for (i, o) in steps.iter().enumerate() {
            streamed.record(o, None);
            whole.record(o, None);
            if streamed.has_news() {
                replies.push(streamed.reply(true, i == steps.len() - 1));
            }
        }
        let all = whole.reply(false, true);
        let text: String = replies.iter().map(|r| r.text_output.as_str()).collect();
        assert_eq!(text, all.text_output);
        assert_eq!(all.text_output, "P: Hello");
        assert_eq!(replies.iter().map(|r| r.num_output_tokens).sum::<i32>(), all.num_output_tokens);
        assert_eq!(replies.iter().map(|r| r.output_log_probs.len()).sum::<usize>(), 3);
        assert_eq!(all.finish_reason, Some(FinishReason::Length));
        assert_eq!(replies[0].finish_reason, None);
        assert_eq!(replies.last().unwrap().outputs, "P: Hello");
    }

    /// A finished request's row without a reason of its own reports `stop`.
    #[test]
    fn done_without_a_reason_is_stop() {
        let mut t = OutputTracker::new(String::new(), 1);
        assert!(!t.has_news());
        assert_eq!(t.reply(false, true).finish_reason, Some(FinishReason::Stop));
    }
}
