//! Checks a parsed SentencePiece model and rebuilds it as a `tokenizers` BPE that encodes exactly like
//! sentencepiece (the Llama recipe of checkpoint-formats.md §7.2).
//!
//! * Model: BPE over all pieces, byte fallback, `<unk>` fused; no pre-tokenizer.
//! * Merges: every split `(left, right)` of a NORMAL piece where both halves are NORMAL pieces, ranked by the
//!   merged piece's score (descending), ties by id(left) then id(right). Only NORMAL pieces are merge results;
//!   this is decided by type, not by score, because a trained model can give a NORMAL piece the score `-0.0`
//!   (the fixture model's first merge `er` has it), which a "score is falsy" test would wrongly drop.
//! * Normalizer: `Prepend("▁")` (when add_dummy_prefix) then `Replace(" ", "▁")`. Not Metaspace.
//! * Decoder (kept on the `tokenizers` object for completeness): `Replace("▁", " ")`, `ByteFallback`, `Fuse`,
//!   `Strip(' ', 1, 0)`. The engine decodes SentencePiece models with [`super::Tokenizer::decode`] instead,
//!   which matches sentencepiece also on invalid byte runs.

use super::TokenKind;
use super::spm::{ModelProto, ModelType, PieceType};
use std::collections::HashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence};

/// The SentencePiece word-boundary symbol U+2581.
pub(crate) const SPACE: &str = "\u{2581}";

/// What [`convert`] produces: the encoder plus what decoding needs.
pub(crate) struct Converted {
    pub inner: tokenizers::Tokenizer,
    pub pieces: Vec<String>,
    pub kinds: Vec<TokenKind>,
    pub unk_id: u32,
    pub bos_id: u32,
    pub eos_id: u32,
    pub add_dummy_prefix: bool,
    pub unk_surface: String,
}

