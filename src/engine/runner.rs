//! Tensor-parallel execution: one thread per rank, each owning its weight shard and KV cache. Every step is
//! sent to all ranks; rank 0 returns the logits.
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, SeqMeta, StepMeta};
use crate::comm::local::LocalComm;
use crate::comm::Communicator;
use crate::loader::CheckpointSource;
use crate::model::Llama;
use crate::{Error, Result};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

/// One step's inputs, shared by all ranks.
#[derive(Debug, Default)]
pub struct StepInput {
    pub tokens: Vec<u32>,
    pub meta: StepMeta,
    /// Token rows whose logits are wanted.
    pub logit_rows: Vec<usize>,
}

impl StepInput {
    /// Appends one sequence's chunk: tokens `ids` at positions `start..`, cached through `table`; with
    /// `all_logits` every row's logits are requested, else only the last row's.
    pub fn push_seq(&mut self, ids: &[u32], start: usize, table: &[u32], all_logits: bool) {
        let bs = self.meta.block_size;
        let token_start = self.tokens.len();
        for (i, &t) in ids.iter().enumerate() {
            let p = start + i;
            self.tokens.push(t);
            self.meta.positions.push(p as u32);
            self.meta.slots.push(table[p / bs] * bs as u32 + (p % bs) as u32);
        }
        let n = ids.len();
        self.meta.seqs.push(SeqMeta { token_start, n_tokens: n, context_len: start + n, block_table: table.to_vec() });
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
    results: Receiver<(usize, Result<Vec<f32>>)>,
    threads: Vec<JoinHandle<()>>,
    pub num_blocks: usize,
    pub block_size: usize,
}

/// KV cache sizing shared by all ranks.
#[derive(Debug, Clone, Copy)]
pub struct KvPlan {
    pub num_blocks: usize,
    pub block_size: usize,
}

impl Runner {
    /// Loads `src` on `tp` CPU ranks (threads with in-process collectives).
    pub fn start_cpu(src: Arc<dyn CheckpointSource>, tp: usize, kv: KvPlan) -> Result<Runner> {
        let ranks = LocalComm::group(tp).into_iter().map(|c| (CpuBackend, c)).collect();
        Self::start(src, ranks, kv)
    }

    /// Spawns one thread per (backend, communicator) pair; each loads its shard and allocates its cache.
    pub fn start<B: Backend, C: Communicator<B> + 'static>(src: Arc<dyn CheckpointSource>, ranks: Vec<(B, C)>, kv: KvPlan) -> Result<Runner> {
        let (res_tx, results) = channel();
        let (ready_tx, ready_rx) = channel::<Result<()>>();
        let mut jobs = Vec::new();
        let mut threads = Vec::new();
        let n = ranks.len();
        for (backend, comm) in ranks {
            let (job_tx, job_rx) = channel::<Arc<StepInput>>();
            jobs.push(job_tx);
            let (src, res_tx, ready_tx) = (src.clone(), res_tx.clone(), ready_tx.clone());
            let rank = comm.rank();
            let t = std::thread::Builder::new()
                .name(format!("llama-rank{rank}"))
                .spawn(move || rank_loop(src, backend, comm, kv, job_rx, res_tx, ready_tx))
                .map_err(|e| Error::Internal(format!("cannot spawn rank thread: {e}")))?;
            threads.push(t);
        }
        drop(ready_tx);
        let mut first_err = None;
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(Error::Internal("a rank thread died while loading".into()))),
            }
        }
        let runner = Runner { jobs, results, threads, num_blocks: kv.num_blocks, block_size: kv.block_size };
        match first_err {
            Some(e) => Err(e), // dropping the runner stops the other ranks
            None => Ok(runner),
        }
    }

    /// Runs one step on every rank; returns rank 0's logits `[logit_rows.len(), V]`.
    pub fn run(&self, input: StepInput) -> Result<Vec<f32>> {
        let input = Arc::new(input);
        for j in &self.jobs {
            j.send(input.clone()).map_err(|_| Error::Internal("rank thread is gone".into()))?;
        }
        let mut out = None;
        let mut err = None;
        for _ in 0..self.jobs.len() {
            match self.results.recv() {
                Ok((0, Ok(v))) => out = Some(v),
                Ok((_, Ok(_))) => {}
                Ok((_, Err(e))) => err = err.or(Some(e)),
                Err(_) => return Err(Error::Internal("rank thread is gone".into())),
            }
        }
        match (err, out) {
            (Some(e), _) => Err(e),
            (None, Some(v)) => Ok(v),
            (None, None) => Err(Error::Internal("rank 0 returned nothing".into())),
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.jobs.clear(); // closing the channels ends the loops
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn rank_loop<B: Backend, C: Communicator<B>>(
    src: Arc<dyn CheckpointSource>,
    backend: B,
    comm: C,
    kv: KvPlan,
    jobs: Receiver<Arc<StepInput>>,
    results: Sender<(usize, Result<Vec<f32>>)>,
    ready: Sender<Result<()>>,
) {
    let rank = comm.rank();
    let setup = Llama::load(src.as_ref(), backend, comm).and_then(|m| {
        let cache = m.new_kv_cache(kv.num_blocks, kv.block_size)?;
        Ok((m, cache))
    });
    drop(src);
    let (model, mut cache) = match setup {
        Ok(x) => {
            let _ = ready.send(Ok(()));
            x
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    while let Ok(job) = jobs.recv() {
        let r = model.forward(&job.tokens, &job.meta, &job.logit_rows, &mut cache);
        let r = if rank == 0 { r } else { r.map(|_| Vec::new()) };
        if results.send((rank, r)).is_err() {
            break;
        }
    }
}
