//! konnq's BBR-style congestion controller for quinn (`quic.congestion-control
//! = "bbr"`).
//!
//! quinn paces every connection at 1.25 × window / smoothed RTT whatever the
//! controller, so the congestion window is the one lever a controller has.
//! This controller keeps the window at the path's bandwidth-delay product
//! (bottleneck bandwidth × minimum RTT), plus what ack aggregation needs, with
//! BBR's probing cycle on top. quinn's own BBR sets its window to 2–3 × its
//! BDP estimate and estimates the bandwidth from per-packet send and ack gaps,
//! which overshoots: a single bulk stream then holds a standing queue of up
//! to a BDP at the bottleneck, and every other stream of the connection (a
//! ping, a `kubectl exec` keystroke) waits behind it.
//!
//! The model:
//! - **Delivery rate** is sampled per acknowledged packet as in TCP's rate
//!   sampling: bytes delivered between the packet's send and its ack over
//!   the longer of the send and ack intervals; the bottleneck bandwidth is
//!   the maximum sample of the last [`BW_WINDOW_ROUNDS`] round trips.
//! - **Minimum RTT** is the smallest ack RTT (no ack-delay correction) seen
//!   within [`MIN_RTT_WINDOW`]. An RTT within 1/16 of it also counts as
//!   fresh: only a queue standing for the whole window makes the
//!   controller drain in `ProbeRtt` (window ½ BDP for [`PROBE_RTT_TIME`]).
//! - **Startup** grows the window like slow start until the bandwidth stops
//!   growing by 25% for 3 round trips (a round in which the sender ran out
//!   of data counts only if a queue stood at the bottleneck all round: a
//!   receive window above the bandwidth-delay product keeps the sender
//!   short of data, and startup must still end); **Drain** then lets the
//!   queue that startup built empty; **ProbeBw** cycles the window gain through
//!   1.25, 0.75 and six rounds of 1.0.
//! - **Loss** does not shrink the window: random loss is not congestion.
//!   A round trip that loses more than [`HIGH_LOSS`] of what it sent
//!   lowers the bandwidth estimate by 15% (the bottleneck is overfilled or
//!   shared), and persistent congestion restarts the model from scratch.
//! - **Ack aggregation** (acks arriving in bursts, e.g. from a receiver that
//!   is not scheduled) is measured as the bytes acked beyond what the
//!   bandwidth explains and added to the window, as Linux's BBR does.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};

/// Window gain while searching for the bottleneck bandwidth (2 / ln 2).
const STARTUP_GAIN: f64 = 2.885;
/// Window gains of the eight phases of a bandwidth-probing cycle.
const PROBE_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Round trips the bottleneck bandwidth estimate remembers.
const BW_WINDOW_ROUNDS: usize = 10;
/// Round trips the ack aggregation estimate remembers.
const EXTRA_ACKED_WINDOW_ROUNDS: usize = 5;
/// How long a minimum RTT stays valid without a sample near it.
pub const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// How long `ProbeRtt` holds the window down once the queue is empty.
pub const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// Startup ends after this many round trips without this much growth.
const FULL_BW_GROWTH: f64 = 1.25;
const FULL_BW_ROUNDS: u32 = 3;
/// Loss fraction of a round trip that is taken as congestion.
pub const HIGH_LOSS: f64 = 0.2;
/// The window never goes below this many packets.
const MIN_WINDOW_PACKETS: u64 = 4;
/// Extra packets of window for send/ack quantisation (GSO batches, acks of
/// every second packet).
const QUANTUM_PACKETS: u64 = 3;
/// However short the path, the window covers this much time at the
/// bottleneck rate: on a loopback or LAN path the RTT is dominated by
/// scheduling, not by the wire, and a window of a few microseconds of data
/// would starve the connection. At 1 Gbit/s this is 250 kB.
const MIN_WINDOW_TIME: Duration = Duration::from_millis(2);
/// Ack aggregation allowance is capped at this much time of data.
const MAX_EXTRA_ACKED_TIME: Duration = Duration::from_millis(100);

