//! The request interfaces on one model: NeMo 23.10 `NemoQuery` names (the seed: its dtypes win on clashes),
//! NeMo's later optional names, and the TensorRT-LLM-style text names used by genai-perf, `/generate` and
//! Triton's OpenAI frontend. Turns a request's tensors into a `JobSpec`; every refusal names the input.
use super::tensors::InputTensor;
pub use crate::engine::serve::PromptSpec;
use crate::sampling::SamplingParams;
use crate::{Error, Result};

/// Every output the backend can produce, in declaration order (`outputs` first: `NemoQuery` reads the first).
pub const OUTPUTS: [&str; 21] = [
    "outputs",
    "text_output",
    "finish_reason",
    "num_input_tokens",
    "num_output_tokens",
    "output_log_probs",
    "cum_log_probs",
    "output_tokens",
    "batch_index",
    "sequence_index",
    "context_logits",
    "generation_logits",
    "output_top_log_probs",
    "output_top_token_ids",
    "output_top_tokens",
    "prompt_log_probs",
    "prompt_token_ids",
    "prompt_tokens",
    "prompt_top_log_probs",
    "prompt_top_token_ids",
    "prompt_top_tokens",
];
/// Outputs produced only when a client names them: `output_tokens` costs work on every token; TensorRT-LLM's
/// `batch_index` (the prompt's row in the request) and `sequence_index` (0: one sequence per prompt) are for the
/// clients that read them.
pub const ON_REQUEST: [&str; 6] =
    ["output_tokens", "batch_index", "sequence_index", "output_top_tokens", "prompt_tokens", "prompt_top_tokens"];
/// Outputs produced only when the request asks for top log-probs (`top_logprobs` > 0) or the prompt's
/// log-probs (`return_prompt_log_probs`); the texts among them only when named as well.
pub const TOP_OUTPUTS: [&str; 3] = ["output_top_log_probs", "output_top_token_ids", "output_top_tokens"];
pub const PROMPT_OUTPUTS: [&str; 3] = ["prompt_log_probs", "prompt_token_ids", "prompt_tokens"];
pub const PROMPT_TOP_OUTPUTS: [&str; 3] = ["prompt_top_log_probs", "prompt_top_token_ids", "prompt_top_tokens"];
/// Outputs produced only when the request's flag asks for them (TensorRT-LLM's name first, then NeMo 2's), if
/// Triton asks for them too (or for no output in particular).
pub const ON_FLAG: [(&str, [&str; 2]); 2] = [
    ("context_logits", ["return_context_logits", "output_context_logits"]),
    ("generation_logits", ["return_generation_logits", "output_generation_logits"]),
];

