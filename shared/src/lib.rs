//! konnq's common crate, shared by konnq-server, konnq-agent and the tools.
//!
//! - [`proto`]: the Konnectivity protocol as kube-apiserver speaks it
//!   (`ProxyService.Proxy`, `Packet`), compiled from `proto/konnectivity.proto`;
//!   [`konnectivity`] classifies client packets and builds answers; [`codec`]
//!   is the gRPC codec with small per-stream buffers (konnq's client side).
//! - [`wire`]: konnq's own server↔agent frames (dial header, dial result,
//!   control messages), sans-IO; [`quic`] the QUIC transport settings and
//!   stream helpers; [`cc`] konnq's BBR-style QUIC congestion controller;
//!   [`tls`] rustls configurations (ring only); [`certs`] development
//!   certificates; [`stream_datagrams`] (sans-IO) and [`stream_socket`]
//!   carry QUIC over TCP where UDP is blocked.
//! - [`hpack`]: the HPACK decoder of the server's HTTP/2 frontend
//!   (table-driven Huffman decoding, no allocation per string).
//! - [`config`]: validated TOML/flag configuration of both binaries.
//! - [`kube`]: the kube-apiserver client (kubeconfig or in-cluster) and how
//!   its failures are told; [`leases`]: server Leases (names, labels,
//!   validity), sans-IO.
//! - [`client`]: a Konnectivity client over a Unix socket (demo, load tests).
//! - [`profiling`]: `/debug/pprof/` for both admin ports (`--enable-profiling`):
//!   CPU profiles as profile.proto for `go tool pprof`.
//! - `fuzzing` (hidden): the bodies of the fuzz targets in `fuzz/`, replayed
//!   on stable by `tests/fuzz_corpora.rs`.

pub mod proto {
    tonic::include_proto!("_");
}
pub mod cc;
pub mod certs;
pub mod client;
pub mod codec;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod gauge;
pub mod hpack;
pub mod konnectivity;
pub mod kube;
pub mod leases;
pub mod logging;
pub mod memory;
pub mod profiling;
pub mod prom;
pub mod quic;
pub mod runtime;
pub mod signal;
pub mod stream_datagrams;
pub mod stream_socket;
pub mod tls;
pub mod wire;
