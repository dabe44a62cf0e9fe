//! A frontend whose accepts keep failing (the process out of file
//! descriptors) pauses longer and longer between attempts and warns at a
//! bounded rate, instead of spinning: both frontends, on paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use konnq_server::backend::Backend;
use konnq_server::frontend::accept::{MAX_PAUSE, MIN_PAUSE, WARN_EVERY};
use konnq_server::frontend::session::SessionCtx;
use konnq_server::metrics::Metrics;
use konnq_shared::config::{ProxyStrategies, QuicConfig};
use tokio::net::UnixStream;
use tokio::time::Instant;

const FAILURES: usize = 40;

fn ctx() -> SessionCtx {
    let metrics = Metrics::new();
    let quic = QuicConfig::default();
    let backend = Backend::new("test".into(), 1, None, ProxyStrategies::default(), &quic, metrics.clone(), None);
    SessionCtx { backend, metrics }
}

/// A listener out of file descriptors: `FAILURES` accepts fail with EMFILE,
/// each at a time recorded in `at`; then the listener ends.
fn out_of_fds(at: Arc<Mutex<Vec<Instant>>>) -> impl Stream<Item = Result<UnixStream, std::io::Error>> {
    futures::stream::iter(0..FAILURES).map(move |_| {
        at.lock().unwrap().push(Instant::now());
        Err(std::io::Error::from_raw_os_error(libc::EMFILE))
    })
}

/// A writer into a shared buffer, for the log.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `serve` (a frontend on [`out_of_fds`]) to its end; checks the
/// pauses between accepts and the warnings logged at the default level.
async fn check_backoff<F: std::future::Future<Output = ()>>(serve: impl FnOnce(Arc<Mutex<Vec<Instant>>>) -> F) {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = konnq_shared::logging::subscriber(0, false, false, move || writer.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let at = Arc::new(Mutex::new(Vec::new()));
    serve(Arc::clone(&at)).await;

    let at = at.lock().unwrap().clone();
    assert_eq!(at.len(), FAILURES);
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|&g| g >= MIN_PAUSE), "an accept retried at once: {gaps:?}");
    assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "pauses only grow while failures go on: {gaps:?}");
    assert_eq!(gaps.last(), Some(&MAX_PAUSE), "{gaps:?}");
    let elapsed = at[FAILURES - 1] - at[0];

    let text = String::from_utf8(log.0.lock().unwrap().clone()).expect("UTF-8 log");
    let warnings = text.lines().filter(|l| l.contains(" WARN ") && l.contains("Too many open files")).count();
    let most = (elapsed.as_secs_f64() / WARN_EVERY.as_secs_f64()).floor() as usize + 1;
    assert!((1..=most).contains(&warnings), "{warnings} warnings over {elapsed:?}:\n{text}");
}

#[tokio::test(start_paused = true)]
async fn grpc_frontend_backs_off_and_warns_when_accepts_fail() {
    let limits = konnq_server::frontend::http2::Limits::new(1 << 20, Duration::from_secs(60), &Metrics::new());
    check_backoff(|at| async move {
        let served = konnq_server::frontend::http2::serve(out_of_fds(at), ctx(), limits, std::future::pending());
        served.await.expect("serve");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn http_connect_frontend_backs_off_and_warns_when_accepts_fail() {
    check_backoff(|at| konnq_server::frontend::connect::serve_all(out_of_fds(at), ctx(), std::future::pending())).await;
}
