//! Upstream's `--agent-identifiers` syntax: a URL query string such as
//! `host=node1&ipv4=10.0.0.5&cidr=10.0.0.0/24&default-route=true`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::parse_go_bool;

/// What an agent can reach, advertised to the server for routing (upstream's
/// `--agent-identifiers`, e.g. `host=node1&ipv4=10.0.0.5&cidr=10.0.0.0/24`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentIdentifiers {
    pub host: Vec<String>,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    /// CIDR blocks as written (`10.0.0.0/8`, `fd00::/64`); syntax checked.
    pub cidr: Vec<String>,
    pub default_route: bool,
}

impl AgentIdentifiers {
    /// Parses upstream's URL-query syntax; every bad pair is reported. Keys:
    /// `host`, `ipv4`, `ipv6`, `cidr`, `default-route`; values may be
    /// percent-encoded as Go's `url.ParseQuery` allows.
    pub fn parse(s: &str) -> Result<AgentIdentifiers, Vec<String>> {
        let mut ids = AgentIdentifiers::default();
        let mut errors = Vec::new();
        for pair in s.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = match percent_decode(value) {
                Ok(value) => value,
                Err(e) => {
                    errors.push(format!("{key}: {e}"));
                    continue;
                }
            };
            if let Err(e) = ids.add(key, &value) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(ids)
        } else {
            Err(errors)
        }
    }

    fn add(&mut self, key: &str, value: &str) -> Result<(), String> {
        let bad = |what: &str| format!("{key}: invalid {what} {value:?}");
        match key {
            "host" if value.is_empty() => return Err(format!("{key}: empty value")),
            "host" => self.host.push(value.to_owned()),
            "ipv4" => self.ipv4.push(value.parse().map_err(|_| bad("IPv4 address"))?),
            "ipv6" => self.ipv6.push(value.parse().map_err(|_| bad("IPv6 address"))?),
            "cidr" => {
                check_cidr(value).map_err(|_| bad("CIDR"))?;
                self.cidr.push(value.to_owned());
            }
            "default-route" => self.default_route |= parse_go_bool(value).map_err(|_| bad("boolean"))?,
            _ => {
                return Err(format!(
                    "unknown identifier key {key:?} (expected host, ipv4, ipv6, cidr or default-route)"
                ))
            }
        }
        Ok(())
    }
}

impl FromStr for AgentIdentifiers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        AgentIdentifiers::parse(s).map_err(|errors| errors.join("; "))
    }
}

/// `addr/prefix` with a prefix no longer than the address (Go's `net.ParseCIDR`).
fn check_cidr(s: &str) -> Result<(), ()> {
    let (addr, prefix) = s.split_once('/').ok_or(())?;
    let addr: IpAddr = addr.parse().map_err(|_| ())?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    let prefix: u8 = prefix.parse().map_err(|_| ())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(());
    }
    Ok(())
}

/// Decodes `%XX` escapes and `+` (space), as `url.ParseQuery` does.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(byte.ok_or_else(|| format!("invalid percent escape in {s:?}"))?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_parse_upstream_syntax() {
        let ids = AgentIdentifiers::parse(
            "host=a&host=b.example&ipv4=1.2.3.4&ipv6=::1&ipv6=fd00%3A%3A2&cidr=10.0.0.0/8&cidr=fd00::/64&default-route=true",
        )
        .expect("valid");
        assert_eq!(ids.host, ["a", "b.example"]);
        assert_eq!(ids.ipv4, [Ipv4Addr::new(1, 2, 3, 4)]);
        assert_eq!(ids.ipv6, [Ipv6Addr::LOCALHOST, "fd00::2".parse::<Ipv6Addr>().unwrap()]);
        assert_eq!(ids.cidr, ["10.0.0.0/8", "fd00::/64"]);
        assert!(ids.default_route);
        assert_eq!(AgentIdentifiers::parse(""), Ok(AgentIdentifiers::default()));
        assert!(!AgentIdentifiers::parse("default-route=false").unwrap().default_route);
    }

    #[test]
    fn identifiers_report_each_bad_pair() {
        let errors = AgentIdentifiers::parse(
            "zone=a&ipv4=::1&ipv6=1.2.3.4&cidr=10.0.0.0&cidr=10.0.0.0/33&cidr=::/129&default-route=yes&host=&ipv4=%zz",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 9, "{errors:?}");
        assert!(errors[0].contains("unknown identifier key \"zone\""), "{}", errors[0]);
        assert!(errors[1].starts_with("ipv4: invalid IPv4 address"), "{}", errors[1]);
        assert!(errors[3].starts_with("cidr: invalid CIDR"), "{}", errors[3]);
        assert!(errors[7].starts_with("host: empty value"), "{}", errors[7]);
        assert!(errors[8].contains("percent escape"), "{}", errors[8]);
        assert!("host=a&colour=b".parse::<AgentIdentifiers>().unwrap_err().contains("colour"));
    }
}
