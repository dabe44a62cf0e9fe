//! Server leases: the server's `enable-lease-controller` and the agent's
//! `count-server-leases`, with `lease-namespace`, `lease-label`, the agent's
//! `server-count-source` and the kubeconfig both use (upstream v0.36.0's
//! flags, names and defaults).
//!
//! Upstream's rules: the label text is checked only when leases are on
//! (comma-separated `key=value` pairs, its words in the error); the
//! server count source is `default`, `max`, or empty (= `default`).
//! konnq also refuses an empty namespace when leases are on.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use super::settings::{DefaultValue, Shown};
use super::{non_empty_path, Problems};
use crate::leases::{parse_labels, Labels};

/// The server's lease controller: `Some` in
/// [`ServerConfig::lease_controller`](super::ServerConfig::lease_controller)
/// when `enable-lease-controller` is true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseControllerConfig {
    pub namespace: String,
    pub labels: Labels,
    /// The server's kube-apiserver credentials; `None` = in-cluster config.
    pub kubeconfig: Option<PathBuf>,
}

/// The agent's lease counting: `Some` in
/// [`AgentConfig::lease_counting`](super::AgentConfig::lease_counting)
/// when `count-server-leases` is true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseCountConfig {
    pub namespace: String,
    /// Leases with all these labels are counted.
    pub labels: Labels,
    /// The agent's kube-apiserver credentials; `None` = in-cluster config.
    pub kubeconfig: Option<PathBuf>,
}

/// How the agent combines the server count the servers announce with the
/// count of valid leases (upstream's `--server-count-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerCountSource {
    /// The lease count when counting leases, else the servers' count.
    #[default]
    Default,
    /// The larger of the two.
    Max,
}

impl ServerCountSource {
    pub fn name(self) -> &'static str {
        match self {
            ServerCountSource::Default => "default",
            ServerCountSource::Max => "max",
        }
    }
}

impl FromStr for ServerCountSource {
    type Err = String;

    /// Upstream's values and words; empty is `default`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "default" => Ok(ServerCountSource::Default),
            "max" => Ok(ServerCountSource::Max),
            _ => Err(format!("must be one of '', 'default', 'max', got {s}")),
        }
    }
}

impl<'de> Deserialize<'de> for ServerCountSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl DefaultValue for ServerCountSource {
    fn shown(&self) -> Shown {
        Shown { text: self.name().to_owned(), quoted: true }
    }
}

/// The lease keys as given (flags over file), defaults filled in.
#[derive(Debug)]
pub(crate) struct RawLeases {
    pub enabled: bool,
    pub namespace: String,
    pub label: String,
    pub kubeconfig: Option<PathBuf>,
}

impl RawLeases {
    /// The checked settings when leases are on; problems name their keys.
    fn check(self, p: &mut Problems) -> Option<(String, Labels, Option<PathBuf>)> {
        if !self.enabled {
            return None;
        }
        if self.namespace.is_empty() {
            p.push("lease-namespace", "must not be empty");
        }
        let labels = parse_labels(&self.label).unwrap_or_else(|e| {
            p.push("lease-label", e);
            Labels::new()
        });
        Some((self.namespace, labels, non_empty_path(self.kubeconfig)))
    }

    pub(crate) fn controller(self, p: &mut Problems) -> Option<LeaseControllerConfig> {
        let (namespace, labels, kubeconfig) = self.check(p)?;
        Some(LeaseControllerConfig { namespace, labels, kubeconfig })
    }

    pub(crate) fn counting(self, p: &mut Problems) -> Option<LeaseCountConfig> {
        let (namespace, labels, kubeconfig) = self.check(p)?;
        Some(LeaseCountConfig { namespace, labels, kubeconfig })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{AgentConfig, ServerConfig};

    use super::*;

    const SERVER: &str = "uds-name = \"/run/k.sock\"\ncluster-cert = \"/c.crt\"\ncluster-key = \"/c.key\"\n";
    const AGENT: &str = "ca-cert = \"/ca.crt\"\n";

    fn server(lines: &str) -> Result<ServerConfig, crate::config::ConfigError> {
        ServerConfig::from_toml_str(&format!("{SERVER}{lines}"))
    }

    fn agent(lines: &str) -> Result<AgentConfig, crate::config::ConfigError> {
        AgentConfig::from_toml_str(&format!("{AGENT}{lines}"))
    }

    #[test]
    fn off_by_default_and_then_the_other_keys_are_not_checked() {
        assert_eq!(server("").unwrap().lease_controller, None);
        assert_eq!(server("lease-label = \"nonsense\"").unwrap().lease_controller, None, "as upstream");
        let a = agent("lease-namespace = \"\"").unwrap();
        assert_eq!((a.lease_counting, a.server_count_source), (None, ServerCountSource::Default));
    }

    #[test]
    fn upstream_defaults_when_on() {
        let c = server("enable-lease-controller = true\nkubeconfig = \"/k.conf\"").unwrap();
        let want = LeaseControllerConfig {
            namespace: "kube-system".into(),
            labels: Labels::from([("k8s-app".into(), "konnectivity-server".into())]),
            kubeconfig: Some("/k.conf".into()),
        };
        assert_eq!(c.lease_controller, Some(want));
        assert_eq!(c.token_auth, None, "the kubeconfig alone turns nothing else on");
        let a = agent("count-server-leases = true\nlease-namespace = \"konnectivity\"").unwrap();
        let counting = a.lease_counting.expect("on");
        assert_eq!(counting.namespace, "konnectivity");
        assert_eq!(counting.labels.len(), 1);
        assert_eq!(counting.kubeconfig, None, "in-cluster");
        let a = agent("count-server-leases = true\nkubeconfig = \"/a.conf\"").unwrap();
        assert_eq!(a.lease_counting.unwrap().kubeconfig.as_deref(), Some(Path::new("/a.conf")));
    }

    #[test]
    fn bad_labels_and_namespace_name_their_keys_in_upstream_words() {
        let err = server("enable-lease-controller = true\nlease-label = \"a=1,b\"").unwrap_err().to_string();
        assert!(err.contains("lease-label: invalid label format: b"), "{err}");
        let err =
            agent("count-server-leases = true\nlease-label = \"\"\nlease-namespace = \"\"").unwrap_err().to_string();
        assert!(err.contains("lease-label: empty string provided"), "{err}");
        assert!(err.contains("lease-namespace: must not be empty"), "{err}");
    }

    #[test]
    fn server_count_source_values() {
        assert_eq!("".parse(), Ok(ServerCountSource::Default), "upstream's empty value");
        assert_eq!("default".parse(), Ok(ServerCountSource::Default));
        assert_eq!("max".parse(), Ok(ServerCountSource::Max));
        assert_eq!("min".parse::<ServerCountSource>(), Err("must be one of '', 'default', 'max', got min".into()));
        assert_eq!(agent("server-count-source = \"max\"").unwrap().server_count_source, ServerCountSource::Max);
        let err = agent("server-count-source = \"sum\"").unwrap_err().to_string();
        assert!(err.contains("must be one of '', 'default', 'max', got sum"), "{err}");
    }
}
