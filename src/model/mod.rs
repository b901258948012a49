//! The Llama-2 network: tensor-parallel sharding rules and a device-free forward pass.
pub mod llama;
pub mod shard;

pub use llama::{KvCache, Llama};
pub use shard::ShardSpec;
