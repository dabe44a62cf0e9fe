//! Replays the committed `http_connect` fuzz corpus
//! (`fuzz/corpus/http_connect/`) through the fuzz target's body on stable,
//! so every input the fuzzer kept, and every crash it found, stays a
//! regression test.

use std::path::Path;

#[test]
fn http_connect() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    konnq_protocol::fuzzing::replay_corpus(&root, "http_connect", konnq_server::fuzzing::http_connect);
}
