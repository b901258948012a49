//! libFuzzer entry for the `detokenizer` target; the harness body is `triton_llama_fuzz::detokenizer` (fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triton_llama_fuzz::detokenizer(data));
