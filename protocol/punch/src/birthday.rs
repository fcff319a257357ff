//! Hard NATs: port prediction for sequential allocators, and birthday probing for random ones —
//! rate-limited and capped so a NAT session table (a 64k-entry SRX300, say) never fills.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;

/// The probability that at least one of `probes` random probes hits one of `open` ports open
/// on the hard side, out of `space` ports (without replacement on the prober's side).
pub fn success_probability(open: u32, probes: u32, space: u32) -> f64 {
    if open == 0 || space == 0 {
        return 0.0;
    }
    // P(miss all) = C(space - open, probes) / C(space, probes) = Π (space-open-i)/(space-i)
    let mut miss = 1.0f64;
    for i in 0..probes.min(space) {
        let remaining = (space - i) as f64;
        let bad = (space.saturating_sub(open).saturating_sub(i)) as f64;
        if bad <= 0.0 {
            return 1.0;
        }
        miss *= bad / remaining;
    }
    1.0 - miss
}

/// Ports a sequential allocator will likely hand out next, nearest first.
pub fn predict_ports(last: u16, delta: i32, count: usize, low: u16, high: u16) -> Vec<u16> {
    let span = (high as i64 - low as i64 + 1).max(1);
    (1..=count as i64)
        .map(|k| {
            let p = last as i64 + delta as i64 * k;
            (low as i64 + (p - low as i64).rem_euclid(span)) as u16
        })
        .collect()
}

/// How many of a peer's advertised public endpoints birthday probing may aim at: the peer
/// chooses them, so a hostile one could otherwise turn our probes on anyone's addresses.
pub const MAX_BIRTHDAY_TARGETS: usize = 2;

/// Limits of one birthday attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeBudget {
    /// Probe packets per second, kept low (default 100, the rate Tailscale's "How NAT traversal
    /// works" (2020) reckons with).
    pub rate: u32,
    /// Distinct destination ports per attempt (each is a NAT session on our side).
    pub max_destinations: u32,
    /// Lowest and highest port probed on the hard side.
    pub ports: (u16, u16),
    /// Pause between attempts, doubling after each failed one…
    pub backoff: Duration,
    /// …up to this.
    pub max_backoff: Duration,
}

impl Default for ProbeBudget {
    fn default() -> Self {
        ProbeBudget {
            rate: 100,
            max_destinations: 1024,
            ports: (1024, 65535),
            backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// What the prober wants sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Destination: the hard side's public IP and a guessed port.
    pub dst: SocketAddr,
}

/// The easy side of a birthday attack: probes random, distinct ports on the hard side's
/// address at a fixed rate, up to a budget; stops at the first success; backs off between
/// attempts. The hard side meanwhile opens K sockets toward our endpoint (the driver's job).
#[derive(Debug)]
pub struct BirthdayProber {
    target: IpAddr,
    budget: ProbeBudget,
    rng: ChaCha20Rng,
    tried: BTreeSet<u16>,
    next_probe: Option<Instant>,
    attempt_backoff: Duration,
    succeeded: Option<SocketAddr>,
    sent_total: u64,
    exhausted: Option<Instant>,
    attempts_exhausted: u32,
}

impl BirthdayProber {
    /// Entries held (ports tried so far): a soak checks that it stays bounded.
    pub fn footprint(&self) -> usize {
        self.tried.len()
    }

    /// A prober for `target` (the hard side's public IP) starting at `now`.
    pub fn new(target: IpAddr, budget: ProbeBudget, rng: ChaCha20Rng, now: Instant) -> Self {
        BirthdayProber {
            target,
            budget,
            rng,
            tried: BTreeSet::new(),
            next_probe: Some(now),
            attempt_backoff: budget.backoff,
            succeeded: None,
            sent_total: 0,
            exhausted: None,
            attempts_exhausted: 0,
        }
    }

    /// Probes due by `now`, at most `rate` per second.
    pub fn poll_probe(&mut self, now: Instant) -> Option<Probe> {
        if self.succeeded.is_some() {
            return None;
        }
        let due = self.next_probe?;
        if now < due {
            return None;
        }
        let (low, high) = self.budget.ports;
        let space = (high as u32).saturating_sub(low as u32) + 1;
        if self.tried.len() as u32 >= self.budget.max_destinations.min(space) {
            // Budget spent: forget this attempt's ports and wait before the next one.
            self.tried.clear();
            self.next_probe = Some(now + self.attempt_backoff);
            self.exhausted = self.next_probe;
            self.attempts_exhausted += 1;
            self.attempt_backoff = (self.attempt_backoff * 2).min(self.budget.max_backoff);
            return None;
        }
        let port = loop {
            let p = (low as u32 + self.rng.next_u32() % space) as u16;
            if self.tried.insert(p) {
                break p;
            }
        };
        self.sent_total += 1;
        self.next_probe = Some(due + Duration::from_secs_f64(1.0 / self.budget.rate.max(1) as f64));
        Some(Probe {
            dst: SocketAddr::new(self.target, port),
        })
    }

    /// The IP probed.
    pub fn target(&self) -> IpAddr {
        self.target
    }

    /// Probes another IP from now on (the peer's advertised address changed), within the same
    /// attempt and back-off: changing targets never buys more probes.
    pub fn retarget(&mut self, target: IpAddr) {
        self.target = target;
    }

    /// A probe was answered: stop.
    pub fn succeeded(&mut self, at: SocketAddr) {
        self.succeeded = Some(at);
        self.next_probe = None;
    }

    /// The path found, if any.
    pub fn success(&self) -> Option<SocketAddr> {
        self.succeeded
    }

    /// When to call `poll_probe` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_probe
    }

    /// An attempt spent its budget without a hit since the last call: when the next starts.
    pub fn take_exhausted(&mut self) -> Option<Instant> {
        self.exhausted.take()
    }

    /// Attempts that spent their budget without a hit.
    pub fn attempts_exhausted(&self) -> u32 {
        self.attempts_exhausted
    }

    /// Probes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent_total
    }

    /// Distinct destinations in the current attempt (each a NAT session on our side).
    pub fn destinations_in_attempt(&self) -> usize {
        self.tried.len()
    }
}
