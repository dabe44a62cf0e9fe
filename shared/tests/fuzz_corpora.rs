//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! fuzz targets' bodies on stable, so every input the fuzzers kept, and
//! every crash they found, stays a regression test.

use std::path::{Path, PathBuf};

use konnq_shared::fuzzing;

/// Calls `target` on every file of `fuzz/corpus/<name>/`; a missing or
/// empty corpus fails the test.
fn replay(name: &str, target: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} unreadable: {e}", dir.display()))
        .map(|entry| entry.expect("readable entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    for file in &files {
        let input = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let outcome = std::panic::catch_unwind(|| target(&input));
        assert!(outcome.is_ok(), "{name}: {} fails", file.display());
    }
}

#[test]
fn hpack() {
    replay("hpack", fuzzing::hpack);
}

#[test]
fn wire() {
    replay("wire", fuzzing::wire);
}

#[test]
fn stream_datagrams() {
    replay("stream_datagrams", fuzzing::stream_datagrams);
}

#[test]
fn konnectivity_packet() {
    replay("konnectivity_packet", fuzzing::konnectivity_packet);
}

#[test]
fn config() {
    replay("config", fuzzing::config);
}
