//! The engine's inputs and outputs: its configuration, what arrives, what to send, what
//! happened, per-peer counters and errors.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_punch::{
    Attempt, Candidate, FamilyReport, PathConfig, PredictionConfig, PredictionReport, ProbeBudget,
    Route, SocketId,
};
use burrow_wg::{PrivateKey, PublicKey, WgError};
use ipnet::IpNet;
use thiserror::Error;

use crate::nat::NatView;

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
    /// Prefixes the host routes into the tunnel (the tailnet's 100.64.0.0/10 and its ULA
    /// /48): no endpoint inside them is pinged or kept, and no disco from them is heard. A
    /// peer advertising its tailnet address would otherwise get a path that carries
    /// WireGuard inside itself, looping on this host.
    pub tunnel_prefixes: Vec<IpNet>,
    /// Path timings.
    pub path: PathConfig,
    /// Birthday probing budget (the easy side's random probes, or both sides' when both are hard).
    pub probe: ProbeBudget,
    /// Sockets the hard side opens toward an easy peer (256: Tailscale, "How NAT traversal works").
    pub birthday_sockets: u16,
    /// How fast the hard side opens them, per second (each is one session on its own NAT).
    pub open_rate: u32,
    /// Relay for other nodes on this port (peer relays); none by default.
    pub relay_server: Option<super::RelayServerSettings>,
    /// Mutual port prediction toward and between sequential NATs.
    pub prediction: PredictionConfig,
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
    /// Path MTU discovery, and the tunnel's and interface's MTUs.
    pub mtu: super::MtuConfig,
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
            tunnel_prefixes: Vec::new(),
            trust: path.heartbeat + Duration::from_millis(1500),
            path,
            probe: ProbeBudget::default(),
            birthday_sockets: 256,
            open_rate: 1000,
            prediction: PredictionConfig::default(),
            relay_server: None,
            restun_interval: Duration::from_secs(20),
            birthday_needs_control_ip: true,
            seed,
            unix_time: Duration::from_secs(1_700_000_000),
            mtu: super::MtuConfig::default(),
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

impl Transmit {
    /// A transmit to `dest` carrying `payload`.
    pub fn new(dest: crate::Dest, payload: Vec<u8>) -> Self {
        match dest {
            crate::Dest::Udp { socket, dst } => Transmit::Udp {
                socket,
                dst,
                payload,
            },
            crate::Dest::Derp { region, dst } => Transmit::Derp {
                region,
                dst,
                payload,
            },
        }
    }

