//! Child processes (servers, agents, the target process): started with
//! their output in a log file, killed by the kernel if the runner dies
//! (`PR_SET_PDEATHSIG`), stopped with SIGTERM and, after a grace period, SIGKILL.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::procfs::{self, ProcSample};

/// A program and the arguments that come before the caller's (for the
/// built-in konnq: this executable and a hidden subcommand), and the network
/// namespace it runs in (the lab's; `None`: the runner's own).
#[derive(Debug, Clone)]
pub struct Program {
    pub path: PathBuf,
    pub prefix: Vec<String>,
    pub netns: Option<Arc<OwnedFd>>,
}

impl Program {
    pub fn plain(path: PathBuf) -> Program {
        Program { path, prefix: Vec::new(), netns: None }
    }

    pub fn with_prefix(path: PathBuf, prefix: Vec<String>) -> Program {
        Program { path, prefix, netns: None }
    }

    /// The same program, started inside the namespace `netns` refers to.
    pub fn in_netns(&self, netns: Arc<OwnedFd>) -> Program {
        Program { netns: Some(netns), ..self.clone() }
    }

    /// A command for this program (prefix arguments added, namespace entered
    /// between fork and exec, killed with the runner).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.args(&self.prefix).stdin(Stdio::null()).kill_on_drop(true);
        if let Some(ns) = &self.netns {
            konnq_netlab::netns::enter_on_exec(cmd.as_std_mut(), Arc::clone(ns));
        }
        die_with_parent(&mut cmd);
        cmd
    }

    pub fn describe(&self) -> String {
        std::iter::once(self.path.display().to_string())
            .chain(self.prefix.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub struct ChildProc {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
    child: Child,
    /// What started it, for [`ChildProc::respawn`].
    launch: Option<(Program, Vec<String>)>,
}

impl ChildProc {
    /// Starts `program prefix.. args..`, stdout and stderr into `log`.
    pub fn spawn(name: &str, program: &Program, args: &[String], log: &Path) -> anyhow::Result<ChildProc> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = program.command();
        cmd.args(args).stdout(out).stderr(err);
        let child = cmd.spawn().with_context(|| format!("starting {}", program.path.display()))?;
        let pid = child.id().context("child has no pid")?;
        let launch = Some((program.clone(), args.to_vec()));
        Ok(ChildProc { name: name.to_owned(), pid, log: log.to_owned(), child, launch })
    }

    /// Starts the same program with the same arguments again (after it
    /// exited or was killed), appending to the same log.
    pub fn respawn(&mut self) -> anyhow::Result<()> {
        let (program, args) = self.launch.clone().context("not started by ChildProc::spawn")?;
        let out = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        let err = out.try_clone()?;
        let mut cmd = program.command();
        cmd.args(&args).stdout(out).stderr(err);
        self.child = cmd.spawn().with_context(|| format!("restarting {}", program.path.display()))?;
        self.pid = self.child.id().context("child has no pid")?;
        Ok(())
    }

    /// Sends `signal` to the process (if it is still running).
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) with a pid this process spawned and has not reaped.
            unsafe {
                libc::kill(self.pid as libc::pid_t, signal);
            }
        }
    }

    /// Waits (bounded) for the process to exit after a signal.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.child.wait()).await.is_ok()
    }

    /// Wraps an already spawned child.
    pub fn from_child(name: &str, child: Child, log: PathBuf) -> anyhow::Result<ChildProc> {
        let pid = child.id().context("child has no pid")?;
        Ok(ChildProc { name: name.to_owned(), pid, log, child, launch: None })
    }

    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        procfs::sample(self.pid).with_context(|| format!("reading /proc of {} ({})", self.name, self.pid))
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) with a pid this process spawned and has not reaped.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// Makes the kernel SIGKILL the child when the thread that forked it (a
/// runtime worker, alive as long as the runner) exits, so a killed runner
/// leaves no servers behind.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A free TCP and UDP port on 127.0.0.1 in 20000..32000: below Linux's
/// ephemeral range and upstream's 49151 limit. Another process may still
/// take it before the child binds; callers retry the start.
pub fn free_port(taken: &[u16]) -> anyhow::Result<u16> {
    for _ in 0..200 {
        let port = fastrand::u16(20_000..32_000);
        if taken.contains(&port) {
            continue;
        }
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port found in 20000..32000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_in_range() {
        let a = free_port(&[]).unwrap();
        let b = free_port(&[a]).unwrap();
        assert_ne!(a, b);
        assert!((20_000..32_000).contains(&a));
    }

    #[tokio::test]
    async fn spawn_sample_and_stop() {
        let dir = tempfile::tempdir().unwrap();
        let sleep = Program::plain("sleep".into());
        let mut c = ChildProc::spawn("sleeper", &sleep, &["30".to_owned()], &dir.path().join("s.log")).unwrap();
        assert!(c.exited().is_none());
        assert!(c.sample().unwrap().rss_bytes > 0);
        let started = std::time::Instant::now();
        c.stop(Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(5), "SIGTERM ended it");
    }
}
