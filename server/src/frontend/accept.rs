//! What every frontend listener does when an accept fails. The usual cause
//! is the process running out of file descriptors (EMFILE, ENFILE) or the
//! kernel out of buffers: the listener stays readable, so retrying at once
//! fails again at once and spins a core. Each failure pauses accepting,
//! from [`MIN_PAUSE`] doubling to [`MAX_PAUSE`] while failures go on; an
//! accepted connection resets the pause. Failures are logged at WARN at
//! most once per [`WARN_EVERY`], with the number not logged since.

use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tokio::time::Instant;
use tracing::warn;

/// Pause after the first failure in a row.
pub const MIN_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause while failures go on.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Shortest time between two warnings.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// Most connections taken from the backlog at shutdown.
pub const BACKLOG_AT_SHUTDOWN: usize = 4096;

/// The accept-failure policy (sans-IO: callers pass the time in).
#[derive(Debug, Default)]
pub struct AcceptErrors {
    /// The pause after the last failure; zero after a success.
    pause: Duration,
    last_warning: Option<Instant>,
    /// Failures since the last warning, not logged.
    unlogged: u64,
}

/// What to do about one failure.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// How long to wait before accepting again.
    pub pause: Duration,
    /// `Some(n)`: warn now, `n` failures having gone unlogged since the
    /// last warning.
    pub warn: Option<u64>,
}

impl AcceptErrors {
    /// A failure at `now`.
    pub fn failed(&mut self, now: Instant) -> Verdict {
        self.pause = (self.pause * 2).clamp(MIN_PAUSE, MAX_PAUSE);
        let due = self.last_warning.is_none_or(|at| now.duration_since(at) >= WARN_EVERY);
        let warn = if due {
            self.last_warning = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        };
        Verdict { pause: self.pause, warn }
    }

    /// A connection was accepted: the next failure pauses briefly again.
    pub fn accepted(&mut self) {
        self.pause = Duration::ZERO;
    }
}

/// The connections of `incoming` (a listener's accepts); each failure is
/// handled by [`AcceptErrors`] (logged naming `listener`, then a pause)
/// and not passed on.
pub fn with_backoff<S, IO, E>(incoming: S, listener: &'static str) -> impl Stream<Item = IO>
where
    S: Stream<Item = Result<IO, E>>,
    E: std::fmt::Display,
{
    let state = (Box::pin(incoming), AcceptErrors::default());
    futures::stream::unfold(state, move |(mut incoming, mut errors)| async move {
        loop {
            match incoming.next().await? {
                Ok(io) => {
                    errors.accepted();
                    return Some((io, (incoming, errors)));
                }
                Err(e) => {
                    let verdict = errors.failed(Instant::now());
                    if let Some(unlogged) = verdict.warn {
                        warn!(pause = ?verdict.pause, unlogged, "accepting on the {listener} failed: {e}");
                    }
                    tokio::time::sleep(verdict.pause).await;
                }
            }
        }
    })
}

/// The connections `incoming` has ready at once, without waiting (at most
/// [`BACKLOG_AT_SHUTDOWN`]). At shutdown, clients whose connect already
/// succeeded (queued in the listen backlog) are served, instead of being
/// reset when the listener closes.
pub fn backlog<S: Stream + Unpin>(incoming: &mut S) -> Vec<S::Item> {
    let mut ready = Vec::new();
    while ready.len() < BACKLOG_AT_SHUTDOWN {
        match incoming.next().now_or_never() {
            Some(Some(item)) => ready.push(item),
            Some(None) | None => break,
        }
    }
    ready
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_pause_longer_up_to_the_limit() {
        let mut errors = AcceptErrors::default();
        let now = Instant::now();
        let pauses: Vec<Duration> = (0..10).map(|_| errors.failed(now).pause).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(pauses, [ms(10), ms(20), ms(40), ms(80), ms(160), ms(320), ms(640), ms(1000), ms(1000), ms(1000)]);
        errors.accepted();
        assert_eq!(errors.failed(now).pause, MIN_PAUSE, "a success starts over");
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_left_out() {
        let mut errors = AcceptErrors::default();
        let start = Instant::now();
        assert_eq!(errors.failed(start).warn, Some(0), "the first failure warns");
        for i in 1..5 {
            assert_eq!(errors.failed(start + Duration::from_secs(i)).warn, None);
        }
        errors.accepted();
        assert_eq!(
            errors.failed(start + WARN_EVERY - Duration::from_millis(1)).warn,
            None,
            "a success does not reset it"
        );
        assert_eq!(errors.failed(start + WARN_EVERY).warn, Some(5));
        assert_eq!(errors.failed(start + WARN_EVERY).warn, None);
    }
}
