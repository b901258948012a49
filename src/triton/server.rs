//! The engine thread: owns the `Engine`, takes `Submit` messages from `execute`, tokenizes, admits, loops
//! `step()` while there is work, and answers each request through its `Sink` (streamed per token or once).
//! Polls every sink for cancellation at each step and aborts cancelled sequences, which frees their KV blocks
//! at once. No FFI here: the Triton side plugs in through the `Sink` and `Observer` traits.
use super::interface::JobSpec;
pub use crate::engine::serve::RowReply;
use crate::engine::serve::{OutputTracker, PromptDefaults};
use crate::engine::{Engine, FinishReason};
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// How a request's prompts ended, as `llama_requests_finished_total{reason=...}` counts them: the engine's
/// finish reasons, plus failures and refusals of the serving layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Stop,
    Length,
    Cancelled,
    /// Failed after it was admitted (a step or a response failed).
    Error,
    /// Refused before any work was queued (bad input, full queue, engine gone).
    Rejected,
}

impl EndReason {
    pub const ALL: [EndReason; 5] =
        [EndReason::Stop, EndReason::Length, EndReason::Cancelled, EndReason::Error, EndReason::Rejected];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Stop => "stop",
            EndReason::Length => "length",
            EndReason::Cancelled => "cancelled",
            EndReason::Error => "error",
            EndReason::Rejected => "rejected",
        }
    }
}

impl From<FinishReason> for EndReason {
    fn from(f: FinishReason) -> Self {
        match f {
            FinishReason::Stop => EndReason::Stop,
            FinishReason::Length => EndReason::Length,
            FinishReason::Abort => EndReason::Cancelled,
        }
    }
}

/// Where a request's answers go (implemented over a Triton response factory).
pub trait Sink: Send {
    fn is_cancelled(&self) -> bool;
    /// Sends one response; `last` makes it the final one and ends the request.
    fn send(&mut self, rows: &[RowReply], last: bool) -> Result<()>;
    /// Ends the request with an error.
    fn fail(&mut self, e: &Error);
    /// Ends a cancelled request.
    fn cancelled(&mut self);
}

/// Metrics hooks (implemented over Triton's metric API), one per model.
pub trait Observer: Send + Sync {
    /// `prompts` prompts ended for `reason`.
    fn finished(&self, reason: EndReason, prompts: usize);
    fn tokens(&self, prompt: usize, generated: usize);
    /// Engine-wide gauges; `in_flight` counts prompts received and not yet answered in full (queued included).
    fn gauges(&self, running: usize, waiting: usize, kv_used: usize, kv_total: usize, in_flight: usize);
    /// Engine-wide KV blocks held by no sequence: `cached` keep a reusable prefix, `free` hold nothing.
    fn kv_split(&self, _cached: usize, _free: usize) {}
    /// Prompt tokens looked up in the prefix cache, and found there, since the previous call (engine-wide).
    fn prefix_cache(&self, _queries: u64, _hits: u64) {}
    fn ttft(&self, secs: f64);
    fn tpot(&self, secs: f64);
    fn e2e(&self, secs: f64);
    /// Whether the engine thread serves (true from attach until it stops; false after a panic or unload).
    fn engine_up(&self, _up: bool) {}
}

pub struct Submission {
    pub spec: JobSpec,
    pub sink: Box<dyn Sink>,
    pub obs: Arc<dyn Observer>,
}

enum Msg {
    Submit(Submission),
    Attach(u64, Arc<dyn Observer>),
    Detach(u64),
}

/// Model-level serving settings the engine thread applies.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub max_input_len: Option<usize>,
    /// Prompts in flight (running + queued) beyond which requests get UNAVAILABLE.
    pub capacity: usize,
    /// `None`: the checkpoint's default.
    pub add_bos: Option<bool>,
    /// `None`: the checkpoint's default stop strings.
    pub stop_strings: Option<Vec<String>>,
    /// `None`: the checkpoint's chat template; else a `chat::ChatTemplate::from_override` spec (file or `nemo`).
    pub chat_template: Option<String>,
    /// Fault injection: the engine thread panics at this step (`TL_FAULT_PANIC_AT_STEP`, see [`fault_panic_at_step`]).
    pub fault_panic_at_step: Option<u64>,
}

