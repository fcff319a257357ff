//! A discrete-event network for two burrow node engines behind scripted NATs — the same
//! `NatTable` logic as the turmoil boxes, without turmoil's per-millisecond ticks — so the
//! engine can be run for hours of simulated time (two-sided birthday searches) and thousands of
//! property-test cases. Links have latency, jitter (reordering), loss and duplication; DERP is
//! an in-memory relay that can restart; NATs can be flushed (rebinding) mid-run.
//!
//! Every byte put on any wire is scanned: no private key and no plaintext may ever appear.
//!
//! [`FastNet`] is the network as a value, stepped one instant at a time (`step`, `drive_until`);
//! [`run`] drives it to the end.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_node::Node;
use burrow_punch::{PredictionConfig, ProbeBudget, Route};
use burrow_stun::BindingServer;
use burrow_wg::PublicKey;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::nat::{NatConfig, NatTable};

mod bulk;
mod episodes;
mod link;
mod net;
mod packets;
mod record;

pub use bulk::{BulkConfig, BulkOutcome};
pub use episodes::{Episode, EpisodeKind};
pub use link::{GilbertElliott, LinkProfile, LinkStats, Spikes};

/// The main socket's port on every node.
pub const MAIN_PORT: u16 = 41641;
/// Birthday socket `i` is bound to this plus `i`.
pub const BIRTHDAY_BASE_PORT: u16 = 50000;
/// Marks every application packet, so a plaintext on the wire would be found.
pub const PLAINTEXT_MARKER: &[u8; 16] = b"BURROW-PLAINTEXT";

const STUN_1: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 3478);
const STUN_2: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 3478);
const STUN_3: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 3)), 3478);
/// Three servers: with two, a random allocator's two ports fall within the sequential
/// window by chance once in 500 runs; a third answer must repeat the step.
/// An IPv6 STUN server (IPv6 has no NAT to classify: one answer gives the global address).
const STUN_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1)),
    3478,
);
const STUN_SERVERS: [SocketAddr; 4] = [STUN_1, STUN_2, STUN_3, STUN_V6];

/// How a side reaches the IPv6 Internet: its global address sits behind at most a stateful
/// firewall (no NAT66).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ipv6Access {
    /// The firewall in front of the host (`translate: false`; its filtering and its UDP
    /// timeout are what matter), or none for a host open to the Internet.
    pub firewall: Option<NatConfig>,
    /// The host has no IPv4 at all (an IPv6-only network): its chain carries nothing.
    pub only: bool,
}

impl Ipv6Access {
    /// A stateful firewall: endpoint-independent filtering (`eif`) or address-and-port-
    /// dependent (the usual home router), with a 30 s UDP timeout.
    pub fn firewall(eif: bool) -> Self {
        use crate::nat::{Dependence, PortAllocation, Refresh};
        let filtering = if eif {
            Dependence::EndpointIndependent
        } else {
            Dependence::AddressAndPortDependent
        };
        Ipv6Access {
            firewall: Some(NatConfig {
                translate: false,
                mapping: Dependence::EndpointIndependent,
                filtering,
                allocation: PortAllocation::PreserveIfFree,
                port_low: 1,
                port_high: 65535,
                timeout: Duration::from_secs(30),
                refresh: Refresh::Outbound,
                capacity: None,
                hairpin: false,
                block_udp: false,
                gateway: None,
                background: 0.0,
            }),
            only: false,
        }
    }
}

/// A relay-capable node beside the two (peer relays): its NAT chain and its distance from the
/// Internet core. Both nodes may use it, and it relays for both.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelaySite {
    /// Boxes in front of it, innermost first (empty: a public host).
    pub chain: Vec<NatConfig>,
    /// One-way latency between it and the core.
    pub one_way: Duration,
}

/// The relay socket's port on relay nodes.
pub const RELAY_PORT: u16 = 40000;

