//! Link verification: measure what the lab's link really does, so callers can say
//! "measured RTT, loss rate and rate within a few percent of the settings".
//!
//! - RTT: UDP ping-pong from A to an echo socket in B, one probe per interval,
//!   replies matched by sequence number (probes lost either way are counted).
//! - Loss: N paced UDP datagrams one way, the receiver counts distinct sequence
//!   numbers.
//! - Goodput: one TCP bulk transfer one way for a bounded time; the slope of a
//!   least-squares line through the receiver's (time, bytes so far) samples after
//!   a warm-up of a quarter of the time. A slope, not bytes over a window: after a
//!   loss, TCP hands over all the out-of-order data at once when the hole is
//!   repaired, and such a jump at a window edge would skew a plain ratio.
//!
//! Sockets are created by short threads inside the namespaces ([`Lab::with_ns`])
//! and then used from ordinary threads: a socket stays in the namespace it was
//! created in. Every loop is bounded in count and in time.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::LabError;
use crate::lab::{Lab, Side};

/// UDP payload of RTT probes and loss datagrams, bytes.
pub const PROBE_BYTES: usize = 64;
/// IP + UDP header bytes added to a datagram on the wire.
const UDP_OVERHEAD: usize = 28;
/// Share of a 1500-byte TCP/IPv4 packet that is payload (MSS 1448 with timestamps).
pub const TCP_PAYLOAD_SHARE: f64 = 1448.0 / 1500.0;

/// Round-trip times of UDP probes.
#[derive(Debug, Clone, PartialEq)]
pub struct RttReport {
    pub sent: u32,
    pub received: u32,
    pub min: Duration,
    pub median: Duration,
    pub mean: Duration,
    pub p95: Duration,
    pub max: Duration,
}

/// One-way datagram loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossReport {
    pub sent: u32,
    pub received: u32,
}

impl LossReport {
    /// Fraction of datagrams that did not arrive.
    pub fn loss_rate(&self) -> f64 {
        1.0 - f64::from(self.received) / f64::from(self.sent.max(1))
    }
}

/// One-way TCP goodput.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GoodputReport {
    /// Bytes received in the whole transfer.
    pub total_bytes: u64,
    /// From the first byte received to the last.
    pub elapsed: Duration,
    /// Length of the fitted window (after warm-up).
    pub window: Duration,
    /// Fitted payload bytes per second over the window.
    pub bytes_per_sec: f64,
}

impl GoodputReport {
    /// Payload bits per second over the measured window.
    pub fn bits_per_sec(&self) -> f64 {
        self.bytes_per_sec * 8.0
    }
}

/// What [`Lab::verify`] measures.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    pub rtt_probes: u32,
    pub rtt_interval: Duration,
    pub loss_datagrams: u32,
    pub loss_interval: Duration,
    /// Zero skips the goodput measurement.
    pub goodput_duration: Duration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            rtt_probes: 100,
            rtt_interval: Duration::from_millis(10),
            loss_datagrams: 4000,
            loss_interval: Duration::from_micros(250),
            goodput_duration: Duration::from_secs(3),
        }
    }
}

/// Measured figures beside what the A→B / B→A settings predict.
#[derive(Debug, Clone)]
pub struct LinkReport {
    pub rtt: RttReport,
    pub loss_a_to_b: LossReport,
    pub goodput_a_to_b: Option<GoodputReport>,
    /// Both delays plus both probe serializations.
    pub expected_rtt: Duration,
    /// Random plus Gilbert–Elliott mean loss of A→B.
    pub expected_loss_a_to_b: f64,
    /// A→B rate times the TCP payload share, if A→B has a rate.
    pub expected_goodput_bps: Option<f64>,
}

