//! The apiservers' side: per server, one client that dials through that
//! server's Unix socket at a fixed rate (open loop), each dial webhook-like
//! (a new single-use tunnel, DIAL_REQ, one small request and its reply,
//! CLOSE_REQ/CLOSE_RSP), every dial recorded with the phase it began in
//! and, when it failed, the step and the reason. A paused client (its
//! server restarting) sends no new dials; its dials in flight go on.
//!
//! Everything is bounded: dials per client by rate × the run's longest
//! duration, dials in flight per client, and each dial by a timeout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use konnq_shared::client::{connect_uds, ClientError, ProxyConn};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::schedule::{intended_offset, total_requests};

/// Where a run is, for attributing dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Everything up, nothing happening.
    Steady,
    /// Agents stopped (SIGTERM) and started again, one at a time.
    AgentRoll,
    /// Servers stopped (SIGTERM) and started again, one at a time.
    ServerRoll,
    /// One server SIGKILLed and started again.
    CrashServer,
    /// One agent SIGKILLed (not started again).
    CrashAgent,
}

impl Phase {
    pub const ALL: [Phase; 5] =
        [Phase::Steady, Phase::AgentRoll, Phase::ServerRoll, Phase::CrashServer, Phase::CrashAgent];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Steady => "steady",
            Phase::AgentRoll => "agent-roll",
            Phase::ServerRoll => "server-roll",
            Phase::CrashServer => "crash-server",
            Phase::CrashAgent => "crash-agent",
        }
    }
}

/// One dial: which client (= server), when (seconds since the run's
/// origin), and the failure reason if it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialRecord {
    pub client: usize,
    pub phase: Phase,
    pub start: f64,
    pub end: f64,
    pub error: Option<String>,
}

/// Dials that fell due but were not sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotSent {
    /// The client's server was restarting.
    pub paused: u64,
    /// The client already had its most dials in flight.
    pub capped: u64,
}

#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// Dials per second per client.
    pub rate: f64,
    /// Request (and reply) size.
    pub bytes: usize,
    /// A dial not done after this failed ("timeout").
    pub timeout: Duration,
    pub max_in_flight: usize,
    /// No client dials after this.
    pub max_run: Duration,
}

#[derive(Default)]
struct Shared {
    records: Mutex<Vec<DialRecord>>,
    not_sent: Mutex<Vec<(usize, Phase, NotSent)>>,
}

impl Shared {
    fn count(&self, client: usize, phase: Phase, paused: bool) {
        let Ok(mut v) = self.not_sent.lock() else { return };
        let i = match v.iter().position(|(c, p, _)| *c == client && *p == phase) {
            Some(i) => i,
            None => {
                v.push((client, phase, NotSent::default()));
                v.len() - 1
            }
        };
        if paused {
            v[i].2.paused += 1;
        } else {
            v[i].2.capped += 1;
        }
    }
}

/// The running clients.
pub struct Load {
    origin: Instant,
    phase: watch::Sender<Phase>,
    paused: Vec<watch::Sender<bool>>,
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
    clients: JoinSet<()>,
}

/// What the clients did.
pub struct Dials {
    pub records: Vec<DialRecord>,
    pub not_sent: Vec<(usize, Phase, NotSent)>,
}

impl Load {
    /// One client per socket, from now; times count from `origin`.
    pub fn start(sockets: &[PathBuf], target: SocketAddr, s: &LoadSettings, origin: Instant) -> Load {
        let (phase, _) = watch::channel(Phase::Steady);
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared::default());
        let mut clients = JoinSet::new();
        let mut paused = Vec::new();
        for (i, socket) in sockets.iter().enumerate() {
            let (pause, _) = watch::channel(false);
            let c = Client {
                index: i,
                socket: socket.clone(),
                target,
                s: s.clone(),
                origin,
                phase: phase.subscribe(),
                paused: pause.subscribe(),
                stop: stop.subscribe(),
                shared: Arc::clone(&shared),
            };
            clients.spawn(c.run());
            paused.push(pause);
        }
        Load { origin, phase, paused, stop, shared, clients }
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.send_replace(p);
    }

    pub fn pause(&self, client: usize) {
        self.paused[client].send_replace(true);
    }

    pub fn resume(&self, client: usize) {
        self.paused[client].send_replace(false);
    }

    /// Where the records' times count from.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Seconds since the origin.
    pub fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    /// Dials done so far (for the progress line).
    pub fn done(&self) -> usize {
        self.shared.records.lock().map_or(0, |r| r.len())
    }

    /// Stops sending, waits for the dials in flight (each bounded by its
    /// timeout), returns every record.
    pub async fn finish(mut self) -> Dials {
        self.stop.send_replace(true);
        while self.clients.join_next().await.is_some() {}
        let records = self.shared.records.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
        let not_sent = self.shared.not_sent.lock().map(|mut n| std::mem::take(&mut *n)).unwrap_or_default();
        Dials { records, not_sent }
    }
}

