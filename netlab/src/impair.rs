//! The impairment model of one link direction, sans-IO: the caller hands in each
//! packet with its arrival time ([`Impairment::handle_packet`]), asks when the next
//! packet is due ([`Impairment::poll_timeout`]) and takes due packets out
//! ([`Impairment::poll_release`]). Nothing here reads a clock or touches a socket.
//!
//! Per packet, in this order:
//! 1. random loss, then Gilbert–Elliott loss (its chain moves once per packet);
//! 2. `limit`: drop when the direction already holds `limit` packets;
//! 3. drop-tail queue: with a rate, drop when the bytes still waiting for the
//!    serializer (the one being sent included) plus this packet exceed the queue;
//! 4. serialization: `done = max(arrival, link_free_at) + len * 8 / rate`;
//! 5. `release = done + delay ± jitter`; without `reorder` it is raised to the
//!    previous release so packets leave in arrival order (this skews the delay up
//!    a little when jitter exceeds the packet spacing).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::settings::{DirectionSettings, SettingsError};

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Independent random loss (`loss`).
    RandomLoss,
    /// Gilbert–Elliott loss (`ge`).
    BurstLoss,
    /// The drop-tail queue was full (`queue`).
    QueueFull,
    /// The direction already held `limit` packets.
    Limit,
}

/// What became of a packet handed to [`Impairment::handle_packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Held; [`Impairment::poll_release`] gives it back at this instant.
    Scheduled(Instant),
    /// Dropped; the packet value has been dropped too.
    Dropped(DropReason),
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Packets handed in.
    pub received: u64,
    /// Bytes handed in.
    pub received_bytes: u64,
    /// Packets given back by `poll_release`.
    pub released: u64,
    /// Bytes given back by `poll_release`.
    pub released_bytes: u64,
    /// Dropped by random loss.
    pub lost_random: u64,
    /// Dropped by Gilbert–Elliott loss.
    pub lost_burst: u64,
    /// Dropped because the queue was full.
    pub dropped_queue: u64,
    /// Dropped because of the packet limit.
    pub dropped_limit: u64,
}

impl DirectionStats {
    /// All drops, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.lost_random + self.lost_burst + self.dropped_queue + self.dropped_limit
    }
}

/// A packet waiting for its release time. Ordered so that `BinaryHeap` (a max-heap)
/// pops the earliest release first, ties broken by arrival order.
struct Held<T> {
    release: Instant,
    seq: u64,
    len: usize,
    packet: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.release, self.seq) == (other.release, other.seq)
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Held<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.release, other.seq).cmp(&(self.release, self.seq))
    }
}

/// One direction of an impaired link, generic over the packet value `T`.
pub struct Impairment<T> {
    settings: DirectionSettings,
    queue_bytes: Option<u64>,
    rng: fastrand::Rng,
    ge_bad: bool,
    link_free_at: Option<Instant>,
    /// Packets accepted by the serializer and not yet fully sent: (done, len).
    serializing: VecDeque<(Instant, usize)>,
    backlog_bytes: u64,
    last_release: Option<Instant>,
    held: BinaryHeap<Held<T>>,
    next_seq: u64,
    stats: DirectionStats,
}

impl<T> Impairment<T> {
    /// A direction with these settings; the seed makes loss and jitter repeatable.
    pub fn new(settings: DirectionSettings, seed: u64) -> Result<Self, SettingsError> {
        settings.validate()?;
        Ok(Impairment {
            queue_bytes: settings.effective_queue_bytes(),
            settings,
            rng: fastrand::Rng::with_seed(seed),
            ge_bad: false,
            link_free_at: None,
            serializing: VecDeque::new(),
            backlog_bytes: 0,
            last_release: None,
            held: BinaryHeap::new(),
            next_seq: 0,
            stats: DirectionStats::default(),
        })
    }

    /// Replaces the settings; packets already held keep their release times.
    pub fn set_settings(&mut self, settings: DirectionSettings) -> Result<(), SettingsError> {
        settings.validate()?;
        self.queue_bytes = settings.effective_queue_bytes();
        if settings.gilbert_elliott.is_none() {
            self.ge_bad = false;
        }
        self.settings = settings;
        Ok(())
    }

    /// The settings in force.
    pub fn settings(&self) -> &DirectionSettings {
        &self.settings
    }