/// (input name, Triton config dtype, dims) for the auto-completed config. Scalars are `[1]` per batch row.
pub const INPUTS: [(&str, &str, &[i64]); 66] = [
    ("prompts", "TYPE_STRING", &[1]),
    ("max_output_token", "TYPE_INT64", &[1]),
    ("top_k", "TYPE_INT64", &[1]),
    ("top_p", "TYPE_FP32", &[1]),
    ("temperature", "TYPE_FP32", &[1]),
    ("max_output_len", "TYPE_INT64", &[1]),
    ("min_output_len", "TYPE_INT64", &[1]),
    ("random_seed", "TYPE_INT64", &[1]),
    ("stop_words_list", "TYPE_STRING", &[-1]),
    ("bad_words_list", "TYPE_STRING", &[-1]),
    ("repetition_penalty", "TYPE_FP32", &[1]),
    ("use_greedy", "TYPE_BOOL", &[1]),
    ("add_BOS", "TYPE_BOOL", &[1]),
    ("end_strings", "TYPE_STRING", &[-1]),
    ("compute_logprob", "TYPE_BOOL", &[1]),
    ("lora_uids", "TYPE_STRING", &[-1]),
    ("task_id", "TYPE_STRING", &[-1]),
    ("text_input", "TYPE_STRING", &[1]),
    ("max_tokens", "TYPE_INT32", &[1]),
    ("stream", "TYPE_BOOL", &[1]),
    ("stop_words", "TYPE_STRING", &[-1]),
    ("bad_words", "TYPE_STRING", &[-1]),
    ("exclude_input_in_output", "TYPE_BOOL", &[1]),
    ("end_id", "TYPE_INT32", &[1]),
    ("presence_penalty", "TYPE_FP32", &[1]),
    ("frequency_penalty", "TYPE_FP32", &[1]),
    ("seed", "TYPE_UINT64", &[1]),
    ("min_tokens", "TYPE_INT32", &[1]),
    ("min_length", "TYPE_INT32", &[1]),
    ("return_num_input_tokens", "TYPE_BOOL", &[1]),
    ("return_num_output_tokens", "TYPE_BOOL", &[1]),
    ("return_log_probs", "TYPE_BOOL", &[1]),
    ("return_finish_reason", "TYPE_BOOL", &[1]),
    ("ignore_eos", "TYPE_BOOL", &[1]),
    ("beam_width", "TYPE_INT32", &[1]),
    ("num_return_sequences", "TYPE_INT32", &[1]),
    // Later additions go last: the fuzz harness (fuzz/src/lib.rs) names inputs by their index here.
    ("no_repeat_ngram_size", "TYPE_FP32", &[1]),
    ("all_probs", "TYPE_BOOL", &[1]),
    ("output_context_logits", "TYPE_BOOL", &[1]),
    ("output_generation_logits", "TYPE_BOOL", &[1]),
    ("messages", "TYPE_STRING", &[1]),
    // TensorRT-LLM's ensemble / tensorrt_llm_bls inputs that the names above do not cover (its docs/model_config.md):
    // beam-search knobs (neutral at beam_width 1, the only width served), padding, logits and perf flags, and the
    // features this backend lacks (refused by name when used: see `refuse_unsupported`).
    ("length_penalty", "TYPE_FP32", &[1]),
    ("early_stopping", "TYPE_BOOL", &[1]),
    ("beam_search_diversity_rate", "TYPE_FP32", &[1]),
    ("pad_id", "TYPE_INT32", &[1]),
    ("return_context_logits", "TYPE_BOOL", &[1]),
    ("return_generation_logits", "TYPE_BOOL", &[1]),
    ("return_perf_metrics", "TYPE_BOOL", &[1]),
    ("return_kv_cache_reuse_stats", "TYPE_BOOL", &[1]),
    ("embedding_bias_words", "TYPE_STRING", &[-1]),
    ("embedding_bias_weights", "TYPE_FP32", &[-1]),
    ("prompt_embedding_table", "TYPE_FP16", &[-1, -1]),
    ("prompt_vocab_size", "TYPE_INT32", &[1]),
    ("prompt_table_extra_ids", "TYPE_UINT64", &[-1]),
    ("lora_task_id", "TYPE_UINT64", &[1]),
    ("lora_weights", "TYPE_FP16", &[-1, -1]),
    ("lora_config", "TYPE_INT32", &[-1, 3]),
    ("num_draft_tokens", "TYPE_INT32", &[1]),
    ("use_draft_logits", "TYPE_BOOL", &[1]),
    ("guided_decoding_guide_type", "TYPE_STRING", &[1]),
    ("guided_decoding_guide", "TYPE_STRING", &[1]),
    ("decoder_text_input", "TYPE_STRING", &[1]),
    // OpenAI's / vLLM's `logit_bias` by token id: the ids and their biases in [-100, 100], pairwise.
    ("logit_bias_ids", "TYPE_INT32", &[-1]),
    ("logit_bias_values", "TYPE_FP32", &[-1]),
    // OpenAI's `top_logprobs` (0..=20): the most likely tokens at each output position (and prompt position with
    // `return_prompt_log_probs`), as the `*_top_*` outputs.
    ("top_logprobs", "TYPE_INT32", &[1]),
    ("return_prompt_log_probs", "TYPE_BOOL", &[1]),
];

/// Which outputs a response carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputSet {
    pub names: Vec<&'static str>,
}
impl OutputSet {
    pub fn has(&self, n: &str) -> bool {
        self.names.contains(&n)
    }
}

/// A parsed request: `[N,1]` prompts plus how to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub prompts: Vec<PromptSpec>,
    pub stream: bool,
    pub exclude_input: bool,
    pub outputs: OutputSet,
}

/// Most stop strings (or banned words) one prompt may carry, counted after NeMo's comma split; the model's
/// default stop strings come on top. vLLM and TGI take lists of this size; more is refused (INVALID_ARG) so
/// that the per-token stop check stays cheap.
pub const MAX_STOP_STRINGS: usize = 32;
/// Longest stop string (or banned word) in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Bytes per prompt token assumed by the cheap pre-tokenizer length check: at least this, or the tokenizer's
/// longest piece if that is longer, times `PROMPT_BYTES_SLACK` (normalisation may shrink text).
pub const MIN_BYTES_PER_TOKEN: usize = 16;
pub const PROMPT_BYTES_SLACK: usize = 2;

/// The byte length beyond which a prompt cannot fit `max_tokens` tokens: `max_tokens` × max(longest piece, 16)
/// × 2. Checked before tokenizing, so a 100 MB prompt is refused without being tokenized.
pub fn max_prompt_bytes(max_tokens: usize, longest_piece_bytes: usize) -> usize {
    max_tokens.saturating_mul(longest_piece_bytes.max(MIN_BYTES_PER_TOKEN)).saturating_mul(PROMPT_BYTES_SLACK)
}

