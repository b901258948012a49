//! Collectives between tensor-parallel ranks: an in-process implementation on threads (CPU, tests) and NCCL (GPUs).
pub mod local;
#[cfg(feature = "cuda")]
pub mod nccl;
#[cfg(feature = "cuda")]
pub mod nccl_sys;

use crate::Result;
use crate::backend::Backend;
use std::sync::Arc;

/// Control over a whole group, held outside its ranks (the runner) and by each rank: `abort` makes every rank
/// waiting in, or entering, a collective return an error (a rank failed; a step timed out); `reset`, once every
/// rank is out of its collectives, makes the group usable again.
pub trait GroupControl: Send + Sync {
    fn abort(&self, reason: &str);
    fn reset(&self);
    /// Why the group was aborted since its last reset (None: it was not). A rank whose step succeeded on its
    /// side fails it when this is set: collectives that run on the device (NCCL) may have been cut short.
    fn failed(&self) -> Option<String>;
}

/// One rank's handle to its tensor-parallel group.
pub trait Communicator<B: Backend>: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Sums the first `n` elements of `buf` across ranks; every rank ends with the same sum.
    fn all_reduce_sum(&self, backend: &B, buf: &mut B::Buf, n: usize) -> Result<()>;
    /// Concatenates every rank's first `n` elements of `buf` in rank order into a new device buffer
    /// `[world * n]` on every rank (all ranks send the same count).
    fn all_gather(&self, backend: &B, buf: &B::Buf, n: usize) -> Result<B::Buf>;
    /// The group's control, where it can be aborted (None: a stuck collective cannot be interrupted).
    fn control(&self) -> Option<Arc<dyn GroupControl>> {
        None
    }
}
