//! Clean-up when destructors do not run: SIGTERM with `install_signal_cleanup`, and
//! `cleanup_stale` after a crash. Needs root.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use konnq_netlab::{cleanup_stale, install_signal_cleanup, netns, Lab, LinkSettings, Side};

const PREFIX: &str = "kqclean";

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("konnq-netlab tests need root (CAP_NET_ADMIN) to create network namespaces; run them as root");
    }
}

/// Run as a child process by `sigterm_cleans_up`: builds a lab, says so, waits.
#[test]
#[ignore = "helper: sigterm_cleans_up runs it in a child process"]
fn signal_helper() -> Result<()> {
    install_signal_cleanup()?;
    let lab = Lab::create(PREFIX, "delay=1ms".parse()?)?;
    println!("NS {} {}", lab.namespace(Side::A), lab.namespace(Side::B));
    println!("READY");
    std::thread::sleep(Duration::from_secs(20));
    bail!("no signal came within 20 s")
}

#[test]
fn sigterm_cleans_up() -> Result<()> {
    require_root();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--exact", "signal_helper", "--ignored", "--nocapture", "--test-threads=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut names = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        // libtest may print "test signal_helper ... " on the same line first.
        if let Some(at) = line.find("NS ") {
            names = line[at + 3..].split_whitespace().map(str::to_string).collect();
        }
        if line.ends_with("READY") {
            break;
        }
    }
    ensure!(names.len() == 2, "the helper did not report its namespaces");
    let listed = netns::list()?;
    ensure!(names.iter().all(|n| listed.contains(n)), "helper namespaces missing: {listed:?}");
    // SAFETY: SIGTERM to the child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait()?;
    ensure!(status.code() == Some(143), "helper exit: {status}");
    let listed = netns::list()?;
    ensure!(names.iter().all(|n| !listed.contains(n)), "namespaces left after SIGTERM: {listed:?}");
    Ok(())
}

#[test]
fn stale_namespaces_of_dead_runs_are_removed() -> Result<()> {
    require_root();
    let mut gone = Command::new("true").spawn()?;
    let dead_pid = gone.id();
    gone.wait()?;
    let stale = format!("{PREFIX}-{dead_pid}-0a");
    let status = Command::new("ip").args(["netns", "add", &stale]).status()?;
    ensure!(status.success(), "ip netns add {stale}: {status}");
    let live = Lab::create(PREFIX, LinkSettings::default())?;
    let removed = cleanup_stale(PREFIX)?;
    let listed = netns::list()?;
    ensure!(removed.contains(&stale) && !listed.contains(&stale), "stale namespace kept: {removed:?}");
    for side in [Side::A, Side::B] {
        ensure!(listed.iter().any(|n| n == live.namespace(side)), "a live lab's namespace was removed");
    }
    Ok(())
}
