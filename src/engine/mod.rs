//! The generation engine: requests in, streamed text out. Each `step` schedules (plain data), runs the
//! model on all ranks, samples, detokenizes and checks stop conditions.
pub mod block_manager;
pub mod runner;
pub mod scheduler;
pub mod serve;
pub mod step_cost;
pub mod stop;

use crate::chat::ChatTemplate;
use crate::loader::CheckpointSource;
use crate::sampling::{SampleBatch, SampleRow, Sampler, SamplingParams, logprob_and_top, logprob_of};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use block_manager::BlockManager;
use runner::{KvPlan, Runner, StepInput};
use scheduler::{Plan, Scheduler, SchedulerConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use step_cost::StepCost;
use stop::TextStream;

/// Where the ranks run.
#[derive(Debug, Clone, PartialEq)]
pub enum Device {
    /// CPU threads with in-process collectives.
    Cpu,
    /// One GPU per rank (rank = position in `gpu_ids`), NCCL between them; the KV cache takes `kv_fraction` of
    /// the memory free after the weights. Needs a build with the `cuda` feature.
    Cuda { gpu_ids: Vec<usize>, kv_fraction: f64 },
}

/// Engine sizing (the Triton model config's parameters map onto these).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub device: Device,
    /// Tensor-parallel ranks.
    pub tp: usize,
    pub block_size: usize,
    /// KV-cache blocks; `None` sizes the cache for `max_num_seqs` full-length sequences within `kv_cache_bytes`.
    pub num_blocks: Option<usize>,
    /// Upper bound on the KV cache, bytes per rank.
    pub kv_cache_bytes: usize,
    pub max_num_seqs: usize,
    pub max_batched_tokens: usize,
    /// Prompt tokens per step while other sequences decode (`SchedulerConfig::mixed_prefill_tokens`). None: on
    /// the CPU, derived from measured step times ([`StepCost`], see [`CPU_STEP_SLOWDOWN`]); on CUDA no separate
    /// limit.
    pub mixed_prefill_tokens: Option<usize>,
    /// Longest prompt + output; defaults to the model's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    /// Reuse the KV cache of prompt prefixes already computed (full blocks only).
    pub enable_prefix_caching: bool,
    /// How the matmul weights are held (as loaded, or int8 quantized at load).
    pub weights: crate::backend::WeightFormat,
    /// How the KV cache holds K and V (`auto`: bf16 on CUDA, f32 on the CPU).
    pub kv_cache_dtype: crate::backend::KvDtype,
    /// A step that takes longer means a stuck tensor-parallel rank: its requests fail and the engine stops
    /// ([`Error::EngineStopped`]). None: no limit.
    pub step_timeout: Option<std::time::Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            device: Device::Cpu,
            tp: 1,
            block_size: 16,
            num_blocks: None,
            kv_cache_bytes: 1 << 30,
            max_num_seqs: 16,
            max_batched_tokens: 2048,
            mixed_prefill_tokens: None,
            max_model_len: None,
            enable_prefix_caching: true,
            weights: Default::default(),
            kv_cache_dtype: Default::default(),
            step_timeout: None,
        }
    }
}

/// On the CPU a decode step streams every weight once and each prompt token adds ~2 FLOPs per weight, so how many
/// prompt tokens fit beside running streams depends on the machine's FLOP/s over its bandwidth and on the model;
/// the engine measures both costs as it runs ([`StepCost`]) and lets a step that carries decode rows take at
/// most this multiple of a decode-only step's time. 2x leaves room for the noise of a shared machine: through
/// Triton (scripts/bench/itl_probe.py) the running streams' inter-token p99 stays within 3x their solo p99 while a
/// 512-token prompt is prefilled beside them.
pub const CPU_STEP_SLOWDOWN: f64 = 2.0;
/// The CPU budget before any step has been measured, and its floor (a 512-token prompt in at most 64 steps).
pub const CPU_MIXED_PREFILL_TOKENS: (usize, usize) = (32, 8);

/// Why the CPU engine refuses FP8 weights.
pub const FP8_ON_CPU: &str = "weights fp8 run on GPUs with FP8 tensor cores (compute capability 8.9+: Ada, Hopper, \
Blackwell) with --device cuda; the CPU engine has no FP8 arithmetic (its reference twin, TL_CPU_FP8_REFERENCE=1, is for \
tests): use weights int8 for quantized weights on the CPU";