/// Facts about the loaded engine.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub max_model_len: usize,
    pub kv_blocks_total: usize,
    /// Bytes of the tokenizer's longest piece (bounds a prompt's bytes per token).
    pub longest_piece_bytes: usize,
}

/// The handle `execute` holds: a channel into the engine thread plus admission control.
type Watchers = Arc<Mutex<HashMap<u64, Arc<dyn Observer>>>>;

pub struct EngineHandle {
    tx: Mutex<Option<Sender<Msg>>>,
    inflight: Arc<AtomicUsize>,
    dead: Arc<AtomicBool>,
    /// The attached models' observers, told when the engine thread stops (its own map dies with a panic).
    watchers: Watchers,
    capacity: usize,
    pub info: EngineInfo,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EngineHandle {
    /// Starts the thread, which builds the engine with `open` and reports back before serving.
    pub fn start(open: impl FnOnce() -> Result<Engine> + Send + 'static, set: ServeSettings) -> Result<EngineHandle> {
        let (tx, rx) = channel();
        let (ready_tx, ready_rx) = channel();
        let inflight = Arc::new(AtomicUsize::new(0));
        let dead = Arc::new(AtomicBool::new(false));
        let watchers: Watchers = Default::default();
        let (inf, dd, ww, capacity) = (inflight.clone(), dead.clone(), watchers.clone(), set.capacity);
        let thread = std::thread::Builder::new()
            .name("llama-engine".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    fault_load_gate();
                    let opened =
                        open().and_then(|mut e| e.apply_chat_override(set.chat_template.as_deref()).map(|_| e));
                    let engine = match opened {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let info = EngineInfo {
                        max_model_len: engine.max_model_len(),
                        kv_blocks_total: engine.kv_blocks_total(),
                        longest_piece_bytes: engine.tokenizer().longest_piece_bytes(),
                    };
                    let _ = ready_tx.send(Ok(info));
                    let defaults = PromptDefaults {
                        max_input_len: set.max_input_len,
                        add_bos: set.add_bos,
                        stop_strings: set.stop_strings.clone(),
                    };
                    Loop {
                        engine,
                        defaults,
                        rx,
                        inflight: inf,
                        jobs: HashMap::new(),
                        rows: HashMap::new(),
                        observers: HashMap::new(),
                        next_id: 1,
                        prefix_published: Default::default(),
                        steps: 0,
                        panic_at_step: set.fault_panic_at_step,
                    }
                    .run();
                }));
                if r.is_err() {
                    log::error!(
                        "the engine thread panicked; its requests were failed and the model stops accepting work"
                    );
                }
                dd.store(true, Ordering::SeqCst);
                for o in ww.lock().unwrap_or_else(|p| p.into_inner()).values() {
                    o.engine_up(false);
                }
                log::info!("engine thread stopped");
            })
            .map_err(|e| Error::Internal(format!("cannot spawn the engine thread: {e}")))?;
        let info = match ready_rx.recv() {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::Internal("the engine thread died while loading the checkpoint".into()));
            }
        };
        Ok(EngineHandle {
            tx: Mutex::new(Some(tx)),
            inflight,
            dead,
            watchers,
            capacity,
            info,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, m: Msg) -> std::result::Result<(), Msg> {
        let guard = match self.tx.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match guard.as_ref() {
            Some(tx) => tx.send(m).map_err(|e| e.0),
            None => Err(m),
        }
    }

    /// Queues a request, or answers it at once with UNAVAILABLE when the queue is full or the engine is gone.
    pub fn submit(&self, sub: Submission) {
        let n = sub.spec.prompts.len();
        let prev = self.inflight.fetch_add(n, Ordering::SeqCst);
        let refuse = |mut sub: Submission, msg: String| {
            self.inflight.fetch_sub(n, Ordering::SeqCst);
            sub.obs.finished(EndReason::Rejected, n);
            sub.sink.fail(&Error::Unavailable(msg));
        };
        if self.dead.load(Ordering::SeqCst) {
            return refuse(sub, "the engine thread has stopped; reload the model".into());
        }
        if prev + n > self.capacity {
            return refuse(
                sub,
                format!("the server is at capacity ({} prompts in flight, limit {}); retry later", prev, self.capacity),
            );
        }
        if let Err(Msg::Submit(sub)) = self.send(Msg::Submit(sub)) {
            refuse(sub, "the engine is shutting down".into());
        }
    }

    /// Adds a model's observer: engine gauges from now on, and `engine_up` (true now, false when the thread stops).
    pub fn attach(&self, key: u64, obs: Arc<dyn Observer>) {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner()).insert(key, obs.clone());
        // After the insert: a thread that stops meanwhile either sees this observer or set `dead` before.
        obs.engine_up(!self.dead.load(Ordering::SeqCst));
        let _ = self.send(Msg::Attach(key, obs));
    }
    pub fn detach(&self, key: u64) {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        let _ = self.send(Msg::Detach(key));
    }
}

