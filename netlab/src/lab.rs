//! [`Lab`]: two network namespaces joined by an impaired link.

use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::LabError;
use crate::impair::{DirectionStats, Impairment};
use crate::netns::{self, NsThread};
use crate::relay::Direction;
use crate::settings::LinkSettings;
use crate::tun;

/// Name of the link device inside each namespace, TUN or veth (namespaces are
/// private, so every lab can use the same name).
pub const DEVICE: &str = "kq0";
/// Smallest and largest MTU [`Lab::create_veth`] accepts (IPv4's minimum; the
/// largest a veth device takes).
pub const VETH_MTU: std::ops::RangeInclusive<u32> = 576..=65_535;
/// Address of side A inside its namespace (`10.77.0.1/30`).
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Address of side B inside its namespace (`10.77.0.2/30`).
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Prefix length of the link subnet `10.77.0.0/30`.
pub const PREFIX_LEN: u8 = 30;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// One end of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Namespace `…a`, address [`ADDR_A`].
    A,
    /// Namespace `…b`, address [`ADDR_B`].
    B,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// The address of this end inside its namespace.
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Side::A => ADDR_A,
            Side::B => ADDR_B,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of both directions of the link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets sent by side A.
    pub a_to_b: DirectionStats,
    /// Packets sent by side B.
    pub b_to_a: DirectionStats,
    /// Packets the relay failed to write into a TUN device.
    pub write_errors: u64,
    /// Why a relay thread stopped early, if one did (the link is then dead).
    pub relay_failure: Option<String>,
}

impl LinkStats {
    /// Packets dropped in both directions, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.a_to_b.dropped() + self.b_to_a.dropped()
    }
}

struct Namespace {
    name: String,
    handle: OwnedFd,
    tun: Option<Arc<OwnedFd>>,
}

/// Two network namespaces, A and B, each with a device `kq0` (A `10.77.0.1/30`,
/// B `10.77.0.2/30`, loopback up, IPv6 off). [`Lab::create`] makes them TUN
/// devices joined by a userspace relay that impairs each direction as its
/// [`LinkSettings`] say; [`Lab::create_veth`] makes them the two ends of a veth
/// pair, the kernel's own link with no impairment. Dropping the lab stops the
/// relay, kills every process left in its namespaces and deletes them.
pub struct Lab {
    /// Dropped first: stops the relay threads before the devices go. Empty
    /// for a veth lab.
    relays: Vec<Direction>,
    namespaces: Vec<Namespace>,
    link: Mutex<LinkSettings>,
    /// The veth pair's MTU, for a veth lab.
    veth_mtu: Option<u32>,
}

