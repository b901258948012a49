//! libFuzzer entry for the `triton_request` target; the harness body is `triton_llama_fuzz::triton_request` (fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triton_llama_fuzz::triton_request(data));
