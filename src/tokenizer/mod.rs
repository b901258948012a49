//! Llama tokenizers: SentencePiece `.model` files rebuilt as a `tokenizers` BPE with byte fallback, or `tokenizer.json`.
//! (Skeleton: the implementation is filled in by the tokenizer work.)
use crate::Result;
use std::path::Path;

pub struct Tokenizer {}

impl Tokenizer {
    /// Loads `tokenizer.model` (SentencePiece protobuf) or `tokenizer.json` by content.
    pub fn from_file(_path: &Path) -> Result<Tokenizer> {
        todo!()
    }
    /// Builds from the bytes of a SentencePiece `.model`; `origin` names it in errors.
    pub fn from_sentencepiece_bytes(_bytes: &[u8], _origin: &Path) -> Result<Tokenizer> {
        todo!()
    }
    /// Encodes text; with `add_bos`, the BOS id is prepended.
    pub fn encode(&self, _text: &str, _add_bos: bool) -> Result<Vec<u32>> {
        todo!()
    }
    pub fn decode(&self, _ids: &[u32]) -> Result<String> {
        todo!()
    }
    pub fn vocab_size(&self) -> usize {
        todo!()
    }
    pub fn bos_id(&self) -> u32 {
        todo!()
    }
    pub fn eos_id(&self) -> u32 {
        todo!()
    }
}

/// (Skeleton) streaming detokenizer.
pub struct IncrementalDecoder {}
impl IncrementalDecoder {
    pub fn with_prefix(_tok: &Tokenizer, _prompt: &[u32]) -> Self {
        todo!()
    }
    pub fn push(&mut self, _tok: &Tokenizer, _id: u32) -> Result<String> {
        todo!()
    }
    pub fn finish(&mut self) -> Result<String> {
        todo!()
    }
}
