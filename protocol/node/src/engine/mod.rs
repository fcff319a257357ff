//! The node engine: one WireGuard device, disco and hole punching for every peer, over one UDP
//! socket (plus birthday-probe sockets when a hard NAT needs them) and DERP.
//!
//! Relay first: a peer's WireGuard packets go over DERP from the first one; direct candidates
//! are tried in parallel; traffic moves when a disco ping/pong validates a path. While a direct
//! path is not freshly confirmed, packets go both ways (direct and DERP) and WireGuard's replay
//! window drops the duplicate, so no packet is lost when the path changes.
//!
//! # The verbs of [`Node`]
//! - Peers: [`Node::add_peer`], [`Node::remove_peer`].
//! - Commands: [`Node::send`] (an IP packet), [`Node::ping`] (`burrow ping`).
//! - Inputs: [`Node::handle_input`] (a datagram or a DERP packet), [`Node::handle_timeout`].
//! - Outputs: [`Node::poll_transmit`], [`Node::poll_event`], [`Node::poll_timeout`].
//! - Batches: [`Node::send_batch`] and [`Node::handle_batch`] take a burst and write what to
//!   send and the packets delivered into the caller's buffers ([`TransmitBatch`],
//!   [`PacketBatch`]); [`Node::poll_transmits`] moves what timers queued there too. Each item
//!   goes through what its one-at-a-time call does.
//! - Queries: keys, [`Node::nat`], [`Node::candidates`], and per peer [`Node::route`],
//!   [`Node::stats`], [`Node::explain`], [`Node::peer_for_ip`].
//!
//! # Driving it
//! [`Node::new`] and every call that takes `now` may queue output. After each, the driver:
//! 1. sends everything from [`Node::poll_transmit`] until `None`;
//! 2. handles everything from [`Node::poll_event`] until `None`;
//! 3. sleeps until [`Node::poll_timeout`] or the next input, whichever comes first, and calls
//!    [`Node::handle_timeout`] once that instant has passed.
//!
//! The two queues are independent (draining one never adds to the other), so steps 1 and 2 may
//! swap. Draining moves no deadline, but every input and command can: read it again after each.
//!
//! # Layout
//! `api` holds the inputs and outputs (re-exported here and at the crate root); `stun` the
//! node's own NAT and candidates; `disco` pings, pongs, CallMeMaybe and NatInfo; `birthday` the
//! search against hard NATs; `wireguard` the tunnel itself.

mod api;
mod birthday;
mod disco;
mod doubt;
mod peer_relay;
mod pmtu;
mod prediction;
mod relay_host;
mod stun;
mod wireguard;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_disco::{BoxKey, Message};
use burrow_punch::{
    BirthdayProber, Candidate, FlowLedger, MutualPrediction, PeerPaths, Route, MAIN_SOCKET,
};
use burrow_stun::is_stun;
use burrow_wg::device::{Device, PeerId};
use burrow_wg::tunnel::Encapsulated;
use burrow_wg::PublicKey;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

pub use api::{
    Event, Explanation, Footprint, Input, NodeConfig, NodeError, PeerConfig, PeerStats, Transmit,
};
pub use doubt::{DoubtEnd, DoubtEpisode, DOUBT_RTTS, MIN_DOUBT_AFTER};
pub use peer_relay::{
    PeerRelayPolicy, RelayReport, RelayState, MAX_RELAY_TRIES, RELAY_AFTER, RELAY_SOCKET,
};
pub use pmtu::{MtuConfig, MIN_TUNNEL_MTU};
pub use relay_host::RelayServerSettings;

use crate::batch::{BatchOutcome, Dest, PacketBatch, TransmitBatch};
use crate::nat::NatView;
use crate::routing::AllowedIps;
use birthday::Opening;
use stun::StunRound;
use wireguard::WgSource;

/// Largest datagram the engine handles.
const MAX_DATAGRAM: usize = 65_535;

