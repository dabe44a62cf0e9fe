//! Agent authentication by ServiceAccount token (upstream's
//! `--agent-namespace`, `--agent-service-account`, `--authentication-audience`).
//!
//! ```text
//! Hello.token ──▶ Authenticator::check ──▶ CachingReviewer ──▶ TokenReviewer (KubeReviewer: TokenReview API)
//!                 (account rule, metrics)   (cache, coalescing,
//!                                            rate limit, deadline)
//! ```
//!
//! - [`TokenReviewer`]: one question to kube-apiserver, "who is this token
//!   for, given this audience?". [`KubeReviewer`] asks with a TokenReview
//!   (`authentication.k8s.io/v1`); tests use fakes.
//! - [`CachingReviewer`] keeps reconnect storms (upstream issue #237) away
//!   from kube-apiserver: accepted tokens are remembered for
//!   `token-review-cache-ttl` (never past the token's `exp`), concurrent
//!   reviews of one token share one request, and requests wait in a FIFO
//!   token bucket (`kubeconfig-qps` / `kubeconfig-burst`) until the agent's
//!   review deadline (10 min after the Hello) instead of failing.
//! - [`Authenticator`] admits a token only if kube-apiserver authenticated it
//!   *and* its user is `system:serviceaccount:<agent-namespace>:<agent-service-account>`.

mod bucket;
mod cache;
mod jwt;
mod kube;
mod live;
mod review;

use std::time::Duration;

use futures::future::BoxFuture;
use konnq_shared::config::{ServerConfig, TokenAuthConfig};
use konnq_shared::quic::codes;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::metrics::Metrics;

pub use self::kube::KubeReviewer;
pub use konnq_shared::kube::KubeSetupError;
pub use live::MIN_RECHECK;
pub use review::{CachingReviewer, Priority};

/// How long an agent's token may wait for its TokenReview: in a reconnect
/// storm reviews queue under --kubeconfig-qps/--kubeconfig-burst (2,000
/// agents at the default 5/s take 400 s), and an agent that waits is
/// cheaper than one refused and retrying with backoff. The connection
/// stays alive meanwhile (the agent's keep-alives).
pub const TOKEN_REVIEW_WAIT: Duration = Duration::from_secs(600);

/// What kube-apiserver said about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// `status.authenticated` for the requested audience; the token's user.
    Authenticated { username: String },
    /// Not authenticated (expired, revoked, malformed, another audience...);
    /// kube-apiserver's `status.error` or a description.
    Rejected(String),
}

/// Why no answer about a token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The request failed: kube-apiserver unreachable, TLS, HTTP error
    /// status (e.g. 403 when the server may not create TokenReviews).
    #[error("TokenReview failed: {0}")]
    Failed(String),
    /// The rate limit queued the review past the agent's review deadline (10 min).
    #[error("TokenReview rate limit: no request slot within the 10 min review wait")]
    Throttled,
    /// kube-apiserver did not answer before the agent's review deadline (10 min).
    #[error("kube-apiserver did not answer the TokenReview within the 10 min review wait")]
    Timeout,
}

/// Asks kube-apiserver about one token. Object safe, so the backend holds
/// any implementation behind `Box<dyn TokenReviewer>`.
pub trait TokenReviewer: Send + Sync + 'static {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ReviewOutcome, ReviewError>>;
}

/// Why an agent was refused. The text is the QUIC close reason the agent logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no ServiceAccount token sent (the agent needs --service-account-token-path)")]
    NoToken,
    /// Not authenticated by kube-apiserver, including a token for another audience.
    #[error("invalid ServiceAccount token: {0}")]
    InvalidToken(String),
    /// Authenticated, but as someone else.
    #[error("token of {got:?}, expected {expected:?}")]
    WrongAccount { got: String, expected: String },
    /// The token could not be checked (the agent may retry).
    #[error("cannot check the token: {0}")]
    Unreachable(#[from] ReviewError),
}

