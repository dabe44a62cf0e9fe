//! Open-loop request schedules, pure: when request `i` is due, which worker
//! sends it, and from which instant its latency is measured.
//!
//! Coordinated omission: a closed-loop client that waits for each answer
//! before sending the next one stops *offering* load exactly when the system
//! stalls, and the stall vanishes from the figures. Here every request has an
//! intended send time fixed in advance (`i / rate`), and a request that
//! could not go out on time because its connection was still busy with
//! earlier ones is measured from its intended time, so the queueing the
//! system caused is counted. Timer slack of the load generator itself (tokio
//! timers have 1 ms granularity) is not the system's fault: a request whose
//! connection was idle at its intended time is measured from when it was
//! actually sent.

use std::time::Duration;

/// Offset of request `i` from the start at `rate` requests per second.
pub fn intended_offset(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// Total requests for `secs` seconds at `rate`, capped at `max`.
pub fn total_requests(rate: f64, secs: f64, max: u64) -> u64 {
    ((rate * secs).floor() as u64).min(max)
}

/// The instant (as an offset from the start) a request's latency is
/// measured from. `intended`: its scheduled time; `prev_done`: when the
/// previous request on the same connection completed; `sent`: when it was
/// actually sent.
pub fn measure_origin(intended: Duration, prev_done: Duration, sent: Duration) -> Duration {
    if prev_done > intended {
        // The connection was busy: the wait is queueing the system caused.
        intended
    } else {
        // Idle at the due time: any delay is the generator's timer.
        sent.max(intended)
    }
}

/// The requests worker `k` of `workers` sends: `k, k + workers, ...` below `total`.
pub fn worker_requests(k: usize, workers: usize, total: u64) -> impl Iterator<Item = u64> {
    (k as u64..total).step_by(workers.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn offsets_follow_the_rate() {
        assert_eq!(intended_offset(0, 2000.0), Duration::ZERO);
        assert_eq!(intended_offset(2000, 2000.0), Duration::from_secs(1));
        assert_eq!(intended_offset(3, 1000.0), ms(3));
    }

    #[test]
    fn totals_are_bounded() {
        assert_eq!(total_requests(2000.0, 1.5, u64::MAX), 3000);
        assert_eq!(total_requests(2000.0, 100.0, 5000), 5000);
        assert_eq!(total_requests(0.5, 1.0, 10), 0);
    }

    #[test]
    fn busy_connection_measures_from_intended_time() {
        // Due at 10 ms, the previous answer came at 25 ms, sent at 25 ms.
        assert_eq!(measure_origin(ms(10), ms(25), ms(25)), ms(10));
    }

    #[test]
    fn idle_connection_excludes_timer_slack() {
        // Due at 10 ms, idle since 4 ms, the timer fired at 11 ms.
        assert_eq!(measure_origin(ms(10), ms(4), ms(11)), ms(11));
        // A timer that fires early never shortens the measured time.
        assert_eq!(measure_origin(ms(10), ms(4), ms(9)), ms(10));
    }

    #[test]
    fn workers_share_requests_round_robin() {
        let w0: Vec<u64> = worker_requests(0, 3, 8).collect();
        let w2: Vec<u64> = worker_requests(2, 3, 8).collect();
        assert_eq!(w0, vec![0, 3, 6]);
        assert_eq!(w2, vec![2, 5]);
        let all: u64 = (0..3).map(|k| worker_requests(k, 3, 8).count() as u64).sum();
        assert_eq!(all, 8);
        assert_eq!(worker_requests(5, 3, 4).count(), 0);
    }
}
