//! libFuzzer entry for the `safetensors` target; the harness body is `triton_llama_fuzz::safetensors` (fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triton_llama_fuzz::safetensors(data));