/// Something scripted to happen mid-run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Disruption {
    /// The outermost NAT of side 0 or 1 loses every mapping (a reboot, or NAT rebinding).
    FlushNat(usize),
    /// DERP is down for this long (a restart); packets to it are lost meanwhile.
    DerpRestart(Duration),
    /// Relay site `k` (an index into `FastConfig::relays`) drops off the network for this long.
    RelayDown(usize, Duration),
    /// UDP between the two sides' public addresses is dropped for this long.
    CutDirect(Duration),
    /// Between the two sides, WireGuard is dropped but disco passes, for this long (a middlebox
    /// that lets pings through and eats data).
    DropData(Duration),
    /// As `DropData`, one way only: WireGuard toward side 0 or 1 is dropped (a box, or an MTU
    /// black hole, on one direction of the path), its disco and everything the other way pass.
    DropDataTo(usize, Duration),
    /// Side 0's or 1's gateway (its innermost box) reboots: its port mappings, its NAT
    /// sessions and its epoch start again.
    RebootGateway(usize),
    /// Side 0's or 1's IPv6 address is withdrawn for this long (the node is told, as a driver
    /// watching its interfaces would be); nothing of that side's IPv6 passes meanwhile.
    WithdrawIpv6(usize, Duration),
    /// Side `k`'s access link now carries IP packets up to this size (none: any size), both
    /// ways; larger ones vanish without an ICMP error (a black hole for large packets).
    LinkMtu(usize, Option<usize>),
    /// Side `k` gets a new public IPv4 address (its ISP renumbered it, or it roamed): the
    /// outermost box's mappings go with the old one. A host whose own address is public is
    /// told, as a driver watching its interfaces would be; one behind a NAT is not.
    NewAddress(usize),
    /// The coordination server restarts: each node gets its netmap again when its control
    /// stream comes back, with the other node's endpoints as last reported.
    ControlRestart,
}

/// One run's network and workload.
#[derive(Debug, Clone)]
pub struct FastConfig {
    /// Boxes in front of node 0 and node 1, innermost first (empty: a public host).
    pub chains: [Vec<NatConfig>; 2],
    /// One-way latency between each side and the Internet core (RTT = 4 × this between nodes).
    pub one_way: Duration,
    /// Extra random delay per hop, up to this (reorders packets).
    pub jitter: Duration,
    /// Probability a datagram is lost per hop.
    pub loss: f64,
    /// Probability a datagram is duplicated per hop.
    pub duplicate: f64,
    /// One-way latency between a node and DERP.
    pub derp_one_way: Duration,
    /// Application packets each way at this interval (none: no data plane traffic).
    pub data_interval: Option<Duration>,
    /// When application packets flow: (from, until) windows in order (empty: all the time).
    /// Between them the tunnel is idle, as a user's traffic comes and goes.
    pub data_active: Vec<(Duration, Duration)>,
    /// Application traffic stops this long before the end (so nothing is in flight at the end).
    pub data_quiet_tail: Duration,
    /// Simulated duration.
    pub duration: Duration,
    /// Stop early once both nodes are on a direct path (and data has settled).
    pub stop_when_direct: bool,
    /// Count `tail_sent`/`tail_received` for application packets sent from this time on.
    pub measure_from: Duration,
    /// Scripted disruptions, by time from the start.
    pub disruptions: Vec<(Duration, Disruption)>,
    /// Birthday budget for both nodes.
    pub probe: ProbeBudget,
    /// Mutual port prediction settings for both nodes.
    pub prediction: PredictionConfig,
    /// The nodes ask their gateway for a port mapping (when its box offers the service).
    pub port_mapping: bool,
    /// IPv6 of node 0 and node 1 (none: IPv4 only).
    pub ipv6: [Option<Ipv6Access>; 2],
    /// Relay-capable nodes (sides 2, 3, …), none by default.
    pub relays: Vec<RelaySite>,
    /// The largest IP packet each side's access link carries, both ways (none: any); larger
    /// ones vanish silently, as in a black hole that sends no ICMP.
    pub link_mtu: [Option<usize>; 2],
    /// Application packets are IPv4 packets of this size with Don't Fragment set (none: 44
    /// bytes); an ICMP "too big" lowers the sender's size to the MTU it names.
    pub data_size: Option<usize>,
    /// Both nodes' path MTU settings (none: the engine's defaults).
    pub mtu: Option<burrow_node::MtuConfig>,
    /// Side 0's and side 1's access link (none: `one_way`, `jitter`, `loss` and `duplicate`).
    /// A side with a link sends and receives everything through it, DERP included: DERP's
    /// path is then the two access links plus `derp_one_way` twice.
    pub links: [Option<LinkProfile>; 2],
    /// A bulk transfer from node 0 to node 1 with TCP-like congestion control (none: no
    /// transfer); its goodput is in `FastOutcome::bulk`.
    pub bulk: Option<BulkConfig>,
    /// Record each node's route stretches and doubt episodes (`FastOutcome::episodes`).
    pub record_episodes: bool,
    /// Seed for everything.
    pub seed: u64,
}

