//! Mutual port prediction toward sequential NATs ([`burrow_punch::prediction`]): the engine's
//! side of it. One measurement of our NAT's counter (a STUN Binding request from a socket with
//! no mapping yet) serves every peer that asks within a moment; our own new flows are counted
//! as they leave ([`burrow_punch::FlowLedger`]); announcements travel as disco
//! `PortPrediction` over DERP; each round's flows leave fresh sockets after the birthday ones.
//!
//! One round at a time per node, from measurement to flows: two peers' rounds announced from
//! one counter would promise the same port twice, and whichever opened first would take it
//! from the other. Rounds waiting for their turn measure when the current one has opened.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_disco::Message;
use burrow_punch::{
    MutualPrediction, PeerMapping, PeerPort, PredictionAction, PredictionRole, Route, SocketId,
    MAIN_SOCKET,
};
use burrow_stun::client::Event as StunEvent;
use burrow_stun::{BindingClient, BindingRequest, ClientConfig};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::birthday::birthday_targets;
use super::Node;
use crate::batch::Dest;

/// Measurement sockets rotate through this many, so none asks again within a NAT timeout
/// (measurements are at least `min_round_interval` apart per peer).
const MEASURE_SLOTS: u16 = 32;

/// The STUN transaction measuring our NAT's counter.
pub(super) struct Measurement {
    client: BindingClient,
    socket: SocketId,
    server: SocketAddr,
    started: Instant,
    /// The index of its flow in the ledger (set when the request leaves; `None` if the NAT
    /// already had a mapping for it, which makes the answer useless).
    index: Option<u64>,
}

/// A round's flows pinged again: the same sockets to the same ports (no new NAT session, so
/// the counter the round predicted is not disturbed), so one lost ping in a burst does not
/// spoil the round.
pub(super) struct Repeats {
    targets: Vec<(SocketId, SocketAddr)>,
    pub(super) next: Instant,
    sent: u32,
}

/// The first repeat of a round's pings comes this long after them; each next one waits twice
/// as long as the one before.
impl Repeats {
    /// Entries held (the flows pinged again).
    pub(super) fn footprint(&self) -> usize {
        self.targets.len()
    }
}

const REPEAT_FIRST: Duration = Duration::from_millis(200);
/// Repeats of a round's pings.
const REPEATS: u32 = 5;

/// A finished measurement: the port the fresh flow got, and its index among our flows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Measured {
    port: u16,
    index: u64,
}

impl Node {
    /// The first socket a prediction round opens (after the birthday sockets).
    fn prediction_base(&self) -> SocketId {
        self.config.birthday_sockets.saturating_add(1)
    }

    /// Creates (or drops) peer `i`'s prediction when the two NATs call for one: our mapping
    /// sequential and the peer's sequential or fixed, or ours fixed and the peer's sequential;
    /// no port mapping on either side; the peer not direct yet.
    pub(super) fn plan_prediction(&mut self, now: Instant, i: usize) {
        let role = self.prediction_role(i);
        let p = &mut self.peers[i];
        if matches!(p.paths.route(), Route::Direct(_)) {
            return;
        }
        match role {
            // Parked, not dropped: its pacing and back-off outlive a NatInfo that comes and goes.
            None => {
                if let Some(m) = p.prediction.take() {
                    p.parked_prediction = Some(m);
                }
            }
            Some(role) if p.prediction.as_ref().is_some_and(|m| m.role() == role) => {}
            Some(role) => {
                let m = match p.prediction.take().or_else(|| p.parked_prediction.take()) {
                    Some(mut m) => {
                        m.set_role(now, role);
                        m
                    }
                    None => MutualPrediction::new(self.config.prediction, role, now),
                };
                p.prediction = Some(m);
                self.drive_prediction(now, i);
            }
        }
    }

