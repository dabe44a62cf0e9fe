//! The targets proxied connections reach, in a process of their own
//! (`konnq-loadtest target`) so that 10,000 target sockets do not share the
//! runner's file-descriptor budget and their CPU is not counted as anyone's:
//!
//! - echo: writes back everything it reads (request/response, dials, echo throughput);
//! - source: writes constant data until the peer goes away (one-way throughput);
//! - sink: reads and counts everything until the peer goes away (upload
//!   throughput: the figure is what arrived, not what a client wrote);
//! - count: answers every connection with one line, `RECEIVED OPEN`: the
//!   bytes all sink connections have read so far and how many of them are
//!   still open, then closes.
//!
//! It prints `echo=ADDR source=ADDR sink=ADDR count=ADDR` on stdout, then
//! serves until its stdin closes (the runner is gone) or `max` has passed.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::child::{ChildProc, Program};

const CHUNK: usize = 64 * 1024;
/// No single target connection lives longer than this.
const MAX_CONN_LIFE: Duration = Duration::from_secs(3600);

/// Addresses of a running target process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub echo: SocketAddr,
    pub source: SocketAddr,
    pub sink: SocketAddr,
    /// Where the sink's [`SinkCount`] is read.
    pub count: SocketAddr,
    /// The target process, for its CPU figures.
    pub pid: Option<u32>,
}

/// Parses the target process's announcement line.
pub fn parse_announcement(line: &str) -> Option<Targets> {
    let (mut echo, mut source, mut sink, mut count) = (None, None, None, None);
    for part in line.split_whitespace() {
        match part.split_once('=') {
            Some(("echo", a)) => echo = a.parse().ok(),
            Some(("source", a)) => source = a.parse().ok(),
            Some(("sink", a)) => sink = a.parse().ok(),
            Some(("count", a)) => count = a.parse().ok(),
            _ => {}
        }
    }
    Some(Targets { echo: echo?, source: source?, sink: sink?, count: count?, pid: None })
}

/// What the sink target has received, as its `count` listener reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCount {
    /// Bytes read by every sink connection since the target process started.
    pub received: u64,
    /// Sink connections not yet at their end (EOF or error).
    pub open: u64,
}

impl SinkCount {
    /// Parses the `count` listener's line, `RECEIVED OPEN`.
    pub fn parse(line: &str) -> Option<SinkCount> {
        let mut parts = line.split_whitespace();
        let received = parts.next()?.parse().ok()?;
        let open = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(SinkCount { received, open })
    }
}

/// Reads the sink's counters from the target process.
pub async fn sink_count(count: SocketAddr) -> anyhow::Result<SinkCount> {
    let read = async {
        let mut s = crate::conn::tcp_connect(count).await?;
        let mut line = String::new();
        s.read_to_string(&mut line).await?;
        anyhow::Ok(line)
    };
    let line = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .context("the target's count listener did not answer")?
        .with_context(|| format!("reading the sink count from {count}"))?;
    SinkCount::parse(&line).with_context(|| format!("bad sink count {line:?}"))
}

/// The sink's counters, shared by its connections and the count listener.
#[derive(Debug, Default)]
struct SinkCounters {
    received: AtomicU64,
    open: AtomicU64,
}

/// Serves until stdin closes or `max` passed (runs in the target process).
pub async fn serve(max: Duration, bind: std::net::IpAddr) -> anyhow::Result<()> {
    let echo = TcpListener::bind((bind, 0)).await?;
    let source = TcpListener::bind((bind, 0)).await?;
    let sink = TcpListener::bind((bind, 0)).await?;
    let count = TcpListener::bind((bind, 0)).await?;
    println!(
        "echo={} source={} sink={} count={}",
        echo.local_addr()?,
        source.local_addr()?,
        sink.local_addr()?,
        count.local_addr()?
    );
    tokio::spawn(accept(echo, |s| Box::pin(echo_conn(s))));
    tokio::spawn(accept(source, |s| Box::pin(source_conn(s))));
    let counters = Arc::new(SinkCounters::default());
    tokio::spawn(serve_sink(sink, count, counters));
    let stdin_closed = async {
        let mut buf = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(max, stdin_closed).await;
    Ok(())
}

type ConnFuture = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

async fn accept(listener: TcpListener, handle: fn(TcpStream) -> ConnFuture) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(tokio::time::timeout(MAX_CONN_LIFE, handle(s)));
            }
            // Out of fds or similar: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Echoes what the peer sends until it closes.
