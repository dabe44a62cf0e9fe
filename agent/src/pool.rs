//! The agent's server connections, one per server ID.
//!
//! Each connection has its own QUIC endpoint (its own UDP socket, so its own
//! source port): a load balancer in front of the servers spreads new 5-tuples
//! over them, and connections that shared one socket would all land on the
//! same server. [`Pool::rebind`] moves every endpoint to a new socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

use crate::metrics::Metrics;

/// One held server connection.
struct Held {
    /// Unique per connection: a server may be reached again after its old
    /// connection ended, and the old one's cleanup must not remove the new.
    key: u64,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    transport: Transport,
    /// The server said it is shutting down (it sends no new dials), or the
    /// agent retired the connection: the agent looks for another in its
    /// place, and a new connection to the same server may take it.
    draining: bool,
    /// Set when the agent retires the connection (see [`Pool::retire_tcp`]).
    retire: watch::Sender<bool>,
}

/// A connection the pool took.
#[derive(Debug)]
pub struct Added {
    pub key: u64,
    /// Becomes true when the agent retires the connection: tell the server,
    /// let the proxied connections finish, close.
    pub retire: watch::Receiver<bool>,
}

#[derive(Default)]
struct State {
    servers: HashMap<String, Held>,
    next_key: u64,
    /// The server count the last server that welcomed the agent reported.
    reported: Option<u32>,
    /// Connections ended since the sync loop last looked: `Some(true)` if
    /// every one had lived long (see [`Pool::take_loss`]).
    lost: Option<bool>,
    /// UDP endpoints whose connection a restarted server reset, for the
    /// next attempts (see [`Pool::take_reset_endpoint`]).
    reset: Vec<quinn::Endpoint>,
}

/// Most reset connections' endpoints kept for reuse.
const RESET_ENDPOINTS_KEPT: usize = 8;

/// The held connections, and what watches them.
pub struct Pool {
    state: Mutex<State>,
    /// Wakes the sync loop: a connection ended or a server began draining.
    pub changed: Notify,
    /// Open server connections (draining ones too): readiness.
    open: watch::Sender<usize>,
    metrics: Metrics,
}

/// What carries a connection's QUIC datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    /// Framed over one TCP connection (where UDP is blocked).
    Tcp,
}

impl Transport {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

/// Why [`Pool::add`] did not take a connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Duplicate;

impl Pool {
    pub fn new(metrics: Metrics) -> Arc<Pool> {
        Arc::new(Pool { state: Mutex::default(), changed: Notify::new(), open: watch::channel(0).0, metrics })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update completes under the lock: a panic elsewhere cannot
        // leave the state inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, s: &State) {
        let n = s.servers.len();
        self.metrics.open_server_connections.set(n as i64);
        for t in [Transport::Udp, Transport::Tcp] {
            let on = s.servers.values().filter(|h| h.transport == t).count();
            self.metrics.connections_on(t.label()).set(on as i64);
        }
        self.open.send_replace(n);
    }

    /// Holds `conn` to `server_id`, unless a connection to that server is
    /// already held and not draining (a draining one gives its place up and
    /// lives on until it ends by itself).
    pub fn add(
        &self,
        server_id: &str,
        server_count: u32,
        endpoint: quinn::Endpoint,
        conn: quinn::Connection,
        transport: Transport,
    ) -> Result<Added, Duplicate> {
        let mut s = self.state();
        s.reported = Some(server_count);
        if s.servers.get(server_id).is_some_and(|h| !h.draining) {
            return Err(Duplicate);
        }
        s.next_key += 1;
        let key = s.next_key;
        let (retire, retired) = watch::channel(false);
        s.servers.insert(server_id.to_owned(), Held { key, endpoint, conn, transport, draining: false, retire });
        self.publish(&s);
        Ok(Added { key, retire: retired })
    }

    /// Retires every connection over TCP that is not draining yet: each
    /// stops counting as held (so the sync loop connects again, now over
    /// UDP) and is told to wind down. Returns how many.
    pub fn retire_tcp(&self) -> usize {
        let mut s = self.state();
        let mut n = 0;
        for h in s.servers.values_mut().filter(|h| h.transport == Transport::Tcp && !h.draining) {
            h.draining = true;
            h.retire.send_replace(true);
            n += 1;
        }
        drop(s);
        self.changed.notify_one();
        n
    }

