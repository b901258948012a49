//! NCCL collectives for CUDA ranks: one process, one thread per GPU, communicators created together for the
//! configured GPU ids (`ncclCommInitAll`), each bound to its rank's backend stream.
#![allow(unsafe_code)]
use super::Communicator;
use crate::backend::Backend;
use crate::backend::cuda::{CudaBackend, CudaBuf};
use crate::{Error, Result};
use cudarc::nccl::{Comm, ReduceOp};

fn nccl_err(what: &str) -> impl Fn(cudarc::nccl::result::NcclError) -> Error + '_ {
    move |e| Error::Internal(format!("NCCL {what}: {e:?}"))
}

/// One rank's NCCL communicator.
pub struct NcclComm {
    comm: Comm,
}

// SAFETY: an NCCL communicator may be used from any thread as long as one thread uses it at a time; each
// NcclComm is moved into its rank thread and only used there (`&self` methods are called by that thread).
unsafe impl Send for NcclComm {}

/// Whether libnccl can be loaded (probing never panics, unlike a first call).
pub fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

impl NcclComm {
    /// Communicators for `backends` (one per GPU, rank = position), created together.
    pub fn group(backends: &[CudaBackend]) -> Result<Vec<NcclComm>> {
        if backends.len() > 1 && !nccl_present() {
            return Err(Error::Unavailable("NCCL (libnccl.so) not found on LD_LIBRARY_PATH; tensor parallelism needs it".into()));
        }
        let streams = backends.iter().map(|b| b.stream().clone()).collect();
        let comms = Comm::from_devices(streams).map_err(nccl_err("init"))?;
        Ok(comms.into_iter().map(|comm| NcclComm { comm }).collect())
    }
}

impl Communicator<CudaBackend> for NcclComm {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn world_size(&self) -> usize {
        self.comm.world_size()
    }
    fn all_reduce_sum(&self, _: &CudaBackend, buf: &mut CudaBuf, n: usize) -> Result<()> {
        if n > buf.0.len() {
            return Err(Error::Internal(format!("all_reduce of {n} floats in a buffer of {}", buf.0.len())));
        }
        if self.world_size() == 1 || n == 0 {
            return Ok(());
        }
        self.comm.all_reduce_in_place(&mut buf.0.slice_mut(0..n), &ReduceOp::Sum).map_err(nccl_err("all_reduce"))?;
        Ok(())
    }
    fn all_gather(&self, backend: &CudaBackend, buf: &CudaBuf, n_local: usize) -> Result<Vec<f32>> {
        let world = self.world_size();
        if world == 1 {
            return backend.read(buf, n_local);
        }
        // Ranks may hold different counts (uneven vocabulary split): share the counts, pad to the largest.
        let mut counts = backend.alloc(world)?;
        let mine = backend.copy_padded(&CudaBuf(backend_count(backend, n_local)?), 1, 1)?;
        self.comm.all_gather(&mine.0, &mut counts.0.slice_mut(0..world)).map_err(nccl_err("all_gather counts"))?;
        let counts: Vec<usize> = backend.read(&counts, world)?.into_iter().map(|c| c as usize).collect();
        let max = counts.iter().copied().max().unwrap_or(0);
        if max == 0 {
            return Ok(Vec::new());
        }
        let send = backend.copy_padded(buf, n_local, max)?;
        let mut recv = backend.alloc(world * max)?;
        self.comm.all_gather(&send.0.slice(0..max), &mut recv.0.slice_mut(0..world * max)).map_err(nccl_err("all_gather"))?;
        let all = backend.read(&recv, world * max)?;
        Ok(counts.iter().enumerate().flat_map(|(r, &c)| all[r * max..r * max + c].iter().copied()).collect())
    }
}

/// A one-element device buffer holding `n` (exact in f32 up to 2^24, checked).
fn backend_count(backend: &CudaBackend, n: usize) -> Result<cudarc::driver::CudaSlice<f32>> {
    if n > 1 << 24 {
        return Err(Error::Internal(format!("all_gather of {n} floats per rank exceeds 2^24")));
    }
    let mut b = backend.alloc(1)?;
    backend.write(&mut b, &[n as f32])?;
    Ok(b.0)
}