impl Lab {
    /// Builds a lab whose namespaces are named `{prefix}-{pid}-{n}a` and `…b`.
    /// Needs root ([`LabError::NeedsRoot`] otherwise); takes a few tens of ms.
    pub fn create(prefix: &str, link: LinkSettings) -> Result<Lab, LabError> {
        check_prefix(prefix)?;
        link.validate()?;
        let a_to_b = Impairment::new(link.a_to_b.clone(), link.seed)?;
        let b_to_a = Impairment::new(link.b_to_a.clone(), link.seed_b_to_a())?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LabError::NeedsRoot);
        }
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let mut lab = Lab { relays: Vec::new(), namespaces: Vec::new(), link: Mutex::new(link), veth_mtu: None };
        lab.add_namespaces(prefix, n)?;
        let mut tuns = Vec::new();
        for side in [Side::A, Side::B] {
            let ns = &mut lab.namespaces[side.index()];
            let tun = Arc::new(open_tun_in(&ns.handle, &ns.name)?);
            ns.tun = Some(tun.clone());
            tuns.push(tun);
            configure(&ns.name, side.addr())?;
        }
        let start = |name: &str, from: &Arc<OwnedFd>, to: &Arc<OwnedFd>, imp| {
            Direction::start(name, from.clone(), to.clone(), imp).map_err(LabError::io("start relay thread"))
        };
        lab.relays.push(start("netlab-a2b", &tuns[0], &tuns[1], a_to_b)?);
        lab.relays.push(start("netlab-b2a", &tuns[1], &tuns[0], b_to_a)?);
        drop(tuns);
        Ok(lab)
    }

    /// Builds a lab whose two ends are a veth pair with MTU `mtu` (both ends),
    /// with the kernel's default offloads and no impairment: a clean link of a
    /// realistic MTU (1500 like most networks, 9001 like cloud jumbo frames),
    /// where loopback's 64 KiB would flatter per-packet costs. The link
    /// settings are the default (none) and cannot be changed.
    pub fn create_veth(prefix: &str, mtu: u32) -> Result<Lab, LabError> {
        check_prefix(prefix)?;
        if !VETH_MTU.contains(&mtu) {
            return Err(LabError::Io {
                context: format!("veth MTU {mtu}"),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("must be {}..={}", VETH_MTU.start(), VETH_MTU.end()),
                ),
            });
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LabError::NeedsRoot);
        }
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let mut lab = Lab {
            relays: Vec::new(),
            namespaces: Vec::new(),
            link: Mutex::new(LinkSettings::default()),
            veth_mtu: Some(mtu),
        };
        lab.add_namespaces(prefix, n)?;
        for side in [Side::A, Side::B] {
            let ns = &lab.namespaces[side.index()];
            let thread = netns::spawn_entered(&ns.handle, format!("netlab-v6-{}", ns.name), disable_ipv6, |()| ())?;
            let _ = thread.join();
        }
        let (a, b) = (lab.namespace(Side::A).to_owned(), lab.namespace(Side::B).to_owned());
        netns::ip(&["link", "add", "name", DEVICE, "netns", &a, "type", "veth", "peer", "name", DEVICE, "netns", &b])?;
        let mtu = mtu.to_string();
        for side in [Side::A, Side::B] {
            netns::ip(&["-n", lab.namespace(side), "link", "set", "dev", DEVICE, "mtu", &mtu])?;
            configure(lab.namespace(side), side.addr())?;
        }
        Ok(lab)
    }

    /// Creates and opens namespaces `…{n}a` and `…{n}b`.
    fn add_namespaces(&mut self, prefix: &str, n: u32) -> Result<(), LabError> {
        for side in [Side::A, Side::B] {
            let name = format!("{prefix}-{}-{n}{}", std::process::id(), if side == Side::A { 'a' } else { 'b' });
            netns::add(&name)?;
            let handle = netns::open(&name).inspect_err(|_| drop(netns::remove(&name)))?;
            self.namespaces.push(Namespace { name, handle, tun: None });
        }
        Ok(())
    }

    /// The MTU of a veth lab's link; `None` for an impaired (TUN) lab.
    pub fn veth_mtu(&self) -> Option<u32> {
        self.veth_mtu
    }

    /// The namespace name of one end (for `ip netns exec NAME …`).
    pub fn namespace(&self, side: Side) -> &str {
        &self.namespaces[side.index()].name
    }

    /// A new handle on one end's namespace, for `setns(2)` in a child process
    /// the caller spawns itself (between fork and exec). The namespace lives
    /// as long as the lab; the handle alone does not keep it listed.
    pub fn namespace_fd(&self, side: Side) -> io::Result<OwnedFd> {
        self.namespaces[side.index()].handle.try_clone()
    }

    /// The address of one end inside its namespace.
    pub fn addr(&self, side: Side) -> Ipv4Addr {
        side.addr()
    }

    /// The link settings in force.
    pub fn link(&self) -> LinkSettings {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the link while it runs; packets already held keep their release
    /// times, the RNG and serializer state carry on.
    /// A veth lab has no impairment to change: an error.
    pub fn set_link(&self, link: LinkSettings) -> Result<(), LabError> {
        link.validate()?;
        if self.relays.is_empty() {
            return Err(LabError::Io {
                context: "changing the link".into(),
                source: io::Error::new(io::ErrorKind::Unsupported, "a veth lab has no impairment to change"),
            });
        }
        self.relays[0].update(link.a_to_b.clone());
        self.relays[1].update(link.b_to_a.clone());
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = link;
        Ok(())
    }

    /// Counters of both directions (updated by the relay after every wake-up);
    /// all zero for a veth lab, which has no relay to count.
    pub fn stats(&self) -> LinkStats {
        if self.relays.is_empty() {
            return LinkStats::default();
        }
        let (a_to_b, wa) = self.relays[0].stats();
        let (b_to_a, wb) = self.relays[1].stats();
        let relay_failure = self.relays.iter().find_map(Direction::failure);
        LinkStats { a_to_b, b_to_a, write_errors: wa + wb, relay_failure }
    }

    /// Sets a per-namespace sysctl on one end, `key` as a path under
    /// `/proc/sys/` (e.g. `net/ipv4/tcp_congestion_control`, value `cubic`).
    pub fn set_sysctl(&self, side: Side, key: &str, value: &str) -> Result<(), LabError> {
        if key.split('/').any(|part| part.is_empty() || part == "..") || !key.starts_with("net/") {
            return Err(LabError::Io {
                context: format!("sysctl {key}"),
                source: io::Error::new(io::ErrorKind::InvalidInput, "expected a path like net/ipv4/…"),
            });
        }
        let (path, value) = (format!("/proc/sys/{key}"), value.to_string());
        let context = format!("write {value} to {path} in {}", self.namespace(side));
        self.spawn_in(side, move || std::fs::write(path, value))?
            .join()
            .map_err(|_| LabError::Io { context: context.clone(), source: io::Error::other("panicked") })?
            .map_err(LabError::io(context))
    }

    /// Spawns `cmd` inside one end's namespace. The child calls `setns(2)` between
    /// fork and exec (like `ip netns exec`, but keeping the command's stdio, env and
    /// directory; unlike it, `/sys` is not remounted). Dropping the lab kills it.
    pub fn run_in(&self, side: Side, mut cmd: Command) -> Result<Child, LabError> {
        let ns = self.namespace_fd(side).map_err(LabError::io(format!("dup handle of {}", self.namespace(side))))?;
        netns::enter_on_exec(&mut cmd, Arc::new(ns));
        cmd.spawn().map_err(LabError::io(format!("spawn {:?} in {}", cmd.get_program(), self.namespace(side))))
    }

    /// Runs `f` on a new thread inside one end's namespace: every socket it opens
    /// (and every thread it spawns) lives there. Returns once the thread is inside.
    pub fn spawn_in<F, T>(&self, side: Side, f: F) -> Result<NsThread<T>, LabError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let name = format!("netlab-{}", self.namespace(side));
        netns::spawn_entered(&self.namespaces[side.index()].handle, name, || Ok(()), move |()| f())
    }

    /// Runs async code inside one end's namespace: a new thread enters the
    /// namespace, builds a current-thread tokio runtime (all drivers on) and blocks
    /// on `f()`. The future need not be `Send`; tasks it spawns and
    /// `spawn_blocking` threads stay in the namespace. Join the returned thread
    /// before dropping the lab.
    pub fn spawn_async_in<F, Fut, T>(&self, side: Side, f: F) -> Result<NsThread<T>, LabError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let name = format!("netlab-rt-{}", self.namespace(side));
        let setup = || tokio::runtime::Builder::new_current_thread().enable_all().build();
        netns::spawn_entered(&self.namespaces[side.index()].handle, name, setup, move |rt| rt.block_on(f()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for relay in &mut self.relays {
            relay.stop();
        }
        self.relays.clear();
        for ns in self.namespaces.drain(..) {
            drop(ns.tun);
            if let Err(e) = netns::remove(&ns.name) {
                tracing::warn!(namespace = %ns.name, error = %e, "lab clean-up failed");
            }
        }
    }
}

