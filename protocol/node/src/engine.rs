//! The node engine: one WireGuard device, disco and hole punching for every peer, over one UDP
//! socket (plus birthday-probe sockets when a hard NAT needs them) and DERP.
//!
//! Relay first: a peer's WireGuard packets go over DERP from the first one; direct candidates
//! are tried in parallel; traffic moves when a disco ping/pong validates a path. While a direct
//! path is not freshly confirmed, packets go both ways (direct and DERP) and WireGuard's replay
//! window drops the duplicate, so no packet is lost when the path changes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_disco::{BoxKey, Message};
use burrow_punch::{
    predict_ports, Attempt, BirthdayProber, Candidate, CandidateSource, Dst, PathConfig, PathEvent,
    PeerPaths, ProbeBudget, Route, SocketId, MAIN_SOCKET, MAX_BIRTHDAY_TARGETS,
};
use burrow_stun::client::Event as StunEvent;
use burrow_stun::{is_stun, BindingClient, BindingRequest, ClientConfig};
use burrow_wg::device::{Device, PeerId, Received};
use burrow_wg::tunnel::{Decapsulated, Encapsulated, Event as WgEvent};
use burrow_wg::{PrivateKey, PublicKey};
use ipnet::IpNet;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use thiserror::Error;

use crate::nat::{classify, NatView};
use crate::routing::{inner_source, AllowedIps};

/// How many predicted ports a sequential-NAT node advertises.
const PREDICTED_PORTS: usize = 8;
/// WireGuard keep-alive (10 s) plus rekey timeout (5 s): data sent on a direct path with no
/// answer on it for this long means the path loses data.
const DATA_STALL_AFTER: Duration = Duration::from_secs(15);
/// Largest datagram the engine handles.
const MAX_DATAGRAM: usize = 65_535;

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's WireGuard static key. It never leaves the engine.
    pub private_key: PrivateKey,
    /// The node's disco key (separate from the WireGuard key).
    pub disco_key: PrivateKey,
    /// STUN servers; two or more tell an endpoint-independent mapping from a varying one.
    pub stun_servers: Vec<SocketAddr>,
    /// Home DERP region (where peers reach us).
    pub home_region: u16,
    /// Addresses of the main socket on local interfaces (LAN and IPv6 candidates).
    pub local_addrs: Vec<SocketAddr>,
    /// Path timings.
    pub path: PathConfig,
    /// Birthday probing budget (the easy side's random probes, or both sides' when both are hard).
    pub probe: ProbeBudget,
    /// Sockets the hard side opens toward an easy peer (the seed's 256).
    pub birthday_sockets: u16,
    /// How fast the hard side opens them, per second (each is one session on its own NAT).
    pub open_rate: u32,
    /// Repeat STUN this often to notice a changed reflexive address (rebinding, roaming).
    pub restun_interval: Duration,
    /// A direct path unconfirmed for longer than this also gets every packet over DERP.
    pub trust: Duration,
    /// Birthday probing aims only at public IPs that the control plane lists for the peer
    /// (the control server keeps a node's public endpoints only when they match the address its
    /// request came from), so a peer cannot point our probes at a third party by advertising
    /// someone else's address. Turn off only where there is no control plane.
    pub birthday_needs_control_ip: bool,
    /// Seeds the engine's randomness.
    pub seed: u64,
    /// Wall-clock time at `now` (WireGuard's TAI64N timestamps).
    pub unix_time: Duration,
}

impl NodeConfig {
    /// Defaults around the two keys.
    pub fn new(private_key: PrivateKey, disco_key: PrivateKey, seed: u64) -> Self {
        let path = PathConfig {
            upgrade_interval: Duration::from_secs(10),
            ..PathConfig::default()
        };
        NodeConfig {
            private_key,
            disco_key,
            stun_servers: Vec::new(),
            home_region: 1,
            local_addrs: Vec::new(),
            trust: path.heartbeat + Duration::from_millis(1500),
            path,
            probe: ProbeBudget::default(),
            birthday_sockets: 256,
            open_rate: 1000,
            restun_interval: Duration::from_secs(20),
            birthday_needs_control_ip: true,
            seed,
            unix_time: Duration::from_secs(1_700_000_000),
        }
    }
}

