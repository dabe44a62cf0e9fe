//! konnq-netlab: a lossy-link lab. Two network namespaces, A and B, each hold a
//! TUN device; a userspace relay copies IP packets between the two devices and
//! impairs each direction on the way — one-way delay, jitter, random and
//! Gilbert–Elliott loss, a rate limit with a drop-tail queue. Because it works on
//! IP packets it hits TCP and QUIC (UDP) alike, without kernel `netem`.
//!
//! ```text
//!  netns {prefix}-{pid}-{n}a                                      netns {prefix}-{pid}-{n}b
//!  10.77.0.1/30 on kq0 ──TUN fd──▶ [A→B impairment thread] ──TUN fd──▶ kq0 10.77.0.2/30
//!                      ◀──TUN fd── [B→A impairment thread] ◀──TUN fd──
//! ```
//!
//! Layers:
//! - [`settings`]: what a direction does ([`DirectionSettings`], [`LinkSettings`]),
//!   validation naming the field at fault, and the compact spec parser
//!   (`delay=25ms,jitter=2ms,loss=1%,rate=100mbit,queue=625000`).
//! - [`impair`]: the sans-IO model ([`Impairment`]): packets in with their arrival
//!   time, drop verdicts and release times out; no clock, no I/O, seeded RNG.
//! - `tun`, `netns`, `relay`: TUN devices, namespaces, and one relay thread per
//!   direction sleeping in `ppoll` until the next release or packet.
//! - [`Lab`]: builds it all and tears it down ([`Lab::create_veth`] builds the
//!   same two namespaces joined by a plain veth pair of a chosen MTU instead:
//!   the kernel's link, no relay, no impairment); runs commands, threads and async code
//!   inside either namespace; [`Lab::verify`] measures RTT, loss and goodput.
//!
//! Addresses: `10.77.0.0/30` exists only inside each lab's own namespaces (every
//! lab reuses it; namespaces keep them apart) and nothing routes beyond it.
//! Needs root (CAP_NET_ADMIN), `/dev/net/tun` and iproute2's `ip`.
//!
//! Code inside a namespace, three ways:
//! - a socket belongs to the namespace it was *created* in, wherever it is used
//!   later: create it with [`Lab::with_ns`] (a short thread that enters the
//!   namespace) and hand it to the test's own runtime — `TcpListener::bind` then
//!   `tokio::net::TcpListener::from_std`, a `UdpSocket` for a quinn `Endpoint`, or a
//!   `socket2` socket to connect from (a plain `connect` in the caller's thread would
//!   open its socket in the root namespace, which has no route to `10.77.0.0/30`);
//! - [`Lab::spawn_async_in`]: a thread that enters the namespace and runs a
//!   current-thread tokio runtime there (everything it opens is inside);
//! - [`Lab::run_in`]: a child process (konnq binaries, upstream's Go proxy).
//!
//! Clean-up: dropping a [`Lab`] stops the relay, kills every process still in
//! its namespaces and deletes them. A process killed by a signal does not run
//! destructors: call [`install_signal_cleanup`] once to clean up on SIGINT/SIGTERM,
//! and [`cleanup_stale`] at start-up to remove a crashed run's leftovers.
//!
//! ```no_run
//! use konnq_netlab::{Lab, LinkSettings, Side, VerifyConfig};
//! let link: LinkSettings = "delay=25ms,loss=1%,rate=100mbit".parse()?;
//! let lab = Lab::create("kqdemo", link)?;
//! // Bind in B, use anywhere: the socket stays in B's namespace.
//! let listener = lab.with_ns(Side::B, || std::net::TcpListener::bind(("10.77.0.2", 0)))??;
//! let report = lab.verify(&VerifyConfig::default())?;
//! println!("{report}");
//! # drop(listener);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod error;
pub mod impair;
mod lab;
pub mod measure;
pub mod netns;
mod relay;
pub mod settings;
mod spec;
mod tun;

pub use error::LabError;
pub use impair::{DirectionStats, DropReason, Impairment, Verdict};
pub use lab::{Lab, LinkStats, Side, ADDR_A, ADDR_B, DEVICE, PREFIX_LEN, VETH_MTU};
pub use measure::{GoodputReport, LinkReport, LossReport, RttReport, VerifyConfig};
pub use netns::{cleanup_all, cleanup_stale, install_signal_cleanup, NsThread};
pub use settings::{DirectionSettings, GilbertElliott, LinkSettings, SettingsError};