fn check_prefix(prefix: &str) -> Result<(), LabError> {
    let ok = (1..=16).contains(&prefix.len())
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(LabError::BadPrefix(prefix.into()))
    }
}

/// Opens the TUN device from a thread inside the namespace, IPv6 off first so the
/// link carries only the caller's traffic (no router solicitations or MLD).
fn open_tun_in(handle: &OwnedFd, ns: &str) -> Result<OwnedFd, LabError> {
    let setup = || {
        disable_ipv6()?;
        tun::open(DEVICE)
    };
    let thread = netns::spawn_entered(handle, format!("netlab-tun-{ns}"), setup, |fd| fd)?;
    thread.join().map_err(|_| LabError::Io { context: "open TUN".into(), source: io::Error::other("panicked") })
}

/// IPv6 off for devices made from now on in the calling thread's namespace.
fn disable_ipv6() -> io::Result<()> {
    match std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1") {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Loopback up, address on the TUN device, TUN device up.
fn configure(ns: &str, addr: Ipv4Addr) -> Result<(), LabError> {
    let cidr = format!("{addr}/{PREFIX_LEN}");
    netns::ip(&["-n", ns, "link", "set", "lo", "up"])?;
    netns::ip(&["-n", ns, "addr", "add", &cidr, "dev", DEVICE])?;
    netns::ip(&["-n", ns, "link", "set", DEVICE, "up"])?;
    Ok(())
}
