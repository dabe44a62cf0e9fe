#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| konnq_protocol::fuzzing::h2(data));
