//! Tokens of connected agents stay checked (upstream checks only at
//! connect): projected ServiceAccount tokens rotate, and an account can be
//! deleted while its agent is connected.
//!
//! While an agent is connected, its token is reviewed again each time the
//! cached acceptance runs out (`token-review-cache-ttl`, never past the
//! token's `exp`); a token the agent sends when its file changes is reviewed
//! and, once accepted, is the one checked from then on. A token that no
//! longer passes ends the connection. If kube-apiserver cannot be asked, the
//! connection stays and the check is retried: an apiserver outage must not
//! cut every tunnel.
//!
//! These reviews are background work: they share the `kubeconfig-qps` rate
//! limit with agents waiting to be admitted, but never more than one of them
//! waits in its line at a time (see [`super::CachingReviewer`]).

use std::time::Duration;

use konnq_shared::logging::untrusted;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{AuthError, Authenticator, TOKEN_REVIEW_WAIT};

/// Shortest time between two checks of one connection's token, whatever the
/// cache TTL (`0s` caches nothing).
pub const MIN_RECHECK: Duration = Duration::from_secs(10);
/// When kube-apiserver could not be asked, the next try.
const RETRY: Duration = Duration::from_secs(30);

impl Authenticator {
    /// Keeps a connected agent's token checked; `tokens` holds the token it
    /// was admitted with and then every token it sends. Returns only when
    /// the current token, or a new one, is refused.
    pub async fn keep_checked(&self, agent_id: &str, mut tokens: watch::Receiver<String>) -> AuthError {
        let mut token = tokens.borrow_and_update().clone();
        let mut pending: Option<String> = None;
        let mut next = self.recheck_at(&token);
        loop {
            let candidate = tokio::select! {
                changed = tokens.changed() => match changed {
                    Ok(()) => tokens.borrow_and_update().clone(),
                    // The connection is ending: nothing more to check.
                    Err(_) => std::future::pending().await,
                },
                _ = tokio::time::sleep_until(next) => pending.take().unwrap_or_else(|| token.clone()),
            };
            let rotated = candidate != token;
            match self.recheck(&candidate, Instant::now() + TOKEN_REVIEW_WAIT).await {
                Ok(_) => {
                    if rotated {
                        info!(agent_id = %untrusted(agent_id), "agent's new ServiceAccount token accepted");
                    }
                    token = candidate;
                    next = self.recheck_at(&token);
                }
                Err(AuthError::Unreachable(e)) => {
                    warn!(agent_id = %untrusted(agent_id), "cannot check the agent's token, the agent stays connected: {}", untrusted(&e.to_string()));
                    if rotated {
                        pending = Some(candidate);
                    }
                    next = Instant::now() + RETRY;
                }
                Err(refused) => {
                    warn!(agent_id = %untrusted(agent_id), "disconnecting the agent: {}", untrusted(&refused.to_string()));
                    return refused;
                }
            }
        }
    }

    /// When the token's cached acceptance runs out; at least [`MIN_RECHECK`] from now.
    pub fn recheck_at(&self, token: &str) -> Instant {
        let soonest = Instant::now() + MIN_RECHECK;
        self.reviews.cached_until(token).map_or(soonest, |until| until.max(soonest))
    }
}
