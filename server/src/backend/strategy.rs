//! Which agents a dial may go to, under upstream's proxy strategies (no I/O:
//! the backend hands in the agents that take dials and picks among the
//! result).
//!
//! For a dial to `host:port` the strategies are tried in their configured
//! order; the first one with at least one agent decides, and with none the
//! dial fails ("No agent available"):
//! - `default`: every agent;
//! - `defaultRoute`: agents that sent `default-route=true`;
//! - `destHost`: agents whose identifiers name the host. An exact match
//!   (`host=` equal to it, ignoring ASCII case; `ipv4=` / `ipv6=` equal to it
//!   as an address) wins. Without one, konnq adds `cidr=`: agents with a block
//!   that holds the host's address, the longest prefix winning, as in a
//!   routing table.
//!
//! Upstream looks the host up as written; konnq compares addresses as
//! addresses (`::1` is `0:0::1`) and names regardless of case, as DNS does.

use std::net::IpAddr;

use konnq_shared::config::{parse_go_bool, ProxyStrategy};

/// What an agent says it can reach, from the identifiers of its Hello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// `host=` names, lowercased.
    names: Vec<String>,
    /// `ipv4=` and `ipv6=` addresses.
    addrs: Vec<IpAddr>,
    cidrs: Vec<Cidr>,
    /// `default-route=true`.
    default_route: bool,
}

impl Reach {
    /// Reads identifier pairs (`host`, `ipv4`, `ipv6`, `cidr`,
    /// `default-route`); also returns the pairs it could not use, for the
    /// log (a konnq agent checks its identifiers before it sends them).
    pub fn from_identifiers(pairs: &[(String, String)]) -> (Reach, Vec<String>) {
        let mut reach = Reach::default();
        let mut unused = Vec::new();
        for (key, value) in pairs {
            let used = match key.as_str() {
                "host" if !value.is_empty() => {
                    reach.names.push(value.to_ascii_lowercase());
                    true
                }
                "ipv4" => value.parse::<std::net::Ipv4Addr>().map(|a| reach.addrs.push(a.into())).is_ok(),
                "ipv6" => value.parse::<std::net::Ipv6Addr>().map(|a| reach.addrs.push(a.into())).is_ok(),
                "cidr" => Cidr::parse(value).map(|c| reach.cidrs.push(c)).is_some(),
                "default-route" => parse_go_bool(value).map(|on| reach.default_route |= on).is_ok(),
                _ => false,
            };
            if !used {
                unused.push(format!("{key}={value}"));
            }
        }
        (reach, unused)
    }

    /// Whether `strategy` can send any dial to this agent.
    pub fn serves(&self, strategy: ProxyStrategy) -> bool {
        match strategy {
            ProxyStrategy::Default => true,
            ProxyStrategy::DefaultRoute => self.default_route,
            ProxyStrategy::DestHost => !(self.names.is_empty() && self.addrs.is_empty() && self.cidrs.is_empty()),
        }
    }

    /// How this agent matches `dest` under `destHost`, if at all.
    fn matches(&self, dest: &Destination) -> Option<Match> {
        let exact = self.names.contains(&dest.host) || dest.ip.is_some_and(|ip| self.addrs.contains(&ip));
        if exact {
            return Some(Match::Exact);
        }
        let ip = dest.ip?;
        self.cidrs.iter().filter(|c| c.contains(ip)).map(|c| Match::Cidr(c.prefix)).max()
    }
}

/// How well an agent matches a destination host; greater is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Match {
    /// A `cidr=` block with this prefix length holds the address.
    Cidr(u8),
    /// `host=`, `ipv4=` or `ipv6=` is the host.
    Exact,
}

/// An address block, `10.0.0.0/8` or `fd00::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = s.split_once('/')?;
        let network: IpAddr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { network, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(net.to_bits().into(), ip.to_bits().into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => same_prefix(net.to_bits(), ip.to_bits(), 128, self.prefix),
            _ => false,
        }
    }
}

/// Whether the first `prefix` of the `width` low bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, width: u8, prefix: u8) -> bool {
    let shift = width - prefix;
    u32::from(shift) >= u128::BITS || (a >> shift) == (b >> shift)
}

/// The host a dial is routed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The dial address without its port, brackets and ASCII case.
    host: String,
    /// `host` as an address, if it is one.
    ip: Option<IpAddr>,
}

impl Destination {
    /// The host of `address`: `name:port`, `1.2.3.4:port`, `[v6]:port`, or
    /// a bare host or IPv6 address.
    pub fn of(address: &str) -> Destination {
        let host = match address.strip_prefix('[') {
            Some(rest) => rest.split_once(']').map_or(rest, |(host, _)| host),
            None if address.matches(':').count() == 1 => address.split_once(':').map_or(address, |(host, _)| host),
            None => address,
        };
        let host = host.to_ascii_lowercase();
        let ip = host.parse().ok();
        Destination { host, ip }
    }
}

/// The agents a dial to `dest` may go to, and the strategy that chose them:
/// the first of `strategies` that finds any. `None`: no strategy does.
pub fn route<'a, T>(
    strategies: &[ProxyStrategy],
    dest: &Destination,
    agents: &'a [T],
    reach: impl Fn(&T) -> &Reach,
) -> Option<(ProxyStrategy, Vec<&'a T>)> {
    strategies.iter().find_map(|&strategy| {
        let found = candidates(strategy, dest, agents, &reach);
        (!found.is_empty()).then_some((strategy, found))
    })
}

/// The agents `strategy` finds for `dest`.
fn candidates<'a, T>(
    strategy: ProxyStrategy,
    dest: &Destination,
    agents: &'a [T],
    reach: impl Fn(&T) -> &Reach,
) -> Vec<&'a T> {
    match strategy {
        ProxyStrategy::Default => agents.iter().collect(),
        ProxyStrategy::DefaultRoute => agents.iter().filter(|a| reach(a).default_route).collect(),
        ProxyStrategy::DestHost => {
            let matched: Vec<(Match, &T)> = agents.iter().filter_map(|a| Some((reach(a).matches(dest)?, a))).collect();
            let Some(best) = matched.iter().map(|(m, _)| *m).max() else { return Vec::new() };
            matched.into_iter().filter(|(m, _)| *m == best).map(|(_, a)| a).collect()
        }
    }
}

/// One of `pool`, among those `free` says have a free stream slot if any
/// do; `index(n)` picks a position below `n` (random in the backend).
pub fn choose<T>(mut pool: Vec<T>, free: impl Fn(&T) -> bool, index: impl FnOnce(usize) -> usize) -> Option<T> {
    if pool.iter().any(&free) {
        pool.retain(free);
    }
    if pool.is_empty() {
        return None;
    }
    let at = index(pool.len()).min(pool.len() - 1);
    Some(pool.swap_remove(at))
}

#[cfg(test)]
mod tests;