    fn prediction_role(&self, i: usize) -> Option<PredictionRole> {
        let me = self.nat?;
        let p = &self.peers[i];
        let peer = p.peer_nat?;
        if peer.mapped || self.has_public_mapping() {
            return None;
        }
        let peer_mapping = match (peer.varies, peer.predictable) {
            (false, _) => PeerMapping::Fixed,
            (true, true) => PeerMapping::Sequential,
            (true, false) => PeerMapping::Random,
        };
        match (me.mapping_varies, me.delta, peer_mapping) {
            (true, Some(delta), peer) => Some(PredictionRole::Sequential { delta, peer }),
            (false, _, PeerMapping::Sequential) => Some(PredictionRole::Fixed),
            (true, None, PeerMapping::Sequential) => Some(PredictionRole::Random),
            _ => None,
        }
    }

    /// The prediction part of `handle_timeout` for peer `i`.
    pub(super) fn run_prediction(&mut self, now: Instant, i: usize) {
        self.repeat_prediction(now, i);
        if self.peers[i].prediction.is_none() {
            self.plan_prediction(now, i);
        }
        let Some(m) = self.peers[i].prediction.as_mut() else {
            return;
        };
        if m.poll_timeout().is_some_and(|t| t <= now) {
            m.handle_timeout(now);
        }
        self.drive_prediction(now, i);
        self.release_prediction(now);
    }

    /// Pings the latest round's flows again when due (until the peer is direct).
    fn repeat_prediction(&mut self, now: Instant, i: usize) {
        let p = &mut self.peers[i];
        if matches!(p.paths.route(), Route::Direct(_)) {
            p.prediction_repeats = None;
            return;
        }
        let Some(r) = p.prediction_repeats.as_mut().filter(|r| r.next <= now) else {
            return;
        };
        r.sent += 1;
        r.next = now + REPEAT_FIRST * 2u32.pow(r.sent);
        let targets = if r.sent >= REPEATS {
            p.prediction_repeats
                .take()
                .map(|r| r.targets)
                .unwrap_or_default()
        } else {
            r.targets.clone()
        };
        for (socket, dst) in targets {
            self.send_probe_ping(i, socket, dst);
        }
    }

    /// The peer announced the port its flow toward us will have.
    pub(super) fn handle_port_prediction(&mut self, now: Instant, i: usize, round: u32, port: u16) {
        self.plan_prediction(now, i);
        let own = self.ledger.created();
        let Some(m) = self.peers[i].prediction.as_mut() else {
            return;
        };
        m.handle_announce(now, round, port, own);
        self.drive_prediction(now, i);
        self.release_prediction(now);
    }