/// Builds [`Bbr`] controllers for quinn.
#[derive(Debug, Clone)]
pub struct BbrConfig {
    /// Window before anything is known about the path, in bytes.
    pub initial_window: u64,
}

impl Default for BbrConfig {
    fn default() -> Self {
        // RFC 9002 §7.2: min(10 × max_datagram_size, max(2 × max_datagram_size, 14720)).
        BbrConfig { initial_window: 14_720 }
    }
}

impl ControllerFactory for BbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Bbr::new(self.initial_window, current_mtu, now))
    }
}

/// Where the controller is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Startup,
    Drain,
    ProbeBw,
    ProbeRtt,
}

/// What the controller knew when a batch of packets was sent, to turn its
/// acknowledgement into a delivery-rate sample.
#[derive(Debug, Clone, Copy)]
struct Sent {
    time: Instant,
    /// Bytes delivered (acked) when it was sent.
    delivered: u64,
    /// When `delivered` last grew, as of the send.
    delivered_time: Instant,
    /// Send time of the newest packet acked as of the send.
    first_sent_time: Instant,
    app_limited: bool,
}

/// Maximum over the `N` round trips up to the latest update, one slot per
/// round. Rounds without an update do not age it: an estimate survives a
/// quiet (app-limited) period, as in Linux's BBR, instead of decaying to
/// what an idle connection delivers.
#[derive(Debug, Clone)]
struct RoundMax<const N: usize> {
    slots: [(u64, u64); N],
    latest: u64,
}

impl<const N: usize> Default for RoundMax<N> {
    fn default() -> Self {
        RoundMax { slots: [(0, 0); N], latest: 0 }
    }
}

impl<const N: usize> RoundMax<N> {
    fn update(&mut self, round: u64, value: u64) {
        self.latest = self.latest.max(round);
        let slot = &mut self.slots[(round % N as u64) as usize];
        if slot.0 != round {
            *slot = (round, value);
        } else if value > slot.1 {
            slot.1 = value;
        }
    }

    fn get(&self) -> u64 {
        self.slots.iter().filter(|(r, _)| *r + N as u64 > self.latest).map(|(_, v)| *v).max().unwrap_or(0)
    }

    fn scale(&mut self, factor: f64) {
        for slot in &mut self.slots {
            slot.1 = (slot.1 as f64 * factor) as u64;
        }
    }

    fn clear(&mut self) {
        *self = RoundMax::default();
    }
}

/// The acks of one ACK frame, gathered until `on_end_acks`.
#[derive(Debug, Default, Clone, Copy)]
struct Batch {
    acked: u64,
    /// The newest-sent acked packet's send record.
    newest: Option<Sent>,
    min_rtt: Option<Duration>,
}

/// konnq's BBR-style controller; see the module documentation.
#[derive(Debug, Clone)]
pub struct Bbr {
    mtu: u64,
    initial_window: u64,
    window: u64,
    mode: Mode,

    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    in_flight: u64,
    app_limited: bool,
    sent: VecDeque<Sent>,
    batch: Batch,

    round: u64,
    next_round_delivered: u64,
    round_delivered_start: u64,
    round_lost: u64,
    /// The smallest RTT sample of the current round.
    round_min_rtt: Option<Duration>,

    bw: RoundMax<BW_WINDOW_ROUNDS>,
    min_rtt: Option<Duration>,
    min_rtt_stamp: Instant,
    probe_rtt_min: Option<Duration>,
    probe_rtt_done: Option<Instant>,

    full_bw: u64,
    full_bw_rounds: u32,
    filled_pipe: bool,
    cycle_index: usize,
    cycle_stamp: Instant,

    extra_acked: RoundMax<EXTRA_ACKED_WINDOW_ROUNDS>,
    ack_epoch_start: Instant,
    ack_epoch_acked: u64,
}

/// Bound on remembered send records (about 10 GB in flight at GSO batch
/// size); beyond it the oldest are forgotten and their acks give no sample.
const MAX_SENT_RECORDS: usize = 1 << 16;

