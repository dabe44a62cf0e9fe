//! A reader that stops reading holds only bounded buffers and stalls only
//! its own connection. Kept in a test binary of its own: it bounds the RSS
//! growth of the whole process, which other tests would disturb.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use konnq_shared::memory::rss_bytes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_does_not_stall_other_connections() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let (hose, written) = firehose().await;
    let echo = echo_target().await;
    let payload = random_bytes(32 * 1024 * 1024);

    // A reads 1 MiB of an endless stream, then stops reading (keeps the stream open).
    let mut client_a = lab.channel().await;
    let mut a = Stream::dial(&mut client_a, &hose.to_string()).await;
    a.read_exact(1024 * 1024).await;
    let rss_before = rss_bytes();

    // B, on the same agent, keeps moving data while A is stalled.
    let mut client_b = lab.channel().await;
    let mut b = Stream::dial(&mut client_b, &echo.to_string()).await;
    let echoed = within(Duration::from_secs(120), echo_through(&mut b, &payload)).await;
    assert!(echoed == payload, "B's 32 MiB came back intact while A was stalled");
    drop(echoed);

    // A's target can only get as far as the bounded buffers on the path let
    // it: kernel socket buffers, one QUIC stream window, a few packets.
    let mut last = written.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = written.load(Ordering::SeqCst);
        if now == last || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    let buffered = written.load(Ordering::SeqCst);
    assert!(buffered < 32 * 1024 * 1024, "A's target wrote {buffered} bytes although A stopped reading at 1 MiB");
    let growth = rss_bytes().saturating_sub(rss_before);
    println!("stalled reader: its target wrote {buffered} bytes in all; process RSS grew {growth} bytes");
    assert!(growth < 64 * 1024 * 1024, "memory grew by {growth} bytes during the stall");
    drop(a);
}
