//! Continuous batching on plain data (vLLM's schedule -> run -> update): which sequences run this step and
//! how many of their tokens, bounded by KV blocks, concurrent sequences and a per-step token budget.
//! It never touches tensors, only token ids, counts and block tables. With prefix caching, a new (or
//! preempted) sequence starts from the longest run of full blocks whose content is already cached, and every
//! block a sequence fills is registered for later ones (see `block_manager`).
use super::block_manager::{BlockKey, BlockManager, block_key};
use std::collections::{HashMap, VecDeque};

/// Scheduler limits.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    /// Tokens processed in one step at most (prefill chunks are cut to fit).
    pub max_batched_tokens: usize,
    /// Share the KV of full prompt blocks already computed (automatic prefix caching).
    pub enable_prefix_caching: bool,
    /// Identity of the model (and adapter) folded into every block key: caches of different models never mix.
    pub cache_salt: u64,
    /// Prompt tokens a step computes at most while it also carries decode rows (which always come first), so
    /// that a long prompt, spread over several steps, delays each running stream by one bounded chunk instead
    /// of its whole prefill. `>= max_batched_tokens` means no separate limit.
    pub mixed_prefill_tokens: usize,
}

/// Prefix-cache lookups since the start: prompt tokens looked up at admission (a preempted sequence is looked
/// up again when it comes back) and how many of them were found cached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    pub queries: u64,
    pub hits: u64,
}