/// Validates `model` and builds the `tokenizers` pipeline; errors are messages for `Error::Tokenizer`.
pub(crate) fn convert(model: &ModelProto) -> Result<Converted, String> {
    let t = &model.trainer;
    let n = &model.normalizer;
    match t.model_type {
        ModelType::Bpe => {}
        other => return Err(format!("model type {other:?} is not supported; only BPE (as in Llama-2) is")),
    }
    if model.pieces.is_empty() {
        return Err("the model has no pieces".into());
    }
    if model.pieces.len() > (i32::MAX as usize) {
        return Err("the model has too many pieces".into());
    }
    if t.treat_whitespace_as_suffix {
        return Err("treat_whitespace_as_suffix = true is not supported".into());
    }
    if !n.escape_whitespaces {
        return Err("escape_whitespaces = false is not supported".into());
    }
    if n.charsmap_len != 0 {
        return Err(format!("normalizer `{}` with a precompiled charsmap is not supported; only identity is", n.name));
    }
    if n.remove_extra_whitespaces {
        return Err("remove_extra_whitespaces = true is not supported (Llama-2 uses false)".into());
    }
    if model.denormalizer_charsmap_len != 0 {
        return Err("a denormalizer (precompiled charsmap) is not supported".into());
    }
    if !t.byte_fallback {
        return Err("byte_fallback = false is not supported (Llama-2 uses byte fallback)".into());
    }

    let mut ids: HashMap<&str, u32> = HashMap::with_capacity(model.pieces.len());
    let mut kinds = Vec::with_capacity(model.pieces.len());
    let mut byte_seen = [false; 256];
    for (id, p) in model.pieces.iter().enumerate() {
        if p.piece.is_empty() {
            return Err(format!("piece {id} is empty"));
        }
        if p.score.is_nan() {
            return Err(format!("piece {id} `{}` has a NaN score", p.piece));
        }
        if ids.insert(&p.piece, id as u32).is_some() {
            return Err(format!("piece `{}` occurs twice (id {id})", p.piece));
        }
        let kind = match p.kind {
            PieceType::Normal => TokenKind::Normal,
            PieceType::Control => TokenKind::Control,
            PieceType::Unknown => TokenKind::Unknown,
            PieceType::Byte => {
                let b = parse_byte_piece(&p.piece)
                    .ok_or_else(|| format!("byte piece {id} is `{}`, not of the form <0xHH>", p.piece))?;
                byte_seen[b as usize] = true;
                TokenKind::Byte(b)
            }
            other => return Err(format!("piece {id} `{}` has type {other:?}, which is not supported", p.piece)),
        };
        kinds.push(kind);
    }
    if let Some(b) = byte_seen.iter().position(|&s| !s) {
        return Err(format!("byte_fallback is set but the byte piece <0x{b:02X}> is missing"));
    }
    let check_id = |name: &str, id: i32, want: TokenKind| -> Result<u32, String> {
        match usize::try_from(id).ok().and_then(|i| kinds.get(i)) {
            Some(&k) if k == want => Ok(id as u32),
            Some(k) => Err(format!("{name} = {id} is a {k:?} piece, expected {want:?}")),
            None => Err(format!("{name} = {id} is not a piece id (the model has {} pieces)", kinds.len())),
        }
    };
    let unk_id = check_id("unk_id", t.unk_id, TokenKind::Unknown)?;
    let bos_id = check_id("bos_id", t.bos_id, TokenKind::Control)?;
    let eos_id = check_id("eos_id", t.eos_id, TokenKind::Control)?;

    let merges = merges(model, &ids);
    let vocab: Vocab = model.pieces.iter().enumerate().map(|(i, p)| (p.piece.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(model.pieces[unk_id as usize].piece.clone())
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| format!("building the BPE model failed: {e}"))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let replace = Replace::new(" ", SPACE).map_err(|e| e.to_string())?;
    let normalizer: Vec<NormalizerWrapper> = if n.add_dummy_prefix {
        vec![Prepend::new(SPACE.to_string()).into(), replace.into()]
    } else {
        vec![replace.into()]
    };
    inner.with_normalizer(Some(NormalizerSequence::new(normalizer)));
    let mut decoder = vec![
        Replace::new(SPACE, " ").map_err(|e| e.to_string())?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if n.add_dummy_prefix {
        decoder.push(Strip::new(' ', 1, 0).into());
    }
    inner.with_decoder(Some(DecoderSequence::new(decoder)));

    Ok(Converted {
        inner,
        pieces: model.pieces.iter().map(|p| p.piece.clone()).collect(),
        kinds,
        unk_id,
        bos_id,
        eos_id,
        add_dummy_prefix: n.add_dummy_prefix,
        unk_surface: t.unk_surface.clone(),
    })
}

/// All `(left, right)` splits of NORMAL pieces into two NORMAL pieces, in sentencepiece's priority order.
fn merges(model: &ModelProto, ids: &HashMap<&str, u32>) -> Vec<(String, String)> {
    let normal = |s: &str| ids.get(s).copied().filter(|&i| model.pieces[i as usize].kind == PieceType::Normal);
    // (score, left id, right id, split point, piece id); `+ 0.0` folds -0.0 into 0.0 so they tie.
    let mut found: Vec<(f32, u32, u32, usize, usize)> = Vec::new();
    for (id, p) in model.pieces.iter().enumerate() {
        if p.kind != PieceType::Normal {
            continue;
        }
        for (at, _) in p.piece.char_indices().skip(1) {
            let (l, r) = p.piece.split_at(at);
            if let (Some(li), Some(ri)) = (normal(l), normal(r)) {
                found.push((p.score + 0.0, li, ri, at, id));
            }
        }
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    found
        .into_iter()
        .map(|(_, _, _, at, id)| {
            let (l, r) = model.pieces[id].piece.split_at(at);
            (l.to_string(), r.to_string())
        })
        .collect()
}

/// `<0xHH>` (upper- or lower-case hex) to its byte.
pub(crate) fn parse_byte_piece(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
