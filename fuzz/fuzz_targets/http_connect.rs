#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| konnq_server::fuzzing::http_connect(data));
