#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| konnq_shared::fuzzing::stream_datagrams(data));