/// A peer, as the control plane describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its WireGuard public key (also its DERP address).
    pub node_key: PublicKey,
    /// Its disco public key.
    pub disco_key: PublicKey,
    /// Its home DERP region.
    pub home_region: u16,
    /// Endpoints known in advance (from the control plane), if any.
    pub endpoints: Vec<SocketAddr>,
    /// The inner source addresses the peer may send from: its tailnet addresses and any routes
    /// the control plane grants it (WireGuard's AllowedIPs). A decrypted packet from any other
    /// source is dropped and counted (cryptokey routing), so no peer can speak as another.
    pub allowed_ips: Vec<IpNet>,
}

/// Something that arrived.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A datagram on one of the node's UDP sockets.
    Udp {
        /// Which socket.
        socket: SocketId,
        /// From.
        from: SocketAddr,
        /// The bytes.
        data: &'a [u8],
    },
    /// A packet relayed by DERP.
    Derp {
        /// The region it came through.
        region: u16,
        /// The sending node's key.
        from: PublicKey,
        /// The bytes.
        data: &'a [u8],
    },
}

/// Something to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A datagram from one of the node's sockets (the driver opens birthday sockets on first use).
    Udp {
        /// From which socket.
        socket: SocketId,
        /// To.
        dst: SocketAddr,
        /// The bytes.
        payload: Vec<u8>,
    },
    /// A packet for DERP to relay.
    Derp {
        /// The region (the peer's home).
        region: u16,
        /// The receiving node's key.
        dst: PublicKey,
        /// The bytes.
        payload: Vec<u8>,
    },
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A STUN round finished: what the node now knows of its NAT, and its candidates.
    Endpoints {
        /// The NAT, when any server answered.
        nat: Option<NatView>,
        /// The candidates sent to peers.
        candidates: Vec<Candidate>,
    },
    /// A peer's traffic moved.
    PathChanged {
        /// The peer's node key.
        peer: PublicKey,
        /// From.
        from: Route,
        /// To.
        to: Route,
    },
    /// One line of a peer's explanation: a candidate tried and what came of it.
    Attempt {
        /// The peer.
        peer: PublicKey,
        /// The attempt.
        attempt: Attempt,
    },
    /// Birthday probing toward a peer started.
    BirthdayStarted {
        /// The peer.
        peer: PublicKey,
        /// Whether we probe random ports (easy side, or both hard) or open sockets (hard side).
        probing: bool,
    },
    /// A birthday attempt spent its budget (distinct destinations) without a hit; the next
    /// starts at `retry_at` (the back-off doubles each time).
    BirthdayExhausted {
        /// The peer.
        peer: PublicKey,
        /// Probes sent toward the peer so far.
        probes: u64,
        /// When the next attempt starts.
        retry_at: Instant,
    },
    /// The answer to [`Node::ping`].
    PingResult {
        /// The peer.
        peer: PublicKey,
        /// The path the pong came back on.
        via: Route,
        /// Round trip.
        latency: Duration,
    },
    /// A WireGuard session with the peer is usable.
    HandshakeDone {
        /// The peer.
        peer: PublicKey,
    },
    /// A decrypted packet from a peer.
    Packet {
        /// The peer.
        peer: PublicKey,
        /// The plaintext IP packet.
        data: Vec<u8>,
    },
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NodeError {
    /// No such peer.
    #[error("unknown peer {0:?}")]
    UnknownPeer(PublicKey),
    /// WireGuard refused the packet.
    #[error("wireguard: {0}")]
    Wg(String),
    /// Another peer already has one of these allowed prefixes.
    #[error("peer {0:?} claims a prefix another peer already has; refused")]
    OverlappingAddresses(PublicKey),
    /// Another peer already has this disco key.
    #[error("peer {0:?} has a disco key another peer already has; refused")]
    DuplicateDiscoKey(PublicKey),
    /// Nothing in the datagram this engine understands.
    #[error("datagram from {0} is neither STUN, disco nor WireGuard for us")]
    Unrecognised(SocketAddr),
}

