#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| scp_pep::fuzz::path_route(data));
