//! A hostile peer in the simulator (`burrow-sim --attack`, part of `cargo xtask attack`).
//!
//! Three node engines on a discrete-event network in simulated time: the victim V, an honest
//! peer A, and a member M whose sender is altered. The control plane (as the real server hands
//! it out) gives each its peers' keys, tailnet addresses and vouched endpoints. While A and V
//! exchange packets, M attacks V; every datagram and relayed packet V sends is counted per
//! destination address and in bytes, and every packet V delivers is checked against the
//! sender's addresses. The verdict is a set of invariants, not timings:
//! - nothing M sends under another node's address is delivered;
//! - V's packets toward any address M chose stay under the budget (disco ping and pong
//!   budgets, no birthday probing of unvouched addresses);
//! - V's candidate set for M stays bounded;
//! - the handshake flood costs at most the unloaded rate of Diffie-Hellman;
//! - A's packets keep arriving throughout.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_disco::{BoxKey, Message, MAGIC};
use burrow_node::{Event, Input, Node, NodeConfig, PeerConfig, Transmit};
use burrow_punch::PathConfig;
use burrow_stun::{BindingServer, ServerConfig};
use burrow_wg::{PrivateKey, PublicKey};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// One thing the hostile peer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attack {
    /// WireGuard packets whose inner source is the honest peer's tailnet address.
    SpoofedSource,
    /// CallMeMaybe messages, 100 a second, each naming 60 third-party addresses.
    CallMeMaybeSpray,
    /// A captured disco ping (A → V) replayed from 1,000 spoofed third-party sources.
    PingReplay,
    /// Handshake initiations from fresh keys, 500 a second, over UDP (spoofed) and DERP.
    HandshakeFlood,
    /// "My NAT varies and is unpredictable", with a CallMeMaybe naming a third party.
    FalseNatInfo,
}

impl Attack {
    /// Every attack.
    pub const ALL: [Attack; 5] = [
        Attack::SpoofedSource,
        Attack::CallMeMaybeSpray,
        Attack::PingReplay,
        Attack::HandshakeFlood,
        Attack::FalseNatInfo,
    ];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Attack::SpoofedSource => "spoofed-source",
            Attack::CallMeMaybeSpray => "call-me-maybe-spray",
            Attack::PingReplay => "ping-replay",
            Attack::HandshakeFlood => "handshake-flood",
            Attack::FalseNatInfo => "false-nat-info",
        }
    }

    /// By command-line name.
    pub fn by_name(name: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct AttackOutcome {
    /// The attack.
    pub attack: Option<Attack>,
    /// Seed.
    pub seed: u64,
    /// Packets V sent toward third-party addresses (203.0.113.0/24), and their bytes.
    pub to_third_parties: (u64, u64),
    /// The most packets V sent toward any one third-party address.
    pub max_to_one_address: u64,
    /// V's bytes on the wire in total (UDP and DERP).
    pub victim_bytes: u64,
    /// Packets M sent under A's address that V delivered.
    pub spoofed_delivered: u64,
    /// V's spoofed-source counter for M.
    pub spoofed_dropped: u64,
    /// Packets the attacker sent (proof that the attack ran).
    pub hostile_packets: u64,
    /// Handshake initiations that reached V, and those V judged without asking for a cookie
    /// (each a Diffie-Hellman).
    pub initiations: (u64, u64),
    /// Cookie replies V sent.
    pub cookie_replies: u64,
    /// V's candidates for M at the end.
    pub candidates_for_attacker: usize,
    /// A's packets sent to V after the warm-up, and delivered.
    pub honest: (u64, u64),
    /// Broken invariants.
    pub failures: Vec<String>,
}

const V: usize = 0;
const A: usize = 1;
const M: usize = 2;
const PORT: u16 = 41641;
const LATENCY: Duration = Duration::from_millis(10);
const WARM_UP: Duration = Duration::from_secs(3);
const STUN: [&str; 2] = ["192.0.2.1:3478", "192.0.2.2:3478"];

fn public_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10 + 10 * n as u8)
}

fn tailnet_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, 1 + n as u8)
}

fn third_party(k: u64) -> SocketAddr {
    SocketAddr::from((
        [203, 0, 113, (k % 250) as u8 + 1],
        1000 + (k % 50_000) as u16,
    ))
}

