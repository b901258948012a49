//! The Triton backend (`libtriton_llama.so`, backend name `llama`): the only module with `unsafe`, confined to
//! `ffi`, `request`, `response`, `metrics`, `logging` and `exports`; everything else here is plain data and logic.
pub mod ffi;
pub mod interface;
pub mod tensors;