impl FastConfig {
    /// Lossless 50 ms RTT links, no data, 30 s.
    pub fn new(chains: [Vec<NatConfig>; 2], seed: u64) -> Self {
        FastConfig {
            chains,
            one_way: Duration::from_micros(12_500),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            derp_one_way: Duration::from_millis(15),
            data_interval: None,
            data_active: Vec::new(),
            data_quiet_tail: Duration::from_secs(2),
            duration: Duration::from_secs(30),
            stop_when_direct: false,
            measure_from: Duration::ZERO,
            disruptions: Vec::new(),
            probe: ProbeBudget::default(),
            prediction: PredictionConfig::default(),
            port_mapping: true,
            ipv6: [None, None],
            relays: Vec::new(),
            link_mtu: [None, None],
            data_size: None,
            mtu: None,
            links: [None, None],
            bulk: None,
            record_episodes: false,
            seed,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FastOutcome {
    /// Both nodes' routes at the end are direct.
    pub direct: bool,
    /// Time until both nodes were first on a direct path.
    pub time_to_direct: Option<Duration>,
    /// Time until both nodes were first on a direct IPv6 path.
    pub time_to_direct_v6: Option<Duration>,
    /// Both nodes' routes at the end are direct over IPv6.
    pub direct_v6: bool,
    /// Time until both nodes first sent through a peer relay (or went direct).
    pub time_to_peer_relay: Option<Duration>,
    /// The relay (index into `FastConfig::relays`) both nodes use at the end, if the same.
    pub peer_relay: Option<usize>,
    /// Node 0's round trip to node 1 through each relay at the end (`None`: not alive).
    pub relay_rtts: Vec<Option<Duration>>,
    /// When each node's port mapping was first made (by its gateway's NAT-PMP, PCP or UPnP).
    pub time_to_mapping: [Option<Duration>; 2],
    /// Birthday packets sent by both nodes (random-port probes and socket openings).
    pub probes: u64,
    /// Random-port probes node 0 and node 1 sent before the first direct path.
    pub probes_before_direct: [u64; 2],
    /// Mutual-prediction rounds node 0 and node 1 started before the first direct path.
    pub rounds_before_direct: [u64; 2],
    /// Application packets sent and received (both directions).
    pub data_sent: u64,
    /// See `data_sent`.
    pub data_received: u64,
    /// Application packets sent from `measure_from` on, and how many of them arrived.
    pub tail_sent: u64,
    /// See `tail_sent`.
    pub tail_received: u64,
    /// Application packets sent from `measure_from` on that never arrived: (sending node,
    /// sequence number, sent at), the first 32.
    pub lost: Vec<(usize, u64, Duration)>,
    /// Application packets node 0 and node 1 sent that never arrived, over the whole run.
    pub lost_by_node: [u64; 2],
    /// Every such packet: when node 0 (node 1) sent it, and whether it went on the direct path
    /// (not over DERP, for the route or for its size).
    #[serde(skip)]
    pub lost_sends: [Vec<(Duration, bool)>; 2],
    /// Application packets each node was told were too big for the path (ICMP back into its
    /// tunnel), so not lost.
    pub too_big: [u64; 2],
    /// Each node's tunnel MTU toward the other at the end.
    pub path_mtu: [Option<u16>; 2],
    /// Each node's path MTU probes, datagrams sent over DERP while larger than the direct
    /// path was known to carry, and black holes found.
    pub mtu_probes: [u64; 2],
    /// See `mtu_probes`.
    pub oversize_relayed: [u64; 2],
    /// See `mtu_probes`.
    pub black_holes: [u32; 2],
    /// Datagrams the engines refused.
    pub refused: u64,
    /// The bulk transfer's figures (when `FastConfig::bulk` asked for one).
    pub bulk: Option<BulkOutcome>,
    /// What side 0's and side 1's access links did, up and down (when they have one).
    pub link_stats: [Option<[LinkStats; 2]>; 2],
    /// How long node 0 and node 1 each sent on a direct path.
    pub direct_time: [Duration; 2],
    /// Timer wake-ups of node 0 and node 1 over the run, and the most in any one simulated
    /// second (timers that spin would show here).
    pub wakeups: [u64; 2],
    /// See `wakeups`.
    pub max_wakeups_per_s: [u32; 2],
    /// WireGuard datagrams node 0 and node 1 also sent over the relay because their direct
    /// path was in doubt (fast loss detection's cost).
    pub doubt_duplicated: [u64; 2],
    /// Route changes seen (both nodes).
    pub switches: u64,
    /// Route changes of node 0 and of node 1.
    pub switches_by_node: [u64; 2],
    /// Peak live sessions of any NAT box.
    pub peak_sessions: usize,
    /// Any private key seen on any wire.
    pub key_leaked: bool,
    /// Any application plaintext seen on any wire.
    pub plaintext_leaked: bool,
    /// The final route of each node to the other.
    pub routes: [String; 2],
    /// Why node 0 is on its path (its last attempts).
    pub explanation: Vec<String>,
    /// Simulated time covered.
    pub elapsed: Duration,
    /// What happened when, per node: endpoints learned, birthday started, handshakes, routes.
    pub timeline: Vec<String>,
    /// Node 0's and node 1's route stretches, then their doubt episodes (when
    /// `FastConfig::record_episodes` asked for them).
    #[serde(skip_serializing_if = "episodes_empty")]
    pub episodes: [Vec<Episode>; 2],
}

fn episodes_empty(e: &[Vec<Episode>; 2]) -> bool {
    e.iter().all(Vec::is_empty)
}

impl FastOutcome {
    /// What must never appear on a wire and did: a private key, application plaintext.
    pub fn leaks(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.key_leaked {
            out.push("a private key appeared on a wire");
        }
        if self.plaintext_leaked {
            out.push("application plaintext appeared on a wire");
        }
        out
    }
}

/// A payload as a node put it on a wire, before any NAT touched it.
#[derive(Debug, Clone, Copy)]
pub struct WireSend<'a> {
    /// Time since the start.
    pub at: Duration,
    /// The sending node (0 or 1).
    pub node: usize,
    /// The UDP destination, or `None` for a packet sent through DERP.
    pub dst: Option<SocketAddr>,
    /// The bytes.
    pub payload: &'a [u8],
}

/// Something that looks at every payload on the wire (see [`FastNet::tap`]).
type Tap = Box<dyn FnMut(WireSend<'_>) + Send>;

/// One node and the boxes in front of it.
struct Side {
    node: Node,
    ip: IpAddr,
    /// Boxes innermost first, each with its outside address.
    boxes: Vec<(NatTable, IpAddr)>,
    public_ip: IpAddr,
    /// The node's global IPv6 address and the firewall in front of it, if it has IPv6.
    v6: Option<SideV6>,
    /// The node has IPv4 (false: an IPv6-only host).
    has_v4: bool,
    /// One-way latency between the side and the Internet core.
    one_way: Duration,
    /// Unreachable until then (a relay taken down).
    down_until: Option<Instant>,
    /// The largest IP packet its access link carries (none: any).
    link_mtu: Option<usize>,
    /// Its access link, up and down (none: the run's uniform hops).
    link: Option<[link::LinkWay; 2]>,
    /// The node's port mapper, and its gateway's service (behind a translating box).
    portmap: Option<SidePortMap>,
    /// Public addresses it was given after its first (`Disruption::NewAddress`).
    renumbered: u8,
    /// The node's batches: what it sends, and packets it delivered (the engine is driven
    /// through its batch calls, as the real driver drives it).
    tx: burrow_node::TransmitBatch,
    rx: burrow_node::PacketBatch,
}

/// A side's IPv6: the global address, its stateful firewall, and whether it is withdrawn.
struct SideV6 {
    ip: IpAddr,
    firewall: Option<NatTable>,
    withdrawn_until: Option<Instant>,
}

/// A side's port mapping: the node's client, and the innermost box's service (if it has one).
struct SidePortMap {
    mapper: burrow_portmap::PortMapper,
    gateway: Option<burrow_portmap::gateway::Gateway>,
    lan_ip: std::net::Ipv4Addr,
    /// The innermost box's forwarded ports must be set from the gateway's table again (an
    /// exchange, a reboot, or a sweep that may have seen leases lapse).
    sync_forwards: bool,
}

/// Disruptions still to come, and the ones in force.
struct Disruptions {
    /// Latest first, so the next one pops off the end.
    pending: Vec<(Instant, Disruption)>,
    derp_down_until: Option<Instant>,
    cut_until: Option<Instant>,
    drop_data_until: Option<Instant>,
    /// `DropDataTo`: per destination side.
    drop_data_to_until: [Option<Instant>; 2],
}

/// The application traffic both ways and what arrived of it.
struct Traffic {
    next: Option<Instant>,
    seq: [u64; 2],
    /// The first sequence number each side sent from `measure_from` on.
    first_measured: [Option<u64>; 2],
    received: [BTreeSet<u64>; 2],
    /// Packets each side was told were too big (ICMP into its tunnel).
    told: [BTreeSet<u64>; 2],
    /// Each side's packets by sequence number less one: when sent, and whether its route was
    /// direct then.
    sent: [Vec<(Duration, bool)>; 2],
    /// Each side's application packet size: `FastConfig::data_size`, lowered to the MTU an
    /// ICMP error names (as TCP lowers its segment size).
    size: [Option<usize>; 2],
    last_reported_route: [Option<Route>; 2],
}

/// The discrete-event network of [`run`] as a value: build it from a [`FastConfig`],
/// advance it with [`step`](Self::step) or [`drive_until`](Self::drive_until), look at the
/// nodes in between, add disruptions, and [`finish`](Self::finish) it into a [`FastOutcome`].
pub struct FastNet {
    config: FastConfig,
    t0: Instant,
    now: Instant,
    end: Instant,
    done: bool,
    rng: ChaCha20Rng,
    secrets: Vec<[u8; 32]>,
    sides: Vec<Side>,
    /// Each node's peer: node 1's key for node 0 and the other way round.
    peers: [PublicKey; 2],
    stun: [BindingServer; 4],
    queue: packets::Queue,
    disruptions: Disruptions,
    traffic: Traffic,
    last_endpoints: [Option<String>; 2],
    direct_since: [Option<Instant>; 2],
    direct_v6_since: [Option<Instant>; 2],
    /// Since when each node has sent through a peer relay, and which (side index).
    relayed_since: [Option<(Instant, usize)>; 2],
    next_sweep: Instant,
    out: FastOutcome,
    tap: Option<Tap>,
    bulk: Option<bulk::Bulk>,
    /// Per node: the simulated second being counted and its wake-ups so far.
    wake: [(u64, u32); 2],
    /// Route stretches and doubts per node, when asked for.
    episodes: Option<[episodes::Recorder; 2]>,
}

/// Runs one simulation to its end.
pub fn run(config: &FastConfig) -> FastOutcome {
    let mut net = FastNet::new(config);
    while net.step() {}
    net.finish()
}
