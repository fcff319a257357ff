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
    canonical_remote, choose, is_acceptable_remote, Candidate, CandidateKind, CandidateSource,
    Hysteresis, Path,
};
use crate::limits::{Rate, ReplayWindow, TokenBucket};

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

/// Where a peer's traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// Through the DERP relay.
    Relay,
    /// Straight to this address.
    Direct(SocketAddr),
}

/// Where to send a disco message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dst {
    /// Over the peer's DERP relay.
    Relay,
    /// Over UDP to this address.
    Direct(SocketAddr),
}

/// Which of a node's UDP sockets: [`MAIN_SOCKET`] for everything, others opened for birthday
/// probing toward a hard NAT's peer.
pub type SocketId = u16;

/// The node's one long-lived UDP socket.
pub const MAIN_SOCKET: SocketId = 0;

/// A disco message for the driver to seal and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where.
    pub dst: Dst,
    /// From which local socket (direct sends only).
    pub socket: SocketId,
    /// What.
    pub msg: Message,
}

/// Timings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathConfig {
    /// Ping the current direct path this often (well inside a 30 s UDP mapping timeout).
    pub heartbeat: Duration,
    /// Ping the current direct path this often while data flows (shorter: a dead path is
    /// noticed, and left, sooner).
    pub active_heartbeat: Duration,
    /// A ping unanswered this long is missed (at most; see `min_pong_timeout`).
    pub pong_timeout: Duration,
    /// Once a path's round trip is known, a ping is missed after five round trips, but never
    /// sooner than this.
    pub min_pong_timeout: Duration,
    /// Missed pongs in a row before a direct path is dead.
    pub missed_before_dead: u32,
    /// While on the relay, retry direct candidates (and re-send CallMeMaybe) this often.
    pub upgrade_interval: Duration,
    /// Path choice margin.
    pub hysteresis: Hysteresis,
    /// Budget of direct pings to the peer's candidates (answers to its CallMeMaybe, upgrade
    /// retries, triggered checks); heartbeats on the current path are not counted.
    pub pings: Rate,
    /// Budget of pongs to the peer's direct pings from addresses not validated yet.
    pub pongs: Rate,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig {
            heartbeat: Duration::from_secs(3),
            active_heartbeat: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(5),
            min_pong_timeout: Duration::from_secs(1),
            missed_before_dead: 3,
            upgrade_interval: Duration::from_secs(30),
            hysteresis: Hysteresis::default(),
            // One full CallMeMaybe at once, then a few a second.
            pings: Rate {
                burst: MAX_CALL_ME_MAYBE_ENDPOINTS as u32 + 4,
                per_second: 8,
            },
            pongs: Rate {
                burst: 16,
                per_second: 4,
            },
        }
    }
}

/// Why a candidate is or is not in use: the engine's explanation for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered; round trip attached.
    Validated(Duration),
    /// A ping went unanswered.
    NoPong,
    /// Declared dead after missed pongs.
    Dead,
    /// Answered disco but lost data (reported by the driver): not chosen until data flows.
    DataStalled,
}

/// One attempt on one candidate, for explanations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// When.
    pub at: Instant,
    /// Which candidate.
    pub addr: SocketAddr,
    /// What happened.
    pub outcome: Outcome,
}

/// Something the driver should know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEvent {
    /// Traffic moves.
    RouteChanged {
        /// From.
        from: Route,
        /// To.
        to: Route,
    },
    /// A candidate was tried (or lost): one line of the peer's explanation.
    Attempt(Attempt),
}

#[derive(Debug, Clone)]
struct Remote {
    candidate: Candidate,
    socket: SocketId,
    pending: BTreeMap<TxId, Instant>,
    rtt: Option<Duration>,
    last_pong: Option<Instant>,
    missed: u32,
    /// Lost data while answering disco: not chosen before this time.
    stalled_until: Option<Instant>,
    /// Stalls in a row (the back-off doubles with each).
    stalls: u32,
    /// Chosen again after a stall but not yet seen carrying data: the driver should send
    /// over the relay too.
    probation: bool,
    /// Learned from a ping (peer-reflexive): when a ping or pong last came from it.
    reflexive_heard: Option<Instant>,
}

