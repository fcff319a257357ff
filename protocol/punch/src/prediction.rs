//! Mutual port prediction between sequential NATs (RFC 4787 §4.1: a NAT that hands each new
//! mapping the previous port plus a fixed step).
//!
//! Two address-and-port-dependent NATs open for each other only when both hold the same pair
//! of public endpoints. A sequential allocator makes that pair predictable from both ends:
//! 1. each side measures its NAT's counter with a fresh STUN flow (one new mapping);
//! 2. it announces over DERP the port its flow toward the peer *will* have: the measured port
//!    plus the step times (its own flows since, plus one, plus a margin for flows of other
//!    hosts behind the same NAT);
//! 3. once it has the peer's announcement too, it opens up to `margin + 1` fresh sockets, each
//!    sending one ping to the peer's announced port. Whichever of them the NAT gives the
//!    announced port carries the same 4-tuple as the peer's matching socket, so one side's ping
//!    passes the other's filter and the path validates as usual.
//!
//! A side whose mapping is fixed (endpoint-independent) needs no measurement: the sequential
//! peer aims at its known endpoint, and it pings the peer's announced port from its one socket.
//!
//! Against a *random* allocator only a search helps, but the sequential side's port is known:
//! each round the random side opens [`PredictionConfig::search_sockets`] sockets toward the
//! announced port (each gets a random port of its NAT), and the sequential side's flows go to
//! one guessed port of the random side. A round hits when the guess is one of those ports:
//! `search_sockets / 64,512` per round (about 0.2 % with 128 sockets, a round a second: a
//! median of about six minutes), against hours for two random allocators.
//!
//! The machine here decides when to measure, announce and send; the node engine does the I/O
//! (the STUN transaction, the disco messages, the sockets) and counts its own new flows with a
//! [`FlowLedger`]. Rounds are paced, capped per attempt and backed off, so a peer's
//! announcements can never make us spend NAT sessions faster than the configuration allows.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::limits::Rate;
use crate::paths::SocketId;

/// Limits and timings of mutual port prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PredictionConfig {
    /// Allocations that may come between our measurement and our flows (other hosts behind the
    /// same NAT, flows of our own the ledger missed) without spoiling the round: we announce the
    /// port this many allocations ahead and open up to this many plus one sockets.
    pub margin: u16,
    /// A round that brought no direct path this long after its flows (or whose peer never
    /// announced) ends; the next one measures again.
    pub round_timeout: Duration,
    /// A measurement unanswered this long ends the round.
    pub measure_timeout: Duration,
    /// Rounds in a row before pausing…
    pub rounds: u32,
    /// …this long, doubling after each pause…
    pub backoff: Duration,
    /// …up to this.
    pub max_backoff: Duration,
    /// Rounds never start closer together than this, whatever the peer announces.
    pub min_round_interval: Duration,
    /// Against a random allocator: sockets the random side opens per round toward the
    /// announced port (each one NAT session on its side)…
    pub search_sockets: u16,
    /// …rounds in a row before pausing (the search, unlike prediction, needs many)…
    pub search_rounds: u32,
    /// …and how long a search round waits for its hit.
    pub search_round_timeout: Duration,
    /// New flows all predictions and searches of a node may open, over all its peers: they
    /// are sessions on its own NAT (150 a second live at most 4,500 for a 30 s timeout, under
    /// 10 % of a 64k-entry table).
    pub sessions: Rate,
}

impl Default for PredictionConfig {
    fn default() -> Self {
        PredictionConfig {
            margin: 6,
            round_timeout: Duration::from_secs(2),
            measure_timeout: Duration::from_secs(1),
            rounds: 8,
            backoff: Duration::from_secs(20),
            max_backoff: Duration::from_secs(300),
            min_round_interval: Duration::from_secs(1),
            search_sockets: 128,
            search_rounds: 600,
            search_round_timeout: Duration::from_secs(1),
            sessions: Rate {
                burst: 300,
                per_second: 150,
            },
        }
    }
}

impl PredictionConfig {
    /// The most sockets one round opens (each one NAT session on our side).
    pub fn max_sockets(&self) -> u16 {
        self.margin.saturating_add(1)
    }
}

/// How the peer's NAT maps, as its NatInfo says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMapping {
    /// Per destination, sequential ports: it announces its port too.
    Sequential,
    /// Fixed (endpoint-independent): we aim at its endpoint without waiting for it.
    Fixed,
    /// Per destination, random ports: we aim at a guessed port each round (the search).
    Random,
}

