//! libFuzzer entry for the `tokenizer_model` target; the harness body is `triton_llama_fuzz::tokenizer_model` (fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triton_llama_fuzz::tokenizer_model(data));
