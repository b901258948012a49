//! Tensor-parallel execution: one thread per rank, each owning its weight shard and KV cache. Every step is
//! sent to all ranks; rank 0 returns the sampled tokens (or, when asked, the logits).
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, Precision, StepMeta, WeightFormat};
use crate::comm::local::LocalComm;
use crate::comm::{Communicator, GroupControl};
use crate::loader::CheckpointSource;
use crate::model::Llama;
use crate::sampling::{LateMasks, Picked, SampleBatch};
use crate::{Error, Result};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One step's inputs, shared by all ranks.
#[derive(Debug, Default)]
pub struct StepInput {
    pub tokens: Vec<u32>,
    pub meta: StepMeta,
    /// Token rows whose logits are wanted.
    pub logit_rows: Vec<usize>,
    /// Pick one token per logit row on the device with these rows' sampling (then only the picks come
    /// back); None returns the logits themselves.
    pub sample: Option<SampleBatch>,
    /// With `sample`: token rows whose raw logits come back too (`StepOutput::logits`, in this order).
    pub keep_rows: Vec<usize>,
    /// With `sample`: allowed-token masks of guided rows, filled by the engine while the step runs.
    pub late: Option<Arc<LateMasks>>,
}

/// What rank 0 returns for a step: picks when the step sampled (and the logits of its `keep_rows`,
/// `[keep_rows.len(), sample.vocab]`), else logits `[logit_rows.len(), V]`.
#[derive(Debug, Default)]
pub struct StepOutput {
    pub logits: Vec<f32>,
    pub picks: Vec<Picked>,
}

impl StepInput {
    /// Appends one sequence's chunk: tokens `ids` at positions `start..`, cached through `table`; with
    /// `all_logits` every row's logits are requested, else only the last row's.
    pub fn push_seq(&mut self, ids: &[u32], start: usize, table: &[u32], all_logits: bool) {
        let n = ids.len();
        let token_start = self.meta.push_seq(table, start..start + n);
        self.tokens.extend_from_slice(ids);
        if all_logits {
            self.logit_rows.extend(token_start..token_start + n);
        } else {
            self.logit_rows.push(token_start + n - 1);
        }
    }
}

/// Handles to the rank threads.
pub struct Runner {
    jobs: Vec<Sender<Arc<StepInput>>>,
    results: Receiver<(usize, Result<StepOutput>)>,
    threads: Vec<JoinHandle<()>>,
    pub num_blocks: usize,
    pub block_size: usize,
    /// What the KV cache stores (`KvDtype` resolved).
    pub kv: crate::backend::KvStore,
    /// The ranks' group, where it can be aborted and reset (the in-process one; NCCL's cannot yet).
    control: Option<Arc<dyn GroupControl>>,
    /// A step that takes longer is a stuck rank: the group is aborted and the runner stops.
    step_timeout: Option<Duration>,
    /// Set once a step timed out: why no step can run any more.
    stopped: Mutex<Option<String>>,
}

/// KV cache sizing shared by all ranks.
#[derive(Debug, Clone, Copy)]
pub struct KvPlan {
    pub num_blocks: usize,
    pub block_size: usize,
}

/// How `Runner::start_cuda_planned` sizes each GPU's KV cache.
#[derive(Debug, Clone, Copy)]
pub struct CudaPlan {
    pub block_size: usize,
    /// Share of the memory left (after the weights and the largest step's activations) the cache takes.
    pub kv_fraction: f64,
    /// At most this many blocks.
    pub max_blocks: Option<usize>,
    /// The largest step the engine runs (`max_batched_tokens`) and its logit rows (`max_num_seqs`).
    pub step_tokens: usize,
    pub step_rows: usize,
}

/// A rank's KV block budget once its weights are loaded: (its backend, bytes per block, bytes a maximal step
/// holds besides the cache) -> blocks.
pub type BlocksFor<B> = Arc<dyn Fn(&B, usize, usize) -> Result<usize> + Send + Sync>;

/// The ranks' shared vote on the block count.
struct Agree {
    counts: Mutex<Vec<Option<usize>>>,
    barrier: Barrier,
}

