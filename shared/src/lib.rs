//! konnq's common crate, shared by konnq-server, konnq-agent and the tools.
//!
//! The protocol itself (Konnectivity messages, konnq's wire frames, HPACK)
//! is sans-IO in `konnq_protocol`; this crate holds what runs it over real
//! transports.
//!
//! - [`proto`]: the gRPC service `ProxyService.Proxy` as kube-apiserver calls
//!   it (tonic, over `konnq_protocol::proto`'s messages, which it
//!   re-exports); [`codec`] is the gRPC codec with small per-stream buffers
//!   (konnq's client side).
//! - [`quic`]: the QUIC transport settings and stream helpers; [`cc`]
//!   konnq's BBR-style QUIC congestion controller; [`tls`] rustls
//!   configurations (ring only); [`certs`] development certificates;
//!   [`stream_socket`] carries QUIC over TCP where UDP is blocked.
//! - [`config`]: validated TOML/flag configuration of both binaries.
//! - [`kube`]: the kube-apiserver client (kubeconfig or in-cluster) and how
//!   its failures are told; [`leases`]: server Leases (names, labels,
//!   validity), sans-IO.
//! - [`client`]: a Konnectivity client over a Unix socket (demo, load tests).
//! - [`profiling`]: `/debug/pprof/` for both admin ports (`--enable-profiling`):
//!   CPU profiles as profile.proto for `go tool pprof`.
//! - `fuzzing` (hidden): the body of the `config` fuzz target in `fuzz/`,
//!   replayed on stable by `tests/fuzz_corpora.rs`.

pub mod proto {
    pub use konnq_protocol::proto::*;
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
pub mod kube;
pub mod leases;
pub mod logging;
pub mod memory;
pub mod profiling;
pub mod prom;
pub mod quic;
pub mod runtime;
pub mod signal;
pub mod stream_socket;
pub mod tls;
