//! A konnq server in a lab's side A for the tests that put an agent in
//! side B: its Unix socket, agent address and metrics, stopped on demand.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use konnq_netlab::{Lab, NsThread, Side};
use konnq_shared::certs::GeneratedCerts;

/// A server running on its own thread and runtime inside side A.
pub struct LabServer {
    pub agent_addr: std::net::SocketAddr,
    // Each test binary compiles this module alone; not every test reads it.
    #[allow(dead_code)]
    pub metrics: konnq_server::metrics::Metrics,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: NsThread<()>,
}

impl LabServer {
    /// Starts a server with the frontend on `socket` and the agent port on
    /// side A's address, mutual TLS from `certs`; waits until it listens.
    pub fn start(lab: &Lab, certs: &GeneratedCerts, socket: &Path, limit: Duration) -> LabServer {
        let (tx, rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let raw = konnq_shared::config::RawServerConfig {
            uds_name: Some(socket.to_owned()),
            agent_bind_address: Some(Side::A.addr().into()),
            agent_port: Some(0),
            health_port: Some(0),
            admin_port: Some(0),
            cluster_cert: Some(certs.server_cert.clone()),
            cluster_key: Some(certs.server_key.clone()),
            cluster_ca_cert: Some(certs.ca_cert.clone()),
            ..Default::default()
        };
        let thread = lab
            .spawn_async_in(Side::A, move || async move {
                let cfg = raw.validate().expect("server config");
                let listeners = konnq_server::Listeners::bind(&cfg).await.expect("bind");
                let handle = konnq_server::start(cfg, listeners).await.expect("server starts");
                tx.send((handle.agent_addr, handle.metrics.clone())).expect("send");
                let _ = stopped.await;
                handle.shutdown().await;
            })
            .expect("server thread");
        let (agent_addr, metrics) = rx.recv_timeout(limit).expect("server up");
        LabServer { agent_addr, metrics, stop, thread }
    }

    /// The agent settings that reach this server from side B with the
    /// agent's certificate; tests change what they need.
    pub fn agent_config(&self, certs: &GeneratedCerts) -> konnq_shared::config::RawAgentConfig {
        konnq_shared::config::RawAgentConfig {
            proxy_server_host: Some(Side::A.addr().to_string()),
            proxy_server_port: Some(self.agent_addr.port()),
            ca_cert: Some(certs.ca_cert.clone()),
            agent_cert: Some(certs.agent_cert.clone()),
            agent_key: Some(certs.agent_key.clone()),
            health_server_port: Some(0),
            admin_server_port: Some(0),
            sync_interval: Some(Duration::from_millis(100)),
            ..Default::default()
        }
    }

    /// Shuts the server down and waits for its thread.
    pub fn stop(self) {
        let _ = self.stop.send(());
        self.thread.join().expect("server thread");
    }
}

/// Serves each connection to `listener` with `serve` (one of the load
/// tester's targets), until the listener is dropped. Call from inside a
/// runtime.
pub fn serve_with<F, Fut>(listener: tokio::net::TcpListener, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
}
