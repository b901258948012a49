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

/// One rank's NCCL communicator (none for a group of one GPU, which needs no NCCL library).
pub struct NcclComm {
    comm: Option<Comm>,
    rank: usize,
    world: usize,
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
        if backends.len() == 1 {
            return Ok(vec![NcclComm { comm: None, rank: 0, world: 1 }]);
        }
        if !nccl_present() {
            return Err(Error::Unavailable(
                "NCCL (libnccl.so) not found on LD_LIBRARY_PATH; tensor parallelism needs it".into(),
            ));
        }
        let streams = backends.iter().map(|b| b.stream().clone()).collect();
        let comms = Comm::from_devices(streams).map_err(nccl_err("init"))?;
        let world = comms.len();
        Ok(comms.into_iter().enumerate().map(|(rank, comm)| NcclComm { comm: Some(comm), rank, world }).collect())
    }

    fn comm(&self) -> Result<&Comm> {
        self.comm.as_ref().ok_or_else(|| Error::Internal("NCCL collective on a single-GPU group".into()))
    }
}

impl Communicator<CudaBackend> for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, backend: &CudaBackend, buf: &mut CudaBuf, n: usize) -> Result<()> {
        backend.invalidate()?; // `buf` changes: a cached bf16 copy of it must not be reused
        if n > buf.0.len() {
            return Err(Error::Internal(format!("all_reduce of {n} floats in a buffer of {}", buf.0.len())));
        }
        if self.world_size() == 1 || n == 0 {
            return Ok(());
        }
        self.comm()?.all_reduce_in_place(&mut buf.0.slice_mut(0..n), &ReduceOp::Sum).map_err(nccl_err("all_reduce"))?;
        Ok(())
    }
    fn all_gather(&self, backend: &CudaBackend, buf: &CudaBuf, n: usize) -> Result<CudaBuf> {
        if n > buf.0.len() {
            return Err(Error::Internal(format!("all_gather of {n} floats from a buffer of {}", buf.0.len())));
        }
        let mut recv = backend.alloc(self.world * n)?;
        if n == 0 {
            return Ok(recv);
        }
        if self.world == 1 {
            backend.copy_into(&mut recv, buf, n)?;
            return Ok(recv);
        }
        self.comm()?
            .all_gather(&buf.0.slice(0..n), &mut recv.0.slice_mut(0..self.world * n))
            .map_err(nccl_err("all_gather"))?;
        Ok(recv)
    }
}