/// Which side of the pair we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionRole {
    /// Our NAT allocates sequentially with this step: we measure, announce and open sockets.
    Sequential {
        /// The port step between consecutive mappings.
        delta: i32,
        /// How the peer maps.
        peer: PeerMapping,
    },
    /// Our mapping is fixed: we ping the port the sequential peer announces.
    Fixed,
    /// Our ports are random: each announcement of the sequential peer gets
    /// [`PredictionConfig::search_sockets`] fresh flows toward its announced port.
    Random,
}

/// Where a round's flows go on the peer's public address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerPort {
    /// The port the peer announced.
    Announced(u16),
    /// The peer's fixed endpoint (its reflexive address).
    Endpoint,
    /// A port of the peer's public address picked at random for this round (the search).
    Guess,
}

/// What the machine wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionAction {
    /// Measure our NAT's counter: a STUN Binding request from a socket that has no mapping
    /// (answered with [`MutualPrediction::handle_measured`]).
    Measure,
    /// Tell the peer over DERP (disco `PortPrediction`).
    Announce {
        /// Our round.
        round: u32,
        /// The external port our flow toward the peer will have.
        port: u16,
    },
    /// Send one ping from each of `sockets` fresh sockets (in order) to `port` on the peer's
    /// public address; `sockets` is 0 for "from the main socket" (a fixed side).
    Open {
        /// How many fresh sockets, in order (0: the main socket).
        sockets: u16,
        /// Where on the peer.
        port: PeerPort,
    },
    /// The random side of a search: one ping from each of `sockets` sockets (the birthday
    /// ones: each flow is new, as the announced port is) to the peer's announced `port`.
    Search {
        /// How many sockets.
        sockets: u16,
        /// The sequential peer's announced port.
        port: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Measuring { since: Instant },
    Announced { port: u16, own_at: u64, at: Instant },
    Flown { at: Instant },
}

/// What a prediction did so far (for explanations and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PredictionReport {
    /// Rounds started.
    pub rounds: u32,
    /// Sockets opened (sessions spent on our NAT), measurements included.
    pub sessions: u64,
    /// The port we announced last.
    pub our_port: Option<u16>,
    /// The port the peer announced last.
    pub peer_port: Option<u16>,
    /// Measurements that went unanswered.
    pub measure_failures: u32,
}

/// One pair's mutual port prediction (see the module docs).
#[derive(Debug)]
pub struct MutualPrediction {
    config: PredictionConfig,
    role: PredictionRole,
    round: u32,
    state: State,
    /// The peer's latest announcement (round, port).
    peer: Option<(u32, u16)>,
    /// The peer round our latest flows went to.
    peer_used: u32,
    /// A round should start as soon as allowed.
    wanted: bool,
    next_start: Instant,
    last_start: Option<Instant>,
    rounds_in_attempt: u32,
    backoff: Duration,
    /// A fixed side's ping toward an announcement not yet sent (paced).
    fixed_pending: bool,
    last_fixed_ping: Option<Instant>,
    actions: VecDeque<PredictionAction>,
    report: PredictionReport,
}

impl MutualPrediction {
    /// Entries held (actions waiting to be polled): a soak checks that it stays bounded.
    pub fn footprint(&self) -> usize {
        self.actions.len()
    }

    /// A prediction for one peer; a sequential side starts its first round at once.
    pub fn new(config: PredictionConfig, role: PredictionRole, now: Instant) -> Self {
        let mut m = MutualPrediction {
            config,
            role,
            round: 0,
            state: State::Idle,
            peer: None,
            peer_used: 0,
            wanted: matches!(role, PredictionRole::Sequential { .. }),
            next_start: now,
            last_start: None,
            rounds_in_attempt: 0,
            backoff: config.backoff,
            fixed_pending: false,
            last_fixed_ping: None,
            actions: VecDeque::new(),
            report: PredictionReport::default(),
        };
        m.handle_timeout(now);
        m
    }

    /// Our role.
    pub fn role(&self) -> PredictionRole {
        self.role
    }

    /// Takes a new role (the NATs' view changed) and keeps the pacing and back-off: a round
    /// under way ends and counts, and the next starts no sooner than they allow, so a peer
    /// flipping its NatInfo cannot start rounds faster than its announcements could.
    pub fn set_role(&mut self, now: Instant, role: PredictionRole) {
        if role == self.role {
            return;
        }
        if self.state != State::Idle {
            self.end_round(now);
        }
        self.role = role;
        self.wanted = matches!(role, PredictionRole::Sequential { .. });
        self.peer = None;
        self.peer_used = 0;
        self.fixed_pending = false;
        self.handle_timeout(now);
    }

    /// What happened so far.
    pub fn report(&self) -> PredictionReport {
        self.report
    }

    /// Waiting for a measurement.
    pub fn is_measuring(&self) -> bool {
        matches!(self.state, State::Measuring { .. })
    }

