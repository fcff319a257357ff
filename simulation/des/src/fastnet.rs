//! A discrete-event network for two burrow node engines behind scripted NATs — the same
//! `NatTable` logic as the turmoil boxes, without turmoil's per-millisecond ticks — so the
//! engine can be run for hours of simulated time (two-sided birthday searches) and thousands of
//! property-test cases. Links have latency, jitter (reordering), loss and duplication; DERP is
//! an in-memory relay that can restart; NATs can be flushed (rebinding) mid-run.
//!
//! Every byte put on any wire is scanned: no private key and no plaintext may ever appear.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_node::{Event, Input, Node, NodeConfig, PeerConfig, Transmit};
use burrow_punch::{ProbeBudget, Route};
use burrow_stun::{BindingServer, ServerConfig};
use burrow_wg::PrivateKey;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::derive_seed;
use crate::nat::{NatConfig, NatTable};

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
const STUN_SERVERS: [SocketAddr; 3] = [STUN_1, STUN_2, STUN_3];

/// Something scripted to happen mid-run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Disruption {
    /// The outermost NAT of side 0 or 1 loses every mapping (a reboot, or NAT rebinding).
    FlushNat(usize),
    /// DERP is down for this long (a restart); packets to it are lost meanwhile.
    DerpRestart(Duration),
    /// UDP between the two sides' public addresses is dropped for this long.
    CutDirect(Duration),
    /// Between the two sides, WireGuard is dropped but disco passes, for this long (a middlebox
    /// that lets pings through and eats data).
    DropData(Duration),
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
            data_quiet_tail: Duration::from_secs(2),
            duration: Duration::from_secs(30),
            stop_when_direct: false,
            measure_from: Duration::ZERO,
            disruptions: Vec::new(),
            probe: ProbeBudget::default(),
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
    /// Birthday packets sent by both nodes (random-port probes and socket openings).
    pub probes: u64,
    /// Random-port probes node 0 and node 1 sent before the first direct path.
    pub probes_before_direct: [u64; 2],
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
    /// Datagrams the engines refused.
    pub refused: u64,
    /// Route changes seen (both nodes).
    pub switches: u64,
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
}

#[derive(Debug, Clone)]
enum Packet {
    /// A datagram in flight toward the Internet core from side `side` (already translated).
    Up {
        src: SocketAddr,
        dst: SocketAddr,
        data: Vec<u8>,
    },
    /// A datagram arriving at side `side`'s outermost box.
    Down {
        side: usize,
        src: SocketAddr,
        dst: SocketAddr,
        data: Vec<u8>,
    },
    /// A relayed packet arriving at a node.
    Relay { to: usize, data: Vec<u8> },
}

struct Side {
    node: Node,
    ip: IpAddr,
    /// Boxes innermost first, each with its outside address.
    boxes: Vec<(NatTable, IpAddr)>,
    public_ip: IpAddr,
}

