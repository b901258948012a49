//! triton-llama: a Llama-2 inference engine (CPU reference backend, CUDA backend behind the `cuda` feature) served
//! as a Triton backend.
#![deny(unsafe_code)]

pub mod backend;
pub mod bench;
pub mod chat;
pub mod comm;
pub mod config;
pub mod demo;
pub mod engine;
pub mod error;
pub mod guided;
pub mod loader;
pub mod model;
pub mod sampling;
pub mod tensor;
pub mod tokenizer;
pub mod triton;

pub use error::{Error, ErrorKind, Result};