#[derive(Debug, Clone)]
struct SeqState {
    /// Token ids known (prompt + generated).
    tokens: Vec<u32>,
    /// Tokens whose K/V are in the cache.
    num_computed: usize,
    blocks: Vec<u32>,
    /// Content keys of the leading full blocks already registered (or found) in the cache.
    keys: Vec<BlockKey>,
    /// Computes every token itself: no lookup in the prefix cache (its prompt positions' logits are wanted).
    uncached: bool,
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
    stats: PrefixCacheStats,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, bm: BlockManager) -> Self {
        let stats = PrefixCacheStats::default();
        Scheduler { cfg, bm, seqs: HashMap::new(), waiting: VecDeque::new(), running: Vec::new(), stats }
    }

    /// Changes the prompt-token cap of steps with decode rows (the engine derives it from measured step costs).
    pub fn set_mixed_prefill_tokens(&mut self, n: usize) {
        self.cfg.mixed_prefill_tokens = n.max(1);
    }

    /// Queues a new sequence with prompt `tokens`.
    pub fn add(&mut self, id: u64, tokens: &[u32]) {
        self.add_with(id, tokens, false);
    }

    /// Queues a new sequence; with `uncached` its prompt is computed in full even when a prefix of it is
    /// cached (its blocks are still registered for others).
    pub fn add_with(&mut self, id: u64, tokens: &[u32], uncached: bool) {
        let s = SeqState { tokens: tokens.to_vec(), num_computed: 0, blocks: Vec::new(), keys: Vec::new(), uncached };
        self.seqs.insert(id, s);
        self.waiting.push_back(id);
    }

    /// Token `token` was sampled for `id`.
    pub fn append_token(&mut self, id: u64, token: u32) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.tokens.push(token);
        }
    }

    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// Forgets the cached blocks no sequence holds (e.g. before their memory is written outside the plan).
    pub fn clear_prefix_cache(&mut self) {
        self.bm.clear_cached();
    }

    /// Checks that every block's reference count equals the number of sequences holding it, and the block
    /// manager's own invariants. For tests.
    pub fn check(&self) -> std::result::Result<(), String> {
        self.bm.check()?;
        let mut held = vec![0u32; self.bm.num_blocks()];
        for (id, s) in &self.seqs {
            let full = s.num_computed / self.bm.block_size();
            if s.blocks.len() < self.bm.blocks_for(s.num_computed) || s.keys.len() > full {
                let (b, k) = (s.blocks.len(), s.keys.len());
                return Err(format!("sequence {id}: {b} blocks, {k} keys for {} computed tokens", s.num_computed));
            }
            for &b in &s.blocks {
                held[b as usize] += 1;
            }
        }
        match held.iter().enumerate().find(|&(b, &n)| n != self.bm.ref_count(b as u32)) {
            Some((b, n)) => {
                Err(format!("block {b}: held by {n} sequences, reference count {}", self.bm.ref_count(b as u32)))
            }
            None => Ok(()),
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
        s.keys.clear();
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
    }

    /// Records that a plan ran: its chunks are now cached, and the blocks they filled are registered.
    pub fn update(&mut self, plan: &Plan) {
        let bs = self.bm.block_size();
        for it in &plan.items {
            if let Some(s) = self.seqs.get_mut(&it.id) {
                s.num_computed = it.start + it.len;
                if !self.cfg.enable_prefix_caching {
                    continue;
                }
                while s.keys.len() < s.num_computed / bs {
                    let i = s.keys.len();
                    let key = block_key(self.cfg.cache_salt, s.keys.last().copied(), &s.tokens[i * bs..(i + 1) * bs]);
                    self.bm.register(s.blocks[i], key);
                    s.keys.push(key);
                }
            }
        }
    }

    /// The cached blocks holding the longest prefix of `s`'s tokens (full blocks only, leaving at least one
    /// token to compute so that the last position's logits exist), with their keys.
    fn cached_prefix(&self, s: &SeqState) -> (Vec<u32>, Vec<BlockKey>) {
        let bs = self.bm.block_size();
        let (mut blocks, mut keys) = (Vec::new(), Vec::new());
        if !self.cfg.enable_prefix_caching || s.uncached {
            return (blocks, keys);
        }
        for chunk in s.tokens[..s.tokens.len().saturating_sub(1)].chunks_exact(bs) {
            let key = block_key(self.cfg.cache_salt, keys.last().copied(), chunk);
            let Some(b) = self.bm.lookup(key) else { break };
            blocks.push(b);
            keys.push(key);
        }
        (blocks, keys)
    }

    /// Picks this step's work: running sequences first, decode rows (one token left) before unfinished prefills,
    /// preempting the newest when blocks run out, then waiting ones in arrival order while limits allow. Prompt
    /// tokens in a step with decode rows are capped by `mixed_prefill_tokens`.
    pub fn schedule(&mut self) -> Plan {
        let mut plan = Plan::default();
        let total_blocks = self.bm.num_blocks();
        let left = |s: &SeqState| s.tokens.len() - s.num_computed;
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
            if self.bm.blocks_for(s.tokens.len()) > total_blocks {
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
            if self.bm.shortfall(&s.blocks, target) > self.bm.num_available() {
                // Free the newest running sequence (possibly this one) and retry.
                let victim = *self.running.last().expect("non-empty");
                self.preempt(victim);
                plan.preempted.push(victim);
                plan.items.retain(|it| it.id != victim);
                continue;
            }
            let s = self.seqs.get_mut(&id).expect("known");
            self.bm.grow(&mut s.blocks, target);
            let sample = target == s.tokens.len();
            plan.items.push(PlanItem { id, start: s.num_computed, len, block_table: s.blocks.clone(), sample });
            next = order.next();
        }
        while self.running.len() < self.cfg.max_num_seqs {
            let budget = self.room(&plan).min(self.prefill_room(&plan));
            if budget == 0 {
                break;
            }
            let Some(&id) = self.waiting.front() else { break };
            let s = &self.seqs[&id];
            if self.bm.blocks_for(s.tokens.len()) > total_blocks {
                self.waiting.pop_front();
                plan.too_large.push(id);
                continue;
            }
            // Admission by the blocks still needed: the cached prefix is taken, not allocated (though taking
            // a cached block nobody holds makes it unavailable for allocation).
            let (hit, keys) = self.cached_prefix(s);
            let start = hit.len() * self.bm.block_size();
            let len = (s.tokens.len() - start).min(budget);
            let target = start + len;
            let revived = hit.iter().filter(|&&b| self.bm.ref_count(b) == 0).count();
            if self.bm.blocks_for(target) - hit.len() + revived > self.bm.num_available() {
                break; // FIFO: nobody jumps the queue
            }
            if self.cfg.enable_prefix_caching {
                self.stats.queries += s.tokens.len() as u64;
                self.stats.hits += start as u64;
            }
            let s = self.seqs.get_mut(&id).expect("waiting ids are known");
            for &b in &hit {
                self.bm.take(b);
            }
            (s.blocks, s.keys, s.num_computed) = (hit, keys, start);
            let grown = self.bm.grow(&mut s.blocks, target);
            debug_assert!(grown, "availability checked above");
            self.waiting.pop_front();
            self.running.push(id);
            let sample = target == s.tokens.len();
            plan.items.push(PlanItem { id, start, len, block_table: s.blocks.clone(), sample });
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
