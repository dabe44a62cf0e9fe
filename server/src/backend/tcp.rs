//! Agents whose network drops UDP: QUIC datagrams framed over TCP on the
//! agent port (see [`konnq_protocol::stream_datagrams`]).
//!
//! One quinn endpoint serves both transports. [`MuxSocket`] stands in for
//! its UDP socket: it passes UDP through, and gives each agent TCP
//! connection an address of its own in 240.0.0.0/4 (reserved, never a real
//! peer), so quinn sees one more peer and everything above it (handshake,
//! authentication, streams, DRAIN, metrics) is the same for both.
//! [`serve`] accepts the TCP connections and runs each link.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use konnq_protocol::stream_datagrams::{self, PREAMBLE};
use konnq_shared::stream_socket::{self, OutboundRx, OutboundTx, QUEUE};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Backend;

/// How long a new TCP connection has to send its preamble.
const PREAMBLE_WAIT: Duration = Duration::from_secs(10);

/// Whether `addr` names an agent TCP link rather than a UDP peer.
pub fn is_tcp_link(addr: SocketAddr) -> bool {
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => ip.octets()[0] >= 240,
        IpAddr::V6(_) => false,
    }
}

/// The agent TCP links, by the address quinn knows each by.
pub struct TcpLinks {
    links: Mutex<HashMap<SocketAddr, OutboundTx>>,
    next: AtomicU32,
    /// Datagrams from every link, for [`MuxSocket::poll_recv`].
    inbound: mpsc::Sender<(SocketAddr, Bytes)>,
    /// Addresses are IPv4-mapped (the UDP socket is IPv6).
    mapped: bool,
}

impl TcpLinks {
    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, OutboundTx>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new link: its address and the queue of datagrams to write to it.
    fn add(&self) -> (SocketAddr, OutboundRx) {
        let (tx, rx) = stream_socket::outbound();
        let mut links = self.links();
        let addr = loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed) & 0x0FFF_FFFF;
            let ip = Ipv4Addr::from(0xF000_0000 | n);
            let ip = if self.mapped { IpAddr::V6(ip.to_ipv6_mapped()) } else { IpAddr::V4(ip) };
            let addr = SocketAddr::new(ip, 1);
            if !links.contains_key(&addr) {
                break addr;
            }
        };
        links.insert(addr, tx);
        (addr, rx)
    }

    fn remove(&self, addr: SocketAddr) {
        self.links().remove(&addr);
    }
}

/// The endpoint's socket: UDP, plus every agent TCP link.
pub struct MuxSocket {
    udp: Arc<dyn AsyncUdpSocket>,
    /// `agent-transports` includes quic; else UDP datagrams are dropped
    /// unanswered, as a firewall would.
    udp_open: bool,
    links: Arc<TcpLinks>,
    inbound: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    /// Which to look at first, alternately, so neither starves the other.
    tcp_first: AtomicBool,
}

impl std::fmt::Debug for MuxSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxSocket").field("udp", &self.udp).field("udp_open", &self.udp_open).finish_non_exhaustive()
    }
}

impl MuxSocket {
    pub fn new(udp: Arc<dyn AsyncUdpSocket>, udp_open: bool) -> io::Result<(Arc<MuxSocket>, Arc<TcpLinks>)> {
        let mapped = udp.local_addr()?.is_ipv6();
        let (tx, rx) = mpsc::channel(QUEUE);
        let links = Arc::new(TcpLinks { links: Mutex::default(), next: AtomicU32::new(1), inbound: tx, mapped });
        let socket = MuxSocket {
            udp,
            udp_open,
            links: Arc::clone(&links),
            inbound: Mutex::new(rx),
            tcp_first: AtomicBool::new(false),
        };
        Ok((Arc::new(socket), links))
    }

    fn poll_tcp(&self, cx: &mut Context, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> Poll<usize> {
        let mut inbound = self.inbound.lock().unwrap_or_else(|p| p.into_inner());
        match inbound.poll_recv(cx) {
            Poll::Ready(Some((from, first))) => {
                let mut more = || inbound.try_recv().ok();
                Poll::Ready(stream_socket::fill(first, &mut more, from, bufs, meta))
            }
            // TcpLinks holds a sender as long as the socket lives.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn poll_udp(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.udp.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(_)) if !self.udp_open => continue,
                other => return other,
            }
        }
    }
}

