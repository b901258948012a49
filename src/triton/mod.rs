//! The Triton backend (`libtriton_llama.so`, backend name `llama`): the only module with `unsafe`, confined to
//! `ffi`, `request`, `response`, `metrics`, `logging` and `exports`; everything else here is plain data and logic.
pub mod ffi;
pub mod interface;
pub mod tensors;
pub mod server;
pub mod error;
pub mod request;
pub mod response;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod exports;