    /// Forgets connection `key` to `server_id`, which ended after living
    /// long (`stable`) or not; one to a draining server counts as stable
    /// (its end was announced), and so does one ended by a stateless reset
    /// (`was_reset`: its server restarted), whose UDP socket is kept for
    /// the next attempt (see [`Pool::take_reset_endpoint`]).
    pub fn remove(&self, server_id: &str, key: u64, stable: bool, was_reset: bool) {
        let mut s = self.state();
        // A connection to a server that said it shuts down ended as
        // expected, however young: its replacement is wanted at once. So
        // is one a restarted server reset: that server is up again.
        let mut expected = stable || was_reset;
        if s.servers.get(server_id).is_some_and(|h| h.key == key) {
            let held = s.servers.remove(server_id);
            expected |= held.as_ref().is_some_and(|h| h.draining);
            if let Some(h) = held.filter(|h| was_reset && h.transport == Transport::Udp) {
                if s.reset.len() < RESET_ENDPOINTS_KEPT {
                    s.reset.push(h.endpoint);
                }
            }
            self.publish(&s);
        }
        s.lost = Some(s.lost.unwrap_or(true) && expected);
        drop(s);
        self.changed.notify_one();
    }

    /// The endpoint (UDP socket) of a connection that a stateless reset
    /// ended, if one is kept. The server that sent the reset restarted and
    /// lost the connection's state; a new connection from the same local
    /// address and port takes the same path, so a load balancer in front
    /// sends it to that server again (its flow is keyed on the 5-tuple),
    /// where a new socket would land on whichever server it picks.
    pub fn take_reset_endpoint(&self) -> Option<quinn::Endpoint> {
        self.state().reset.pop()
    }

    /// Whether connections ended since the last call, and if so whether
    /// all of them had lived long.
    pub fn take_loss(&self) -> Option<bool> {
        self.state().lost.take()
    }

    /// Server `server_id` is draining: it no longer counts as held.
    pub fn set_draining(&self, server_id: &str, key: u64) {
        if let Some(h) = self.state().servers.get_mut(server_id).filter(|h| h.key == key) {
            h.draining = true;
        }
        self.changed.notify_one();
    }

    /// Connections to servers that are not draining.
    pub fn held(&self) -> usize {
        self.state().servers.values().filter(|h| !h.draining).count()
    }

    /// The server count last reported in a Welcome.
    pub fn reported(&self) -> Option<u32> {
        self.state().reported
    }

    /// IDs of the servers held, sorted.
    pub fn server_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.state().servers.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// IDs of the held servers that are draining, sorted.
    pub fn draining_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            self.state().servers.iter().filter(|(_, h)| h.draining).map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids
    }

    /// Open connections, as it changes.
    pub fn open(&self) -> watch::Receiver<usize> {
        self.open.subscribe()
    }

    /// Local addresses of the connections' sockets (UDP or TCP).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.state().servers.values().filter_map(|h| h.endpoint.local_addr().ok()).collect()
    }

    /// The endpoints, to close them.
    pub fn endpoints(&self) -> Vec<quinn::Endpoint> {
        self.state().servers.values().map(|h| h.endpoint.clone()).collect()
    }

    /// The endpoints on UDP sockets, to move them to new ones (one over
    /// TCP has no UDP socket to move).
    pub fn udp_endpoints(&self) -> Vec<quinn::Endpoint> {
        self.state().servers.values().filter(|h| h.transport == Transport::Udp).map(|h| h.endpoint.clone()).collect()
    }

    /// How many held connections run over TCP.
    pub fn tcp_count(&self) -> usize {
        self.state().servers.values().filter(|h| h.transport == Transport::Tcp).count()
    }

    /// The longest round-trip time of the held connections.
    pub fn max_rtt(&self) -> std::time::Duration {
        self.state().servers.values().map(|h| h.conn.rtt()).max().unwrap_or_default()
    }

    /// Closes every connection with `code` and `reason`.
    pub fn close_all(&self, code: u32, reason: &[u8]) {
        for h in self.state().servers.values() {
            h.conn.close(quinn::VarInt::from_u32(code), reason);
        }
    }
}