pub async fn echo_conn(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

/// Writes as fast as the peer reads until it closes.
pub async fn source_conn(s: TcpStream) -> std::io::Result<()> {
    let (mut r, mut w) = s.into_split();
    let data = vec![0x5au8; CHUNK];
    let writer = async move {
        loop {
            w.write_all(&data).await?;
        }
    };
    // Ends when the peer closes (EOF or error) or a write fails.
    let mut sink = [0u8; 512];
    let reader = async move { while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {} };
    tokio::select! {
        r = writer => r,
        () = reader => Ok(()),
    }
}

/// Serves the sink and its count listener.
async fn serve_sink(sink: TcpListener, count: TcpListener, counters: Arc<SinkCounters>) {
    let c = Arc::clone(&counters);
    let sinks = async move {
        loop {
            match sink.accept().await {
                Ok((s, _)) => {
                    // Counted open from the accept on, so that a connection
                    // the runner closed is never missed by `open == 0`.
                    c.open.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(sink_conn(s, Arc::clone(&c)));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    let counts = async move {
        loop {
            match count.accept().await {
                Ok((mut s, _)) => {
                    // `open` first: a connection that ends between the two
                    // loads has its bytes in `received` already.
                    let open = counters.open.load(Ordering::SeqCst);
                    let received = counters.received.load(Ordering::SeqCst);
                    let line = format!("{received} {open}\n");
                    tokio::spawn(async move { s.write_all(line.as_bytes()).await });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::join!(sinks, counts);
}

/// Reads until the peer goes away, counting every byte as it arrives.
async fn sink_conn(mut s: TcpStream, counters: Arc<SinkCounters>) {
    let mut buf = vec![0u8; CHUNK];
    let read_all = async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            counters.received.fetch_add(n as u64, Ordering::SeqCst);
        }
    };
    let _ = tokio::time::timeout(MAX_CONN_LIFE, read_all).await;
    counters.open.fetch_sub(1, Ordering::SeqCst);
}

/// Starts the target process (listening on `bind`) and reads its addresses.
pub async fn start(
    exe: &Program,
    log_dir: &std::path::Path,
    max: Duration,
    bind: std::net::IpAddr,
) -> anyhow::Result<(ChildProc, Targets)> {
    let log = log_dir.join("target.log");
    let mut cmd = exe.command();
    cmd.args(["target", "--max-secs", &max.as_secs().to_string(), "--bind", &bind.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?);
    let mut child = cmd.spawn().context("starting the target process")?;
    let stdout = child.stdout.take().context("target stdout")?;
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), tokio::io::BufReader::new(stdout).read_line(&mut line))
        .await
        .context("the target process did not announce its addresses")??;
    let mut targets = parse_announcement(&line).with_context(|| format!("bad target announcement {line:?}"))?;
    // The child keeps its stdin pipe open: the target exits when the runner is gone.
    let proc = ChildProc::from_child("target", child, log)?;
    targets.pid = Some(proc.pid);
    Ok((proc, targets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement() {
        let t =
            parse_announcement("echo=127.0.0.1:4000 source=127.0.0.1:4001 sink=127.0.0.1:4002 count=127.0.0.1:4003\n")
                .unwrap();
        assert_eq!((t.echo.port(), t.source.port(), t.sink.port(), t.count.port()), (4000, 4001, 4002, 4003));
        assert!(parse_announcement("echo=127.0.0.1:4000 source=127.0.0.1:4001").is_none());
        assert!(parse_announcement("echo=nonsense source=127.0.0.1:1 sink=127.0.0.1:2 count=127.0.0.1:3").is_none());
    }

    #[test]
    fn sink_count_lines() {
        assert_eq!(SinkCount::parse("123 4\n"), Some(SinkCount { received: 123, open: 4 }));
        assert_eq!(SinkCount::parse("123"), None);
        assert_eq!(SinkCount::parse("123 4 5"), None);
        assert_eq!(SinkCount::parse("x 4"), None);
    }

    #[tokio::test]
    async fn sink_counts_what_arrived_and_open_connections() {
        let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let count = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (sa, ca) = (sink.local_addr().unwrap(), count.local_addr().unwrap());
        tokio::spawn(serve_sink(sink, count, Arc::new(SinkCounters::default())));
        assert_eq!(sink_count(ca).await.unwrap(), SinkCount::default());

        let mut a = TcpStream::connect(sa).await.unwrap();
        a.write_all(&vec![7u8; 3 * CHUNK + 5]).await.unwrap();
        a.shutdown().await.unwrap();
        // The sink closes its side once it has read everything.
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.unwrap();
        let b = TcpStream::connect(sa).await.unwrap();
        // Bounded: the sink has counted `a` (it closed only after reading
        // all of it); `b` shows as open once accepted.
        let mut seen = SinkCount::default();
        for _ in 0..1000 {
            seen = sink_count(ca).await.unwrap();
            if seen.open == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(seen, SinkCount { received: 3 * CHUNK as u64 + 5, open: 1 });
        drop(b);
    }

    #[tokio::test]
    async fn echo_and_source_behave() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let source = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ea, sa) = (echo.local_addr().unwrap(), source.local_addr().unwrap());
        tokio::spawn(accept(echo, |s| Box::pin(echo_conn(s))));
        tokio::spawn(accept(source, |s| Box::pin(source_conn(s))));

        let mut e = TcpStream::connect(ea).await.unwrap();
        e.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        e.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");

        let mut s = TcpStream::connect(sa).await.unwrap();
        let mut got = vec![0u8; 3 * CHUNK];
        s.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 0x5a));
    }
}
