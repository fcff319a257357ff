//! Access links that behave like real last miles: bursty loss (a Gilbert–Elliott channel), a
//! bottleneck with a queue in front of it (latency builds under load, and a full queue drops
//! what arrives), latency spikes, jitter and duplication. A side with a [`LinkProfile`] sends
//! and receives everything through it, DERP included (as a TCP stream: losses become delays).

use std::time::{Duration, Instant};

use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// One access link's behaviour, the same both ways (each way keeps its own state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkProfile {
    /// One-way latency between the node and the Internet core, milliseconds.
    pub latency_ms: f64,
    /// Extra random delay per packet, up to this many milliseconds. Packets keep their order
    /// (a link is a queue) unless `reorder` lets them pass each other.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Share of packets that take their own jitter regardless of the packets before them
    /// (reordering).
    #[serde(default)]
    pub reorder: f64,
    /// Bursty loss; none: no loss on the air.
    #[serde(default)]
    pub loss: Option<GilbertElliott>,
    /// Probability a packet arrives twice.
    #[serde(default)]
    pub duplicate: f64,
    /// The bottleneck's rate each way, kbit/s; none: unlimited (and no queue).
    #[serde(default)]
    pub rate_kbit: Option<f64>,
    /// The queue in front of the bottleneck, as milliseconds of sending at its rate: a packet
    /// that would wait longer is dropped (tail drop).
    #[serde(default = "default_buffer_ms")]
    pub buffer_ms: f64,
    /// Latency spikes (a cell handover, a Wi-Fi scan); none: no spikes.
    #[serde(default)]
    pub spikes: Option<Spikes>,
}

fn default_buffer_ms() -> f64 {
    100.0
}

/// The Gilbert–Elliott channel: a good and a bad state, each with its own loss probability,
/// moving between them once per packet. Losses come in bursts of 1 / `bad_to_good` packets
/// on average.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GilbertElliott {
    /// Per packet, the probability of going from the good state to the bad one.
    pub good_to_bad: f64,
    /// Per packet, the probability of going from the bad state back to the good one.
    pub bad_to_good: f64,
    /// Loss probability in the good state.
    #[serde(default)]
    pub loss_good: f64,
    /// Loss probability in the bad state.
    #[serde(default = "one")]
    pub loss_bad: f64,
}

fn one() -> f64 {
    1.0
}

impl GilbertElliott {
    /// The long-run share of packets lost.
    pub fn mean_loss(&self) -> f64 {
        let total = self.good_to_bad + self.bad_to_good;
        if total <= 0.0 {
            return self.loss_good;
        }
        let bad = self.good_to_bad / total;
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }

    /// The mean number of packets in a stay in the bad state.
    pub fn mean_burst(&self) -> f64 {
        if self.bad_to_good <= 0.0 {
            f64::INFINITY
        } else {
            1.0 / self.bad_to_good
        }
    }
}

/// Latency spikes: they start at random (`every_s` apart on average), last `lasting_ms`, and
/// add `extra_ms` to every packet sent meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spikes {
    /// Mean seconds between the starts of two spikes.
    pub every_s: f64,
    /// How long a spike lasts, milliseconds.
    pub lasting_ms: f64,
    /// Delay added during a spike, milliseconds.
    pub extra_ms: f64,
}

/// What one direction of a link did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LinkStats {
    /// Packets offered.
    pub offered: u64,
    /// Lost on the air (the Gilbert–Elliott channel); for DERP's stream, retransmitted.
    pub lost: u64,
    /// Dropped because the queue was full.
    pub queue_drops: u64,
    /// The longest wait in the queue, milliseconds.
    pub max_queue_ms: f64,
}

/// One direction of an access link and its state.
pub(super) struct LinkWay {
    profile: LinkProfile,
    bad: bool,
    busy_until: Instant,
    spike_until: Instant,
    next_spike: Option<Instant>,
    /// The latest arrival of DERP's stream this way (TCP delivers in order).
    stream_tail: Instant,
    /// The latest arrival of datagrams this way (kept in order unless reordered).
    tail: Instant,
    pub(super) stats: LinkStats,
}