    /// Counters so far.
    pub fn stats(&self) -> DirectionStats {
        self.stats
    }

    /// Packets currently held (serializing or in the delay line).
    pub fn held_packets(&self) -> usize {
        self.held.len()
    }

    /// Takes in a packet of `len` bytes that arrived at `now`.
    pub fn handle_packet(&mut self, now: Instant, len: usize, packet: T) -> Verdict {
        self.stats.received += 1;
        self.stats.received_bytes += len as u64;
        match self.admit(now, len) {
            Ok(release) => {
                self.held.push(Held { release, seq: self.next_seq, len, packet });
                self.next_seq += 1;
                Verdict::Scheduled(release)
            }
            Err(reason) => {
                match reason {
                    DropReason::RandomLoss => self.stats.lost_random += 1,
                    DropReason::BurstLoss => self.stats.lost_burst += 1,
                    DropReason::QueueFull => self.stats.dropped_queue += 1,
                    DropReason::Limit => self.stats.dropped_limit += 1,
                }
                Verdict::Dropped(reason)
            }
        }
    }

    /// When the next held packet is due, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.held.peek().map(|h| h.release)
    }

    /// The next packet due at or before `now`, if any.
    pub fn poll_release(&mut self, now: Instant) -> Option<T> {
        if self.held.peek()?.release > now {
            return None;
        }
        let held = self.held.pop()?;
        self.stats.released += 1;
        self.stats.released_bytes += held.len as u64;
        Some(held.packet)
    }

    /// Runs the drop decisions and, if the packet survives, returns its release time.
    fn admit(&mut self, now: Instant, len: usize) -> Result<Instant, DropReason> {
        if self.settings.loss > 0.0 && self.rng.f64() < self.settings.loss {
            return Err(DropReason::RandomLoss);
        }
        if self.gilbert_elliott_drops() {
            return Err(DropReason::BurstLoss);
        }
        if self.held.len() >= self.settings.limit {
            return Err(DropReason::Limit);
        }
        let done = match self.settings.rate_bps {
            Some(rate) => self.serialize(now, len, rate)?,
            None => now,
        };
        Ok(self.release_time(done))
    }

    /// Moves the Gilbert–Elliott chain one step and says whether it drops the packet.
    fn gilbert_elliott_drops(&mut self) -> bool {
        let Some(ge) = self.settings.gilbert_elliott else { return false };
        let flip = if self.ge_bad { ge.r } else { ge.p };
        if flip > 0.0 && self.rng.f64() < flip {
            self.ge_bad = !self.ge_bad;
        }
        let loss = if self.ge_bad { ge.loss_bad } else { ge.loss_good };
        loss > 0.0 && self.rng.f64() < loss
    }

    /// Applies the queue bound and returns when the packet's last bit is sent.
    fn serialize(&mut self, now: Instant, len: usize, rate_bps: u64) -> Result<Instant, DropReason> {
        while let Some(&(done, bytes)) = self.serializing.front() {
            if done > now {
                break;
            }
            self.serializing.pop_front();
            self.backlog_bytes -= bytes as u64;
        }
        let queue = self.queue_bytes.unwrap_or(u64::MAX);
        if self.backlog_bytes + len as u64 > queue {
            return Err(DropReason::QueueFull);
        }
        let start = self.link_free_at.map_or(now, |free| free.max(now));
        let nanos = len as u128 * 8 * 1_000_000_000 / rate_bps as u128;
        let done = start + Duration::from_nanos(nanos as u64);
        self.link_free_at = Some(done);
        self.serializing.push_back((done, len));
        self.backlog_bytes += len as u64;
        Ok(done)
    }

    fn release_time(&mut self, done: Instant) -> Instant {
        let s = &self.settings;
        let mut release = done + s.delay;
        if !s.jitter.is_zero() {
            let j = s.jitter.as_nanos() as i64;
            let offset = self.rng.i64(-j..=j);
            release = if offset >= 0 {
                release + Duration::from_nanos(offset as u64)
            } else {
                release - Duration::from_nanos(offset.unsigned_abs())
            };
        }
        if !s.reorder {
            if let Some(last) = self.last_release {
                release = release.max(last);
            }
        }
        self.last_release = Some(release);
        release
    }
}

#[cfg(test)]
#[path = "impair_tests.rs"]
mod tests;
