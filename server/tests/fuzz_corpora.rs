//! Replays the committed `http_connect` fuzz corpus
//! (`fuzz/corpus/http_connect/`) through the fuzz target's body on stable,
//! so every input the fuzzer kept, and every crash it found, stays a
//! regression test.

use std::path::{Path, PathBuf};

#[test]
fn http_connect() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/http_connect");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} unreadable: {e}", dir.display()))
        .map(|entry| entry.expect("readable entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    for file in &files {
        let input = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let outcome = std::panic::catch_unwind(|| konnq_server::fuzzing::http_connect(&input));
        assert!(outcome.is_ok(), "{} fails", file.display());
    }
}