struct Client {
    index: usize,
    socket: PathBuf,
    target: SocketAddr,
    s: LoadSettings,
    origin: Instant,
    phase: watch::Receiver<Phase>,
    paused: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

impl Client {
    async fn run(mut self) {
        let in_flight = Arc::new(Semaphore::new(self.s.max_in_flight));
        let mut dials = JoinSet::new();
        let start = Instant::now();
        let total = total_requests(self.s.rate, self.s.max_run.as_secs_f64(), 10_000_000);
        for n in 0..total {
            tokio::select! {
                () = sleep_until(start + intended_offset(n, self.s.rate)) => {}
                _ = self.stop.wait_for(|&stop| stop) => break,
            }
            let phase = *self.phase.borrow();
            if *self.paused.borrow() {
                self.shared.count(self.index, phase, true);
                continue;
            }
            let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                self.shared.count(self.index, phase, false);
                continue;
            };
            let (socket, target, s, origin) = (self.socket.clone(), self.target, self.s.clone(), self.origin);
            let (client, shared) = (self.index, Arc::clone(&self.shared));
            dials.spawn(async move {
                let begin = origin.elapsed().as_secs_f64();
                let error = webhook(&socket, target, s.bytes, s.timeout).await.err();
                let record = DialRecord { client, phase, start: begin, end: origin.elapsed().as_secs_f64(), error };
                if let Ok(mut r) = shared.records.lock() {
                    r.push(record);
                }
                drop(permit);
            });
            while dials.try_join_next().is_some() {}
        }
        while dials.join_next().await.is_some() {}
    }
}

/// The steps of one dial, for failure reasons.
const STEPS: [&str; 4] =
    ["connecting to the socket", "waiting for DIAL_RSP", "in the request", "waiting for CLOSE_RSP"];

/// One webhook-like dial through `socket`: Err(reason) if it failed.
pub async fn webhook(socket: &Path, target: SocketAddr, bytes: usize, timeout: Duration) -> Result<(), String> {
    let step = AtomicU8::new(0);
    let one = async {
        let mut client = connect_uds(socket).await.map_err(|e| format!("connect: {e}"))?;
        step.store(1, Ordering::Relaxed);
        let mut conn = ProxyConn::dial(&mut client, &target.to_string()).await.map_err(|e| match e {
            ClientError::DialFailed(why) => format!("DIAL_RSP error: {why}"),
            other => format!("no DIAL_RSP: {other}"),
        })?;
        step.store(2, Ordering::Relaxed);
        exchange(&mut conn, bytes).await.map_err(|e| format!("connection closed mid-request: {e}"))?;
        step.store(3, Ordering::Relaxed);
        conn.close().await.map_err(|e| format!("no CLOSE_RSP: {e}"))
    };
    match tokio::time::timeout(timeout, one).await {
        Ok(r) => r.map_err(|e| normalize(&e)),
        Err(_) => Err(format!("timeout {}", STEPS[usize::from(step.load(Ordering::Relaxed)).min(3)])),
    }
}

/// One request and its reply; the error says how the connection failed.
async fn exchange(conn: &mut ProxyConn, bytes: usize) -> Result<(), String> {
    conn.write(Bytes::from(vec![b'w'; bytes])).await.map_err(|e| e.to_string())?;
    conn.read_exact(bytes).await.map(|_| ()).map_err(|e| match e {
        // read_exact's way of saying CLOSE_RSP came first.
        ClientError::Protocol(why) if why.starts_with("closed after") => format!("CLOSE_RSP before the reply ({why})"),
        other => other.to_string(),
    })
}

