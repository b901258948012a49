//! Prefix caching on plain data: sharing of full blocks, copy-free reuse, at least one token computed,
//! generated tokens cached too, LRU eviction, reference counts after preemption and cancellation, and a
//! randomized run of admit/step/finish/cancel/preempt events with no block leaked and every shared block
//! holding the tokens its readers expect.
use std::collections::HashMap;
use triton_llama::engine::block_manager::BlockManager;
use triton_llama::engine::scheduler::{Plan, PrefixCacheStats, Scheduler, SchedulerConfig};

const BS: usize = 4;

fn sched(num_blocks: usize, max_batched_tokens: usize) -> Scheduler {
    let cfg = SchedulerConfig {
        max_num_seqs: 8,
        max_batched_tokens,
        enable_prefix_caching: true,
        cache_salt: 1,
        mixed_prefill_tokens: max_batched_tokens,
    };
    Scheduler::new(cfg, BlockManager::new(num_blocks, BS))
}

fn seq(range: std::ops::Range<u32>) -> Vec<u32> {
    range.collect()
}

/// Runs steps until nothing is left to prefill (every running sequence has sampled), sampling token 99.
fn prefill(s: &mut Scheduler) -> Vec<Plan> {
    let mut plans = Vec::new();
    loop {
        let p = s.schedule();
        s.update(&p);
        for it in p.items.iter().filter(|i| i.sample) {
            s.append_token(it.id, 99);
        }
        let done = p.items.iter().all(|i| i.sample);
        plans.push(p);
        s.check().unwrap();
        if done {
            return plans;
        }
    }
}

fn item(p: &Plan, id: u64) -> (usize, usize, Vec<u32>) {
    let it = p.items.iter().find(|i| i.id == id).expect("planned");
    (it.start, it.len, it.block_table.clone())
}

#[test]
fn a_second_prompt_takes_the_full_blocks_of_the_common_prefix() {
    let mut s = sched(20, 64);
    s.add(1, &seq(0..10)); // blocks [0..4) [4..8) full, [8..10) partial
    let a = item(&prefill(&mut s)[0], 1).2;
    let mut b_prompt = seq(0..8);
    b_prompt.extend([50, 51, 52]);
    s.add(2, &b_prompt);
    let p = s.schedule();
    let (start, len, table) = item(&p, 2);
    assert_eq!((start, len), (8, 3), "two cached blocks, three tokens to compute");
    assert_eq!(&table[..2], &a[..2], "the shared blocks are the same physical blocks (no copy)");
    assert!(!a.contains(&table[2]), "the partial block is private");
    assert_eq!((s.blocks().ref_count(a[0]), s.blocks().ref_count(a[1]), s.blocks().ref_count(a[2])), (2, 2, 1));
    assert_eq!(s.prefix_cache_stats(), PrefixCacheStats { queries: 10 + 11, hits: 8 });
    s.check().unwrap();
}

#[test]
fn at_least_one_token_is_computed_and_partial_blocks_are_never_shared() {
    let mut s = sched(20, 64);
    s.add(1, &seq(0..8));
    prefill(&mut s);
    // The same 8 tokens: both blocks are cached, but the last one is recomputed so its logits exist.
    s.add(2, &seq(0..8));
    let (start, len, _) = item(&s.schedule(), 2);
    assert_eq!((start, len), (4, 4));
    // 6 tokens: one full block matches; the 2-token tail cannot be shared.
    let mut s = sched(20, 64);
    s.add(1, &seq(0..6));
    prefill(&mut s);
    s.add(2, &seq(0..6));
    assert_eq!(item(&s.schedule(), 2).0, 4);
    // A block is only a hit if everything before it matches too (the key is chained).
    s.add(3, &[100, 1, 2, 3, 4, 5, 6]);
    assert_eq!(item(&s.schedule(), 3).0, 0);
    s.check().unwrap();
}

#[test]
fn generated_tokens_fill_blocks_that_a_follow_up_prompt_reuses() {
    // The chat pattern: turn 2's prompt is turn 1's prompt + answer + a new question.
    let mut s = sched(20, 64);
    s.add(1, &seq(0..3));
    let mut known = seq(0..3);
    for _ in 0..6 {
        let p = s.schedule();
        s.update(&p);
        s.append_token(1, 60 + known.len() as u32);
        known.push(60 + known.len() as u32);
    }
    // 9 tokens known, 8 computed: two full blocks registered, prompt and answer alike.
    s.finish(1);
    assert_eq!((s.blocks().num_used(), s.blocks().num_cached()), (0, 2));
    known.extend([7, 7, 7]);
    s.add(2, &known);
    assert_eq!(item(&s.schedule(), 2).0, 8);
    s.check().unwrap();
}