fn ms(x: f64) -> Duration {
    Duration::from_secs_f64(x.max(0.0) / 1000.0)
}

fn roll(rng: &mut ChaCha20Rng) -> f64 {
    rng.next_u32() as f64 / (u32::MAX as f64 + 1.0)
}

impl LinkWay {
    pub(super) fn new(profile: &LinkProfile, now: Instant, rng: &mut ChaCha20Rng) -> Self {
        let next_spike = profile.spikes.map(|s| now + exponential(s.every_s, rng));
        LinkWay {
            profile: profile.clone(),
            bad: false,
            busy_until: now,
            spike_until: now,
            next_spike,
            stream_tail: now,
            tail: now,
            stats: LinkStats::default(),
        }
    }

    /// When a datagram of `len` bytes (IP and UDP headers included) offered at `now` arrives
    /// at the far end: none when lost or dropped, two times when duplicated.
    pub(super) fn carry(&mut self, now: Instant, len: usize, rng: &mut ChaCha20Rng) -> Arrivals {
        let Some(depart) = self.enqueue(now, len) else {
            return Arrivals::default();
        };
        if self.lost(rng) {
            self.stats.lost += 1;
            return Arrivals::default();
        }
        let mut at = depart + self.delay(now, rng);
        let reordered = self.profile.reorder > 0.0 && roll(rng) < self.profile.reorder;
        if !reordered {
            at = at.max(self.tail);
            self.tail = at;
        }
        let mut out = Arrivals::one(at);
        if self.profile.duplicate > 0.0 && roll(rng) < self.profile.duplicate {
            out.push(at + self.jitter(rng));
        }
        out
    }

    /// As [`carry`](Self::carry) for DERP's TCP stream: a loss costs a retransmission (a
    /// round trip, at least 20 ms) instead of the packet, nothing is duplicated, and packets
    /// arrive in the order they were sent. A full queue drops data, as the DERP client's
    /// bounded queue does when the connection cannot keep up; a `priority` frame (disco, which
    /// the client sends ahead of queued data) is never dropped and waits at most one buffer.
    pub(super) fn carry_stream(
        &mut self,
        now: Instant,
        len: usize,
        priority: bool,
        rng: &mut ChaCha20Rng,
    ) -> Option<Instant> {
        let depart = if priority {
            self.enqueue_first(now, len)
        } else {
            self.enqueue(now, len)?
        };
        let p = &self.profile;
        let rtt = ms((2.0 * p.latency_ms + p.jitter_ms).max(20.0));
        let mut at = depart + self.delay(now, rng);
        let mut tries = 0;
        while self.lost(rng) && tries < 8 {
            self.stats.lost += 1;
            at += rtt;
            tries += 1;
        }
        at = at.max(self.stream_tail);
        self.stream_tail = at;
        Some(at)
    }

    /// The packet's departure from the bottleneck, or none when the queue is full.
    fn enqueue(&mut self, now: Instant, len: usize) -> Option<Instant> {
        self.stats.offered += 1;
        let Some(send) = self.sending_time(len) else {
            return Some(now);
        };
        let start = self.busy_until.max(now);
        let wait = start - now;
        if wait > ms(self.profile.buffer_ms) {
            self.stats.queue_drops += 1;
            return None;
        }
        let wait_ms = wait.as_secs_f64() * 1000.0;
        self.stats.max_queue_ms = self.stats.max_queue_ms.max(wait_ms);
        self.busy_until = start + send;
        Some(self.busy_until)
    }

    /// As `enqueue` for a frame that goes ahead of whatever waits beyond one buffer: it takes
    /// its share of the link but is never dropped.
    fn enqueue_first(&mut self, now: Instant, len: usize) -> Instant {
        self.stats.offered += 1;
        let Some(send) = self.sending_time(len) else {
            return now;
        };
        let start = self
            .busy_until
            .max(now)
            .min(now + ms(self.profile.buffer_ms));
        self.busy_until = self.busy_until.max(now) + send;
        start + send
    }

