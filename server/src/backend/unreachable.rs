//! Agents whose process died, learnt from ICMP.
//!
//! When an agent process dies, its node's kernel answers the server's next
//! packet to that UDP port with ICMP "port unreachable". QUIC ignores ICMP
//! by design (anyone on the path can forge it), so on its own the server
//! would notice only at `quic.idle-timeout`. Here the ICMP only starts a
//! check: the backend asks the agent for an acknowledgement, up to three
//! times a round trip (plus 50 ms) apart, and closes the agent's connection
//! if nothing at all arrives from it meanwhile; every client on that
//! connection is told at once. A forged ICMP for a live agent changes
//! nothing.
//!
//! Two parts:
//! - [`ErrorAwareSocket`] wraps quinn's UDP socket: with `IP_RECVERR` set,
//!   the kernel reports ICMP errors on an unconnected socket, and the next
//!   receive returns the error once; quinn would end its endpoint on it, so
//!   the wrapper passes over it.
//! - [`watch`] reads the socket's error queue (on a duplicate of its
//!   descriptor) and sends the address each "port unreachable" names.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tracing::debug;

/// quinn's socket, minus the ICMP errors the kernel reports on receive.
pub struct ErrorAwareSocket {
    pub inner: Arc<dyn AsyncUdpSocket>,
}

impl fmt::Debug for ErrorAwareSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorAwareSocket").field("inner", &self.inner).finish()
    }
}

/// Errors the kernel reports for an ICMP message about an earlier datagram.
fn from_icmp(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::EPROTO)
    )
}

impl AsyncUdpSocket for ErrorAwareSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Err(e)) if from_icmp(&e) => {
                // Reported once; the error queue has the details. Receive again.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Asks the kernel to report ICMP errors on `socket` (IPv4, and IPv6 for an
/// IPv6 socket, which may carry IPv4-mapped peers too).
pub fn report_errors(socket: &std::net::UdpSocket) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    set_int(fd, libc::SOL_IP, libc::IP_RECVERR)?;
    if socket.local_addr()?.is_ipv6() {
        set_int(fd, libc::SOL_IPV6, libc::IPV6_RECVERR)?;
    }
    Ok(())
}

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: fd is an open socket; the option value is a c_int of the given size.
    let r = unsafe {
        libc::setsockopt(fd, level, name, (&one as *const libc::c_int).cast(), size_of::<libc::c_int>() as u32)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads the error queue of `socket` (a duplicate of the endpoint's socket)
/// until the queue's owner goes away, sending the address of each peer the
/// kernel reported "port unreachable" for.
pub async fn watch(socket: std::net::UdpSocket, unreachable: mpsc::Sender<SocketAddr>) -> io::Result<()> {
    socket.set_nonblocking(true)?;
    // SAFETY: the AsyncFd owns the socket, so its descriptor stays open and
    // the same for the AsyncFd's whole life.
    let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::ERROR) }.map_err(|e| e.into_parts().1)?;
    loop {
        let mut guard = fd.ready(Interest::ERROR).await?;
        while let Some(report) = read_error(fd.get_ref().as_raw_fd()) {
            if let Some(addr) = report {
                // Dropped when the backend is behind: the idle timeout remains.
                let _ = unreachable.try_send(addr);
            }
        }
        guard.clear_ready();
        if unreachable.is_closed() {
            return Ok(());
        }
    }
}

/// One message from the error queue: `None` when it is empty, `Some(None)`
/// for an error other than "port unreachable".
fn read_error(fd: RawFd) -> Option<Option<SocketAddr>> {
    // SAFETY: zeroed sockaddr_storage, msghdr and byte buffers are valid
    // values; recvmsg writes within the lengths given.
    unsafe {
        let mut name: libc::sockaddr_storage = std::mem::zeroed();
        let mut data = [0u8; 64];
        let mut control = [0u64; 64];
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        if libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                debug!("reading the UDP error queue: {e}");
            }
            return None;
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if (level, kind) == (libc::SOL_IP, libc::IP_RECVERR)
                || (level, kind) == (libc::SOL_IPV6, libc::IPV6_RECVERR)
            {
                let err = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err);
                if port_unreachable(&err) {
                    return Some(socket_addr(&name));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Some(None)
    }
}

/// ICMP (type 3, code 3) or ICMPv6 (type 1, code 4) "port unreachable".
fn port_unreachable(err: &libc::sock_extended_err) -> bool {
    match err.ee_origin {
        libc::SO_EE_ORIGIN_ICMP => (err.ee_type, err.ee_code) == (3, 3),
        libc::SO_EE_ORIGIN_ICMP6 => (err.ee_type, err.ee_code) == (1, 4),
        _ => false,
    }
}

/// The destination of the datagram the ICMP was about, as quinn names
/// peers (IPv4-mapped addresses as IPv4 ones are compared by the caller).
fn socket_addr(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match name.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), 0, sin6.sin6_scope_id)))
        }
        _ => None,
    }
}

/// `a` and `b` name the same peer (an IPv4 address and its IPv4-mapped
/// IPv6 form are the same).
pub fn same_peer(a: SocketAddr, b: SocketAddr) -> bool {
    let canonical = |ip: IpAddr| ip.to_canonical();
    canonical(a.ip()) == canonical(b.ip()) && a.port() == b.port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_and_plain_ipv4_are_one_peer() {
        let plain: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.5]:4000".parse().unwrap();
        assert!(same_peer(plain, mapped));
        assert!(!same_peer(plain, "10.0.0.5:4001".parse().unwrap()));
        assert!(!same_peer(plain, "10.0.0.6:4000".parse().unwrap()));
    }

    /// A real kernel, a real ICMP: a datagram to a closed loopback port is
    /// answered with "port unreachable", which the error queue names.
    #[tokio::test]
    async fn a_datagram_to_a_closed_port_is_reported_with_its_destination() {
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        report_errors(&socket).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(watch(socket.try_clone().unwrap(), tx));
        socket.send_to(b"anyone there?", dead).unwrap();
        let reported = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await;
        assert_eq!(reported.expect("reported in time"), Some(dead));
    }
}
