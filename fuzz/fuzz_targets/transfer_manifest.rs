//! libFuzzer entry point; the body and its oracle are
//! [`wraft_fuzz_harness::transfer_manifest`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wraft_fuzz_harness::transfer_manifest(data));