    /// Between measurement and flows: the round relies on the counter not moving under it
    /// by other rounds of ours.
    pub fn is_pending(&self) -> bool {
        matches!(
            self.state,
            State::Measuring { .. } | State::Announced { .. }
        )
    }

    /// Our NAT's counter was measured: the fresh flow got `port`, and we made `own_since` new
    /// flows of our own after it. `own_total` is the ledger's count now.
    pub fn handle_measured(&mut self, now: Instant, port: u16, own_since: u64, own_total: u64) {
        let (State::Measuring { .. }, PredictionRole::Sequential { delta, .. }) =
            (self.state, self.role)
        else {
            return;
        };
        let ahead = own_since
            .saturating_add(1)
            .saturating_add(u64::from(self.config.margin));
        let port = advance(port, delta, ahead);
        self.state = State::Announced {
            port,
            own_at: own_total,
            at: now,
        };
        self.report.our_port = Some(port);
        self.actions.push_back(PredictionAction::Announce {
            round: self.round,
            port,
        });
        self.try_open(now, own_total);
    }

    /// The measurement went unanswered (or our NAT turned out not to be sequential).
    pub fn handle_measure_failed(&mut self, now: Instant) {
        if matches!(self.state, State::Measuring { .. }) {
            self.report.measure_failures += 1;
            self.end_round(now);
        }
    }

    /// The peer announced `port` for its `round` (over DERP, authenticated). Older and repeated
    /// rounds are ignored; a new one starts our next round when ours was spent.
    pub fn handle_announce(&mut self, now: Instant, round: u32, port: u16, own_total: u64) {
        if port == 0 || self.peer.is_some_and(|(r, _)| r >= round) {
            return;
        }
        self.peer = Some((round, port));
        self.report.peer_port = Some(port);
        match self.role {
            PredictionRole::Fixed | PredictionRole::Random => {
                self.fixed_pending = true;
                self.handle_timeout(now);
            }
            PredictionRole::Sequential { .. } => match self.state {
                State::Announced { .. } => self.try_open(now, own_total),
                State::Measuring { .. } => {}
                State::Flown { .. } => {
                    // The peer moved on to a new measurement: ours is spent, measure again.
                    self.end_round(now);
                    self.handle_timeout(now);
                }
                State::Idle => {
                    self.wanted = true;
                    self.handle_timeout(now);
                }
            },
        }
    }

    /// Runs due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Measuring { since } if now >= since + self.config.measure_timeout => {
                self.handle_measure_failed(now);
            }
            State::Announced { at, .. } | State::Flown { at }
                if now >= at + self.round_timeout() =>
            {
                self.end_round(now);
            }
            _ => {}
        }
        if self.fixed_pending {
            let ready = self
                .last_fixed_ping
                .is_none_or(|t| now >= t + self.config.min_round_interval)
                && now >= self.next_start;
            if let (true, Some((_, port))) = (ready, self.peer) {
                self.fixed_pending = false;
                self.last_fixed_ping = Some(now);
                let action = if self.role == PredictionRole::Random {
                    // Searches are capped like rounds: so many in a row, then a pause.
                    self.report.rounds += 1;
                    self.rounds_in_attempt += 1;
                    if self.rounds_in_attempt >= self.config.search_rounds {
                        self.rounds_in_attempt = 0;
                        self.next_start = now + self.backoff;
                        self.backoff = (self.backoff * 2).min(self.config.max_backoff);
                    }
                    self.report.sessions += u64::from(self.config.search_sockets);
                    PredictionAction::Search {
                        sockets: self.config.search_sockets,
                        port,
                    }
                } else {
                    PredictionAction::Open {
                        sockets: 0,
                        port: PeerPort::Announced(port),
                    }
                };
                self.actions.push_back(action);
            }
        }
        if self.wanted && self.state == State::Idle && now >= self.next_start {
            self.begin(now);
        }
    }

    /// When `handle_timeout` should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state = match self.state {
            State::Measuring { since } => Some(since + self.config.measure_timeout),
            State::Announced { at, .. } | State::Flown { at } => Some(at + self.round_timeout()),
            State::Idle => self.wanted.then_some(self.next_start),
        };
        let fixed = self
            .fixed_pending
            .then(|| {
                self.last_fixed_ping
                    .map(|t| (t + self.config.min_round_interval).max(self.next_start))
            })
            .flatten();
        state.into_iter().chain(fixed).min()
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<PredictionAction> {
        self.actions.pop_front()
    }

    /// Whether we are the sequential side of a search against a random allocator.
    fn searching(&self) -> bool {
        matches!(
            self.role,
            PredictionRole::Sequential {
                peer: PeerMapping::Random,
                ..
            }
        )
    }

    fn round_timeout(&self) -> Duration {
        if self.searching() {
            self.config.search_round_timeout
        } else {
            self.config.round_timeout
        }
    }

    fn begin(&mut self, now: Instant) {
        self.wanted = false;
        self.round = self.round.wrapping_add(1).max(1);
        self.report.rounds += 1;
        self.report.sessions += 1;
        self.last_start = Some(now);
        self.state = State::Measuring { since: now };
        self.actions.push_back(PredictionAction::Measure);
    }

    fn try_open(&mut self, now: Instant, own_total: u64) {
        let (State::Announced { own_at, .. }, PredictionRole::Sequential { peer, .. }) =
            (self.state, self.role)
        else {
            return;
        };
        let port = match (peer, self.peer) {
            (PeerMapping::Fixed, _) => PeerPort::Endpoint,
            (PeerMapping::Random, _) => PeerPort::Guess,
            (PeerMapping::Sequential, Some((r, p))) if r > self.peer_used => {
                self.peer_used = r;
                PeerPort::Announced(p)
            }
            _ => return,
        };
        // Flows of our own since the announcement already took some of the margin.
        let spent = own_total.saturating_sub(own_at);
        let sockets = u64::from(self.config.max_sockets()).saturating_sub(spent);
        if sockets == 0 {
            self.end_round(now);
            return;
        }
        self.report.sessions += sockets;
        self.actions.push_back(PredictionAction::Open {
            sockets: sockets as u16,
            port,
        });
        self.state = State::Flown { at: now };
    }

    fn end_round(&mut self, now: Instant) {
        self.state = State::Idle;
        self.wanted = true;
        self.rounds_in_attempt += 1;
        let paced = self
            .last_start
            .map_or(now, |t| t + self.config.min_round_interval)
            .max(now);
        let rounds = if self.searching() {
            self.config.search_rounds
        } else {
            self.config.rounds
        };
        if self.rounds_in_attempt >= rounds {
            self.rounds_in_attempt = 0;
            self.next_start = now + self.backoff;
            self.backoff = (self.backoff * 2).min(self.config.max_backoff);
        } else {
            self.next_start = paced;
        }
    }
}

