//! konnq-loadtest: drives a Konnectivity server exactly as kube-apiserver
//! does (gRPC `ProxyService` over the Unix socket, a single-use tunnel per
//! dial by default; many streams per HTTP/2 connection and HTTP CONNECT as
//! options) against targets it runs itself, and reports what it measured —
//! konnq, upstream apiserver-network-proxy and direct TCP side by side, in
//! the same run on the same machine.
//!
//! ```text
//! runner ──(Unix socket: gRPC / HTTP CONNECT)──▶ server ══▶ agent ──TCP──▶ target process (echo, source, sink)
//!        └──────────────────── direct TCP (the physical limit) ──────────▶
//! ```
//!
//! - Pure parts, unit tested: [`stats`] (hdrhistogram summaries, rates,
//!   growth), [`schedule`] (open-loop schedule, coordinated-omission
//!   correction), [`procfs`] parsing, [`report`] (model, targets, table,
//!   SVG), [`settings`].
//! - Thin drivers: [`conn`] (the client frontends), [`peers`] (server and
//!   agent processes), [`target`] (the target process), [`upstream`] (go
//!   build), [`scenarios`], [`runner`].
//! - [`fleet`]: thousands of simulated agents on one server (RSS per
//!   agent, idle CPU, time to readmit them all after a restart).
//! - [`roll`]: rolling restarts and crashes of three servers behind nginx
//!   and three agents, every dial recorded.
//! - [`builtin`]: konnq-server / konnq-agent from the linked libraries, so
//!   the smoke test needs no other package's binaries.

pub mod agents;
pub mod builtin;
pub mod child;
pub mod cli;
pub mod conn;
pub mod fleet;
pub mod lab;
pub mod machine;
pub mod peers;
pub mod perf;
pub mod procfs;
pub mod progress;
pub mod report;
pub mod roll;
pub mod rss;
pub mod runner;
pub mod scenarios;
pub mod schedule;
pub mod settings;
pub mod stats;
pub mod target;
pub mod upstream;