    /// Carries out what peer `i`'s prediction wants.
    fn drive_prediction(&mut self, now: Instant, i: usize) {
        while let Some(action) = self.peers[i]
            .prediction
            .as_mut()
            .and_then(|m| m.poll_action())
        {
            match action {
                PredictionAction::Measure => {
                    self.peers[i].stats.prediction_rounds += 1;
                    self.request_measurement(now, i);
                }
                PredictionAction::Announce { round, port } => {
                    self.send_disco_relay(i, &Message::PortPrediction { round, port });
                }
                PredictionAction::Open { sockets, port } => {
                    // Every peer's predictions share one budget of new flows (NAT sessions).
                    let cost = u32::from(sockets.max(1));
                    if !self.prediction_sessions.try_take_n(now, cost) {
                        continue;
                    }
                    // Only the peer's own advertised public IPv4 (as for birthday probing).
                    let targets =
                        birthday_targets(&self.peers[i], self.config.birthday_needs_control_ip);
                    let Some(endpoint) = targets.iter().copied().find(SocketAddr::is_ipv4) else {
                        continue;
                    };
                    let dst = match port {
                        PeerPort::Announced(p) => SocketAddr::new(endpoint.ip(), p),
                        PeerPort::Endpoint => endpoint,
                        PeerPort::Guess => {
                            let p = 1024 + (self.rng.next_u32() % (65536 - 1024)) as u16;
                            SocketAddr::new(endpoint.ip(), p)
                        }
                    };
                    let base = self.prediction_base();
                    let targets: Vec<(SocketId, SocketAddr)> = if sockets == 0 {
                        vec![(MAIN_SOCKET, dst)]
                    } else {
                        (0..sockets)
                            .map(|k| (base.saturating_add(k), dst))
                            .collect()
                    };
                    for (socket, dst) in &targets {
                        self.peers[i].stats.predicted += 1;
                        self.send_probe_ping(i, *socket, *dst);
                    }
                    self.peers[i].prediction_repeats = Some(Repeats {
                        targets,
                        next: now + REPEAT_FIRST,
                        sent: 0,
                    });
                }
                PredictionAction::Search { sockets, port } => {
                    let sockets = sockets.min(self.config.birthday_sockets);
                    if !self.prediction_sessions.try_take_n(now, u32::from(sockets)) {
                        continue;
                    }
                    let targets =
                        birthday_targets(&self.peers[i], self.config.birthday_needs_control_ip);
                    let Some(endpoint) = targets.iter().copied().find(SocketAddr::is_ipv4) else {
                        continue;
                    };
                    let dst = SocketAddr::new(endpoint.ip(), port);
                    self.peers[i].stats.prediction_rounds += 1;
                    // The birthday sockets: each flow toward a newly announced port is new.
                    for k in 1..=sockets {
                        self.peers[i].stats.predicted += 1;
                        self.send_probe_ping(i, k, dst);
                    }
                }
            }
        }
    }

    /// Peer `i` wants our NAT's counter: a recent measurement serves it at once; otherwise one
    /// starts (unless one is under way already).
    fn request_measurement(&mut self, now: Instant, i: usize) {
        let key = self.peers[i].config.node_key;
        // Another peer's round holds the counter (measured, not yet opened): wait for it.
        let held = self.prediction_owner.is_some_and(|(k, since)| {
            k != key
                && self.by_node.contains_key(&k)
                && now.saturating_duration_since(since) < self.config.prediction.round_timeout
        });
        if held {
            if !self.prediction_waiting.contains(&key) {
                self.prediction_waiting.push_back(key);
            }
            return;
        }
        self.prediction_owner = Some((key, now));
        if self.measurement.is_some() {
            return;
        }
        let Some(server) = self.ipv4_stun_server() else {
            if let Some(m) = self.peers[i].prediction.as_mut() {
                m.handle_measure_failed(now);
            }
            return;
        };
        let slot = self.measure_seq % MEASURE_SLOTS;
        self.measure_seq = self.measure_seq.wrapping_add(1);
        let socket = self
            .prediction_base()
            .saturating_add(self.config.prediction.max_sockets())
            .saturating_add(slot);
        let mut client = BindingClient::new(
            ClientConfig::default(),
            ChaCha20Rng::seed_from_u64(self.rng.next_u64()),
        );
        client.start(now, BindingRequest::to(server));
        self.measurement = Some(super::prediction::Measurement {
            client,
            socket,
            server,
            started: now,
            index: None,
        });
        self.drain_measurement(now);
    }