    /// How long the bottleneck takes to send `len` bytes (none: the link has no bottleneck).
    fn sending_time(&self, len: usize) -> Option<Duration> {
        let rate = self.profile.rate_kbit.filter(|r| *r > 0.0)?;
        Some(Duration::from_secs_f64(len as f64 * 8.0 / (rate * 1000.0)))
    }

    /// One step of the Gilbert–Elliott channel: the state for this packet, then its fate.
    fn lost(&mut self, rng: &mut ChaCha20Rng) -> bool {
        let Some(ge) = self.profile.loss else {
            return false;
        };
        let flip = if self.bad {
            ge.bad_to_good
        } else {
            ge.good_to_bad
        };
        if roll(rng) < flip {
            self.bad = !self.bad;
        }
        let p = if self.bad { ge.loss_bad } else { ge.loss_good };
        p > 0.0 && roll(rng) < p
    }

    /// Latency, jitter and any spike in force at `now`.
    fn delay(&mut self, now: Instant, rng: &mut ChaCha20Rng) -> Duration {
        let mut d = ms(self.profile.latency_ms) + self.jitter(rng);
        if let Some(s) = self.profile.spikes {
            while let Some(start) = self.next_spike.filter(|t| *t <= now) {
                self.spike_until = start + ms(s.lasting_ms);
                self.next_spike = Some(start + exponential(s.every_s, rng));
            }
            if now < self.spike_until {
                d += ms(s.extra_ms);
            }
        }
        d
    }

    fn jitter(&self, rng: &mut ChaCha20Rng) -> Duration {
        ms(self.profile.jitter_ms * roll(rng))
    }
}

/// An exponentially distributed wait with mean `mean_s` seconds (at least 1 ms).
fn exponential(mean_s: f64, rng: &mut ChaCha20Rng) -> Duration {
    let u = 1.0 - roll(rng); // in (0, 1]
    Duration::from_secs_f64((-u.ln() * mean_s.max(0.001)).max(0.001))
}

/// Up to two arrival times (a duplicated packet arrives twice).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Arrivals {
    at: [Option<Instant>; 2],
}

impl Arrivals {
    fn one(at: Instant) -> Self {
        Arrivals {
            at: [Some(at), None],
        }
    }

    fn push(&mut self, at: Instant) {
        self.at[1] = Some(at);
    }
}

impl IntoIterator for Arrivals {
    type Item = Instant;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<Instant>, 2>>;

