//! Llama tokenizers: SentencePiece `.model` files rebuilt as a `tokenizers` BPE with byte fallback, or
//! `tokenizer.json`.
//!
//! SentencePiece models encode through the `tokenizers` BPE built by [`convert`] and decode with a small routine
//! that follows sentencepiece's own decoder (control pieces vanish, `<unk>` becomes its surface, byte runs are
//! decoded with one U+FFFD per invalid byte, one leading `▁` of the first piece is dropped). `<s>`, `</s>` and
//! `<unk>` are not registered as added tokens, so a literal `<s>` in text is plain text, as in sentencepiece
//! and NeMo; BOS is inserted by id. For `tokenizer.json`, added special tokens are also encoded as plain text
//! (`encode_special_tokens`), so both paths treat user text the same way.

mod convert;
pub mod spm;
pub mod stream;

pub use stream::IncrementalDecoder;

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// How one id decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Text; `▁` means a space.
    Normal,
    /// `<s>`, `</s>` and other control pieces: decode to nothing.
    Control,
    /// `<unk>`: decodes to the model's unk surface (" ⁇ ").
    Unknown,
    /// `<0xHH>` byte-fallback piece.
    Byte(u8),
}

/// Decoding details of a SentencePiece model; absent for `tokenizer.json`.
struct SpmDecode {
    add_dummy_prefix: bool,
    unk_surface: String,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    origin: PathBuf,
    pieces: Vec<String>,
    kinds: Vec<TokenKind>,
    bos: u32,
    eos: u32,
    spm: Option<SpmDecode>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.pieces.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("sentencepiece", &self.spm.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.model` (SentencePiece protobuf) or `tokenizer.json` by content.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if bytes.starts_with(b"version https://git-lfs") {
            return Err(Error::LfsPointer { path: path.to_path_buf() });
        }
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Tokenizer::from_json_bytes(&bytes, path),
            _ => Tokenizer::from_sentencepiece_bytes(&bytes, path),
        }
    }

    /// Builds from the bytes of a SentencePiece `.model`; `origin` names it in errors.
    pub fn from_sentencepiece_bytes(bytes: &[u8], origin: &Path) -> Result<Tokenizer> {
        let err = |msg: String| Error::Tokenizer(format!("{}: {msg}", origin.display()));
        let model = spm::parse(bytes).map_err(|m| err(format!("not a valid SentencePiece model: {m}")))?;
        let c = convert::convert(&model).map_err(err)?;
        debug_assert_eq!(c.kinds[c.unk_id as usize], TokenKind::Unknown);
        Ok(Tokenizer {
            inner: c.inner,
            origin: origin.to_path_buf(),
            pieces: c.pieces,
            kinds: c.kinds,
            bos: c.bos_id,
            eos: c.eos_id,
            spm: Some(SpmDecode { add_dummy_prefix: c.add_dummy_prefix, unk_surface: c.unk_surface }),
        })
    }

    /// Builds from a Hugging Face `tokenizer.json`. Added tokens whose id lies past the model's vocabulary
    /// (the `<pad>` = 32000 of some early Llama-2 snapshots) are dropped with a warning.
    pub fn from_json_bytes(bytes: &[u8], origin: &Path) -> Result<Tokenizer> {
        let err = |msg: String| Error::Tokenizer(format!("{}: {msg}", origin.display()));
        let mut json: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let model_vocab = json.pointer("/model/vocab").and_then(|v| v.as_object()).map(|m| m.len());
        if let (Some(n), Some(added)) = (model_vocab, json.get_mut("added_tokens").and_then(|a| a.as_array_mut())) {
            added.retain(|t| match t.get("id").and_then(|i| i.as_u64()) {
                Some(id) if id >= n as u64 => {
                    log::warn!("{}: dropping added token {t} past the {n}-entry vocabulary", origin.display());
                    false
                }
                _ => true,
            });
        }
        let text = json.to_string();
        let mut inner: tokenizers::Tokenizer =
            text.parse().map_err(|e| err(format!("not a usable tokenizer.json: {e}")))?;
        inner.set_encode_special_tokens(true);
        let size = inner.get_vocab_size(true);
        let mut pieces = Vec::with_capacity(size);
        let mut kinds = Vec::with_capacity(size);
        let specials: std::collections::HashSet<u32> =
            inner.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();
        for id in 0..size as u32 {
            let piece = inner.id_to_token(id).ok_or_else(|| err(format!("no token has id {id}")))?;
            kinds.push(if specials.contains(&id) {
                TokenKind::Control
            } else if let Some(b) = convert::parse_byte_piece(&piece) {
                TokenKind::Byte(b)
            } else {
                TokenKind::Normal
            });
            pieces.push(piece);
        }
        let find = |p: &str| inner.token_to_id(p).ok_or_else(|| err(format!("the vocabulary has no `{p}`")));
        let (bos, eos) = (find("<s>")?, find("</s>")?);
        Ok(Tokenizer { inner, origin: origin.to_path_buf(), pieces, kinds, bos, eos, spm: None })
    }

    /// Encodes text; with `add_bos`, the BOS id is prepended.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("{}: encoding failed: {e}", self.origin.display())))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            ids.push(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes ids to text like `sentencepiece.decode`: BOS/EOS vanish, one leading space is dropped.
    /// An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_window(ids, true)
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The vocabulary entry of `id` (`▁` for spaces, `<0x0A>` for byte pieces), or `None` past the vocabulary.
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        self.pieces.get(id as usize).cloned()
    }

    /// Bytes of the longest vocabulary entry (`▁` counted as its 3 UTF-8 bytes, byte pieces as `<0xNN>`): no
    /// token stands for more input text than this, so it bounds a prompt's bytes per token.
    pub fn longest_piece_bytes(&self) -> usize {
        self.pieces.iter().map(String::len).max().unwrap_or(1)
    }

    /// The id of a vocabulary entry.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// The `tokenizers` pipeline as `tokenizer.json` text (for a SentencePiece model: the converted BPE,
    /// without added tokens).
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| Error::Tokenizer(format!("{}: {e}", self.origin.display())))
    }

    /// The text of one token on its own, leading space kept (log-prob reports): `▁the` is " the", a control
    /// id is "", a lone byte-fallback piece of a multi-byte character is U+FFFD.
    pub fn token_text(&self, id: u32) -> Result<String> {
        self.decode_window(&[id], false)
    }

    /// Whether `id` is a control piece (`<s>`, `</s>`, ...) that decodes to nothing.
    pub(crate) fn is_control(&self, id: u32) -> bool {
        matches!(self.kinds.get(id as usize), Some(TokenKind::Control))
    }

    /// Whether `id` is the unknown piece (`<unk>`).
    pub(crate) fn is_unknown(&self, id: u32) -> bool {
        matches!(self.kinds.get(id as usize), Some(TokenKind::Unknown))
    }

    /// The byte of a `<0xHH>` byte-fallback id.
    pub(crate) fn byte_value(&self, id: u32) -> Option<u8> {
        match self.kinds.get(id as usize) {
            Some(TokenKind::Byte(b)) => Some(*b),
            _ => None,
        }
    }

    /// Decodes `ids`; `at_start` says whether they begin the sequence (only then is the leading space of the
    /// first piece dropped, for SentencePiece models).
    pub(crate) fn decode_window(&self, ids: &[u32], at_start: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.pieces.len()) {
            return Err(Error::Tokenizer(format!(
                "{}: token id {bad} is outside the vocabulary of {} entries",
                self.origin.display(),
                self.pieces.len()
            )));
        }
        match &self.spm {
            Some(spm) => Ok(self.decode_spm(spm, ids, at_start && spm.add_dummy_prefix)),
            None => self
                .inner
                .decode(ids, true)
                .map_err(|e| Error::Tokenizer(format!("{}: decoding failed: {e}", self.origin.display()))),
        }
    }

    /// sentencepiece's `DecodeIds` for a BPE model with byte fallback; all ids are known to be in range.
    fn decode_spm(&self, spm: &SpmDecode, ids: &[u32], strip_first: bool) -> String {
        let mut out = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut at_bos = strip_first;
        for &id in ids {
            let kind = self.kinds[id as usize];
            if let TokenKind::Byte(b) = kind {
                bytes.push(b);
                at_bos = false;
                continue;
            }
            flush_bytes(&mut bytes, &mut out);
            match kind {
                TokenKind::Control | TokenKind::Byte(_) => {}
                TokenKind::Unknown => {
                    out.push_str(&spm.unk_surface);
                    at_bos = false;
                }
                TokenKind::Normal => {
                    let piece = self.pieces[id as usize].as_str();
                    let piece = if at_bos { piece.strip_prefix(convert::SPACE).unwrap_or(piece) } else { piece };
                    out.push_str(&piece.replace(convert::SPACE, " "));
                    at_bos = false;
                }
            }
        }
        flush_bytes(&mut bytes, &mut out);
        out
    }
}

/// Appends a run of byte-fallback bytes as text, one U+FFFD per byte that does not start a valid character.
fn flush_bytes(bytes: &mut Vec<u8>, out: &mut String) {
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                break;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.push_str(std::str::from_utf8(&rest[..good]).unwrap_or_default());
                out.push('\u{FFFD}');
                rest = &rest[good + 1..];
            }
        }
    }
    bytes.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_runs_replace_each_invalid_byte() {
        let run = |b: &[u8]| {
            let mut v = b.to_vec();
            let mut s = String::new();
            flush_bytes(&mut v, &mut s);
            s
        };
        assert_eq!(run(&[0xE4, 0xBD, 0xA0]), "你");
        assert_eq!(run(&[0x41, 0xE4]), "A\u{FFFD}");
        assert_eq!(run(&[0xE4, 0xBD, 0x41]), "\u{FFFD}\u{FFFD}A");
        assert_eq!(run(&[0xE4, 0xBD, 0xA0, 0xE4]), "你\u{FFFD}");
        assert_eq!(run(&[]), "");
    }

    #[test]
    fn byte_piece_names() {
        assert_eq!(convert::parse_byte_piece("<0x0A>"), Some(10));
        assert_eq!(convert::parse_byte_piece("<0xff>"), Some(255));
        assert_eq!(convert::parse_byte_piece("<0x+F>"), None);
        assert_eq!(convert::parse_byte_piece("<0x100>"), None);
    }
}
