#![no_main]
// See mxidp_keycloak::events::fuzz_delivery.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mxidp_keycloak::events::fuzz_delivery(data));