/// A peer and everything the engine keeps for it.
struct Peer {
    config: PeerConfig,
    disco_box: Option<BoxKey>,
    wg: PeerId,
    paths: PeerPaths,
    peer_nat: Option<PeerNat>,
    /// When the peer first said its port is mapped.
    peer_mapped_since: Option<Instant>,
    prober: Option<BirthdayProber>,
    opening: Option<Opening>,
    prediction: Option<MutualPrediction>,
    /// The prediction while the NATs call for none (its pacing kept for when they do again).
    parked_prediction: Option<MutualPrediction>,
    /// The latest prediction round's flows, pinged again a few times (lossy links).
    prediction_repeats: Option<prediction::Repeats>,
    relays: peer_relay::RelayPaths,
    first_unanswered_direct: Option<Instant>,
    /// Data datagrams sent on the direct path since then.
    unanswered_sent: u32,
    /// The direct address authenticated data from the peer last came from, and since when.
    rx_source: Option<(SocketAddr, Instant)>,
    /// Whether the direct path is in doubt (data unanswered past its usual answer time).
    doubt: doubt::Doubt,
    /// The direct path's MTU discovery.
    mtu: pmtu::PeerMtu,
    stats: PeerStats,
}

/// What a peer told us of its NAT (disco NatInfo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerNat {
    /// Its mapping varies by destination (hard).
    pub(crate) varies: bool,
    /// …predictably (sequential ports).
    pub(crate) predictable: bool,
    /// Its gateway maps its port: reachable from anywhere.
    pub(crate) mapped: bool,
}

/// How long a port mapping (ours or the peer's) gets to give a direct path before the
/// birthday search starts anyway: a mapping reaches us in one round trip when it works, and
/// some gateways' mappings do not take every sender (miniupnpd's DNAT rules clash with a
/// connection tracked from the same port, for one).
pub(crate) const MAPPING_GRACE: Duration = Duration::from_secs(3);

/// The sans-IO node engine.
pub struct Node {
    config: NodeConfig,
    disco_public: PublicKey,
    device: Device,
    rng: ChaCha20Rng,
    peers: Vec<Peer>,
    by_node: BTreeMap<PublicKey, usize>,
    by_disco: BTreeMap<PublicKey, usize>,
    by_wg: BTreeMap<PeerId, usize>,
    /// Cryptokey routing: which peer owns which address.
    allowed: AllowedIps,
    stun: Option<StunRound>,
    next_stun: Instant,
    /// STUN rounds in a row without an IPv4 answer (they are retried sooner, backing off).
    stun_failures: u32,
    nat: Option<NatView>,
    /// Our IPv6 addresses as STUN servers saw them (no NAT: normally an interface address).
    reflexive_v6: Vec<SocketAddr>,
    /// The latest `now` the engine was given (explanations are as of then).
    last_now: Instant,
    /// The gateway's mapping of our port (NAT-PMP, PCP or UPnP), reachable from anywhere, and
    /// since when.
    port_mapping: Option<SocketAddr>,
    mapped_since: Option<Instant>,
    /// The pinhole the router's IPv6 firewall keeps open for our port (PCP), reachable from
    /// anywhere over IPv6.
    ipv6_pinhole: Option<SocketAddr>,
    /// The relay we run for others (`NodeConfig::relay_server`), who relays for whom, and
    /// allocations and relay offers refused.
    relay_server: Option<burrow_relay::RelayServer>,
    relay_policy: PeerRelayPolicy,
    relay_refused: u64,
    /// The relay socket's STUN transaction (to the server it went to), and its mapping.
    relay_stun: Option<(burrow_stun::BindingClient, SocketAddr)>,
    relay_mapped: Option<SocketAddr>,
    /// Our own new IPv4 flows, counted as they leave (mutual port prediction).
    ledger: FlowLedger,
    /// The STUN transaction measuring our NAT's counter, and its latest result.
    measurement: Option<prediction::Measurement>,
    /// The peer whose round holds our NAT's counter (measured, not opened yet), since when;
    /// and the peers whose rounds wait for it.
    prediction_owner: Option<(PublicKey, Instant)>,
    prediction_waiting: VecDeque<PublicKey>,
    measure_seq: u16,
    /// New flows every peer's predictions and searches share (`PredictionConfig::sessions`).
    prediction_sessions: burrow_punch::TokenBucket,
    /// Birthday searches held back for a mapping's grace period are planned again then.
    replan_birthday: Option<Instant>,
    candidates: Vec<Candidate>,
    user_pings: BTreeMap<burrow_disco::TxId, (usize, Instant, Route)>,
    /// What to send, in one buffer ([`Node::poll_transmit`] takes it one at a time,
    /// [`Node::poll_transmits`] whole).
    transmits: TransmitBatch,
    /// The caller's batch while a batch call runs: delivered packets go there, not to events.
    rx: Option<PacketBatch>,
    events: VecDeque<Event>,
    buf: Vec<u8>,
    /// Payload buffers given back by the driver, for reuse.
    spare: crate::Buffers,
}

