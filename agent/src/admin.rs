//! Health (`/healthz`, `/readyz`: connected to a server) and admin
//! (`/metrics`) HTTP endpoints.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(connected): State<watch::Receiver<bool>>) -> impl IntoResponse {
    if *connected.borrow() {
        (StatusCode::OK, "ok: connected to a server\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not connected to a server\n")
    }
}

async fn metrics(State(m): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render())
}

pub async fn serve_health(listener: TcpListener, connected: watch::Receiver<bool>) -> std::io::Result<()> {
    let app = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(connected);
    axum::serve(listener, app).await
}

pub async fn serve_admin(listener: TcpListener, m: Metrics) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(m);
    axum::serve(listener, app).await
}
