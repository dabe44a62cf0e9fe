//! The HTTP endpoints, on upstream's paths with upstream's answers.
//!
//! Health port: `/healthz` (200 `ok`), `/readyz` and its older name `/ready`
//! (200 `ok` while an agent that the first proxy strategy routes to takes
//! dials; 500 `no connection to any proxy agent` without one, 500 `shutting
//! down` during graceful shutdown) and
//! `/metrics`. Admin port: `/metrics` (and `/healthz`), and with
//! `--enable-profiling` `/debug/pprof/` (a CPU profile for `go tool pprof`).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;

#[derive(Clone)]
struct Health {
    /// See [`crate::backend::Backend::routable_agents`].
    routable_agents: watch::Receiver<usize>,
    shutting_down: watch::Receiver<bool>,
    metrics: Metrics,
}

async fn healthz() -> &'static str {
    "ok"
}

/// What `/readyz` answers with `agents` taking dials that the first proxy
/// strategy routes to.
fn readiness(agents: usize, shutting_down: bool) -> (StatusCode, &'static str) {
    if shutting_down {
        (StatusCode::INTERNAL_SERVER_ERROR, "shutting down")
    } else if agents == 0 {
        (StatusCode::INTERNAL_SERVER_ERROR, "no connection to any proxy agent")
    } else {
        (StatusCode::OK, "ok")
    }
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    let agents = *h.routable_agents.borrow();
    readiness(agents, *h.shutting_down.borrow())
}

fn exposition(m: &Metrics) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, konnq_shared::prom::CONTENT_TYPE)], m.render())
}

pub async fn serve_health(
    listener: TcpListener,
    routable_agents: watch::Receiver<usize>,
    shutting_down: watch::Receiver<bool>,
    metrics: Metrics,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/ready", get(readyz))
        .route("/metrics", get(|State(h): State<Health>| async move { exposition(&h.metrics) }))
        .with_state(Health { routable_agents, shutting_down, metrics });
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
        assert_eq!(readiness(0, false), (StatusCode::INTERNAL_SERVER_ERROR, "no connection to any proxy agent"));
        assert_eq!(readiness(2, false), (StatusCode::OK, "ok"));
        assert_eq!(readiness(2, true), (StatusCode::INTERNAL_SERVER_ERROR, "shutting down"));
    }
}
