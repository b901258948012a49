//! Turns generated ids into streamed text: UTF-8-safe incremental decoding plus stop strings matched on text
//! (whatever their tokenization), with text that could still begin a stop string held back.
use crate::Result;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

pub struct TextStream {
    decoder: IncrementalDecoder,
    stops: Vec<String>,
    /// Decoded text not yet released (it may be the start of a stop string).
    pending: String,
}

impl TextStream {
    pub fn new(tok: &Tokenizer, prompt_ids: &[u32], stops: Vec<String>) -> Result<Self> {
        Ok(TextStream { decoder: IncrementalDecoder::with_prefix(tok, prompt_ids)?, stops, pending: String::new() })
    }

    /// Adds one generated token. Returns the text safe to release and whether a stop string was hit
    /// (the stop string and anything after it are dropped).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<(String, bool)> {
        let new = self.decoder.push(tok, id)?;
        self.pending.push_str(&new);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return Ok((out, true));
        }
        let keep = self.held_suffix();
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        Ok((out, false))
    }

    /// Releases everything held (generation ended for another reason).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        let mut out = std::mem::take(&mut self.pending);
        out.push_str(&self.decoder.finish(tok)?);
        Ok(out)
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn held_suffix(&self) -> usize {
        let p = &self.pending;
        let mut best = 0;
        for s in &self.stops {
            for (i, _) in p.char_indices() {
                let suffix = &p[i..];
                if suffix.len() > best && suffix.len() < s.len() && s.starts_with(suffix) {
                    best = suffix.len();
                }
            }
        }
        best
    }
}
