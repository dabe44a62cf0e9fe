//! Strings a client chose reach the server's log bounded and escaped: a
//! DIAL_REQ with a 1 MiB address costs the log one short line, not 1 MiB.
//! (Its own test binary: it installs the process's log subscriber.)

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// The log, as the server writes it at the default verbosity.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_dial_address_is_logged_as_a_bounded_line() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = konnq_shared::logging::subscriber(0, false, false, move || writer.clone());
    tracing::subscriber::set_global_default(subscriber).expect("the first subscriber of this binary");
    let lab = Lab::new().await;
    let mut client = lab.channel().await;

    let address = format!("{}\nWARN forged line", "a".repeat(1 << 20));
    let mut s = Stream::open(&mut client, &address, 7).await;
    match within(Duration::from_secs(10), s.next()).await {
        Event::DialRsp { random: 7, error, .. } => assert!(error.contains("longer than"), "{error}"),
        other => panic!("expected DIAL_RSP, got {other:?}"),
    }

    let text = log.text();
    // Failure messages show the start of a line only: it may be huge.
    let start = |line: &str| line.chars().take(300).collect::<String>();
    let longest = text.lines().max_by_key(|l| l.len()).unwrap_or_default();
    assert!(longest.len() < 2048, "a {}-byte log line: {}…", longest.len(), start(longest));
    let rejected: Vec<&str> = text.lines().filter(|l| l.contains("rejected dial")).collect();
    assert_eq!(rejected.len(), 1, "{text}");
    assert!(rejected[0].contains(&format!("…({} bytes)", address.len())), "{}", rejected[0]);
    assert!(!text.contains("forged line"), "{text}");
}