fn is_third_party(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v) if v.octets()[..3] == [203, 0, 113])
}

/// An IPv4 UDP packet from `src` to `dst` carrying `n`.
fn ip_packet(src: Ipv4Addr, dst: Ipv4Addr, n: u64) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 16, 0, 0]);
    p.extend_from_slice(&n.to_be_bytes());
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p
}

enum Delivery {
    Udp {
        to: usize,
        socket: u16,
        from: SocketAddr,
        data: Vec<u8>,
    },
    Derp {
        to: usize,
        from: PublicKey,
        data: Vec<u8>,
    },
}

struct World {
    now: Instant,
    nodes: Vec<Node>,
    keys: Vec<(PrivateKey, PrivateKey)>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: BTreeMap<u64, Delivery>,
    seq: u64,
    stun: Vec<BindingServer>,
    out: AttackOutcome,
    per_address: BTreeMap<IpAddr, u64>,
    /// The first disco ping A sent to V on the wire (what an on-path attacker captures).
    captured_ping: Option<Vec<u8>>,
    rng: ChaCha20Rng,
}

impl World {
    fn new(seed: u64) -> World {
        let t0 = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let keys: Vec<(PrivateKey, PrivateKey)> = (0..3)
            .map(|_| {
                (
                    PrivateKey::generate(&mut rng),
                    PrivateKey::generate(&mut rng),
                )
            })
            .collect();
        let mut nodes: Vec<Node> = (0..3)
            .map(|n| {
                let mut c = NodeConfig::new(keys[n].0.clone(), keys[n].1.clone(), rng.next_u64());
                c.stun_servers = STUN.iter().map(|s| s.parse().expect("addr")).collect();
                c.local_addrs = vec![SocketAddr::new(IpAddr::V4(public_ip(n)), PORT)];
                Node::new(c, t0)
            })
            .collect();
        // The control plane: everyone's keys, tailnet address and vouched endpoint.
        for (me, node) in nodes.iter_mut().enumerate() {
            for (peer, (node_key, disco_key)) in keys.iter().enumerate() {
                if me == peer {
                    continue;
                }
                let config = PeerConfig {
                    node_key: node_key.public_key(),
                    disco_key: disco_key.public_key(),
                    home_region: 1,
                    endpoints: vec![SocketAddr::new(IpAddr::V4(public_ip(peer)), PORT)],
                    allowed_ips: vec![IpAddr::V4(tailnet_ip(peer)).into()],
                };
                node.add_peer(t0, config).expect("distinct keys");
            }
        }
        let stun = STUN
            .iter()
            .map(|s| BindingServer::new(ServerConfig::new(s.parse().expect("addr"))))
            .collect();
        World {
            now: t0,
            nodes,
            keys,
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            seq: 0,
            stun,
            out: AttackOutcome::default(),
            per_address: BTreeMap::new(),
            captured_ping: None,
            rng,
        }
    }

    fn node_at(ip: IpAddr) -> Option<usize> {
        (0..3).find(|&n| IpAddr::V4(public_ip(n)) == ip)
    }

    fn node_with_key(&self, key: &PublicKey) -> Option<usize> {
        self.keys.iter().position(|k| k.0.public_key() == *key)
    }