impl Bbr {
    pub fn new(initial_window: u64, mtu: u16, now: Instant) -> Bbr {
        let mtu = u64::from(mtu);
        Bbr {
            mtu,
            initial_window,
            window: initial_window.max(MIN_WINDOW_PACKETS * mtu),
            mode: Mode::Startup,
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            in_flight: 0,
            app_limited: false,
            sent: VecDeque::new(),
            batch: Batch::default(),
            round: 0,
            next_round_delivered: 0,
            round_delivered_start: 0,
            round_lost: 0,
            bw: RoundMax::default(),
            min_rtt: None,
            min_rtt_stamp: now,
            probe_rtt_min: None,
            probe_rtt_done: None,
            round_min_rtt: None,
            full_bw: 0,
            full_bw_rounds: 0,
            filled_pipe: false,
            cycle_index: 0,
            cycle_stamp: now,
            extra_acked: RoundMax::default(),
            ack_epoch_start: now,
            ack_epoch_acked: 0,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Bottleneck bandwidth estimate, bytes per second.
    pub fn bandwidth(&self) -> u64 {
        self.bw.get()
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    fn min_window(&self) -> u64 {
        MIN_WINDOW_PACKETS * self.mtu
    }

    /// `gain` × bandwidth × min RTT, in bytes; `None` before the first sample.
    fn bdp(&self, gain: f64) -> Option<u64> {
        let bw = self.bandwidth();
        let rtt = self.min_rtt?;
        if bw == 0 {
            return None;
        }
        Some((gain * bw as f64 * rtt.as_secs_f64()) as u64)
    }

    /// The window for `gain`: `gain` × BDP, at least [`MIN_WINDOW_TIME`]
    /// of data, plus send/ack quantisation; `None` before the first sample.
    fn window_target(&self, gain: f64) -> Option<u64> {
        let bdp = self.bdp(gain)?;
        Some(bdp.max(bytes_in(self.bandwidth(), MIN_WINDOW_TIME)) + QUANTUM_PACKETS * self.mtu)
    }

    /// The window of a steady (gain 1) phase.
    fn steady_target(&self) -> Option<u64> {
        self.window_target(1.0)
    }

    /// A packet batch went out (`bytes` in total, all at `now`).
    pub fn sent(&mut self, now: Instant, bytes: u64) {
        if self.in_flight == 0 {
            // Nothing in flight: the next rate sample starts now, not at
            // the last ack before an idle period.
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        self.in_flight += bytes;
        if self.sent.back().is_some_and(|s| s.time == now) {
            return;
        }
        if self.sent.len() == MAX_SENT_RECORDS {
            self.sent.pop_front();
        }
        self.sent.push_back(Sent {
            time: now,
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            app_limited: self.app_limited,
        });
    }

    /// A packet sent at `sent_at` was acknowledged.
    pub fn acked(&mut self, now: Instant, sent_at: Instant, bytes: u64, app_limited: bool) {
        self.app_limited = app_limited;
        self.delivered += bytes;
        self.delivered_time = now;
        self.in_flight = self.in_flight.saturating_sub(bytes);
        self.batch.acked += bytes;
        let rtt = now.saturating_duration_since(sent_at);
        self.batch.min_rtt = Some(self.batch.min_rtt.map_or(rtt, |m| m.min(rtt)));
        if let Ok(i) = self.sent.binary_search_by(|s| s.time.cmp(&sent_at)) {
            let record = self.sent[i];
            if self.batch.newest.is_none_or(|n| record.time >= n.time) {
                self.batch.newest = Some(record);
            }
            self.first_sent_time = self.first_sent_time.max(record.time);
        }
    }

    /// Packets carrying `bytes` were declared lost.
    pub fn lost(&mut self, bytes: u64) {
        self.round_lost += bytes;
        self.in_flight = self.in_flight.saturating_sub(bytes);
    }

    /// Everything the path was holding is gone: start over.
    pub fn persistent_congestion(&mut self, now: Instant) {
        self.bw.clear();
        self.extra_acked.clear();
        self.full_bw = 0;
        self.full_bw_rounds = 0;
        self.filled_pipe = false;
        self.mode = Mode::Startup;
        self.window = self.min_window();
        self.ack_epoch_start = now;
        self.ack_epoch_acked = 0;
    }

    /// The acks of one ACK frame are in; `in_flight` is quinn's count.
    pub fn end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool) {
        self.in_flight = in_flight;
        self.app_limited = app_limited;
        let batch = std::mem::take(&mut self.batch);

        if let Some(rtt) = batch.min_rtt {
            self.update_min_rtt(now, rtt);
            self.round_min_rtt = Some(self.round_min_rtt.map_or(rtt, |m| m.min(rtt)));
        }

        let mut round_start = false;
        if let Some(record) = batch.newest {
            if record.delivered >= self.next_round_delivered {
                self.next_round_delivered = self.delivered;
                self.round += 1;
                round_start = true;
            }
            self.sample_rate(now, &record, app_limited);
            // Older records belong to packets acked already or lost.
            while self.sent.front().is_some_and(|s| s.time < record.time) {
                self.sent.pop_front();
            }
        }
        if round_start {
            self.end_round(app_limited);
        }
        if batch.acked > 0 {
            self.update_ack_aggregation(now, batch.acked);
        }
        self.update_mode(now, in_flight);
        self.update_window(batch.acked);
    }

    fn sample_rate(&mut self, now: Instant, record: &Sent, app_limited: bool) {
        let send_elapsed = record.time.saturating_duration_since(record.first_sent_time);
        let ack_elapsed = now.saturating_duration_since(record.delivered_time);
        let interval = send_elapsed.max(ack_elapsed);
        // A sample over less than the minimum RTT is ack compression, not
        // the path's rate.
        if interval.is_zero() || self.min_rtt.is_some_and(|m| interval < m) {
            return;
        }
        let bytes = self.delivered - record.delivered;
        let rate = (bytes as f64 / interval.as_secs_f64()) as u64;
        if !(app_limited || record.app_limited) || rate >= self.bandwidth() {
            self.bw.update(self.round, rate);
        }
    }

    fn end_round(&mut self, app_limited: bool) {
        let delivered = self.delivered - self.round_delivered_start;
        let lost = self.round_lost;
        self.round_delivered_start = self.delivered;
        self.round_lost = 0;
        // Every ack of the round came back a quarter above the path's
        // minimum RTT: a queue stood at the bottleneck all round, so the
        // pipe was full even if the sender ran out of data to send. That
        // happens when the receiver's flow-control window, not the
        // sender's data, is what runs out, and that window is larger than
        // the bandwidth-delay product: such rounds are app-limited, and
        // without them startup would never end.
        let queued = match (self.round_min_rtt.take(), self.min_rtt) {
            (Some(round), Some(min)) => round >= min + min / 4,
            _ => false,
        };
        if self.filled_pipe && lost > 0 && lost as f64 > HIGH_LOSS * (lost + delivered) as f64 {
            self.bw.scale(0.85);
        }
        if !self.filled_pipe && (!app_limited || queued) {
            let bw = self.bandwidth();
            if bw as f64 >= self.full_bw as f64 * FULL_BW_GROWTH {
                self.full_bw = bw;
                self.full_bw_rounds = 0;
            } else {
                self.full_bw_rounds += 1;
                if self.full_bw_rounds >= FULL_BW_ROUNDS {
                    self.filled_pipe = true;
                }
            }
        }
    }

    fn update_min_rtt(&mut self, now: Instant, rtt: Duration) {
        if self.mode == Mode::ProbeRtt {
            self.probe_rtt_min = Some(self.probe_rtt_min.map_or(rtt, |m| m.min(rtt)));
        }
        match self.min_rtt {
            None => {
                self.min_rtt = Some(rtt);
                self.min_rtt_stamp = now;
            }
            Some(min) if rtt < min => {
                self.min_rtt = Some(rtt);
                self.min_rtt_stamp = now;
            }
            // Near the floor: the path has no standing queue.
            Some(min) if rtt <= min + min / 16 => self.min_rtt_stamp = now,
            Some(_) => {}
        }
    }

    fn update_ack_aggregation(&mut self, now: Instant, acked: u64) {
        let bw = self.bandwidth();
        if bw == 0 {
            return;
        }
        let mut expected = bytes_in(bw, now.saturating_duration_since(self.ack_epoch_start));
        if self.ack_epoch_acked <= expected {
            // The acks caught up with the bandwidth: a new epoch starts now.
            self.ack_epoch_start = now;
            self.ack_epoch_acked = 0;
            expected = 0;
        }
        self.ack_epoch_acked += acked;
        let extra = self.ack_epoch_acked.saturating_sub(expected).min(self.window);
        self.extra_acked.update(self.round, extra);
    }

    fn update_mode(&mut self, now: Instant, in_flight: u64) {
        let rtt = self.min_rtt.unwrap_or(Duration::from_millis(1));
        match self.mode {
            Mode::Startup if self.filled_pipe => self.mode = Mode::Drain,
            Mode::Drain if self.steady_target().is_none_or(|t| in_flight <= t) => self.enter_probe_bw(now),
            Mode::ProbeBw => {
                let gain = PROBE_GAINS[self.cycle_index];
                let phase_over = now.saturating_duration_since(self.cycle_stamp) > rtt;
                let target = self.steady_target().unwrap_or(0);
                let advance = if gain > 1.0 {
                    // Probe until a round trip has passed with the extra
                    // data actually in flight.
                    phase_over && in_flight >= self.bdp(gain).unwrap_or(0)
                } else if gain < 1.0 {
                    // Drain what probing queued; done once in flight is
                    // back to one BDP.
                    phase_over || in_flight <= target
                } else {
                    phase_over
                };
                if advance {
                    self.cycle_index = (self.cycle_index + 1) % PROBE_GAINS.len();
                    self.cycle_stamp = now;
                }
            }
            Mode::ProbeRtt => {
                let low = self.probe_rtt_window();
                match self.probe_rtt_done {
                    None if in_flight <= low => self.probe_rtt_done = Some(now + PROBE_RTT_TIME.max(rtt)),
                    Some(done) if now >= done => {
                        if let Some(m) = self.probe_rtt_min.take() {
                            self.min_rtt = Some(m);
                        }
                        self.min_rtt_stamp = now;
                        self.probe_rtt_done = None;
                        if self.filled_pipe {
                            self.enter_probe_bw(now);
                        } else {
                            self.mode = Mode::Startup;
                        }
                    }
                    _ => {}
                }
                return;
            }
            _ => {}
        }
        if self.filled_pipe && now.saturating_duration_since(self.min_rtt_stamp) > MIN_RTT_WINDOW {
            self.mode = Mode::ProbeRtt;
            self.probe_rtt_min = None;
            self.probe_rtt_done = None;
        }
    }

    fn enter_probe_bw(&mut self, now: Instant) {
        self.mode = Mode::ProbeBw;
        // Start in a steady phase (not the probing one) at a random point,
        // so that flows sharing a bottleneck do not probe in step.
        self.cycle_index = 2 + fastrand::usize(0..PROBE_GAINS.len() - 2);
        self.cycle_stamp = now;
    }

    fn probe_rtt_window(&self) -> u64 {
        self.bdp(0.5).unwrap_or(0).max(self.min_window())
    }

    fn update_window(&mut self, acked: u64) {
        if self.mode == Mode::ProbeRtt {
            self.window = self.window.min(self.probe_rtt_window());
            return;
        }
        let gain = match self.mode {
            Mode::Startup => STARTUP_GAIN,
            Mode::Drain => 1.0,
            _ => PROBE_GAINS[self.cycle_index],
        };
        let Some(mut target) = self.window_target(gain) else {
            // No model yet: slow start.
            self.window += acked;
            return;
        };
        if self.filled_pipe {
            target += self.extra_acked.get().min(bytes_in(self.bandwidth(), MAX_EXTRA_ACKED_TIME));
            self.window = target.min(self.window + acked);
            if self.mode == Mode::Drain || PROBE_GAINS[self.cycle_index] < 1.0 {
                // Shrink at once so the queue actually drains.
                self.window = target;
            }
        } else if self.window < target || self.delivered < self.initial_window {
            self.window += acked;
        }
        self.window = self.window.max(self.min_window());
    }
}

/// Bytes sent at `bw` bytes/s in `time`.
fn bytes_in(bw: u64, time: Duration) -> u64 {
    (bw as f64 * time.as_secs_f64()) as u64
}

impl Controller for Bbr {
    fn on_sent(&mut self, now: Instant, bytes: u64, _last_packet_number: u64) {
        self.sent(now, bytes);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, _rtt: &quinn_proto::RttEstimator) {
        self.acked(now, sent, bytes, app_limited);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, _largest: Option<u64>) {
        self.end_acks(now, in_flight, app_limited);
    }

    fn on_congestion_event(&mut self, now: Instant, _sent: Instant, persistent: bool, lost_bytes: u64) {
        self.lost(lost_bytes);
        if persistent {
            self.persistent_congestion(now);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.window = self.window.max(self.min_window());
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.window;
        m.pacing_rate = Some(self.bandwidth() * 8);
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.initial_window
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};

    use super::*;

    /// A path for the simulation: one bottleneck with a drop-tail queue,
    /// fixed one-way delays, random loss before the queue; acks are never
    /// lost.
    #[derive(Clone, Copy)]
    struct Path {
        rate: f64,
        one_way: Duration,
        queue: u64,
        loss: f64,
        /// What the application offers, bytes/s; `None`: always has data.
        offered: Option<f64>,
        /// The receiver's flow-control window: most bytes sent and not yet
        /// acknowledged (the receiver reads at once); `None`: unlimited.
        flow_window: Option<u64>,
    }

    #[derive(Default, Debug)]
    struct Outcome {
        goodput: f64,
        mean_queue_delay: Duration,
        overflow_drops: u64,
        mode: Option<Mode>,
        window: u64,
    }

    const MTU: u16 = 1200;
    const STEP: Duration = Duration::from_micros(100);

    /// Runs a bulk sender controlled by `Bbr` over `path` (changed to
    /// `later` at `change_at`, if given) with quinn's pacing rule
    /// (1.25 × window per smoothed RTT) and packet-threshold loss
    /// detection; figures cover the last `measure` of `total` (sim time).
    fn simulate(path: Path, later: &[(Duration, Path)], total: Duration, measure: Duration) -> Outcome {
        let start = Instant::now();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut cc = Bbr::new(BbrConfig::default().initial_window, MTU, start);
        let size = u64::from(MTU);
        let mut next_pn = 0u64;
        let mut unacked: BTreeMap<u64, Instant> = BTreeMap::new();
        let mut in_flight = 0u64;
        let mut srtt: Option<Duration> = None;
        let mut tokens = 10.0 * size as f64;
        let mut app_credit = 0.0f64;
        let mut app_limited = false;
        // (arrival time, pn) on the forward wire after the queue; queue; acks.
        let mut queue: VecDeque<u64> = VecDeque::new();
        let mut queued_bytes = 0u64;
        let mut serve_credit = 0.0f64;
        let mut wire: VecDeque<(Instant, u64)> = VecDeque::new();
        let mut acks: VecDeque<(Instant, Vec<u64>)> = VecDeque::new();
        let mut received_since_ack: Vec<u64> = Vec::new();
        let mut out = Outcome::default();
        let (mut delivered_measured, mut queue_delay_sum, mut samples) = (0u64, 0.0f64, 0u64);
        let steps = (total.as_micros() / STEP.as_micros()) as u64;
        let measure_from = start + total - measure;
        let mut p = path;
        for i in 0..steps {
            let now = start + STEP * i as u32;
            for (at, q) in later {
                if now >= start + *at {
                    p = *q;
                }
            }
            let measuring = now >= measure_from;
            // Acks arriving at the sender.
            while acks.front().is_some_and(|(t, _)| *t <= now) {
                let (_, pns) = acks.pop_front().unwrap();
                let mut largest = 0;
                for pn in pns {
                    if let Some(sent) = unacked.remove(&pn) {
                        in_flight -= size;
                        cc.acked(now, sent, size, app_limited);
                        let rtt = now - sent;
                        srtt = Some(srtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
                    }
                    largest = largest.max(pn);
                }
                let lost: Vec<u64> = unacked.range(..largest.saturating_sub(2)).map(|(pn, _)| *pn).collect();
                if !lost.is_empty() {
                    for pn in &lost {
                        unacked.remove(pn);
                        in_flight -= size;
                    }
                    cc.lost(size * lost.len() as u64);
                }
                cc.end_acks(now, in_flight, app_limited);
            }
            // Receiver: packets off the wire, acked every second packet.
            while wire.front().is_some_and(|(t, _)| *t <= now) {
                let (_, pn) = wire.pop_front().unwrap();
                if measuring {
                    delivered_measured += size;
                }
                received_since_ack.push(pn);
                if received_since_ack.len() >= 2 {
                    acks.push_back((now + p.one_way, std::mem::take(&mut received_since_ack)));
                }
            }
            // Bottleneck.
            serve_credit += p.rate * STEP.as_secs_f64();
            while queue.front().is_some() && serve_credit >= size as f64 {
                let pn = queue.pop_front().unwrap();
                queued_bytes -= size;
                serve_credit -= size as f64;
                wire.push_back((now + p.one_way, pn));
            }
            if queue.is_empty() {
                serve_credit = serve_credit.min(size as f64);
            }
            // Sender, paced like quinn.
            let window = cc.window();
            let rtt = srtt.unwrap_or(Duration::from_millis(100));
            tokens = (tokens + 1.25 * window as f64 * STEP.as_secs_f64() / rtt.as_secs_f64())
                .min((window as f64 / 8.0).max(10.0 * size as f64));
            if let Some(offered) = p.offered {
                app_credit = (app_credit + offered * STEP.as_secs_f64()).min(2.0 * size as f64);
            }
            let mut batch = 0;
            let flow_window = p.flow_window.unwrap_or(u64::MAX);
            while in_flight + size <= window && in_flight + size <= flow_window && tokens >= size as f64 {
                if p.offered.is_some() {
                    if app_credit < size as f64 {
                        break;
                    }
                    app_credit -= size as f64;
                }
                tokens -= size as f64;
                let pn = next_pn;
                next_pn += 1;
                unacked.insert(pn, now);
                in_flight += size;
                batch += size;
                if rng.f64() < p.loss {
                    continue;
                }
                if queued_bytes + size > p.queue {
                    if measuring {
                        out.overflow_drops += 1;
                    }
                    continue;
                }
                queue.push_back(pn);
                queued_bytes += size;
            }
            if batch > 0 {
                cc.sent(now, batch);
            }
            // quinn's notion: nothing left to send although the window had
            // room (data blocked by flow control is not sendable either).
            app_limited = (p.offered.is_some() || in_flight + size > flow_window) && in_flight + size <= window;
            if measuring {
                queue_delay_sum += queued_bytes as f64 / p.rate;
                samples += 1;
            }
        }
        out.goodput = delivered_measured as f64 / measure.as_secs_f64();
        out.mean_queue_delay = Duration::from_secs_f64(queue_delay_sum / samples.max(1) as f64);
        out.mode = Some(cc.mode());
        out.window = cc.window();
        out
    }

    fn link(mbit: f64, rtt_ms: u64, loss: f64) -> Path {
        let rate = mbit * 1e6 / 8.0;
        let one_way = Duration::from_millis(rtt_ms) / 2;
        let queue = (rate * one_way.as_secs_f64() * 2.0) as u64; // one BDP
        Path { rate, one_way, queue, loss, offered: None, flow_window: None }
    }

    #[test]
    fn fills_a_clean_path_without_a_standing_queue() {
        let path = link(100.0, 50, 0.0);
        let o = simulate(path, &[], Duration::from_secs(12), Duration::from_secs(8));
        assert!(o.goodput >= 0.9 * path.rate, "goodput {:.1} Mbit/s: {o:?}", o.goodput * 8e-6);
        assert!(o.mean_queue_delay <= Duration::from_millis(8), "{o:?}");
        assert_eq!(o.overflow_drops, 0, "{o:?}");
    }

    #[test]
    fn a_flow_control_window_above_the_bdp_leaves_no_standing_queue() {
        // 100 Mbit/s at 200 ms is 2.5 MB; the receiver allows 4 MiB. The
        // sender is never short of congestion window, so every round is app-limited;
        // startup must still end, or its 2.9 × window lets the 4 MiB sit
        // in flight and 1.7 MB of it queue at the bottleneck (~135 ms).
        let path = Path { flow_window: Some(4 << 20), ..link(100.0, 200, 0.0) };
        let o = simulate(path, &[], Duration::from_secs(20), Duration::from_secs(8));
        assert!(o.goodput >= 0.9 * path.rate, "goodput {:.1} Mbit/s: {o:?}", o.goodput * 8e-6);
        assert!(o.mean_queue_delay <= Duration::from_millis(30), "{o:?}");
        assert_eq!(o.overflow_drops, 0, "{o:?}");
    }

    #[test]
    fn random_loss_does_not_shrink_the_window() {
        for loss in [0.01, 0.05] {
            let path = link(100.0, 50, loss);
            let o = simulate(path, &[], Duration::from_secs(12), Duration::from_secs(8));
            assert!(
                o.goodput >= (0.9 - loss) * path.rate,
                "loss {loss}: goodput {:.1} Mbit/s: {o:?}",
                o.goodput * 8e-6
            );
            assert!(o.mean_queue_delay <= Duration::from_millis(8), "loss {loss}: {o:?}");
        }
    }

    #[test]
    fn a_longer_path_is_learned_within_the_min_rtt_window() {
        // The RTT triples after 5 s; the old minimum is no longer reachable,
        // so it must expire (ProbeRtt) and the window grow to the new BDP.
        let before = link(50.0, 20, 0.0);
        let after = Path { one_way: Duration::from_millis(30), queue: before.queue * 3, ..before };
        let o = simulate(
            before,
            &[(Duration::from_secs(5), after)],
            Duration::from_secs(5) + MIN_RTT_WINDOW + Duration::from_secs(5),
            Duration::from_secs(3),
        );
        assert!(o.goodput >= 0.85 * after.rate, "goodput {:.1} Mbit/s: {o:?}", o.goodput * 8e-6);
    }

    #[test]
    fn bulk_after_a_quiet_period_gets_the_path_back_at_once() {
        // Bulk, then 30 s of a trickle (1 KiB every 100 ms, app-limited),
        // then bulk again: the bandwidth estimate must survive the quiet
        // period instead of shrinking to the trickle's rate.
        let bulk = link(100.0, 50, 0.0);
        let trickle = Path { offered: Some(10_240.0), ..bulk };
        let o = simulate(
            bulk,
            &[(Duration::from_secs(5), trickle), (Duration::from_secs(35), bulk)],
            Duration::from_millis(35_600),
            Duration::from_millis(500),
        );
        assert!(o.goodput >= 0.8 * bulk.rate, "goodput {:.1} Mbit/s: {o:?}", o.goodput * 8e-6);
    }

    #[test]
    fn persistent_congestion_starts_over() {
        let now = Instant::now();
        let mut cc = Bbr::new(14_720, MTU, now);
        cc.sent(now, 12_000);
        cc.acked(now + Duration::from_millis(50), now, 12_000, false);
        cc.end_acks(now + Duration::from_millis(50), 0, false);
        assert!(cc.bandwidth() > 0 && cc.min_rtt().is_some());
        cc.persistent_congestion(now + Duration::from_secs(1));
        assert_eq!(cc.mode(), Mode::Startup);
        assert_eq!(cc.bandwidth(), 0);
        assert_eq!(cc.window(), MIN_WINDOW_PACKETS * u64::from(MTU));
    }

    #[test]
    fn round_max_forgets_after_its_window() {
        let mut m = RoundMax::<10>::default();
        m.update(1, 100);
        m.update(2, 50);
        assert_eq!(m.get(), 100);
        m.update(10, 10);
        assert_eq!(m.get(), 100);
        m.update(11, 20);
        assert_eq!(m.get(), 50, "round 1 is out of the window");
        m.update(12, 5);
        assert_eq!(m.get(), 20);
        m.update(12, 60);
        m.update(12, 30);
        assert_eq!(m.get(), 60);
        m.update(40, 1);
        assert_eq!(m.get(), 1, "everything older than 10 rounds before the latest is gone");
    }
}
