//! Tensor parallelism that cannot hang, on the in-process communicator (TP=2 on threads): a rank that fails
//! mid-step (an error or a panic inside a collective's step) fails that step alone, the other rank is freed from
//! its collective, and the next step runs and equals a healthy runner's; a rank that stalls mid-step stops the
//! runner at the step timeout with an error naming it, and every later step fails at once; a rank whose device is
//! unusable (EngineStopped) stops the runner the same way.
mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};
use triton_llama::backend::cpu::CpuBackend;
use triton_llama::comm::local::LocalComm;
use triton_llama::comm::{Communicator, GroupControl};
use triton_llama::engine::runner::{KvPlan, Runner, StepInput};
use triton_llama::{Error, Result, loader};

#[derive(Clone, Copy)]
enum Fault {
    Fail,
    Panic,
    Stall(Duration),
    /// The rank's device is unusable (a sticky CUDA error): EngineStopped.
    Dead,
}

/// LocalComm whose rank 1 misbehaves at its `at`-th all-reduce (once).
struct Faulty {
    inner: LocalComm,
    fault: Fault,
    at: usize,
    calls: AtomicUsize,
}

impl Communicator<CpuBackend> for Faulty {
    fn rank(&self) -> usize {
        Communicator::<CpuBackend>::rank(&self.inner)
    }
    fn world_size(&self) -> usize {
        Communicator::<CpuBackend>::world_size(&self.inner)
    }
    fn all_reduce_sum(&self, b: &CpuBackend, buf: &mut Vec<f32>, n: usize) -> Result<()> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if Communicator::<CpuBackend>::rank(self) == 1 && call == self.at {
            match self.fault {
                Fault::Fail => return Err(Error::Internal("injected failure".into())),
                Fault::Panic => panic!("injected panic"),
                Fault::Stall(d) => std::thread::sleep(d),
                Fault::Dead => return Err(Error::EngineStopped("injected: the device is unusable".into())),
            }
        }
        self.inner.all_reduce_sum(b, buf, n)
    }
    fn all_gather(&self, b: &CpuBackend, buf: &Vec<f32>, n: usize) -> Result<Vec<f32>> {
        self.inner.all_gather(b, buf, n)
    }
    fn control(&self) -> Option<Arc<dyn GroupControl>> {
        Communicator::<CpuBackend>::control(&self.inner)
    }
}

const CKPT: &str = "models/mha_f32/hf";
const IDS: [u32; 6] = [1, 17, 42, 9, 300, 5];

fn faulty_runner(fault: Fault) -> Runner {
    let src = Arc::from(loader::open(&fixture(CKPT)).unwrap());
    let ranks = LocalComm::group(2)
        .into_iter()
        .map(|inner| (CpuBackend, Faulty { inner, fault, at: 3, calls: AtomicUsize::new(0) }))
        .collect();
    Runner::start(src, ranks, KvPlan { num_blocks: 64, block_size: 4 }).unwrap()
}

fn prefill() -> StepInput {
    let mut input = StepInput::default();
    input.meta.block_size = 4;
    input.push_seq(&IDS, 0, &[0, 1], true);
    input
}

/// `f` on another thread, failing the test (instead of hanging it) if it takes more than 60 s.
fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("hung: a failed rank left the other waiting")
}

#[test]
fn a_failing_rank_fails_its_step_alone() {
    let want = prompt_logits(&runner(CKPT, 2), &IDS);
    for fault in [Fault::Fail, Fault::Panic] {
        let (first, second) = within_a_minute(move || {
            let r = faulty_runner(fault);
            let first = r.run(prefill()).map(|o| o.logits);
            (first.map_err(|e| e.to_string()), r.run(prefill()).map(|o| o.logits).map_err(|e| e.to_string()))
        });
        let e = first.unwrap_err();
        assert!(e.contains("injected") || e.contains("aborted: rank 1 failed"), "{e}");
        let got = second.expect("the next step runs on the reset group");
        assert_eq!(max_abs_diff(&got, &want), 0.0, "and computes what a healthy runner does");
    }
}

#[test]
fn a_stalled_rank_stops_the_runner_at_the_step_timeout() {
    let (e, took, later) = within_a_minute(|| {
        let mut r = faulty_runner(Fault::Stall(Duration::from_secs(5)));
        r.set_step_timeout(Some(Duration::from_millis(300)));
        let t = Instant::now();
        let e = r.run(prefill()).unwrap_err();
        let took = t.elapsed();
        let later = r.run(prefill()).unwrap_err();
        (e, took, later) // dropping the runner does not wait for the stalled rank
    });
    assert!(matches!(e, Error::EngineStopped(_)), "{e}");
    assert!(e.to_string().contains("rank(s) 1 did not answer"), "{e}");
    assert!(took < Duration::from_secs(4), "the timeout, not the stall, ended the step: {took:?}");
    assert!(matches!(later, Error::EngineStopped(_)), "every later step fails at once: {later}");
}

/// A rank whose device is unusable stops the runner: the step fails with EngineStopped even where the other
/// rank's aborted collective answered first, and every later step fails at once without reaching the ranks.
#[test]
fn a_rank_with_an_unusable_device_stops_the_runner() {
    for _ in 0..5 {
        let (first, later) = within_a_minute(|| {
            let r = faulty_runner(Fault::Dead);
            (r.run(prefill()).unwrap_err(), r.run(prefill()).unwrap_err())
        });
        assert!(matches!(&first, Error::EngineStopped(w) if w.contains("injected")), "{first}");
        assert!(matches!(&later, Error::EngineStopped(w) if w.contains("injected")), "{later}");
    }
}

/// After a failed step the group stays healthy: several steps in a row compute what a healthy runner does.
#[test]
fn steps_after_a_failed_one_stay_right() {
    let r = faulty_runner(Fault::Fail);
    assert!(r.run(prefill()).is_err(), "the fault fires on the first step");
    let want = prompt_logits(&runner(CKPT, 2), &IDS);
    for _ in 0..3 {
        assert_eq!(r.run(prefill()).unwrap().logits, want);
    }
}
