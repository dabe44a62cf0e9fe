//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! fuzz targets' bodies on stable, so every input the fuzzers kept, and
//! every crash they found, stays a regression test.

use std::path::Path;

use konnq_protocol::fuzzing;

/// Replays `fuzz/corpus/<name>/` through `target`.
fn replay(name: &str, target: fn(&[u8])) {
    fuzzing::replay_corpus(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."), name, target);
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
fn session() {
    replay("session", fuzzing::session);
}

#[test]
fn h2() {
    replay("h2", fuzzing::h2);
}