impl AsyncUdpSocket for MuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        // Only UDP sends can block (a full link queue drops instead).
        Arc::clone(&self.udp).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if is_tcp_link(transmit.destination) {
            if let Some(link) = self.links.links().get(&transmit.destination) {
                link.enqueue(transmit);
            }
            // A link that ended: its datagrams go nowhere (never to UDP).
            return Ok(());
        }
        if !self.udp_open {
            return Ok(());
        }
        self.udp.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let tcp_first = self.tcp_first.fetch_xor(true, Ordering::Relaxed);
        if tcp_first {
            if let Poll::Ready(n) = self.poll_tcp(cx, bufs, meta) {
                return Poll::Ready(Ok(n));
            }
        }
        if let Poll::Ready(r) = self.poll_udp(cx, bufs, meta) {
            return Poll::Ready(r);
        }
        if !tcp_first {
            if let Poll::Ready(n) = self.poll_tcp(cx, bufs, meta) {
                return Poll::Ready(Ok(n));
            }
        }
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.udp.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.udp.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.udp.may_fragment()
    }
}

/// Accepts agent TCP connections until the task is dropped. `idle`: a link
/// that carries nothing this long is closed (QUIC keep-alives keep a live
/// agent's link busy).
/// Failed accepts (e.g. out of file descriptors) pause and warn as the
/// frontends' do ([`crate::frontend::accept`]).
pub async fn serve(listener: TcpListener, links: Arc<TcpLinks>, backend: Arc<Backend>, idle: Duration) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut accepted = std::pin::pin!(crate::frontend::accept::with_backoff(incoming, "agent TCP port"));
    while let Some(stream) = futures::StreamExt::next(&mut accepted).await {
        let Ok(real) = stream.peer_addr() else { continue };
        tokio::spawn(run_link(stream, real, Arc::clone(&links), Arc::clone(&backend), idle));
    }
}

async fn run_link(
    mut stream: TcpStream,
    real: SocketAddr,
    links: Arc<TcpLinks>,
    backend: Arc<Backend>,
    idle: Duration,
) {
    if let Err(e) = stream_socket::tune(&stream) {
        debug!(%real, "tuning the agent TCP connection: {e}");
    }
    let mut preamble = [0u8; PREAMBLE.len()];
    match tokio::time::timeout(PREAMBLE_WAIT, stream.read_exact(&mut preamble)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            backend.metrics.agent_tcp_refused.inc();
            info!(%real, "TCP connection on the agent port closed before it said what it is: {e}");
            return;
        }
        Err(_) => {
            backend.metrics.agent_tcp_refused.inc();
            info!(%real, "TCP connection on the agent port sent nothing within {PREAMBLE_WAIT:?}; closing");
            return;
        }
    }
    if let Err(e) = stream_datagrams::check_preamble(&preamble) {
        backend.metrics.agent_tcp_refused.inc();
        warn!(%real, "refusing a TCP connection on the agent port: {e}");
        return;
    }
    let (addr, outbound) = links.add();
    debug!(%real, link = %addr, "agent TCP link up");
    let inbound = links.inbound.clone();
    let why = stream_socket::pump(stream, outbound, inbound, move |d| (addr, d), Some(idle)).await;
    links.remove(addr);
    debug!(%real, link = %addr, "agent TCP link ended: {why}");
    backend.close_link_agents(addr, &format!("agent TCP connection ended: {why}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_addresses_are_reserved_ones_in_both_families() {
        assert!(is_tcp_link("240.0.0.1:1".parse().unwrap()));
        assert!(is_tcp_link("[::ffff:240.0.0.9]:1".parse().unwrap()));
        assert!(!is_tcp_link("10.0.0.1:8132".parse().unwrap()));
        assert!(!is_tcp_link("[::ffff:127.0.0.1]:8132".parse().unwrap()));
        assert!(!is_tcp_link("[2001:db8::1]:8132".parse().unwrap()));
    }
}
