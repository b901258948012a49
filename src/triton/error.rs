//! The one place crate errors become Triton error codes, plus reading Triton's own errors and a `log` logger
//! that writes through Triton's logger.
#![allow(unsafe_code)]
use super::ffi;
use crate::{Error, ErrorKind, Result};
use std::ffi::{CStr, CString};

/// Maps a crate error to a new Triton error object (the caller owns it). The only such mapping.
pub fn to_triton(e: &Error) -> ffi::Err {
    if let Error::Triton { code, msg, .. } = e {
        return new_error(*code, msg);
    }
    let code = match e.kind() {
        ErrorKind::InvalidArg => ffi::ERROR_INVALID_ARG,
        ErrorKind::Unavailable => ffi::ERROR_UNAVAILABLE,
        ErrorKind::Unsupported => ffi::ERROR_UNSUPPORTED,
        ErrorKind::NotFound => ffi::ERROR_NOT_FOUND,
        ErrorKind::Internal => ffi::ERROR_INTERNAL,
    };
    new_error(code, &e.to_string())
}

pub fn new_error(code: u32, msg: &str) -> ffi::Err {
    let c = cstring(msg);
    // SAFETY: `c` is a valid NUL-terminated string; Triton copies it.
    unsafe { ffi::TRITONSERVER_ErrorNew(code, c.as_ptr()) }
}

/// A C string; interior NULs (never expected) are replaced rather than failing.
pub fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "\u{FFFD}")).unwrap_or_default()
}

/// Turns a Triton API result into ours, consuming the error object.
pub(crate) fn check(err: ffi::Err, what: &str) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null error returned by the API is a live object we own; we read it then delete it once.
    let (err_code, msg) = unsafe {
        let code = ffi::TRITONSERVER_ErrorCode(err);
        let m = ffi::TRITONSERVER_ErrorMessage(err);
        let s = if m.is_null() { String::new() } else { CStr::from_ptr(m).to_string_lossy().into_owned() };
        ffi::TRITONSERVER_ErrorDelete(err);
        (code, s)
    };
    Err(Error::Triton { code: err_code, kind: kind_of(err_code), msg: format!("{what}: {msg}") })
}

/// The crate's kind of a Triton status code (codes without a kind of their own count as internal).
fn kind_of(code: u32) -> ErrorKind {
    match code {
        ffi::ERROR_INVALID_ARG => ErrorKind::InvalidArg,
        ffi::ERROR_UNAVAILABLE => ErrorKind::Unavailable,
        ffi::ERROR_UNSUPPORTED => ErrorKind::Unsupported,
        ffi::ERROR_NOT_FOUND => ErrorKind::NotFound,
        _ => ErrorKind::Internal,
    }
}

/// Reads a C string owned by Triton.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string that stays valid for the call.
pub unsafe fn read_cstr(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: per the function contract.
    unsafe { CStr::from_ptr(p).to_string_lossy().into_owned() }
}

/// `log` records go to Triton's log (INFO/WARN/ERROR/VERBOSE).
pub struct TritonLogger;

impl log::Log for TritonLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info || m.target().starts_with("triton_llama")
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            log::Level::Error => ffi::LOG_ERROR,
            log::Level::Warn => ffi::LOG_WARN,
            log::Level::Info => ffi::LOG_INFO,
            _ => ffi::LOG_VERBOSE,
        };
        let file = cstring(r.file().unwrap_or("triton_llama"));
        let msg = cstring(&format!("{}", r.args()));
        // SAFETY: valid C strings for the duration of the call; the returned error (if any) is deleted.
        unsafe {
            if ffi::TRITONSERVER_LogIsEnabled(level) {
                let e = ffi::TRITONSERVER_LogMessage(level, file.as_ptr(), r.line().unwrap_or(0) as i32, msg.as_ptr());
                if !e.is_null() {
                    ffi::TRITONSERVER_ErrorDelete(e);
                }
            }
        }
    }
    fn flush(&self) {}
}

/// The error a cancelled request ends with (the client already gave up on it).
pub fn cancelled_error() -> ffi::Err {
    new_error(ffi::ERROR_CANCELLED, "the request was cancelled")
}