/// Per-peer counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// WireGuard datagrams sent directly / over DERP.
    pub tx_direct: u64,
    /// See `tx_direct`.
    pub tx_relay: u64,
    /// WireGuard datagrams received directly / over DERP.
    pub rx_direct: u64,
    /// See `rx_direct`.
    pub rx_relay: u64,
    /// Birthday packets: random-port probes and hard-side socket openings.
    pub probes: u64,
    /// Disco packets sent directly.
    pub disco_direct: u64,
    /// Plaintext bytes sent to / received from the peer.
    pub tx_bytes: u64,
    /// See `tx_bytes`.
    pub rx_bytes: u64,
    /// When the latest WireGuard handshake with the peer completed.
    pub last_handshake: Option<Instant>,
    /// Decrypted packets dropped because their inner source is not one of the peer's
    /// allowed addresses (a spoofing peer, or a route the control plane did not grant).
    pub rx_spoofed: u64,
}

/// Why a peer is on its path: the current route and every recent attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// Current route.
    pub route: Route,
    /// Candidates the peer advertised (and any learned peer-reflexively).
    pub candidates: Vec<Candidate>,
    /// Attempts, oldest first.
    pub attempts: Vec<Attempt>,
    /// The peer's NAT maps per destination (from its NatInfo), if it said.
    pub peer_mapping_varies: Option<bool>,
    /// Birthday packets sent toward the peer.
    pub probes: u64,
    /// Birthday attempts that spent their budget without a hit.
    pub birthday_attempts_exhausted: u32,
}

/// The hard side's birthday role: open many sockets toward the peer's endpoints.
#[derive(Debug)]
struct Opening {
    targets: Vec<SocketAddr>,
    next_socket: u16,
    next_at: Instant,
    round_started: Instant,
}

struct Peer {
    config: PeerConfig,
    disco_box: Option<BoxKey>,
    wg: PeerId,
    paths: PeerPaths,
    peer_nat: Option<(bool, bool)>,
    prober: Option<BirthdayProber>,
    opening: Option<Opening>,
    first_unanswered_direct: Option<Instant>,
    stats: PeerStats,
}

struct StunRound {
    client: BindingClient,
    pending: BTreeMap<burrow_stun::TransactionId, usize>,
    mapped: Vec<Option<SocketAddr>>,
    started: Instant,
}

