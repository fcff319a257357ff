//! Birthday probing against hard NATs: the easy side (or both, when both are hard) sends
//! disco pings to random ports of the peer's IP; the hard side opens many sockets toward the
//! peer's endpoints.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_disco::Message;
use burrow_punch::{BirthdayProber, Route, SocketId, MAIN_SOCKET, MAX_BIRTHDAY_TARGETS};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::{Event, Node, Peer, Transmit, MAPPING_GRACE};

/// The hard side's birthday role: open many sockets toward the peer's endpoints.
#[derive(Debug)]
pub(super) struct Opening {
    /// The peer endpoints every socket sends to.
    targets: Vec<SocketAddr>,
    /// The next socket to open (1-based; the main socket is 0).
    next_socket: u16,
    /// When the next socket opens (paced by `open_rate`).
    pub(super) next_at: Instant,
    /// When the current round of openings started (rounds repeat every 20 s).
    round_started: Instant,
}

impl Opening {
    /// Entries held (the peer endpoints every socket sends to).
    pub(super) fn footprint(&self) -> usize {
        self.targets.len()
    }
}

impl Node {
    /// Starts birthday probing toward peer `i` when both NATs are known, the peer is on DERP,
    /// and one side is hard: which role we take follows from the two NATs.
    pub(super) fn plan_birthday(&mut self, now: Instant, i: usize) {
        let Some(me) = self.nat else {
            return;
        };
        let p = &mut self.peers[i];
        let Some(peer_nat) = p.peer_nat else {
            return;
        };
        let (peer_varies, peer_predictable) = (peer_nat.varies, peer_nat.predictable);
        // A port mapping on either side is reachable from any socket: give it its grace period
        // to bring a direct path before searching (the search starts only if it did not).
        let mapped = [self.mapped_since, p.peer_mapped_since]
            .into_iter()
            .flatten()
            .max();
        if let Some(since) = mapped {
            let until = since + MAPPING_GRACE;
            if now < until {
                self.replan_birthday = Some(self.replan_birthday.map_or(until, |t| t.min(until)));
                return;
            }
        }
        if matches!(p.paths.route(), Route::Direct(_)) {
            return;
        }
        // Only the peer's own advertised public endpoints, and only the first few: it names
        // them, so they must not become a list of other people's addresses to probe.
        let peer_public = birthday_targets(p, self.config.birthday_needs_control_ip);
        let peer = p.config.node_key;
        // Who does what (the birthday search of Tailscale's "How NAT traversal works", 2020):
        // - we are easy, the peer is hard and unpredictable: probe random ports on its IP;
        // - we are hard and unpredictable, the peer is easy: open many sockets toward it;
        // - both vary: both probe (the two-sided search; slow, so paced for the long run);
        // - a predictable peer is reached through its predicted endpoints instead.
        let both_vary = me.mapping_varies && peer_varies;
        // A sequential NAT on either side predicts or searches instead (`prediction`):
        // random probes would move its counter under the prediction's feet.
        let either_predictable = me.delta.is_some() || peer_predictable;
        let probe = (both_vary && !either_predictable)
            || (!me.mapping_varies && peer_varies && !peer_predictable);
        let open = me.is_hard_random() && !peer_varies;
        if probe && p.prober.is_none() {
            let Some(target) = peer_public.first().map(|a| a.ip()) else {
                return;
            };
            let mut budget = self.config.probe;
            if both_vary {
                // A hit needs both sides' mappings alive at once: keep probing steadily,
                // bounded by what the NAT timeout lets live (rate × 30 s sessions).
                budget.max_destinations = budget.rate.saturating_mul(30);
                budget.backoff = budget.backoff.min(Duration::from_secs(5));
                budget.max_backoff = budget.backoff;
            }
            let rng = ChaCha20Rng::seed_from_u64(self.rng.next_u64());
            p.prober = Some(BirthdayProber::new(target, budget, rng, now));
            self.events.push_back(Event::BirthdayStarted {
                peer,
                probing: true,
            });
        } else if open && p.opening.is_none() && !peer_public.is_empty() {
            p.opening = Some(Opening {
                targets: peer_public,
                next_socket: 1,
                next_at: now,
                round_started: now,
            });
            self.events.push_back(Event::BirthdayStarted {
                peer,
                probing: false,
            });
        }
    }

