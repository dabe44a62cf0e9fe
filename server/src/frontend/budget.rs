//! The budget for partly received gRPC messages on the HTTP/2 frontend.
//!
//! A message's bytes are credited back once its session has forwarded it.
//! A message larger than half the stream window might then never arrive,
//! so its bytes are credited as they come, and held beyond what flow
//! control bounds. A message gets that early credit only with a
//! reservation of its whole size, all or nothing, from its connection's
//! budget and from the process-wide one; the reservation is returned once
//! the session has forwarded the message, or when its stream or connection
//! ends. A message without one waits, within the windows, until a
//! reservation succeeds. All or nothing, so that several messages never
//! each hold part of the budget with none able to complete.
//!
//! Messages no larger than half the window need no reservation to
//! complete: kube-apiserver's packets (32 KiB of data) never wait for the
//! budget.

use std::sync::{Arc, Mutex, Weak};

use futures::task::AtomicWaker;
use prometheus_client::metrics::gauge::Gauge;

/// Bytes of partly received messages the whole process may hold with
/// early credit (at least one message of the largest size allowed).
pub const PROCESS_BUDGET: usize = 64 * 1024 * 1024;

/// Bytes reserved out of a limit; tasks waiting for bytes to be returned.
pub struct PartialBudget {
    limit: usize,
    /// Bytes reserved (a metric for the process-wide budget).
    used: Gauge,
    waiting: Mutex<Vec<Weak<AtomicWaker>>>,
}

impl PartialBudget {
    /// A budget of `limit` bytes whose reserved bytes `used` shows.
    pub fn new(limit: usize, used: Gauge) -> Arc<Self> {
        Arc::new(PartialBudget { limit, used, waiting: Mutex::new(Vec::new()) })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        usize::try_from(self.used.get()).unwrap_or(0)
    }

    /// Whether `n` more bytes would fit now.
    pub fn fits(&self, n: usize) -> bool {
        self.used().saturating_add(n) <= self.limit
    }

    fn take(&self, n: usize) -> bool {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let limit = i64::try_from(self.limit).unwrap_or(i64::MAX);
        let taken = self.used.inner().fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |used| used.checked_add(n).filter(|&total| total <= limit),
        );
        taken.is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|w| match w.upgrade() {
            Some(waker) => {
                waker.wake();
                true
            }
            None => false,
        });
    }

    /// `waker` is woken whenever bytes are returned, until [`Self::unwatch`].
    pub fn watch(&self, waker: &Arc<AtomicWaker>) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(waker));
    }

    pub fn unwatch(&self, waker: &Arc<AtomicWaker>) {
        let target = Arc::downgrade(waker);
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).retain(|w| !w.ptr_eq(&target));
    }
}

/// `n` bytes reserved from a connection's budget and the process's;
/// returned to both when dropped.
pub struct Reservation {
    budgets: [Arc<PartialBudget>; 2],
    bytes: usize,
}

impl Reservation {
    /// Reserves `n` bytes from both budgets, or from neither.
    pub fn take(conn: &Arc<PartialBudget>, process: &Arc<PartialBudget>, n: usize) -> Option<Reservation> {
        if !conn.take(n) {
            return None;
        }
        if !process.take(n) {
            conn.give_back(n);
            return None;
        }
        Some(Reservation { budgets: [Arc::clone(conn), Arc::clone(process)], bytes: n })
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for budget in &self.budgets {
            budget.give_back(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_all_or_nothing_from_both_budgets() {
        let process = PartialBudget::new(100, Gauge::default());
        let (a, b) = (PartialBudget::new(60, Gauge::default()), PartialBudget::new(60, Gauge::default()));
        let first = Reservation::take(&a, &process, 60).expect("fits both");
        assert!(Reservation::take(&a, &process, 1).is_none(), "the connection's budget is spent");
        assert!(Reservation::take(&b, &process, 41).is_none(), "the process's budget has 40 left");
        assert_eq!((b.used(), process.used()), (0, 60), "a refused reservation takes nothing");
        let second = Reservation::take(&b, &process, 40).expect("fits both");
        assert_eq!(process.used(), 100);
        drop(first);
        assert_eq!((a.used(), b.used(), process.used()), (0, 40, 40));
        drop(second);
        assert_eq!(process.used(), 0);
    }

    #[test]
    fn returned_bytes_wake_the_watchers() {
        let process = PartialBudget::new(10, Gauge::default());
        let conn = PartialBudget::new(10, Gauge::default());
        let held = Reservation::take(&conn, &process, 10).expect("fits");
        let waker = Arc::new(AtomicWaker::new());
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        waker.register(&futures::task::waker(Arc::new(Counter(Arc::clone(&woken)))));
        process.watch(&waker);
        drop(held);
        assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 1);
        process.unwatch(&waker);
        waker.register(&futures::task::waker(Arc::new(Counter(Arc::clone(&woken)))));
        drop(Reservation::take(&conn, &process, 1));
        assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 1, "no longer watching");
    }

    struct Counter(Arc<std::sync::atomic::AtomicUsize>);

    impl futures::task::ArcWake for Counter {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
