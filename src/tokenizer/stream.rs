//! Streaming detokenizer: turns generated ids into text one id at a time, never emitting half a character.
//!
//! This is the prefix-offset / read-offset technique of TGI and vLLM. The decoder keeps a short window of ids:
//! `window[..read]` was already emitted and serves as context, `window[read..]` is pending. Each push decodes
//! `window[..read]` and the whole window; the text past the first is new. It is emitted only when it is longer
//! and does not end in U+FFFD (an incomplete UTF-8 sequence from byte-fallback pieces may still be completed
//! by later ids); then the window is cut to the newly emitted ids, so each step decodes a few ids, not the
//! whole sequence.
//!
//! For SentencePiece models the concatenation of all pushes and [`IncrementalDecoder::finish`] equals
//! `Tokenizer::decode` of all ids exactly. Two details make that hold: the leading space of a piece is dropped
//! only when nothing but control ids precede the window (as sentencepiece does), and the window is only ever
//! cut before an id that is not a UTF-8 continuation byte, where byte-run decoding splits cleanly.

use super::Tokenizer;
use crate::{Error, Result};

/// Prompt ids kept as context by [`IncrementalDecoder::with_prefix`].
const PROMPT_CONTEXT: usize = 6;
/// Pending ids beyond which text ending in U+FFFD is emitted anyway, up to a clean cut that keeps the last
/// few ids (a UTF-8 character has at most 4 bytes, so only the last 3 pending bytes can still change).
const MAX_PENDING: usize = 8;
const KEEP_PENDING: usize = 4;

#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    /// Ids from the prefix offset on.
    window: Vec<u32>,
    /// Read offset within `window`: ids before it have been emitted.
    read: usize,
    /// Whether only control ids (or none) precede `window`, so its first text piece loses its leading space.
    at_start: bool,
}

impl IncrementalDecoder {
    /// A decoder for a sequence that starts with the first pushed id.
    pub fn new() -> Self {
        IncrementalDecoder { window: Vec::new(), read: 0, at_start: true }
    }

    /// A decoder for text generated after `prompt_ids`: the output is `decode(prompt + generated)` minus
    /// `decode(prompt)`, so the first generated word keeps its leading space.
    pub fn with_prefix(tok: &Tokenizer, prompt_ids: &[u32]) -> Result<Self> {
        check_ids(tok, prompt_ids)?;
        let mut start = prompt_ids.len().saturating_sub(PROMPT_CONTEXT);
        while start > 0 && is_continuation(tok, prompt_ids[start]) {
            start -= 1;
        }
        let at_start = prompt_ids[..start].iter().all(|&id| tok.is_control(id));
        let window = prompt_ids[start..].to_vec();
        Ok(IncrementalDecoder { read: window.len(), window, at_start })
    }

    /// Adds one id and returns the text it completes (often empty while a character is incomplete).
    /// An id outside the vocabulary is an error and leaves the decoder unchanged.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        check_ids(tok, &[id])?;
        self.window.push(id);
        let prefix_text = tok.decode_window(&self.window[..self.read], self.at_start)?;
        let new_text = tok.decode_window(&self.window, self.at_start)?;
        if new_text.len() > prefix_text.len() && !new_text.ends_with('\u{FFFD}') {
            let out = text_after(&new_text, &prefix_text);
            self.advance(tok, self.window.len());
            return Ok(out);
        }
        let pending = self.window.len() - self.read;
        if pending > MAX_PENDING {
            let mut cut = self.window.len() - KEEP_PENDING;
            while cut > self.read && is_continuation(tok, self.window[cut]) {
                cut -= 1;
            }
            if cut > self.read {
                let text = tok.decode_window(&self.window[..cut], self.at_start)?;
                let out = text_after(&text, &prefix_text);
                self.advance(tok, cut);
                return Ok(out);
            }
        }
        Ok(String::new())
    }

    /// Returns whatever is still held (for example bytes of a character that never completed).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        if self.read == self.window.len() {
            return Ok(String::new());
        }
        let prefix_text = tok.decode_window(&self.window[..self.read], self.at_start)?;
        let new_text = tok.decode_window(&self.window, self.at_start)?;
        let out = text_after(&new_text, &prefix_text);
        self.advance(tok, self.window.len());
        Ok(out)
    }

    /// Ids pushed but not yet turned into text.
    pub fn pending(&self) -> &[u32] {
        &self.window[self.read..]
    }

    /// Marks `window[..new_read]` as emitted and drops the ids before the old read offset.
    fn advance(&mut self, tok: &Tokenizer, new_read: usize) {
        let dropped = self.read;
        if self.at_start && self.window[..dropped].iter().any(|&id| !tok.is_control(id)) {
            self.at_start = false;
        }
        self.window.drain(..dropped);
        self.read = new_read - dropped;
    }
}

fn check_ids(tok: &Tokenizer, ids: &[u32]) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= tok.vocab_size()) {
        Some(bad) => {
            Err(Error::Tokenizer(format!("token id {bad} is outside the vocabulary of {} entries", tok.vocab_size())))
        }
        None => Ok(()),
    }
}

/// A byte-fallback id whose byte continues a UTF-8 character (0x80..=0xBF).
fn is_continuation(tok: &Tokenizer, id: u32) -> bool {
    matches!(tok.byte_value(id), Some(0x80..=0xBF))
}

/// `new` past `prefix`. If `new` does not extend `prefix` (only possible when the context itself ended in an
/// incomplete character, or for a `tokenizer.json` decoder that rewrites earlier text), the text past their
/// longest common prefix.
fn text_after(new: &str, prefix: &str) -> String {
    if let Some(rest) = new.strip_prefix(prefix) {
        return rest.to_string();
    }
    let common = new
        .char_indices()
        .zip(prefix.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(prefix.len().min(new.len()));
    new.get(common..).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::text_after;

    #[test]
    fn text_after_handles_extension_and_divergence() {
        assert_eq!(text_after("Hello world", "Hello"), " world");
        assert_eq!(text_after("ab\u{4f60}", "ab\u{FFFD}"), "\u{4f60}");
        assert_eq!(text_after("ab", "abc"), "");
    }
}
