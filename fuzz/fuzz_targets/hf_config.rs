//! libFuzzer entry for the `hf_config` target; the harness body is `triton_llama_fuzz::hf_config` (fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triton_llama_fuzz::hf_config(data));