/// Runs one simulation.
pub fn run(config: &FastConfig) -> FastOutcome {
    let t0 = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(derive_seed(config.seed, "fastnet"));
    let key = |label: &str| {
        let mut r = ChaCha20Rng::seed_from_u64(derive_seed(config.seed, label));
        PrivateKey::generate(&mut r)
    };
    let keys = [(key("wg0"), key("disco0")), (key("wg1"), key("disco1"))];
    let secrets: Vec<[u8; 32]> = keys
        .iter()
        .flat_map(|(a, b)| [secret_bytes(a), secret_bytes(b)])
        .collect();
    let mut sides: Vec<Side> = (0..2)
        .map(|s| {
            let chain = &config.chains[s];
            let public_ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10 + s as u8));
            let mut boxes = Vec::new();
            for (k, c) in chain.iter().enumerate() {
                let outermost = k + 1 == chain.len();
                let outside = if outermost {
                    public_ip
                } else {
                    IpAddr::V4(Ipv4Addr::new(100, 64, s as u8, 1 + k as u8))
                };
                let rng =
                    ChaCha20Rng::seed_from_u64(derive_seed(config.seed, &format!("box{s}.{k}")));
                boxes.push((NatTable::new(c.clone(), rng), outside));
            }
            let translates = chain.iter().any(|c| c.translate);
            let ip = if translates {
                IpAddr::V4(Ipv4Addr::new(10, s as u8 + 1, 0, 2))
            } else {
                public_ip
            };
            let mut nc = NodeConfig::new(
                keys[s].0.clone(),
                keys[s].1.clone(),
                derive_seed(config.seed, &format!("node{s}")),
            );
            nc.stun_servers = STUN_SERVERS.to_vec();
            nc.local_addrs = vec![SocketAddr::new(ip, MAIN_PORT)];
            nc.probe = config.probe;
            // No control plane here: the two nodes trust each other's advertised endpoints.
            nc.birthday_needs_control_ip = false;
            Side {
                node: Node::new(nc, t0),
                ip,
                boxes,
                public_ip,
            }
        })
        .collect();
    // Boxes that do not translate keep the inside address: use it as their outside one.
    for s in sides.iter_mut() {
        let ip = s.ip;
        for b in s.boxes.iter_mut() {
            if !b.0.config().translate {
                b.1 = ip;
            }
        }
    }
    for s in 0..2 {
        let other = &sides[1 - s].node;
        let peer = PeerConfig {
            node_key: other.public_key(),
            disco_key: other.disco_public_key(),
            home_region: 1,
            endpoints: Vec::new(),
            // app_packet's sources: side 0 is 100.64.0.1, side 1 100.64.0.2.
            allowed_ips: vec![IpAddr::from([100, 64, 0, 2 - s as u8]).into()],
        };
        let _ = sides[s].node.add_peer(t0, peer);
    }
    let peers = [sides[1].node.public_key(), sides[0].node.public_key()];
    let mut stun = STUN_SERVERS.map(|s| BindingServer::new(ServerConfig::new(s)));

    let mut queue: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut packets: BTreeMap<u64, Packet> = BTreeMap::new();
    let mut seq = 0u64;
    let mut out = FastOutcome::default();
    let end = t0 + config.duration;
    let mut derp_down_until: Option<Instant> = None;
    let mut cut_until: Option<Instant> = None;
    let mut drop_data_until: Option<Instant> = None;
    let mut disruptions: Vec<(Instant, Disruption)> = config
        .disruptions
        .iter()
        .map(|(d, x)| (t0 + *d, *x))
        .collect();
    disruptions.sort_by_key(|d| d.0);
    disruptions.reverse();
    let mut next_data = config.data_interval.map(|_| t0);
    let mut data_seq = [0u64; 2];
    let mut first_measured: [Option<u64>; 2] = [None, None];
    let mut last_reported_route: [Option<Route>; 2] = [None, None];
    let mut last_endpoints: [Option<String>; 2] = [None, None];
    let mut received: [BTreeSet<u64>; 2] = [BTreeSet::new(), BTreeSet::new()];
    let mut direct_since: [Option<Instant>; 2] = [None, None];
    let mut now = t0;
    let mut next_sweep = t0;

    macro_rules! schedule {
        ($at:expr, $p:expr) => {{
            seq += 1;
            packets.insert(seq, $p);
            queue.push(Reverse(($at, seq)));
        }};
    }

    loop {
        // Everything due now.
        while let Some(Reverse((at, id))) = queue.peek().copied() {
            if at > now {
                break;
            }
            queue.pop();
            let Some(p) = packets.remove(&id) else {
                continue;
            };
            match p {
                Packet::Relay { to, data } => {
                    if derp_down_until.is_some_and(|u| now < u) {
                        continue;
                    }
                    let from = peers[to];
                    let r = sides[to].node.handle_input(
                        now,
                        Input::Derp {
                            region: 1,
                            from,
                            data: &data,
                        },
                    );
                    if let Err(e) = r {
                        note_error(&mut out, now - t0, to, &e);
                    }
                }
                Packet::Up { src, dst, data } => {
                    if let Some(k) = STUN_SERVERS.iter().position(|s| *s == dst) {
                        let mut buf = [0u8; 1500];
                        if let Ok(r) = stun[k].handle_packet(dst, src, &data, &mut buf) {
                            let side = sides.iter().position(|s| s.public_ip == src.ip());
                            if let Some(side) = side {
                                let d = hop_delay(config, &mut rng);
                                schedule!(
                                    now + d,
                                    Packet::Down {
                                        side,
                                        src: dst,
                                        dst: r.to,
                                        data: buf[..r.len].to_vec()
                                    }
                                );
                            }
                        }
                        continue;
                    }
                    let Some(side) = sides.iter().position(|s| s.public_ip == dst.ip()) else {
                        continue; // unroutable (a LAN candidate of the other side)
                    };
                    if cut_until.is_some_and(|u| now < u) {
                        continue;
                    }
                    if drop_data_until.is_some_and(|u| now < u)
                        && !burrow_disco::looks_like_disco(&data)
                    {
                        continue;
                    }
                    for _ in 0..copies(config, &mut rng) {
                        let d = hop_delay(config, &mut rng);
                        schedule!(
                            now + d,
                            Packet::Down {
                                side,
                                src,
                                dst,
                                data: data.clone()
                            }
                        );
                    }
                }
                Packet::Down {
                    side,
                    src,
                    mut dst,
                    data,
                } => {
                    let s = &mut sides[side];
                    let mut ok = true;
                    for (table, outside) in s.boxes.iter_mut().rev() {
                        if dst.ip() != *outside {
                            ok = false;
                            break;
                        }
                        match table.inbound(now, dst.port(), src) {
                            Ok(internal) => {
                                if table.config().translate {
                                    dst = internal;
                                }
                            }
                            Err(_) => {
                                ok = false;
                                break;
                            }
                        }
                    }
                    if !ok || dst.ip() != s.ip {
                        continue;
                    }
                    let socket = match dst.port() {
                        MAIN_PORT => 0,
                        p if p > BIRTHDAY_BASE_PORT => p - BIRTHDAY_BASE_PORT,
                        _ => continue,
                    };
                    let r = s.node.handle_input(
                        now,
                        Input::Udp {
                            socket,
                            from: src,
                            data: &data,
                        },
                    );
                    if let Err(e) = r {
                        note_error(&mut out, now - t0, side, &e);
                    }
                }
            }
        }
        // Scripted disruptions.
        while disruptions.last().is_some_and(|d| d.0 <= now) {
            let (_, d) = disruptions.pop().expect("checked");
            match d {
                Disruption::FlushNat(side) => {
                    if let Some((table, _)) = sides[side].boxes.last_mut() {
                        let c = table.config().clone();
                        let r = ChaCha20Rng::seed_from_u64(rng.next_u64());
                        *table = NatTable::new(c, r);
                    }
                }
                Disruption::DerpRestart(x) => derp_down_until = Some(now + x),
                Disruption::CutDirect(x) => cut_until = Some(now + x),
                Disruption::DropData(x) => drop_data_until = Some(now + x),
            }
        }
        // NATs sweep idle sessions once a second, so peaks count live sessions.
        if now >= next_sweep {
            for s in sides.iter_mut() {
                for (table, _) in s.boxes.iter_mut() {
                    table.expire_all(now);
                }
            }
            next_sweep = now + Duration::from_secs(1);
        }
        // Timers.
        for s in sides.iter_mut() {
            if s.node.poll_timeout().is_some_and(|t| t <= now) {
                s.node.handle_timeout(now);
            }
        }
        // Application data.
        if let (Some(t), Some(iv)) = (next_data, config.data_interval) {
            if t <= now {
                if now + config.data_quiet_tail < end {
                    for s in 0..2 {
                        data_seq[s] += 1;
                        let packet = app_packet(s, data_seq[s]);
                        let _ = sides[s].node.send(now, &peers[s], &packet);
                        out.data_sent += 1;
                        if now >= t0 + config.measure_from {
                            first_measured[s].get_or_insert(data_seq[s]);
                            out.tail_sent += 1;
                        }
                    }
                }
                next_data = Some(t + iv);
            }
        }
        // Outputs.
        for s in 0..2 {
            while let Some(t) = sides[s].node.poll_transmit() {
                match t {
                    Transmit::Derp { payload, .. } => {
                        scan(&payload, &secrets, &mut out);
                        let d = config.derp_one_way * 2;
                        schedule!(
                            now + d,
                            Packet::Relay {
                                to: 1 - s,
                                data: payload
                            }
                        );
                    }
                    Transmit::Udp {
                        socket,
                        dst,
                        payload,
                    } => {
                        scan(&payload, &secrets, &mut out);
                        let port = if socket == 0 {
                            MAIN_PORT
                        } else {
                            BIRTHDAY_BASE_PORT + socket
                        };
                        let mut src = SocketAddr::new(sides[s].ip, port);
                        let mut ok = true;
                        for (table, outside) in sides[s].boxes.iter_mut() {
                            match table.outbound(now, src, dst) {
                                Ok(p) => {
                                    if table.config().translate {
                                        src = SocketAddr::new(*outside, p);
                                    }
                                }
                                Err(_) => {
                                    ok = false;
                                    break;
                                }
                            }
                        }
                        if !ok {
                            continue;
                        }
                        for _ in 0..copies(config, &mut rng) {
                            let d = hop_delay(config, &mut rng);
                            schedule!(
                                now + d,
                                Packet::Up {
                                    src,
                                    dst,
                                    data: payload.clone()
                                }
                            );
                        }
                    }
                }
            }
            while let Some(e) = sides[s].node.poll_event() {
                match e {
                    Event::Packet { data, .. } => {
                        if let Some(n) = app_seq(1 - s, &data) {
                            if received[s].insert(n) {
                                // The first packet, and the first on each new path, with its
                                // one-way latency (packet n left at (n - 1) × interval).
                                let route = sides[s].node.route(&peers[s]).unwrap_or(Route::Relay);
                                if last_reported_route[s] != Some(route) {
                                    last_reported_route[s] = Some(route);
                                    if let Some(iv) = config.data_interval {
                                        let sent_at = t0 + iv * (n as u32 - 1);
                                        let via = match route {
                                            Route::Relay => "DERP".to_string(),
                                            Route::Direct(a) => format!("direct {a}"),
                                        };
                                        out.timeline.push(format!(
                                            "{:>8.3}s node{s} packet #{n} from node{} arrived {:.1} ms after it was sent; node{s} now sends on {via}",
                                            (now - t0).as_secs_f64(),
                                            1 - s,
                                            now.saturating_duration_since(sent_at).as_secs_f64() * 1000.0
                                        ));
                                    }
                                }
                                out.data_received += 1;
                                if first_measured[1 - s].is_some_and(|f| n >= f) {
                                    out.tail_received += 1;
                                }
                            }
                        }
                    }
                    Event::Endpoints { nat, candidates } => {
                        let what = format!(
                            "{} candidates ({}), NAT {}",
                            candidates.len(),
                            candidates
                                .iter()
                                .map(|c| c.addr.to_string())
                                .collect::<Vec<_>>()
                                .join(", "),
                            match nat {
                                None => "unknown (no STUN answer)".to_string(),
                                Some(n) if !n.mapping_varies => "easy (mapping fixed)".to_string(),
                                Some(n) => match n.delta {
                                    Some(d) => format!("hard, sequential ports (step {d})"),
                                    None => "hard, random ports".to_string(),
                                },
                            }
                        );
                        if last_endpoints[s].as_ref() != Some(&what) {
                            out.timeline.push(format!(
                                "{:>8.3}s node{s} endpoints: {what}",
                                (now - t0).as_secs_f64()
                            ));
                            last_endpoints[s] = Some(what);
                        }
                    }
                    Event::BirthdayStarted { probing, .. } => {
                        let role = if probing {
                            "probing random ports"
                        } else {
                            "opening sockets"
                        };
                        out.timeline.push(format!(
                            "{:>8.3}s node{s} birthday: {role}",
                            (now - t0).as_secs_f64()
                        ));
                    }
                    Event::BirthdayExhausted {
                        probes, retry_at, ..
                    } => {
                        out.timeline.push(format!(
                            "{:>8.3}s node{s} birthday attempt spent its budget ({probes} packets so far); next at {:.3}s",
                            (now - t0).as_secs_f64(),
                            (retry_at - t0).as_secs_f64()
                        ));
                    }
                    Event::HandshakeDone { .. } => {
                        out.timeline.push(format!(
                            "{:>8.3}s node{s} WireGuard handshake done",
                            (now - t0).as_secs_f64()
                        ));
                    }
                    Event::PathChanged { from, to, .. } => {
                        out.timeline.push(format!(
                            "{:>8.3}s node{s} path {from:?} -> {to:?}",
                            (now - t0).as_secs_f64()
                        ));
                        out.switches += 1;
                        direct_since[s] = match to {
                            Route::Direct(_) => Some(now),
                            Route::Relay => None,
                        };
                        if direct_since.iter().all(Option::is_some) && out.time_to_direct.is_none()
                        {
                            out.time_to_direct = Some(now - t0);
                            for k in 0..2 {
                                out.probes_before_direct[k] =
                                    sides[k].node.stats(&peers[k]).map_or(0, |st| st.probes);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        // Next step.
        let mut next = end;
        if let Some(Reverse((at, _))) = queue.peek() {
            next = next.min(*at);
        }
        for s in &sides {
            if let Some(t) = s.node.poll_timeout() {
                next = next.min(t.max(now));
            }
        }
        if let Some(t) = next_data {
            next = next.min(t);
        }
        if let Some(d) = disruptions.last() {
            next = next.min(d.0);
        }
        next = next.min(next_sweep);
        let settled = out
            .time_to_direct
            .is_some_and(|t| now >= t0 + t + Duration::from_secs(1));
        if next >= end || (config.stop_when_direct && settled && config.data_interval.is_none()) {
            now = next.min(end);
            break;
        }
        now = next;
    }
    for s in 0..2 {
        out.probes += sides[s].node.stats(&peers[s]).map_or(0, |st| st.probes);
        out.routes[s] = format!(
            "{:?}",
            sides[s].node.route(&peers[s]).unwrap_or(Route::Relay)
        );
        for (table, _) in &sides[s].boxes {
            out.peak_sessions = out.peak_sessions.max(table.stats().peak_sessions);
        }
    }
    out.direct = (0..2).all(|s| matches!(sides[s].node.route(&peers[s]), Some(Route::Direct(_))));
    if let Some(x) = sides[0].node.explain(&peers[0]) {
        // One line per candidate: how often it was tried and what came of it last.
        let mut by_addr: BTreeMap<SocketAddr, (usize, String)> = BTreeMap::new();
        for a in &x.attempts {
            let e = by_addr.entry(a.addr).or_default();
            e.0 += 1;
            e.1 = format!("{:?} at {:.3}s", a.outcome, (a.at - t0).as_secs_f64());
        }
        out.explanation = x
            .candidates
            .iter()
            .map(|c| {
                let (n, last) = by_addr.remove(&c.addr).unwrap_or((0, "not tried".into()));
                format!(
                    "{} ({:?}, {:?}): {n} recent results, last {last}",
                    c.addr, c.kind, c.source
                )
            })
            .take(12)
            .collect();
    }
    if let Some(iv) = config.data_interval {
        for s in 0..2 {
            for n in 1..=data_seq[s] {
                let sent_at = iv * (n as u32 - 1);
                if out.lost.len() < 32
                    && sent_at >= config.measure_from
                    && !received[1 - s].contains(&n)
                {
                    out.lost.push((s, n, iv * (n as u32 - 1)));
                }
            }
        }
    }
    out.elapsed = now - t0;
    out
}

/// Datagrams an engine refused (replays of duplicated packets, probes from strangers…): the
/// first 64 go into the timeline, all are counted.
fn note_error(out: &mut FastOutcome, at: Duration, node: usize, e: &burrow_node::NodeError) {
    out.refused += 1;
    // Duplicates (the relay's copy of a packet that came direct) are expected: count only.
    let duplicate = e.to_string().contains("replayed");
    if out.refused <= 64 && !duplicate {
        out.timeline.push(format!(
            "{:>8.3}s node{node} refused a datagram: {e}",
            at.as_secs_f64()
        ));
    }
}

fn secret_bytes(k: &PrivateKey) -> [u8; 32] {
    let b64 = k.expose_base64();
    let mut out = [0u8; 32];
    let v = base64_decode(&b64);
    out.copy_from_slice(&v[..32]);
    out
}

fn base64_decode(s: &str) -> Vec<u8> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = T.iter().position(|t| *t == c).unwrap_or(0) as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

fn scan(payload: &[u8], secrets: &[[u8; 32]], out: &mut FastOutcome) {
    if secrets.iter().any(|k| payload.windows(32).any(|w| w == k)) {
        out.key_leaked = true;
    }
    if payload
        .windows(PLAINTEXT_MARKER.len())
        .any(|w| w == PLAINTEXT_MARKER)
    {
        out.plaintext_leaked = true;
    }
}

fn hop_delay(c: &FastConfig, rng: &mut ChaCha20Rng) -> Duration {
    let jitter = if c.jitter.is_zero() {
        Duration::ZERO
    } else {
        c.jitter.mul_f64(rng.next_u32() as f64 / u32::MAX as f64)
    };
    c.one_way + jitter
}

fn copies(c: &FastConfig, rng: &mut ChaCha20Rng) -> usize {
    let roll = |rng: &mut ChaCha20Rng| rng.next_u32() as f64 / u32::MAX as f64;
    if c.loss > 0.0 && roll(rng) < c.loss {
        return 0;
    }
    if c.duplicate > 0.0 && roll(rng) < c.duplicate {
        return 2;
    }
    1
}

/// An IPv4/UDP-looking packet from side `s` carrying `n` and the plaintext marker.
fn app_packet(s: usize, n: u64) -> Vec<u8> {
    let mut p = vec![
        0x45,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        64,
        17,
        0,
        0,
        100,
        64,
        0,
        1 + s as u8,
        100,
        64,
        0,
        2 - s as u8,
    ];
    p.extend_from_slice(PLAINTEXT_MARKER);
    p.extend_from_slice(&n.to_be_bytes());
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p
}

fn app_seq(from: usize, p: &[u8]) -> Option<u64> {
    if p.len() != 44 || p[15] != 1 + from as u8 || &p[20..36] != PLAINTEXT_MARKER {
        return None;
    }
    Some(u64::from_be_bytes(p[36..44].try_into().ok()?))
}
