//! libFuzzer entry for the `nemo_yaml` target; the harness body is `triton_llama_fuzz::nemo_yaml` (fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| triton_llama_fuzz::nemo_yaml(data));