impl fmt::Display for LinkReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (rtt, exp) = (ms(self.rtt.median), ms(self.expected_rtt));
        writeln!(
            f,
            "RTT median {rtt:.2} ms (min {:.2}, p95 {:.2}; {}/{} replies), expected {exp:.2} ms: {:+.2} ms{}",
            ms(self.rtt.min),
            ms(self.rtt.p95),
            self.rtt.received,
            self.rtt.sent,
            rtt - exp,
            if exp >= 1.0 { format!(" ({:+.1}%)", (rtt / exp - 1.0) * 100.0) } else { String::new() }
        )?;
        let loss = &self.loss_a_to_b;
        write!(
            f,
            "loss A→B {:.2}% ({}/{} arrived), expected {:.2}%",
            loss.loss_rate() * 100.0,
            loss.received,
            loss.sent,
            self.expected_loss_a_to_b * 100.0
        )?;
        if let Some(g) = &self.goodput_a_to_b {
            write!(f, "\nTCP goodput A→B {:.2} Mbit/s", g.bits_per_sec() / 1e6)?;
            if let Some(e) = self.expected_goodput_bps {
                write!(f, ", expected {:.2} Mbit/s: {:+.1}%", e / 1e6, (g.bits_per_sec() / e - 1.0) * 100.0)?;
            }
        }
        Ok(())
    }
}

impl Lab {
    /// Runs `f` on a thread inside one end's namespace and returns its result; use it
    /// to create sockets there and use them anywhere (e.g. `TcpListener::bind` here,
    /// then `tokio::net::TcpListener::from_std` in the caller's runtime).
    pub fn with_ns<T: Send + 'static>(
        &self,
        side: Side,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LabError> {
        self.spawn_in(side, f)?.join().map_err(|_| LabError::Measure("namespace thread panicked".into()))
    }

    /// Runs RTT, A→B loss and (unless skipped) A→B goodput measurements in turn.
    pub fn verify(&self, cfg: &VerifyConfig) -> Result<LinkReport, LabError> {
        let link = self.link();
        let rtt = self.measure_rtt(cfg.rtt_probes, cfg.rtt_interval)?;
        let loss_a_to_b = self.measure_loss(Side::A, cfg.loss_datagrams, cfg.loss_interval)?;
        let goodput_a_to_b = if cfg.goodput_duration.is_zero() {
            None
        } else {
            Some(self.measure_goodput(Side::A, cfg.goodput_duration)?)
        };
        let wire = |rate: Option<u64>| {
            rate.map_or(Duration::ZERO, |r| {
                Duration::from_secs_f64((PROBE_BYTES + UDP_OVERHEAD) as f64 * 8.0 / r as f64)
            })
        };
        Ok(LinkReport {
            rtt,
            loss_a_to_b,
            goodput_a_to_b,
            expected_rtt: link.a_to_b.delay
                + link.b_to_a.delay
                + wire(link.a_to_b.rate_bps)
                + wire(link.b_to_a.rate_bps),
            expected_loss_a_to_b: link.a_to_b.mean_loss(),
            expected_goodput_bps: link.a_to_b.rate_bps.map(|r| r as f64 * TCP_PAYLOAD_SHARE),
        })
    }