impl AuthError {
    /// The `reason` label of `konnq_server_agent_auth_failures_total`.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::NoToken => "no_token",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::WrongAccount { .. } => "wrong_account",
            AuthError::Unreachable(_) => "unreachable",
        }
    }

    /// QUIC application close code for the agent's connection.
    pub fn close_code(&self) -> u32 {
        match self {
            AuthError::Unreachable(_) => codes::AUTH_UNAVAILABLE,
            _ => codes::UNAUTHENTICATED,
        }
    }
}

/// The authenticator `cfg` asks for (`None`: tokens are not checked), its
/// kube client built from `kubeconfig` or the in-cluster config. Says at
/// start-up how agents are authenticated, and warns when they are not.
pub async fn from_config(cfg: &ServerConfig, metrics: &Metrics) -> Result<Option<Authenticator>, KubeSetupError> {
    let mtls = cfg.cluster_tls.ca.is_some();
    let Some(auth) = &cfg.token_auth else {
        if !mtls {
            warn!(
                "agents are not authenticated: any client that trusts the server can register as an agent \
                 (set cluster-ca-cert for client certificates, agent-namespace for ServiceAccount tokens)"
            );
        }
        return Ok(None);
    };
    let reviewer = KubeReviewer::new(auth.kubeconfig.as_deref(), &auth.audience).await?;
    info!(
        namespace = %auth.agent_namespace,
        service_account = %auth.agent_service_account,
        audience = %auth.audience,
        kubeconfig = %auth.kubeconfig.as_deref().map_or("(in-cluster)".into(), |p| p.display().to_string()),
        client_certificates = mtls,
        "agents must present a ServiceAccount token"
    );
    Ok(Some(Authenticator::new(auth, Box::new(reviewer), metrics.clone())))
}

/// Admits agents by token: the review (cached, coalesced, rate limited)
/// plus the account rule, counting every refusal.
pub struct Authenticator {
    reviews: CachingReviewer,
    expected: String,
    metrics: Metrics,
}

impl Authenticator {
    pub fn new(cfg: &TokenAuthConfig, reviewer: Box<dyn TokenReviewer>, metrics: Metrics) -> Self {
        Authenticator {
            reviews: CachingReviewer::new(reviewer, cfg.cache_ttl, cfg.review_rate, metrics.clone()),
            expected: format!("system:serviceaccount:{}:{}", cfg.agent_namespace, cfg.agent_service_account),
            metrics,
        }
    }

    /// The username of an admitted token; waits at most until `deadline`.
    pub async fn check(&self, token: &str, deadline: Instant) -> Result<String, AuthError> {
        self.counted(token, deadline, Priority::Admission).await
    }

    /// [`Authenticator::check`] for a connected agent's token: background
    /// work that yields to agents waiting to be admitted.
    pub async fn recheck(&self, token: &str, deadline: Instant) -> Result<String, AuthError> {
        self.counted(token, deadline, Priority::Background).await
    }

    async fn counted(&self, token: &str, deadline: Instant, priority: Priority) -> Result<String, AuthError> {
        let result = self.verdict(token, deadline, priority).await;
        if let Err(e) = &result {
            self.metrics.agent_auth_failed(e.label());
        }
        result
    }

    async fn verdict(&self, token: &str, deadline: Instant, priority: Priority) -> Result<String, AuthError> {
        if token.is_empty() {
            return Err(AuthError::NoToken);
        }
        match self.reviews.review(token, deadline, priority).await? {
            ReviewOutcome::Rejected(reason) => Err(AuthError::InvalidToken(reason)),
            ReviewOutcome::Authenticated { username } if self.is_expected(&username) => Ok(username),
            ReviewOutcome::Authenticated { username } => {
                Err(AuthError::WrongAccount { got: username, expected: self.expected.clone() })
            }
        }
    }

