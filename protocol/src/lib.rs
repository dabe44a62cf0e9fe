//! konnq's protocol core: everything konnq speaks, as plain functions and
//! state over bytes. No async runtime, no sockets, no TLS; the binaries'
//! drivers (konnq-server, konnq-agent) do the IO around it.
//!
//! - [`proto`]: the Konnectivity messages as kube-apiserver speaks them
//!   (`Packet` and its payloads), compiled from `proto/konnectivity.proto`;
//!   [`konnectivity`] classifies client packets and builds answers.
//! - [`session`]: one Proxy stream's rules (dial, one DIAL_RSP, exactly one
//!   CLOSE_RSP) as a state machine the server's session driver feeds.
//! - [`wire`]: konnq's own server↔agent frames (dial header, dial result,
//!   control messages).
//! - [`stream_datagrams`]: QUIC datagrams framed over a byte stream, where
//!   UDP is blocked.
//! - [`hpack`]: the HPACK decoder of the server's HTTP/2 frontend
//!   (table-driven Huffman decoding, no allocation per string).
//! - [`h2`]: the frontend's HTTP/2 server connection as a state machine:
//!   bytes and time in, events and bytes out; the server's async driver
//!   around it owns the socket, the sessions and the budgets.
//! - `fuzzing` (hidden): the bodies of the fuzz targets in `fuzz/`, replayed
//!   on stable by `tests/fuzz_corpora.rs`.

pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}
#[doc(hidden)]
pub mod fuzzing;
pub mod h2;
pub mod hpack;
pub mod konnectivity;
pub mod session;
pub mod stream_datagrams;
pub mod wire;