    /// UDP ping-pong A→B→A: `probes` probes one per `interval`, then up to one
    /// second for late replies. Fails if no reply at all came back.
    pub fn measure_rtt(&self, probes: u32, interval: Duration) -> Result<RttReport, LabError> {
        let echo =
            self.with_ns(Side::B, || UdpSocket::bind((Side::B.addr(), 0)))?.map_err(LabError::io("bind echo"))?;
        let target = echo.local_addr().map_err(LabError::io("echo address"))?;
        let pinger =
            self.with_ns(Side::A, || UdpSocket::bind((Side::A.addr(), 0)))?.map_err(LabError::io("bind pinger"))?;
        pinger.connect(target).map_err(LabError::io("connect pinger"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let echo_thread = spawn_echo(echo, stop.clone())?;
        let samples = ping(&pinger, probes, interval);
        stop.store(true, Ordering::Relaxed);
        let _ = echo_thread.join();
        let mut rtts: Vec<Duration> = samples.map_err(LabError::io("ping"))?.into_iter().flatten().collect();
        if rtts.is_empty() {
            return Err(LabError::Measure(format!("none of {probes} RTT probes came back")));
        }
        rtts.sort();
        let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
        Ok(RttReport {
            sent: probes,
            received: rtts.len() as u32,
            min: rtts[0],
            median: at(0.5),
            mean: rtts.iter().sum::<Duration>() / rtts.len() as u32,
            p95: at(0.95),
            max: rtts[rtts.len() - 1],
        })
    }

    /// Sends `datagrams` UDP datagrams from `from` to its peer, one per `interval`,
    /// and counts those that arrive.
    pub fn measure_loss(&self, from: Side, datagrams: u32, interval: Duration) -> Result<LossReport, LabError> {
        let to = from.peer();
        let rx = self.with_ns(to, move || UdpSocket::bind((to.addr(), 0)))?.map_err(LabError::io("bind receiver"))?;
        let target = rx.local_addr().map_err(LabError::io("receiver address"))?;
        // Room for the whole burst: a receiver thread the host does not
        // schedule for a while must not turn into loss the link did not make.
        receive_buffer(&rx, 8 << 20);
        let tx = self.with_ns(from, move || UdpSocket::bind((from.addr(), 0)))?.map_err(LabError::io("bind sender"))?;
        let link = self.link();
        let dir = if from == Side::A { &link.a_to_b } else { &link.b_to_a };
        let grace = 2 * (dir.delay + dir.jitter) + Duration::from_millis(300);
        let done = Arc::new(AtomicBool::new(false));
        let counter = {
            let done = done.clone();
            let limit = interval * datagrams + grace + Duration::from_secs(5);
            thread::spawn(move || count_datagrams(&rx, datagrams, &done, grace, limit))
        };
        let start = Instant::now();
        let mut payload = [0u8; PROBE_BYTES];
        for seq in 0..datagrams {
            sleep_until(start + interval * seq);
            payload[..4].copy_from_slice(&seq.to_be_bytes());
            let _ = tx.send_to(&payload, target);
        }
        done.store(true, Ordering::Relaxed);
        let received = counter.join().map_err(|_| LabError::Measure("receiver panicked".into()))?;
        Ok(LossReport { sent: datagrams, received: received.map_err(LabError::io("receive datagrams"))? })
    }

    /// One TCP connection from `from` to its peer, written to for `duration`; the
    /// goodput is taken over the transfer after the first quarter of `duration`.
    pub fn measure_goodput(&self, from: Side, duration: Duration) -> Result<GoodputReport, LabError> {
        let to = from.peer();
        let listener =
            self.with_ns(to, move || TcpListener::bind((to.addr(), 0)))?.map_err(LabError::io("bind listener"))?;
        let target = listener.local_addr().map_err(LabError::io("listener address"))?;
        let timeout = Duration::from_secs(5);
        let mut client = self
            .with_ns(from, move || TcpStream::connect_timeout(&target, timeout))?
            .map_err(LabError::io("connect"))?;
        let (server, _) = listener.accept().map_err(LabError::io("accept"))?;
        let warmup = duration / 4;
        let reader = thread::spawn(move || read_all(server, warmup, timeout));
        let chunk = vec![0x5au8; 64 * 1024];
        client.set_write_timeout(Some(timeout)).map_err(LabError::io("set timeout"))?;
        let start = Instant::now();
        while start.elapsed() < duration {
            client.write_all(&chunk).map_err(LabError::io("write"))?;
        }
        client.shutdown(Shutdown::Write).map_err(LabError::io("shutdown"))?;
        reader.join().map_err(|_| LabError::Measure("reader panicked".into()))?.map_err(LabError::io("read"))
    }
}

fn spawn_echo(sock: UdpSocket, stop: Arc<AtomicBool>) -> Result<thread::JoinHandle<()>, LabError> {
    sock.set_read_timeout(Some(Duration::from_millis(50))).map_err(LabError::io("set timeout"))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    Ok(thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], peer);
            }
        }
    }))
}