#[cfg(feature = "cuda")]
fn start_cuda(
    src: Arc<dyn CheckpointSource>,
    gpu_ids: &[usize],
    plan: runner::CudaPlan,
    fmt: crate::backend::Precision,
) -> Result<Runner> {
    Runner::start_cuda_planned(src, gpu_ids, plan, fmt)
}

#[cfg(not(feature = "cuda"))]
fn start_cuda(
    src: Arc<dyn CheckpointSource>,
    _: &[usize],
    _: runner::CudaPlan,
    _: crate::backend::Precision,
) -> Result<Runner> {
    Err(Error::UnsupportedFormat {
        path: src.path().into(),
        format: "device cuda".into(),
        hint: "this build has only the CPU engine; rebuild with `cargo build --release --features cuda`".into(),
    })
}

/// The model identity folded into the prefix cache's block keys.
fn cache_salt(cfg: &crate::config::LlamaConfig, tp: usize) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (format!("{cfg:?}"), tp).hash(&mut h);
    h.finish()
}

/// One generation request, already tokenized.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: u64,
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token or a stop string.
    Stop,
    /// `max_new_tokens` or the context limit.
    Length,
    /// Cancelled by the caller.
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "cancelled",
        }
    }
}

/// What one step produced for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub id: u64,
    /// The sampled token, if one was produced this step.
    pub token: Option<u32>,
    /// Its log-probability under the model (raw logits).
    pub logprob: f32,
    /// With `top_logprobs` k: the k most likely tokens at its position and their log-probabilities, best first.
    pub top_logprobs: Vec<(u32, f32)>,
    /// With `prompt_logprobs`, on the first token's output: each prompt token, its log-probability given the
    /// tokens before it (NaN for the first, which has none) and the `top_logprobs` most likely tokens there.
    pub prompt_logprobs: Vec<TokenLogprob>,
    /// Newly released text (may be empty while a multi-byte char or a possible stop string is held).
    pub text: String,
    pub finish: Option<FinishReason>,
    /// The request's timings, on its final output only (None on an abort).
    pub timings: Option<Timings>,
    /// With `return_logits.context`, on the first token's output: the raw logits of every prompt position,
    /// `[prompt_len, Engine::logits_width()]` (row i predicts token i + 1).
    pub context_logits: Vec<f32>,
    /// With `return_logits.generation`: the raw logits `token` was sampled from, `[Engine::logits_width()]`.
    pub logits: Vec<f32>,
    /// The request failed alone (its finish is `Abort`): structured output reached a dead end.
    pub error: Option<String>,
}

/// A known token's log-probability at its position and the most likely tokens there.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

impl Output {
    /// A request's last output when it ends without a new token.
    fn ended(id: u64, text: String, finish: FinishReason, timings: Option<Timings>) -> Output {
        Output {
            id,
            token: None,
            logprob: 0.0,
            top_logprobs: Vec::new(),
            prompt_logprobs: Vec::new(),
            text,
            finish: Some(finish),
            timings,
            context_logits: Vec::new(),
            logits: Vec::new(),
            error: None,
        }
    }
}

/// Most logits one request may ask back, per kind (context or generation), in floats: 256 MiB.
pub const MAX_RETURN_LOGITS: usize = 64 << 20;

/// Wall-clock time of the engine steps a request took part in (a step shared by several requests counts
/// for each of them; time spent waiting for a slot is not counted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub prompt_tokens: usize,
    /// Steps that computed the prompt, up to and including the one that sampled the first token.
    pub prefill_ms: f64,
    /// Tokens sampled after the first one, and the time of their steps (recomputation after a preemption
    /// included).
    pub decode_tokens: usize,
    pub decode_ms: f64,
}

impl Timings {
    /// Mean time per token after the first; None when only one token was generated.
    pub fn decode_ms_per_token(&self) -> Option<f64> {
        (self.decode_tokens > 0).then(|| self.decode_ms / self.decode_tokens as f64)
    }
}

