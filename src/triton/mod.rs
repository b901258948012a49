//! The Triton backend (`libtriton_llama.so`, backend name `llama`): `unsafe` is allowed file by file, in `ffi`,
//! `error` (Triton's error objects and logger), `request`, `response`, `metrics` and `exports`; everything else
//! here is plain data and logic.
pub mod error;
pub mod exports;
pub mod ffi;
pub mod interface;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod request;
pub mod response;
pub mod server;
pub mod tensors;
