//! In-process collectives for ranks running on threads: every rank posts its data, waits at a barrier,
//! and reads the others' in rank order, so all ranks compute bit-identical sums. The barrier can be aborted
//! (a rank failed, or a step timed out): every rank waiting in or entering a collective then gets an error
//! instead of waiting forever, until the group is reset.
use super::{Communicator, GroupControl};
use crate::backend::Backend;
use crate::{Error, Result};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct State {
    arrived: usize,
    generation: u64,
    aborted: Option<String>,
}

struct Shared {
    n: usize,
    slots: Mutex<Vec<Vec<f32>>>,
    state: Mutex<State>,
    turn: Condvar,
}

fn aborted(reason: &str) -> Error {
    Error::Internal(format!("tensor-parallel collective aborted: {reason}"))
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until all `n` ranks have arrived (or the group is aborted).
    fn barrier(&self) -> Result<()> {
        let mut s = self.state();
        if let Some(r) = &s.aborted {
            return Err(aborted(r));
        }
        let generation = s.generation;
        s.arrived += 1;
        if s.arrived == self.n {
            s.arrived = 0;
            s.generation += 1;
            self.turn.notify_all();
            return Ok(());
        }
        while s.generation == generation {
            if let Some(r) = &s.aborted {
                return Err(aborted(r));
            }
            s = self.turn.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }
}

impl GroupControl for Shared {
    fn abort(&self, reason: &str) {
        let mut s = self.state();
        s.aborted.get_or_insert_with(|| reason.to_string());
        self.turn.notify_all();
    }

    fn reset(&self) {
        let mut s = self.state();
        s.aborted = None;
        s.arrived = 0;
        s.generation += 1;
    }

    fn failed(&self) -> Option<String> {
        self.state().aborted.clone()
    }
}

/// One rank's end of an in-process group; make a group with `LocalComm::group(n)`.
pub struct LocalComm {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

impl LocalComm {
    /// Handles for ranks 0..n, to be moved one per thread.
    pub fn group(n: usize) -> Vec<LocalComm> {
        let shared = Arc::new(Shared {
            n,
            slots: Mutex::new(vec![Vec::new(); n]),
            state: Mutex::new(State::default()),
            turn: Condvar::new(),
        });
        (0..n).map(|rank| LocalComm { rank, world: n, shared: shared.clone() }).collect()
    }

    /// Posts `data`, returns everyone's data in rank order.
    fn exchange(&self, data: Vec<f32>) -> Result<Vec<Vec<f32>>> {
        let slots = || self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots()[self.rank] = data;
        self.shared.barrier()?;
        let all = slots().clone();
        // Nobody may overwrite a slot before every rank has read it.
        self.shared.barrier()?;
        Ok(all)
    }
}

impl<B: Backend> Communicator<B> for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, backend: &B, buf: &mut B::Buf, n: usize) -> Result<()> {
        if self.world == 1 {
            return Ok(()); // the sum of one part (no copies to the host and back)
        }
        let all = self.exchange(backend.read(buf, n)?)?;
        let mut sum = vec![0f32; n];
        for part in &all {
            for (s, v) in sum.iter_mut().zip(part) {
                *s += v;
            }
        }
        backend.write(buf, &sum)
    }
    fn all_gather(&self, backend: &B, buf: &B::Buf, n: usize) -> Result<B::Buf> {
        let all = self.exchange(backend.read(buf, n)?)?.concat();
        let mut out = backend.alloc(all.len())?;
        backend.write(&mut out, &all)?;
        Ok(out)
    }
    fn control(&self) -> Option<Arc<dyn GroupControl>> {
        Some(self.shared.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An abort wakes a rank waiting for a partner that never comes; after a reset the group works again.
    #[test]
    fn an_abort_frees_the_waiting_ranks_and_a_reset_restores_the_group() {
        let mut g = LocalComm::group(2);
        let (one, zero) = (g.pop().unwrap(), g.pop().unwrap());
        let control = zero.shared.clone();
        let waiting = std::thread::spawn(move || zero.exchange(vec![1.0]).map(|_| zero));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(control.failed(), None);
        control.abort("rank 1 failed");
        control.abort("a later reason"); // the first reason stays
        let err = waiting.join().unwrap().err().unwrap().to_string();
        assert!(err.contains("aborted: rank 1 failed"), "{err}");
        assert!(one.exchange(vec![2.0]).is_err(), "still aborted until reset");
        assert_eq!(control.failed().as_deref(), Some("rank 1 failed"), "what a rank whose step returned reads");
        control.reset();
        assert_eq!(control.failed(), None);
        let zero = LocalComm { rank: 0, world: 2, shared: control.clone() };
        let t = std::thread::spawn(move || zero.exchange(vec![1.0]));
        assert_eq!(one.exchange(vec![2.0]).unwrap(), vec![vec![1.0], vec![2.0]]);
        assert_eq!(t.join().unwrap().unwrap(), vec![vec![1.0], vec![2.0]]);
    }
}
