//! Agent authentication by ServiceAccount token (upstream's
//! `--agent-namespace`, `--agent-service-account`, `--authentication-audience`,
//! `--kubeconfig*` flags) and konnq's `token-review-cache-ttl`.
//!
//! Upstream's rule: token authentication is on as soon as any of
//! `agent-namespace`, `agent-service-account` or `authentication-audience` is
//! set, and then all three are required. The rate keys (`kubeconfig-qps`,
//! `kubeconfig-burst`) only matter while it is on; `kubeconfig` is also the
//! lease controller's (`leases.rs`).

use std::path::PathBuf;
use std::time::Duration;

use super::{non_empty_path, non_empty_string, Problems};

/// client-go's default request rate (`rest.DefaultQPS`), used when
/// `kubeconfig-qps` is 0 (its declared default).
pub const DEFAULT_REVIEW_QPS: f64 = 5.0;
/// client-go's default burst (`rest.DefaultBurst`), used when
/// `kubeconfig-burst` is 0 (its declared default).
pub const DEFAULT_REVIEW_BURST: u32 = 10;

/// Validated token authentication settings; `Some` in
/// [`ServerConfig::token_auth`](super::ServerConfig::token_auth) means every
/// agent must send a ServiceAccount token that kube-apiserver accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenAuthConfig {
    /// The token's account must be `system:serviceaccount:<agent_namespace>:<agent_service_account>`.
    pub agent_namespace: String,
    pub agent_service_account: String,
    /// The audience the token must have been issued for (TokenReview `spec.audiences`).
    pub audience: String,
    /// kubeconfig of the server's own kube-apiserver credentials; `None` = in-cluster config.
    pub kubeconfig: Option<PathBuf>,
    /// Rate of TokenReviews; `None` = not limited (negative `kubeconfig-qps`, as in client-go).
    pub review_rate: Option<ReviewRate>,
    /// How long an accepted token is trusted without a new review (never past
    /// the token's own expiry); zero = every connection is reviewed.
    pub cache_ttl: Duration,
}

/// Token bucket of TokenReview requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReviewRate {
    /// Sustained reviews per second (> 0).
    pub qps: f64,
    /// Reviews that may be sent at once after a quiet period (>= 1).
    pub burst: u32,
}

/// The keys as given (flags over file), those with a declared default
/// already filled in with it.
#[derive(Debug)]
pub(crate) struct RawTokenAuth {
    pub agent_namespace: Option<String>,
    pub agent_service_account: Option<String>,
    pub authentication_audience: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub kubeconfig_qps: f64,
    pub kubeconfig_burst: u32,
    pub token_review_cache_ttl: Duration,
}

impl RawTokenAuth {
    /// `None` when token authentication is off; problems name their keys.
    pub(crate) fn check(self, p: &mut Problems) -> Option<TokenAuthConfig> {
        let namespace = non_empty_string(self.agent_namespace);
        let account = non_empty_string(self.agent_service_account);
        let audience = non_empty_string(self.authentication_audience);
        let rate = review_rate(p, self.kubeconfig_qps, self.kubeconfig_burst);
        if namespace.is_none() && account.is_none() && audience.is_none() {
            return None;
        }
        let mut required = |key: &str, value: Option<String>| {
            value.unwrap_or_else(|| {
                p.push(key, "required when agent token authentication is on (agent-namespace, agent-service-account or authentication-audience set)");
                String::new()
            })
        };
        Some(TokenAuthConfig {
            agent_namespace: required("agent-namespace", namespace),
            agent_service_account: required("agent-service-account", account),
            audience: required("authentication-audience", audience),
            kubeconfig: non_empty_path(self.kubeconfig),
            review_rate: rate,
            cache_ttl: self.token_review_cache_ttl,
        })
    }
}

