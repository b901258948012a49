//! In-process collectives for ranks running on threads: every rank posts its data, waits at a barrier,
//! and reads the others' in rank order, so all ranks compute bit-identical sums.
use super::Communicator;
use crate::backend::Backend;
use crate::{Error, Result};
use std::sync::{Arc, Barrier, Mutex};

struct Shared {
    slots: Mutex<Vec<Vec<f32>>>,
    barrier: Barrier,
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
        let shared = Arc::new(Shared { slots: Mutex::new(vec![Vec::new(); n]), barrier: Barrier::new(n) });
        (0..n).map(|rank| LocalComm { rank, world: n, shared: shared.clone() }).collect()
    }

    /// Posts `data`, returns everyone's data in rank order.
    fn exchange(&self, data: Vec<f32>) -> Result<Vec<Vec<f32>>> {
        let poisoned = |_| Error::Internal("a tensor-parallel rank panicked".into());
        self.shared.slots.lock().map_err(poisoned)?[self.rank] = data;
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().map_err(poisoned)?.clone();
        // Nobody may overwrite a slot before every rank has read it.
        self.shared.barrier.wait();
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
}
