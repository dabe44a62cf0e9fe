//! [`CachingReviewer`] against a counting fake, on tokio's paused clock.
//! A paused-clock `sleep` returns only once every other task is blocked, so
//! `settle()` is how a test waits for spawned callers to line up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use super::*;

const ACCOUNT: &str = "system:serviceaccount:kube-system:konnectivity-agent";

/// Counts reviews; answers "bad*" with a rejection, "err*" with a failure and
/// anything else with [`ACCOUNT`]; each review first passes `gate`.
struct Fake {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl TokenReviewer for Fake {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let _pass = self.gate.acquire().await;
            if token.starts_with("bad") {
                Ok(ReviewOutcome::Rejected("token has expired".into()))
            } else if token.starts_with("err") {
                Err(ReviewError::Failed("connection refused".into()))
            } else {
                Ok(ReviewOutcome::Authenticated { username: ACCOUNT.into() })
            }
        })
    }
}

struct Setup {
    reviewer: Arc<CachingReviewer>,
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    metrics: Metrics,
}

impl Setup {
    fn new(ttl: Duration, rate: Option<ReviewRate>, capacity: usize) -> Setup {
        let (calls, gate, metrics) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)), Metrics::new());
        let fake = Fake { calls: Arc::clone(&calls), gate: Arc::clone(&gate) };
        let reviewer = CachingReviewer::with_capacity(Box::new(fake), ttl, rate, metrics.clone(), capacity);
        Setup { reviewer: Arc::new(reviewer), calls, gate, metrics }
    }

    /// Unlimited rate, open gate.
    fn open(ttl: Duration) -> Setup {
        let s = Setup::new(ttl, None, MAX_ENTRIES);
        s.gate.add_permits(Semaphore::MAX_PERMITS);
        s
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn review(&self, token: &str) -> Verdict {
        self.reviewer.review(token, Instant::now() + Duration::from_secs(10), Priority::Admission).await
    }

    fn spawn(&self, token: String, deadline: Instant) -> tokio::task::JoinHandle<Verdict> {
        self.spawn_with(token, deadline, Priority::Admission)
    }

    fn spawn_with(&self, token: String, deadline: Instant, priority: Priority) -> tokio::task::JoinHandle<Verdict> {
        let reviewer = Arc::clone(&self.reviewer);
        tokio::spawn(async move { reviewer.review(&token, deadline, priority).await })
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn accepted() -> Verdict {
    Ok(ReviewOutcome::Authenticated { username: ACCOUNT.into() })
}

#[tokio::test(start_paused = true)]
async fn cache_hit_avoids_a_second_review() {
    let s = Setup::open(Duration::from_secs(60));
    assert_eq!(s.review("token-a").await, accepted());
    assert_eq!(s.review("token-a").await, accepted());
    assert_eq!(s.calls(), 1);
    assert_eq!(s.metrics.token_reviews("authenticated"), 1, "a cache hit is not a review");
    assert_eq!(s.review("token-b").await, accepted());
    assert_eq!(s.calls(), 2, "another token is reviewed");
}

#[tokio::test(start_paused = true)]
async fn concurrent_identical_tokens_share_one_review() {
    // No cache at all: only coalescing can keep this at one review.
    let s = Setup::new(Duration::ZERO, None, MAX_ENTRIES);
    let deadline = Instant::now() + Duration::from_secs(10);
    let tasks: Vec<_> = (0..100).map(|_| s.spawn("same-token".into(), deadline)).collect();
    settle().await;
    assert_eq!(s.calls(), 1, "all 100 joined one review in flight");
    s.gate.add_permits(Semaphore::MAX_PERMITS);
    for task in tasks {
        assert_eq!(task.await.expect("task"), accepted());
    }
    assert_eq!(s.calls(), 1);
    assert_eq!(s.review("same-token").await, accepted());
    assert_eq!(s.calls(), 2, "ttl 0: the finished flight is not reused");
}

#[tokio::test(start_paused = true)]
async fn different_tokens_queue_for_the_rate_limit_and_all_succeed() {
    let s = Setup::new(Duration::from_secs(60), Some(ReviewRate { qps: 2.0, burst: 2 }), MAX_ENTRIES);
    s.gate.add_permits(Semaphore::MAX_PERMITS);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(10);
    let tasks: Vec<_> = (0..6).map(|i| s.spawn(format!("token-{i}"), deadline)).collect();
    settle().await;
    assert_eq!(s.calls(), 2, "the burst went at once");
    assert_eq!(s.metrics.token_review_queue.get(), 4, "the rest wait in the queue");
    for task in tasks {
        assert_eq!(task.await.expect("task"), accepted());
    }
    assert_eq!(s.calls(), 6);
    assert_eq!(start.elapsed(), Duration::from_secs(2), "4 more at 2 per second");
    assert_eq!(s.metrics.token_review_queue.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_queue_wait_ends_at_the_deadline() {
    let s = Setup::new(Duration::from_secs(60), Some(ReviewRate { qps: 1.0, burst: 1 }), MAX_ENTRIES);
    s.gate.add_permits(Semaphore::MAX_PERMITS);
    let deadline = Instant::now() + Duration::from_millis(2500);
    let tasks: Vec<_> = (0..5).map(|i| s.spawn(format!("token-{i}"), deadline)).collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    let ok = results.iter().filter(|r| **r == accepted()).count();
    let throttled = results.iter().filter(|r| **r == Err(ReviewError::Throttled)).count();
    assert_eq!((ok, throttled), (3, 2), "reviews at 0 s, 1 s, 2 s; two still queued at 2.5 s: {results:?}");
    assert_eq!(s.calls(), 3, "the throttled ones were never sent");
    assert_eq!(s.metrics.token_review_queue.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn jwt_exp_cuts_the_cache_entry_short() {
    let s = Setup::open(Duration::from_secs(300));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs();
    let token = jwt::unsigned_token(&serde_json::json!({ "exp": now + 31 }));
    assert_eq!(s.review(&token).await, accepted());
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(s.review(&token).await, accepted());
    assert_eq!(s.calls(), 1, "still before exp");
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(s.review(&token).await, accepted());
    assert_eq!(s.calls(), 2, "past exp (well within the 5 min ttl): reviewed again");
}

#[tokio::test(start_paused = true)]
async fn ttl_bounds_the_cache_entry() {
    let s = Setup::open(Duration::from_secs(60));
    assert_eq!(s.review("opaque").await, accepted());
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(s.review("opaque").await, accepted());
    assert_eq!(s.calls(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(s.review("opaque").await, accepted());
    assert_eq!(s.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_expired_jwt_is_never_cached() {
    let s = Setup::open(Duration::from_secs(60));
    let token = jwt::unsigned_token(&serde_json::json!({ "exp": 1_000_000_000u64 }));
    assert_eq!(s.review(&token).await, accepted(), "the fake accepts it anyway");
    assert_eq!(s.review(&token).await, accepted());
    assert_eq!(s.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn rejections_and_failures_are_not_cached() {
    let s = Setup::open(Duration::from_secs(60));
    for _ in 0..2 {
        assert_eq!(s.review("bad-token").await, Ok(ReviewOutcome::Rejected("token has expired".into())));
        assert_eq!(s.review("err-token").await, Err(ReviewError::Failed("connection refused".into())));
    }
    assert_eq!(s.calls(), 4);
    assert_eq!(s.metrics.token_reviews("rejected"), 2);
    assert_eq!(s.metrics.token_reviews("error"), 2);
}

#[tokio::test(start_paused = true)]
async fn the_cache_is_bounded() {
    let s = Setup::new(Duration::from_secs(60), None, 2);
    s.gate.add_permits(Semaphore::MAX_PERMITS);
    for token in ["a", "b", "c"] {
        assert_eq!(s.review(token).await, accepted());
    }
    assert_eq!(s.review("c").await, accepted());
    assert_eq!(s.review("b").await, accepted());
    assert_eq!(s.calls(), 3, "b and c still cached");
    assert_eq!(s.review("a").await, accepted());
    assert_eq!(s.calls(), 4, "a, the oldest, was evicted");
}

#[tokio::test(start_paused = true)]
async fn a_leader_out_of_time_hands_over_to_a_follower() {
    let s = Setup::new(Duration::from_secs(60), None, MAX_ENTRIES);
    let now = Instant::now();
    let leader = s.spawn("tok".into(), now + Duration::from_secs(1));
    settle().await;
    let follower = s.spawn("tok".into(), now + Duration::from_secs(10));
    assert_eq!(leader.await.expect("task"), Err(ReviewError::Timeout));
    settle().await;
    assert_eq!(s.calls(), 2, "the follower sent its own review");
    s.gate.add_permits(Semaphore::MAX_PERMITS);
    assert_eq!(follower.await.expect("task"), accepted());
    assert_eq!(s.metrics.token_reviews("error"), 1, "the abandoned request counts as failed");
    assert_eq!(s.review("tok").await, accepted());
    assert_eq!(s.calls(), 2, "cached");
}

#[tokio::test(start_paused = true)]
async fn admissions_pass_background_reviews_in_the_queue() {
    let s = Setup::new(Duration::from_secs(60), Some(ReviewRate { qps: 1.0, burst: 1 }), MAX_ENTRIES);
    s.gate.add_permits(Semaphore::MAX_PERMITS);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    // The burst goes to a first admission; then 5 connected agents fall
    // due, then 3 agents ask to be admitted.
    assert_eq!(s.review("first").await, accepted());
    let background: Vec<_> =
        (0..5).map(|i| s.spawn_with(format!("live-{i}"), deadline, Priority::Background)).collect();
    settle().await;
    let admissions: Vec<_> = (0..3).map(|i| s.spawn(format!("new-{i}"), deadline)).collect();
    let mut admitted_at = Vec::new();
    for task in admissions {
        assert_eq!(task.await.expect("task"), accepted());
        admitted_at.push(start.elapsed());
    }
    // One background review was already in line (1 s); the admissions
    // follow it (2, 3, 4 s) instead of waiting behind all five (6, 7, 8 s).
    assert_eq!(admitted_at.last().copied(), Some(Duration::from_secs(4)), "{admitted_at:?}");
    for task in background {
        assert_eq!(task.await.expect("task"), accepted());
    }
    assert_eq!(s.calls(), 9);
    assert_eq!(start.elapsed(), Duration::from_secs(8), "the rest of the background reviews, one per second");
    assert_eq!(s.metrics.token_review_queue.get(), 0);
}
