#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| scp_pep::fuzz::admin_json(data));
