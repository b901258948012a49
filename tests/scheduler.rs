//! Continuous-batching policy on plain data: admission limits, chunked prefill, preemption, block accounting.
//! The policy tests run with prefix caching off; `prefix_cache.rs` tests the cache.
use triton_llama::engine::block_manager::BlockManager;
use triton_llama::engine::scheduler::{Plan, Scheduler, SchedulerConfig};

fn sched(num_blocks: usize, max_num_seqs: usize, max_batched_tokens: usize) -> Scheduler {
    let cfg = SchedulerConfig {
        max_num_seqs,
        max_batched_tokens,
        enable_prefix_caching: false,
        cache_salt: 0,
        mixed_prefill_tokens: max_batched_tokens,
    };
    Scheduler::new(cfg, BlockManager::new(num_blocks, 4))
}

/// `n` prompt tokens for sequence `id` (distinct per id).
fn toks(id: u64, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| id as u32 * 1000 + i).collect()
}

/// Pretends the model ran the plan and sampled a token for every sampling item.
fn run(s: &mut Scheduler, plan: &Plan) {
    s.update(plan);
    for it in plan.items.iter().filter(|i| i.sample) {
        s.append_token(it.id, 7);
    }
}

#[test]
fn admits_up_to_max_num_seqs_then_queues() {
    let mut s = sched(100, 2, 1000);
    for id in 0..3 {
        s.add(id, &toks(id, 5));
    }
    let p = s.schedule();
    assert_eq!(p.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![0, 1]);
    assert!(p.items.iter().all(|i| i.start == 0 && i.len == 5 && i.sample));
    assert_eq!((s.num_running(), s.num_waiting()), (2, 1));
    run(&mut s, &p);
    // Next step: two decodes of one token; the third waits until a slot frees.
    let p = s.schedule();
    assert_eq!(p.items.iter().map(|i| (i.id, i.start, i.len)).collect::<Vec<_>>(), vec![(0, 5, 1), (1, 5, 1)]);
    s.finish(0);
    run(&mut s, &p);
    let p = s.schedule();
    assert_eq!(p.items.iter().map(|i| (i.id, i.start, i.len)).collect::<Vec<_>>(), vec![(1, 6, 1), (2, 0, 5)]);
}

#[test]
fn long_prompt_is_prefilled_in_chunks_within_the_token_budget() {
    let mut s = sched(100, 4, 8);
    s.add(7, &toks(7, 20));
    let mut starts = Vec::new();
    loop {
        let p = s.schedule();
        let it = &p.items[0];
        assert!(p.num_tokens() <= 8);
        starts.push((it.start, it.len, it.sample));
        s.update(&p);
        if it.sample {
            break;
        }
    }
    assert_eq!(starts, vec![(0, 8, false), (8, 8, false), (16, 4, true)]);
}

#[test]
fn decode_and_new_prefill_share_a_step() {
    let mut s = sched(100, 4, 64);
    s.add(1, &toks(1, 3));
    let p = s.schedule();
    run(&mut s, &p);
    s.add(2, &toks(2, 6));
    let p = s.schedule();
    assert_eq!(
        p.items.iter().map(|i| (i.id, i.start, i.len, i.sample)).collect::<Vec<_>>(),
        vec![(1, 3, 1, true), (2, 0, 6, true)]
    );
}

#[test]
fn block_tables_grow_one_block_per_block_size_tokens() {
    let mut s = sched(100, 1, 64);
    s.add(1, &toks(1, 4)); // exactly one block of 4
    let p = s.schedule();
    assert_eq!(p.items[0].block_table.len(), 1);
    run(&mut s, &p);
    let p = s.schedule(); // token 5 needs a second block
    assert_eq!(p.items[0].block_table.len(), 2);
    assert_eq!(s.blocks().num_used(), 2);
    s.finish(1);
    assert_eq!(s.blocks().num_used(), 0);
}

#[test]
fn out_of_blocks_preempts_the_newest_and_recomputes_it_later() {
    // 4 blocks of 4 tokens. Two sequences of 8 tokens take all of them.
    let mut s = sched(4, 4, 64);
    s.add(1, &toks(1, 8));
    s.add(2, &toks(2, 8));
    let p = s.schedule();
    assert_eq!(p.items.len(), 2);
    run(&mut s, &p);
    assert_eq!(s.blocks().num_free(), 0);
    // Both need a third block for token 9: sequence 2 (newest) is preempted, 1 continues.
    let p = s.schedule();
    assert_eq!(p.preempted, vec![2]);
    assert_eq!(p.items.iter().map(|i| (i.id, i.start, i.len)).collect::<Vec<_>>(), vec![(1, 8, 1)]);
    run(&mut s, &p);
    assert_eq!(s.num_waiting(), 1);
    s.finish(1);
    // Sequence 2 comes back and recomputes its 9 known tokens (8 prompt + 1 sampled) from scratch.
    let p = s.schedule();
    assert_eq!(p.items.iter().map(|i| (i.id, i.start, i.len, i.sample)).collect::<Vec<_>>(), vec![(2, 0, 9, true)]);
}

