//! libFuzzer entry for the `tokenizer_encode` target; the harness body is `triton_llama_fuzz::tokenizer_encode` (fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triton_llama_fuzz::tokenizer_encode(data));