impl Agree {
    /// Posts this rank's count and returns the minimum over all ranks (None if any rank failed).
    fn vote(&self, mine: Option<usize>) -> Option<usize> {
        if let Ok(mut c) = self.counts.lock() {
            c.push(mine);
        }
        self.barrier.wait();
        let all = self.counts.lock().ok()?;
        all.iter().try_fold(usize::MAX, |acc, c| c.map(|c| acc.min(c)))
    }
}

/// How ranks size their KV cache.
enum KvSizing<B: Backend> {
    Fixed(KvPlan),
    /// `step_tokens` and `step_rows`: the largest step the engine will run (its activations are reserved).
    Sized {
        block_size: usize,
        blocks_for: BlocksFor<B>,
        agree: Arc<Agree>,
        step_tokens: usize,
        step_rows: usize,
    },
}

impl<B: Backend> Clone for KvSizing<B> {
    fn clone(&self) -> Self {
        match self {
            KvSizing::Fixed(p) => KvSizing::Fixed(*p),
            KvSizing::Sized { block_size, blocks_for, agree, step_tokens, step_rows } => KvSizing::Sized {
                block_size: *block_size,
                blocks_for: blocks_for.clone(),
                agree: agree.clone(),
                step_tokens: *step_tokens,
                step_rows: *step_rows,
            },
        }
    }
}

impl<B: Backend> KvSizing<B> {
    fn block_size(&self) -> usize {
        match self {
            KvSizing::Fixed(p) => p.block_size,
            KvSizing::Sized { block_size, .. } => *block_size,
        }
    }
}

impl Runner {
    /// Loads `src` on `tp` CPU ranks (threads with in-process collectives).
    pub fn start_cpu(src: Arc<dyn CheckpointSource>, tp: usize, kv: KvPlan) -> Result<Runner> {
        Self::start_cpu_with(src, tp, kv, WeightFormat::AsLoaded)
    }

    /// `start_cpu` with the matmul weights held in `fmt` (e.g. int8, quantized at load).
    pub fn start_cpu_with(
        src: Arc<dyn CheckpointSource>,
        tp: usize,
        kv: KvPlan,
        fmt: impl Into<Precision>,
    ) -> Result<Runner> {
        let ranks = LocalComm::group(tp).into_iter().map(|c| (CpuBackend, c)).collect();
        Self::spawn(src, ranks, KvSizing::Fixed(kv), fmt)
    }

    /// Loads `src` on the GPUs `gpu_ids` (rank = position in the list), one thread per GPU, NCCL between them.
    /// Each rank's KV cache takes `kv_fraction` of the device memory still free after its weights (capped at
    /// `max_blocks`); the ranks agree on the smallest count, reported by `Runner::num_blocks`.
    #[cfg(feature = "cuda")]
    pub fn start_cuda(
        src: Arc<dyn CheckpointSource>,
        gpu_ids: &[usize],
        block_size: usize,
        kv_fraction: f64,
        max_blocks: Option<usize>,
    ) -> Result<Runner> {
        Self::start_cuda_with(src, gpu_ids, block_size, kv_fraction, max_blocks, WeightFormat::AsLoaded)
    }

    /// `start_cuda` with the matmul weights in `fmt` (the CUDA backend refuses formats it lacks), the memory plan
    /// reserving a step of the engine's default size (2048 tokens, 16 logit rows).
    #[cfg(feature = "cuda")]
    #[rustfmt::skip]
    pub fn start_cuda_with(src: Arc<dyn CheckpointSource>, gpu_ids: &[usize], block_size: usize, kv_fraction: f64,
                           max_blocks: Option<usize>, fmt: impl Into<Precision>) -> Result<Runner> {
        let plan = CudaPlan { block_size, kv_fraction, max_blocks, step_tokens: 2048, step_rows: 16 };
        Self::start_cuda_planned(src, gpu_ids, plan, fmt)
    }

