#![no_main]
// See mxidp_core::fuzz_targets::jwt_claims.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mxidp_core::fuzz_targets::jwt_claims(data));
