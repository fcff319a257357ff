//! One peer's paths, relay first: reachable over DERP at once; direct candidates pinged all at
//! the same moment when they arrive (simultaneous send); traffic moves to the best validated
//! path; that path is kept alive well inside a 30 s NAT timeout; it is declared dead after
//! missed pongs (or a data-plane stall) and traffic falls back to DERP; upgrades are retried.
//!
//! What a peer says is not trusted to steer our sends: its advertised endpoints are filtered
//! ([`is_acceptable_remote`]) and each advertisement *replaces* the previous one; candidates
//! learned from its pings are few and age out; pings and pongs come out of per-peer budgets;
//! and a ping whose transaction ID was seen lately (a replay) gets no answer at all.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_disco::{Message, TxId, MAX_CALL_ME_MAYBE_ENDPOINTS};
use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;

use crate::candidate::{
    canonical_remote, choose, is_acceptable_remote, Candidate, CandidateKind, Family, Path,
};
use crate::limits::{ReplayWindow, TokenBucket};

mod api;
mod family;
mod remote;

pub use api::{
    Attempt, Dst, Outcome, PathConfig, PathEvent, Route, SocketId, Transmit, MAIN_SOCKET,
};
pub use family::{FamilyReport, FamilyState};
use remote::Remote;
pub use remote::{MAX_MISSES_FOR_DEAD, RECOVERY_PONGS};

/// Candidates learned from a peer's pings (peer-reflexive) kept at once.
pub const MAX_PEER_REFLEXIVE: usize = 8;
/// A peer-reflexive candidate neither pinging us nor answering for this long is forgotten.
pub const PEER_REFLEXIVE_TTL: Duration = Duration::from_secs(120);
/// All of a peer's candidates at once: a full CallMeMaybe, a full control-plane list and the
/// peer-reflexive ones.
pub const MAX_REMOTE_CANDIDATES: usize = 2 * MAX_CALL_ME_MAYBE_ENDPOINTS + MAX_PEER_REFLEXIVE;
/// How long a peer's ping transaction ID is remembered (a replay within it is dropped)…
pub const REPLAY_WINDOW: Duration = Duration::from_secs(120);
/// …and how many are remembered at most (the oldest go first).
pub const REPLAY_CAPACITY: usize = 256;

/// How long a stalled path is left alone, first; doubling with each stall in a row, up to
/// [`MAX_STALL_BACKOFF`].
pub const STALL_BACKOFF: Duration = Duration::from_secs(30);
/// The longest a stalled path is left alone.
pub const MAX_STALL_BACKOFF: Duration = Duration::from_secs(600);

/// A ping from the peer on a path not in use triggers one of ours back unless we sent one
/// there this recently.
const TRIGGERED_CHECK_AFTER: Duration = Duration::from_millis(500);

/// The path state of one peer.
#[derive(Debug)]
pub struct PeerPaths {
    config: PathConfig,
    rng: ChaCha20Rng,
    local: Vec<Candidate>,
    remote: BTreeMap<SocketAddr, Remote>,
    /// The peer's latest CallMeMaybe endpoints (filtered, in its order).
    by_disco: Vec<SocketAddr>,
    /// The peer's latest endpoints from the control plane (filtered, in their order).
    by_control: Vec<SocketAddr>,
    ping_budget: TokenBucket,
    pong_budget: TokenBucket,
    replay: ReplayWindow,
    route: Route,
    next_heartbeat: Option<Instant>,
    /// While direct: the next keep-alive ping to the best live path of the other family, so
    /// that losing one family falls back to the other before the relay.
    next_standby_heartbeat: Option<Instant>,
    active_until: Option<Instant>,
    next_upgrade: Instant,
    last_call_me_maybe_reply: Option<Instant>,
    attempts: VecDeque<Attempt>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PathEvent>,
}

const MAX_ATTEMPTS_KEPT: usize = 64;