    /// Upstream's rule: exactly four `:`-separated parts,
    /// `system:serviceaccount:<namespace>:<name>`, matching the configured ones.
    fn is_expected(&self, username: &str) -> bool {
        let parts: Vec<&str> = username.split(':').collect();
        let expected: Vec<&str> = self.expected.split(':').collect();
        parts.len() == 4 && parts[..2] == ["system", "serviceaccount"] && parts == expected
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// Answers every token from a fixed table.
    struct Table(Mutex<Vec<(&'static str, Result<ReviewOutcome, ReviewError>)>>);

    impl TokenReviewer for Table {
        fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ReviewOutcome, ReviewError>> {
            let table = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let answer = table.iter().find(|(t, _)| *t == token).map(|(_, a)| a.clone());
            Box::pin(async move { answer.unwrap_or(Ok(ReviewOutcome::Rejected("unknown token".into()))) })
        }
    }

    fn authenticated(username: &str) -> Result<ReviewOutcome, ReviewError> {
        Ok(ReviewOutcome::Authenticated { username: username.to_owned() })
    }

    fn authenticator(metrics: &Metrics) -> Authenticator {
        let cfg = TokenAuthConfig {
            agent_namespace: "kube-system".into(),
            agent_service_account: "konnectivity-agent".into(),
            audience: "system:konnectivity-server".into(),
            kubeconfig: None,
            review_rate: None,
            cache_ttl: Duration::from_secs(60),
        };
        let table = Table(Mutex::new(vec![
            ("good", authenticated("system:serviceaccount:kube-system:konnectivity-agent")),
            ("other-sa", authenticated("system:serviceaccount:kube-system:default")),
            ("other-ns", authenticated("system:serviceaccount:default:konnectivity-agent")),
            ("five-parts", authenticated("system:serviceaccount:kube-system:konnectivity-agent:x")),
            ("not-sa", authenticated("system:node:kube-system:konnectivity-agent")),
            ("down", Err(ReviewError::Failed("connection refused".into()))),
        ]));
        Authenticator::new(&cfg, Box::new(table), metrics.clone())
    }

    #[tokio::test]
    async fn only_the_configured_service_account_is_admitted() {
        let metrics = Metrics::new();
        let auth = authenticator(&metrics);
        let deadline = Instant::now() + Duration::from_secs(10);
        let user = auth.check("good", deadline).await.expect("admitted");
        assert_eq!(user, "system:serviceaccount:kube-system:konnectivity-agent");
        for token in ["other-sa", "other-ns", "five-parts", "not-sa"] {
            match auth.check(token, deadline).await {
                Err(AuthError::WrongAccount { got, expected }) => {
                    assert_ne!(got, expected, "{token}");
                    assert_eq!(expected, "system:serviceaccount:kube-system:konnectivity-agent");
                }
                other => panic!("{token}: {other:?}"),
            }
        }
        assert_eq!(metrics.agent_auth_failures("wrong_account"), 4);
    }

    #[tokio::test]
    async fn each_refusal_has_its_label_code_and_count() {
        let metrics = Metrics::new();
        let auth = authenticator(&metrics);
        let deadline = Instant::now() + Duration::from_secs(10);
        let cases =
            [("", "no_token"), ("forged", "invalid_token"), ("other-sa", "wrong_account"), ("down", "unreachable")];
        for (token, label) in cases {
            let err = auth.check(token, deadline).await.expect_err(token);
            assert_eq!(err.label(), label, "{token}: {err}");
            let want = if label == "unreachable" { codes::AUTH_UNAVAILABLE } else { codes::UNAUTHENTICATED };
            assert_eq!(err.close_code(), want, "{token}");
            assert_eq!(metrics.agent_auth_failures(label), 1, "{token}");
        }
        let text = auth.check("other-sa", deadline).await.unwrap_err().to_string();
        assert!(text.contains("system:serviceaccount:kube-system:default"), "names the account it got: {text}");
        let text = auth.check("", deadline).await.unwrap_err().to_string();
        assert!(text.contains("--service-account-token-path"), "{text}");
    }
}
