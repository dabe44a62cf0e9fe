//! Health (`/healthz`, `/readyz`) and admin (`/metrics`) HTTP endpoints.

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
    ready_agents: watch::Receiver<usize>,
    shutting_down: watch::Receiver<bool>,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    let agents = *h.ready_agents.borrow();
    if *h.shutting_down.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".to_owned())
    } else if agents == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "no agent connected\n".to_owned())
    } else {
        (StatusCode::OK, format!("ok: {agents} agent(s) connected\n"))
    }
}

async fn metrics(State(m): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render())
}

pub async fn serve_health(
    listener: TcpListener,
    ready_agents: watch::Receiver<usize>,
    shutting_down: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Health { ready_agents, shutting_down });
    axum::serve(listener, app).await
}

pub async fn serve_admin(listener: TcpListener, m: Metrics) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(m);
    axum::serve(listener, app).await
}
