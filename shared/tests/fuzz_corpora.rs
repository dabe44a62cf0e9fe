//! Replays the committed corpus of the `config` fuzz target
//! (`fuzz/corpus/config/`) on stable, so every input the fuzzer kept stays a
//! regression test.

use std::path::Path;

#[test]
fn config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    konnq_protocol::fuzzing::replay_corpus(&root, "config", konnq_shared::fuzzing::config);
}