struct Seq {
    prompt_len: usize,
    /// Prompt followed by generated tokens.
    ids: Vec<u32>,
    sampler: Sampler,
    text: TextStream,
    timings: Timings,
    /// The prompt's logits rows as they are computed, until they go out with the first token.
    context_logits: Option<Vec<f32>>,
    /// The prompt tokens' log-probabilities (position i + 1 from row i) as they are computed, until they go out
    /// with the first token.
    prompt_logprobs: Option<Vec<TokenLogprob>>,
    /// Structured output: the guide's parser state.
    constraint: Option<crate::guided::Constraint>,
}

/// Where a kept logits row of a step goes: a sequence's prompt position, or its sampled token.
enum Kept {
    Context(u64, usize),
    Generation(u64),
}

pub struct Engine {
    runner: Runner,
    tokenizer: Arc<Tokenizer>,
    pub cfg: crate::config::LlamaConfig,
    ecfg: EngineConfig,
    max_model_len: usize,
    sched: Scheduler,
    seqs: HashMap<u64, Seq>,
    add_bos: bool,
    default_stops: Vec<String>,
    chat: Option<Arc<ChatTemplate>>,
    /// Measured step costs that set the scheduler's mixed prefill budget (None: the budget is fixed).
    step_cost: Option<StepCost>,
    /// Compiles structured-output guides over this tokenizer (None: its trie could not be built).
    guides: Option<crate::guided::GuideCompiler>,
    /// Time spent on structured output's constraints since the start: computing token masks (during the forward
    /// passes) and advancing on the sampled tokens (after them).
    mask_ms: f64,
}