/// `port` moved `steps` allocations of `delta` along, wrapping within 1024–65535 as
/// allocators keep out of the well-known ports.
pub fn advance(port: u16, delta: i32, steps: u64) -> u16 {
    const LOW: i64 = 1024;
    const SPAN: i64 = 65536 - LOW;
    let steps = (steps % SPAN as u64) as i64;
    let p = port as i64 + delta as i64 * steps;
    (LOW + (p - LOW).rem_euclid(SPAN)) as u16
}

/// Our own new flows (socket, IPv4 destination) as our NAT sees them: each takes a mapping, so
/// a sequential NAT's counter moves by one. Flows idle longer than `idle` count as new again
/// (the NAT forgot them), and are dropped at least once per `idle`, so the ledger holds what
/// the last two `idle` periods opened. Bounded: past `cap` live flows, further new ones are
/// counted without being remembered (an overcount, which the margin absorbs).
#[derive(Debug)]
pub struct FlowLedger {
    flows: BTreeMap<(SocketId, SocketAddr), Instant>,
    created: u64,
    idle: Duration,
    cap: usize,
    next_prune: Option<Instant>,
}

impl FlowLedger {
    /// Remembers at most `cap` flows; a flow idle for `idle` is forgotten.
    pub fn new(idle: Duration, cap: usize) -> Self {
        FlowLedger {
            flows: BTreeMap::new(),
            created: 0,
            idle,
            cap,
            next_prune: None,
        }
    }

    /// A datagram left `socket` for `dst`: returns the flow's index when it is new.
    pub fn note(&mut self, now: Instant, socket: SocketId, dst: SocketAddr) -> Option<u64> {
        let idle = self.idle;
        if self.next_prune.is_none_or(|t| now >= t) {
            self.flows
                .retain(|_, last| now.saturating_duration_since(*last) < idle);
            self.next_prune = Some(now + idle);
        }
        if let Some(last) = self.flows.get_mut(&(socket, dst)) {
            let fresh = now.saturating_duration_since(*last) < idle;
            *last = now;
            if fresh {
                return None;
            }
        } else {
            if self.flows.len() >= self.cap {
                self.flows
                    .retain(|_, last| now.saturating_duration_since(*last) < idle);
            }
            if self.flows.len() < self.cap {
                self.flows.insert((socket, dst), now);
            }
        }
        let index = self.created;
        self.created += 1;
        Some(index)
    }

    /// New flows so far.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// Flows remembered now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is remembered.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}
