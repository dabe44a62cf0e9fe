//! [`KubeReviewer`]: the TokenReview API (`authentication.k8s.io/v1`) through
//! the `kube` client.
//!
//! Credentials come from `--kubeconfig` (upstream's manifests embed a client
//! certificate with CN `system:konnectivity-server`, often with an RSA PKCS#1
//! key, plus `certificate-authority-data`) or, when it is empty, from the
//! pod's in-cluster ServiceAccount. TLS is rustls with ring, like the rest of
//! konnq. Requests are JSON (`--kube-api-content-type` is not used) and are
//! not retried: the rate limit and the agent's reconnect backoff pace retries.

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Api, Client, Config};

use super::{ReviewError, ReviewOutcome, TokenReviewer};

/// Why the kube client could not be set up (at start-up). The display
/// carries the whole cause, so no source chain is kept.
#[derive(Debug, thiserror::Error)]
pub enum KubeSetupError {
    #[error("kubeconfig {}: {error}", path.display())]
    Kubeconfig { path: PathBuf, error: KubeconfigError },
    #[error("no --kubeconfig and no in-cluster config: {0}")]
    InCluster(InClusterError),
    #[error("kube client: {0}")]
    Client(kube::Error),
}

pub struct KubeReviewer {
    api: Api<TokenReview>,
    audience: String,
}

impl KubeReviewer {
    /// Loads the credentials and builds the client (no request is made).
    pub async fn new(kubeconfig: Option<&Path>, audience: &str) -> Result<KubeReviewer, KubeSetupError> {
        let mut config = match kubeconfig {
            Some(path) => {
                let err = |error| KubeSetupError::Kubeconfig { path: path.to_owned(), error };
                let file = Kubeconfig::read_from(path).map_err(err)?;
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.map_err(err)?
            }
            None => Config::incluster().map_err(KubeSetupError::InCluster)?,
        };
        config.default_retry = false;
        // kube's TLS takes the process-wide rustls provider: make it ring,
        // konnq's only one, whatever else the dependency tree enables.
        let _already_set = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_from(config).map_err(KubeSetupError::Client)?;
        Ok(KubeReviewer { api: Api::all(client), audience: audience.to_owned() })
    }

    async fn ask(&self, token: &str) -> Result<ReviewOutcome, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let answer = self.api.create(&PostParams::default(), &review).await.map_err(failure)?;
        Ok(outcome(answer.status.unwrap_or_default(), &self.audience))
    }
}

impl TokenReviewer for KubeReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ReviewOutcome, ReviewError>> {
        Box::pin(self.ask(token))
    }
}

/// A TokenReview status as konnq reads it. kube-apiserver answers for our
/// audience only if `status.audiences` names it (the API's advice to
/// clients that set `spec.audiences`), so an answer without it is a rejection.
fn outcome(status: TokenReviewStatus, audience: &str) -> ReviewOutcome {
    if status.authenticated != Some(true) {
        let reason = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "not authenticated".to_owned());
        return ReviewOutcome::Rejected(reason);
    }
    if !status.audiences.unwrap_or_default().iter().any(|a| a == audience) {
        return ReviewOutcome::Rejected(format!("token is not valid for audience {audience:?}"));
    }
    match status.user.and_then(|u| u.username) {
        Some(username) if !username.is_empty() => ReviewOutcome::Authenticated { username },
        _ => ReviewOutcome::Rejected("authenticated without a username".to_owned()),
    }
}

/// A failed request, with kube-apiserver's own words when it answered.
fn failure(e: kube::Error) -> ReviewError {
    let text = match &e {
        kube::Error::Api(status) => {
            let words = [status.reason.as_str(), status.message.as_str()].into_iter().filter(|w| !w.is_empty());
            let words: Vec<&str> = words.collect();
            format!("kube-apiserver answered {}: {}", status.code, words.join(": "))
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    };
    ReviewError::Failed(text)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    const AUD: &str = "system:konnectivity-server";

    fn status(authenticated: bool, audiences: &[&str], username: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo { username: Some(username.to_owned()), ..Default::default() }),
            error: None,
        }
    }

    #[test]
    fn authenticated_for_our_audience() {
        let user = "system:serviceaccount:kube-system:konnectivity-agent";
        assert_eq!(
            outcome(status(true, &["other", AUD], user), AUD),
            ReviewOutcome::Authenticated { username: user.to_owned() }
        );
    }

    #[test]
    fn everything_else_is_a_rejection() {
        let wrong_audience = outcome(status(true, &["https://kubernetes.default.svc"], "u"), AUD);
        assert!(matches!(&wrong_audience, ReviewOutcome::Rejected(r) if r.contains("audience")), "{wrong_audience:?}");
        let no_audiences = TokenReviewStatus { audiences: None, ..status(true, &[], "u") };
        assert!(matches!(outcome(no_audiences, AUD), ReviewOutcome::Rejected(_)));
        let refused = TokenReviewStatus { error: Some("token has expired".into()), ..status(false, &[AUD], "") };
        assert_eq!(outcome(refused, AUD), ReviewOutcome::Rejected("token has expired".into()));
        assert_eq!(outcome(TokenReviewStatus::default(), AUD), ReviewOutcome::Rejected("not authenticated".into()));
        assert!(matches!(outcome(status(true, &[AUD], ""), AUD), ReviewOutcome::Rejected(_)), "no username");
    }
}