impl PeerPaths {
    /// Entries held in the path machine's tables and queues (candidates, remote paths and
    /// their pending pings, replayed IDs, attempts, transmits, events): a soak checks that it
    /// stays bounded.
    pub fn footprint(&self) -> usize {
        self.local.len()
            + self
                .remote
                .values()
                .map(|r| 1 + r.pending.len())
                .sum::<usize>()
            + self.by_disco.len()
            + self.by_control.len()
            + self.replay.len()
            + self.attempts.len()
            + self.transmits.len()
            + self.events.len()
    }

    /// A peer reachable over the relay from `now` on.
    pub fn new(config: PathConfig, rng: ChaCha20Rng, now: Instant) -> Self {
        PeerPaths {
            config,
            rng,
            local: Vec::new(),
            remote: BTreeMap::new(),
            by_disco: Vec::new(),
            by_control: Vec::new(),
            ping_budget: TokenBucket::new(config.pings, now),
            pong_budget: TokenBucket::new(config.pongs, now),
            replay: ReplayWindow::new(REPLAY_WINDOW, REPLAY_CAPACITY),
            route: Route::Relay,
            next_heartbeat: None,
            next_standby_heartbeat: None,
            active_until: None,
            next_upgrade: now + config.upgrade_interval,
            last_call_me_maybe_reply: None,
            attempts: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Where traffic goes now.
    pub fn route(&self) -> Route {
        self.route
    }

    /// Recent attempts, oldest first.
    pub fn attempts(&self) -> impl Iterator<Item = &Attempt> {
        self.attempts.iter()
    }

    fn note(&mut self, at: Instant, addr: SocketAddr, outcome: Outcome) {
        if self.attempts.len() >= MAX_ATTEMPTS_KEPT {
            self.attempts.pop_front();
        }
        let attempt = Attempt { at, addr, outcome };
        self.attempts.push_back(attempt);
        self.events.push_back(PathEvent::Attempt(attempt));
    }

    /// Our candidates changed: tell the peer over the relay (CallMeMaybe). Paths of a family
    /// we no longer have an address of (an IPv6 address withdrawn) are dead at once, so
    /// traffic moves to the other family now rather than after missed pongs.
    pub fn set_local_candidates(&mut self, now: Instant, candidates: Vec<Candidate>) {
        let had = |c: &[Candidate], f: Family| c.iter().any(|c| Family::of(c.addr) == f);
        let lost: Vec<Family> = [Family::Ipv4, Family::Ipv6]
            .into_iter()
            .filter(|f| had(&self.local, *f) && !had(&candidates, *f))
            .collect();
        self.local = candidates;
        let gone: Vec<SocketAddr> = self
            .remote
            .keys()
            .filter(|a| lost.contains(&Family::of(**a)))
            .copied()
            .collect();
        self.kill(now, &gone);
        self.call_me_maybe(now);
    }

    /// Puts these live paths (the peer withdrew their family) under one ping's check: the relay
    /// carries data too until it is answered, and an unanswered ping is their death.
    pub(super) fn check_withdrawn(&mut self, now: Instant, addrs: &[SocketAddr]) {
        for a in addrs {
            let live = self
                .remote
                .get(a)
                .is_some_and(|r| r.last_pong.is_some() && !r.suspect);
            if live {
                if let Some(r) = self.remote.get_mut(a) {
                    r.suspect = true;
                }
                self.ping(now, *a);
            }
        }
    }

    /// Declares these paths dead now (our own address of their family is gone) and chooses
    /// again.
    pub(super) fn kill(&mut self, now: Instant, addrs: &[SocketAddr]) {
        let mut any = false;
        for a in addrs {
            let Some(r) = self.remote.get_mut(a) else {
                continue;
            };
            let was_live = r.last_pong.is_some();
            r.missed = r.missed.max(self.config.missed_before_dead);
            r.last_pong = None;
            r.pending.clear();
            r.recovering |= r.rtt.is_some();
            r.streak = 0;
            if was_live {
                any = true;
                self.note(now, *a, Outcome::Dead);
            }
        }
        if any {
            self.reselect(now);
        }
    }

    fn call_me_maybe(&mut self, _now: Instant) {
        let endpoints = self.local.iter().map(|c| c.addr).collect();
        self.transmits.push_back(Transmit {
            dst: Dst::Relay,
            socket: MAIN_SOCKET,
            msg: Message::CallMeMaybe { endpoints },
        });
    }

    fn ping(&mut self, now: Instant, addr: SocketAddr) {
        let mut tx_id = [0u8; 12];
        self.rng.fill_bytes(&mut tx_id);
        let mut socket = MAIN_SOCKET;
        if let Some(r) = self.remote.get_mut(&addr) {
            r.pending.insert(tx_id, now);
            socket = r.socket;
        }
        self.transmits.push_back(Transmit {
            dst: Dst::Direct(addr),
            socket,
            msg: Message::Ping {
                tx_id,
                node_key: None,
                padding: 0,
            },
        });
    }

    /// Pings `addr` if the ping budget allows; whether it went.
    fn budgeted_ping(&mut self, now: Instant, addr: SocketAddr) -> bool {
        if !self.ping_budget.try_take(now) {
            return false;
        }
        self.ping(now, addr);
        true
    }

    /// The round trip `addr` answered in last, if it ever did.
    pub fn rtt(&self, addr: SocketAddr) -> Option<Duration> {
        self.remote.get(&addr).and_then(|r| r.rtt)
    }

    /// Pings the direct path at `addr` now, outside the heartbeat schedule and out of the ping
    /// budget (the driver saw data go unanswered on it): its pong, or its absence, settles
    /// the doubt. Whether a ping went.
    pub fn probe(&mut self, now: Instant, addr: SocketAddr) -> bool {
        self.route == Route::Direct(addr) && self.budgeted_ping(now, addr)
    }

    /// Whether a disco Ping with `tx_id` is new (false: seen within [`REPLAY_WINDOW`], so a
    /// replay or a duplicate, to be dropped without an answer). Records it.
    pub fn admit_ping(&mut self, now: Instant, tx_id: TxId) -> bool {
        self.replay.first_sighting(now, tx_id)
    }

    /// A disco Ping arrived directly from `from` on `socket`: answer it there, and take `from`
    /// as a candidate (peer-reflexive) if it is new and there is room. Dropped without a word
    /// when `from` is not an acceptable address, the ping is a replay, or (from a path not
    /// validated) the pong budget is spent. Returns whether it was answered.
    pub fn handle_ping(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        tx_id: TxId,
    ) -> bool {
        let from = canonical_remote(from);
        if !is_acceptable_remote(from) || !self.admit_ping(now, tx_id) {
            return false;
        }
        let proven = self.route == Route::Direct(from)
            || self.remote.get(&from).is_some_and(|r| self.alive(now, r));
        if !proven && !self.pong_budget.try_take(now) {
            return false;
        }
        self.transmits.push_back(Transmit {
            dst: Dst::Direct(from),
            socket,
            msg: Message::Pong { tx_id, src: from },
        });
        // A triggered check (ICE): a ping on a path we have not validated means the peer's
        // side is open, so ping back now rather than at the next upgrade retry, when a
        // stateful firewall in front of us may have dropped our earlier pings. Likewise when
        // the ping came in on another of our sockets (a birthday socket the peer just found).
        let (new, moved) = match self.remote.get_mut(&from) {
            Some(r) => {
                // The socket that last heard from an address is the one that reaches it (a
                // hard NAT lets the peer in through one birthday socket only).
                let moved = r.socket != socket;
                r.socket = socket;
                if r.reflexive_heard.is_some() {
                    r.reflexive_heard = Some(now);
                }
                (false, moved)
            }
            None => {
                if !self.admit_reflexive(now, from, socket) {
                    return true;
                }
                (true, false)
            }
        };
        // No fresh ping of ours in flight there: an older one may have left before the way in
        // opened (a port mapping made since, a firewall the peer's ping just opened).
        let idle = self.remote.get(&from).is_some_and(|r| {
            r.pending
                .values()
                .all(|sent| now.saturating_duration_since(*sent) >= TRIGGERED_CHECK_AFTER)
        });
        // A path answering already (the other family's standby, pinged by its heartbeats)
        // needs no check: answering its pings with ours would ping-pong until the budget ran out.
        let answering = self.remote.get(&from).is_some_and(|r| self.alive(now, r));
        if new || moved || (idle && self.route != Route::Direct(from) && !answering) {
            self.budgeted_ping(now, from);
        }
        true
    }

    /// A disco Pong arrived from `from` on `socket`. Returns whether it answered one of our pings.
    pub fn handle_pong(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        tx_id: TxId,
    ) -> bool {
        let Some(r) = self.remote.get_mut(&from) else {
            return false;
        };
        let Some(sent) = r.pending.remove(&tx_id) else {
            return false;
        };
        r.socket = socket;
        // Other pings still unanswered are superseded: the path is proven now, and they may
        // have left from a socket that does not reach the peer (a hard NAT's other mappings).
        r.pending.clear();
        let rtt = now.saturating_duration_since(sent);
        r.rtt = Some(rtt);
        // The misses since the previous pong, then this answer (misses before a path ever
        // answered are the punching, not its loss).
        if r.last_pong.is_some() {
            for _ in 0..r.missed.min(64) {
                r.answers.note(false);
            }
        }
        r.answers.note(true);
        r.last_pong = Some(now);
        r.missed = 0;
        r.suspect = false;
        r.streak += 1;
        if r.streak >= RECOVERY_PONGS {
            r.recovering = false;
        }
        if r.reflexive_heard.is_some() {
            r.reflexive_heard = Some(now);
        }
        self.note(now, from, Outcome::Validated(rtt));
        self.reselect(now);
        true
    }

    /// The local socket that reaches `addr` (the main one unless a birthday socket heard from it).
    pub fn socket_of(&self, addr: SocketAddr) -> SocketId {
        self.remote.get(&addr).map_or(MAIN_SOCKET, |r| r.socket)
    }

    /// When `addr` last answered a ping.
    pub fn last_pong(&self, addr: SocketAddr) -> Option<Instant> {
        self.remote.get(&addr).and_then(|r| r.last_pong)
    }

    /// The configuration.
    pub fn config(&self) -> &PathConfig {
        &self.config
    }

    /// The peer's direct candidates known so far.
    pub fn remote_candidates(&self) -> impl Iterator<Item = &Candidate> {
        self.remote.values().map(|r| &r.candidate)
    }

    /// The public IPv4 endpoints the peer advertises now (its CallMeMaybe first, then the
    /// control plane's list), at most `max`, in the order given: the only addresses birthday
    /// probing may aim at.
    pub fn advertised_public(&self, max: usize) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in self.by_disco.iter().chain(&self.by_control) {
            if out.len() >= max {
                break;
            }
            if CandidateKind::of(*a) == CandidateKind::PublicV4 && !out.contains(a) {
                out.push(*a);
            }
        }
        out
    }

    /// The data plane saw a direct path lose data (no WireGuard answers) while disco still
    /// answers: leave it for the relay until data flows on it again. It is tried again after
    /// a back-off (30 s, doubling up to 10 min) on probation: chosen, but with the relay
    /// carrying every packet too, until data is seen on it.
    pub fn report_data_stall(&mut self, now: Instant, addr: SocketAddr) {
        if let Some(r) = self.remote.get_mut(&addr) {
            r.stalls += 1;
            let backoff = STALL_BACKOFF
                .saturating_mul(1 << (r.stalls - 1).min(10))
                .min(MAX_STALL_BACKOFF);
            r.stalled_until = Some(now + backoff);
            r.probation = true;
        }
        self.note(now, addr, Outcome::DataStalled);
        self.reselect(now);
    }

    /// Data arrived over a direct path: it is usable again, off probation.
    pub fn report_data_flowing(&mut self, now: Instant, addr: SocketAddr) {
        if let Some(r) = self.remote.get_mut(&addr) {
            let was_out = r.stalled_until.is_some_and(|t| now < t);
            r.stalled_until = None;
            r.stalls = 0;
            r.probation = false;
            if was_out {
                self.reselect(now);
            }
        }
    }

    /// Whether a path was chosen again after a data stall and has not carried data since.
    pub fn on_probation(&self, addr: SocketAddr) -> bool {
        self.remote
            .get(&addr)
            .is_some_and(|r| r.probation || r.suspect)
    }

    /// How long a ping to `r` may go unanswered: five of its round trips once it has answered
    /// (a dead path is noticed soon), the full `pong_timeout` for a path not in use that never
    /// answered or is being won back: it may sit behind a queue the relayed traffic filled,
    /// and a late pong still proves it.
    fn timeout_of(&self, r: &Remote) -> Duration {
        let winning_back = r.last_pong.is_none() || r.recovering;
        if self.route != Route::Direct(r.candidate.addr) && winning_back {
            return self.config.pong_timeout;
        }
        r.rtt.map_or(self.config.pong_timeout, |rtt| {
            (rtt * 5).clamp(self.config.min_pong_timeout, self.config.pong_timeout)
        })
    }

    fn validated(&self, now: Instant) -> Vec<Path> {
        let fresh = self.fresh_window();
        let live: Vec<&Remote> = self
            .remote
            .values()
            .filter(|r| r.stalled_until.is_none_or(|t| now >= t))
            .filter(|r| !self.dead(now, r))
            .filter(|r| {
                r.last_pong
                    .is_some_and(|t| now.saturating_duration_since(t) <= fresh)
            })
            .collect();
        // A path whose latest ping went unanswered yields to one answering now (the peer's NAT
        // rebound, or it roamed), hysteresis or not.
        let answering = live.iter().any(|r| r.missed == 0);
        let live: Vec<&Remote> = live
            .into_iter()
            .filter(|r| !answering || r.missed == 0)
            .collect();
        // A path recovering from missed pongs does not displace a steady path of the other
        // family until it has answered a few times in a row (hysteresis between families).
        let steady = |r: &Remote| !r.recovering || self.route == Route::Direct(r.candidate.addr);
        let steady_families: Vec<Family> = live
            .iter()
            .filter(|r| steady(r))
            .map(|r| Family::of(r.candidate.addr))
            .collect();
        live.into_iter()
            .filter(|r| {
                steady(r)
                    || !steady_families
                        .iter()
                        .any(|f| *f != Family::of(r.candidate.addr))
            })
            .filter_map(|r| {
                r.rtt.map(|rtt| Path {
                    candidate: r.candidate,
                    rtt,
                })
            })
            .collect()
    }

    /// Data is being sent to the peer: heartbeat at the active rate for a while.
    pub fn note_activity(&mut self, now: Instant) {
        let until = now + self.config.active_heartbeat * 2;
        if self
            .active_until
            .is_some_and(|t| t >= until - self.config.active_heartbeat / 2)
        {
            return;
        }
        self.active_until = Some(until);
        if let (Route::Direct(_), Some(next)) = (self.route, self.next_heartbeat) {
            self.next_heartbeat = Some(next.min(now + self.config.active_heartbeat));
        }
    }

    fn heartbeat_interval(&self, now: Instant) -> Duration {
        if self.active_until.is_some_and(|t| now < t) {
            self.config.active_heartbeat
        } else {
            self.config.heartbeat
        }
    }

    /// How many datagrams in a row `addr` may leave unanswered by chance (under one in a
    /// hundred, by how often it answers pings): 1 on a path answering every ping, up to 5 on
    /// a new one, 11 on one answering one in three, at most [`MAX_MISSES_FOR_DEAD`].
    pub fn unlikely_silence(&self, addr: SocketAddr) -> u32 {
        self.remote.get(&addr).map_or(1, remote::unlikely_run)
    }

    /// Unanswered pings in a row on `addr` (0: its latest ping was answered, or is in flight).
    pub fn missed(&self, addr: SocketAddr) -> u32 {
        self.remote.get(&addr).map_or(0, |r| r.missed)
    }

    fn reselect(&mut self, now: Instant) {
        let paths = self.validated(now);
        let current = match self.route {
            Route::Direct(a) => paths.iter().find(|p| p.candidate.addr == a).copied(),
            Route::Relay => None,
        };
        let next = match choose(&paths, current.as_ref(), self.config.hysteresis) {
            Some(p) => Route::Direct(p.candidate.addr),
            None => Route::Relay,
        };
        if next != self.route {
            self.events.push_back(PathEvent::RouteChanged {
                from: self.route,
                to: next,
            });
            self.route = next;
            if let Route::Direct(_) = next {
                let interval = self.heartbeat_interval(now);
                self.next_heartbeat.get_or_insert(now + interval);
                self.next_standby_heartbeat
                    .get_or_insert(now + self.config.heartbeat);
                if now >= self.next_upgrade {
                    self.next_upgrade = now + self.config.upgrade_interval;
                }
            } else {
                self.next_upgrade = now + self.config.upgrade_interval.min(Duration::from_secs(5));
            }
        }
    }

    /// Heartbeats, missed pongs, death of a direct path, and upgrade retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Stall back-offs that ended: the path may be chosen again (on probation).
        for r in self.remote.values_mut() {
            if r.stalled_until.is_some_and(|t| now >= t) {
                r.stalled_until = None;
            }
        }
        // Pongs that never came.
        let timeouts: Vec<Duration> = self.remote.values().map(|r| self.timeout_of(r)).collect();
        let mut missed = Vec::new();
        for ((addr, r), timeout) in self.remote.iter_mut().zip(timeouts) {
            let before = r.pending.len();
            r.pending
                .retain(|_, sent| now.saturating_duration_since(*sent) < timeout);
            // Missed pongs count in rounds: several pings expiring together are one miss.
            if r.pending.len() < before {
                r.missed += 1;
                r.streak = 0;
                r.recovering |= r.rtt.is_some();
                if std::mem::take(&mut r.suspect) {
                    // Withdrawn by the peer, and the check went unanswered: dead now.
                    r.missed = r.missed.max(self.config.missed_before_dead);
                    r.last_pong = None;
                }
                missed.push(*addr);
            }
        }
        for addr in missed {
            let outcome = match self.remote.get(&addr) {
                Some(r) if self.dead(now, r) => Outcome::Dead,
                _ => Outcome::NoPong,
            };
            self.note(now, addr, outcome);
        }
        self.reselect(now);
        self.prune(now);
        // Keep the direct path (and the NAT mapping under it) alive.
        if let Route::Direct(addr) = self.route {
            if self.next_heartbeat.is_none_or(|t| now >= t) {
                self.ping(now, addr);
                self.next_heartbeat = Some(now + self.heartbeat_interval(now));
            }
            self.keep_standby(now, addr);
            self.retry_better_family(now, addr);
        } else {
            self.next_heartbeat = None;
            self.next_standby_heartbeat = None;
            if now >= self.next_upgrade {
                // Retry every candidate still vouched for (within the budget), and ask the
                // peer to do the same.
                let addrs: Vec<SocketAddr> = self
                    .remote
                    .iter()
                    .filter(|(a, r)| self.wanted(now, a, r))
                    .map(|(a, _)| *a)
                    .collect();
                for a in addrs {
                    self.budgeted_ping(now, a);
                }
                if !self.local.is_empty() {
                    self.call_me_maybe(now);
                }
                self.next_upgrade = now + self.config.upgrade_interval;
            }
        }
    }

    /// When `handle_timeout` should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pong_deadlines = self.remote.values().flat_map(|r| {
            let timeout = self.timeout_of(r);
            r.pending.values().map(move |s| *s + timeout)
        });
        let timers = match self.route {
            Route::Direct(addr) => [
                self.next_heartbeat,
                self.next_standby_heartbeat,
                self.better_family_wanted(addr).then_some(self.next_upgrade),
            ],
            Route::Relay => [Some(self.next_upgrade), None, None],
        };
        let stalls = self.remote.values().filter_map(|r| r.stalled_until);
        pong_deadlines
            .chain(timers.into_iter().flatten())
            .chain(stalls)
            .min()
    }

    /// The next disco message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }
}