/// A STUN round ends when every server answered, or this long after it started (a missing
/// server must not hold the node's candidates back for STUN's full 39.5 s; three
/// transmissions have gone out by then, and the next round comes soon).
const STUN_ROUND_CAP: Duration = Duration::from_secs(3);

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
    nat: Option<NatView>,
    candidates: Vec<Candidate>,
    user_pings: BTreeMap<burrow_disco::TxId, (usize, Instant, Route)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    buf: Vec<u8>,
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
            nat: None,
            candidates: Vec::new(),
            user_pings: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            buf: vec![0u8; MAX_DATAGRAM + 64],
            disco_public: config.disco_key.public_key(),
            config,
        };
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
            let endpoints = peer.endpoints.clone();
            let old_disco = self.peers[i].config.disco_key;
            if old_disco != peer.disco_key {
                self.by_disco.remove(&old_disco);
                self.by_disco.insert(peer.disco_key, i);
                self.peers[i].disco_box = BoxKey::new(&self.config.disco_key, &peer.disco_key);
            }
            self.allowed.set(peer.node_key, &peer.allowed_ips);
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
        if !peer.endpoints.is_empty() {
            paths.handle_control_endpoints(now, &peer.endpoints);
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
            prober: None,
            opening: None,
            first_unanswered_direct: None,
            stats: PeerStats::default(),
        });
        self.allowed.set(
            self.peers[i].config.node_key,
            &self.peers[i].config.allowed_ips,
        );
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
        true
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

    /// Why a peer is on its path.
    pub fn explain(&self, peer: &PublicKey) -> Option<Explanation> {
        let p = &self.peers[*self.by_node.get(peer)?];
        Some(Explanation {
            route: p.paths.route(),
            candidates: p.paths.remote_candidates().copied().collect(),
            attempts: p.paths.attempts().copied().collect(),
            peer_mapping_varies: p.peer_nat.map(|n| n.0),
            probes: p.stats.probes,
            birthday_attempts_exhausted: p.prober.as_ref().map_or(0, |b| b.attempts_exhausted()),
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
                    self.transmits.push_back(Transmit::Udp {
                        socket,
                        dst: addr,
                        payload,
                    });
                }
            }
            Route::Relay => self.send_disco_relay(i, &ping),
        }
        Ok(())
    }

    fn user_pong(&mut self, now: Instant, tx_id: &burrow_disco::TxId, via: Route) -> bool {
        let Some((i, sent, _)) = self.user_pings.remove(tx_id) else {
            return false;
        };
        let peer = self.peers[i].config.node_key;
        self.events.push_back(Event::PingResult {
            peer,
            via,
            latency: now.saturating_duration_since(sent),
        });
        true
    }

    /// Encrypts an IP packet for `peer` and sends it on its current path.
    pub fn send(&mut self, now: Instant, peer: &PublicKey, packet: &[u8]) -> Result<(), NodeError> {
        let i = *self
            .by_node
            .get(peer)
            .ok_or(NodeError::UnknownPeer(*peer))?;
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
            Err(e) => Err(NodeError::Wg(e.to_string())),
        };
        self.buf = out;
        self.drain_device(now);
        result
    }

    /// Handles a datagram or a relayed packet.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) -> Result<(), NodeError> {
        match input {
            Input::Udp { socket, from, data } => {
                if is_stun(data) {
                    if let Some(round) = self.stun.as_mut() {
                        let _ = round.client.handle_input(now, from, data);
                    }
                    self.drain_stun(now);
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
        if let Some(round) = self.stun.as_mut() {
            round.client.handle_timeout(now);
            self.drain_stun(now);
        }
        if self.stun.is_none() && now >= self.next_stun {
            self.start_stun(now);
        }
        self.device.handle_timeout(now);
        self.drain_device(now);
        for i in 0..self.peers.len() {
            if self.peers[i].paths.poll_timeout().is_some_and(|t| t <= now) {
                self.peers[i].paths.handle_timeout(now);
            }
            self.check_stall(now, i);
            self.run_birthday(now, i);
            self.flush_paths(now, i);
        }
    }

    /// When `handle_timeout` should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let stun = match &self.stun {
            Some(r) => {
                let cap = r
                    .mapped
                    .iter()
                    .any(Option::is_some)
                    .then_some(r.started + STUN_ROUND_CAP);
                [r.client.poll_timeout(), cap].into_iter().flatten().min()
            }
            None => Some(self.next_stun),
        };
        let peers = self.peers.iter().flat_map(|p| {
            [
                p.paths.poll_timeout(),
                p.prober.as_ref().and_then(|b| b.poll_timeout()),
                p.opening.as_ref().map(|o| o.next_at),
                p.first_unanswered_direct.map(|t| t + DATA_STALL_AFTER),
            ]
        });
        [stun, self.device.poll_timeout()]
            .into_iter()
            .chain(peers)
            .flatten()
            .min()
    }

    /// The next thing to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- STUN: the node's own NAT ----

    fn start_stun(&mut self, now: Instant) {
        if self.config.stun_servers.is_empty() {
            // No STUN: interface addresses are still candidates.
            self.finish_stun(now, &[]);
            return;
        }
        let mut client = BindingClient::new(
            ClientConfig::default(),
            ChaCha20Rng::seed_from_u64(self.rng.next_u64()),
        );
        let mut pending = BTreeMap::new();
        for (k, s) in self.config.stun_servers.iter().enumerate() {
            pending.insert(client.start(now, BindingRequest::to(*s)), k);
        }
        self.stun = Some(StunRound {
            client,
            pending,
            mapped: vec![None; self.config.stun_servers.len()],
            started: now,
        });
        self.drain_stun(now);
    }

    fn drain_stun(&mut self, now: Instant) {
        let Some(round) = self.stun.as_mut() else {
            return;
        };
        while let Some(t) = round.client.poll_transmit() {
            self.transmits.push_back(Transmit::Udp {
                socket: MAIN_SOCKET,
                dst: t.dst,
                payload: t.payload,
            });
        }
        while let Some(e) = round.client.poll_event() {
            let (id, mapped) = match e {
                StunEvent::Success(r) => (r.id, Some(r.mapped)),
                StunEvent::ErrorResponse { id, .. } | StunEvent::TimedOut { id, .. } => (id, None),
            };
            if let Some(k) = round.pending.remove(&id) {
                round.mapped[k] = mapped;
            }
        }
        let done = round.pending.is_empty() || now >= round.started + STUN_ROUND_CAP;
        if !done {
            return;
        }
        let mapped: Vec<SocketAddr> = round.mapped.iter().flatten().copied().collect();
        self.stun = None;
        self.finish_stun(now, &mapped);
    }

    /// A STUN round's answers (possibly none): classify, gather, and tell peers if anything changed.
    fn finish_stun(&mut self, now: Instant, mapped: &[SocketAddr]) {
        self.next_stun = now + self.config.restun_interval;
        let nat = classify(mapped);
        self.nat = nat.or(self.nat);
        let candidates = self.gather(nat);
        let changed = candidates != self.candidates;
        self.events.push_back(Event::Endpoints {
            nat,
            candidates: candidates.clone(),
        });
        if changed {
            self.candidates = candidates;
            for i in 0..self.peers.len() {
                self.peers[i]
                    .paths
                    .set_local_candidates(now, self.candidates.clone());
                self.flush_paths(now, i);
            }
        }
        for i in 0..self.peers.len() {
            self.plan_birthday(now, i);
        }
    }

    /// Interface addresses, the reflexive address, and predicted ports for a sequential NAT.
    fn gather(&self, nat: Option<NatView>) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = self
            .config
            .local_addrs
            .iter()
            .map(|a| Candidate::direct(*a, CandidateSource::Interface))
            .collect();
        if let Some(nat) = nat {
            out.push(Candidate::direct(nat.reflexive, CandidateSource::Stun));
            if let Some(delta) = nat.delta {
                for port in predict_ports(nat.last_port, delta, PREDICTED_PORTS, 1024, 65535) {
                    out.push(Candidate::direct(
                        SocketAddr::new(nat.reflexive.ip(), port),
                        CandidateSource::Predicted,
                    ));
                }
            }
        }
        let mut seen = BTreeSet::new();
        out.retain(|c| seen.insert(c.addr));
        out
    }

    fn send_nat_info(&mut self, i: usize, nat: NatView) {
        let msg = Message::NatInfo {
            mapping_varies: nat.mapping_varies,
            predictable: nat.delta.is_some(),
        };
        self.send_disco_relay(i, &msg);
    }

    // ---- disco ----

    fn seal(&mut self, i: usize, msg: &Message) -> Option<Vec<u8>> {
        let bx = self.peers[i].disco_box.as_ref()?;
        Some(msg.seal_with(bx, &self.disco_public, &mut self.rng))
    }

    fn open(&self, i: usize, datagram: &[u8]) -> Option<Message> {
        Message::open_with(self.peers[i].disco_box.as_ref()?, datagram).ok()
    }

    fn send_disco_relay(&mut self, i: usize, msg: &Message) {
        if let Some(payload) = self.seal(i, msg) {
            let p = &self.peers[i].config;
            self.transmits.push_back(Transmit::Derp {
                region: p.home_region,
                dst: p.node_key,
                payload,
            });
        }
    }

    fn handle_direct_disco(
        &mut self,
        now: Instant,
        i: usize,
        socket: SocketId,
        from: SocketAddr,
        msg: Message,
    ) {
        match msg {
            Message::Ping { tx_id, .. } => {
                // Replays, unacceptable sources and pings over the pong budget go unanswered.
                self.peers[i].paths.handle_ping(now, socket, from, tx_id);
            }
            Message::Pong { tx_id, .. } if !self.user_pong(now, &tx_id, Route::Direct(from)) => {
                self.peers[i].paths.handle_pong(now, socket, from, tx_id);
            }
            // CallMeMaybe and NatInfo only count over DERP (where the sender is authenticated
            // by its node key too).
            _ => {}
        }
        self.flush_paths(now, i);
    }

    fn handle_relayed_disco(&mut self, now: Instant, i: usize, msg: Message) {
        match msg {
            Message::CallMeMaybe { endpoints } => {
                self.peers[i].paths.handle_call_me_maybe(now, &endpoints);
                self.plan_birthday(now, i);
            }
            Message::NatInfo {
                mapping_varies,
                predictable,
            } => {
                self.peers[i].peer_nat = Some((mapping_varies, predictable));
                self.plan_birthday(now, i);
            }
            // A ping over DERP: answer over DERP (what `burrow ping` uses before a direct path),
            // unless its transaction ID was seen lately (a replay).
            Message::Ping { tx_id, .. } if self.peers[i].paths.admit_ping(now, tx_id) => {
                let pong = Message::Pong {
                    tx_id,
                    src: relay_addr(),
                };
                self.send_disco_relay(i, &pong);
            }
            Message::Pong { tx_id, .. } => {
                self.user_pong(now, &tx_id, Route::Relay);
            }
            _ => {}
        }
        self.flush_paths(now, i);
    }

    /// Moves a peer's disco transmits and path events to the engine's queues.
    fn flush_paths(&mut self, now: Instant, i: usize) {
        while let Some(t) = self.peers[i].paths.poll_transmit() {
            let Some(payload) = self.seal(i, &t.msg) else {
                continue;
            };
            match t.dst {
                Dst::Direct(dst) => {
                    self.peers[i].stats.disco_direct += 1;
                    self.transmits.push_back(Transmit::Udp {
                        socket: t.socket,
                        dst,
                        payload,
                    });
                }
                Dst::Relay => {
                    let p = &self.peers[i].config;
                    self.transmits.push_back(Transmit::Derp {
                        region: p.home_region,
                        dst: p.node_key,
                        payload,
                    });
                    // The peer needs our NAT kind with our candidates (an earlier NatInfo may
                    // have been dropped while it was not yet on DERP).
                    if let (Message::CallMeMaybe { .. }, Some(nat)) = (&t.msg, self.nat) {
                        self.send_nat_info(i, nat);
                    }
                }
            }
        }
        let peer = self.peers[i].config.node_key;
        while let Some(e) = self.peers[i].paths.poll_event() {
            match e {
                PathEvent::RouteChanged { from, to } => {
                    let p = &mut self.peers[i];
                    match to {
                        Route::Direct(addr) => {
                            if let Some(b) = p.prober.as_mut() {
                                b.succeeded(addr);
                            }
                            p.opening = None;
                        }
                        // Back on DERP: a birthday search that found the old path starts over
                        // (the NAT may have forgotten every mapping).
                        Route::Relay => {
                            if p.prober.as_ref().is_some_and(|b| b.success().is_some()) {
                                p.prober = None;
                            }
                            // A direct path that died often means our own mapping changed (NAT
                            // rebinding, a new network): ask STUN again now, not in 20 s.
                            if self.stun.is_none() {
                                self.next_stun = self.next_stun.min(now);
                            }
                        }
                    }
                    self.events.push_back(Event::PathChanged { peer, from, to });
                }
                PathEvent::Attempt(attempt) => {
                    self.events.push_back(Event::Attempt { peer, attempt });
                }
            }
        }
    }

    // ---- birthday probing ----

    fn plan_birthday(&mut self, now: Instant, i: usize) {
        let Some(me) = self.nat else {
            return;
        };
        let p = &mut self.peers[i];
        let Some((peer_varies, peer_predictable)) = p.peer_nat else {
            return;
        };
        if matches!(p.paths.route(), Route::Direct(_)) {
            return;
        }
        // Only the peer's own advertised public endpoints, and only the first few: it names
        // them, so they must not become a list of other people's addresses to probe.
        let peer_public = birthday_targets(p, self.config.birthday_needs_control_ip);
        let peer = p.config.node_key;
        // Who does what (the seed's birthday search):
        // - we are easy, the peer is hard and unpredictable: probe random ports on its IP;
        // - we are hard and unpredictable, the peer is easy: open many sockets toward it;
        // - both vary: both probe (the two-sided search; slow, so paced for the long run);
        // - a predictable peer is reached through its predicted endpoints instead.
        let both_vary = me.mapping_varies && peer_varies;
        let probe = both_vary || (!me.mapping_varies && peer_varies && !peer_predictable);
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

    fn run_birthday(&mut self, now: Instant, i: usize) {
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

    fn send_probe_ping(&mut self, i: usize, socket: SocketId, dst: SocketAddr) {
        let mut tx_id = [0u8; 12];
        self.rng.fill_bytes(&mut tx_id);
        let ping = Message::Ping {
            tx_id,
            node_key: Some(self.device.public_key()),
            padding: 0,
        };
        if let Some(payload) = self.seal(i, &ping) {
            self.transmits.push_back(Transmit::Udp {
                socket,
                dst,
                payload,
            });
        }
    }

    // ---- WireGuard ----

    /// A direct path is trusted while its pongs are recent and its latest ping was answered.
    fn trusted(&self, now: Instant, i: usize, addr: SocketAddr) -> bool {
        let paths = &self.peers[i].paths;
        paths.missed(addr) == 0
            && !paths.on_probation(addr)
            && paths
                .last_pong(addr)
                .is_some_and(|t| now.saturating_duration_since(t) <= self.config.trust)
    }

    /// Sends a WireGuard datagram on the peer's route; over both paths while a direct path is
    /// not freshly confirmed.
    fn send_wg(&mut self, now: Instant, i: usize, datagram: &[u8], data: bool) {
        let route = self.peers[i].paths.route();
        let mut relay = true;
        if let Route::Direct(addr) = route {
            relay = !self.trusted(now, i, addr);
            let socket = self.peers[i].paths.socket_of(addr);
            let p = &mut self.peers[i];
            p.stats.tx_direct += 1;
            if data && p.first_unanswered_direct.is_none() {
                p.first_unanswered_direct = Some(now);
            }
            self.transmits.push_back(Transmit::Udp {
                socket,
                dst: addr,
                payload: datagram.to_vec(),
            });
        }
        if relay {
            let p = &mut self.peers[i];
            p.stats.tx_relay += 1;
            self.transmits.push_back(Transmit::Derp {
                region: p.config.home_region,
                dst: p.config.node_key,
                payload: datagram.to_vec(),
            });
        }
    }

    fn drain_device(&mut self, now: Instant) {
        while let Some((wg, datagram)) = self.device.poll_transmit() {
            if let Some(&i) = self.by_wg.get(&wg) {
                self.send_wg(now, i, &datagram, false);
            }
        }
        while let Some((wg, e)) = self.device.poll_event() {
            if let (Some(&i), WgEvent::HandshakeCompleted { .. }) = (self.by_wg.get(&wg), e) {
                self.peers[i].stats.last_handshake = Some(now);
                let peer = self.peers[i].config.node_key;
                self.events.push_back(Event::HandshakeDone { peer });
            }
        }
    }

    fn handle_wg(&mut self, now: Instant, data: &[u8], source: WgSource) -> Result<(), NodeError> {
        let (direct, src) = match source {
            WgSource::Direct(socket, from) => (Some((socket, from)), from),
            // Each DERP sender gets its own stand-in address, so under load WireGuard's cookies
            // bind to the sender's key: one key's flood does not cost the others their handshakes.
            WgSource::Relay(_, key) => (None, relay_addr_of(&key)),
        };
        if burrow_wg::Message::parse(data).is_err() {
            return Err(NodeError::Unrecognised(src));
        }
        let mut out = std::mem::take(&mut self.buf);
        let r = self.device.decapsulate(now, src, data, &mut out);
        let result = match r {
            Ok(Received::Peer(wg, what)) => {
                if let Some(&i) = self.by_wg.get(&wg) {
                    let p = &mut self.peers[i];
                    // Anything authenticated from the peer answers our data: when we send only
                    // on the direct path, a reply means it got there (the peer may answer over
                    // DERP while its own side of the path is not validated yet).
                    p.first_unanswered_direct = None;
                    match direct {
                        Some((_, from)) => {
                            p.stats.rx_direct += 1;
                            p.paths.report_data_flowing(now, from);
                        }
                        None => p.stats.rx_relay += 1,
                    }
                    if let Decapsulated::Data(n) = what {
                        // Cryptokey routing: the inner source must be an address this peer
                        // owns (the longest prefix holding it is this peer's).
                        let owner =
                            inner_source(&out[..n]).and_then(|ip| self.allowed.owner_of(ip));
                        let p = &mut self.peers[i];
                        if owner == Some(p.config.node_key) {
                            p.stats.rx_bytes += n as u64;
                            let peer = p.config.node_key;
                            self.events.push_back(Event::Packet {
                                peer,
                                data: out[..n].to_vec(),
                            });
                        } else {
                            p.stats.rx_spoofed += 1;
                        }
                    }
                    self.flush_paths(now, i);
                }
                Ok(())
            }
            Ok(Received::CookieReply(n)) => {
                let payload = out[..n].to_vec();
                match source {
                    WgSource::Direct(socket, dst) => self.transmits.push_back(Transmit::Udp {
                        socket,
                        dst,
                        payload,
                    }),
                    WgSource::Relay(region, dst) => self.transmits.push_back(Transmit::Derp {
                        region,
                        dst,
                        payload,
                    }),
                }
                Ok(())
            }
            Err(e) => Err(NodeError::Wg(format!("from {src}: {e}"))),
        };
        self.buf = out;
        self.drain_device(now);
        result
    }

    fn check_stall(&mut self, now: Instant, i: usize) {
        let p = &mut self.peers[i];
        let Route::Direct(addr) = p.paths.route() else {
            p.first_unanswered_direct = None;
            return;
        };
        if p.first_unanswered_direct
            .is_some_and(|t| now.saturating_duration_since(t) >= DATA_STALL_AFTER)
        {
            p.first_unanswered_direct = None;
            p.paths.report_data_stall(now, addr);
        }
    }
}

/// The peer's endpoints birthday probing may aim at: its first few advertised public ones,
/// and, when `needs_control_ip`, only those on an IP the control plane lists for it.
fn birthday_targets(p: &Peer, needs_control_ip: bool) -> Vec<SocketAddr> {
    let mut targets = p.paths.advertised_public(usize::MAX);
    if needs_control_ip {
        targets.retain(|t| p.config.endpoints.iter().any(|e| e.ip() == t.ip()));
    }
    targets.truncate(MAX_BIRTHDAY_TARGETS);
    targets
}

/// Where a WireGuard datagram came from.
#[derive(Debug, Clone, Copy)]
enum WgSource {
    /// A UDP socket and the datagram's source.
    Direct(SocketId, SocketAddr),
    /// DERP: the region and the sending node's key.
    Relay(u16, PublicKey),
}

/// A DERP sender's stand-in address for WireGuard's cookie MACs: distinct per key.
fn relay_addr_of(key: &PublicKey) -> SocketAddr {
    let b = key.as_bytes();
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[..16]);
    SocketAddr::new(
        IpAddr::V6(std::net::Ipv6Addr::from(ip)),
        u16::from_be_bytes([b[16], b[17]]),
    )
}

/// The stand-in source address for packets that came over DERP (WireGuard's cookie logic wants one).
fn relay_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)
}
