//! A token bucket that makes callers wait in line rather than fail.
//!
//! `burst` requests may go at once; after that one more every `1 / qps`
//! seconds. Waiters are served first come, first served: the state sits
//! behind tokio's fair mutex, and the caller at the head of the line sleeps
//! while holding it. A waiter that gives up (its future is dropped) takes
//! nothing: the next one moves up.

use std::time::Duration;

use konnq_shared::config::ReviewRate;
use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct TokenBucket {
    qps: f64,
    burst: f64,
    state: Mutex<State>,
}

struct State {
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// Starts full: the first `burst` requests go at once.
    pub fn new(rate: ReviewRate) -> Self {
        let burst = f64::from(rate.burst.max(1));
        let qps = if rate.qps > 0.0 { rate.qps } else { f64::MIN_POSITIVE };
        TokenBucket { qps, burst, state: Mutex::new(State { tokens: burst, refilled: Instant::now() }) }
    }

    /// Waits for a token and takes it.
    pub async fn acquire(&self) {
        let mut state = self.state.lock().await;
        self.refill(&mut state);
        if state.tokens < 1.0 {
            let wait = Duration::try_from_secs_f64((1.0 - state.tokens) / self.qps).unwrap_or(Duration::MAX);
            match Instant::now().checked_add(wait) {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
            self.refill(&mut state);
        }
        // Clamped: after the wait the bucket holds one token give or take
        // rounding, which must not turn into credit or debt.
        state.tokens = (state.tokens - 1.0).max(0.0);
    }

    fn refill(&self, state: &mut State) {
        let now = Instant::now();
        let earned = now.saturating_duration_since(state.refilled).as_secs_f64() * self.qps;
        state.tokens = (state.tokens + earned).min(self.burst);
        state.refilled = now;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn bucket(qps: f64, burst: u32) -> Arc<TokenBucket> {
        Arc::new(TokenBucket::new(ReviewRate { qps, burst }))
    }

    #[tokio::test(start_paused = true)]
    async fn burst_at_once_then_paced() {
        let b = bucket(2.0, 3);
        let start = Instant::now();
        for _ in 0..3 {
            b.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst does not wait");
        b.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(500), "then one per 1/qps");
        b.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn refills_up_to_the_burst_only() {
        let b = bucket(10.0, 2);
        b.acquire().await;
        b.acquire().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        b.acquire().await;
        b.acquire().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        b.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(100), "a quiet minute saved 2 tokens, not 600");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_order_and_a_quitter_takes_nothing() {
        let b = bucket(1.0, 1);
        b.acquire().await;
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let quitter = {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.acquire().await })
        };
        tokio::task::yield_now().await;
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (b, tx) = (Arc::clone(&b), tx.clone());
            tasks.push(tokio::spawn(async move {
                b.acquire().await;
                let _ = tx.send((i, Instant::now())).await;
            }));
            tokio::task::yield_now().await;
        }
        quitter.abort();
        let start = Instant::now();
        for want in 0..3 {
            let (i, at) = rx.recv().await.expect("served");
            assert_eq!(i, want, "first come, first served");
            assert_eq!(at - start, Duration::from_secs(want as u64 + 1), "the quitter's slot went to the next");
        }
    }
}