    /// Loads `src` on the GPUs `gpu_ids`, then sizes each rank's KV cache by the memory plan: the device memory
    /// free after the weights, less the activations of the largest step (`plan.step_tokens` tokens, an analytic
    /// count), times `kv_fraction`, capped at `max_blocks`. Logs the plan per GPU; a GPU without room for that step
    /// and one block is a clear error naming what to change.
    #[cfg(feature = "cuda")]
    pub fn start_cuda_planned(
        src: Arc<dyn CheckpointSource>,
        gpu_ids: &[usize],
        plan: CudaPlan,
        fmt: impl Into<Precision>,
    ) -> Result<Runner> {
        use crate::backend::cuda::CudaBackend;
        use crate::comm::nccl::NcclComm;
        let CudaPlan { block_size, kv_fraction, max_blocks, step_tokens, step_rows } = plan;
        if gpu_ids.is_empty() || block_size == 0 {
            return Err(Error::Config("start_cuda needs at least one GPU id and a positive block size".into()));
        }
        if !(kv_fraction > 0.0 && kv_fraction <= 1.0) {
            return Err(Error::Config(format!("kv_fraction must be in (0, 1], got {kv_fraction}")));
        }
        let backends = gpu_ids.iter().map(|&g| CudaBackend::new(g)).collect::<Result<Vec<_>>>()?;
        // NCCL refuses two ranks on one GPU: a list that repeats a GPU (`0,0`: the tensor-parallel paths on one
        // device, for tests) gets the in-process communicator, its collectives through host copies.
        let mut seen = gpu_ids.to_vec();
        seen.sort_unstable();
        seen.dedup();
        let shared_gpu = seen.len() < gpu_ids.len();
        let blocks_for: BlocksFor<CudaBackend> = Arc::new(move |b: &CudaBackend, bytes: usize, reserve: usize| {
            b.synchronize()?;
            let (free, total) = b.mem_info()?;
            let gb = |x: usize| x as f64 / 1e9;
            if free < reserve + bytes {
                return Err(Error::Unavailable(format!(
                    "GPU {}: {:.2} GB free after the weights, {:.2} GB needed for a {step_tokens}-token step and one \
                     KV block: lower max_batched_tokens, use more GPUs (tensor_parallel_size) or weight_dtype fp8",
                    b.ordinal(),
                    gb(free),
                    gb(reserve + bytes)
                )));
            }
            let n = ((free - reserve) as f64 * kv_fraction) as usize / bytes.max(1);
            let n = max_blocks.map_or(n, |m| n.min(m));
            log::info!(
                "GPU {} memory plan: {:.2} of {:.2} GB used after the weights; {:.2} GB kept for a {step_tokens}-token \
                 step; KV cache {n} blocks x {block_size} tokens = {} tokens, {:.2} GB ({:.0} KiB per token)",
                b.ordinal(),
                gb(total - free),
                gb(total),
                gb(reserve),
                n * block_size,
                gb(n * bytes),
                bytes as f64 / block_size as f64 / 1024.0
            );
            Ok(n)
        });
        let agree = Arc::new(Agree { counts: Mutex::new(Vec::new()), barrier: Barrier::new(backends.len()) });
        let sizing = KvSizing::Sized { block_size, blocks_for, agree, step_tokens, step_rows };
        if shared_gpu {
            log::warn!(
                "GPU ids {gpu_ids:?} repeat a GPU: its ranks share it and their collectives go through the host"
            );
            let ranks: Vec<_> = backends.into_iter().zip(LocalComm::group(gpu_ids.len())).collect();
            return Self::spawn(src, ranks, sizing, fmt);
        }
        let comms = NcclComm::group(&backends)?;
        let ranks: Vec<_> = backends.into_iter().zip(comms).collect();
        Self::spawn(src, ranks, sizing, fmt)
    }