/// Model-level settings the parser needs.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Prompts longer than this many bytes are refused before tokenizing (see `max_prompt_bytes`).
    pub max_prompt_bytes: usize,
    /// Prompt tokens allowed (for the message only; the engine thread checks the tokenized length).
    pub max_input_tokens: usize,
    pub max_output_len: usize,
    pub default_max_tokens: usize,
    pub decoupled: bool,
    pub exclude_input_default: bool,
}

/// Refuses the request (INVALID_ARG) with `m`, which names the input.
fn refuse<T>(m: String) -> Result<T> {
    Err(Error::InvalidRequest(m))
}

struct Inputs<'a> {
    all: &'a [InputTensor],
    n: usize,
}

impl<'a> Inputs<'a> {
    fn get(&self, name: &str) -> Option<&'a InputTensor> {
        self.all.iter().find(|t| t.name == name)
    }
    /// First present of `names`, with the name used.
    fn first(&self, names: &[&'static str]) -> Option<(&'static str, &'a InputTensor)> {
        names.iter().find_map(|n| self.get(n).map(|t| (*n, t)))
    }
    fn check_rows(&self, t: &InputTensor, per_row: Option<usize>) -> Result<usize> {
        let (r, k) = t.rows()?;
        if r != self.n && r != 1 {
            return refuse(format!("input `{}` has {r} rows, the prompts have {}", t.name, self.n));
        }
        if let Some(want) = per_row
            && k != want
        {
            return refuse(format!("input `{}` must have shape [batch, {want}], got {:?}", t.name, t.shape));
        }
        Ok(r)
    }
    /// One number per prompt (broadcast from one row).
    fn nums(&self, names: &[&'static str]) -> Result<Option<(&'static str, Vec<f64>)>> {
        let Some((name, t)) = self.first(names) else { return Ok(None) };
        let r = self.check_rows(t, Some(1))?;
        let v = t.as_f64s()?;
        Ok(Some((name, (0..self.n).map(|i| v[if r == 1 { 0 } else { i }]).collect())))
    }
    fn ints(&self, names: &[&'static str]) -> Result<Option<(&'static str, Vec<i128>)>> {
        let Some((name, t)) = self.first(names) else { return Ok(None) };
        let r = self.check_rows(t, Some(1))?;
        let v = t.as_ints()?;
        Ok(Some((name, (0..self.n).map(|i| v[if r == 1 { 0 } else { i }]).collect())))
    }
    fn flag(&self, name: &'static str) -> Result<Option<bool>> {
        Ok(self.nums(&[name])?.map(|(_, v)| v.iter().any(|&x| x != 0.0)))
    }
    /// TensorRT-LLM's `embedding_bias_words` / `embedding_bias_weights`: per prompt, (word, weight) for each
    /// non-empty word and the weight at its position (empty words and their weights are dropped).
    fn bias_words(&self) -> Result<Vec<Vec<(String, f32)>>> {
        let (wn, vn) = ("embedding_bias_words", "embedding_bias_weights");
        let mut out = vec![Vec::new(); self.n];
        let Some(words) = self.get(wn) else {
            if self.get(vn).is_some_and(|t| t.numel().unwrap_or(1) > 0) {
                return refuse(format!("input `{vn}` needs `{wn}`: one weight per word"));
            }
            return Ok(out);
        };
        let (wr, wk) = (self.check_rows(words, None)?, words.rows()?.1);
        let w = words.as_bytes()?;
        let (vr, vk, v) = match self.get(vn) {
            Some(t) => (self.check_rows(t, None)?, t.rows()?.1, t.as_f64s()?),
            None => (1, 0, Vec::new()),
        };
        for (i, pairs) in out.iter_mut().enumerate() {
            let (wrow, vrow) = (if wr == 1 { 0 } else { i }, if vr == 1 { 0 } else { i });
            for j in 0..wk {
                let word = String::from_utf8(w[wrow * wk + j].clone())
                    .map_err(|_| Error::InvalidRequest(format!("input `{wn}` is not valid UTF-8")))?;
                if word.is_empty() {
                    continue;
                }
                if j >= vk {
                    return refuse(format!("input `{vn}` must hold one weight per word of `{wn}` (prompt {i})"));
                }
                let b = v[vrow * vk + j];
                if !b.is_finite() {
                    return refuse(format!("input `{vn}` must be finite, got {b}"));
                }
                if word.len() > MAX_STOP_BYTES || pairs.len() == MAX_STOP_STRINGS {
                    return refuse(format!(
                        "input `{wn}`: at most {MAX_STOP_STRINGS} words of at most {MAX_STOP_BYTES} bytes per prompt"
                    ));
                }
                pairs.push((word, b as f32));
            }
        }
        Ok(out)
    }
    /// `logit_bias_ids` (INT32 `[N, k]`) with `logit_bias_values` (FP32 `[N, k]`): per prompt, (id, bias) pairs,
    /// each bias finite and in [-100, 100]; ids past the vocabulary are refused by the engine.
    fn id_bias(&self) -> Result<Vec<Vec<(u32, f32)>>> {
        let (ids_n, vals_n) = ("logit_bias_ids", "logit_bias_values");
        let mut out = vec![Vec::new(); self.n];
        let (ids, vals) = match (self.get(ids_n), self.get(vals_n)) {
            (None, None) => return Ok(out),
            (Some(i), Some(v)) => (i, v),
            _ => return refuse(format!("inputs `{ids_n}` and `{vals_n}` go together")),
        };
        let (ir, vr) = (self.check_rows(ids, None)?, self.check_rows(vals, None)?);
        let (ik, vk) = (ids.rows()?.1, vals.rows()?.1);
        if ik != vk {
            return refuse(format!("`{ids_n}` has {ik} ids per prompt but `{vals_n}` {vk} values"));
        }
        if ik > 300 {
            return refuse(format!("input `{ids_n}`: at most 300 ids per prompt, got {ik}"));
        }
        let (iv, vv) = (ids.as_ints()?, vals.as_f64s()?);
        for (p, pairs) in out.iter_mut().enumerate() {
            let (a, b) = (if ir == 1 { 0 } else { p }, if vr == 1 { 0 } else { p });
            for j in 0..ik {
                let (id, bias) = (iv[a * ik + j], vv[b * vk + j]);
                if id < 0 || id > u32::MAX as i128 {
                    return refuse(format!("input `{ids_n}`: {id} is not a token id"));
                }
                if !(bias.is_finite() && (-100.0..=100.0).contains(&bias)) {
                    return refuse(format!("input `{vals_n}`: biases are in [-100, 100], got {bias}"));
                }
                pairs.push((id as u32, bias as f32));
            }
        }
        Ok(out)
    }

    /// A list of strings per prompt (empty strings dropped).
    fn strings(&self, name: &str) -> Result<Vec<Vec<String>>> {
        let Some(t) = self.get(name) else { return Ok(vec![Vec::new(); self.n]) };
        let r = self.check_rows(t, None)?;
        let (_, k) = t.rows()?;
        let els = t.as_bytes()?;
        let mut out = Vec::with_capacity(self.n);
        for i in 0..self.n {
            let row = if r == 1 { 0 } else { i };
            let mut v = Vec::new();
            for e in &els[row * k..(row + 1) * k] {
                let s = String::from_utf8(e.clone())
                    .map_err(|_| Error::InvalidRequest(format!("input `{name}` is not valid UTF-8")))?;
                if !s.is_empty() {
                    v.push(s);
                }
            }
            out.push(v);
        }
        Ok(out)
    }
}

/// Parses one request. `requested` are the output names Triton asks for. The steps run in this order, so the
/// first problem found is the one reported.
pub fn parse_job(all: &[InputTensor], requested: &[String], lim: &Limits) -> Result<JobSpec> {
    let (pname, texts) = prompt_texts(all, lim)?;
    let inp = Inputs { all, n: texts.len() };
    refuse_unsupported(&inp)?;
    let per_prompt = PerPrompt::read(&inp)?;
    let mut prompts = Vec::with_capacity(texts.len());
    for (i, text) in texts.into_iter().enumerate() {
        let (params, bad_words) = per_prompt.sampling(i, lim)?;
        let add_bos = per_prompt.add_bos.as_ref().map(|(_, v)| v[i] != 0.0);
        let bias_words = per_prompt.bias[i].clone();
        prompts.push(PromptSpec { text, params, bad_words, bias_words, add_bos, chat: pname == "messages" });
    }
    let stream = match inp.flag("stream")? {
        Some(true) if !lim.decoupled => {
            return refuse("input `stream` is true but this model is not decoupled; use the `_stream` model".into());
        }
        Some(s) => s,
        None => lim.decoupled,
    };
    let exclude_input = inp.flag("exclude_input_in_output")?.unwrap_or(lim.exclude_input_default);
    let outputs = output_set(&inp, requested)?;
    Ok(JobSpec { prompts, stream, exclude_input, outputs })
}

/// The prompt input (`prompts`, `text_input` or `messages`: exactly one) and its texts: `[batch, 1]`, valid
/// UTF-8, not empty, at most `max_prompt_bytes` each.
fn prompt_texts(all: &[InputTensor], lim: &Limits) -> Result<(&'static str, Vec<String>)> {
    let prompt_names = ["prompts", "text_input", "messages"];
    let present: Vec<_> = prompt_names.iter().filter(|n| all.iter().any(|t| &t.name == *n)).collect();
    let pname = match present.as_slice() {
        [] => return refuse("missing required input `prompts` (or `text_input`, or `messages`)".into()),
        [one] => **one,
        _ => return refuse("send one of `prompts`, `text_input` and `messages`, not several".into()),
    };
    let Some(pt) = all.iter().find(|t| t.name == pname) else {
        return refuse(format!("missing required input `{pname}`"));
    };
    let (n, k) = pt.rows()?;
    if n == 0 || k != 1 {
        return refuse(format!("input `{pname}` must have shape [batch, 1] with batch >= 1, got {:?}", pt.shape));
    }
    // The element count is checked against the buffer before anything is sized by the (untrusted) shape.
    let elements = pt.as_bytes()?;
    let mut texts = Vec::with_capacity(elements.len());
    for (i, raw) in elements.into_iter().enumerate() {
        let s = String::from_utf8(raw)
            .map_err(|_| Error::InvalidRequest(format!("input `{pname}` element {i} is not valid UTF-8")))?;
        if s.is_empty() {
            return refuse(format!("input `{pname}` element {i} is an empty prompt"));
        }
        if s.len() > lim.max_prompt_bytes {
            return refuse(format!(
                "input `{pname}` element {i} is {} bytes; this model's prompts are at most {} bytes \
                 (max_input_len tokens at most {} bytes each)",
                s.len(),
                lim.max_prompt_bytes,
                lim.max_prompt_bytes / lim.max_input_tokens.max(1)
            ));
        }
        texts.push(s);
    }
    Ok((pname, texts))
}

/// Refuses what the backend does not do, naming the input: LoRA / p-tuning tables, NeMo's `all_probs`, beams and several
/// sequences, TensorRT-LLM's embedding bias, draft tokens, guided decoding, perf metrics and encoder input. Their
/// neutral values pass (empty, false, 0), and so do the beam-search knobs, which act on beams only.
fn refuse_unsupported(inp: &Inputs) -> Result<()> {
    for unsupported in ["lora_uids", "task_id"] {
        if inp.strings(unsupported)?.iter().any(|v| !v.is_empty()) {
            return refuse(format!(
                "input `{unsupported}` is not supported by this backend (no LoRA / p-tuning tables); \
                 send it empty or omit it"
            ));
        }
    }
    // NeMo 2.x's TensorRT-LLM client always sends the two logits flags (false unless asked for); TensorRT-LLM's
    // clients send theirs, and the perf flags, the same way.
    if inp.flag("all_probs")? == Some(true) {
        return refuse(
            "input `all_probs` = true is not supported: ask for `generation_logits` with `return_generation_logits` \
             (send false or omit it)"
                .into(),
        );
    }
    for name in ["return_perf_metrics", "return_kv_cache_reuse_stats", "use_draft_logits"] {
        if inp.flag(name)? == Some(true) {
            let what = if name == "use_draft_logits" { "speculative decoding" } else { "per-request perf metrics" };
            return refuse(format!("input `{name}` = true is not supported: this backend has no {what}"));
        }
    }
    for (name, limit) in [("beam_width", 1), ("num_return_sequences", 1)] {
        if let Some((_, v)) = inp.ints(&[name])?
            && v.iter().any(|&x| x > limit)
        {
            return refuse(format!("input `{name}` > 1 is not supported"));
        }
    }
    if let Some((_, v)) = inp.ints(&["num_draft_tokens"])?
        && v.iter().any(|&x| x != 0)
    {
        return refuse(
            "input `num_draft_tokens` other than 0 is not supported: this backend has no draft model".into(),
        );
    }
    // Tensors whose mere content asks for a missing feature (any dtype, so they are never parsed).
    for (name, what) in [
        ("prompt_embedding_table", "p-tuning prompt tables"),
        ("prompt_table_extra_ids", "p-tuning prompt tables"),
        ("lora_task_id", "LoRA adapters"),
        ("lora_weights", "LoRA adapters"),
        ("lora_config", "LoRA adapters"),
    ] {
        if inp.get(name).is_some_and(|t| t.numel().unwrap_or(1) > 0) {
            return refuse(format!("input `{name}` is not supported: this backend has no {what}; omit it"));
        }
    }
    if inp.get("prompt_vocab_size").is_some_and(|t| t.as_ints().is_ok_and(|v| v.iter().any(|&x| x != 0))) {
        return refuse("input `prompt_vocab_size` is not supported: this backend has no p-tuning prompt tables".into());
    }
    let non_empty = |name| -> Result<bool> { Ok(inp.strings(name)?.iter().any(|v| !v.is_empty())) };
    if non_empty("decoder_text_input")? {
        return refuse("input `decoder_text_input` is not supported: Llama has no encoder-decoder input".into());
    }
    // Beam-search knobs: a finite value is accepted (beam_width is 1 here, and TensorRT-LLM applies them to beams
    // only); pad_id is accepted as it is (outputs are never padded).
    for name in ["length_penalty", "beam_search_diversity_rate"] {
        if let Some((_, v)) = inp.nums(&[name])?
            && v.iter().any(|x| !x.is_finite())
        {
            return refuse(format!("input `{name}` must be a finite number"));
        }
    }
    inp.flag("early_stopping")?;
    inp.ints(&["pad_id"])?;
    Ok(())
}

/// A number input: the name the client used and one value per prompt.
type PerRow<T> = Option<(&'static str, Vec<T>)>;

/// The per-prompt inputs of a request, read (and shape-checked) once, in this order.
struct PerPrompt {
    max_tokens: PerRow<i128>,
    min_tokens: PerRow<i128>,
    top_k: PerRow<i128>,
    top_p: PerRow<f64>,
    temperature: PerRow<f64>,
    seed: PerRow<i128>,
    rep: PerRow<f64>,
    pres: PerRow<f64>,
    freq: PerRow<f64>,
    ngram: PerRow<f64>,
    end_id: PerRow<i128>,
    greedy: PerRow<f64>,
    ignore_eos: PerRow<f64>,
    add_bos: PerRow<f64>,
    stops_nemo: Vec<Vec<String>>,
    stops_trt: Vec<Vec<String>>,
    stops_end: Vec<Vec<String>>,
    bads: [Vec<Vec<String>>; 2],
    bias: Vec<Vec<(String, f32)>>,
    /// `logit_bias_ids` / `logit_bias_values`: per prompt, (id, bias) pairs.
    id_bias: Vec<Vec<(u32, f32)>>,
    /// TensorRT-LLM's guided decoding: per prompt, the guide type and the guide (empty: none).
    guide_type: Vec<Vec<String>>,
    guide: Vec<Vec<String>>,
    /// Per logits kind (`ON_FLAG` order): the first of its flags present.
    logits: [PerRow<f64>; 2],
    top_logprobs: PerRow<i128>,
    prompt_logprobs: PerRow<f64>,
}

impl PerPrompt {
    fn read(inp: &Inputs) -> Result<PerPrompt> {
        Ok(PerPrompt {
            max_tokens: inp.ints(&["max_tokens", "max_output_len", "max_output_token"])?,
            min_tokens: inp.ints(&["min_tokens", "min_output_len", "min_length"])?,
            top_k: inp.ints(&["top_k"])?,
            top_p: inp.nums(&["top_p"])?,
            temperature: inp.nums(&["temperature"])?,
            seed: inp.ints(&["seed", "random_seed"])?,
            rep: inp.nums(&["repetition_penalty"])?,
            pres: inp.nums(&["presence_penalty"])?,
            freq: inp.nums(&["frequency_penalty"])?,
            ngram: inp.nums(&["no_repeat_ngram_size"])?,
            end_id: inp.ints(&["end_id"])?,
            greedy: inp.nums(&["use_greedy"])?,
            ignore_eos: inp.nums(&["ignore_eos"])?,
            add_bos: inp.nums(&["add_BOS"])?,
            stops_nemo: inp.strings("stop_words_list")?,
            stops_trt: inp.strings("stop_words")?,
            stops_end: inp.strings("end_strings")?,
            bads: [inp.strings("bad_words_list")?, inp.strings("bad_words")?],
            bias: inp.bias_words()?,
            id_bias: inp.id_bias()?,
            guide_type: inp.strings("guided_decoding_guide_type")?,
            guide: inp.strings("guided_decoding_guide")?,
            logits: [inp.nums(&ON_FLAG[0].1)?, inp.nums(&ON_FLAG[1].1)?],
            top_logprobs: inp.ints(&["top_logprobs"])?,
            prompt_logprobs: inp.nums(&["return_prompt_log_probs"])?,
        })
    }

    /// Prompt `i`'s sampling values, each checked, and its bad words.
    fn sampling(&self, i: usize, lim: &Limits) -> Result<(SamplingParams, Vec<String>)> {
        let mut p = self.lengths(i, lim)?;
        self.sampler_values(i, &mut p)?;
        if let Some((_, v)) = &self.end_id
            && v[i] >= 0
            && v[i] <= u32::MAX as i128
        {
            p.stop_token_ids.push(v[i] as u32);
        }
        if self.greedy.as_ref().is_some_and(|(_, v)| v[i] != 0.0) {
            p.top_k = 1;
            p.temperature = 0.0;
        }
        p.ignore_eos = self.ignore_eos.as_ref().is_some_and(|(_, v)| v[i] != 0.0);
        p.guide = self.guide(i)?;
        p.logit_bias.extend_from_slice(&self.id_bias[i]);
        let flag = |k: usize| self.logits[k].as_ref().is_some_and(|(_, v)| v[i] != 0.0);
        p.return_logits = crate::sampling::ReturnLogits { context: flag(0), generation: flag(1) };
        if let Some((name, v)) = &self.top_logprobs {
            let max = crate::sampling::MAX_TOP_LOGPROBS;
            if !(0..=max as i128).contains(&v[i]) {
                return refuse(format!("input `{name}` must be in [0, {max}], got {}", v[i]));
            }
            p.top_logprobs = v[i] as usize;
        }
        p.prompt_logprobs = self.prompt_logprobs.as_ref().is_some_and(|(_, v)| v[i] != 0.0);
        let bad_words = self.stops_and_bad_words(i, &mut p)?;
        Ok((p, bad_words))
    }

    /// Prompt `i`'s guide: `guided_decoding_guide_type` (json, json_schema, json_object, regex, ebnf_grammar / lark,
    /// choice) with `guided_decoding_guide` (the schema, regex, grammar or JSON list; empty for `json`).
    fn guide(&self, i: usize) -> Result<Option<crate::guided::Guide>> {
        let one = |v: &Vec<String>, name: &str| -> Result<Option<String>> {
            match v.as_slice() {
                [] => Ok(None),
                [s] => Ok(Some(s.clone())),
                _ => refuse(format!("input `{name}` takes one string per prompt")),
            }
        };
        let kind = one(&self.guide_type[i], "guided_decoding_guide_type")?;
        let text = one(&self.guide[i], "guided_decoding_guide")?;
        match (kind, text) {
            (None, None) => Ok(None),
            (None, Some(_)) => refuse("input `guided_decoding_guide` needs `guided_decoding_guide_type`".into()),
            (Some(k), text) => {
                let text = text.unwrap_or_default();
                let needs_text = ["json_schema", "regex", "ebnf_grammar", "lark", "grammar", "choice"];
                if text.is_empty() && needs_text.contains(&k.as_str()) {
                    return refuse(format!("guided decoding of type `{k}` needs `guided_decoding_guide`"));
                }
                crate::guided::Guide::parse(&k, &text)
                    .map(Some)
                    .map_err(|e| Error::InvalidRequest(format!("input `guided_decoding_guide`: {e}")))
            }
        }
    }

    /// `max_new_tokens` (the model's default unless given, at most `max_output_len`) and `min_new_tokens`.
    fn lengths(&self, i: usize, lim: &Limits) -> Result<SamplingParams> {
        let mut p = SamplingParams { max_new_tokens: lim.default_max_tokens, ..Default::default() };
        if let Some((name, v)) = &self.max_tokens {
            let m = v[i];
            if m < 1 {
                return refuse(format!("input `{name}` must be >= 1, got {m}"));
            }
            if m > lim.max_output_len as i128 {
                return refuse(format!("input `{name}` is {m}; this model's max_output_len is {}", lim.max_output_len));
            }
            p.max_new_tokens = m as usize;
        }
        if let Some((name, v)) = &self.min_tokens {
            if v[i] < 0 || v[i] > p.max_new_tokens as i128 {
                return refuse(format!("input `{name}` must be in [0, {}], got {}", p.max_new_tokens, v[i]));
            }
            p.min_new_tokens = v[i] as usize;
        }
        Ok(p)
    }

    /// top-k, top-p, temperature, seed, the penalties and the n-gram size.
    fn sampler_values(&self, i: usize, p: &mut SamplingParams) -> Result<()> {
        if let Some((_, v)) = &self.top_k {
            if v[i] < 0 {
                return refuse(format!("input `top_k` must be >= 0, got {}", v[i]));
            }
            p.top_k = v[i].min(u32::MAX as i128) as usize;
        }
        if let Some((_, v)) = &self.top_p {
            let x = v[i];
            if !(0.0..=1.0).contains(&x) {
                return refuse(format!("input `top_p` must be in [0, 1] (0 = off), got {x}"));
            }
            p.top_p = if x == 0.0 { 1.0 } else { x as f32 };
        }
        if let Some((_, v)) = &self.temperature {
            if !(v[i] >= 0.0 && v[i].is_finite()) {
                return refuse(format!("input `temperature` must be >= 0, got {}", v[i]));
            }
            p.temperature = v[i] as f32;
        }
        if let Some((_, v)) = &self.seed {
            p.seed = Some(v[i] as u64);
        }
        if let Some((_, v)) = &self.rep {
            if !(v[i] > 0.0 && v[i].is_finite()) {
                return refuse(format!("input `repetition_penalty` must be > 0, got {}", v[i]));
            }
            p.repetition_penalty = v[i] as f32;
        }
        if let Some((_, v)) = &self.pres {
            p.presence_penalty = v[i] as f32;
        }
        if let Some((_, v)) = &self.freq {
            p.frequency_penalty = v[i] as f32;
        }
        if let Some((_, v)) = &self.ngram {
            let x = v[i];
            if !(x >= 0.0 && x.fract() == 0.0 && x <= u32::MAX as f64) {
                return refuse(format!("input `no_repeat_ngram_size` must be a whole number >= 0 (0 = off), got {x}"));
            }
            p.no_repeat_ngram_size = x as usize;
        }
        Ok(())
    }

    /// Prompt `i`'s stop strings (into `p`) and bad words, within the count and size limits.
    fn stops_and_bad_words(&self, i: usize, p: &mut SamplingParams) -> Result<Vec<String>> {
        // NeMo's stop_words_list strings may each hold several comma-separated stops.
        let nemo = self.stops_nemo[i].iter().flat_map(|s| s.split(',').map(str::to_string));
        p.stop_strings = nemo.filter(|s| !s.is_empty()).collect();
        p.stop_strings.extend(self.stops_trt[i].iter().cloned());
        p.stop_strings.extend(self.stops_end[i].iter().cloned());
        let bad_words: Vec<String> = self.bads.iter().flat_map(|b| b[i].iter().cloned()).collect();
        for (what, list) in [("stop strings", &p.stop_strings), ("bad words", &bad_words)] {
            if list.len() > MAX_STOP_STRINGS {
                return refuse(format!("prompt {i} has {} {what}; at most {MAX_STOP_STRINGS} are allowed", list.len()));
            }
            if let Some(s) = list.iter().find(|s| s.len() > MAX_STOP_BYTES) {
                let n = s.len();
                return refuse(format!(
                    "prompt {i}: one of the {what} is {n} bytes; each may be at most {MAX_STOP_BYTES} bytes"
                ));
            }
        }
        Ok(bad_words)
    }
}

/// The outputs a response carries: those Triton asks for (all but the on-request ones when it names none), less
/// those the request switches off.
fn output_set(inp: &Inputs, requested: &[String]) -> Result<OutputSet> {
    let off = |name: &'static str| -> Result<bool> { Ok(inp.flag(name)? == Some(false)) };
    let logprobs_off = off("return_log_probs")? || off("compute_logprob")?;
    let top = inp.ints(&["top_logprobs"])?.is_some_and(|(_, v)| v.iter().any(|&k| k > 0));
    let prompt = inp.flag("return_prompt_log_probs")? == Some(true);
    let mut names = Vec::new();
    for o in OUTPUTS {
        let asked = requested.iter().any(|r| r == o);
        let gated = [(&TOP_OUTPUTS, top), (&PROMPT_OUTPUTS, prompt), (&PROMPT_TOP_OUTPUTS, prompt && top)];
        if let Some(&(_, on)) = gated.iter().find(|(g, _)| g.contains(&o)) {
            if on && (asked || (requested.is_empty() && !ON_REQUEST.contains(&o))) {
                names.push(o);
            }
            continue;
        }
        if let Some((_, flags)) = ON_FLAG.iter().find(|(n, _)| *n == o) {
            let on = match inp.first(flags) {
                Some((_, t)) => inp.check_rows(t, Some(1)).is_ok() && t.as_f64s()?.iter().any(|&x| x != 0.0),
                None => false,
            };
            if on && (requested.is_empty() || requested.iter().any(|r| r == o)) {
                names.push(o);
            }
            continue;
        }
        let suppressed = match o {
            "num_input_tokens" => off("return_num_input_tokens")?,
            "num_output_tokens" => off("return_num_output_tokens")?,
            "finish_reason" => off("return_finish_reason")?,
            "output_log_probs" | "cum_log_probs" => logprobs_off,
            _ => false,
        };
        if (asked || (requested.is_empty() && !ON_REQUEST.contains(&o))) && !suppressed {
            names.push(o);
        }
    }
    Ok(OutputSet { names })
}

#[cfg(test)]
#[path = "interface_tests.rs"]
mod tests;
