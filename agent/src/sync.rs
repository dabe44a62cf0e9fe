//! When the agent opens another server connection, and how long it waits
//! first (no I/O: [`crate::session`] drives it).
//!
//! The agent holds one connection to each server. Servers sit behind one
//! address (a load balancer) and each tells its ID and the server count in
//! its Welcome, so the agent keeps connecting until it holds connections to
//! that many *distinct* servers; a connection that reaches a server it
//! already holds is closed at once. As upstream's agent does:
//! - below the count, it connects again: at once after a new server, after
//!   about `sync-interval` after a duplicate, after a backoff from
//!   `sync-interval` ×1.5 up to `sync-interval-cap` after a failure;
//! - except that right after it lost a connection or found a new server,
//!   its first [`QUICK_RETRIES`] duplicates are retried after a tenth of
//!   that: a server that restarted is found in a few hundred milliseconds
//!   instead of seconds, and an agent whose count cannot be reached (a
//!   server down for good) soon falls back to upstream's pace;
//! - at the count it only looks again every `sync-interval`, unless
//!   `sync-forever` keeps it probing (at the backoff's pace) for servers
//!   that were added;
//! - a lost connection wakes it at once (after a short jitter, so that
//!   agents that lost one server together do not reconnect in one burst).

use std::time::Duration;

/// What one connection attempt gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Connected to a server the agent held no connection to.
    Added,
    /// Reached a server the agent already holds; that connection was closed.
    Duplicate,
    /// No connection: handshake failure, refusal, timeout.
    Failed,
}

/// How many duplicates below the count are retried quickly after a loss
/// or a new server: with three servers behind a round-robin load balancer,
/// enough that a restarted one is all but certainly reached.
pub const QUICK_RETRIES: u32 = 6;

/// Whether the agent should open another connection now: holding `held`
/// connections to servers that are not draining, aiming for `target`.
/// With nothing known yet it connects (to learn the count).
pub fn wants_more(held: usize, target: Option<usize>, sync_forever: bool) -> bool {
    sync_forever || target.is_none_or(|t| held < t)
}

/// Jittered exponential backoff between `start` and `cap`: each delay is
/// uniformly random in [d/2, d], then d grows ×1.5 up to the cap.
#[derive(Debug)]
pub struct Backoff {
    start: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(start: Duration, cap: Duration) -> Self {
        Backoff { start, cap, next: start }
    }

    /// The next delay (random, see the type), then the base grows.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.mul_f64(1.5).min(self.cap);
        jitter(base / 2, base)
    }

    pub fn reset(&mut self) {
        self.next = self.start;
    }
}

/// Uniformly random in [lo, hi].
pub fn jitter(lo: Duration, hi: Duration) -> Duration {
    lo + hi.saturating_sub(lo).mul_f64(fastrand::f64())
}

/// How long to wait after an attempt before the next one, when the agent
/// still wants more connections.
/// A duplicate below the count says only that the load balancer picked a
/// server already held: try again after about `sync_interval` without
/// growing the backoff, as upstream's agent does (growing it made finding a
/// restarted server take several times longer), or after a tenth of that
/// while `quick` (see [`QUICK_RETRIES`]).
pub fn after(
    outcome: Outcome,
    below_count: bool,
    quick: bool,
    sync_interval: Duration,
    backoff: &mut Backoff,
) -> Duration {
    match outcome {
        Outcome::Added => {
            backoff.reset();
            Duration::ZERO
        }
        Outcome::Duplicate if below_count && quick => jitter(sync_interval / 20, sync_interval / 10),
        Outcome::Duplicate if below_count => jitter(sync_interval / 2, sync_interval),
        Outcome::Duplicate | Outcome::Failed => backoff.next_delay(),
    }
}

/// How long to wait after a connection was lost before connecting again:
/// up to a quarter of `sync-interval`, at random.
pub fn after_loss(sync_interval: Duration) -> Duration {
    jitter(Duration::ZERO, sync_interval / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_half_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        for base in [100, 150, 225, 300, 300] {
            let d = b.next_delay();
            let base = Duration::from_millis(base);
            assert!(d >= base / 2 && d <= base, "{d:?} outside [{:?}, {base:?}]", base / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn connects_until_it_holds_the_count() {
        assert!(wants_more(0, None, false), "nothing known: connect to learn the count");
        assert!(wants_more(2, Some(3), false));
        assert!(!wants_more(3, Some(3), false));
        assert!(!wants_more(4, Some(3), false), "more than the count (the count went down)");
        assert!(wants_more(3, Some(3), true), "sync-forever keeps probing");
    }

    #[test]
    fn a_new_server_means_try_again_at_once_a_failure_backs_off() {
        let second = Duration::from_secs(1);
        let mut b = Backoff::new(second, Duration::from_secs(10));
        let first = after(Outcome::Failed, true, false, second, &mut b);
        assert!(first >= Duration::from_millis(500) && first <= second, "{first:?}");
        let again = after(Outcome::Failed, true, true, second, &mut b);
        assert!(
            again >= Duration::from_millis(750) && again <= Duration::from_millis(1500),
            "quick is for duplicates only: {again:?}"
        );
        for _ in 0..5 {
            let d = after(Outcome::Duplicate, true, false, second, &mut b);
            assert!(d >= Duration::from_millis(500) && d <= second, "below the count: {d:?}");
            let d = after(Outcome::Duplicate, true, true, second, &mut b);
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100), "quick: {d:?}");
        }
        let probing = after(Outcome::Duplicate, false, true, second, &mut b);
        assert!(
            probing >= Duration::from_millis(1125) && probing <= Duration::from_millis(2250),
            "at the count: {probing:?}"
        );
        assert_eq!(after(Outcome::Added, true, false, second, &mut b), Duration::ZERO);
        assert!(after(Outcome::Failed, true, false, second, &mut b) <= second, "Added reset the backoff");
        for _ in 0..100 {
            assert!(after_loss(Duration::from_secs(1)) <= Duration::from_millis(250));
        }
    }
}
