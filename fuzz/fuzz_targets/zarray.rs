//! libFuzzer entry for the `zarray` target; the harness body is `triton_llama_fuzz::zarray` (fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triton_llama_fuzz::zarray(data));
