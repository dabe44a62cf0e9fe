//! Which transports carry the agent↔server connection: QUIC over UDP, and
//! the same QUIC datagrams framed over TCP where UDP is blocked (see
//! [`konnq_protocol::stream_datagrams`]).

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::settings::{DefaultValue, Shown};

/// The agent's `transport`: how it reaches the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentTransport {
    /// QUIC over UDP; over TCP when no QUIC handshake completes within
    /// `transport-fallback-after`, probing UDP again in the background.
    Auto,
    /// QUIC over UDP only.
    Quic,
    /// QUIC datagrams over TCP only.
    Tcp,
}

impl AgentTransport {
    pub fn name(self) -> &'static str {
        match self {
            AgentTransport::Auto => "auto",
            AgentTransport::Quic => "quic",
            AgentTransport::Tcp => "tcp",
        }
    }
}

impl FromStr for AgentTransport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AgentTransport::Auto),
            "quic" => Ok(AgentTransport::Quic),
            "tcp" => Ok(AgentTransport::Tcp),
            _ => Err(format!("invalid transport {s:?} (expected auto, quic or tcp)")),
        }
    }
}

impl DefaultValue for AgentTransport {
    fn shown(&self) -> Shown {
        Shown { text: self.name().to_owned(), quoted: true }
    }
}

/// The server's `agent-transports`: which ones it accepts on `agent-port`
/// (UDP and TCP, same number). At least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentTransports {
    pub quic: bool,
    pub tcp: bool,
}

impl Default for AgentTransports {
    fn default() -> Self {
        AgentTransports { quic: true, tcp: true }
    }
}

impl fmt::Display for AgentTransports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> =
            [(self.quic, "quic"), (self.tcp, "tcp")].into_iter().filter_map(|(on, name)| on.then_some(name)).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for AgentTransports {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut t = AgentTransports { quic: false, tcp: false };
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "quic" => t.quic = true,
                "tcp" => t.tcp = true,
                other => return Err(format!("unknown agent transport {other:?} (expected quic, tcp or both)")),
            }
        }
        if !t.quic && !t.tcp {
            return Err("no agent transport: give quic, tcp or quic,tcp".into());
        }
        Ok(t)
    }
}

impl<'de> Deserialize<'de> for AgentTransports {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl DefaultValue for AgentTransports {
    fn shown(&self) -> Shown {
        Shown { text: self.to_string(), quoted: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_parse_and_show() {
        assert_eq!("auto".parse(), Ok(AgentTransport::Auto));
        assert_eq!("tcp".parse(), Ok(AgentTransport::Tcp));
        assert!("udp".parse::<AgentTransport>().unwrap_err().contains("auto, quic or tcp"));
        let both: AgentTransports = "quic, tcp".parse().unwrap();
        assert_eq!(both, AgentTransports::default());
        assert_eq!(both.to_string(), "quic,tcp");
        assert_eq!("tcp".parse(), Ok(AgentTransports { quic: false, tcp: true }));
        assert!("".parse::<AgentTransports>().unwrap_err().contains("no agent transport"));
        assert!("sctp".parse::<AgentTransports>().unwrap_err().contains("\"sctp\""));
    }
}
