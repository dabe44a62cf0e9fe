//! Unit tests of the impairment model with a fake clock: one real `Instant` as the
//! origin, every other time an offset from it.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn link(spec: &str, seed: u64) -> Impairment<u64> {
    Impairment::new(DirectionSettings::parse(spec).unwrap(), seed).unwrap()
}

/// Feeds `n` packets of `len` bytes, one every `gap`, and returns the verdicts.
fn feed(imp: &mut Impairment<u64>, t0: Instant, n: u64, len: usize, gap: Duration) -> Vec<Verdict> {
    (0..n).map(|i| imp.handle_packet(t0 + gap * i as u32, len, i)).collect()
}

/// Like `feed`, but takes due packets out as it goes (as the relay does), so long
/// runs do not hit `limit`.
fn feed_draining(imp: &mut Impairment<u64>, t0: Instant, n: u64, gap: Duration) -> Vec<Verdict> {
    (0..n)
        .map(|i| {
            let now = t0 + gap * i as u32;
            while imp.poll_release(now).is_some() {}
            imp.handle_packet(now, 100, i)
        })
        .collect()
}

fn release_times(verdicts: &[Verdict]) -> Vec<Instant> {
    verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Scheduled(t) => Some(*t),
            Verdict::Dropped(_) => None,
        })
        .collect()
}

#[test]
fn delay_is_exact() {
    let t0 = Instant::now();
    let mut imp = link("delay=25ms", 1);
    assert_eq!(imp.handle_packet(t0, 100, 1), Verdict::Scheduled(t0 + 25 * MS));
    assert_eq!(imp.handle_packet(t0 + MS, 100, 2), Verdict::Scheduled(t0 + 26 * MS));
    assert_eq!(imp.poll_timeout(), Some(t0 + 25 * MS));
    assert_eq!(imp.poll_release(t0 + 25 * MS - Duration::from_nanos(1)), None);
    assert_eq!(imp.poll_release(t0 + 25 * MS), Some(1));
    assert_eq!(imp.poll_release(t0 + 25 * MS), None);
    assert_eq!(imp.poll_timeout(), Some(t0 + 26 * MS));
    assert_eq!(imp.poll_release(t0 + 30 * MS), Some(2));
    assert_eq!(imp.poll_timeout(), None);
    let s = imp.stats();
    assert_eq!((s.received, s.released, s.released_bytes, s.dropped()), (2, 2, 200, 0));
}

#[test]
fn rate_spaces_a_burst() {
    let t0 = Instant::now();
    // 1250 bytes at 10 Mbit/s take exactly 1 ms on the wire.
    let mut imp = link("rate=10mbit,delay=5ms", 1);
    let times = release_times(&feed(&mut imp, t0, 10, 1250, Duration::ZERO));
    let expected: Vec<Instant> = (1..=10).map(|i| t0 + 5 * MS + MS * i).collect();
    assert_eq!(times, expected);
    // After the link went idle, a packet waits only for its own serialization.
    let later = t0 + 100 * MS;
    assert_eq!(imp.handle_packet(later, 125, 99), Verdict::Scheduled(later + 5 * MS + Duration::from_micros(100)));
}

#[test]
fn queue_drops_beyond_its_bound() {
    let t0 = Instant::now();
    // 1000 bytes at 1 Mbit/s take 8 ms; the queue holds ten of them.
    let mut imp = link("rate=1mbit,queue=10000", 1);
    let verdicts = feed(&mut imp, t0, 20, 1000, Duration::ZERO);
    assert!(verdicts[..10].iter().all(|v| matches!(v, Verdict::Scheduled(_))), "{verdicts:?}");
    assert!(verdicts[10..].iter().all(|v| *v == Verdict::Dropped(DropReason::QueueFull)), "{verdicts:?}");
    // One packet has left the serializer after 8 ms: exactly one more fits.
    assert!(matches!(imp.handle_packet(t0 + 8 * MS, 1000, 20), Verdict::Scheduled(_)));
    assert_eq!(imp.handle_packet(t0 + 8 * MS, 1000, 21), Verdict::Dropped(DropReason::QueueFull));
    assert_eq!(imp.stats().dropped_queue, 11);
    // The packets held all come out, in order, by the time the backlog has drained.
    let out: Vec<u64> = std::iter::from_fn(|| imp.poll_release(t0 + 200 * MS)).collect();
    assert_eq!(out, (0..10).chain([20]).collect::<Vec<u64>>());
}

#[test]
fn limit_bounds_the_delay_line() {
    let t0 = Instant::now();
    let mut imp = link("delay=1s,limit=3", 1);
    let verdicts = feed(&mut imp, t0, 5, 100, MS);
    assert_eq!(verdicts[3..], [Verdict::Dropped(DropReason::Limit); 2]);
    assert_eq!(imp.held_packets(), 3);
}

