//! The few NCCL entry points the engine uses, loaded at run time from `libnccl.so.2` (the name NCCL's packages and
//! wheels install; `libnccl.so` exists only with the development package), or from the file `TL_NCCL_LIB` names.
//! Own binding rather than cudarc's: cudarc looks only for `libnccl.so` and has no safe `ncclCommAbort` /
//! `ncclCommGetAsyncError`, which the group's watchdog needs.
#![allow(unsafe_code)]
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

/// `ncclComm_t`: an opaque handle.
pub type RawComm = *mut c_void;
type NcclResult = c_int;

pub const NCCL_SUCCESS: c_int = 0;
/// `ncclInProgress`: the result of a nonblocking call, or the async state of a communicator still initializing.
pub const NCCL_IN_PROGRESS: c_int = 7;
/// `ncclFloat32` in `ncclDataType_t`.
const NCCL_FLOAT32: c_int = 7;
/// `ncclSum` in `ncclRedOp_t`.
const NCCL_SUM: c_int = 0;

/// A failed NCCL call: its result code and NCCL's words for it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {text} (ncclResult_t {code}){detail}")]
pub struct NcclError {
    pub what: &'static str,
    pub code: c_int,
    pub text: String,
    /// NCCL's last error message, when it has one (`ncclGetLastError`), as "; ..." (empty otherwise).
    pub detail: String,
}

/// The loaded library: its symbols, resolved once.
pub struct Nccl {
    _lib: libloading::Library,
    /// NCCL's version as `ncclGetVersion` reports it (e.g. 22809 for 2.28.9).
    pub version: c_int,
    get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    get_last_error: Option<unsafe extern "C" fn(RawComm) -> *const c_char>,
    comm_init_all: unsafe extern "C" fn(*mut RawComm, c_int, *const c_int) -> NcclResult,
    comm_abort: unsafe extern "C" fn(RawComm) -> NcclResult,
    comm_get_async_error: unsafe extern "C" fn(RawComm, *mut NcclResult) -> NcclResult,
    // (send [count] f32, recv [count] f32, count, ncclDataType_t, ncclRedOp_t, comm, cudaStream_t)
    all_reduce:
        unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, RawComm, *mut c_void) -> NcclResult,
    // (send [count] f32, recv [nranks * count] f32, count, ncclDataType_t, comm, cudaStream_t)
    all_gather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, RawComm, *mut c_void) -> NcclResult,
}

/// The file names tried, in order: `TL_NCCL_LIB` alone when it is set.
pub fn candidates() -> Vec<String> {
    match std::env::var("TL_NCCL_LIB") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["libnccl.so.2".into(), "libnccl.so".into()],
    }
}

/// The process's NCCL, loaded on first use from [`candidates`]; the error says what was tried.
pub fn nccl() -> Result<&'static Nccl, String> {
    static LIB: OnceLock<Result<Nccl, String>> = OnceLock::new();
    LIB.get_or_init(|| Nccl::open(&candidates())).as_ref().map_err(Clone::clone)
}

impl Nccl {
    /// Loads the first of `names` that opens (a bare name through the dynamic loader's search, a path as is) and
    /// resolves every symbol the engine calls.
    pub fn open(names: &[String]) -> Result<Nccl, String> {
        let mut tried = Vec::new();
        for name in names {
            // SAFETY: loading NCCL runs only its library constructors, which have no preconditions.
            match unsafe { libloading::Library::new(name) } {
                Ok(lib) => return Self::resolve(lib).map_err(|e| format!("{name} is not a usable NCCL: {e}")),
                Err(e) => tried.push(format!("{name} ({e})")),
            }
        }
        Err(format!(
            "NCCL not found: tried {}; install NCCL 2.x (libnccl2, or the nvidia-nccl wheel's lib folder on \
             LD_LIBRARY_PATH) or set TL_NCCL_LIB to the library file",
            tried.join(", ")
        ))
    }

