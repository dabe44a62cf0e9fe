//! The live progress line on stderr: what runs, for how long, and its
//! running counters. Rewritten in place on a terminal, one line every few
//! seconds otherwise (logs, CI).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counters a scenario bumps while it runs.
#[derive(Default)]
pub struct Counters {
    pub bytes: AtomicU64,
    pub ops: AtomicU64,
    pub errors: AtomicU64,
    /// Connections open now (scale).
    pub open: AtomicU64,
}

impl Counters {
    pub fn add_bytes(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn op(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

struct Stage {
    label: String,
    started: Instant,
    planned: Duration,
    counters: Arc<Counters>,
    last: (Instant, u64, u64),
}

/// Shared by the runner and the printing task.
#[derive(Clone)]
pub struct Progress {
    stage: Arc<Mutex<Option<Stage>>>,
    tty: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress { stage: Arc::new(Mutex::new(None)), tty: std::io::stderr().is_terminal() }
    }

    /// Starts a stage; returns its counters.
    pub fn stage(&self, label: String, planned: Duration) -> Arc<Counters> {
        let counters = Arc::new(Counters::default());
        let now = Instant::now();
        let stage = Stage { label, started: now, planned, counters: Arc::clone(&counters), last: (now, 0, 0) };
        if let Ok(mut s) = self.stage.lock() {
            *s = Some(stage);
        }
        counters
    }

    /// A message on its own line (the progress line resumes below it).
    pub fn note(&self, msg: &str) {
        let mut err = std::io::stderr().lock();
        let _ = if self.tty { writeln!(err, "\r\x1b[2K{msg}") } else { writeln!(err, "{msg}") };
    }

    fn line(&self) -> Option<String> {
        let mut guard = self.stage.lock().ok()?;
        let s = guard.as_mut()?;
        let now = Instant::now();
        let bytes = s.counters.bytes.load(Ordering::Relaxed);
        let ops = s.counters.ops.load(Ordering::Relaxed);
        let dt = now.duration_since(s.last.0).as_secs_f64().max(1e-3);
        let line = format_line(
            &s.label,
            now.duration_since(s.started),
            s.planned,
            (bytes - s.last.1) as f64 * 8.0 / dt / 1e9,
            (ops - s.last.2) as f64 / dt,
            s.counters.errors.load(Ordering::Relaxed),
            s.counters.open.load(Ordering::Relaxed),
        );
        s.last = (now, bytes, ops);
        Some(line)
    }

    /// Prints the line until `stop` resolves.
    pub async fn run(self, stop: tokio::sync::watch::Receiver<bool>) {
        let every = if self.tty { Duration::from_millis(500) } else { Duration::from_secs(5) };
        let mut stop = stop;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|&s| s) => break,
            }
            if let Some(line) = self.line() {
                let mut err = std::io::stderr().lock();
                let _ = if self.tty { write!(err, "\r\x1b[2K{line}") } else { writeln!(err, "{line}") };
                let _ = err.flush();
            }
        }
        if self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// One progress line.
pub fn format_line(
    label: &str,
    elapsed: Duration,
    planned: Duration,
    gbps: f64,
    ops_per_s: f64,
    errors: u64,
    open: u64,
) -> String {
    let mut s = format!("{label}  {:.0}/{:.0} s", elapsed.as_secs_f64(), planned.as_secs_f64());
    if gbps > 0.0 {
        s += &format!("  {gbps:.2} Gbit/s");
    }
    if ops_per_s > 0.0 {
        s += &format!("  {ops_per_s:.0} ops/s");
    }
    if open > 0 {
        s += &format!("  {open} open");
    }
    if errors > 0 {
        s += &format!("  {errors} errors");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_only_what_moves() {
        let l = format_line("konnq dial c=32", Duration::from_secs(3), Duration::from_secs(10), 0.0, 5012.4, 0, 0);
        assert_eq!(l, "konnq dial c=32  3/10 s  5012 ops/s");
        let l = format_line("x", Duration::ZERO, Duration::from_secs(1), 1.234, 0.0, 2, 10);
        assert_eq!(l, "x  0/1 s  1.23 Gbit/s  10 open  2 errors");
    }

    #[test]
    fn stage_counters_feed_the_line() {
        let p = Progress { stage: Arc::new(Mutex::new(None)), tty: false };
        assert!(p.line().is_none());
        let c = p.stage("konnq scale".into(), Duration::from_secs(5));
        c.open.store(42, Ordering::Relaxed);
        c.error();
        let line = p.line().unwrap();
        assert!(line.starts_with("konnq scale  0/5 s") && line.contains("42 open") && line.contains("1 errors"));
    }
}