/// Who told us of a peer's endpoints: each source's latest list replaces its previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Advertiser {
    /// The peer itself, in a CallMeMaybe over the relay.
    Disco,
    /// The control plane, from the peer's registration.
    Control,
}

/// How long a stalled path is left alone, first; doubling with each stall in a row, up to
/// [`MAX_STALL_BACKOFF`].
pub const STALL_BACKOFF: Duration = Duration::from_secs(30);
/// The longest a stalled path is left alone.
pub const MAX_STALL_BACKOFF: Duration = Duration::from_secs(600);

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
    active_until: Option<Instant>,
    next_upgrade: Instant,
    last_call_me_maybe_reply: Option<Instant>,
    attempts: VecDeque<Attempt>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PathEvent>,
}

const MAX_ATTEMPTS_KEPT: usize = 64;

impl PeerPaths {
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

    /// Our candidates changed: tell the peer over the relay (CallMeMaybe).
    pub fn set_local_candidates(&mut self, now: Instant, candidates: Vec<Candidate>) {
        self.local = candidates;
        self.call_me_maybe(now);
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

    fn new_remote(candidate: Candidate, socket: SocketId) -> Remote {
        Remote {
            candidate,
            socket,
            pending: BTreeMap::new(),
            rtt: None,
            last_pong: None,
            missed: 0,
            stalled_until: None,
            stalls: 0,
            probation: false,
            reflexive_heard: None,
        }
    }

    fn advertised(&self, addr: &SocketAddr) -> bool {
        self.by_disco.contains(addr) || self.by_control.contains(addr)
    }

    fn fresh_window(&self) -> Duration {
        self.config.pong_timeout * self.config.missed_before_dead + self.config.heartbeat
    }

    /// Answered lately and not dead: a path in use or about to be.
    fn alive(&self, now: Instant, r: &Remote) -> bool {
        r.missed < self.config.missed_before_dead
            && r.last_pong
                .is_some_and(|t| now.saturating_duration_since(t) <= self.fresh_window())
    }

    fn young_reflexive(&self, now: Instant, r: &Remote) -> bool {
        r.reflexive_heard
            .is_some_and(|t| now.saturating_duration_since(t) < PEER_REFLEXIVE_TTL)
    }

    /// Worth pinging on an upgrade retry: advertised now, or peer-reflexive and recent.
    fn wanted(&self, now: Instant, addr: &SocketAddr, r: &Remote) -> bool {
        self.advertised(addr) || self.young_reflexive(now, r)
    }

    /// Forgets candidates nobody vouches for any more (no longer advertised, or peer-reflexive
    /// and silent), except the current path and paths still alive, which go when they die.
    fn prune(&mut self, now: Instant) {
        let drop: Vec<SocketAddr> = self
            .remote
            .iter()
            .filter(|(a, r)| {
                !self.wanted(now, a, r) && self.route != Route::Direct(**a) && !self.alive(now, r)
            })
            .map(|(a, _)| *a)
            .collect();
        for a in drop {
            self.remote.remove(&a);
        }
    }

    /// Replaces one source's list of the peer's endpoints: filtered, at most one
    /// CallMeMaybe's worth, and within the total cap. Returns the list kept.
    fn replace_advertised(
        &mut self,
        now: Instant,
        by: Advertiser,
        endpoints: &[SocketAddr],
    ) -> Vec<SocketAddr> {
        let mut list: Vec<SocketAddr> = Vec::new();
        for e in endpoints.iter().map(|e| canonical_remote(*e)) {
            if list.len() >= MAX_CALL_ME_MAYBE_ENDPOINTS {
                break;
            }
            if is_acceptable_remote(e) && !list.contains(&e) {
                list.push(e);
            }
        }
        match by {
            Advertiser::Disco => self.by_disco = list.clone(),
            Advertiser::Control => self.by_control = list.clone(),
        }
        self.prune(now);
        list.retain(|e| {
            if self.remote.contains_key(e) {
                return true;
            }
            if self.remote.len() >= MAX_REMOTE_CANDIDATES {
                return false;
            }
            let c = Candidate::direct(*e, CandidateSource::Stun);
            self.remote.insert(*e, Self::new_remote(c, MAIN_SOCKET));
            true
        });
        match by {
            Advertiser::Disco => self.by_disco = list.clone(),
            Advertiser::Control => self.by_control = list.clone(),
        }
        list
    }

    /// Takes `from` as a peer-reflexive candidate if there is room (making room by forgetting
    /// an idle, unanswered one). Whether it is now known.
    fn admit_reflexive(&mut self, now: Instant, from: SocketAddr, socket: SocketId) -> bool {
        self.prune(now);
        let reflexive: Vec<(SocketAddr, Option<Instant>, bool)> = self
            .remote
            .iter()
            .filter(|(a, r)| r.reflexive_heard.is_some() && !self.advertised(a))
            .map(|(a, r)| {
                let idle =
                    self.route != Route::Direct(*a) && r.pending.is_empty() && !self.alive(now, r);
                (*a, r.reflexive_heard, idle)
            })
            .collect();
        if reflexive.len() >= MAX_PEER_REFLEXIVE {
            let oldest_idle = reflexive
                .iter()
                .filter(|(_, _, idle)| *idle)
                .min_by_key(|(a, heard, _)| (*heard, *a));
            match oldest_idle {
                Some((a, _, _)) => {
                    self.remote.remove(a);
                }
                None => return false,
            }
        }
        if self.remote.len() >= MAX_REMOTE_CANDIDATES {
            return false;
        }
        let mut r = Self::new_remote(
            Candidate::direct(from, CandidateSource::PeerReflexive),
            socket,
        );
        r.reflexive_heard = Some(now);
        self.remote.insert(from, r);
        true
    }

    /// The peer's CallMeMaybe (over the relay): ping every endpoint now — the peer is pinging
    /// ours at the same moment, so each NAT sees outbound traffic first. The list replaces the
    /// peer's previous one; unacceptable addresses are left out, and pings come out of the
    /// budget.
    pub fn handle_call_me_maybe(&mut self, now: Instant, endpoints: &[SocketAddr]) {
        self.handle_advertised(now, Advertiser::Disco, endpoints);
    }

    /// The peer's endpoints as the control plane lists them: handled as a CallMeMaybe, but
    /// kept as a list of their own (each source's latest list replaces its previous one).
    pub fn handle_control_endpoints(&mut self, now: Instant, endpoints: &[SocketAddr]) {
        self.handle_advertised(now, Advertiser::Control, endpoints);
    }

    fn handle_advertised(&mut self, now: Instant, by: Advertiser, endpoints: &[SocketAddr]) {
        let list = self.replace_advertised(now, by, endpoints);
        for e in list {
            self.budgeted_ping(now, e);
        }
        // Our own CallMeMaybe may never have reached the peer (it was not on the relay yet):
        // answer with ours so it pings us at this same moment. At most one answer a second, so
        // two nodes answering each other stop after one round.
        let answered_lately = self
            .last_call_me_maybe_reply
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
        if self.route == Route::Relay && !self.local.is_empty() && !answered_lately {
            self.last_call_me_maybe_reply = Some(now);
            self.call_me_maybe(now);
        }
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
        let idle = self.remote.get(&from).is_some_and(|r| r.pending.is_empty());
        if new || moved || (idle && self.route != Route::Direct(from)) {
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
        r.last_pong = Some(now);
        r.missed = 0;
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
        self.remote.get(&addr).is_some_and(|r| r.probation)
    }

    fn timeout_of(&self, r: &Remote) -> Duration {
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
            .filter(|r| r.missed < self.config.missed_before_dead)
            .filter(|r| {
                r.last_pong
                    .is_some_and(|t| now.saturating_duration_since(t) <= fresh)
            })
            .collect();
        // A path whose latest ping went unanswered yields to one answering now (the peer's NAT
        // rebound, or it roamed), hysteresis or not.
        let answering = live.iter().any(|r| r.missed == 0);
        live.into_iter()
            .filter(|r| !answering || r.missed == 0)
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
                missed.push((*addr, r.missed));
            }
        }
        for (addr, count) in missed {
            let outcome = if count >= self.config.missed_before_dead {
                Outcome::Dead
            } else {
                Outcome::NoPong
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
        } else {
            self.next_heartbeat = None;
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
        let timer = match self.route {
            Route::Direct(_) => self.next_heartbeat,
            Route::Relay => Some(self.next_upgrade),
        };
        let stalls = self.remote.values().filter_map(|r| r.stalled_until);
        pong_deadlines.chain(timer).chain(stalls).min()
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