impl Drop for EngineHandle {
    /// Closes the channel and waits for the thread, which fails whatever is still queued.
    fn drop(&mut self) {
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut g| g.take()) {
            let _ = t.join();
        }
    }
}

/// One prompt of a job: its output (the engine's tracker) and the times its metrics need.
struct Row {
    out: OutputTracker,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

struct Job {
    sink: Box<dyn Sink>,
    obs: Arc<dyn Observer>,
    stream: bool,
    /// Whether an output of token texts was asked for (`output_tokens` and the like: the texts are kept).
    want_tokens: bool,
    ids: Vec<u64>,
    rows: Vec<Row>,
    start: Instant,
    dirty: bool,
    /// Tokens generated since the last metrics update.
    fresh: usize,
}

struct Loop {
    engine: Engine,
    defaults: PromptDefaults,
    rx: Receiver<Msg>,
    inflight: Arc<AtomicUsize>,
    jobs: HashMap<u64, Job>,
    /// Engine request id -> (job key, row).
    rows: HashMap<u64, (u64, usize)>,
    observers: HashMap<u64, Arc<dyn Observer>>,
    next_id: u64,
    /// Prefix-cache stats already published (counters get the increase since).
    prefix_published: std::cell::Cell<crate::engine::scheduler::PrefixCacheStats>,
    /// Engine steps taken, and the fault-injection step at which the thread panics (`TL_FAULT_PANIC_AT_STEP`).
    steps: u64,
    panic_at_step: Option<u64>,
}

/// Fault injection for the tests of the probes while a model loads: with `TL_FAULT_LOAD_GATE=PATH` the engine
/// thread waits while PATH exists before it opens the checkpoint (a load as long as the test needs).
fn fault_load_gate() {
    let Some(gate) = std::env::var_os("TL_FAULT_LOAD_GATE").map(std::path::PathBuf::from) else { return };
    log::warn!("TL_FAULT_LOAD_GATE: the load waits while {} exists (a test hook)", gate.display());
    while gate.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Fault injection for the tests of what follows a fatal engine error (the `llama_engine_up` gauge, the
/// deploy script's watchdog): `TL_FAULT_PANIC_AT_STEP=N` makes the engine thread panic at its N-th step.
pub fn fault_panic_at_step() -> Option<u64> {
    let v = std::env::var("TL_FAULT_PANIC_AT_STEP").ok()?;
    let n = v.trim().parse().ok().filter(|&n: &u64| n > 0);
    match n {
        Some(n) => log::warn!("TL_FAULT_PANIC_AT_STEP={n}: the engine thread will panic at its step {n} (a test hook)"),
        None => log::warn!("TL_FAULT_PANIC_AT_STEP={v:?} ignored: not a step number >= 1"),
    }
    n
}

#[path = "server_loop.rs"]
mod server_loop;