    /// Sends peer `i`'s due probes and socket openings, aimed at what it advertises now.
    pub(super) fn run_birthday(&mut self, now: Instant, i: usize) {
        if matches!(self.peers[i].paths.route(), Route::Direct(_)) {
            return;
        }
        if self.peers[i].prober.is_none() && self.peers[i].opening.is_none() {
            self.plan_birthday(now, i);
        }
        // Aim only where the peer's latest advertisement points (it replaces the previous one):
        // a prober follows its IP within the same budget; with nothing left to aim at, stop.
        let allowed = birthday_targets(&self.peers[i], self.config.birthday_needs_control_ip);
        let p = &mut self.peers[i];
        let stale = p.prober.as_ref().is_some_and(|b| {
            b.success().is_none() && !allowed.iter().any(|a| a.ip() == b.target())
        });
        if stale {
            match (allowed.first(), p.prober.as_mut()) {
                (Some(a), Some(b)) => b.retarget(a.ip()),
                _ => p.prober = None,
            }
        }
        if allowed.is_empty() {
            p.opening = None;
        }
        while let Some(probe) = self.peers[i]
            .prober
            .as_mut()
            .and_then(|b| b.poll_probe(now))
        {
            self.peers[i].stats.probes += 1;
            self.send_probe_ping(i, MAIN_SOCKET, probe.dst);
        }
        let p = &mut self.peers[i];
        if let Some(retry_at) = p.prober.as_mut().and_then(|b| b.take_exhausted()) {
            self.events.push_back(Event::BirthdayExhausted {
                peer: p.config.node_key,
                probes: p.stats.probes,
                retry_at,
            });
        }
        let sockets = self.config.birthday_sockets;
        let step = Duration::from_secs_f64(1.0 / self.config.open_rate.max(1) as f64);
        while let Some(o) = self.peers[i].opening.as_mut() {
            if now < o.next_at {
                break;
            }
            if o.next_socket > sockets {
                // All open: refresh them before the NAT's 30 s timeout drops them, toward what
                // the peer advertises now.
                o.targets.clone_from(&allowed);
                o.next_socket = 1;
                o.round_started += Duration::from_secs(20);
                o.next_at = o.round_started;
                continue;
            }
            let socket = o.next_socket;
            o.next_socket += 1;
            o.next_at += step;
            let targets = o.targets.clone();
            for t in targets {
                self.peers[i].stats.probes += 1;
                self.send_probe_ping(i, socket, t);
            }
        }
    }

    /// One birthday packet: a disco ping from `socket` to `dst`.
    pub(super) fn send_probe_ping(&mut self, i: usize, socket: SocketId, dst: SocketAddr) {
        let mut tx_id = [0u8; 12];
        self.rng.fill_bytes(&mut tx_id);
        let ping = Message::Ping {
            tx_id,
            node_key: Some(self.device.public_key()),
            padding: 0,
        };
        if let Some(payload) = self.seal(i, &ping) {
            self.queue(Transmit::Udp {
                socket,
                dst,
                payload,
            });
        }
    }
}

/// The peer's endpoints birthday probing may aim at: its first few advertised public ones,
/// and, when `needs_control_ip`, only those on an IP the control plane lists for it.
pub(super) fn birthday_targets(p: &Peer, needs_control_ip: bool) -> Vec<SocketAddr> {
    let mut targets = p.paths.advertised_public(usize::MAX);
    if needs_control_ip {
        targets.retain(|t| p.config.endpoints.iter().any(|e| e.ip() == t.ip()));
    }
    targets.truncate(MAX_BIRTHDAY_TARGETS);
    targets
}