    /// Sends the measurement's datagrams and takes its outcome.
    fn drain_measurement(&mut self, now: Instant) {
        let Some(m) = self.measurement.as_mut() else {
            return;
        };
        while let Some(t) = m.client.poll_transmit() {
            let dest = Dest::Udp {
                socket: m.socket,
                dst: t.dst,
            };
            self.transmits.push(dest, &t.payload);
        }
        let mut outcome = None;
        while let Some(e) = m.client.poll_event() {
            outcome = Some(match e {
                StunEvent::Success(r) => Some(r.mapped),
                _ => None,
            });
        }
        let expired =
            now.saturating_duration_since(m.started) >= self.config.prediction.measure_timeout;
        if outcome.is_none() && !expired {
            return;
        }
        let m = self.measurement.take().expect("present");
        // Useful only from a fresh flow, on the address peers know us by.
        let reflexive = self.nat.map(|n| n.reflexive.ip());
        let done = match (outcome.flatten(), m.index) {
            (Some(mapped), Some(index)) if Some(mapped.ip()) == reflexive => Some(Measured {
                port: mapped.port(),
                index,
            }),
            _ => None,
        };
        match done {
            Some(done) => self.deliver_measured(now, done),
            None => {
                let owner = self
                    .prediction_owner
                    .and_then(|(k, _)| self.by_node.get(&k).copied());
                if let Some(p) = owner.and_then(|j| self.peers[j].prediction.as_mut()) {
                    if p.is_measuring() {
                        p.handle_measure_failed(now);
                    }
                }
            }
        }
        self.release_prediction(now);
    }

    /// Hands a measurement to the round that holds the counter.
    fn deliver_measured(&mut self, now: Instant, done: Measured) {
        let total = self.ledger.created();
        let since = total.saturating_sub(done.index + 1);
        let Some(j) = self
            .prediction_owner
            .and_then(|(k, _)| self.by_node.get(&k).copied())
        else {
            return;
        };
        if let Some(p) = self.peers[j].prediction.as_mut() {
            if p.is_measuring() {
                p.handle_measured(now, done.port, since, total);
                self.drive_prediction(now, j);
            }
        }
    }

    /// Releases the counter when its round has opened (or ended), and starts the next
    /// waiting round's measurement.
    fn release_prediction(&mut self, now: Instant) {
        let Some((k, _)) = self.prediction_owner else {
            return;
        };
        let pending = self
            .by_node
            .get(&k)
            .and_then(|&j| self.peers[j].prediction.as_ref())
            .is_some_and(|m| m.is_pending());
        if pending {
            return;
        }
        self.prediction_owner = None;
        while let Some(next) = self.prediction_waiting.pop_front() {
            let Some(&j) = self.by_node.get(&next) else {
                continue;
            };
            if self.peers[j]
                .prediction
                .as_ref()
                .is_some_and(|m| m.is_measuring())
            {
                self.request_measurement(now, j);
                break;
            }
        }
    }

    /// A STUN datagram on a socket other than the main one: the measurement's answer, if any.
    pub(super) fn handle_measurement_input(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) {
        let Some(m) = self.measurement.as_mut() else {
            return;
        };
        if m.socket != socket || m.server != from {
            return;
        }
        let _ = m.client.handle_input(now, from, data);
        self.drain_measurement(now);
    }

    /// The measurement's retransmissions and deadline.
    pub(super) fn handle_measurement_timeout(&mut self, now: Instant) {
        if let Some(m) = self.measurement.as_mut() {
            m.client.handle_timeout(now);
            self.drain_measurement(now);
        }
    }

    /// When the measurement next needs `handle_timeout`.
    pub(super) fn poll_measurement_timeout(&self) -> Option<Instant> {
        let m = self.measurement.as_ref()?;
        let cap = m.started + self.config.prediction.measure_timeout;
        Some(m.client.poll_timeout().map_or(cap, |t| t.min(cap)))
    }

    /// Counts a datagram leaving for IPv4 as a flow of ours (while our NAT's mapping varies,
    /// or is not known yet), and notes the measurement's own flow.
    pub(super) fn note_flow(&mut self, socket: SocketId, dst: SocketAddr) {
        if !dst.is_ipv4() || self.nat.is_some_and(|n| !n.mapping_varies) {
            return;
        }
        let Some(index) = self.ledger.note(self.last_now, socket, dst) else {
            return;
        };
        if let Some(m) = self.measurement.as_mut() {
            if m.socket == socket && m.server == dst && m.index.is_none() {
                m.index = Some(index);
            }
        }
    }
}