    fn schedule(&mut self, at: Instant, d: Delivery) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.pending.insert(self.seq, d);
    }

    /// A datagram from `from` (any address: the attacker spoofs) to `dst`.
    fn send_udp(&mut self, from: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        let at = self.now + LATENCY;
        if let Some(k) = STUN
            .iter()
            .position(|s| s.parse::<SocketAddr>().ok() == Some(dst))
        {
            let mut buf = [0u8; 1500];
            if let (Some(to), Ok(r)) = (
                World::node_at(from.ip()),
                self.stun[k].handle_packet(dst, from, &data, &mut buf),
            ) {
                let socket = from.port() - PORT;
                let reply = buf[..r.len].to_vec();
                self.schedule(
                    at + LATENCY,
                    Delivery::Udp {
                        to,
                        socket,
                        from: dst,
                        data: reply,
                    },
                );
            }
            return;
        }
        if let Some(to) = World::node_at(dst.ip()) {
            self.schedule(
                at,
                Delivery::Udp {
                    to,
                    socket: dst.port().saturating_sub(PORT),
                    from,
                    data,
                },
            );
        }
    }

    /// Drains node `n`'s transmits onto the wire, counting the victim's.
    fn flush(&mut self, n: usize) {
        while let Some(t) = self.nodes[n].poll_transmit() {
            match t {
                Transmit::Udp {
                    socket,
                    dst,
                    payload,
                } => {
                    if n == V {
                        self.out.victim_bytes += payload.len() as u64;
                        if is_third_party(dst.ip()) {
                            self.out.to_third_parties.0 += 1;
                            self.out.to_third_parties.1 += payload.len() as u64;
                            *self.per_address.entry(dst.ip()).or_default() += 1;
                        }
                        if payload.first() == Some(&3) {
                            self.out.cookie_replies += 1;
                        }
                    }
                    if n == A
                        && World::node_at(dst.ip()) == Some(V)
                        && self.captured_ping.is_none()
                        && burrow_disco::sender(&payload).is_some()
                    {
                        self.captured_ping = Some(payload.clone());
                    }
                    let from = SocketAddr::new(IpAddr::V4(public_ip(n)), PORT + socket);
                    self.send_udp(from, dst, payload);
                }
                Transmit::Derp { dst, payload, .. } => {
                    if n == V {
                        self.out.victim_bytes += payload.len() as u64;
                        if payload.first() == Some(&3) {
                            self.out.cookie_replies += 1;
                        }
                    }
                    let from = self.keys[n].0.public_key();
                    if let Some(to) = self.node_with_key(&dst) {
                        self.schedule(
                            self.now + 2 * LATENCY,
                            Delivery::Derp {
                                to,
                                from,
                                data: payload,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Seals a disco message as M for V.
    fn seal_as_attacker(&mut self, msg: &Message) -> Vec<u8> {
        let disco = &self.keys[M].1;
        let bx = BoxKey::new(disco, &self.keys[V].1.public_key()).expect("keys");
        let mut nonce = [0u8; 24];
        self.rng.fill_bytes(&mut nonce);
        let mut wire = MAGIC.to_vec();
        wire.extend_from_slice(disco.public_key().as_bytes());
        wire.extend_from_slice(&nonce);
        wire.extend_from_slice(&bx.seal(&nonce, &msg.to_plaintext()));
        wire
    }

    /// M's relayed message to V, as if through DERP.
    fn relay_from_attacker(&mut self, data: Vec<u8>) {
        let from = self.keys[M].0.public_key();
        self.schedule(self.now + 2 * LATENCY, Delivery::Derp { to: V, from, data });
    }
}

/// A fresh key's initiation toward `victim`.
fn initiation(now: Instant, rng: &mut ChaCha20Rng, victim: PublicKey) -> Vec<u8> {
    let mut d = burrow_wg::device::Device::new(
        PrivateKey::generate(rng),
        ChaCha20Rng::seed_from_u64(rng.next_u64()),
        now,
        Duration::from_secs(1_700_000_000),
    );
    let p = d.add_peer(now, victim, None, None);
    let mut out = vec![0u8; 2048];
    let _ = d.encapsulate(now, p, &[0x45; 20], &mut out);
    d.poll_transmit().map(|t| t.1).unwrap_or_default()
}

/// Runs one attack for `duration` of simulated time.
pub fn run(attack: Attack, seed: u64, duration: Duration) -> AttackOutcome {
    let mut w = World::new(seed);
    let t0 = w.now;
    let end = t0 + duration;
    let step = Duration::from_millis(10);
    let mut tick: u64 = 0;
    let mut honest_seq = 0u64;
    let mut replays = 0u64;
    let mut flood_rng = ChaCha20Rng::seed_from_u64(seed ^ 0xf100d);
    let victim_key = w.keys[V].0.public_key();
    let attacker_key = w.keys[M].0.public_key();
    while w.now < end {
        // Deliveries due.
        while let Some(Reverse((at, id))) = w.queue.peek().copied() {
            if at > w.now {
                break;
            }
            w.queue.pop();
            let Some(d) = w.pending.remove(&id) else {
                continue;
            };
            let now = w.now;
            let data_of = match &d {
                Delivery::Udp { to, data, .. } | Delivery::Derp { to, data, .. } => (*to, data),
            };
            if data_of.0 == V && data_of.1.first() == Some(&1) && data_of.1.len() == 148 {
                w.out.initiations.0 += 1;
            }
            match d {
                Delivery::Udp {
                    to,
                    socket,
                    from,
                    data,
                } => {
                    let _ = w.nodes[to].handle_input(
                        now,
                        Input::Udp {
                            socket,
                            from,
                            data: &data,
                        },
                    );
                }
                Delivery::Derp { to, from, data } => {
                    let _ = w.nodes[to].handle_input(
                        now,
                        Input::Derp {
                            region: 1,
                            from,
                            data: &data,
                        },
                    );
                }
            }
        }
        let now = w.now;
        let attacking = now.duration_since(t0) >= WARM_UP;
        // Honest traffic both ways every 50 ms.
        if tick % 5 == 0 {
            honest_seq += 1;
            let a_to_v = ip_packet(tailnet_ip(A), tailnet_ip(V), honest_seq);
            let v_to_a = ip_packet(tailnet_ip(V), tailnet_ip(A), honest_seq);
            let _ = w.nodes[A].send(now, &victim_key, &a_to_v);
            let _ = w.nodes[V].send(now, &w.keys[A].0.public_key(), &v_to_a);
            if attacking {
                w.out.honest.0 += 1;
            }
        }
        if attacking {
            let before = w.seq;
            match attack {
                Attack::SpoofedSource => {
                    // The altered sender: A's address on M's packets, every 10 ms.
                    let p = ip_packet(tailnet_ip(A), tailnet_ip(V), tick);
                    if w.nodes[M].send(now, &victim_key, &p).is_ok() {
                        w.out.hostile_packets += 1;
                    }
                }
                Attack::CallMeMaybeSpray => {
                    let endpoints: Vec<SocketAddr> =
                        (0..60).map(|k| third_party(tick * 60 + k)).collect();
                    let wire = w.seal_as_attacker(&Message::CallMeMaybe { endpoints });
                    w.relay_from_attacker(wire);
                }
                Attack::PingReplay => {
                    if let Some(ping) = w.captured_ping.clone() {
                        for _ in 0..10 {
                            if replays < 1000 {
                                replays += 1;
                                let from = third_party(replays);
                                let dst = SocketAddr::new(IpAddr::V4(public_ip(V)), PORT);
                                w.send_udp(from, dst, ping.clone());
                            }
                        }
                    }
                }
                Attack::HandshakeFlood => {
                    for k in 0..5 {
                        let init = initiation(now, &mut flood_rng, victim_key);
                        if k % 2 == 0 {
                            let from = third_party(tick * 5 + k);
                            let dst = SocketAddr::new(IpAddr::V4(public_ip(V)), PORT);
                            w.send_udp(from, dst, init);
                        } else {
                            w.relay_from_attacker(init);
                        }
                    }
                }
                Attack::FalseNatInfo => {
                    if tick % 100 == 0 {
                        let endpoints = vec![third_party(7), third_party(8)];
                        let cmm = w.seal_as_attacker(&Message::CallMeMaybe { endpoints });
                        w.relay_from_attacker(cmm);
                        let info = w.seal_as_attacker(&Message::NatInfo {
                            mapping_varies: true,
                            predictable: false,
                            mapped: false,
                        });
                        w.relay_from_attacker(info);
                    }
                }
            }
            w.out.hostile_packets += w.seq - before;
        }
        for n in 0..3 {
            if w.nodes[n].poll_timeout().is_some_and(|t| t <= now) {
                w.nodes[n].handle_timeout(now);
            }
            w.flush(n);
        }
        // Deliveries are counted against the run's start (the warm-up is not judged).
        drain(&mut w, t0);
        tick += 1;
        w.now += step;
    }
    w.out.spoofed_dropped = w.nodes[V].stats(&attacker_key).map_or(0, |s| s.rx_spoofed);
    w.out.candidates_for_attacker = w.nodes[V]
        .explain(&attacker_key)
        .map_or(0, |x| x.candidates.len());
    w.out.max_to_one_address = w.per_address.values().copied().max().unwrap_or(0);
    w.out.initiations.1 = w.out.initiations.0.saturating_sub(w.out.cookie_replies);
    w.out.attack = Some(attack);
    w.out.seed = seed;
    judge(&mut w.out, attack, duration);
    w.out
}

fn drain(w: &mut World, t0: Instant) {
    for n in 0..3 {
        while let Some(e) = w.nodes[n].poll_event() {
            let Event::Packet { peer, data } = e else {
                continue;
            };
            if n != V {
                continue;
            }
            let src = burrow_control::source_address(&data);
            let sender = w.node_with_key(&peer);
            if sender == Some(M) && src == Some(IpAddr::V4(tailnet_ip(A))) {
                w.out.spoofed_delivered += 1;
            }
            if sender == Some(A) && w.now.duration_since(t0) >= WARM_UP {
                w.out.honest.1 += 1;
            }
        }
    }
}

/// The invariants every attack must leave standing.
fn judge(out: &mut AttackOutcome, attack: Attack, duration: Duration) {
    let secs = duration.as_secs();
    let pings = PathConfig::default().pings;
    let pongs = PathConfig::default().pongs;
    // Disco answers and pings toward addresses the attacker chose: the budgets, no more.
    let budget = u64::from(pings.burst)
        + u64::from(pings.per_second) * secs
        + u64::from(pongs.burst)
        + u64::from(pongs.per_second) * secs;
    let f = &mut out.failures;
    if out.spoofed_delivered > 0 {
        f.push(format!(
            "{} packets under another node's address were delivered",
            out.spoofed_delivered
        ));
    }
    if attack == Attack::SpoofedSource && out.spoofed_dropped == 0 {
        f.push("the spoofed packets were not seen (the attack did not run)".into());
    }
    if out.hostile_packets == 0 {
        f.push("the attacker sent nothing (the attack did not run)".into());
    }
    let third_party_budget = if attack == Attack::HandshakeFlood {
        // Cookie replies go to the (spoofed) sources of initiations: one small reply each,
        // never larger than the initiation (no amplification), and no Diffie-Hellman.
        u64::MAX
    } else {
        budget
    };
    if out.to_third_parties.0 > third_party_budget {
        f.push(format!(
            "{} packets toward third-party addresses (budget {budget})",
            out.to_third_parties.0
        ));
    }
    if attack == Attack::HandshakeFlood {
        let dh_budget = u64::from(burrow_wg::UNDER_LOAD_HANDSHAKES_PER_SECOND) * (secs + 1);
        if out.initiations.1 > dh_budget {
            f.push(format!(
                "{} of {} initiations cost a Diffie-Hellman (budget {dh_budget})",
                out.initiations.1, out.initiations.0
            ));
        }
        if out.cookie_replies == 0 {
            f.push("no cookie replies: the flood did not run into the load defence".into());
        }
    }
    if out.candidates_for_attacker > burrow_punch::MAX_REMOTE_CANDIDATES {
        f.push(format!(
            "{} candidates for the attacker (cap {})",
            out.candidates_for_attacker,
            burrow_punch::MAX_REMOTE_CANDIDATES
        ));
    }
    // A's packets keep arriving (the path may change once; allow a few in flight).
    if out.honest.1 + 10 < out.honest.0 * 95 / 100 {
        f.push(format!(
            "honest packets delivered: {} of {}",
            out.honest.1, out.honest.0
        ));
    }
}

impl AttackOutcome {
    /// One line for the report.
    pub fn line(&self) -> String {
        format!(
            "{:<20} seed {:<3} hostile pkts {:>6}  victim→third parties {:>5} (max {:>3}/addr)  victim bytes {:>8}  spoofed delivered {} (dropped {:>4})  initiations {:>5} (DH {:>3}, cookies {:>5})  candidates {:>3}  honest {}/{}  {}",
            self.attack.map_or("-", Attack::name),
            self.seed,
            self.hostile_packets,
            self.to_third_parties.0,
            self.max_to_one_address,
            self.victim_bytes,
            self.spoofed_delivered,
            self.spoofed_dropped,
            self.initiations.0,
            self.initiations.1,
            self.cookie_replies,
            self.candidates_for_attacker,
            self.honest.1,
            self.honest.0,
            if self.failures.is_empty() {
                "PASS".to_string()
            } else {
                format!("FAIL: {}", self.failures.join("; "))
            }
        )
    }
}
