//! Continuous batching on plain data (vLLM's schedule -> run -> update): which sequences run this step and
//! how many of their tokens, bounded by KV blocks, concurrent sequences and a per-step token budget.
//! It never touches tensors or token values, only counts and block tables.
use super::block_manager::BlockManager;
use std::collections::{HashMap, VecDeque};

/// Scheduler limits.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    /// Tokens processed in one step at most (prefill chunks are cut to fit).
    pub max_batched_tokens: usize,
    /// Prompt tokens a step computes at most while it also carries decode rows (which always come first), so
    /// that a long prompt, spread over several steps, delays each running stream by one bounded chunk instead
    /// of its whole prefill. `>= max_batched_tokens` means no separate limit.
    pub mixed_prefill_tokens: usize,
}

#[derive(Debug, Clone)]
struct SeqState {
    /// Tokens known (prompt + generated).
    num_tokens: usize,
    /// Tokens whose K/V are in the cache.
    num_computed: usize,
    blocks: Vec<u32>,
}

/// One sequence's share of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanItem {
    pub id: u64,
    /// First token to compute (== tokens already cached).
    pub start: usize,
    pub len: usize,
    pub block_table: Vec<u32>,
    /// The chunk reaches the last known token, so a new token is sampled from its last row.
    pub sample: bool,
}

/// What to run this step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub items: Vec<PlanItem>,
    /// Sequences pushed back to waiting to free blocks; their cache is gone and they recompute later.
    pub preempted: Vec<u64>,
    /// Sequences that can never fit in the whole cache; the engine must finish them.
    pub too_large: Vec<u64>,
}

impl Plan {
    pub fn num_tokens(&self) -> usize {
        self.items.iter().map(|i| i.len).sum()
    }
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    bm: BlockManager,
    seqs: HashMap<u64, SeqState>,
    waiting: VecDeque<u64>,
    /// In admission order; the newest is preempted first.
    running: Vec<u64>,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, bm: BlockManager) -> Self {
        Scheduler { cfg, bm, seqs: HashMap::new(), waiting: VecDeque::new(), running: Vec::new() }
    }

    /// Changes the prompt-token cap of steps with decode rows (the engine derives it from measured step costs).
    pub fn set_mixed_prefill_tokens(&mut self, n: usize) {
        self.cfg.mixed_prefill_tokens = n.max(1);
    }

    /// Queues a new sequence of `num_tokens` prompt tokens.
    pub fn add(&mut self, id: u64, num_tokens: usize) {
        self.seqs.insert(id, SeqState { num_tokens, num_computed: 0, blocks: Vec::new() });
        self.waiting.push_back(id);
    }

    /// A token was sampled for `id`.
    pub fn append_token(&mut self, id: u64) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.num_tokens += 1;
        }
    }

    /// Removes a sequence (finished or aborted) and frees its blocks. Unknown ids are ignored.
    pub fn finish(&mut self, id: u64) {
        if let Some(mut s) = self.seqs.remove(&id) {
            self.bm.release(&mut s.blocks);
        }
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }
    pub fn blocks(&self) -> &BlockManager {
        &self.bm
    }
    pub fn contains(&self, id: u64) -> bool {
        self.seqs.contains_key(&id)
    }

    fn preempt(&mut self, id: u64) {
        let s = self.seqs.get_mut(&id).expect("running ids are known");
        self.bm.release(&mut s.blocks);
        s.num_computed = 0;
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
    }

    /// Records that a plan ran: its chunks are now cached.
    pub fn update(&mut self, plan: &Plan) {
        for it in &plan.items {
            if let Some(s) = self.seqs.get_mut(&it.id) {
                s.num_computed = it.start + it.len;
            }
        }
    }

    /// Picks this step's work: running sequences first, decode rows (one token left) before unfinished prefills,
    /// preempting the newest when blocks run out, then waiting ones in arrival order while limits allow. Prompt
    /// tokens in a step with decode rows are capped by `mixed_prefill_tokens`.
    pub fn schedule(&mut self) -> Plan {
        let mut plan = Plan::default();
        let total_blocks = self.bm.num_blocks();
        let left = |s: &SeqState| s.num_tokens - s.num_computed;
        let (decode, prefill): (Vec<u64>, Vec<u64>) = self.running.iter().partition(|id| left(&self.seqs[id]) <= 1);
        let mut order = decode.into_iter().chain(prefill);
        let mut next = order.next();
        while let Some(id) = next {
            let room = self.room(&plan);
            if room == 0 {
                break;
            }
            if !self.running.contains(&id) {
                next = order.next(); // preempted as a victim earlier in this step
                continue;
            }
            let s = &self.seqs[&id];
            if self.bm.blocks_for(s.num_tokens) > total_blocks {
                plan.too_large.push(id);
                self.running.retain(|&r| r != id);
                next = order.next();
                continue;
            }
            let len = left(s).min(if left(s) > 1 { room.min(self.prefill_room(&plan)) } else { room });
            if len == 0 {
                next = order.next();
                continue;
            }
            let target = s.num_computed + len;
            if self.bm.shortfall(&s.blocks, target) > self.bm.num_free() {
                // Free the newest running sequence (possibly this one) and retry.
                let victim = *self.running.last().expect("non-empty");
                self.preempt(victim);
                plan.preempted.push(victim);
                plan.items.retain(|it| it.id != victim);
                continue;
            }
            let s = self.seqs.get_mut(&id).expect("known");
            self.bm.grow(&mut s.blocks, target);
            plan.items.push(PlanItem { id, start: s.num_computed, len, block_table: s.blocks.clone(), sample: target == s.num_tokens });
            next = order.next();
        }
        while self.running.len() < self.cfg.max_num_seqs {
            let budget = self.room(&plan).min(self.prefill_room(&plan));
            if budget == 0 {
                break;
            }
            let Some(&id) = self.waiting.front() else { break };
            let s = self.seqs.get_mut(&id).expect("waiting ids are known");
            if self.bm.blocks_for(s.num_tokens) > total_blocks {
                self.waiting.pop_front();
                plan.too_large.push(id);
                continue;
            }
            let len = (s.num_tokens - s.num_computed).min(budget);
            let target = s.num_computed + len;
            if !self.bm.grow(&mut s.blocks, target) {
                break; // FIFO: nobody jumps the queue
            }
            self.waiting.pop_front();
            self.running.push(id);
            plan.items.push(PlanItem { id, start: s.num_computed, len, block_table: s.blocks.clone(), sample: target == s.num_tokens });
        }
        plan
    }

    /// Tokens the step can still take (budget taken by items later preempted is given back).
    fn room(&self, plan: &Plan) -> usize {
        self.cfg.max_batched_tokens.saturating_sub(plan.num_tokens())
    }

    /// Prompt tokens the step can still take: unlimited (`room` decides) until it carries a decode row.
    fn prefill_room(&self, plan: &Plan) -> usize {
        // A one-token item that samples costs what a decode row costs, whether or not it ends a prompt.
        let is_decode = |it: &PlanItem| it.len == 1 && it.sample;
        if !plan.items.iter().any(is_decode) {
            return usize::MAX;
        }
        let prefill: usize = plan.items.iter().filter(|it| !is_decode(it)).map(|it| it.len).sum();
        self.cfg.mixed_prefill_tokens.saturating_sub(prefill)
    }
}
