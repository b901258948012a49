//! The crate's one error type, and its mapping to the coarse kinds a transport turns into status codes.
use std::path::PathBuf;

/// Coarse class of an error: what a client did wrong versus what the server lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong, or the model configuration a deployer wrote (INVALID_ARG, as Triton reports a bad
    /// `config.pbtxt`).
    InvalidArg,
    /// The server is busy or shutting down (UNAVAILABLE).
    Unavailable,
    /// A valid input in a format or feature we do not implement (UNSUPPORTED).
    Unsupported,
    /// Something that should exist does not (NOT_FOUND).
    NotFound,
    /// A bug or an environment failure: a broken checkpoint or tokenizer file, a device error (INTERNAL).
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: is a Git LFS pointer, not the data; run `git lfs pull` in the checkpoint's repository")]
    LfsPointer { path: PathBuf },
    #[error("{path}: {format} is not supported: {hint}")]
    UnsupportedFormat { path: PathBuf, format: String, hint: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape { path: PathBuf, name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("{path}: tensor `{name}` is truncated: needs {expected} bytes, {got} available")]
    Truncated { path: PathBuf, name: String, expected: u64, got: u64 },
    #[error("{archive}: archive entry `{entry}` escapes the archive root (absolute path or `..`)")]
    UnsafePath { archive: PathBuf, entry: String },
    #[error("{path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("config: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The engine cannot run another step (a tensor-parallel rank is stuck): its requests fail and the model
    /// stops accepting work.
    #[error("the engine stopped: {0}")]
    EngineStopped(String),
    /// An error Triton's own API returned; its status code (`TRITONSERVER_Error_Code`) is passed on unchanged.
    #[error("{msg}")]
    Triton { code: u32, kind: ErrorKind, msg: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            Error::Io { .. } => ErrorKind::Internal,
            Error::LfsPointer { .. } => ErrorKind::Internal,
            Error::UnsupportedFormat { .. } => ErrorKind::Unsupported,
            Error::MissingTensor { .. } => ErrorKind::NotFound,
            Error::TensorShape { .. } => ErrorKind::Internal,
            Error::Truncated { .. } => ErrorKind::Internal,
            Error::UnsafePath { .. } => ErrorKind::Internal,
            Error::Checkpoint { .. } => ErrorKind::Internal,
            Error::Config(_) => ErrorKind::InvalidArg,
            Error::Tokenizer(_) => ErrorKind::Internal,
            Error::InvalidRequest(_) => ErrorKind::InvalidArg,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Internal(_) | Error::EngineStopped(_) => ErrorKind::Internal,
            Error::Triton { kind, .. } => *kind,
        }
    }

    /// Shorthand for a checkpoint problem tied to a file.
    pub fn ckpt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), msg: msg.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Client errors are the request's (and the deployer's model configuration); broken model files are the
    /// server's; Triton's own errors keep their kind.
    #[test]
    fn kinds_follow_whose_fault_it_is() {
        let p = || PathBuf::from("m");
        let io = |k| Error::io("m", std::io::Error::from(k));
        let cases = [
            (Error::InvalidRequest("x".into()), ErrorKind::InvalidArg),
            (Error::Config("x".into()), ErrorKind::InvalidArg),
            (Error::Tokenizer("x".into()), ErrorKind::Internal),
            (Error::ckpt("m", "x"), ErrorKind::Internal),
            (Error::LfsPointer { path: p() }, ErrorKind::Internal),
            (Error::TensorShape { path: p(), name: "t".into(), expected: vec![1], got: vec![2] }, ErrorKind::Internal),
            (Error::Truncated { path: p(), name: "t".into(), expected: 2, got: 1 }, ErrorKind::Internal),
            (Error::UnsafePath { archive: p(), entry: "../x".into() }, ErrorKind::Internal),
            (Error::MissingTensor { path: p(), name: "t".into() }, ErrorKind::NotFound),
            (io(std::io::ErrorKind::NotFound), ErrorKind::NotFound),
            (io(std::io::ErrorKind::PermissionDenied), ErrorKind::Internal),
            (Error::UnsupportedFormat { path: p(), format: "f".into(), hint: "h".into() }, ErrorKind::Unsupported),
            (Error::Unavailable("x".into()), ErrorKind::Unavailable),
            (Error::Internal("x".into()), ErrorKind::Internal),
            (Error::Triton { code: 4, kind: ErrorKind::Unavailable, msg: "x".into() }, ErrorKind::Unavailable),
        ];
        for (e, k) in cases {
            assert_eq!(e.kind(), k, "{e}");
        }
    }
}
