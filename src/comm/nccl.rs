//! NCCL collectives for CUDA ranks: one process, one thread per GPU, communicators created together for the
//! configured GPU ids (`ncclCommInitAll`). A watchdog thread polls every communicator's asynchronous error
//! (`ncclCommGetAsyncError`) and aborts the group on one; the runner aborts it on a failed rank or a step past the
//! step timeout. Aborting (`ncclCommAbort`) frees ranks waiting on a collective, a step that overlapped an abort
//! fails, and `reset` creates fresh communicators once every rank has answered; a group that cannot be recreated
//! stops the engine (the model then reports not ready). A rank holds the group's lock while it enqueues a
//! collective, so an abort never frees a handle in use; NCCL_RUNTIME_CONNECT=0 (NCCL connects the ranks at
//! creation) and NCCL_LAUNCH_MODE=PARALLEL (each rank launches alone, NCCL's default), both set by the Dockerfile
//! and deploy_triton.py, mean an enqueue never waits for a peer while holding it.
#![allow(unsafe_code)]
use super::nccl_sys::{Nccl, NcclError, RawComm, nccl};
use super::{Communicator, GroupControl};
use crate::backend::Backend;
use crate::backend::cuda::{CudaBackend, CudaBuf};
use crate::{Error, Result};
use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// How often the watchdog asks each communicator for an asynchronous error.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// How long an abort waits for a rank to finish enqueueing before it counts that rank as stuck inside NCCL.
const ABORT_WAIT: Duration = Duration::from_secs(5);

fn nccl_err(e: NcclError) -> Error {
    Error::Internal(format!("NCCL {e}"))
}

struct Comms {
    /// One handle per rank; empty while aborted.
    raw: Vec<RawComm>,
    /// Why the group was aborted (None: usable).
    aborted: Option<String>,
    /// Why the group cannot be recreated: every later collective fails with [`Error::EngineStopped`].
    dead: Option<String>,
}

// SAFETY: NCCL handles may be used from any thread; the mutex orders creation, abort and the watchdog's polls,
// and a rank thread only reads its own handle under it.
unsafe impl Send for Comms {}

/// The communicators of one group, shared by its ranks, the runner (as [`GroupControl`]) and the watchdog.
struct Group {
    lib: &'static Nccl,
    devices: Vec<i32>,
    comms: Mutex<Comms>,
}

impl Group {
    fn comms(&self) -> MutexGuard<'_, Comms> {
        self.comms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock, or None if it stays held for `wait` (a rank stuck inside an NCCL call).
    fn comms_within(&self, wait: Duration) -> Option<MutexGuard<'_, Comms>> {
        let until = std::time::Instant::now() + wait;
        loop {
            match self.comms.try_lock() {
                Ok(c) => return Some(c),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(std::sync::TryLockError::WouldBlock) => return None,
            }
        }
    }

    /// One pass of the watchdog: the first communicator with an asynchronous error aborts the group.
    fn watch(&self) {
        let failed = {
            let c = self.comms();
            if c.aborted.is_some() {
                return;
            }
            // SAFETY: the handles are live while not aborted, and the lock keeps an abort out meanwhile.
            c.raw.iter().enumerate().find_map(|(rank, &h)| unsafe { self.lib.async_error(h) }.err().map(|e| (rank, e)))
        };
        if let Some((rank, e)) = failed {
            let gpu = self.devices.get(rank).copied().unwrap_or(-1);
            self.abort(&format!("rank {rank} (GPU {gpu}) failed: NCCL {e}"));
        }
    }
}

impl Comms {
    /// Rank `rank`'s live handle, or why there is none.
    fn live(&self, rank: usize) -> Result<RawComm> {
        if let Some(why) = &self.dead {
            return Err(Error::EngineStopped(why.clone()));
        }
        match (&self.aborted, self.raw.get(rank)) {
            (Some(why), _) => Err(Error::Internal(format!("tensor-parallel collective aborted: {why}"))),
            (None, Some(&h)) => Ok(h),
            (None, None) => Err(Error::Internal(format!("NCCL group has no rank {rank}"))),
        }
    }
}

impl GroupControl for Group {
    fn abort(&self, reason: &str) {
        let Some(mut c) = self.comms_within(ABORT_WAIT) else {
            // A rank is blocked inside an NCCL call that holds the lock: its handle cannot be freed under it. The
            // runner's step timeout stops the engine; the communicators are left as they are.
            log::error!(
                "cannot abort the NCCL group on GPUs {:?} ({reason}): a rank is stuck inside an NCCL call",
                self.devices
            );
            return;
        };
        if c.aborted.is_some() {
            return;
        }
        log::error!("aborting the NCCL group on GPUs {:?}: {reason}", self.devices);
        c.aborted = Some(reason.to_string());
        for h in std::mem::take(&mut c.raw) {
            // SAFETY: each live handle is aborted once (taken out of the list).
            if let Err(e) = unsafe { self.lib.abort(h) } {
                log::warn!("NCCL abort: {e}");
            }
        }
    }