    fn resolve(lib: libloading::Library) -> Result<Nccl, String> {
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol's type is the prototype in nccl.h (NCCL 2.x keeps these stable).
                *unsafe { lib.get($name) }
                    .map_err(|e| format!("no symbol {} ({e})", String::from_utf8_lossy(&$name[..$name.len() - 1])))?
            };
        }
        let get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult = sym!(b"ncclGetVersion\0");
        let mut version = 0;
        // SAFETY: writes one int.
        let r = unsafe { get_version(&mut version) };
        if r != NCCL_SUCCESS {
            return Err(format!("ncclGetVersion returned {r}"));
        }
        // SAFETY: ncclGetLastError (NCCL >= 2.13) has the type below; older libraries lack it.
        let get_last_error = unsafe { lib.get(b"ncclGetLastError\0") }.ok().map(|s| *s);
        Ok(Nccl {
            version,
            get_error_string: sym!(b"ncclGetErrorString\0"),
            get_last_error,
            comm_init_all: sym!(b"ncclCommInitAll\0"),
            comm_abort: sym!(b"ncclCommAbort\0"),
            comm_get_async_error: sym!(b"ncclCommGetAsyncError\0"),
            all_reduce: sym!(b"ncclAllReduce\0"),
            all_gather: sym!(b"ncclAllGather\0"),
            _lib: lib,
        })
    }

    /// NCCL's version as "2.28.9".
    pub fn version_string(&self) -> String {
        let v = self.version;
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    }

    fn check(&self, what: &'static str, code: NcclResult, comm: RawComm) -> Result<(), NcclError> {
        if code == NCCL_SUCCESS {
            return Ok(());
        }
        let text = |p: *const c_char| {
            // SAFETY: NCCL returns NUL-terminated static strings (or null).
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        };
        // SAFETY: ncclGetErrorString accepts any code; ncclGetLastError accepts any comm, null included.
        let msg = text(unsafe { (self.get_error_string)(code) }).unwrap_or_default();
        let last = self.get_last_error.and_then(|f| text(unsafe { f(comm) })).filter(|s| !s.is_empty());
        Err(NcclError { what, code, text: msg, detail: last.map(|s| format!("; {s}")).unwrap_or_default() })
    }

    /// One communicator per device in `devices` (CUDA ordinals), created together from this thread
    /// (`ncclCommInitAll`); rank i is `devices[i]`.
    pub fn init_all(&self, devices: &[c_int]) -> Result<Vec<RawComm>, NcclError> {
        let mut comms = vec![std::ptr::null_mut(); devices.len()];
        let n = c_int::try_from(devices.len()).unwrap_or(c_int::MAX);
        // SAFETY: `comms` has room for `n` handles, `devices` holds `n` ordinals.
        let r = unsafe { (self.comm_init_all)(comms.as_mut_ptr(), n, devices.as_ptr()) };
        self.check("ncclCommInitAll", r, std::ptr::null_mut())?;
        Ok(comms)
    }

    /// Aborts `comm`: its uncompleted operations end and its resources are freed; the handle is dead after.
    /// Safe to call from another thread while the comm's own thread waits on it (the watchdog's use).
    ///
    /// # Safety
    /// `comm` is a live handle from [`Nccl::init_all`], aborted at most once.
    pub unsafe fn abort(&self, comm: RawComm) -> Result<(), NcclError> {
        // SAFETY: the caller's contract.
        let r = unsafe { (self.comm_abort)(comm) };
        self.check("ncclCommAbort", r, std::ptr::null_mut())
    }

    /// The communicator's asynchronous error state: Ok while it is healthy (or still in progress).
    ///
    /// # Safety
    /// `comm` is a live handle from [`Nccl::init_all`].
    pub unsafe fn async_error(&self, comm: RawComm) -> Result<(), NcclError> {
        let mut state = NCCL_SUCCESS;
        // SAFETY: the caller's contract; writes one int.
        let r = unsafe { (self.comm_get_async_error)(comm, &mut state) };
        self.check("ncclCommGetAsyncError", r, comm)?;
        if state == NCCL_IN_PROGRESS {
            return Ok(());
        }
        self.check("asynchronous NCCL error", state, comm)
    }

    /// In-place sum of `count` floats at `buf` across the communicator's ranks, enqueued on `stream`.
    ///
    /// # Safety
    /// `comm` is live; `buf` points to `count` f32 on the comm's device, valid until `stream` reaches the op.
    pub unsafe fn all_reduce_sum_f32(
        &self,
        buf: *mut c_void,
        count: usize,
        comm: RawComm,
        stream: *mut c_void,
    ) -> Result<(), NcclError> {
        // SAFETY: the caller's contract; send and receive may alias (NCCL's in-place form).
        let r = unsafe { (self.all_reduce)(buf, buf, count, NCCL_FLOAT32, NCCL_SUM, comm, stream) };
        self.check("ncclAllReduce", r, comm)
    }

    /// Gathers `count` floats from every rank into `recv` in rank order, enqueued on `stream`.
    ///
    /// # Safety
    /// `comm` is live; `send` holds `count` and `recv` `ranks * count` f32 on the comm's device, valid until
    /// `stream` reaches the op.
    pub unsafe fn all_gather_f32(
        &self,
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        comm: RawComm,
        stream: *mut c_void,
    ) -> Result<(), NcclError> {
        // SAFETY: the caller's contract.
        let r = unsafe { (self.all_gather)(send, recv, count, NCCL_FLOAT32, comm, stream) };
        self.check("ncclAllGather", r, comm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pinned wheel's library (scripts/install_cuda_toolchain.sh exports its exact path as TL_NCCL_LIB, which
    /// scripts/test.sh sources before the `--features cuda` tests).
    fn pinned() -> String {
        std::env::var("TL_NCCL_LIB").expect(
            "TL_NCCL_LIB is not set: `source scripts/install_cuda_toolchain.sh` first (it installs the pinned \
             nvidia-nccl wheel and exports the path of its libnccl.so.2)",
        )
    }

    #[test]
    fn a_missing_library_is_an_error_naming_what_was_tried_and_the_variable() {
        let e = Nccl::open(&["/nonexistent/libnccl.so.2".into(), "libnccl-not-here.so".into()]).err().unwrap();
        assert!(e.contains("/nonexistent/libnccl.so.2") && e.contains("libnccl-not-here.so"), "{e}");
        assert!(e.contains("TL_NCCL_LIB"), "{e}");
    }

    #[test]
    fn a_library_without_ncclgetversion_is_refused_by_name() {
        let e = Nccl::open(&["libc.so.6".into()]).err().unwrap();
        assert!(e.contains("libc.so.6 is not a usable NCCL") && e.contains("ncclGetVersion"), "{e}");
    }

    #[test]
    fn the_pinned_wheel_loads_and_reports_its_version_and_error_strings() {
        let n = Nccl::open(&[pinned()]).unwrap();
        assert!(n.version >= 21300 && n.version_string().starts_with("2."), "{}", n.version_string());
        let e = n.check("x", 4, std::ptr::null_mut()).unwrap_err();
        assert!(e.text.contains("invalid argument"), "{e}");
    }

    #[test]
    fn an_impossible_group_fails_with_the_reason_nccl_gives_instead_of_hanging() {
        // One GPU twice: NCCL refuses it on a GPU machine, and without a GPU the CUDA driver is missing.
        let n = Nccl::open(&[pinned()]).unwrap();
        let e = n.init_all(&[0, 0]).unwrap_err();
        assert_eq!(e.what, "ncclCommInitAll");
        assert!(e.code != NCCL_SUCCESS && !e.text.is_empty(), "{e}");
    }
}