#[test]
fn a_sequence_larger_than_the_whole_cache_is_reported_not_scheduled() {
    let mut s = sched(2, 4, 64);
    s.add(1, &toks(1, 9)); // needs 3 blocks of 4
    s.add(2, &toks(2, 3));
    let p = s.schedule();
    assert_eq!(p.too_large, vec![1]);
    assert_eq!(p.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![2]);
    s.finish(1);
    assert!(!s.contains(1));
}

#[test]
fn fifo_admission_nobody_jumps_the_queue() {
    let mut s = sched(3, 4, 64);
    s.add(1, &toks(1, 8)); // 2 blocks
    s.add(2, &toks(2, 8)); // 2 blocks: does not fit next to 1
    s.add(3, &toks(3, 2)); // would fit, but must wait behind 2
    let p = s.schedule();
    assert_eq!(p.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![1]);
    assert_eq!(s.num_waiting(), 2);
}

#[test]
fn aborting_frees_blocks_and_all_blocks_return_when_idle() {
    let mut s = sched(50, 8, 256);
    for id in 0..8 {
        s.add(id, &toks(id, 3 + id as usize * 5));
    }
    for step in 0..30 {
        let p = s.schedule();
        run(&mut s, &p);
        if step == 3 {
            s.finish(2);
            s.finish(5);
        }
        for it in &p.items {
            if it.start + it.len > 20 {
                s.finish(it.id);
            }
        }
    }
    while s.has_work() {
        let p = s.schedule();
        run(&mut s, &p);
        for it in &p.items {
            s.finish(it.id);
        }
    }
    assert_eq!(s.blocks().num_used(), 0);
}

fn sched_mixed(max_batched_tokens: usize, mixed_prefill_tokens: usize) -> Scheduler {
    let cfg = SchedulerConfig {
        max_num_seqs: 8,
        max_batched_tokens,
        mixed_prefill_tokens,
        enable_prefix_caching: false,
        cache_salt: 0,
    };
    Scheduler::new(cfg, BlockManager::new(200, 4))
}

/// While streams decode, a long prompt gets at most `mixed_prefill_tokens` per step, after every decode row;
/// alone, it gets the whole `max_batched_tokens`.
#[test]
fn long_prompt_is_spread_over_steps_while_others_decode() {
    let mut s = sched_mixed(64, 5);
    for id in [1, 2] {
        s.add(id, &toks(id, 3));
    }
    let p = s.schedule();
    run(&mut s, &p);
    s.add(9, &toks(9, 23));
    let mut chunks = Vec::new();
    loop {
        let p = s.schedule();
        let items: Vec<(u64, usize)> = p.items.iter().map(|i| (i.id, i.len)).collect();
        assert_eq!(&items[..2], &[(1, 1), (2, 1)], "decode rows first, every step");
        assert_eq!(items.len(), 3);
        chunks.push(items[2]);
        run(&mut s, &p);
        if p.items[2].sample {
            break;
        }
    }
    assert_eq!(chunks, vec![(9, 5), (9, 5), (9, 5), (9, 5), (9, 3)]);
    // Once the others are gone, a prompt is not held back.
    s.finish(1);
    s.finish(2);
    s.finish(9);
    s.add(10, &toks(10, 40));
    let p = s.schedule();
    assert_eq!(p.items.iter().map(|i| (i.id, i.len)).collect::<Vec<_>>(), vec![(10, 40)]);
}

/// The mixed budget follows measured costs: (slowdown - 1) decode steps' worth of prompt tokens, within bounds,
/// the initial value until both costs are known.
#[test]
fn step_cost_budget_is_derived_from_measured_step_times() {
    use triton_llama::engine::step_cost::StepCost;
    let mut c = StepCost::new(2.0, 32, 8, 2048);
    assert_eq!(c.budget(), 32);
    c.record(50.0, 2, 0); // decode-only step: 50 ms
    assert_eq!(c.budget(), 32, "no prompt-token cost known yet");
    c.record(50.0 + 64.0 * 2.5, 2, 64); // a mixed step: 2.5 ms per prompt token on top of the decode rows
    assert_eq!((c.decode_ms(), c.token_ms()), (Some(50.0), Some(2.5)));
    assert_eq!(c.budget(), 20); // (2 - 1) * 50 / 2.5
    let mut slow = StepCost::new(2.0, 32, 8, 2048);
    slow.record(1000.0, 0, 10); // prompt alone: the whole step is charged to its tokens (100 ms each)
    slow.record(50.0, 1, 0);
    assert_eq!(slow.budget(), 8, "never below the floor");
    let mut fast = StepCost::new(3.0, 32, 8, 100);
    fast.record(100.0, 4, 0);
    fast.record(101.0, 4, 100);
    assert_eq!(fast.budget(), 100, "never above max_batched_tokens");
    fast.record(f64::NAN, 1, 0);
    assert_eq!(fast.decode_ms(), Some(100.0), "a bad sample is ignored");
}
