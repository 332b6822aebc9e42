#![no_main]
// See mxidp_core::fuzz_targets::receivers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mxidp_core::fuzz_targets::receivers(data));