    fn reset(&self) {
        let mut c = self.comms();
        if c.aborted.is_none() || c.dead.is_some() {
            return;
        }
        match self.lib.init_all(&self.devices) {
            Ok(raw) => {
                log::warn!(
                    "NCCL group on GPUs {:?} recreated after: {}",
                    self.devices,
                    c.aborted.as_deref().unwrap_or("")
                );
                c.raw = raw;
                c.aborted = None;
            }
            Err(e) => {
                let why = format!("the NCCL group could not be recreated after an abort: {e}");
                log::error!("{why}");
                c.dead = Some(why);
            }
        }
    }

    fn failed(&self) -> Option<String> {
        let c = self.comms();
        c.dead.clone().or_else(|| c.aborted.clone())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Abort rather than destroy: ncclCommDestroy finalizes with the peers and would wait on a stuck one.
        let c = self.comms.get_mut().unwrap_or_else(|p| p.into_inner());
        for h in std::mem::take(&mut c.raw) {
            // SAFETY: each live handle is aborted once, and no rank uses the group any more.
            let _ = unsafe { self.lib.abort(h) };
        }
    }
}

/// One rank's NCCL communicator (none for a group of one GPU, which needs no NCCL library).
pub struct NcclComm {
    group: Option<Arc<Group>>,
    rank: usize,
    world: usize,
}

impl NcclComm {
    /// Communicators for `backends` (one per GPU, rank = position), created together; a single GPU gets none.
    pub fn group(backends: &[CudaBackend]) -> Result<Vec<NcclComm>> {
        if backends.len() == 1 {
            return Ok(vec![NcclComm { group: None, rank: 0, world: 1 }]);
        }
        Self::with_nccl(backends)
    }

    /// Like [`NcclComm::group`], with NCCL communicators even for one GPU (the GPU tests of this binding).
    pub fn with_nccl(backends: &[CudaBackend]) -> Result<Vec<NcclComm>> {
        let lib = nccl().map_err(|e| Error::Unavailable(format!("{e}; tensor parallelism needs it")))?;
        let devices = backends.iter().map(|b| b.ordinal() as i32).collect::<Vec<_>>();
        for b in backends {
            b.synchronize()?; // the weights' uploads are done before NCCL takes the devices
        }
        let raw = lib.init_all(&devices).map_err(nccl_err)?;
        log::info!("NCCL {} communicators on GPUs {devices:?}", lib.version_string());
        let world = raw.len();
        let group = Arc::new(Group { lib, devices, comms: Mutex::new(Comms { raw, aborted: None, dead: None }) });
        let weak: Weak<Group> = Arc::downgrade(&group);
        std::thread::Builder::new()
            .name("llama-nccl-watch".into())
            .spawn(move || {
                while let Some(g) = weak.upgrade() {
                    g.watch();
                    drop(g);
                    std::thread::sleep(WATCH_EVERY);
                }
            })
            .map_err(|e| Error::Internal(format!("cannot spawn the NCCL watchdog: {e}")))?;
        Ok((0..world).map(|rank| NcclComm { group: Some(group.clone()), rank, world }).collect())
    }

    fn shared(&self) -> Result<&Group> {
        self.group.as_deref().ok_or_else(|| Error::Internal("NCCL collective on a single-GPU group".into()))
    }
}

fn raw_stream(b: &CudaBackend) -> *mut c_void {
    b.stream().cu_stream() as *mut c_void
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
        if self.group.is_none() || n == 0 {
            return Ok(());
        }
        let g = self.shared()?;
        let comms = g.comms(); // held while enqueueing: an abort waits, so the handle stays live
        let comm = comms.live(self.rank)?;
        let st = backend.stream();
        let (p, _sync) = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut buf.0, st);
        // SAFETY: `p` holds at least `n` f32 on this rank's device (checked above), alive past the enqueue (the
        // stream orders its later use); the handle is live under the lock.
        unsafe { g.lib.all_reduce_sum_f32(p as *mut c_void, n, comm, raw_stream(backend)) }.map_err(nccl_err)
    }
    fn all_gather(&self, backend: &CudaBackend, buf: &CudaBuf, n: usize) -> Result<CudaBuf> {
        if n > buf.0.len() {
            return Err(Error::Internal(format!("all_gather of {n} floats from a buffer of {}", buf.0.len())));
        }
        let mut recv = backend.alloc(self.world * n)?;
        if n == 0 {
            return Ok(recv);
        }
        if self.group.is_none() {
            backend.copy_into(&mut recv, buf, n)?;
            return Ok(recv);
        }
        let g = self.shared()?;
        {
            let comms = g.comms(); // held while enqueueing: an abort waits, so the handle stays live
            let comm = comms.live(self.rank)?;
            let st = backend.stream();
            let (s, _a) = cudarc::driver::DevicePtr::device_ptr(&buf.0, st);
            let (r, _b) = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut recv.0, st);
            // SAFETY: `s` holds `n` f32 and `r` `world * n` (allocated above) on this rank's device; the handle is
            // live under the lock.
            unsafe { g.lib.all_gather_f32(s as *const c_void, r as *mut c_void, n, comm, raw_stream(backend)) }
                .map_err(nccl_err)?;
        }
        Ok(recv)
    }
    fn control(&self) -> Option<Arc<dyn GroupControl>> {
        self.group.clone().map(|g| g as Arc<dyn GroupControl>)
    }
}