impl core::fmt::Debug for Node {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("public_key", &self.device.public_key())
            .field("peers", &self.peers.len())
            .field("nat", &self.nat)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node with no peers; its first STUN round starts at once.
    pub fn new(config: NodeConfig, now: Instant) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
        let device = Device::new(
            config.private_key.clone(),
            ChaCha20Rng::seed_from_u64(rng.next_u64()),
            now,
            config.unix_time,
        );
        let mut node = Node {
            device,
            rng,
            peers: Vec::new(),
            by_node: BTreeMap::new(),
            by_disco: BTreeMap::new(),
            by_wg: BTreeMap::new(),
            allowed: AllowedIps::default(),
            stun: None,
            next_stun: now,
            stun_failures: 0,
            nat: None,
            reflexive_v6: Vec::new(),
            last_now: now,
            port_mapping: None,
            mapped_since: None,
            ipv6_pinhole: None,
            replan_birthday: None,
            relay_server: None,
            relay_policy: PeerRelayPolicy::default(),
            relay_refused: 0,
            relay_stun: None,
            relay_mapped: None,
            ledger: FlowLedger::new(Duration::from_secs(30), 4096),
            measurement: None,
            prediction_owner: None,
            prediction_waiting: VecDeque::new(),
            measure_seq: 0,
            prediction_sessions: burrow_punch::TokenBucket::new(config.prediction.sessions, now),
            candidates: Vec::new(),
            user_pings: BTreeMap::new(),
            transmits: TransmitBatch::new(),
            rx: None,
            events: VecDeque::new(),
            buf: vec![0u8; MAX_DATAGRAM + 64],
            spare: crate::Buffers::default(),
            disco_public: config.disco_key.public_key(),
            config,
        };
        node.start_relay_server(now);
        node.start_stun(now);
        node
    }

    /// Our WireGuard public key.
    pub fn public_key(&self) -> PublicKey {
        self.device.public_key()
    }

    /// Our disco public key.
    pub fn disco_public_key(&self) -> PublicKey {
        self.disco_public
    }

    /// What the node knows of its NAT.
    pub fn nat(&self) -> Option<NatView> {
        self.nat
    }

    /// Our current candidates.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// Adds (or updates the endpoints of) a peer; it is reachable over DERP at once.
    ///
    /// A disco key that another peer already has is refused: disco messages are attributed to
    /// peers by it, so a duplicate would let one node speak for another's paths. A changed disco
    /// key (the peer rotated it) replaces the old one at once.
    ///
    /// A prefix another peer already has is refused too: each address has one owner, the peer
    /// with the longest prefix holding it, and only that peer may send from it.
    pub fn add_peer(&mut self, now: Instant, peer: PeerConfig) -> Result<(), NodeError> {
        if let Some(&j) = self.by_disco.get(&peer.disco_key) {
            if self.peers[j].config.node_key != peer.node_key {
                return Err(NodeError::DuplicateDiscoKey(peer.node_key));
            }
        }
        if self
            .allowed
            .taken_by_other(&peer.node_key, &peer.allowed_ips)
        {
            return Err(NodeError::OverlappingAddresses(peer.node_key));
        }
        if let Some(&i) = self.by_node.get(&peer.node_key) {
            self.allowed.set(peer.node_key, &peer.allowed_ips);
            let endpoints = self.outside_tunnel(&peer.endpoints);
            let old_disco = self.peers[i].config.disco_key;
            if old_disco != peer.disco_key {
                self.by_disco.remove(&old_disco);
                self.by_disco.insert(peer.disco_key, i);
                self.peers[i].disco_box = BoxKey::new(&self.config.disco_key, &peer.disco_key);
                self.enforce_relay_policy();
            }
            self.peers[i].config = peer;
            self.peers[i]
                .paths
                .handle_control_endpoints(now, &endpoints);
            self.flush_paths(now, i);
            return Ok(());
        }
        let wg = self.device.add_peer(now, peer.node_key, None, None);
        let i = self.peers.len();
        let rng = ChaCha20Rng::seed_from_u64(self.rng.next_u64());
        let mut paths = PeerPaths::new(self.config.path, rng, now);
        if !self.candidates.is_empty() {
            paths.set_local_candidates(now, self.candidates.clone());
        }
        self.allowed.set(peer.node_key, &peer.allowed_ips);
        let endpoints = self.outside_tunnel(&peer.endpoints);
        if !endpoints.is_empty() {
            paths.handle_control_endpoints(now, &endpoints);
        }
        self.by_node.insert(peer.node_key, i);
        self.by_disco.insert(peer.disco_key, i);
        self.by_wg.insert(wg, i);
        let disco_box = BoxKey::new(&self.config.disco_key, &peer.disco_key);
        self.peers.push(Peer {
            disco_box,
            config: peer,
            wg,
            paths,
            peer_nat: None,
            peer_mapped_since: None,
            prober: None,
            opening: None,
            prediction: None,
            parked_prediction: None,
            prediction_repeats: None,
            relays: peer_relay::RelayPaths::default(),
            first_unanswered_direct: None,
            unanswered_sent: 0,
            rx_source: None,
            doubt: doubt::Doubt::default(),
            mtu: pmtu::PeerMtu::default(),
            stats: PeerStats::default(),
        });
        self.flush_paths(now, i);
        Ok(())
    }

    /// The peer whose allowed addresses hold `ip` (the longest prefix wins): where a packet
    /// for `ip` goes, and the only peer a packet from `ip` is accepted from.
    pub fn peer_for_ip(&self, ip: IpAddr) -> Option<PublicKey> {
        self.allowed.owner_of(ip)
    }

    /// Forgets a peer (the coordination server removed it, or its key expired): nothing more
    /// goes to it, and neither its WireGuard handshakes nor its disco messages are accepted.
    /// Whether it was known.
    pub fn remove_peer(&mut self, now: Instant, peer: &PublicKey) -> bool {
        let Some(i) = self.by_node.remove(peer) else {
            return false;
        };
        self.device.remove_peer(now, peer);
        let gone = self.peers.swap_remove(i);
        self.by_disco.remove(&gone.config.disco_key);
        self.by_wg.remove(&gone.wg);
        self.user_pings.retain(|_, (j, _, _)| *j != i);
        self.allowed.remove(peer);
        let moved_from = self.peers.len();
        if i < moved_from {
            let moved = &self.peers[i];
            self.by_node.insert(moved.config.node_key, i);
            self.by_disco.insert(moved.config.disco_key, i);
            self.by_wg.insert(moved.wg, i);
            for (j, _, _) in self.user_pings.values_mut() {
                if *j == moved_from {
                    *j = i;
                }
            }
        }
        self.enforce_relay_policy();
        true
    }

    /// How much the engine holds, by part (entries in its tables and queues): bounded however
    /// long it runs and whatever the network does, which a soak checks.
    pub fn footprint(&self) -> Footprint {
        let traversal = self
            .peers
            .iter()
            .map(|p| {
                p.prober.as_ref().map_or(0, |b| b.footprint())
                    + p.opening.as_ref().map_or(0, |o| o.footprint())
                    + p.prediction.as_ref().map_or(0, |m| m.footprint())
                    + p.parked_prediction.as_ref().map_or(0, |m| m.footprint())
                    + p.prediction_repeats.as_ref().map_or(0, |r| r.footprint())
                    + p.relays.footprint()
                    + p.doubt.footprint()
            })
            .sum::<usize>()
            + self.prediction_waiting.len();
        Footprint {
            peers: self.peers.len()
                + self.by_node.len()
                + self.by_disco.len()
                + self.by_wg.len()
                + self.allowed.len(),
            paths: self
                .peers
                .iter()
                .map(|p| p.paths.footprint())
                .sum::<usize>()
                + self.candidates.len()
                + self.reflexive_v6.len(),
            traversal,
            wireguard: self.device.footprint(),
            queued: self.device.queued(),
            flows: self.ledger.len(),
            relay: self.relay_server.as_ref().map_or(0, |r| r.footprint()),
            queues: self.transmits.len()
                + self.events.len()
                + self.user_pings.len()
                + self.spare.len(),
        }
    }

    /// Where a peer's traffic goes now.
    pub fn route(&self, peer: &PublicKey) -> Option<Route> {
        self.by_node.get(peer).map(|&i| self.peers[i].paths.route())
    }

    /// A peer's counters.
    pub fn stats(&self, peer: &PublicKey) -> Option<PeerStats> {
        self.by_node.get(peer).map(|&i| self.peers[i].stats)
    }

    /// Every peer's node key, in the order they were added.
    pub fn peer_keys(&self) -> Vec<PublicKey> {
        self.peers.iter().map(|p| p.config.node_key).collect()
    }

    /// Why a peer is on its path, as of the latest input or timer.
    pub fn explain(&self, peer: &PublicKey) -> Option<Explanation> {
        let i = *self.by_node.get(peer)?;
        let p = &self.peers[i];
        let now = self.last_now;
        Some(Explanation {
            route: p.paths.route(),
            families: p.paths.families(now),
            candidates: p.paths.remote_candidates().copied().collect(),
            attempts: p.paths.attempts().copied().collect(),
            peer_mapping_varies: p.peer_nat.map(|n| n.varies),
            peer_port_mapped: p.peer_nat.map(|n| n.mapped),
            port_mapping: self.port_mapping,
            probes: p.stats.probes,
            birthday_attempts_exhausted: p.prober.as_ref().map_or(0, |b| b.attempts_exhausted()),
            prediction: p.prediction.as_ref().map(|m| m.report()),
            peer_relays: self.peer_relays(peer),
            doubts: p.doubt.episodes(),
            mtu: self.mtu_report(i),
            effective_mtu: self.path_mtu(peer).unwrap_or(self.config.mtu.tunnel_mtu),
        })
    }

    /// A disco ping to `peer` on its current path (`burrow ping`); the answer comes as
    /// [`Event::PingResult`]. Unanswered pings are forgotten after a minute.
    pub fn ping(&mut self, now: Instant, peer: &PublicKey) -> Result<(), NodeError> {
        let i = *self
            .by_node
            .get(peer)
            .ok_or(NodeError::UnknownPeer(*peer))?;
        self.user_pings
            .retain(|_, (_, at, _)| now.saturating_duration_since(*at) < Duration::from_secs(60));
        let mut tx_id = [0u8; 12];
        self.rng.fill_bytes(&mut tx_id);
        let route = self.peers[i].paths.route();
        self.user_pings.insert(tx_id, (i, now, route));
        let ping = Message::Ping {
            tx_id,
            node_key: Some(self.device.public_key()),
            padding: 0,
        };
        match route {
            Route::Direct(addr) => {
                let socket = self.peers[i].paths.socket_of(addr);
                if let Some(payload) = self.seal(i, &ping) {
                    self.queue(Transmit::Udp {
                        socket,
                        dst: addr,
                        payload,
                    });
                }
            }
            // Through the peer relay when one carries the traffic, else over DERP.
            Route::Relay => match self.relay_route(now, i) {
                Some((addr, vni, _)) => {
                    if let Some(sealed) = self.seal(i, &ping) {
                        self.send_disco_via_relay(addr, vni, &sealed);
                    }
                }
                None => self.send_disco_relay(i, &ping),
            },
        }
        Ok(())
    }

    /// Encrypts an IP packet for `peer` and sends it on its current path. A packet larger
    /// than the path carries (once its MTU is known) is not sent: an ICMP "too big" comes back
    /// as an [`Event::Packet`] from the peer instead (into the delivered batch, through
    /// [`Node::send_batch`]), or IPv4 fragments go when the packet allows fragmenting.
    pub fn send(&mut self, now: Instant, peer: &PublicKey, packet: &[u8]) -> Result<(), NodeError> {
        let i = *self
            .by_node
            .get(peer)
            .ok_or(NodeError::UnknownPeer(*peer))?;
        match self.oversize(i, packet) {
            None => self.send_packet(now, i, packet),
            Some(crate::icmp::TooBig::Tell(error)) => {
                self.peers[i].stats.tx_too_big += 1;
                self.deliver(*peer, &error);
                Ok(())
            }
            Some(crate::icmp::TooBig::Fragments(fragments)) => {
                self.peers[i].stats.tx_fragments += fragments.len() as u64;
                fragments
                    .iter()
                    .try_for_each(|f| self.send_packet(now, i, f))
            }
            Some(crate::icmp::TooBig::Drop) => Ok(()),
        }
    }

    /// Encrypts an IP packet for peer `i` and sends it on its current path.
    fn send_packet(&mut self, now: Instant, i: usize, packet: &[u8]) -> Result<(), NodeError> {
        let wg = self.peers[i].wg;
        let mut out = std::mem::take(&mut self.buf);
        let r = self.device.encapsulate(now, wg, packet, &mut out);
        let result = match r {
            Ok(Encapsulated::Sent(n)) => {
                self.peers[i].stats.tx_bytes += packet.len() as u64;
                self.peers[i].paths.note_activity(now);
                self.send_wg(now, i, &out[..n], true);
                Ok(())
            }
            Ok(Encapsulated::Queued) => Ok(()),
            Err(e) => Err(NodeError::Wg(e)),
        };
        self.buf = out;
        self.drain_device(now);
        result
    }

    /// Handles a datagram or a relayed packet.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) -> Result<(), NodeError> {
        self.last_now = self.last_now.max(now);
        match input {
            Input::Udp { socket, from, data } => {
                if socket == RELAY_SOCKET {
                    return self.handle_relay_socket(now, from, data);
                }
                if burrow_relay::looks_like_geneve(data) {
                    return self.handle_geneve(now, socket, from, data);
                }
                if is_stun(data) {
                    if socket != MAIN_SOCKET {
                        self.handle_measurement_input(now, socket, from, data);
                        return Ok(());
                    }
                    self.handle_stun(now, from, data);
                    return Ok(());
                }
                if let Some(sender) = burrow_disco::sender(data) {
                    let Some(&i) = self.by_disco.get(&sender) else {
                        return Err(NodeError::Unrecognised(from));
                    };
                    let Some(msg) = self.open(i, data) else {
                        return Err(NodeError::Unrecognised(from));
                    };
                    self.handle_direct_disco(now, i, socket, from, msg);
                    return Ok(());
                }
                self.handle_wg(now, data, WgSource::Direct(socket, from))
            }
            Input::Derp { region, from, data } => {
                if let Some(sender) = burrow_disco::sender(data) {
                    let Some(&i) = self.by_disco.get(&sender) else {
                        return Err(NodeError::Unrecognised(relay_addr()));
                    };
                    let Some(msg) = self.open(i, data) else {
                        return Err(NodeError::Unrecognised(relay_addr()));
                    };
                    if self.peers[i].config.node_key != from {
                        return Err(NodeError::Unrecognised(relay_addr()));
                    }
                    self.handle_relayed_disco(now, i, msg);
                    return Ok(());
                }
                self.handle_wg(now, data, WgSource::Relay(region, from))
            }
        }
    }

    /// Runs every due timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        self.handle_stun_timeout(now);
        self.handle_measurement_timeout(now);
        self.handle_relay_server_timeout(now);
        self.handle_relay_stun_timeout(now);
        self.device.handle_timeout(now);
        self.drain_device(now);
        if self.replan_birthday.is_some_and(|t| t <= now) {
            self.replan_birthday = None;
            for i in 0..self.peers.len() {
                self.plan_birthday(now, i);
            }
        }
        for i in 0..self.peers.len() {
            if self.peers[i].paths.poll_timeout().is_some_and(|t| t <= now) {
                self.peers[i].paths.handle_timeout(now);
            }
            self.check_stall(now, i);
            self.run_birthday(now, i);
            self.run_prediction(now, i);
            self.run_peer_relay(now, i);
            self.flush_paths(now, i);
        }
    }

    /// When `handle_timeout` should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let stun = self.poll_stun_timeout();
        let relays = (0..self.peers.len()).filter_map(|i| self.poll_relay_timeout(i));
        let peers = self.peers.iter().flat_map(|p| {
            [
                p.paths.poll_timeout(),
                p.prober.as_ref().and_then(|b| b.poll_timeout()),
                p.opening.as_ref().map(|o| o.next_at),
                p.prediction.as_ref().and_then(|m| m.poll_timeout()),
                p.prediction_repeats.as_ref().map(|r| r.next),
                wireguard::stall_deadline(p),
                p.mtu.poll_timeout(p.paths.route()),
            ]
        });
        [
            stun,
            self.device.poll_timeout(),
            self.replan_birthday,
            self.poll_measurement_timeout(),
            self.relay_server.as_ref().and_then(|s| s.poll_timeout()),
            self.poll_relay_stun_timeout(),
        ]
        .into_iter()
        .chain(peers)
        .chain(relays.map(Some))
        .flatten()
        .min()
    }

    /// Takes back a payload the driver is done with (a sent transmit's, a delivered packet's),
    /// so a later one reuses its memory: a driver that recycles what it gets makes the data
    /// path allocation-free in steady state.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.spare.give(buf);
    }

    /// How many recycled buffers the engine holds for its next payloads.
    pub fn spare_buffers(&self) -> usize {
        self.spare.len()
    }

    /// The next thing to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let (dest, bytes) = self.transmits.pop_front()?;
        let payload = self.spare.take(bytes);
        if let Dest::Udp { socket, dst } = dest {
            self.note_flow(socket, dst);
        }
        Some(Transmit::new(dest, payload))
    }

    /// Everything waiting to be sent, moved to the end of `out` (without a copy when `out` is
    /// empty: the two swap buffers).
    pub fn poll_transmits(&mut self, out: &mut TransmitBatch) {
        let start = out.len();
        out.append(&mut self.transmits);
        self.note_flows(out, start);
    }

    /// Counts our new flows as they leave (mutual port prediction): `batch`'s from `start` on.
    fn note_flows(&mut self, batch: &TransmitBatch, start: usize) {
        for (dest, _) in batch.iter().skip(start) {
            if let Dest::Udp { socket, dst } = dest {
                self.note_flow(socket, dst);
            }
        }
    }

    /// Sends each packet of `packets` as [`Node::send`] would, in order. What to send goes to
    /// the end of `out` (with anything else waiting, written there in place: nothing is copied
    /// into `out` afterwards), and packets for the application (an ICMP
    /// "too big" for a packet the path cannot carry) to the end of `delivered`, not to events.
    pub fn send_batch(
        &mut self,
        now: Instant,
        packets: &PacketBatch,
        out: &mut TransmitBatch,
        delivered: &mut PacketBatch,
    ) -> BatchOutcome {
        let lent = Lent::new(self, out, delivered);
        let mut outcome = BatchOutcome::default();
        for (k, (peer, packet)) in packets.iter().enumerate() {
            outcome.handled += 1;
            if let Err(e) = lent.node.send(now, &peer, packet) {
                outcome.refused += 1;
                outcome.last_error = Some((k, e));
            }
        }
        drop(lent);
        outcome
    }

    /// Handles each input as [`Node::handle_input`] would, in order. What to send goes to the
    /// end of `out` (with anything else waiting), and decrypted packets to the end of
    /// `delivered`, not to events; other events wait for [`Node::poll_event`] as ever.
    pub fn handle_batch<'a>(
        &mut self,
        now: Instant,
        inputs: impl IntoIterator<Item = Input<'a>>,
        out: &mut TransmitBatch,
        delivered: &mut PacketBatch,
    ) -> BatchOutcome {
        let lent = Lent::new(self, out, delivered);
        let mut outcome = BatchOutcome::default();
        for (k, input) in inputs.into_iter().enumerate() {
            outcome.handled += 1;
            if let Err(e) = lent.node.handle_input(now, input) {
                outcome.refused += 1;
                outcome.last_error = Some((k, e));
            }
        }
        drop(lent);
        outcome
    }

    /// Queues a transmit made as a `Vec`, which goes back to the spare buffers.
    pub(super) fn queue(&mut self, t: Transmit) {
        let (dest, payload) = t.into_parts();
        self.transmits.push(dest, &payload);
        self.spare.give(payload);
    }

    /// Hands a decrypted packet (or an ICMP answer) to the application: into the caller's
    /// batch during a batch call, else as an [`Event::Packet`].
    pub(super) fn deliver(&mut self, peer: PublicKey, packet: &[u8]) {
        match self.rx.as_mut() {
            Some(rx) => rx.push(peer, packet),
            None => {
                let data = self.spare.take(packet);
                self.events.push_back(Event::Packet { peer, data });
            }
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// The caller's batches, lent to the engine for one batch call and given back when this goes
/// out of scope, however the call ends: the engine queues its transmits straight after what
/// `out` holds (anything it had queued moved there first), and delivers into `delivered`.
struct Lent<'a> {
    node: &'a mut Node,
    out: &'a mut TransmitBatch,
    delivered: &'a mut PacketBatch,
    /// Transmits in `out` before the call: handed over already.
    start: usize,
}

impl<'a> Lent<'a> {
    fn new(node: &'a mut Node, out: &'a mut TransmitBatch, delivered: &'a mut PacketBatch) -> Self {
        debug_assert!(node.rx.is_none(), "batch calls do not nest");
        let start = out.len();
        out.append(&mut node.transmits);
        std::mem::swap(&mut node.transmits, out);
        node.rx = Some(std::mem::take(delivered));
        Self {
            node,
            out,
            delivered,
            start,
        }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        std::mem::swap(&mut self.node.transmits, self.out);
        if let Some(rx) = self.node.rx.take() {
            *self.delivered = rx;
        }
        self.node.note_flows(self.out, self.start);
    }
}

/// The stand-in address of something that came over DERP: the source a pong sent over DERP
/// names, and the address in its `Unrecognised` errors.
fn relay_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)
}
