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

mod common;

const LIMIT: Duration = Duration::from_secs(30);
/// Downloads running at once: enough data in flight to keep the agent's
/// send window full on this link.
const DOWNLOADS: usize = 24;
/// Dials made one after another while the downloads run.
const DIALS: usize = 20;

/// Bytes all downloads received, and a wake-up whenever it grows.
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    grew: tokio::sync::Notify,
}

impl Progress {
    fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.grew.notify_waiters();
    }

    fn get(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Until at least `bytes` arrived in all (bounded by [`LIMIT`]).
    async fn wait_for(&self, bytes: u64) {
        let wait = async {
            loop {
                let grew = self.grew.notified();
                let mut grew = std::pin::pin!(grew);
                grew.as_mut().enable();
                if self.get() >= bytes {
                    return;
                }
                grew.await;
            }
        };
        tokio::time::timeout(LIMIT, wait).await.unwrap_or_else(|_| panic!("{bytes} bytes never arrived"));
    }
}

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
            common::serve_with(source, konnq_loadtest::target::source_conn);
            common::serve_with(echo, konnq_loadtest::target::echo_conn);
            let cfg = raw.validate().expect("agent config");
            let listeners = konnq_agent::Listeners::bind(&cfg).await.expect("agent bind");
            let handle = konnq_agent::start(cfg, listeners).await.expect("agent starts");
            handle.wait_connected(true).await;
            agent_tx.send(targets).expect("send");
            let _ = agent_stop.await;
            handle.shutdown().await;
        })
        .expect("agent thread");
    let (source, echo) = agent_rx.recv_timeout(LIMIT).expect("agent up");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (dial_times, per_download) = rt.block_on(async {
        // The agent is connected; the server may take a moment more to
        // route dials to it (its Hello on the control stream): the first
        // dial retries briefly.
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
        let total = Arc::new(Progress::default());
        let mut readers = Vec::new();
        for count in &counts {
            let mut conn = ProxyConn::dial(&mut client, &source.to_string()).await.expect("download dial");
            let (count, total) = (Arc::clone(count), Arc::clone(&total));
            readers.push(tokio::spawn(async move {
                while let Ok(Some(b)) = conn.read().await {
                    count.fetch_add(b.len() as u64, Ordering::Relaxed);
                    total.add(b.len() as u64);
                }
            }));
        }
        // The downloads have filled the pipe once 8 MiB arrived (the agent's
        // 16 MiB send window stays full: the sources refill it faster than
        // 40 Mbit/s drains it).
        total.wait_for(8 << 20).await;
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
        total.wait_for(total.get() + (12 << 20)).await;
        let moved: Vec<u64> = counts.iter().zip(&before).map(|(c, b)| c.load(Ordering::Relaxed) - b).collect();
        for r in readers {
            r.abort();
        }
        (times, moved)
    });
    let ms: Vec<u128> = dial_times.iter().map(Duration::as_millis).collect();
    eprintln!("dial + echo beside {DOWNLOADS} downloads, ms: {ms:?}");
    eprintln!("bytes per download while 12 MiB arrived: {per_download:?}");
    let stalled = per_download.iter().filter(|&&b| b == 0).count();
    assert_eq!(stalled, 0, "{stalled} of {DOWNLOADS} downloads moved nothing while 12 MiB arrived: {per_download:?}");

    let _ = stop_agent.send(());
    agent.join().expect("agent thread");
    server.stop();
}