#[test]
fn random_loss_matches_the_setting() {
    let t0 = Instant::now();
    let mut imp = link("loss=5%", 42);
    let n = 100_000;
    feed_draining(&mut imp, t0, n, Duration::from_micros(10));
    let rate = imp.stats().lost_random as f64 / n as f64;
    eprintln!("loss=5%: measured {rate:.4} over {n} packets");
    assert!((rate - 0.05).abs() < 0.003, "measured loss {rate}");
    assert_eq!(imp.stats().dropped(), imp.stats().lost_random);
}

#[test]
fn gilbert_elliott_loss_and_burst_length() {
    let t0 = Instant::now();
    let mut imp = link("ge=p:0.01,r:0.3,h:1.0,k:0", 42);
    let n = 100_000;
    let verdicts = feed_draining(&mut imp, t0, n, Duration::from_micros(10));
    let lost: Vec<bool> = verdicts.iter().map(|v| matches!(v, Verdict::Dropped(DropReason::BurstLoss))).collect();
    let rate = lost.iter().filter(|l| **l).count() as f64 / n as f64;
    let expected = 0.01 / 0.31;
    assert!((rate - expected).abs() < 0.004, "measured loss {rate}, expected {expected}");
    let bursts = lost.windows(2).filter(|w| w[1] && !w[0]).count() + usize::from(lost[0]);
    let mean_burst = lost.iter().filter(|l| **l).count() as f64 / bursts as f64;
    eprintln!(
        "GE p=0.01 r=0.3: loss {rate:.4} (expected {expected:.4}), mean burst {mean_burst:.3} over {bursts} bursts"
    );
    assert!((mean_burst - 1.0 / 0.3).abs() < 0.3, "mean burst {mean_burst}, expected {}", 1.0 / 0.3);
    // Random loss alone hardly makes bursts: the contrast is the point of GE.
    let mut random = link("loss=3.2%", 42);
    let lost: Vec<bool> =
        feed_draining(&mut random, t0, n, MS).iter().map(|v| matches!(v, Verdict::Dropped(_))).collect();
    let bursts = lost.windows(2).filter(|w| w[1] && !w[0]).count();
    let mean = lost.iter().filter(|l| **l).count() as f64 / bursts as f64;
    assert!(mean < 1.1, "random loss mean burst {mean}");
}

#[test]
fn seeded_runs_repeat() {
    let t0 = Instant::now();
    let spec = "delay=10ms,jitter=5ms,loss=10%,ge=p:0.05,r:0.5";
    let run = |seed| feed(&mut link(spec, seed), t0, 2000, 500, Duration::from_micros(300));
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn jitter_keeps_order_by_default() {
    let t0 = Instant::now();
    let mut imp = link("delay=20ms,jitter=5ms", 3);
    let verdicts = feed(&mut imp, t0, 1000, 100, Duration::from_micros(100));
    let times = release_times(&verdicts);
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "release times must be monotonic");
    for (i, t) in times.iter().enumerate() {
        let delay = *t - (t0 + Duration::from_micros(100) * i as u32);
        assert!((15 * MS..=25 * MS).contains(&delay), "packet {i}: delay {delay:?}");
    }
    let distinct = times.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(distinct > 100, "jitter must vary the delay ({distinct} distinct steps)");
    let out: Vec<u64> = std::iter::from_fn(|| imp.poll_release(t0 + 10 * 1000 * MS)).collect();
    assert_eq!(out, (0..1000).collect::<Vec<u64>>());
}

#[test]
fn jitter_reorders_when_allowed() {
    let t0 = Instant::now();
    let mut imp = link("delay=20ms,jitter=5ms,reorder=on", 3);
    feed(&mut imp, t0, 1000, 100, Duration::from_micros(100));
    let out: Vec<u64> = std::iter::from_fn(|| imp.poll_release(t0 + 10 * 1000 * MS)).collect();
    assert_eq!(out.len(), 1000);
    let inversions = out.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(inversions > 100, "only {inversions} inversions");
}

#[test]
fn new_settings_keep_held_packets() {
    let t0 = Instant::now();
    let mut imp = link("delay=50ms", 1);
    imp.handle_packet(t0, 100, 1);
    imp.set_settings(DirectionSettings::parse("delay=0ms,loss=100%").unwrap()).unwrap();
    assert_eq!(imp.handle_packet(t0, 100, 2), Verdict::Dropped(DropReason::RandomLoss));
    assert_eq!(imp.poll_release(t0 + 50 * MS), Some(1));
    let bad = DirectionSettings { jitter: MS, ..Default::default() };
    assert!(imp.set_settings(bad).is_err());
    assert_eq!(imp.settings().loss, 1.0);
}
