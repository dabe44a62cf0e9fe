//! High availability: several servers behind one UDP load balancer (a real
//! nginx with its stream module, as control planes put in front of their
//! apiservers), each server with its own Unix socket as each apiserver has
//! its own, and agents that hold a connection to every server; servers and
//! agents that stop and come back.
//!
//! nginx comes from Debian's `nginx-light` and `libnginx-mod-stream`
//! (`scripts/test.sh` installs them); without it these tests fail and say so.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use konnq_shared::certs::GeneratedCerts;

const LIMIT: Duration = Duration::from_secs(20);
const NGINX: &str = "/usr/sbin/nginx";
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// nginx as a UDP load balancer in front of `upstreams` (round robin: each
/// new client address:port goes to the next server); killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstreams: &[SocketAddr]) -> Nginx {
        for needed in [NGINX, STREAM_MODULE] {
            assert!(
                Path::new(needed).exists(),
                "{needed} is missing: these tests need nginx with its stream module \
                 (apt-get install nginx-light libnginx-mod-stream; scripts/test.sh installs them)"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let servers: String = upstreams.iter().map(|u| format!("server {u}; ")).collect();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {pid};\nerror_log stderr notice;\nload_module {STREAM_MODULE};\n\
             events {{ worker_connections 1024; }}\n\
             stream {{\n  upstream konnq {{ {servers}}}\n  \
             server {{ listen {addr} udp; proxy_pass konnq; proxy_timeout 60s; }}\n}}\n",
            pid = dir.path().join("nginx.pid").display(),
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = Command::new(NGINX)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg("stderr")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        Nginx { child, addr, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port that was free a moment ago (nginx binds it itself).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `count` servers with one CA, IDs `server-0`.., each told the count.
struct Servers {
    dir: tempfile::TempDir,
    certs: GeneratedCerts,
    count: u32,
    running: Vec<Option<konnq_server::ServerHandle>>,
    addrs: Vec<SocketAddr>,
}

impl Servers {
    async fn start(count: u32) -> Servers {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = konnq_shared::certs::generate(&dir.path().join("pki"), &[]).expect("certs");
        let mut s = Servers { dir, certs, count, running: Vec::new(), addrs: Vec::new() };
        for i in 0..count as usize {
            let server = s.launch(i, 0).await;
            s.addrs.push(server.agent_addr);
            s.running.push(Some(server));
        }
        s
    }

    async fn launch(&self, i: usize, port: u16) -> konnq_server::ServerHandle {
        let dir = self.dir.path().join(format!("server-{i}"));
        std::fs::create_dir_all(&dir).expect("server dir");
        let mut raw = server_raw(&dir, &self.certs);
        raw.server_id = Some(format!("server-{i}"));
        raw.server_count = Some(self.count);
        raw.agent_port = Some(port);
        raw.quic = Some(quic_fast());
        let cfg = raw.validate().expect("valid server config");
        let listeners = konnq_server::Listeners::bind(&cfg).await.expect("bind");
        konnq_server::start(cfg, listeners).await.expect("server starts")
    }

    fn server(&self, i: usize) -> &konnq_server::ServerHandle {
        self.running[i].as_ref().expect("server running")
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("server-{i}")).join("konnq.sock")
    }

    /// Restarts server `i` on its old agent port.
    async fn restart(&mut self, i: usize) {
        let server = self.launch(i, self.addrs[i].port()).await;
        self.running[i] = Some(server);
    }

    fn agent_config(&self, lb: SocketAddr, id: &str) -> konnq_shared::config::RawAgentConfig {
        let mut raw = agent_raw(&self.certs, lb);
        raw.agent_id = Some(id.to_owned());
        raw.quic = Some(quic_fast());
        raw
    }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("server-{i}")).collect()
}

/// A dial through server `i`'s socket to `target` echoes.
async fn echo_via(servers: &Servers, i: usize, target: SocketAddr, what: &str) {
    let mut client = channel(&servers.socket(i)).await;
    let mut stream = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(within(LIMIT, echo_through(&mut stream, what.as_bytes())).await, what.as_bytes());
}

#[tokio::test]
async fn an_agent_behind_nginx_holds_one_connection_to_each_server() {
    let servers = Servers::start(3).await;
    let nginx = Nginx::start(&servers.addrs);
    let agent = start_agent(servers.agent_config(nginx.addr, "node-1")).await;
    within(LIMIT, agent.wait_servers(3)).await;
    assert_eq!(agent.server_ids(), ids(3));
    assert_eq!(agent.metrics.known_server_count.get(), 3);
    assert_eq!(agent.metrics.open_server_connections.get(), 3);
    let sockets = agent.quic_local_addrs();
    let ports: std::collections::HashSet<u16> = sockets.iter().map(|a| a.port()).collect();
    assert_eq!(ports.len(), 3, "each server connection has its own UDP socket: {sockets:?}");

    // Each apiserver talks to its own server; every one reaches the node.
    let target = echo_target().await;
    for i in 0..3 {
        within(LIMIT, servers.server(i).wait_for_agents(1)).await;
        echo_via(&servers, i, target, &format!("through server-{i}")).await;
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn a_server_that_stops_and_comes_back_is_rejoined() {
    let mut servers = Servers::start(2).await;
    let nginx = Nginx::start(&servers.addrs);
    let agent = start_agent(servers.agent_config(nginx.addr, "node-1")).await;
    within(LIMIT, agent.wait_servers(2)).await;
    for i in 0..2 {
        // The agent counts a server at its welcome; the server takes dials
        // on the connection a moment later (see Backend::hold).
        within(LIMIT, servers.server(i).wait_for_agents(1)).await;
    }
    let target = echo_target().await;

    // A transfer through server-0 is open while server-0 shuts down.
    let mut client = channel(&servers.socket(0)).await;
    let mut open = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    let stopping = servers.running[0].take().expect("running");
    let shutdown = tokio::spawn(stopping.shutdown());
    // The agent hears of it on the control stream (it stops counting
    // server-0 and looks for another), while the open connection still
    // carries data.
    eventually("the agent knows server-0 drains", LIMIT, || agent.draining_servers() == ["server-0"]).await;
    assert_eq!(within(LIMIT, echo_through(&mut open, b"during the drain")).await, b"during the drain");
    echo_via(&servers, 1, target, "server-1 serves meanwhile").await;
    open.close().await;
    drop(open);
    within(LIMIT, shutdown).await.expect("server-0 stopped");
    within(LIMIT, agent.wait_servers(1)).await;
    assert_eq!(agent.server_ids(), ["server-1"]);

    servers.restart(0).await;
    within(LIMIT, agent.wait_servers(2)).await;
    assert_eq!(agent.server_ids(), ids(2));
    within(LIMIT, servers.server(0).wait_for_agents(1)).await;
    echo_via(&servers, 0, target, "server-0 is back").await;
    agent.shutdown().await;
}

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_konnq-server");

/// A konnq-server process (so that it can be SIGKILLed) on fixed ports;
/// killed on drop.
struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    fn spawn(dir: &Path, certs: &GeneratedCerts, agent_port: u16, health_port: u16) -> ServerProcess {
        // Idle timeout 30 s: an agent that waited for it could not rejoin
        // within the test's limit; only the stateless reset gets it back.
        let conf = dir.join("server.toml");
        std::fs::write(&conf, "[quic]\nkeep-alive-interval = \"200ms\"\nidle-timeout = \"30s\"\n").expect("conf");
        let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
        let args = [
            format!("--config={}", path(&conf)),
            format!("--uds-name={}", path(&dir.join("konnq.sock"))),
            "--agent-bind-address=127.0.0.1".to_owned(),
            format!("--agent-port={agent_port}"),
            "--health-bind-address=127.0.0.1".to_owned(),
            format!("--health-port={health_port}"),
            "--admin-port=0".to_owned(),
            "--server-id=crashing".to_owned(),
            format!("--cluster-cert={}", path(&certs.server_cert)),
            format!("--cluster-key={}", path(&certs.server_key)),
            format!("--cluster-ca-cert={}", path(&certs.ca_cert)),
        ];
        let child = Command::new(SERVER_BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn konnq-server");
        ServerProcess { child }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of `GET /readyz` on `port`, or 0 when nothing answers.
async fn readyz(port: u16) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return 0 };
    let request = "GET /readyz HTTP/1.1\r\nHost: konnq\r\nConnection: close\r\n\r\n";
    if s.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut response = String::new();
    let _ = s.read_to_string(&mut response).await;
    response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

async fn wait_ready(port: u16, what: &str) {
    within(LIMIT, async {
        while readyz(port).await != 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    eprintln!("{what}");
}

#[tokio::test]
async fn an_agent_rejoins_a_killed_and_restarted_server_at_its_next_packet() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = konnq_shared::certs::generate(&dir.path().join("pki"), &[]).expect("certs");
    let (agent_port, health_port) = (free_udp_port(), free_tcp_port());
    let mut server = ServerProcess::spawn(dir.path(), &certs, agent_port, health_port);
    let mut raw = agent_raw(&certs, SocketAddr::from(([127, 0, 0, 1], agent_port)));
    raw.quic = Some(konnq_shared::config::RawQuicConfig {
        keep_alive_interval: Some(Duration::from_millis(200)),
        idle_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    });
    let agent = start_agent(raw).await;
    wait_ready(health_port, "the agent joined the server").await;
    assert_eq!(agent.server_ids(), ["crashing"]);
    let socket = agent.quic_local_addrs();

    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reap");
    assert_eq!(agent.server_ids(), ["crashing"], "the agent cannot know yet: nothing answers its packets");
    let restarted = std::time::Instant::now();
    let _server = ServerProcess::spawn(dir.path(), &certs, agent_port, health_port);
    wait_ready(health_port, "the agent joined the restarted server").await;
    eprintln!("rejoined {} ms after the restart began", restarted.elapsed().as_millis());
    assert_eq!(
        agent.metrics.server_failures(konnq_agent::metrics::Direction::FromServer),
        1,
        "the old connection ended as lost"
    );
    // The reset came to that socket: connecting again from it keeps the
    // 5-tuple, which a load balancer in front maps to the same server.
    assert_eq!(agent.quic_local_addrs(), socket, "the new connection uses the reset one's socket");
    agent.shutdown().await;
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Dials the agent with this ID completed (its own count).
fn dials(agent: &konnq_agent::AgentHandle) -> f64 {
    metric(&agent.metrics.render(), "konnectivity_network_proxy_agent_dial_duration_seconds_count")
}

#[tokio::test]
async fn a_draining_agent_gets_no_new_dials_and_its_open_connections_finish() {
    let lab = Lab::new().await;
    let target = echo_target().await;
    let grace = Duration::from_secs(120);
    let leaving = lab.agent_with(|raw| {
        raw.agent_id = Some("leaving".into());
        raw.graceful_shutdown_timeout = Some(grace);
    });
    let leaving = leaving.await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let mut client = lab.channel().await;
    let mut open = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(dials(&leaving), 1.0);
    let staying = lab.agent_with(|raw| raw.agent_id = Some("staying".into())).await;
    within(LIMIT, lab.server.wait_for_agents(2)).await;

    leaving.drain();
    let mut ready = lab.server.backend.ready_agents();
    within(LIMIT, ready.wait_for(|&n| n == 1)).await.expect("server running");
    for i in 0..20 {
        let mut client = lab.channel().await;
        let mut s = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
        assert_eq!(
            within(LIMIT, echo_through(&mut s, format!("new {i}").as_bytes())).await,
            format!("new {i}").as_bytes()
        );
    }
    assert_eq!((dials(&leaving), dials(&staying)), (1.0, 20.0), "every new dial went to the other agent");

    // The open connection goes on while it moves bytes; once it has been
    // idle for konnq_agent::QUIET, the agent exits, long before its
    // graceful shutdown timeout, and the client is told.
    let payload = random_bytes(1024 * 1024);
    let stopping = tokio::spawn(leaving.drain_and_shutdown(std::future::pending()));
    assert!(within(LIMIT, echo_through(&mut open, &payload)).await == payload, "the open connection carries on");
    assert!(!stopping.is_finished(), "the agent waits while its connection moves bytes");
    within(LIMIT, stopping).await.expect("the agent stopped once its connection was idle");
    assert!(matches!(within(LIMIT, open.next()).await, Event::Close(_)), "the client is told");
    staying.shutdown().await;
}

/// One agent behind a [`Relay`] (keep-alives every 500 ms, idle timeout
/// 30 s) and a client connection through it that has echoed once.
struct HeldThroughRelay {
    lab: Lab,
    relay: Relay,
    open: Stream,
    _agent: konnq_agent::AgentHandle,
    _client: konnq_shared::proto::proxy_service_client::ProxyServiceClient<tonic::transport::Channel>,
}

impl HeldThroughRelay {
    async fn start() -> HeldThroughRelay {
        let (lab, relay, agent) = agent_through_relay().await;
        let (client, open) = held_connection(&lab).await;
        HeldThroughRelay { lab, relay, open, _agent: agent, _client: client }
    }
}

/// A lab (keep-alives every 500 ms, idle timeout 30 s) whose one agent
/// reaches the server through a [`Relay`].
async fn agent_through_relay() -> (Lab, Relay, konnq_agent::AgentHandle) {
    let quic = quic_long_idle();
    let lab = Lab::with(|raw| raw.quic = Some(quic.clone())).await;
    let relay = Relay::start(lab.server.agent_addr).await;
    let agent = lab
        .agent_with(|raw| {
            raw.proxy_server_port = Some(relay.addr.port());
            raw.quic = Some(quic.clone());
        })
        .await;
    (lab, relay, agent)
}

#[tokio::test]
async fn a_dead_agent_found_by_icmp_has_its_clients_told_before_the_idle_timeout() {
    // Idle timeout 30 s: only the ICMP check can close the connection
    // within the test's limit.
    let held = HeldThroughRelay::start().await;
    let (lab, mut open) = (held.lab, held.open);
    held.relay.kill().await;
    let told = told_closed(&mut open, std::time::Instant::now(), LIMIT).await;
    eprintln!("the client was told {} ms after the agent's socket closed", told.as_millis());
    assert_eq!(lab.metric("konnq_server_agents_unreachable_total").await, 1.0);
}

#[tokio::test]
async fn a_dial_to_a_silent_agent_goes_to_another_and_its_clients_are_told_before_the_idle_timeout() {
    // Idle timeout 30 s and no ICMP (the relay only goes silent, as a load
    // balancer in front of a dead agent does): only the check an
    // unanswered dial starts can close the connection within the limit.
    let quic = quic_long_idle();
    let lab = Lab::with(|raw| {
        raw.quic = Some(quic.clone());
        raw.proxy_strategies = Some("destHost,default".parse().expect("valid strategies"));
    })
    .await;
    let relay = Relay::start(lab.server.agent_addr).await;
    // Dials to 127.0.0.1 go to the agent behind the relay while it lives.
    let _silent = lab
        .agent_with(|raw| {
            raw.proxy_server_port = Some(relay.addr.port());
            raw.quic = Some(quic.clone());
            raw.agent_identifiers = Some("ipv4=127.0.0.1".to_owned());
        })
        .await;
    let _other = lab.agent_with(|raw| raw.quic = Some(quic.clone())).await;
    within(LIMIT, lab.server.wait_for_agents(2)).await;
    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut held = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(within(LIMIT, echo_through(&mut held, b"alive")).await, b"alive");

    relay.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let cut = std::time::Instant::now();
    let mut next = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    let redialled = cut.elapsed();
    assert_eq!(within(LIMIT, echo_through(&mut next, b"elsewhere")).await, b"elsewhere");
    let told = told_closed(&mut held, cut, LIMIT).await;
    eprintln!(
        "dial answered by the other agent {} ms after the cut; the held connection's client told after {} ms",
        redialled.as_millis(),
        told.as_millis()
    );
    assert_eq!(lab.metric("konnq_server_agents_unreachable_total").await, 1.0);
}

#[tokio::test]
async fn data_sent_to_a_silent_agent_gets_its_clients_told_before_the_idle_timeout() {
    // As above, but no dial follows the cut: the client only sends data
    // on its established connection.
    let HeldThroughRelay { lab, relay, open: mut held, .. } = HeldThroughRelay::start().await;
    relay.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let cut = std::time::Instant::now();
    let packet = konnq_protocol::konnectivity::data(held.connect_id, bytes::Bytes::from_static(b"anyone?"));
    held.tx.send(packet).await.expect("stream open");
    let told = told_closed(&mut held, cut, LIMIT).await;
    eprintln!("the client was told {} ms after the cut", told.as_millis());
    assert_eq!(lab.metric("konnq_server_agents_unreachable_total").await, 1.0);
}

#[tokio::test]
async fn a_download_from_an_agent_that_goes_silent_gets_its_client_told_before_the_idle_timeout() {
    // The data flows from the agent only (a target that sends on its own)
    // and the client sends nothing after its dial: the server has nothing
    // to send the agent but keep-alives, which start no check. Only the
    // packet it sends when the agent's data stops can find the agent
    // silent. No ICMP (the relay goes silent) and an idle timeout of 30 s.
    let (lab, relay, _agent) = agent_through_relay().await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let target = ticking_target().await;
    let mut client = lab.channel().await;
    let mut held = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    // The second tick comes 200 ms after the first, well after the check
    // the dial started has seen its answer and ended.
    assert_eq!(within(LIMIT, held.read_exact(2 * TICK.len())).await, [TICK, TICK].concat());
    relay.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let cut = std::time::Instant::now();
    let told = told_closed(&mut held, cut, LIMIT).await;
    eprintln!("the client was told {} ms after the cut", told.as_millis());
    assert_eq!(lab.metric("konnq_server_agents_unreachable_total").await, 1.0);
}

const TICK: &[u8] = b"tick";

/// A TCP target that sends [`TICK`] on each connection at once and then
/// every 200 ms, at most 300 times (a minute).
async fn ticking_target() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut every = tokio::time::interval(Duration::from_millis(200));
                for _ in 0..300 {
                    every.tick().await;
                    if s.write_all(TICK).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_agent_sent_to_a_server_with_another_tls_key_is_reset_through_the_shared_key() {
    // Two servers with their own CAs and keys (as kubeadm gives each
    // control-plane node its own), one reset key file; the agent trusts
    // both. The relay stands for a load balancer that moves the agent's
    // flow from one server to the other.
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki: Vec<GeneratedCerts> = (0..2)
        .map(|i| konnq_shared::certs::generate(&dir.path().join(format!("pki-{i}")), &[]).expect("certs"))
        .collect();
    let bundle = dir.path().join("cas.crt");
    let cas: Vec<String> = pki.iter().map(|p| std::fs::read_to_string(&p.ca_cert).expect("ca")).collect();
    std::fs::write(&bundle, cas.concat()).expect("write bundle");
    let reset_key = dir.path().join("reset.key");
    std::fs::write(&reset_key, random_bytes(32)).expect("write reset key");
    // Idle timeout 30 s: only a stateless reset ends the moved connection
    // within the test's limit.
    let quic = konnq_shared::config::RawQuicConfig {
        keep_alive_interval: Some(Duration::from_millis(300)),
        idle_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let mut servers = Vec::new();
    for (i, certs) in pki.iter().enumerate() {
        let home = dir.path().join(format!("server-{i}"));
        std::fs::create_dir_all(&home).expect("server dir");
        let mut raw = server_raw(&home, certs);
        raw.server_id = Some(format!("server-{i}"));
        raw.cluster_ca_cert = Some(bundle.clone());
        raw.stateless_reset_key_file = Some(reset_key.clone());
        raw.quic = Some(quic.clone());
        let cfg = raw.validate().expect("valid server config");
        let listeners = konnq_server::Listeners::bind(&cfg).await.expect("bind");
        servers.push(konnq_server::start(cfg, listeners).await.expect("server starts"));
    }
    let relay = Relay::start(servers[0].agent_addr).await;
    let mut raw = agent_raw(&pki[0], relay.addr);
    raw.ca_cert = Some(bundle.clone());
    raw.quic = Some(quic);
    let agent = start_agent(raw).await;
    within(LIMIT, agent.wait_servers(1)).await;
    assert_eq!(agent.server_ids(), ["server-0"]);

    relay.point_at(servers[1].agent_addr).await;
    let moved = std::time::Instant::now();
    eventually("the agent is on server-1", LIMIT, || agent.server_ids() == ["server-1"]).await;
    eprintln!("on server-1 {} ms after the flow moved", moved.elapsed().as_millis());
    agent.shutdown().await;
}

#[tokio::test]
async fn a_forged_icmp_for_a_live_agent_cuts_nothing() {
    let lab = Lab::new().await;
    let agent = lab.agent().await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut open = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(within(LIMIT, echo_through(&mut open, b"before")).await, b"before");

    let agent_port = agent.quic_local_addrs()[0].port();
    let agent_addr = SocketAddr::from(([127, 0, 0, 1], agent_port));
    forge_port_unreachable(lab.server.agent_addr, agent_addr);
    let checks = || metric(&lab.server.metrics.render(), "konnq_server_agents_unreachable_checks_total");
    eventually("the server checked the agent", LIMIT, || checks() >= 1.0).await;
    assert_eq!(lab.metric("konnq_server_agents_unreachable_total").await, 0.0, "the agent answered");
    assert_eq!(lab.server.backend.agent_count(), 1);
    assert_eq!(within(LIMIT, echo_through(&mut open, b"after")).await, b"after");
}

/// Sends the server's UDP socket at `server` an ICMP "port unreachable" as
/// if its last datagram to `agent` had found the port closed (a raw socket:
/// needs root, as the test suite runs).
fn forge_port_unreachable(server: SocketAddr, agent: SocketAddr) {
    let (SocketAddr::V4(server), SocketAddr::V4(agent)) = (server, agent) else {
        panic!("IPv4 addresses expected: {server} {agent}");
    };
    let mut quoted = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
    quoted.extend(server.ip().octets());
    quoted.extend(agent.ip().octets());
    let sum = checksum(&quoted);
    quoted[10..12].copy_from_slice(&sum.to_be_bytes());
    quoted.extend(server.port().to_be_bytes());
    quoted.extend(agent.port().to_be_bytes());
    quoted.extend([0, 8, 0, 0]);
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend(quoted);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(socket2::Protocol::ICMPV4))
        .expect("a raw ICMP socket (the test suite runs as root)");
    let to = SocketAddr::from((*server.ip(), 0));
    raw.send_to(&icmp, &to.into()).expect("send ICMP");
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[tokio::test]
async fn a_lone_draining_agent_still_takes_dials() {
    let lab = Lab::new().await;
    let target = echo_target().await;
    let agent = lab.agent_with(|raw| raw.graceful_shutdown_timeout = Some(Duration::from_secs(120))).await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    agent.drain();
    let mut ready = lab.server.backend.ready_agents();
    within(LIMIT, ready.wait_for(|&n| n == 0)).await.expect("server running");
    // No other agent: as upstream's, the server falls back to the draining one.
    let mut client = lab.channel().await;
    let mut s = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(within(LIMIT, echo_through(&mut s, b"last resort")).await, b"last resort");
    assert_eq!(dials(&agent), 1.0);
    agent.shutdown().await;
}

#[tokio::test]
async fn a_server_shutting_down_waits_for_dials_its_agent_has_not_answered() {
    // A target whose accept queue is full: the agent's TCP connect hangs
    // until its own dial timeout (2 s in agent_raw), and the dial stays
    // pending on the agent until then.
    let lab = Lab::with(|raw| raw.graceful_shutdown_timeout = Some(Duration::from_secs(20))).await;
    let agent = lab.agent().await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let hang = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    hang.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    hang.listen(0).expect("listen");
    let hang_addr = hang.local_addr().expect("addr").as_socket().expect("inet");
    let _fill: Vec<_> = (0..2)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&hang_addr, Duration::from_millis(300)).ok())
        .collect();
    let mut client = lab.channel().await;
    let mut pending = Stream::open(&mut client, &hang_addr.to_string(), 7).await;
    eventually("the dial is pending on the agent", LIMIT, || agent.metrics.pending_dials.get() == 1).await;

    let Lab { server, dir: _dir, .. } = lab;
    let stopping = tokio::spawn(server.shutdown());
    // The answer is the agent's own (its dial timed out), not the end of
    // its connection.
    match within(LIMIT, pending.next()).await {
        Event::DialRsp { random: 7, connect_id: 0, error } => {
            assert!(!error.contains("connection lost") && !error.contains("closed"), "{error}")
        }
        other => panic!("expected DIAL_RSP, got {other:?}"),
    }
    within(LIMIT, stopping).await.expect("the server stopped");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_connection_cut_by_the_graceful_shutdown_timeout_is_told_the_server_is_shutting_down() {
    let lab = Lab::with(|raw| raw.graceful_shutdown_timeout = Some(Duration::from_millis(200))).await;
    let agent = lab.agent_with(|raw| raw.graceful_shutdown_timeout = Some(Duration::from_secs(120))).await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut open = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(within(LIMIT, echo_through(&mut open, b"in transfer")).await, b"in transfer");

    let Lab { server, dir: _dir, .. } = lab;
    let stopping = tokio::spawn(server.shutdown());
    let (_, why) = within(LIMIT, open.read_to_close()).await;
    assert_eq!(why, "server shutting down", "CLOSE_RSP tells the client why");
    within(LIMIT, stopping).await.expect("the server stopped");
    agent.shutdown().await;
}

/// Reads one HTTP/2 frame: (type, flags, stream, payload).
async fn read_h2_frame(io: &mut tokio::net::UnixStream) -> (u8, u8, u32, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.expect("a frame header");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    io.read_exact(&mut payload).await.expect("a frame payload");
    (head[3], head[4], stream, payload)
}

#[tokio::test]
async fn a_request_sent_as_the_shutdown_begins_is_served_and_waited_for() {
    use konnq_protocol::fuzzing::h2::{frame, request_block};
    use konnq_protocol::h2::{Flags, FrameType, PREFACE};
    use prost::Message;
    use tokio::io::AsyncWriteExt;
    const GOAWAY: u8 = 0x7;
    const PING: u8 = 0x6;
    const DATA: u8 = 0x0;

    let lab = Lab::with(|raw| raw.graceful_shutdown_timeout = Some(Duration::from_secs(20))).await;
    let agent = lab.agent().await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let target = echo_target().await;
    // A client (kube-apiserver) connects just before the server's SIGTERM
    // and sends its request before it has read anything from the server.
    let mut io = tokio::net::UnixStream::connect(&lab.socket).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(FrameType::Settings, Flags::NONE, 0, &[]));
    io.write_all(&hello).await.expect("preface");
    let Lab { server, dir: _dir, .. } = lab;
    let stopping = tokio::spawn(server.shutdown());
    // The server's GOAWAY and PING are on their way; the request crosses them.
    let mut goaways = Vec::new();
    let ping = loop {
        let (kind, _, _, payload) = within(LIMIT, read_h2_frame(&mut io)).await;
        match kind {
            GOAWAY => goaways.push(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])),
            PING => break payload,
            _ => {}
        }
    };
    assert_eq!(goaways, [(1 << 31) - 1], "the first GOAWAY leaves every stream open");
    let mut request = frame(
        FrameType::Headers,
        Flags::END_HEADERS,
        1,
        &request_block("POST", "/ProxyService/Proxy", "application/grpc"),
    );
    let dial = konnq_protocol::konnectivity::client::dial_req(&target.to_string(), 9).encode_to_vec();
    let mut message = vec![0];
    message.extend_from_slice(&(dial.len() as u32).to_be_bytes());
    message.extend_from_slice(&dial);
    request.extend(frame(FrameType::Data, Flags::NONE, 1, &message));
    request.extend(frame(FrameType::Ping, Flags::ACK, 0, &ping));
    io.write_all(&request).await.expect("request");

    // Served: the dial's answer, then the final GOAWAY naming stream 1.
    let mut dial_rsp = None;
    let mut last = None;
    while dial_rsp.is_none() || last.is_none() {
        let (kind, _, stream, payload) = within(LIMIT, read_h2_frame(&mut io)).await;
        match kind {
            DATA if stream == 1 => {
                let packet = konnq_shared::proto::Packet::decode(&payload[5..]).expect("a packet");
                dial_rsp = Some(packet);
            }
            GOAWAY => last = Some(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])),
            0x3 => panic!("stream {stream} reset: {payload:?}"),
            _ => {}
        }
    }
    assert_eq!(last, Some(1), "the final GOAWAY names the request");
    match dial_rsp.and_then(|p| p.payload) {
        Some(konnq_shared::proto::packet::Payload::DialResponse(rsp)) => {
            assert_eq!((rsp.random, rsp.error.as_str()), (9, ""), "dialled");
            assert!(rsp.connect_id > 0);
        }
        other => panic!("expected DIAL_RSP, got {other:?}"),
    }
    assert!(!stopping.is_finished(), "the server waits for the open connection");
    drop(io);
    within(LIMIT, stopping).await.expect("the server stopped");
    agent.shutdown().await;
}
