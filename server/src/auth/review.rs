//! [`CachingReviewer`]: the storm-proof layer in front of a [`TokenReviewer`].
//!
//! For one token, in order:
//! 1. a cached acceptance (see [`super::cache`]) answers at once;
//! 2. a review of the same token already in flight is joined: its caller
//!    (the leader) publishes the verdict to every follower through a watch
//!    channel, so N concurrent connections with one token cost one request;
//! 3. otherwise this caller leads: it waits in the token bucket, sends the
//!    review, caches an acceptance, and publishes.
//!
//! Reviews of connected agents' tokens ([`Priority::Background`]) yield to
//! agents waiting to be admitted: at most one of them waits in the token
//! bucket's line at a time, so an admission never queues behind more than
//! one background review, however many connected agents are due.
//!
//! Everything waits at most until the caller's deadline (the agent's
//! review deadline). A leader whose deadline passes withdraws its flight
//! unanswered; its followers then start over and one of them leads. Only
//! acceptances are cached: a rejected token or a failed review is asked
//! again next time.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use konnq_shared::config::ReviewRate;
use konnq_shared::gauge::GaugeGuard;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::bucket::TokenBucket;
use super::cache::{Key, ReviewCache, MAX_ENTRIES};
use super::{jwt, ReviewError, ReviewOutcome, TokenReviewer};
use crate::metrics::Metrics;

type Verdict = Result<ReviewOutcome, ReviewError>;

/// Who is waiting for a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// An agent waiting to be admitted.
    Admission,
    /// A connected agent's token, due for its periodic check.
    Background,
}

pub struct CachingReviewer {
    inner: Box<dyn TokenReviewer>,
    ttl: Duration,
    limiter: Option<TokenBucket>,
    /// One permit: the background review allowed in the limiter's line.
    background: Semaphore,
    metrics: Metrics,
    state: Mutex<State>,
}

struct State {
    cache: ReviewCache,
    /// Reviews in flight: token hash → (flight id, the verdict to come).
    flights: HashMap<Key, (u64, watch::Receiver<Option<Verdict>>)>,
    next_flight: u64,
}

enum Role<'a> {
    Cached(String),
    Follow(watch::Receiver<Option<Verdict>>),
    Lead(Flight<'a>),
}

/// A review this caller leads. Dropping it ends the flight: followers
/// have the verdict if it was published, else they start over.
struct Flight<'a> {
    state: &'a Mutex<State>,
    key: Key,
    id: u64,
    tx: watch::Sender<Option<Verdict>>,
}

impl CachingReviewer {
    /// `rate: None` sends reviews unthrottled; `ttl` zero caches nothing.
    pub fn new(inner: Box<dyn TokenReviewer>, ttl: Duration, rate: Option<ReviewRate>, metrics: Metrics) -> Self {
        Self::with_capacity(inner, ttl, rate, metrics, MAX_ENTRIES)
    }

    pub(super) fn with_capacity(
        inner: Box<dyn TokenReviewer>,
        ttl: Duration,
        rate: Option<ReviewRate>,
        metrics: Metrics,
        capacity: usize,
    ) -> Self {
        let state = State { cache: ReviewCache::new(capacity), flights: HashMap::new(), next_flight: 0 };
        CachingReviewer {
            inner,
            ttl,
            limiter: rate.map(TokenBucket::new),
            background: Semaphore::new(1),
            metrics,
            state: Mutex::new(state),
        }
    }

    /// Until when `token`'s acceptance is cached, if it is.
    pub fn cached_until(&self, token: &str) -> Option<Instant> {
        lock(&self.state).cache.until(&Key::of(token), Instant::now())
    }

    /// kube-apiserver's verdict on `token`, from the cache, a review in
    /// flight or a new one; gives up at `deadline`.
    pub async fn review(&self, token: &str, deadline: Instant, priority: Priority) -> Verdict {
        let key = Key::of(token);
        loop {
            let mut rx = match self.role(key) {
                Role::Cached(username) => return Ok(ReviewOutcome::Authenticated { username }),
                Role::Lead(flight) => return self.lead(flight, token, deadline, priority).await,
                Role::Follow(rx) => rx,
            };
            let verdict = match tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await {
                Err(_elapsed) => return Err(ReviewError::Timeout),
                Ok(Ok(published)) => published.clone(),
                // The leader gave up before an answer: start over.
                Ok(Err(_withdrawn)) => None,
            };
            if let Some(verdict) = verdict {
                return verdict;
            }
        }
    }

    fn role(&self, key: Key) -> Role<'_> {
        let mut state = lock(&self.state);
        if let Some(username) = state.cache.get(&key, Instant::now()) {
            return Role::Cached(username);
        }
        if let Some((_, rx)) = state.flights.get(&key) {
            return Role::Follow(rx.clone());
        }
        let id = state.next_flight;
        state.next_flight += 1;
        let (tx, rx) = watch::channel(None);
        state.flights.insert(key, (id, rx));
        Role::Lead(Flight { state: &self.state, key, id, tx })
    }

    async fn lead(&self, flight: Flight<'_>, token: &str, deadline: Instant, priority: Priority) -> Verdict {
        let mut sent = false;
        let attempt = async {
            if let Some(limiter) = &self.limiter {
                let _queued = GaugeGuard::inc(&self.metrics.token_review_queue);
                // Never closed, so acquiring cannot fail.
                let _in_line = match priority {
                    Priority::Background => self.background.acquire().await.ok(),
                    Priority::Admission => None,
                };
                limiter.acquire().await;
            }
            sent = true;
            self.inner.review(token).await
        };
        let Ok(verdict) = tokio::time::timeout_at(deadline, attempt).await else {
            // Only this caller's time is up: the flight is withdrawn
            // unpublished and a follower with time left leads a new one.
            if sent {
                self.metrics.token_reviewed("error");
                return Err(ReviewError::Timeout);
            }
            return Err(ReviewError::Throttled);
        };
        self.metrics.token_reviewed(result_label(&verdict));
        if let (Ok(ReviewOutcome::Authenticated { username }), Some(until)) = (&verdict, self.valid_until(token)) {
            lock(&self.state).cache.insert(flight.key, username.clone(), until);
        }
        // Cached before the flight ends, so no caller finds neither.
        flight.tx.send_replace(Some(verdict.clone()));
        verdict
    }

    /// How long an acceptance of `token` may be reused: `ttl`, cut short by
    /// the token's own `exp`; `None` = not at all.
    fn valid_until(&self, token: &str) -> Option<Instant> {
        let now = Instant::now();
        let mut until = now.checked_add(self.ttl)?;
        if let Some(exp) = jwt::expiry(token) {
            let left = exp.duration_since(SystemTime::now()).ok()?;
            until = until.min(now.checked_add(left)?);
        }
        (until > now).then_some(until)
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut state = lock(self.state);
        if state.flights.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            state.flights.remove(&self.key);
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every update leaves State consistent, so a panic elsewhere cannot have
    // left it half done.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `result` label of `konnq_server_token_reviews_total`.
fn result_label(verdict: &Verdict) -> &'static str {
    match verdict {
        Ok(ReviewOutcome::Authenticated { .. }) => "authenticated",
        Ok(ReviewOutcome::Rejected(_)) => "rejected",
        Err(_) => "error",
    }
}

#[cfg(test)]
mod tests;
