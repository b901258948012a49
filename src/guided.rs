//! Structured output: a per-sequence constraint, compiled by llguidance from a JSON schema, a regex, a Lark grammar
//! or a choice among strings, that gives the tokens allowed next (a bitmask over the vocabulary) and advances on
//! the sampled token. The token trie is built once per tokenizer ([`GuideCompiler`]); a [`Constraint`] is one
//! sequence's parser state.
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use std::sync::Arc;
use toktrie::{ApproximateTokEnv, TokRxInfo, TokTrie, TokenizerEnv};

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Guide {
    /// A JSON Schema (draft 2020-12 subset: llguidance's).
    JsonSchema(serde_json::Value),
    /// Any JSON object (OpenAI's `json_object`, TensorRT-LLM's `json`).
    JsonObject,
    /// A regular expression (Rust `regex` syntax) the whole output matches.
    Regex(String),
    /// A grammar in llguidance's Lark syntax.
    Lark(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
}

/// Longest guide text accepted (schema, regex or grammar), bytes.
pub const MAX_GUIDE_BYTES: usize = 64 << 10;

impl Guide {
    /// A guide from TensorRT-LLM's `guided_decoding_guide_type` and `guided_decoding_guide` (plus this backend's
    /// `lark` and `choice`, a JSON list of strings); the error names what is wrong.
    pub fn parse(kind: &str, text: &str) -> Result<Guide> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if text.len() > MAX_GUIDE_BYTES {
            return bad(format!("the guide is {} bytes; at most {MAX_GUIDE_BYTES} are accepted", text.len()));
        }
        match kind {
            "json" if text.trim().is_empty() => Ok(Guide::JsonObject),
            "json" | "json_schema" => match serde_json::from_str(text) {
                Ok(v) => Ok(Guide::JsonSchema(v)),
                Err(e) => bad(format!("the JSON schema is not valid JSON: {e}")),
            },
            "json_object" => Ok(Guide::JsonObject),
            "regex" => Ok(Guide::Regex(text.to_string())),
            "lark" | "ebnf_grammar" | "grammar" => Ok(Guide::Lark(text.to_string())),
            "choice" => match serde_json::from_str::<Vec<String>>(text) {
                Ok(v) if !v.is_empty() => Ok(Guide::Choice(v)),
                _ => bad("a choice guide is a non-empty JSON list of strings".into()),
            },
            other => bad(format!(
                "unknown guide type `{other}` (json, json_schema, json_object, regex, ebnf_grammar, lark, choice)"
            )),
        }
    }

    fn grammar(&self) -> TopLevelGrammar {
        match self {
            Guide::JsonSchema(v) => TopLevelGrammar::from_json_schema(compact(v.clone())),
            Guide::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"}))),
            Guide::Regex(r) => TopLevelGrammar::from_regex(r),
            Guide::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            Guide::Choice(v) => {
                let alts: Vec<String> = v.iter().map(|s| regex_syntax::escape(s)).collect();
                TopLevelGrammar::from_regex(&format!("(?:{})", alts.join("|")))
            }
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Guide::JsonSchema(_) => "JSON schema",
            Guide::JsonObject => "JSON object guide",
            Guide::Regex(_) => "regex",
            Guide::Lark(_) => "grammar",
            Guide::Choice(_) => "choice",
        }
    }
}

/// JSON is generated without whitespace between tokens (`{"a":1,"b":[2,3]}`) unless the schema says
/// otherwise in llguidance's `x-guidance` options: free whitespace lets a model pad an answer without end.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
    }
    schema
}

/// Compiles guides for one tokenizer: its token trie (each id's bytes) and llguidance's shared tables.
pub struct GuideCompiler {
    factory: ParserFactory,
    vocab: usize,
}

impl std::fmt::Debug for GuideCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuideCompiler").field("vocab", &self.vocab).finish()
    }
}

impl GuideCompiler {
    /// The trie of `tok`'s vocabulary: a piece's text (`▁` as a space), a byte-fallback piece's byte, control and
    /// unknown pieces as special tokens (never allowed by a grammar). EOS ends an accepted output.
    pub fn new(tok: &Tokenizer) -> Result<GuideCompiler> {
        let vocab = tok.vocab_size();
        let words: Vec<Vec<u8>> = (0..vocab as u32).map(|id| token_bytes(tok, id)).collect();
        let mut info = TokRxInfo::new(vocab as u32, tok.eos_id());
        info.tok_bos = Some(tok.bos_id());
        let trie = TokTrie::from(&info, &words);
        let env: Arc<dyn TokenizerEnv + Sync> = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| Error::Internal(format!("llguidance: {e}")))?;
        factory.quiet();
        Ok(GuideCompiler { factory, vocab })
    }

    /// Ids the masks cover (the tokenizer's vocabulary).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// One sequence's constraint; a guide llguidance cannot compile is refused naming the problem.
    pub fn compile(&self, guide: &Guide) -> Result<Constraint> {
        let parser = self.factory.create_parser(guide.grammar());
        let m = Matcher::new(parser);
        if let Some(e) = m.get_error() {
            return Err(Error::InvalidRequest(format!("the {} cannot be used: {}", guide.what(), short(&e))));
        }
        Ok(Constraint { m, tokens: 0 })
    }
}

/// The first line of an llguidance error, bounded (a schema error can quote the whole schema).
fn short(e: &str) -> String {
    let line = e.lines().next().unwrap_or(e).trim();
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

/// A token's bytes as the trie sees them.
fn token_bytes(tok: &Tokenizer, id: u32) -> Vec<u8> {
    if let Some(b) = tok.byte_value(id) {
        return vec![b];
    }
    let piece = tok.id_to_piece(id).unwrap_or_default();
    if tok.is_control(id) || tok.is_unknown(id) {
        let mut v = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        v.extend_from_slice(piece.as_bytes());
        return v;
    }
    piece.replace('\u{2581}', " ").into_bytes()
}

/// One sequence's position in its guide.
pub struct Constraint {
    m: Matcher,
    tokens: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("tokens", &self.tokens).finish()
    }
}

impl Constraint {
    /// The tokens allowed next as a bitmask (bit `id % 32` of word `id / 32`); EOS is allowed where the output
    /// may end. A dead end (nothing allowed, or a parser error) is an error that says after how many tokens.
    pub fn allowed(&mut self) -> Result<Vec<u32>> {
        let mask = self.m.compute_mask_or_eos().map_err(|e| self.dead_end(&e.to_string()))?;
        if mask.is_zero() {
            return Err(self.dead_end("no token can continue the output"));
        }
        Ok(mask.as_slice().to_vec())
    }

    /// Advances past the sampled token.
    pub fn advance(&mut self, token: u32) -> Result<()> {
        self.m.consume_token(token).map_err(|e| self.dead_end(&e.to_string()))?;
        self.tokens += 1;
        Ok(())
    }

    /// The output is complete: no token can follow.
    pub fn is_finished(&self) -> bool {
        self.m.is_stopped() && !self.m.is_error()
    }

    fn dead_end(&self, why: &str) -> Error {
        Error::InvalidRequest(format!(
            "guided decoding reached a dead end after {} tokens: {}",
            self.tokens,
            short(why)
        ))
    }
}

#[cfg(test)]
#[path = "guided_tests.rs"]
mod tests;
