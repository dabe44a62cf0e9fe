//! Bodies of the fuzz targets in `fuzz/` (cargo-fuzz, nightly), kept here
//! as plain functions so `tests/fuzz_corpora.rs` replays the committed
//! corpora through the same code on stable (the configuration target lives
//! in `konnq_shared::fuzzing`, the HTTP-CONNECT one in
//! `konnq_server::fuzzing`).
//!
//! Each function takes arbitrary bytes and panics only when a property
//! fails: a decoder panicking, a value that does not survive re-encoding, or
//! two ways of decoding the same input disagreeing. Errors on malformed
//! input are expected and are formatted (their `Display` runs too).
//!
//! - [`hpack`]: konnq's HPACK decoder against loona-hpack's.
//! - [`wire`]: the server↔agent frames ([`crate::wire`]).
//! - [`stream_datagrams`]: QUIC datagrams framed over TCP.
//! - [`konnectivity_packet`]: client packets as the frontends classify them.
//! - [`session`]: the Proxy stream state machine against its invariants.
//! - [`h2`]: the HTTP/2 connection state machine, driven as the server does.

pub mod h2;
mod hpack;
mod session;
mod stream;
mod wire;

pub use self::h2::h2;
pub use self::hpack::hpack;
pub use self::session::session;
pub use self::stream::stream_datagrams;
pub use self::wire::wire;

use prost::Message;

use crate::konnectivity::{self as k, FrontendPacket};
use crate::proto::Packet;

/// Calls `target` on every file of `fuzz/corpus/<name>/` under `root` (the
/// repository), in name order: the stable replay of a fuzz corpus. Panics,
/// naming the file, when `target` does, and when the corpus is missing or
/// empty, so a replay cannot pass without inputs.
pub fn replay_corpus(root: &std::path::Path, name: &str, target: impl Fn(&[u8])) {
    let dir = root.join("fuzz/corpus").join(name);
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} unreadable: {e}", dir.display()))
        .map(|entry| entry.expect("readable entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    for file in &files {
        let input = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        assert!(outcome.is_ok(), "{name}: {} fails", file.display());
    }
}

/// Sizes of the pieces arbitrary input is cut into, drawn from `seed`: 1 to
/// 64 bytes, so the fuzzer controls where frames are split.
pub struct Chunks(u32);

impl Chunks {
    pub fn new(seed: u8) -> Chunks {
        Chunks(u32::from(seed) | 0x100)
    }

    pub fn next_len(&mut self) -> usize {
        self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        1 + (self.0 >> 16) as usize % 64
    }
}

/// A Konnectivity `Packet` as prost decodes it from a client, classified
/// as the gRPC and HTTP/2 frontends classify it; DIAL_REQs are checked and
/// DATA heads rebuilt with [`k::data_head`], which must match prost.
pub fn konnectivity_packet(data: &[u8]) {
    let Ok(packet) = Packet::decode(data) else { return };
    let encoded = packet.encode_to_vec();
    assert_eq!(Packet::decode(&encoded[..]).as_ref(), Ok(&packet), "prost round trip");
    match FrontendPacket::try_from(packet) {
        Ok(FrontendPacket::DialReq(req)) => {
            if let Err(reason) = k::check_dial(&req) {
                assert!(!reason.is_empty());
            }
        }
        Ok(FrontendPacket::Data { connect_id, data }) => {
            let mut ours = k::data_head(connect_id, data.len());
            ours.extend_from_slice(&data);
            assert_eq!(ours, k::data(connect_id, data).encode_to_vec(), "data_head disagrees with prost");
        }
        Ok(_) => {}
        Err(malformed) => drop(malformed.to_string()),
    }
}
