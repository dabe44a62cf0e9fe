//! [`KubeReviewer`]: the TokenReview API (`authentication.k8s.io/v1`) through
//! the `kube` client of [`konnq_shared::kube`] (credentials from
//! `--kubeconfig` or the in-cluster ServiceAccount; upstream's manifests
//! embed a client certificate with CN `system:konnectivity-server`).
//! Requests are JSON (`--kube-api-content-type` is not used) and are not
//! retried: the rate limit and the agent's reconnect backoff pace retries.

use std::path::Path;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use konnq_shared::kube::{client, describe, KubeSetupError};
use kube::api::PostParams;
use kube::Api;

use super::{ReviewError, ReviewOutcome, TokenReviewer};

pub struct KubeReviewer {
    api: Api<TokenReview>,
    audience: String,
}

impl KubeReviewer {
    /// Loads the credentials and builds the client (no request is made).
    pub async fn new(kubeconfig: Option<&Path>, audience: &str) -> Result<KubeReviewer, KubeSetupError> {
        let client = client(kubeconfig).await?;
        Ok(KubeReviewer { api: Api::all(client), audience: audience.to_owned() })
    }

    async fn ask(&self, token: &str) -> Result<ReviewOutcome, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let answer =
            self.api.create(&PostParams::default(), &review).await.map_err(|e| ReviewError::Failed(describe(&e)))?;
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
