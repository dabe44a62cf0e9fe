//! The dial scenario with kube-apiserver's own client library as the load
//! generator: `konnq-dialclient` (Go, konnectivity-client over grpc-go,
//! `loadtest/upstream/dialclient`) runs `concurrency` workers against the
//! peer's Unix socket, each looping "single-use tunnel with kube-apiserver's
//! dial options, DIAL_REQ, one small exchange, close", and reports every
//! recorded dial's timings and its own CPU. The figures land in the same
//! [`Measured`] as the Rust client's, so the report shows both the same way.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use tokio::time::Instant;

use super::dial::Measured;
use super::{cpu_mark, cpu_split};
use crate::conn::Dialer;
use crate::peers::Peer;
use crate::progress::Progress;
use crate::settings::Dial;
use crate::stats::{histogram, record};
use crate::target::Targets;

/// What konnq-dialclient prints: one JSON object.
#[derive(Debug, Deserialize)]
struct GoResult {
    dials: u64,
    errors: u64,
    connect_us: Option<Vec<u64>>,
    dial_us: Option<Vec<u64>>,
    total_us: Option<Vec<u64>>,
    client_cpu_secs: f64,
    first_error: Option<String>,
}

/// One round with the Go client.
pub async fn measure(
    peer: &Peer,
    targets: Targets,
    s: &Dial,
    bin: &Path,
    progress: &Progress,
) -> anyhow::Result<Measured> {
    let Dialer::Grpc { socket } = &peer.dialer else {
        bail!("the Go dial client speaks gRPC over the server's Unix socket; {} has none", peer.kind.name());
    };
    anyhow::ensure!(s.rate.is_none(), "the Go dial client runs closed-loop workers only (no --dial-rate)");
    let label = format!("{} dial c={} (Go client)", peer.kind.name(), s.concurrency);
    let _counters = progress.stage(label, Duration::from_secs_f64(s.warmup_secs + s.secs));
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("-socket").arg(socket).arg("-target").arg(targets.echo.to_string());
    cmd.args(["-workers", &s.concurrency.to_string(), "-secs", &s.secs.to_string()]);
    cmd.args(["-warmup-secs", &s.warmup_secs.to_string(), "-bytes", &s.bytes.to_string()]);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
    tokio::time::sleep_until(start + Duration::from_secs_f64(s.warmup_secs)).await;
    let mark0 = cpu_mark(peer, targets);
    tokio::time::sleep_until(start + Duration::from_secs_f64(s.warmup_secs + s.secs)).await;
    let mut cpu = cpu_split(&mark0, &cpu_mark(peer, targets));
    // The dials in flight at the end finish within the client's own 30 s timeout.
    let limit = Duration::from_secs(60);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("{} still running {limit:?} after its time", bin.display()))??;
    anyhow::ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let r: GoResult = serde_json::from_slice(&out.stdout).context("konnq-dialclient's output")?;
    if r.dials == 0 {
        bail!("no dial succeeded through the Go client: {}", r.first_error.unwrap_or_default());
    }
    cpu.runner = r.client_cpu_secs / s.secs;
    let hist = |v: Option<Vec<u64>>| {
        let mut h = histogram();
        for us in v.unwrap_or_default() {
            record(&mut h, us.saturating_mul(1000));
        }
        h
    };
    Ok(Measured {
        dial: hist(r.dial_us),
        connect: hist(r.connect_us),
        total: hist(r.total_us),
        dials: r.dials,
        errors: r.errors,
        secs: s.secs,
        cpu,
    })
}