    /// Where it goes, and its bytes.
    pub fn into_parts(self) -> (crate::Dest, Vec<u8>) {
        match self {
            Transmit::Udp {
                socket,
                dst,
                payload,
            } => (crate::Dest::Udp { socket, dst }, payload),
            Transmit::Derp {
                region,
                dst,
                payload,
            } => (crate::Dest::Derp { region, dst }, payload),
        }
    }
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
    /// The peer's traffic moved to a peer relay, to another, or off them (`None`).
    PeerRelayChanged {
        /// The peer.
        peer: PublicKey,
        /// The relay node now carrying the traffic, if any.
        relay: Option<PublicKey>,
        /// Round trip through it to the peer.
        rtt: Option<Duration>,
    },
    /// The answer to [`Node::ping`](super::Node::ping).
    PingResult {
        /// The peer.
        peer: PublicKey,
        /// The path the pong came back on.
        via: Route,
        /// The peer relay it came through, when `via` is [`Route::Relay`] and a peer relay
        /// carries the traffic (`None`: DERP).
        peer_relay: Option<PublicKey>,
        /// Round trip.
        latency: Duration,
    },
    /// A WireGuard session with the peer is usable.
    HandshakeDone {
        /// The peer.
        peer: PublicKey,
    },
    /// A decrypted packet from a peer (through the one-at-a-time calls: the batch calls put
    /// packets into the caller's [`PacketBatch`](crate::PacketBatch) instead).
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
    /// WireGuard refused the packet to send.
    #[error("wireguard: {0}")]
    Wg(#[from] WgError),
    /// WireGuard refused a datagram that arrived.
    #[error("wireguard: from {from}: {source}")]
    WgInput {
        /// Where it came from (a DERP sender's stand-in address for relayed packets).
        from: SocketAddr,
        /// What WireGuard objected to.
        #[source]
        source: WgError,
    },
    /// Another peer already has one of these allowed prefixes.
    #[error("peer {0:?} claims a prefix another peer already has; refused")]
    OverlappingAddresses(PublicKey),
    /// Another peer already has this disco key.
    #[error("peer {0:?} has a disco key another peer already has; refused")]
    DuplicateDiscoKey(PublicKey),
    /// The relay we run dropped a datagram on its socket (counted in its stats).
    #[error("peer relay: {0}")]
    Relay(#[from] burrow_relay::RelayError),
    /// Nothing in the datagram this engine understands.
    #[error("datagram from {0} is neither STUN, disco nor WireGuard for us")]
    Unrecognised(SocketAddr),
}

/// How much the engine holds, as entries in its tables and queues, by part: what a long run
/// watches to see that nothing grows without bound (see [`Node::footprint`](super::Node::footprint)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Peers and the indices by key, disco key, session and allowed prefix.
    pub peers: usize,
    /// The path machines: candidates, remote paths, pending pings, replayed IDs, attempts.
    pub paths: usize,
    /// Birthday searches, port predictions and their repeats, peer-relay tries, doubt records.
    pub traversal: usize,
    /// WireGuard: tunnels, keypairs, indices.
    pub wireguard: usize,
    /// Packets waiting for a WireGuard handshake (at most 256 per peer; they leave with it).
    pub queued: usize,
    /// Our own new flows (mutual prediction's ledger).
    pub flows: usize,
    /// The relay we run for others (sessions, per-source buckets).
    pub relay: usize,
    /// Transmits, events, pings and spare buffers waiting for the driver.
    pub queues: usize,
}

impl Footprint {
    /// Every part added up.
    pub fn total(&self) -> usize {
        self.peers
            + self.paths
            + self.traversal
            + self.wireguard
            + self.queued
            + self.flows
            + self.relay
            + self.queues
    }
}

/// Per-peer counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// WireGuard datagrams sent directly / over DERP.
    pub tx_direct: u64,
    /// See `tx_direct`.
    pub tx_relay: u64,
    /// WireGuard datagrams sent / received through a peer relay.
    pub tx_peer_relay: u64,
    /// See `tx_peer_relay`.
    pub rx_peer_relay: u64,
    /// WireGuard datagrams received directly / over DERP.
    pub rx_direct: u64,
    /// See `rx_direct`.
    pub rx_relay: u64,
    /// Birthday packets: random-port probes and hard-side socket openings.
    pub probes: u64,
    /// Mutual port prediction packets: one per fresh socket a round opens (or per ping a
    /// fixed side sends to an announced port).
    pub predicted: u64,
    /// Mutual-prediction rounds started toward the peer (sequential side: measurements;
    /// random side of a search: searches).
    pub prediction_rounds: u64,
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
    /// Times the direct path was in doubt.
    pub doubt_episodes: u64,
    /// WireGuard datagrams (and their bytes) also sent over the relay because the direct path
    /// was in doubt: what fast loss detection costs.
    pub tx_doubt: u64,
    /// See `tx_doubt`.
    pub tx_doubt_bytes: u64,
    /// Path MTU probes (padded disco pings) sent on the direct path.
    pub mtu_probes: u64,
    /// WireGuard datagrams sent over DERP instead of the direct path because they were larger
    /// than it was known to carry (while its MTU search ran).
    pub tx_oversize_relay: u64,
    /// Packets too big for the path answered with ICMP "too big" into the tunnel.
    pub tx_too_big: u64,
    /// IPv4 fragments sent for packets too big for the path that allowed fragmenting.
    pub tx_fragments: u64,
}

/// Why a peer is on its path: the current route and every recent attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// Current route.
    pub route: Route,
    /// Each address family (IPv6 first): which one carries the traffic and why the other
    /// does not.
    pub families: Vec<FamilyReport>,
    /// Candidates the peer advertised (and any learned peer-reflexively).
    pub candidates: Vec<Candidate>,
    /// Attempts, oldest first.
    pub attempts: Vec<Attempt>,
    /// The peer's NAT maps per destination (from its NatInfo), if it said.
    pub peer_mapping_varies: Option<bool>,
    /// The peer's gateway maps its port (from its NatInfo), if it said.
    pub peer_port_mapped: Option<bool>,
    /// Our own port mapping, if the gateway made one.
    pub port_mapping: Option<SocketAddr>,
    /// Birthday packets sent toward the peer.
    pub probes: u64,
    /// Birthday attempts that spent their budget without a hit.
    pub birthday_attempts_exhausted: u32,
    /// Mutual port prediction with the peer (sequential NATs), if running.
    pub prediction: Option<PredictionReport>,
    /// Peer relays considered, with their round trips; the one in use is marked.
    pub peer_relays: Vec<super::RelayReport>,
    /// The latest times the direct path was in doubt (data unanswered past its usual answer
    /// time, so every packet also went over the relay), oldest first.
    pub doubts: Vec<super::DoubtEpisode>,
    /// The direct path's MTU discovery (the path's address and what the search found).
    pub mtu: Option<(SocketAddr, burrow_punch::MtuReport)>,
    /// The largest packet the tunnel takes for the peer now: the tunnel's MTU, or less once
    /// the direct path's search settled below it (larger packets get ICMP "too big").
    pub effective_mtu: u16,
}