/// Sends the probes and collects replies; RTT per probe, `None` if lost.
fn ping(sock: &UdpSocket, probes: u32, interval: Duration) -> io::Result<Vec<Option<Duration>>> {
    let mut sent_at: Vec<Option<Instant>> = vec![None; probes as usize];
    let mut rtts: Vec<Option<Duration>> = vec![None; probes as usize];
    let start = Instant::now();
    let mut payload = [0u8; PROBE_BYTES];
    let mut buf = [0u8; 2048];
    let mut received = 0;
    for seq in 0..=probes {
        // Probe `probes` is a pseudo-probe: its "send time" ends the reply wait.
        let next = if seq < probes { start + interval * seq } else { Instant::now() + Duration::from_secs(1) };
        loop {
            let now = Instant::now();
            if now >= next || received == probes as usize {
                break;
            }
            sock.set_read_timeout(Some(next - now))?;
            match sock.recv(&mut buf) {
                Ok(n) if n >= 4 => {
                    let got = Instant::now();
                    let i = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if let (Some(Some(t)), Some(slot @ None)) = (sent_at.get(i), rtts.get_mut(i)) {
                        *slot = Some(got - *t);
                        received += 1;
                    }
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
        }
        if seq < probes {
            payload[..4].copy_from_slice(&seq.to_be_bytes());
            sent_at[seq as usize] = Some(Instant::now());
            let _ = sock.send(&payload);
        }
    }
    Ok(rtts)
}

/// Counts distinct sequence numbers until the sender is done and the link has been
/// quiet for `grace`, all within `limit`.
/// Asks for a receive buffer of `bytes`, beyond `net.core.rmem_max` when
/// the process may (SO_RCVBUFFORCE, root); best effort.
fn receive_buffer(sock: &UdpSocket, bytes: i32) {
    use std::os::fd::AsRawFd;
    let len = std::mem::size_of::<i32>() as libc::socklen_t;
    let value = &bytes as *const i32 as *const libc::c_void;
    // SAFETY: a valid socket and a pointer to an i32 of `len` bytes.
    unsafe {
        if libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, value, len) != 0 {
            libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, value, len);
        }
    }
}

fn count_datagrams(sock: &UdpSocket, n: u32, done: &AtomicBool, grace: Duration, limit: Duration) -> io::Result<u32> {
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let start = Instant::now();
    let mut seen = vec![false; n as usize];
    let mut count = 0u32;
    let mut last = Instant::now();
    let mut buf = [0u8; 2048];
    while start.elapsed() < limit && count < n {
        match sock.recv(&mut buf) {
            Ok(len) if len >= 4 => {
                last = Instant::now();
                let i = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if let Some(slot @ false) = seen.get_mut(i) {
                    *slot = true;
                    count += 1;
                }
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if done.load(Ordering::Relaxed) && last.elapsed() >= grace {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(count)
}

/// Reads to EOF, sampling (seconds since the first byte, bytes so far) at most once
/// a millisecond, and fits the rate over the samples after `warmup`.
fn read_all(mut sock: TcpStream, warmup: Duration, timeout: Duration) -> io::Result<GoodputReport> {
    sock.set_read_timeout(Some(timeout))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut first: Option<Instant> = None;
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let now = Instant::now();
        let t0 = *first.get_or_insert(now);
        total += n as u64;
        let t = now.duration_since(t0).as_secs_f64();
        match samples.last_mut() {
            Some(s) if t - s.0 < 1e-3 => s.1 = total as f64,
            _ => samples.push((t, total as f64)),
        }
        last = now;
    }
    let elapsed = first.map_or(Duration::ZERO, |f| last.duration_since(f));
    let window: Vec<(f64, f64)> = samples.into_iter().filter(|s| s.0 >= warmup.as_secs_f64()).collect();
    let bytes_per_sec = match slope(&window) {
        Some(s) => s,
        None => total as f64 / elapsed.as_secs_f64().max(1e-9),
    };
    let span = window.last().map_or(0.0, |l| l.0 - window[0].0);
    Ok(GoodputReport { total_bytes: total, elapsed, window: Duration::from_secs_f64(span), bytes_per_sec })
}

/// Least-squares slope of y over x; `None` with fewer than two distinct x.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let (mx, my) = points.iter().fold((0.0, 0.0), |(a, b), p| (a + p.0 / n, b + p.1 / n));
    let (cov, var) = points.iter().fold((0.0, 0.0), |(c, v), p| (c + (p.0 - mx) * (p.1 - my), v + (p.0 - mx).powi(2)));
    (points.len() >= 2 && var > 0.0).then(|| cov / var)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}