#[test]
fn sequences_computing_the_same_prefix_at_once_share_later_ones_only() {
    // Neither sees the other's blocks before they are computed; the first to register keeps the index entry.
    let mut s = sched(20, 64);
    s.add(1, &seq(0..9));
    s.add(2, &seq(0..9));
    let p = s.schedule();
    assert_eq!((item(&p, 1).0, item(&p, 2).0), (0, 0));
    s.update(&p);
    s.add(3, &seq(0..9));
    let (start, _, table) = item(&s.schedule(), 3);
    assert_eq!((start, &table[..2]), (8, &item(&p, 1).2[..2]));
    s.check().unwrap();
}

#[test]
fn cached_blocks_are_evicted_least_recently_released_first() {
    // 6 blocks. A and B each leave 2 cached blocks (A released first); C needs 4 new blocks: 2 free + A's 2.
    let mut s = sched(6, 64);
    s.add(1, &seq(0..9)); // 3 blocks, 2 full
    prefill(&mut s);
    s.finish(1);
    s.add(2, &seq(100..109));
    prefill(&mut s);
    s.finish(2);
    assert_eq!((s.blocks().num_cached(), s.blocks().num_free()), (4, 2));
    s.add(3, &seq(200..215));
    prefill(&mut s);
    assert_eq!((s.blocks().num_used(), s.blocks().num_cached(), s.blocks().num_free()), (4, 2, 0));
    // A's prefix was evicted, B's was not.
    s.finish(3);
    s.add(5, &seq(100..109));
    s.add(4, &seq(0..9));
    let p = s.schedule();
    assert_eq!((item(&p, 4).0, item(&p, 5).0), (0, 8));
    s.check().unwrap();
}

#[test]
fn eviction_takes_a_prefix_from_its_end() {
    // A sequence's blocks are released tail first, so its first blocks (the most shared) stay longest.
    let mut s = sched(4, 64);
    s.add(1, &seq(0..13)); // 4 blocks, 3 full
    prefill(&mut s);
    s.finish(1);
    assert_eq!((s.blocks().num_cached(), s.blocks().num_free()), (3, 1));
    s.add(2, &seq(100..108)); // 2 new blocks: the free one and block 3 of A's prefix
    prefill(&mut s);
    s.finish(2);
    s.add(3, &seq(0..13));
    assert_eq!(item(&s.schedule(), 3).0, 8, "A's first two blocks are still cached");
    s.check().unwrap();
}

#[test]
fn admission_counts_only_the_blocks_still_needed() {
    // 3 blocks: A's 2 full blocks stay cached; B (same 8 tokens + 3) needs 3 blocks in all, only 1 new.
    let mut s = sched(3, 64);
    s.add(1, &seq(0..8));
    prefill(&mut s);
    s.add(2, &seq(0..8).into_iter().chain([5, 5, 5]).collect::<Vec<_>>());
    let p = s.schedule();
    assert!(p.items.iter().all(|i| i.id != 2), "A's decode took the last block; B needs one more");
    s.finish(1);
    let (start, len, _) = item(&s.schedule(), 2);
    assert_eq!((start, len), (8, 3));
    assert_eq!(s.blocks().num_used(), 3);
    s.check().unwrap();
}

#[test]
fn preemption_and_cancellation_only_drop_references() {
    let mut s = sched(5, 64);
    s.add(1, &seq(0..8));
    let a = item(&prefill(&mut s)[0], 1).2;
    s.add(2, &seq(0..8).into_iter().chain([5]).collect::<Vec<_>>());
    prefill(&mut s);
    assert_eq!(s.blocks().ref_count(a[0]), 2);
    // Cancelling B drops its references; A's blocks stay held by A.
    s.finish(2);
    assert_eq!((s.blocks().ref_count(a[0]), s.blocks().ref_count(a[1])), (1, 1));
    s.check().unwrap();
    // C and D grow until the pool runs out: D (newest) is preempted, its blocks cached, and on its return
    // it starts from the cached prefix instead of from scratch.
    s.add(4, &seq(0..8).into_iter().chain([6, 6]).collect::<Vec<_>>());
    s.add(3, &seq(300..307));
    let mut preempted = false;
    for _ in 0..6 {
        let p = s.schedule();
        preempted |= p.preempted.contains(&4);
        s.update(&p);
        for it in p.items.iter().filter(|i| i.sample) {
            s.append_token(it.id, 1);
        }
        s.check().unwrap();
    }
    assert!(preempted, "the pool of 5 blocks cannot hold A, C and D growing");
    s.finish(1);
    s.finish(3);
    let p = s.schedule();
    let (start, _, _) = item(&p, 4);
    assert!(start >= 8, "D resumes from its cached prefix, start {start}");
    s.finish(4);
    assert_eq!(s.blocks().num_used(), 0);
    s.check().unwrap();
}