/// client-go's rules: qps 0 → 5, burst 0 → 10, negative qps → no limit.
fn review_rate(p: &mut Problems, qps: f64, burst: u32) -> Option<ReviewRate> {
    if !qps.is_finite() {
        p.push("kubeconfig-qps", format!("must be a finite number, got {qps}"));
        return None;
    }
    if qps < 0.0 {
        return None;
    }
    let qps = if qps == 0.0 { DEFAULT_REVIEW_QPS } else { qps };
    let burst = match burst {
        0 => DEFAULT_REVIEW_BURST,
        n => n,
    };
    Some(ReviewRate { qps, burst })
}

#[cfg(test)]
mod tests {
    use crate::config::{RawServerConfig, ServerConfig};

    use super::*;

    const MINIMAL: &str = "uds-name = \"/run/k.sock\"\ncluster-cert = \"/c.crt\"\ncluster-key = \"/c.key\"\n";

    fn with(lines: &str) -> Result<ServerConfig, crate::config::ConfigError> {
        ServerConfig::from_toml_str(&format!("{MINIMAL}{lines}"))
    }

    #[test]
    fn off_unless_an_identity_key_is_set() {
        let c = with("kubeconfig = \"/k.conf\"\nkubeconfig-qps = 50\nkube-api-content-type = \"application/json\"")
            .expect("valid");
        assert_eq!(c.token_auth, None, "kube client keys alone do not turn authentication on");
        assert_eq!(with("agent-namespace = \"\"").expect("valid").token_auth, None, "empty = unset");
    }

    #[test]
    fn all_three_identity_keys_are_required_once_one_is_set() {
        let err = with("agent-namespace = \"kube-system\"").unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["agent-service-account", "authentication-audience"]);
        let err = with("authentication-audience = \"system:konnectivity-server\"").unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["agent-namespace", "agent-service-account"]);
    }

    #[test]
    fn defaults_follow_client_go() {
        let c = with(
            "agent-namespace = \"kube-system\"\nagent-service-account = \"konnectivity-agent\"\n\
             authentication-audience = \"system:konnectivity-server\"",
        )
        .expect("valid");
        let auth = c.token_auth.expect("on");
        assert_eq!(auth.agent_namespace, "kube-system");
        assert_eq!(auth.agent_service_account, "konnectivity-agent");
        assert_eq!(auth.audience, "system:konnectivity-server");
        assert_eq!(auth.kubeconfig, None, "in-cluster config");
        assert_eq!(auth.review_rate, Some(ReviewRate { qps: 5.0, burst: 10 }));
        assert_eq!(auth.cache_ttl, Duration::from_secs(120));
    }

    #[test]
    fn rate_and_ttl_values() {
        let on = "agent-namespace = \"ns\"\nagent-service-account = \"sa\"\nauthentication-audience = \"aud\"\n";
        let auth = |lines: &str| with(&format!("{on}{lines}")).map(|c| c.token_auth.expect("on"));
        let a = auth("kubeconfig-qps = 2.5\nkubeconfig-burst = 3\ntoken-review-cache-ttl = \"0s\"").unwrap();
        assert_eq!(a.review_rate, Some(ReviewRate { qps: 2.5, burst: 3 }));
        assert_eq!(a.cache_ttl, Duration::ZERO);
        assert_eq!(auth("kubeconfig-qps = 7").unwrap().review_rate, Some(ReviewRate { qps: 7.0, burst: 10 }));
        assert_eq!(auth("kubeconfig-qps = -1").unwrap().review_rate, None, "negative = no limit");
        let err = auth("kubeconfig-qps = nan").unwrap_err();
        assert!(err.to_string().contains("kubeconfig-qps: must be a finite number"), "{err}");
        assert!(auth("kubeconfig-burst = -1").is_err(), "burst is not negative");
    }

    #[test]
    fn overlay_carries_the_new_keys() {
        let file = RawServerConfig::from_toml_str("agent-namespace = \"a\"\nkubeconfig = \"/file.conf\"").unwrap();
        let flags = RawServerConfig { agent_namespace: Some("b".into()), ..Default::default() };
        let merged = file.overlay(flags);
        assert_eq!(merged.agent_namespace.as_deref(), Some("b"));
        assert_eq!(merged.kubeconfig, Some(PathBuf::from("/file.conf")));
    }
}