    /// Spawns one thread per (backend, communicator) pair; each loads its shard and allocates its cache.
    pub fn start<B: Backend, C: Communicator<B> + 'static>(
        src: Arc<dyn CheckpointSource>,
        ranks: Vec<(B, C)>,
        kv: KvPlan,
    ) -> Result<Runner> {
        Self::spawn(src, ranks, KvSizing::Fixed(kv), WeightFormat::AsLoaded)
    }

    /// Like `start`, but each rank sizes its KV cache after loading its weights with `blocks_for(backend,
    /// bytes_per_block)`; all ranks take the smallest count, which `Runner::num_blocks` reports.
    pub fn start_sized<B: Backend, C: Communicator<B> + 'static>(
        src: Arc<dyn CheckpointSource>,
        ranks: Vec<(B, C)>,
        block_size: usize,
        blocks_for: BlocksFor<B>,
    ) -> Result<Runner> {
        let agree = Arc::new(Agree { counts: Mutex::new(Vec::new()), barrier: Barrier::new(ranks.len()) });
        let sizing = KvSizing::Sized { block_size, blocks_for, agree, step_tokens: 0, step_rows: 0 };
        Self::spawn(src, ranks, sizing, WeightFormat::AsLoaded)
    }

    #[rustfmt::skip]
    fn spawn<B: Backend, C: Communicator<B> + 'static>(src: Arc<dyn CheckpointSource>, ranks: Vec<(B, C)>,
                                                       kv: KvSizing<B>, fmt: impl Into<Precision>) -> Result<Runner> {
        let fmt: Precision = fmt.into();
        let (res_tx, results) = channel();
        let (ready_tx, ready_rx) = channel::<Result<usize>>();
        let mut jobs = Vec::new();
        let mut threads = Vec::new();
        let n = ranks.len();
        let control = ranks.first().and_then(|(_, c)| c.control());
        let kv_store = fmt.kv.resolve(ranks.first().is_some_and(|(b, _)| b.kv_bf16_by_default()));
        for (backend, comm) in ranks {
            let (job_tx, job_rx) = channel::<Arc<StepInput>>();
            jobs.push(job_tx);
            let (src, res_tx, ready_tx, kv) = (src.clone(), res_tx.clone(), ready_tx.clone(), kv.clone());
            let rank = comm.rank();
            let pooled = n == 1 && backend.host_threads();
            let t = std::thread::Builder::new()
                .name(format!("llama-rank{rank}"))
                .spawn(move || {
                    let run = move || rank_loop(src, backend, comm, kv, fmt, job_rx, res_tx, ready_tx);
                    if !pooled {
                        return run();
                    }
                    // The steps run on a worker of a pool of their own, so every op's parallel loop starts
                    // from a running worker: no injection into the global pool and no sleep and wake-up of
                    // this thread per op (a decode step has ~250 of them).
                    match rayon::ThreadPoolBuilder::new().thread_name(|i| format!("llama-cpu{i}")).build() {
                        Ok(pool) => pool.install(run),
                        Err(e) => {
                            log::warn!("no thread pool of its own ({e}); steps use the global one");
                            run()
                        }
                    }
                })
                .map_err(|e| Error::Internal(format!("cannot spawn rank thread: {e}")))?;
            threads.push(t);
        }
        drop(ready_tx);
        let mut first_err = None;
        let mut num_blocks = match &kv {
            KvSizing::Fixed(p) => p.num_blocks,
            KvSizing::Sized { .. } => usize::MAX,
        };
        let block_size = kv.block_size();
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(b)) => num_blocks = num_blocks.min(b),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(Error::Internal("a rank thread died while loading".into()))),
            }
        }
        let stopped = Mutex::new(None);
        let runner =
            Runner { jobs, results, threads, num_blocks, block_size, kv: kv_store, control, step_timeout: None, stopped };
        match first_err {
            Some(e) => Err(e), // dropping the runner stops the other ranks
            None => Ok(runner),
        }
    }

    /// Steps that take longer than `t` mean a stuck rank: the step fails with [`Error::EngineStopped`], and so does
    /// every later one (None: steps may take any time).
    pub fn set_step_timeout(&mut self, t: Option<Duration>) {
        self.step_timeout = t;
    }

    fn stopped(&self) -> Option<String> {
        self.stopped.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs one step on every rank; returns rank 0's picks or logits.
    pub fn run(&self, input: StepInput) -> Result<StepOutput> {
        self.submit(input)?;
        self.collect()
    }

    /// Starts one step on every rank; [`Runner::collect`] waits for it (the caller works in between, e.g. fills
    /// the step's `late` masks). Every submitted step must be collected before the next.
    pub fn submit(&self, input: StepInput) -> Result<()> {
        if let Some(why) = self.stopped() {
            return Err(Error::EngineStopped(why));
        }
        let input = Arc::new(input);
        for j in &self.jobs {
            j.send(input.clone()).map_err(|_| Error::Internal("rank thread is gone".into()))?;
        }
        Ok(())
    }

    /// Waits for the submitted step: rank 0's picks or logits. A rank that fails fails the step (the others are
    /// freed from their collectives and the group is reset once all have answered); a step beyond the step
    /// timeout stops the runner.
    pub fn collect(&self) -> Result<StepOutput> {
        if let Some(why) = self.stopped() {
            return Err(Error::EngineStopped(why));
        }
        let deadline = self.step_timeout.map(|t| Instant::now() + t);
        let mut answered = vec![false; self.jobs.len()];
        let (mut out, mut err) = (None, None);
        for _ in 0..self.jobs.len() {
            let r = match deadline {
                None => self.results.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => self.results.recv_timeout(d.saturating_duration_since(Instant::now())),
            };
            match r {
                Ok((rank, r)) => {
                    answered[rank] = true;
                    match r {
                        Ok(v) if rank == 0 => out = Some(v),
                        Ok(_) => {}
                        // A rank's EngineStopped (its device is unusable) wins over the others' aborted collectives.
                        Err(e) if matches!(e, Error::EngineStopped(_)) => err = Some(err.filter(stops).unwrap_or(e)),
                        Err(e) => err = err.or(Some(e)),
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Err(self.stop(&mut answered)),
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Internal("rank thread is gone".into())),
            }
        }
        if let Some(Error::EngineStopped(why)) = &err {
            // A rank cannot run any more (a sticky device error, a group that cannot be recreated): every later
            // step fails at once, and the server loop stops taking work.
            log::error!("the engine stops: {why}");
            *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        } else if err.is_some()
            && let Some(c) = &self.control
        {
            c.reset(); // every rank has answered, so none is inside a collective
        }
        match (err, out) {
            (Some(e), _) => Err(e),
            (None, Some(v)) => Ok(v),
            (None, None) => Err(Error::Internal("rank 0 returned nothing".into())),
        }
    }

    /// A step ran past the timeout: aborts the group, waits a moment for the ranks that were only waiting on
    /// another in a collective (they return once aborted), and stops the runner naming the ranks still missing.
    fn stop(&self, answered: &mut [bool]) -> Error {
        let t = self.step_timeout.unwrap_or_default();
        if let Some(c) = &self.control {
            c.abort(&format!("a step took longer than the {} s step timeout", t.as_secs_f64()));
        }
        let grace = Instant::now() + t.min(Duration::from_secs(2));
        while answered.iter().any(|a| !a) {
            match self.results.recv_timeout(grace.saturating_duration_since(Instant::now())) {
                Ok((rank, _)) => answered[rank] = true,
                Err(_) => break,
            }
        }
        let late: Vec<String> = (0..answered.len()).filter(|&r| !answered[r]).map(|r| r.to_string()).collect();
        let why = format!(
            "a step took longer than the {} s step timeout; rank(s) {} did not answer",
            t.as_secs_f64(),
            late.join(", ")
        );
        log::error!("{why}: the tensor-parallel group is aborted and the engine stops");
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        Error::EngineStopped(why)
    }
}

fn stops(e: &Error) -> bool {
    matches!(e, Error::EngineStopped(_))
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.jobs.clear(); // closing the channels ends the loops
        if self.stopped().is_some() {
            return; // a stuck rank may never return: its thread is left to end on its own
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn rank_loop<B: Backend, C: Communicator<B>>(
    src: Arc<dyn CheckpointSource>,
    backend: B,
    comm: C,
    kv: KvSizing<B>,
    fmt: Precision,
    jobs: Receiver<Arc<StepInput>>,
    results: Sender<(usize, Result<StepOutput>)>,
    ready: Sender<Result<usize>>,
) {
    let rank = comm.rank();
    let control = comm.control();
    let stall_at = (rank + 1 == comm.world_size() && rank > 0).then(fault_stall_rank_at_step).flatten();
    // A panic while loading must not leave the other ranks waiting at the KV-size vote.
    let load = || Llama::load_with(src.as_ref(), backend, comm, fmt);
    let setup = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load))
        .unwrap_or_else(|_| Err(Error::Internal(format!("rank {rank} panicked while loading"))));
    let setup = match kv {
        KvSizing::Fixed(p) => setup.and_then(|m| Ok((m.new_kv_cache(p.num_blocks, p.block_size)?, m))),
        KvSizing::Sized { block_size, blocks_for, agree, step_tokens, step_rows } => {
            let mine = setup.and_then(|m| {
                let b = blocks_for(&m.backend, m.kv_bytes_per_block(block_size), m.step_bytes(step_tokens, step_rows))?;
                Ok((m, b))
            });
            // Every rank votes, even after a failed load, so no rank waits forever at the barrier.
            let agreed = agree.vote(mine.as_ref().ok().map(|x| x.1));
            mine.and_then(|(m, _)| {
                let n = agreed.ok_or_else(|| Error::Internal("another tensor-parallel rank failed to load".into()))?;
                if n == 0 {
                    return Err(Error::Unavailable(format!(
                        "rank {rank}: no device memory left for one KV block of {block_size} tokens"
                    )));
                }
                Ok((m.new_kv_cache(n, block_size)?, m))
            })
        }
    };
    drop(src);
    let (mut cache, model) = match setup {
        Ok(x) => {
            let _ = ready.send(Ok(x.0.num_blocks));
            x
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut steps = 0u64;
    while let Ok(job) = jobs.recv() {
        steps += 1;
        if stall_at == Some(steps) {
            log::warn!("TL_FAULT_STALL_RANK_AT_STEP: rank {rank} stalls at its step {steps} (a test hook)");
            std::thread::sleep(Duration::from_secs(3600));
        }
        let step = || match &job.sample {
            Some(b) => model
                .forward_sample(
                    &job.tokens,
                    &job.meta,
                    &job.logit_rows,
                    &mut cache,
                    b,
                    &job.keep_rows,
                    job.late.as_deref(),
                )
                .map(|(picks, logits)| StepOutput { picks, logits }),
            None => model
                .forward(&job.tokens, &job.meta, &job.logit_rows, &mut cache)
                .map(|logits| StepOutput { logits, picks: Vec::new() }),
        };
        // A failing rank (an error or a panic) frees the others from the step's collectives: the step fails,
        // the engine drops its sequences, and the next step runs on a reset group.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).unwrap_or_else(|p| {
            let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
            Err(Error::Internal(format!("rank {rank} panicked during a step: {}", msg.unwrap_or_default())))
        });
        // A step that overlapped an abort fails even where it returned: its device collectives may have been cut.
        let r = match (r, &control) {
            (Ok(_), Some(c)) if let Some(why) = c.failed() => Err(Error::Internal(format!(
                "rank {rank}: the tensor-parallel group was aborted during the step: {why}"
            ))),
            (r, _) => r,
        };
        if let (Err(e), Some(c)) = (&r, &control) {
            c.abort(&format!("rank {rank} failed: {e}"));
        }
        let r = if rank == 0 { r } else { r.map(|_| StepOutput::default()) };
        if results.send((rank, r)).is_err() {
            break;
        }
    }
}

/// Fault injection for the tests of a stuck tensor-parallel rank (the step timeout): with
/// `TL_FAULT_STALL_RANK_AT_STEP=N` the last rank of a group of two or more sleeps for an hour at its N-th step.
fn fault_stall_rank_at_step() -> Option<u64> {
    let v = std::env::var("TL_FAULT_STALL_RANK_AT_STEP").ok()?;
    let n = v.trim().parse().ok().filter(|&n: &u64| n > 0);
    if n.is_none() {
        log::warn!("TL_FAULT_STALL_RANK_AT_STEP={v:?} ignored: not a step number >= 1");
    }
    n
}
