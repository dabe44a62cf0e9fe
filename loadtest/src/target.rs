//! The targets proxied connections reach, in a process of their own
//! (`konnq-loadtest target`) so that 10,000 target sockets do not share the
//! runner's file-descriptor budget and their CPU is not counted as anyone's:
//!
//! - echo: writes back everything it reads (request/response, dials, echo throughput);
//! - source: writes constant data until the peer goes away (one-way throughput).
//!
//! It prints `echo=ADDR source=ADDR` on stdout, then serves until its stdin
//! closes (the runner is gone) or `max` has passed.

use std::net::SocketAddr;
use std::process::Stdio;
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
    /// The target process, for its CPU figures.
    pub pid: Option<u32>,
}

/// Parses the target process's announcement line.
pub fn parse_announcement(line: &str) -> Option<Targets> {
    let mut echo = None;
    let mut source = None;
    for part in line.split_whitespace() {
        match part.split_once('=') {
            Some(("echo", a)) => echo = a.parse().ok(),
            Some(("source", a)) => source = a.parse().ok(),
            _ => {}
        }
    }
    Some(Targets { echo: echo?, source: source?, pid: None })
}

/// Serves until stdin closes or `max` passed (runs in the target process).
pub async fn serve(max: Duration) -> anyhow::Result<()> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let source = TcpListener::bind("127.0.0.1:0").await?;
    println!("echo={} source={}", echo.local_addr()?, source.local_addr()?);
    tokio::spawn(accept(echo, |s| Box::pin(echo_conn(s))));
    tokio::spawn(accept(source, |s| Box::pin(source_conn(s))));
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

async fn echo_conn(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

async fn source_conn(s: TcpStream) -> std::io::Result<()> {
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

/// Starts the target process and reads its addresses.
pub async fn start(exe: &Program, log_dir: &std::path::Path, max: Duration) -> anyhow::Result<(ChildProc, Targets)> {
    let log = log_dir.join("target.log");
    let mut cmd = exe.command();
    cmd.args(["target", "--max-secs", &max.as_secs().to_string()])
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
        let t = parse_announcement("echo=127.0.0.1:4000 source=127.0.0.1:4001\n").unwrap();
        assert_eq!(t.echo.port(), 4000);
        assert_eq!(t.source.port(), 4001);
        assert!(parse_announcement("echo=127.0.0.1:4000").is_none());
        assert!(parse_announcement("echo=nonsense source=127.0.0.1:1").is_none());
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