impl Engine {
    /// Loads the checkpoint on `ecfg.tp` ranks of `ecfg.device`.
    pub fn new(src: Box<dyn CheckpointSource>, ecfg: EngineConfig) -> Result<Engine> {
        let cfg = src.config().clone();
        crate::model::ShardSpec::check(&cfg, ecfg.tp)?;
        let tokenizer = Arc::new(src.tokenizer()?);
        let max_model_len = ecfg.max_model_len.unwrap_or(cfg.max_position_embeddings);
        if max_model_len < 2 {
            return Err(Error::Config(format!("max_model_len {max_model_len} leaves no room to generate")));
        }
        if ecfg.block_size == 0 || ecfg.max_num_seqs == 0 || ecfg.max_batched_tokens == 0 {
            return Err(Error::Config("block_size, max_num_seqs and max_batched_tokens must be positive".into()));
        }
        let add_bos = src.default_add_bos();
        let default_stops = src.default_stop_strings();
        let chat = match src.chat_template() {
            Ok(t) => t.map(Arc::new),
            Err(e) => {
                log::warn!("the checkpoint's chat template is unusable, chat requests will be refused: {e}");
                None
            }
        };
        let precision = crate::backend::Precision { weights: ecfg.weights, kv: ecfg.kv_cache_dtype };
        let mut runner = match &ecfg.device {
            Device::Cpu => {
                let bytes_per_block =
                    2 * cfg.num_layers * ecfg.block_size * (cfg.num_kv_heads / ecfg.tp) * cfg.head_dim * 4;
                let num_blocks = match ecfg.num_blocks {
                    Some(n) => n,
                    None => {
                        let want = (ecfg.max_num_seqs * max_model_len).div_ceil(ecfg.block_size);
                        want.min(ecfg.kv_cache_bytes / bytes_per_block.max(1))
                    }
                };
                if num_blocks == 0 {
                    return Err(Error::Config(format!(
                        "the KV cache budget of {} bytes holds no block of {bytes_per_block} bytes",
                        ecfg.kv_cache_bytes
                    )));
                }
                if ecfg.weights == crate::backend::WeightFormat::Fp8 && !crate::backend::fp8_cpu_reference() {
                    return Err(Error::Config(FP8_ON_CPU.into()));
                }
                let plan = KvPlan { num_blocks, block_size: ecfg.block_size };
                Runner::start_cpu_with(Arc::from(src), ecfg.tp, plan, precision)?
            }
            Device::Cuda { gpu_ids, kv_fraction } => {
                if gpu_ids.len() != ecfg.tp {
                    return Err(Error::Config(format!(
                        "{} GPU ids for tensor-parallel size {}",
                        gpu_ids.len(),
                        ecfg.tp
                    )));
                }
                let plan = runner::CudaPlan {
                    block_size: ecfg.block_size,
                    kv_fraction: *kv_fraction,
                    max_blocks: ecfg.num_blocks,
                    step_tokens: ecfg.max_batched_tokens,
                    step_rows: ecfg.max_num_seqs,
                };
                start_cuda(Arc::from(src), gpu_ids, plan, precision)?
            }
        };
        runner.set_step_timeout(ecfg.step_timeout);
        let num_blocks = runner.num_blocks;
        if num_blocks == 0 {
            return Err(Error::Config("the KV cache holds no block".into()));
        }
        log::info!("KV cache: {num_blocks} blocks of {} tokens per rank, {}", ecfg.block_size, runner.kv.name());
        let step_cost = match (ecfg.mixed_prefill_tokens, &ecfg.device) {
            (None, Device::Cpu) => {
                let (initial, min) = CPU_MIXED_PREFILL_TOKENS;
                let max = ecfg.max_batched_tokens;
                Some(StepCost::new(CPU_STEP_SLOWDOWN, initial, min.min(max), max))
            }
            _ => None,
        };
        let mixed_prefill_tokens = match (ecfg.mixed_prefill_tokens, &step_cost) {
            (Some(n), _) => n,
            (None, Some(c)) => c.budget(),
            (None, None) => ecfg.max_batched_tokens,
        };
        if mixed_prefill_tokens == 0 {
            return Err(Error::Config("mixed_prefill_tokens must be positive".into()));
        }
        let sched = Scheduler::new(
            SchedulerConfig {
                max_num_seqs: ecfg.max_num_seqs,
                max_batched_tokens: ecfg.max_batched_tokens,
                enable_prefix_caching: ecfg.enable_prefix_caching,
                cache_salt: cache_salt(&cfg, ecfg.tp),
                mixed_prefill_tokens,
            },
            BlockManager::new(num_blocks, ecfg.block_size),
        );
        let seqs = HashMap::new();
        let t0 = Instant::now();
        let guides = match crate::guided::GuideCompiler::new(&tokenizer) {
            Ok(g) => {
                log::info!(
                    "structured output: token trie of {} ids in {:.0} ms",
                    g.vocab(),
                    t0.elapsed().as_secs_f64() * 1e3
                );
                Some(g)
            }
            Err(e) => {
                log::warn!("structured output is unavailable, guided requests will be refused: {e}");
                None
            }
        };
        Ok(Engine {
            runner,
            tokenizer,
            cfg,
            ecfg,
            max_model_len,
            sched,
            seqs,
            add_bos,
            default_stops,
            chat,
            step_cost,
            guides,
            mask_ms: 0.0,
        })
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }
    /// Whether the checkpoint's prompts get BOS by default.
    pub fn default_add_bos(&self) -> bool {
        self.add_bos
    }
    /// Stop strings implied by the checkpoint's chat format.
    pub fn default_stop_strings(&self) -> &[String] {
        &self.default_stops
    }
    /// The chat template in use: the checkpoint's, unless [`Engine::set_chat_template`] replaced it.
    pub fn chat_template(&self) -> Option<&Arc<ChatTemplate>> {
        self.chat.as_ref()
    }
    /// Replaces the checkpoint's chat template (`--chat-template FILE`, the model's `chat_template` parameter).
    pub fn set_chat_template(&mut self, t: ChatTemplate) {
        self.chat = Some(Arc::new(t));
    }
    /// A conversation's prompt text and ids under the chat template (with the assistant turn opened).
    pub fn render_chat(&self, messages: &[crate::chat::Message]) -> Result<(String, Vec<u32>)> {
        let t = self.chat.as_ref().ok_or_else(|| {
            let m = "this model has no chat template (none in the checkpoint; set one with `chat_template`)";
            Error::InvalidRequest(m.into())
        })?;
        let text = t.render(messages, true)?;
        let ids = t.encode(&self.tokenizer, &text)?;
        Ok((text, ids))
    }
    pub fn config(&self) -> &EngineConfig {
        &self.ecfg
    }
    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }
    /// Columns of the logits the engine samples from and returns: the ids the tokenizer can decode.
    pub fn logits_width(&self) -> usize {
        self.tokenizer.vocab_size().min(self.cfg.vocab_size)
    }
    pub fn num_running(&self) -> usize {
        self.sched.num_running()
    }
    pub fn num_waiting(&self) -> usize {
        self.sched.num_waiting()
    }
    pub fn kv_blocks_used(&self) -> usize {
        self.sched.blocks().num_used()
    }
    /// KV blocks no sequence holds that keep a cached prefix (reusable, evicted when the pool needs them).
    pub fn kv_blocks_cached(&self) -> usize {
        self.sched.blocks().num_cached()
    }
    /// KV blocks holding nothing.
    pub fn kv_blocks_free(&self) -> usize {
        self.sched.blocks().num_free()
    }
    /// Prompt tokens looked up in the prefix cache and found there, since the engine started.
    pub fn prefix_cache_stats(&self) -> scheduler::PrefixCacheStats {
        self.sched.prefix_cache_stats()
    }
    pub fn kv_blocks_total(&self) -> usize {
        self.sched.blocks().num_blocks()
    }
    pub fn has_work(&self) -> bool {
        self.sched.has_work()
    }
    /// Milliseconds spent on structured output's constraints since the start, on the engine thread: computing
    /// token masks (while the forward passes run) and advancing on the sampled tokens.
    pub fn guided_mask_ms(&self) -> f64 {
        self.mask_ms
    }
    /// The measured step costs behind the CPU's mixed prefill budget, if it is derived from them.
    pub fn step_cost(&self) -> Option<&StepCost> {
        self.step_cost.as_ref()
    }

    /// Validates and queues a request. Errors name the offending field; nothing is queued on error.
    pub fn add_request(&mut self, req: Request) -> Result<()> {
        req.params.validate()?;
        if self.seqs.contains_key(&req.id) {
            return Err(Error::InvalidRequest(format!("request id {} is already running", req.id)));
        }
        let n = req.prompt_ids.len();
        if n == 0 {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        if n >= self.max_model_len {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {n} tokens; the limit is {} (context {})",
                self.max_model_len - 1,
                self.max_model_len
            )));
        }
        let pool = self.sched.blocks().num_blocks().saturating_mul(self.runner.block_size);
        if n >= pool {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {n} tokens; the whole KV cache holds {pool} ({} blocks of {}), so it could never run",
                self.sched.blocks().num_blocks(),
                self.runner.block_size
            )));
        }
        let vocab = self.cfg.vocab_size as u32;
        if let Some(bad) = req.prompt_ids.iter().find(|&&t| t >= vocab) {
            return Err(Error::InvalidRequest(format!("prompt token id {bad} is outside the vocabulary of {vocab}")));
        }
        let width = self.logits_width() as u32;
        if let Some((bad, _)) = req.params.logit_bias.iter().find(|(t, _)| *t >= width) {
            return Err(Error::InvalidRequest(format!(
                "logit bias token id {bad} is outside the vocabulary of {width}"
            )));
        }
        if req.params.max_new_tokens == 0 {
            return Err(Error::InvalidRequest("max_new_tokens must be at least 1".into()));
        }
        let want = req.params.return_logits;
        let width = self.logits_width();
        for (asked, rows, what) in [(want.context, n, "prompt"), (want.generation, req.params.max_new_tokens, "output")]
        {
            if asked && rows.saturating_mul(width) > MAX_RETURN_LOGITS {
                return Err(Error::InvalidRequest(format!(
                    "the logits of {rows} {what} tokens over a vocabulary of {width} are {} MiB; at most {} MiB \
                     of each kind are returned per request",
                    rows.saturating_mul(width) >> 18, // 4 bytes a float
                    MAX_RETURN_LOGITS >> 18
                )));
            }
        }
        let constraint = match (&req.params.guide, &self.guides) {
            (None, _) => None,
            (Some(g), Some(c)) => Some(c.compile(g)?),
            (Some(_), None) => {
                return Err(Error::Unavailable(
                    "structured output is unavailable for this tokenizer (see the log)".into(),
                ));
            }
        };
        let sampler = Sampler::new(req.params.clone(), req.id ^ 0x5EED);
        let text = TextStream::new(&self.tokenizer, &req.prompt_ids, req.params.stop_strings.clone())?;
        // Prompt rows are computed (not taken from the prefix cache) when the request wants them back.
        let prompt_rows = want.context || req.params.prompt_logprobs;
        self.sched.add_with(req.id, &req.prompt_ids, prompt_rows);
        let timings = Timings { prompt_tokens: n, ..Default::default() };
        let context_logits = want.context.then(|| vec![0.0; n * width]);
        let prompt_logprobs = req.params.prompt_logprobs.then(|| {
            let slot = |&token| TokenLogprob { token, logprob: f32::NAN, top: Vec::new() };
            req.prompt_ids.iter().map(slot).collect()
        });
        let (prompt_len, ids) = (n, req.prompt_ids);
        let seq = Seq { prompt_len, ids, sampler, text, timings, context_logits, prompt_logprobs, constraint };
        self.seqs.insert(req.id, seq);
        Ok(())
    }

    /// Cancels a request; its KV blocks are free at once. Returns its final output if it was known.
    pub fn abort(&mut self, id: u64) -> Option<Output> {
        self.sched.finish(id);
        self.seqs.remove(&id).map(|_| Output::ended(id, String::new(), FinishReason::Abort, None))
    }

    /// Runs one scheduling step and returns what each affected request produced.
    pub fn step(&mut self) -> Result<Vec<Output>> {
        if let Some(c) = &self.step_cost {
            self.sched.set_mixed_prefill_tokens(c.budget());
        }
        let plan = self.sched.schedule();
        let mut outputs = Vec::new();
        for id in &plan.too_large {
            // A sequence that cannot fit even in the empty cache ends with what it has (finish reason `length`:
            // the KV cache is its context limit).
            log::warn!(
                "request {id}: outgrew the whole KV cache ({} blocks); finished with reason `length`",
                self.sched.blocks().num_blocks()
            );
            self.sched.finish(*id);
            if let Some(mut s) = self.seqs.remove(id) {
                let text = s.text.finish(&self.tokenizer)?;
                outputs.push(Output::ended(*id, text, FinishReason::Length, Some(s.timings)));
            }
        }
        if plan.items.is_empty() {
            return Ok(outputs);
        }
        let started = Instant::now();
        let (input, kept, guided) = self.build_step(&plan);
        let (sampled, width) = (input.logit_rows.len(), self.logits_width());
        let late = input.late.clone();
        let submitted = self.runner.submit(input);
        // The guided rows' masks are computed here while the ranks run the forward pass.
        let mut dead: HashMap<u64, String> = HashMap::new();
        if let (Ok(()), Some(late)) = (&submitted, late) {
            let masking = Instant::now();
            let tx = crate::sampling::batch::MaskSender(late);
            let mut masks = Vec::with_capacity(guided.len());
            for &(row, id) in &guided {
                let Some(c) = self.seqs.get_mut(&id).and_then(|s| s.constraint.as_mut()) else { continue };
                match c.allowed() {
                    Ok(m) => masks.push((row, m)),
                    Err(e) => {
                        dead.insert(id, e.to_string());
                    }
                }
            }
            tx.0.fill(masks);
            self.mask_ms += masking.elapsed().as_secs_f64() * 1e3;
        }
        let (picks, mut gen_logits) = match submitted.and_then(|()| self.runner.collect()) {
            Ok(out) if out.picks.len() == sampled && out.logits.len() == kept.len() * width => {
                (out.picks, self.place_kept(&kept, &out.logits))
            }
            r => {
                // A failed step leaves the caches in an unknown state: end every sequence (the caller
                // answers each of its requests with the error) so that nothing hangs or leaks.
                let ids: Vec<u64> = self.seqs.keys().copied().collect();
                for id in ids {
                    self.sched.finish(id);
                    self.seqs.remove(&id);
                }
                self.sched.clear_prefix_cache();
                return Err(match r {
                    Err(e) => e,
                    Ok(out) => Error::Internal(format!(
                        "step returned {} tokens for {sampled} sequences and {} logits for {} rows",
                        out.picks.len(),
                        out.logits.len(),
                        kept.len()
                    )),
                });
            }
        };
        self.sched.update(&plan);
        let step_ms = started.elapsed().as_secs_f64() * 1e3;
        if let Some(c) = &mut self.step_cost {
            let decode_rows = plan.items.iter().filter(|i| i.len == 1 && i.sample).count();
            c.record(step_ms, decode_rows, plan.num_tokens() - decode_rows);
        }
        for it in &plan.items {
            let s = self.seqs.get_mut(&it.id).expect("planned ids are known");
            if s.ids.len() == s.prompt_len {
                s.timings.prefill_ms += step_ms;
            } else {
                s.timings.decode_ms += step_ms;
                s.timings.decode_tokens += it.sample as usize;
            }
        }
        let eos = self.cfg.eos_id;
        for (it, pick) in plan.items.iter().filter(|i| i.sample).zip(picks) {
            let s = self.seqs.get_mut(&it.id).expect("planned ids are known");
            let (tok, logprob) = (pick.id, pick.logprob);
            let failed = match (dead.remove(&it.id), s.constraint.as_mut()) {
                (Some(e), _) => Some(e),
                (None, Some(c)) => {
                    let t = Instant::now();
                    let r = c.advance(tok).err().map(|e| e.to_string());
                    self.mask_ms += t.elapsed().as_secs_f64() * 1e3;
                    r
                }
                (None, None) => None,
            };
            if let Some(e) = failed {
                self.sched.finish(it.id);
                let timings = self.seqs.remove(&it.id).map(|s| s.timings);
                outputs.push(Output {
                    error: Some(e),
                    ..Output::ended(it.id, String::new(), FinishReason::Abort, timings)
                });
                continue;
            }
            let guide_done = s.constraint.as_ref().is_some_and(|c| c.is_finished());
            s.ids.push(tok);
            self.sched.append_token(it.id, tok);
            let n_gen = s.ids.len() - s.prompt_len;
            let p = &s.sampler.params;
            let is_stop_token = (!p.ignore_eos && tok == eos) || p.stop_token_ids.contains(&tok);
            let (mut text, mut finish, mut hit) = (String::new(), None, false);
            if is_stop_token {
                finish = Some(FinishReason::Stop);
            } else {
                (text, hit) = s.text.push(&self.tokenizer, tok)?;
                if hit || guide_done {
                    finish = Some(FinishReason::Stop);
                } else if n_gen >= p.max_new_tokens || s.ids.len() >= self.max_model_len {
                    finish = Some(FinishReason::Length);
                }
            }
            // A finish that is not a stop string's releases the text held back (a stop string's is trimmed).
            if finish == Some(FinishReason::Length) || is_stop_token || (guide_done && !hit) {
                text.push_str(&s.text.finish(&self.tokenizer)?);
            }
            let context_logits = s.context_logits.take().unwrap_or_default();
            let prompt_logprobs = s.prompt_logprobs.take().unwrap_or_default();
            let logits = gen_logits.remove(&it.id).unwrap_or_default();
            let mut timings = None;
            if finish.is_some() {
                self.sched.finish(it.id);
                timings = self.seqs.remove(&it.id).map(|s| s.timings);
            }
            outputs.push(Output {
                id: it.id,
                token: Some(tok),
                logprob,
                top_logprobs: pick.top,
                prompt_logprobs,
                text,
                finish,
                timings,
                context_logits,
                logits,
                error: None,
            });
        }
        Ok(outputs)
    }

    /// Copies a step's kept logits rows into the prompts' context logits; returns the sampled rows' by id.
    fn place_kept(&mut self, kept: &[Kept], logits: &[f32]) -> HashMap<u64, Vec<f32>> {
        let w = self.logits_width();
        let mut by_id = HashMap::new();
        for (k, row) in kept.iter().zip(logits.chunks_exact(w)) {
            match *k {
                Kept::Context(id, p) => {
                    let Some(s) = self.seqs.get_mut(&id) else { continue };
                    if let Some(c) = s.context_logits.as_mut() {
                        c[p * w..(p + 1) * w].copy_from_slice(row);
                    }
                    let k = s.sampler.params.top_logprobs;
                    if let Some(slot) = s.prompt_logprobs.as_mut().and_then(|lps| lps.get_mut(p + 1)) {
                        (slot.logprob, slot.top) = logprob_and_top(row, slot.token as usize, k);
                    }
                }
                Kept::Generation(id) => {
                    by_id.insert(id, row.to_vec());
                }
            }
        }
        by_id
    }

    /// The step's tokens and layout, the sampling of each sequence that gets a token this step (its uniform draw
    /// is taken now), and where the logits rows it keeps go. Ids the tokenizer cannot decode are never sampled.
    /// Also the guided rows: (row in the sampling batch, sequence id); the step then carries `late` masks.
    fn build_step(&mut self, plan: &Plan) -> (StepInput, Vec<Kept>, Vec<(usize, u64)>) {
        let mut input = StepInput::default();
        input.meta.block_size = self.runner.block_size;
        let mut draws = Vec::new();
        let mut kept = Vec::new();
        let mut guided = Vec::new();
        for it in &plan.items {
            let s = self.seqs.get_mut(&it.id).expect("planned ids are known");
            let row0 = input.tokens.len();
            input.push_seq(&s.ids[it.start..it.start + it.len], it.start, &it.block_table, false);
            if s.context_logits.is_some() || s.prompt_logprobs.is_some() {
                // Prompt positions of this chunk (a recomputed chunk after a preemption writes the same rows).
                for p in it.start..(it.start + it.len).min(s.prompt_len) {
                    input.keep_rows.push(row0 + p - it.start);
                    kept.push(Kept::Context(it.id, p));
                }
            }
            if it.sample && s.sampler.params.return_logits.generation {
                input.keep_rows.push(row0 + it.len - 1);
                kept.push(Kept::Generation(it.id));
            }
            if it.sample && s.constraint.is_some() {
                guided.push((draws.len(), it.id));
            }
            if it.sample {
                draws.push(s.sampler.draw());
            } else {
                input.logit_rows.pop();
            }
        }
        let eos = self.cfg.eos_id;
        let rows: Vec<SampleRow> = (plan.items.iter().filter(|i| i.sample).zip(draws))
            .map(|(it, u)| {
                let s = &self.seqs[&it.id];
                SampleRow { params: &s.sampler.params, u, context: &s.ids, generated: &s.ids[s.prompt_len..], eos }
            })
            .collect();
        input.sample = Some(SampleBatch::new(&rows, self.logits_width()));
        if !guided.is_empty() {
            input.late = Some(Default::default());
        }
        (input, kept, guided)
    }

    /// Logits `[len, V]` at every position of `ids`, computed in one pass. Needs an idle engine.
    pub fn prompt_logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if self.sched.has_work() {
            return Err(Error::Unavailable("the engine is busy".into()));
        }
        if ids.is_empty() || ids.len() > self.max_model_len {
            return Err(Error::InvalidRequest(format!("need 1..={} tokens, got {}", self.max_model_len, ids.len())));
        }
        // This pass writes blocks from 0 up, outside the scheduler: the prefix cache would point at them.
        self.sched.clear_prefix_cache();
        let bs = self.runner.block_size;
        let mut bm = BlockManager::new(self.runner.num_blocks, bs);
        let mut table = Vec::new();
        if !bm.grow(&mut table, ids.len()) {
            return Err(Error::InvalidRequest(format!("{} tokens do not fit in the KV cache", ids.len())));
        }
        let mut input = StepInput::default();
        input.meta.block_size = bs;
        input.push_seq(ids, 0, &table, true);
        Ok(self.runner.run(input)?.logits)
    }

    /// Log-probability of each token of `ids` after the first, given the tokens before it.
    pub fn score(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let logits = self.prompt_logits(ids)?;
        let v = self.cfg.vocab_size;
        Ok((1..ids.len()).map(|i| logprob_of(&logits[(i - 1) * v..i * v], ids[i] as usize)).collect())
    }

    /// Runs requests to completion, calling `on_output` as results arrive (used by the CLI and tests).
    pub fn run_to_completion(&mut self, mut on_output: impl FnMut(&Output)) -> Result<()> {
        while self.has_work() {
            for o in self.step()? {
                on_output(&o);
            }
        }
        Ok(())
    }
}