/// A reason with every word that holds a digit (IDs, addresses, ports,
/// counts) as `N` and at most 160 characters, so that alike failures count
/// together.
pub fn normalize(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.chars().any(|c| c.is_ascii_digit()) {
            out.push('N');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in reason.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(if c.is_control() { ' ' } else { c });
        }
    }
    flush(&mut word, &mut out);
    if out.chars().count() > 160 {
        out = out.chars().take(160).collect::<String>() + "…";
    }
    out
}

/// A long-lived connection during the agent crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub client: usize,
    /// When its last request was answered (seconds since the origin).
    pub last_ok: Option<f64>,
    /// When it failed, and how (`None`: still open at the end).
    pub ended: Option<f64>,
    pub error: Option<String>,
}

/// Dials through `socket`, then sends a request every `every` until
/// `until` or a failure.
pub async fn hold(
    client: usize,
    socket: PathBuf,
    target: SocketAddr,
    bytes: usize,
    every: Duration,
    until: Instant,
    origin: Instant,
) -> Held {
    let mut h = Held { client, last_ok: None, ended: None, error: None };
    let now = || origin.elapsed().as_secs_f64();
    let opened = async {
        let mut c = connect_uds(&socket).await?;
        ProxyConn::dial(&mut c, &target.to_string()).await.map(|conn| (c, conn))
    };
    let (_client, mut conn) = match tokio::time::timeout_at(until, opened).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            (h.ended, h.error) = (Some(now()), Some(normalize(&format!("dial: {e}"))));
            return h;
        }
        Err(_) => return h,
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = sleep_until(until) => break,
            _ = tick.tick() => {}
        }
        match tokio::time::timeout_at(until, exchange(&mut conn, bytes)).await {
            Ok(Ok(())) => h.last_ok = Some(now()),
            Ok(Err(e)) => {
                (h.ended, h.error) = (Some(now()), Some(normalize(&e)));
                return h;
            }
            Err(_) => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_count_together() {
        assert_eq!(normalize("DIAL_RSP error: No agent available"), "DIAL_RSP error: No agent available");
        assert_eq!(normalize("connect 127.0.0.1:20345 id 77\n"), "connect N.N.N.N:N id N ");
        assert_eq!(normalize("agent 8d654f325f6d2d59: closed"), "agent N: closed");
        assert_eq!(normalize("HTTP/2 GOAWAY"), "HTTP/N GOAWAY");
        let long = normalize(&"x".repeat(500));
        assert!(long.chars().count() <= 161 && long.ends_with('…'));
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_failure() {
        let dir = tempfile::tempdir().unwrap();
        let target = "127.0.0.1:9".parse().unwrap();
        let err = webhook(&dir.path().join("none.sock"), target, 10, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.starts_with("connect: "), "{err}");
    }

    #[tokio::test]
    async fn a_silent_socket_is_a_timeout_naming_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let target = "127.0.0.1:9".parse().unwrap();
        let err = webhook(&path, target, 10, Duration::from_millis(300)).await.unwrap_err();
        assert!(err.starts_with("timeout "), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_client_counts_what_it_does_not_send() {
        let dir = tempfile::tempdir().unwrap();
        let s = LoadSettings {
            rate: 200.0,
            bytes: 10,
            timeout: Duration::from_secs(1),
            max_in_flight: 4,
            max_run: Duration::from_secs(10),
        };
        let load = Load::start(&[dir.path().join("none.sock")], "127.0.0.1:9".parse().unwrap(), &s, Instant::now());
        load.pause(0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        load.set_phase(Phase::AgentRoll);
        load.resume(0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let d = load.finish().await;
        let paused: u64 = d.not_sent.iter().filter(|n| n.1 == Phase::Steady).map(|n| n.2.paused).sum();
        assert!(paused >= 5, "{:?}", d.not_sent);
        assert!(
            d.records.iter().all(|r| r.phase == Phase::AgentRoll && r.error.is_some()),
            "no socket: every dial failed"
        );
        assert!(!d.records.is_empty());
    }
}
