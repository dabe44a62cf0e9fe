//! The HTTP endpoints, on upstream's paths with upstream's answers.
//!
//! Health port: `/healthz` (200 `ok`), `/readyz` and its older name `/ready`
//! (upstream's checks `ping` and `server-connected`: 200 `ok` while connected
//! to a server, the list of checks with `?verbose`; 503 with the list, the
//! failed one marked, when not connected) and `/metrics`. Admin port:
//! `/metrics` (served, where upstream redirects to the health port; a scrape
//! of either gets the same text) and `/healthz`, and with
//! `--enable-profiling` `/debug/pprof/` (a CPU profile for `go tool pprof`).

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;

#[derive(Clone)]
struct Health {
    /// Open server connections.
    connected: watch::Receiver<usize>,
    metrics: Metrics,
}

async fn healthz() -> &'static str {
    "ok"
}

/// What `/readyz` answers: upstream's two checks, listed when one fails or
/// when `verbose` is asked for.
fn readiness(connected: bool, verbose: bool) -> (StatusCode, String) {
    let server =
        if connected { "[+]server-connected ok\n" } else { "[-]server-connected failed: no servers connected\n" };
    let checks = format!("[+]ping ok\n{server}");
    match (connected, verbose) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, checks),
        (true, true) => (StatusCode::OK, format!("{checks}check passed\n")),
        (true, false) => (StatusCode::OK, "ok".to_owned()),
    }
}

async fn readyz(State(h): State<Health>, uri: Uri) -> impl IntoResponse {
    let verbose = uri.query().is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some("verbose")));
    let connected = *h.connected.borrow() > 0;
    readiness(connected, verbose)
}

fn exposition(m: &Metrics) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, konnq_shared::prom::CONTENT_TYPE)], m.render())
}

pub async fn serve_health(
    listener: TcpListener,
    connected: watch::Receiver<usize>,
    metrics: Metrics,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/ready", get(readyz))
        .route("/metrics", get(|State(h): State<Health>| async move { exposition(&h.metrics) }))
        .with_state(Health { connected, metrics });
    axum::serve(listener, app).await
}

/// Serves the admin port: `/metrics`, `/healthz` and, with `profiling`,
/// `/debug/pprof/` (see [`konnq_shared::profiling::serve_admin`]).
pub async fn serve_admin(listener: TcpListener, m: Metrics, profiling: bool) -> std::io::Result<()> {
    konnq_shared::profiling::serve_admin(listener, move || m.render(), profiling).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_answers_as_upstream() {
        let not_ready = "[+]ping ok\n[-]server-connected failed: no servers connected\n";
        assert_eq!(readiness(false, false), (StatusCode::SERVICE_UNAVAILABLE, not_ready.to_owned()));
        assert_eq!(readiness(false, true), (StatusCode::SERVICE_UNAVAILABLE, not_ready.to_owned()));
        assert_eq!(readiness(true, false), (StatusCode::OK, "ok".to_owned()));
        let verbose = "[+]ping ok\n[+]server-connected ok\ncheck passed\n";
        assert_eq!(readiness(true, true), (StatusCode::OK, verbose.to_owned()));
    }
}