    fn into_iter(self) -> Self::IntoIter {
        self.at.into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn profile() -> LinkProfile {
        LinkProfile {
            latency_ms: 10.0,
            jitter_ms: 0.0,
            reorder: 0.0,
            loss: None,
            duplicate: 0.0,
            rate_kbit: None,
            buffer_ms: 100.0,
            spikes: None,
        }
    }

    #[test]
    fn gilbert_elliott_loses_its_mean_share_in_bursts() {
        let ge = GilbertElliott {
            good_to_bad: 0.02,
            bad_to_good: 0.25,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        let p = LinkProfile {
            loss: Some(ge),
            ..profile()
        };
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut way = LinkWay::new(&p, t0, &mut rng);
        let n = 200_000;
        let fates: Vec<bool> = (0..n)
            .map(|_| way.carry(t0, 100, &mut rng).into_iter().count() == 0)
            .collect();
        let lost = fates.iter().filter(|l| **l).count() as f64 / n as f64;
        assert!(
            (lost - ge.mean_loss()).abs() < 0.01,
            "{lost} vs {}",
            ge.mean_loss()
        );
        // Bursts: a loss follows a loss far more often than the mean share.
        let pairs = fates.windows(2).filter(|w| w[0]).count() as f64;
        let after = fates.windows(2).filter(|w| w[0] && w[1]).count() as f64;
        assert!(after / pairs > 0.6, "P(loss | loss) = {}", after / pairs);
        assert!((ge.mean_burst() - 4.0).abs() < 1e-9);
    }

    #[test]
    fn a_bottleneck_builds_latency_then_drops_past_its_buffer() {
        // 1 Mbit/s: a 1,250-byte packet takes 10 ms to send; 100 ms of buffer.
        let p = LinkProfile {
            rate_kbit: Some(1000.0),
            ..profile()
        };
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let t0 = Instant::now();
        let mut way = LinkWay::new(&p, t0, &mut rng);
        let arrivals: Vec<Vec<Instant>> = (0..20)
            .map(|_| way.carry(t0, 1250, &mut rng).into_iter().collect())
            .collect();
        let first = arrivals[0][0] - t0;
        assert_eq!(first, Duration::from_millis(20)); // 10 ms on the wire + 10 ms latency
        let fifth = arrivals[4][0] - t0;
        assert_eq!(fifth, Duration::from_millis(60)); // four packets queued ahead
        let carried = arrivals.iter().filter(|a| !a.is_empty()).count();
        assert_eq!(carried, 11, "a wait of up to 100 ms, then tail drop");
        assert_eq!(way.stats.queue_drops, 9);
        // Once the queue has drained, a packet goes straight through again.
        let later = t0 + Duration::from_secs(1);
        let a: Vec<Instant> = way.carry(later, 1250, &mut rng).into_iter().collect();
        assert_eq!(a, vec![later + Duration::from_millis(20)]);
    }

    #[test]
    fn the_stream_turns_losses_into_delay_and_keeps_order() {
        let p = LinkProfile {
            loss: Some(GilbertElliott {
                good_to_bad: 0.3,
                bad_to_good: 0.5,
                loss_good: 0.0,
                loss_bad: 1.0,
            }),
            jitter_ms: 30.0,
            ..profile()
        };
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut way = LinkWay::new(&p, t0, &mut rng);
        let mut last = t0;
        for k in 0..1000u32 {
            let at = way
                .carry_stream(t0 + Duration::from_millis(k.into()), 100, false, &mut rng)
                .expect("no queue, nothing dropped");
            assert!(at >= last, "in order");
            last = at;
        }
        assert!(way.stats.lost > 100, "{} retransmissions", way.stats.lost);
    }

    #[test]
    fn jitter_keeps_order_unless_packets_are_reordered() {
        let t0 = Instant::now();
        let arrivals = |reorder: f64| {
            let p = LinkProfile {
                jitter_ms: 50.0,
                reorder,
                ..profile()
            };
            let mut rng = ChaCha20Rng::seed_from_u64(5);
            let mut way = LinkWay::new(&p, t0, &mut rng);
            (0..1000u32)
                .map(|k| {
                    let now = t0 + Duration::from_millis(k.into());
                    way.carry(now, 100, &mut rng)
                        .into_iter()
                        .next()
                        .expect("lossless")
                })
                .collect::<Vec<Instant>>()
        };
        let passed = |a: &[Instant]| a.windows(2).filter(|w| w[1] < w[0]).count();
        assert_eq!(passed(&arrivals(0.0)), 0);
        assert!(passed(&arrivals(0.2)) > 50);
    }

    #[test]
    fn spikes_add_their_delay_while_they_last() {
        let p = LinkProfile {
            spikes: Some(Spikes {
                every_s: 5.0,
                lasting_ms: 1000.0,
                extra_ms: 500.0,
            }),
            ..profile()
        };
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let t0 = Instant::now();
        let mut way = LinkWay::new(&p, t0, &mut rng);
        let mut spiked = 0;
        let n = 60_000u32;
        for k in 0..n {
            let now = t0 + Duration::from_millis(k.into());
            let d = way
                .carry(now, 100, &mut rng)
                .into_iter()
                .next()
                .expect("lossless")
                - now;
            // A packet sent during a spike takes 500 ms more; those behind it wait for it.
            assert!(d >= ms(10.0) && d <= ms(510.0), "{d:?}");
            spiked += u32::from(d > ms(10.0));
        }
        // About 1.5 s in every 5 s on average (the spike and the queue behind it).
        let share = f64::from(spiked) / f64::from(n);
        assert!((0.1..0.5).contains(&share), "{share}");
    }
}