#[test]
fn disabled_cache_never_shares() {
    let cfg = SchedulerConfig {
        max_num_seqs: 8,
        max_batched_tokens: 64,
        enable_prefix_caching: false,
        cache_salt: 0,
        mixed_prefill_tokens: 64,
    };
    let mut s = Scheduler::new(cfg, BlockManager::new(10, BS));
    s.add(1, &seq(0..9));
    prefill(&mut s);
    s.finish(1);
    s.add(2, &seq(0..9));
    assert_eq!(item(&s.schedule(), 2).0, 0);
    assert_eq!((s.blocks().num_cached(), s.prefix_cache_stats()), (0, PrefixCacheStats::default()));
}

/// xorshift64*: a tiny deterministic PRNG (no crate needed for a handful of random choices).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random admit / step / finish / cancel events (preemption comes from a small pool) over prompts built from a
/// few shared prefixes. A simulated KV store records which (position, token) each slot holds; every step
/// checks that each sequence reads its own tokens from every block before `start`, that no write goes to a
/// shared or indexed block, and that reference counts equal the holders. At the end, nothing is leaked.
#[test]
#[allow(clippy::needless_range_loop)] // positions index the block table and the token list
fn random_events_leak_nothing_and_shared_blocks_hold_the_right_tokens() {
    let mut total_hits = 0;
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let num_blocks = 6 + rng.below(20);
        let mut s = sched(num_blocks, 4 + rng.below(30));
        let prefixes: Vec<Vec<u32>> =
            (0..3).map(|p| (0..rng.below(14) as u32).map(|i| p * 100 + i).collect()).collect();
        let mut tokens: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut kv: HashMap<u32, Vec<Option<(usize, u32)>>> = HashMap::new();
        let mut next_id = 0u64;
        for _ in 0..300 {
            match rng.below(10) {
                0..=2 if tokens.len() < 12 => {
                    let mut t = prefixes[rng.below(3)].clone();
                    t.extend((0..1 + rng.below(6)).map(|_| 1000 + rng.below(3) as u32));
                    s.add(next_id, &t);
                    tokens.insert(next_id, t);
                    next_id += 1;
                }
                3 if !tokens.is_empty() => {
                    // Finish or cancel (the scheduler sees both the same way), running or waiting.
                    let mut ids: Vec<u64> = tokens.keys().copied().collect();
                    ids.sort();
                    let id = ids[rng.below(ids.len())];
                    s.finish(id);
                    tokens.remove(&id);
                }
                _ => {
                    let p = s.schedule();
                    for id in &p.too_large {
                        s.finish(*id);
                        tokens.remove(id);
                    }
                    for it in &p.items {
                        let t = &tokens[&it.id];
                        for pos in 0..it.start {
                            let b = it.block_table[pos / BS];
                            assert_eq!(
                                kv[&b][pos % BS],
                                Some((pos, t[pos])),
                                "seed {seed}: seq {} reads a wrong slot",
                                it.id
                            );
                        }
                        for pos in it.start..it.start + it.len {
                            let b = it.block_table[pos / BS];
                            assert_eq!(s.blocks().ref_count(b), 1, "seed {seed}: write into a shared block");
                            assert!(!s.blocks().is_indexed(b), "seed {seed}: write into a cached block");
                            kv.entry(b).or_insert_with(|| vec![None; BS])[pos % BS] = Some((pos, t[pos]));
                        }
                    }
                    s.update(&p);
                    for it in p.items.iter().filter(|i| i.sample) {
                        let tok = 1000 + rng.below(3) as u32;
                        s.append_token(it.id, tok);
                        let t = tokens.get_mut(&it.id).unwrap();
                        t.push(tok);
                        if t.len() > 40 {
                            s.finish(it.id);
                            tokens.remove(&it.id);
                        }
                    }
                }
            }
            s.check().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let b = s.blocks();
            assert_eq!(b.num_used() + b.num_cached() + b.num_free(), num_blocks);
        }
        for id in tokens.keys() {
            s.finish(*id);
        }
        let b = s.blocks();
        assert_eq!((b.num_used(), b.num_cached() + b.num_free()), (0, num_blocks), "seed {seed}: blocks leaked");
        s.check().unwrap();
        total_hits += s.prefix_cache_stats().hits;
    }
    assert!(total_hits > 0, "the random prompts share prefixes, so some must hit");
}
