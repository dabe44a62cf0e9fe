//! New dials while many downloads fill an agent connection: the agent's
//! QUIC send window (what it keeps written but unacknowledged) is full for
//! as long as the downloads run, because the targets produce faster than
//! the link drains. Every new dial's answer, and every download, must still
//! get its turn. The server in one network namespace, the agent and its
//! targets in another, joined by a 40 Mbit/s link with 5 ms each way.
//! Needs root (namespaces, TUN).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use konnq_netlab::settings::LinkSettings;
use konnq_netlab::{Lab, Side};
use konnq_shared::client::{connect_uds, ProxyConn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

const LIMIT: Duration = Duration::from_secs(30);
/// Downloads running at once: enough data in flight to keep the agent's
/// send window full on this link.
const DOWNLOADS: usize = 24;
/// Dials made one after another while the downloads run.
const DIALS: usize = 20;

#[test]
fn dials_and_every_download_progress_while_bulk_data_fills_the_send_window() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (network namespaces and TUN devices); run the suite as root");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = konnq_shared::certs::generate(&dir.path().join("pki"), &[Side::A.addr().to_string()]).expect("certs");
    let link: LinkSettings = "delay=5ms,rate=40mbit".parse().expect("link");
    let lab = Lab::create("kqbulk", link).expect("lab (root, /dev/net/tun)");
    let socket = dir.path().join("konnq.sock");

    let server = common::LabServer::start(&lab, &certs, &socket, LIMIT);

    // The agent, a source that writes as fast as it may, and an echo target.
    let (agent_tx, agent_rx) = mpsc::channel();
    let (stop_agent, agent_stop) = tokio::sync::oneshot::channel::<()>();
    let raw = server.agent_config(&certs);
    let agent = lab
        .spawn_async_in(Side::B, move || async move {
            let source = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("source");
            let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("echo");
            let targets = (source.local_addr().expect("addr"), echo.local_addr().expect("addr"));
            tokio::spawn(async move {
                while let Ok((mut s, _)) = source.accept().await {
                    tokio::spawn(async move {
                        let chunk = vec![0x5au8; 64 * 1024];
                        while s.write_all(&chunk).await.is_ok() {}
                    });
                }
            });
            tokio::spawn(async move {
                while let Ok((mut s, _)) = echo.accept().await {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            let cfg = raw.validate().expect("agent config");
            let listeners = konnq_agent::Listeners::bind(&cfg).await.expect("agent bind");
            let handle = konnq_agent::start(cfg, listeners).await.expect("agent starts");
            agent_tx.send(targets).expect("send");
            let _ = agent_stop.await;
            handle.shutdown().await;
        })
        .expect("agent thread");
    let (source, echo) = agent_rx.recv_timeout(LIMIT).expect("agent up");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (dial_times, per_download) = rt.block_on(async {
        // The agent may still be connecting: the first dial retries briefly.
        let started = Instant::now();
        let mut client = loop {
            let mut c = connect_uds(&socket).await.expect("uds");
            match ProxyConn::dial(&mut c, &echo.to_string()).await {
                Ok(conn) => {
                    conn.close().await.expect("close");
                    break c;
                }
                Err(e) if started.elapsed() < LIMIT => {
                    eprintln!("waiting for the agent: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no agent within {LIMIT:?}: {e}"),
            }
        };
        let counts: Vec<Arc<AtomicU64>> = (0..DOWNLOADS).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let mut readers = Vec::new();
        for count in &counts {
            let mut conn = ProxyConn::dial(&mut client, &source.to_string()).await.expect("download dial");
            let count = Arc::clone(count);
            readers.push(tokio::spawn(async move {
                while let Ok(Some(b)) = conn.read().await {
                    count.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
            }));
        }
        // Let the downloads fill the pipe (at 40 Mbit/s, 16 MiB of send
        // window takes over 3 s to drain, and the sources keep refilling it).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut times = Vec::new();
        for i in 0..DIALS {
            let t = Instant::now();
            let mut conn = tokio::time::timeout(LIMIT, ProxyConn::dial(&mut client, &echo.to_string()))
                .await
                .unwrap_or_else(|_| panic!("dial {i} hung for {LIMIT:?}"))
                .unwrap_or_else(|e| panic!("dial {i} beside the downloads failed after {:?}: {e}", t.elapsed()));
            conn.write(Bytes::from_static(b"ping")).await.expect("write");
            assert_eq!(conn.read_exact(4).await.expect("echo"), b"ping");
            times.push(t.elapsed());
            conn.close().await.expect("close");
        }
        // Every download moves in a window of its own, not only the dials.
        let before: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let moved: Vec<u64> = counts.iter().zip(&before).map(|(c, b)| c.load(Ordering::Relaxed) - b).collect();
        for r in readers {
            r.abort();
        }
        (times, moved)
    });
    let ms: Vec<u128> = dial_times.iter().map(Duration::as_millis).collect();
    eprintln!("dial + echo beside {DOWNLOADS} downloads, ms: {ms:?}");
    eprintln!("bytes per download in 3 s: {per_download:?}");
    let stalled = per_download.iter().filter(|&&b| b == 0).count();
    assert_eq!(stalled, 0, "{stalled} of {DOWNLOADS} downloads moved nothing in 3 s: {per_download:?}");

    let _ = stop_agent.send(());
    agent.join().expect("agent thread");
    server.stop();
}
