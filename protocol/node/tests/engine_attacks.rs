//! A hostile peer against the node engine (audit findings #3 and #9): two engines wired by
//! hand, the attacker's disco messages sealed with its own disco key (as a modified peer would
//! send them) and delivered over DERP from its node key, or replayed over UDP from spoofed
//! sources. Each test counts what the victim sends and toward where.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_disco::{BoxKey, Message, MAGIC};
use burrow_node::{Input, Node, NodeConfig, PeerConfig, Transmit};
use burrow_punch::{PathConfig, MAX_BIRTHDAY_TARGETS, MAX_PEER_REFLEXIVE};
use burrow_stun::{BindingServer, ServerConfig};
use burrow_wg::PrivateKey;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn key(b: u8) -> PrivateKey {
    PrivateKey::from_bytes([b; 32])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const STUN_1: &str = "198.51.100.201:3478";
const STUN_2: &str = "198.51.100.202:3478";

/// The victim `v`, the attacker's engine `m`, and the attacker's disco key (it seals what it
/// likes with it).
struct Lab {
    now: Instant,
    v: Node,
    m: Node,
    m_disco: PrivateKey,
    rng: ChaCha20Rng,
}

fn peer_of(n: &Node) -> PeerConfig {
    PeerConfig {
        node_key: n.public_key(),
        disco_key: n.disco_public_key(),
        home_region: 1,
        endpoints: vec![],
        allowed_ips: vec![],
    }
}

impl Lab {
    /// A victim (with STUN servers when `stun`) and an attacker with these interface addresses.
    fn new(stun: bool, attacker_addrs: Vec<SocketAddr>) -> Lab {
        Self::new_with(stun, attacker_addrs, |_| {})
    }

    /// [`Lab::new`], with the victim's configuration adjusted by `adjust`.
    fn new_with(
        stun: bool,
        attacker_addrs: Vec<SocketAddr>,
        adjust: impl FnOnce(&mut NodeConfig),
    ) -> Lab {
        let now = Instant::now();
        let mut vc = NodeConfig::new(key(1), key(2), 1);
        vc.local_addrs = vec![addr("192.168.1.10:41641")];
        if stun {
            vc.stun_servers = vec![addr(STUN_1), addr(STUN_2)];
        }
        // The budget layer under test: as if the control plane vouched for whatever the
        // attacker advertises (see `birthday_needs_a_vouched_ip` for the layer before it).
        vc.birthday_needs_control_ip = false;
        adjust(&mut vc);
        let mut mc = NodeConfig::new(key(3), key(4), 2);
        mc.local_addrs = attacker_addrs;
        let (mut v, mut m) = (Node::new(vc, now), Node::new(mc, now));
        let _ = v.add_peer(now, peer_of(&m));
        let _ = m.add_peer(now, peer_of(&v));
        Lab {
            now,
            v,
            m,
            m_disco: key(4),
            rng: ChaCha20Rng::seed_from_u64(99),
        }
    }

    /// Answers the victim's STUN requests as if its NAT mapped it to `mapped[k]` toward
    /// server k; returns everything else it sent.
    fn stun(&mut self, mapped: [&str; 2]) -> Vec<Transmit> {
        let servers = [addr(STUN_1), addr(STUN_2)];
        let mut other = Vec::new();
        for _ in 0..4 {
            let sent = self.sent();
            if sent.is_empty() {
                break;
            }
            for t in sent {
                match &t {
                    Transmit::Udp { dst, payload, .. } if servers.contains(dst) => {
                        let k = servers.iter().position(|s| s == dst).unwrap();
                        let mut server = BindingServer::new(ServerConfig::new(*dst));
                        let mut buf = [0u8; 1500];
                        let r = server
                            .handle_packet(*dst, addr(mapped[k]), payload, &mut buf)
                            .unwrap();
                        let input = Input::Udp {
                            socket: 0,
                            from: *dst,
                            data: &buf[..r.len],
                        };
                        self.v.handle_input(self.now, input).unwrap();
                    }
                    _ => other.push(t),
                }
            }
        }
        other
    }

    /// Seals `plaintext` as the attacker and relays it to the victim over DERP.
    fn relay_plain(&mut self, plaintext: &[u8]) -> Result<(), burrow_node::NodeError> {
        let wire = self.seal_plain(plaintext);
        let from = self.m.public_key();
        self.v.handle_input(
            self.now,
            Input::Derp {
                region: 1,
                from,
                data: &wire,
            },
        )
    }

    fn relay(&mut self, msg: &Message) {
        let plain = msg.to_plaintext();
        self.relay_plain(&plain).unwrap();
    }

    fn seal_plain(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let bx = BoxKey::new(&self.m_disco, &self.v.disco_public_key()).unwrap();
        let mut nonce = [0u8; 24];
        self.rng.fill_bytes(&mut nonce);
        let mut wire = MAGIC.to_vec();
        wire.extend_from_slice(self.m_disco.public_key().as_bytes());
        wire.extend_from_slice(&nonce);
        wire.extend_from_slice(&bx.seal(&nonce, plaintext));
        wire
    }

    fn sent(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.v.poll_transmit()).collect()
    }

    /// What a victim's datagram says, as the attacker reads it (disco only).
    fn read(&self, payload: &[u8]) -> Option<Message> {
        Message::open(&self.m_disco, payload).ok().map(|(_, m)| m)
    }

    /// Lets `secs` pass in steps, collecting what the victim sends.
    fn run(&mut self, secs: u64) -> Vec<Transmit> {
        let end = self.now + Duration::from_secs(secs);
        let mut out = Vec::new();
        while self.now < end {
            self.now += Duration::from_millis(50);
            self.v.handle_timeout(self.now);
            out.extend(self.sent());
        }
        out
    }

    /// Moves the attacker engine's own DERP output to the victim (an honest message path).
    fn carry_from_m(&mut self) {
        let from = self.m.public_key();
        while let Some(t) = self.m.poll_transmit() {
            if let Transmit::Derp { payload, .. } = t {
                let _ = self.v.handle_input(
                    self.now,
                    Input::Derp {
                        region: 1,
                        from,
                        data: &payload,
                    },
                );
            }
        }
    }
}

fn udp_dsts(sent: &[Transmit]) -> Vec<SocketAddr> {
    sent.iter()
        .filter_map(|t| match t {
            Transmit::Udp { dst, .. } => Some(*dst),
            _ => None,
        })
        .collect()
}

fn call_me_maybe_plaintext(endpoints: &[SocketAddr]) -> Vec<u8> {
    // Built by hand: `Message::to_plaintext` would stop at the cap.
    let mut p = vec![0x03, 0];
    for e in endpoints {
        let ip = match e.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        p.extend_from_slice(&ip.octets());
        p.extend_from_slice(&e.port().to_be_bytes());
    }
    p
}

/// 3,000 endpoints in one relayed CallMeMaybe: refused at decode, nothing pinged, nothing kept.
/// Before: 3,000 pings at once and every 10 s after.
#[test]
fn a_call_me_maybe_of_3000_endpoints_is_refused() {
    let mut lab = Lab::new(false, vec![]);
    lab.sent();
    let endpoints: Vec<SocketAddr> = (0..3000u32)
        .map(|k| SocketAddr::from(([198, 51, 100, (k / 60) as u8 + 1], 1000 + (k % 60) as u16)))
        .collect();
    let plain = call_me_maybe_plaintext(&endpoints);
    assert!(plain.len() < 65_000, "fits one DERP packet");
    assert!(lab.relay_plain(&plain).is_err(), "a typed refusal");
    let sent = lab.run(25);
    assert!(udp_dsts(&sent).is_empty(), "{:?}", udp_dsts(&sent));
    let x = lab.v.explain(&lab.m.public_key()).unwrap();
    assert!(x.candidates.is_empty(), "{:?}", x.candidates);
}

/// The attacker engine advertises 60 interface addresses, 0.0.0.0, 127.0.0.1, 224.0.0.251,
/// 255.255.255.255 and link-local among them: only the acceptable ones are pinged or kept.
#[test]
fn only_acceptable_endpoints_of_a_call_me_maybe_are_pinged() {
    let bad: Vec<SocketAddr> = [
        "0.0.0.0:41641",
        "127.0.0.1:22",
        "224.0.0.251:5353",
        "255.255.255.255:41641",
        "169.254.7.7:41641",
        "[fe80::1]:41641",
        "[::1]:53",
        "203.0.113.50:0",
    ]
    .map(addr)
    .to_vec();
    let good: Vec<SocketAddr> = (0..52u16)
        .map(|k| SocketAddr::from(([203, 0, 113, 60], 2000 + k)))
        .collect();
    let mut all = bad.clone();
    all.extend(&good);
    assert_eq!(all.len(), 60);
    let mut lab = Lab::new(false, all);
    lab.sent();
    lab.carry_from_m(); // the attacker engine's own CallMeMaybe, as it built it
    let mut dsts = udp_dsts(&lab.sent());
    dsts.extend(udp_dsts(&lab.run(25)));
    let pinged: BTreeSet<SocketAddr> = dsts.iter().copied().collect();
    assert_eq!(pinged, good.iter().copied().collect(), "pinged: {pinged:?}");
    let x = lab.v.explain(&lab.m.public_key()).unwrap();
    let kept: BTreeSet<SocketAddr> = x.candidates.iter().map(|c| c.addr).collect();
    assert_eq!(kept, good.iter().copied().collect());
}

/// A second CallMeMaybe replaces the first: the old addresses are not pinged on the next
/// upgrade retries (every 10 s). Before: every address ever advertised was pinged forever.
#[test]
fn a_second_call_me_maybe_replaces_the_first() {
    let mut lab = Lab::new(false, vec![]);
    lab.sent();
    let first: Vec<SocketAddr> = (0..60u16)
        .map(|k| SocketAddr::from(([198, 51, 100, 17], 5000 + k)))
        .collect();
    lab.relay(&Message::CallMeMaybe {
        endpoints: first.clone(),
    });
    let sent = lab.sent();
    assert_eq!(
        udp_dsts(&sent).len(),
        60,
        "the first list is pinged at once"
    );
    lab.now += Duration::from_secs(1);
    let second = vec![addr("203.0.113.80:41641")];
    lab.relay(&Message::CallMeMaybe {
        endpoints: second.clone(),
    });
    let mut dsts = udp_dsts(&lab.sent());
    dsts.extend(udp_dsts(&lab.run(35)));
    assert!(
        dsts.iter().filter(|d| **d == second[0]).count() >= 3,
        "the new address is pinged, and retried: {dsts:?}"
    );
    assert!(
        dsts.iter().all(|d| !first.contains(d)),
        "an old address was pinged again"
    );
    let x = lab.v.explain(&lab.m.public_key()).unwrap();
    assert_eq!(x.candidates.len(), 1, "{:?}", x.candidates);
}

/// One captured disco ping replayed from 1,000 spoofed sources: at most one Pong, and a
/// bounded candidate set. Also over DERP: a relayed replay gets one Pong. Before: 1,000 Pongs,
/// 1,000 pings back and 1,000 permanent candidates.
#[test]
fn one_ping_replayed_from_1000_sources_gets_one_pong() {
    let mut lab = Lab::new(false, vec![]);
    lab.sent();
    let ping = Message::Ping {
        tx_id: [0x5a; 12],
        node_key: Some(lab.m.public_key()),
        padding: 0,
    };
    let wire = lab.seal_plain(&ping.to_plaintext());
    let mut sent = Vec::new();
    for k in 0..1000u32 {
        let from = SocketAddr::from(([203, 0, 113, (k % 200) as u8 + 1], 10_000 + k as u16));
        let _ = lab.v.handle_input(
            lab.now,
            Input::Udp {
                socket: 0,
                from,
                data: &wire,
            },
        );
        sent.extend(lab.sent());
    }
    let pongs = sent
        .iter()
        .filter(|t| match t {
            Transmit::Udp { payload, .. } => {
                matches!(lab.read(payload), Some(Message::Pong { .. }))
            }
            _ => false,
        })
        .count();
    assert_eq!(pongs, 1);
    assert!(udp_dsts(&sent).len() <= 2, "one Pong and one ping back");
    let x = lab.v.explain(&lab.m.public_key()).unwrap();
    assert!(x.candidates.len() <= 1, "{:?}", x.candidates);

    // Many distinct captured pings (fresh transaction IDs) from as many sources: the
    // candidates stay capped, and the answers within the budgets.
    let mut sent = Vec::new();
    for k in 0..1000u32 {
        let mut tx_id = [0u8; 12];
        tx_id[..4].copy_from_slice(&k.to_be_bytes());
        let ping = Message::Ping {
            tx_id,
            node_key: Some(lab.m.public_key()),
            padding: 0,
        };
        let wire = lab.seal_plain(&ping.to_plaintext());
        let from = SocketAddr::from(([198, 51, 100, (k % 200) as u8 + 1], 20_000 + k as u16));
        let _ = lab.v.handle_input(
            lab.now,
            Input::Udp {
                socket: 0,
                from,
                data: &wire,
            },
        );
        sent.extend(lab.sent());
    }
    let x = lab.v.explain(&lab.m.public_key()).unwrap();
    assert!(
        x.candidates.len() <= MAX_PEER_REFLEXIVE,
        "{:?}",
        x.candidates
    );
    let budgets = PathConfig::default();
    let ceiling = (budgets.pongs.burst + budgets.pings.burst) as usize;
    assert!(
        udp_dsts(&sent).len() <= ceiling,
        "{}",
        udp_dsts(&sent).len()
    );

    // Over DERP the same replay gets one Pong.
    let mut relayed_pongs = 0;
    for _ in 0..50 {
        lab.relay_plain(&ping_plain(&lab, [0x77; 12])).unwrap();
        relayed_pongs += lab
            .sent()
            .iter()
            .filter(|t| matches!(t, Transmit::Derp { .. }))
            .count();
    }
    assert_eq!(relayed_pongs, 1);
}

fn ping_plain(lab: &Lab, tx_id: [u8; 12]) -> Vec<u8> {
    Message::Ping {
        tx_id,
        node_key: Some(lab.m.public_key()),
        padding: 0,
    }
    .to_plaintext()
}

/// Packets toward `ip`, and the distinct destinations of birthday sockets (not the main one).
fn toward(sent: &[Transmit], ip: IpAddr) -> (usize, BTreeSet<SocketAddr>) {
    let mut n = 0;
    let mut birthday = BTreeSet::new();
    for t in sent {
        if let Transmit::Udp { socket, dst, .. } = t {
            if dst.ip() == ip {
                n += 1;
            }
            if *socket != 0 {
                birthday.insert(*dst);
            }
        }
    }
    (n, birthday)
}

/// The attacker's advertisement for the NatInfo tests: 30 ports of one IP it wants flooded,
/// 28 other public IPs, and two private ones.
fn bait() -> (IpAddr, Vec<SocketAddr>) {
    let chosen: IpAddr = "198.51.100.66".parse().unwrap();
    let mut endpoints: Vec<SocketAddr> = (0..30u16)
        .map(|k| SocketAddr::new(chosen, 1000 + k))
        .collect();
    endpoints.extend((0..28u8).map(|k| SocketAddr::from(([198, 51, 100, 100 + k], 53))));
    endpoints.push(addr("10.0.0.1:22"));
    endpoints.push(addr("192.168.1.1:53"));
    (chosen, endpoints)
}

/// The victim's NAT is hard and random; the attacker claims to be easy, so the victim opens
/// its birthday sockets toward the attacker's endpoints. Only the first two advertised public
/// endpoints are aimed at: per 20 s round, at most `birthday_sockets` packets to each, plus
/// the ping budget. Before: every public endpoint from every socket (60 × 256 per round).
#[test]
fn a_false_easy_nat_info_opens_sockets_toward_two_endpoints_at_most() {
    let mut lab = Lab::new(true, vec![]);
    lab.stun(["203.0.113.5:4000", "203.0.113.5:51234"]);
    assert!(lab.v.nat().unwrap().is_hard_random());
    let (chosen, endpoints) = bait();
    lab.relay(&Message::CallMeMaybe { endpoints });
    lab.relay(&Message::NatInfo {
        mapping_varies: false,
        predictable: false,
        mapped: false,
    });
    let secs = 60;
    let mut sent = lab.sent();
    sent.extend(lab.run(secs));
    let (n, birthday) = toward(&sent, chosen);
    let sockets = NodeConfig::new(key(1), key(2), 1).birthday_sockets as usize;
    let rounds = (secs / 20 + 1) as usize;
    let pings = PathConfig::default().pings;
    let budget = MAX_BIRTHDAY_TARGETS * sockets * rounds
        + pings.burst as usize
        + pings.per_second as usize * secs as usize;
    assert!(n > sockets, "the birthday sockets did open ({n})");
    assert!(n <= budget, "{n} packets toward {chosen} (budget {budget})");
    assert!(birthday.len() <= MAX_BIRTHDAY_TARGETS, "{birthday:?}");
    assert!(birthday.iter().all(|d| d.ip() == chosen));
}

/// The victim is easy; the attacker claims a hard, unpredictable NAT, so the victim probes
/// random ports: of one IP only, at the probe budget's rate, within its per-attempt cap.
#[test]
fn a_false_hard_nat_info_probes_one_ip_within_the_budget() {
    let mut lab = Lab::new(true, vec![]);
    lab.stun(["203.0.113.5:4000", "203.0.113.5:4000"]);
    assert!(!lab.v.nat().unwrap().mapping_varies);
    let (chosen, endpoints) = bait();
    lab.relay(&Message::CallMeMaybe { endpoints });
    lab.relay(&Message::NatInfo {
        mapping_varies: true,
        predictable: false,
        mapped: false,
    });
    let secs = 60;
    let mut sent = lab.sent();
    sent.extend(lab.run(secs));
    let (n, _) = toward(&sent, chosen);
    let probe = NodeConfig::new(key(1), key(2), 1).probe;
    let pings = PathConfig::default().pings;
    let budget = (probe.rate as usize) * secs as usize
        + pings.burst as usize
        + pings.per_second as usize * secs as usize;
    assert!(n <= budget, "{n} packets toward {chosen} (budget {budget})");
    let probes = lab.v.stats(&lab.m.public_key()).unwrap().probes;
    assert!(probes > 0, "it did probe");
    // 1,024 destinations, 30 s back-off, 1,024 more: never more than two attempts in 60 s.
    assert!(probes <= 2 * u64::from(probe.max_destinations), "{probes}");
    // Random ports of one IP: nothing else outside the advertised endpoints.
    let (_, endpoints) = bait();
    for d in udp_dsts(&sent) {
        assert!(
            d.ip() == chosen || endpoints.contains(&d) || d == addr(STUN_1) || d == addr(STUN_2),
            "sent to {d}"
        );
    }
}

/// The layer before the budgets: by default birthday probing aims only at public IPs the
/// control plane lists for the peer (the control server vouches for them), so a false NatInfo
/// plus a CallMeMaybe naming a third party's address makes the victim probe nothing there.
#[test]
fn birthday_needs_a_vouched_ip() {
    let mut lab = Lab::new(true, vec![]);
    let now = lab.now;
    // The default, and what the control plane says of the attacker: one endpoint of its own.
    let mut vc = NodeConfig::new(key(1), key(2), 1);
    assert!(vc.birthday_needs_control_ip);
    vc.stun_servers = vec![addr(STUN_1), addr(STUN_2)];
    lab.v = Node::new(vc, now);
    let mut m = peer_of(&lab.m);
    m.endpoints = vec![addr("198.51.100.77:41641")];
    lab.v.add_peer(now, m).unwrap();
    lab.stun(["203.0.113.5:4000", "203.0.113.5:4000"]);
    let (chosen, endpoints) = bait();
    lab.relay(&Message::CallMeMaybe { endpoints });
    lab.relay(&Message::NatInfo {
        mapping_varies: true,
        predictable: false,
        mapped: false,
    });
    let mut sent = lab.sent();
    sent.extend(lab.run(60));
    // Probing happened, but at the attacker's own, vouched address.
    let own: IpAddr = "198.51.100.77".parse().unwrap();
    let (at_own, _) = toward(&sent, own);
    assert!(at_own > 100, "{at_own} probes toward the vouched address");
    let (n, _) = toward(&sent, chosen);
    let pings = PathConfig::default().pings;
    let budget = pings.burst as usize + pings.per_second as usize * 60;
    assert!(
        n <= budget,
        "{n} packets toward {chosen}: only budgeted pings"
    );
}

/// A peer advertises its own tailnet addresses (IPv4 and the ULA) as endpoints: pinging them
/// would go into our TUN and through WireGuard to it, and a path there would carry WireGuard
/// inside itself, looping on this host. They are neither pinged nor kept, from disco or the
/// control plane, and disco arriving from one is ignored.
#[test]
fn a_peers_tailnet_addresses_are_no_endpoints() {
    let inside = [addr("100.64.0.3:41641"), addr("[fd7a:115c:a1e0::3]:41641")];
    let outside = addr("203.0.113.60:41641");
    let mut lab = Lab::new_with(false, vec![inside[0], inside[1], outside], |c| {
        c.tunnel_prefixes = vec![
            "100.64.0.0/10".parse().unwrap(),
            "fd7a:115c:a1e0::/48".parse().unwrap(),
        ];
    });
    // The control plane gives the attacker those addresses (and lists them as endpoints too).
    let mut pc = peer_of(&lab.m);
    pc.allowed_ips = vec![
        "100.64.0.3/32".parse().unwrap(),
        "fd7a:115c:a1e0::3/128".parse().unwrap(),
    ];
    pc.endpoints = inside.to_vec();
    lab.v.add_peer(lab.now, pc).unwrap();
    lab.sent();
    lab.carry_from_m(); // the attacker's CallMeMaybe with all three
    let mut dsts = udp_dsts(&lab.sent());
    dsts.extend(udp_dsts(&lab.run(25)));
    for a in inside {
        assert!(!dsts.contains(&a), "pinged {a}: {dsts:?}");
    }
    assert!(dsts.contains(&outside), "{dsts:?}");
    let x = lab.v.explain(&lab.m.public_key()).unwrap();
    let kept: BTreeSet<SocketAddr> = x.candidates.iter().map(|c| c.addr).collect();
    assert_eq!(kept, [outside].into_iter().collect());
    // A ping that came back through the tunnel (from the attacker's tailnet address) gets no
    // pong and makes no peer-reflexive candidate.
    let ping = ping_plain(&lab, [5; 12]);
    let wire = lab.seal_plain(&ping);
    let now = lab.now;
    let _ = lab.v.handle_input(
        now,
        Input::Udp {
            socket: 0,
            from: inside[1],
            data: &wire,
        },
    );
    assert!(udp_dsts(&lab.sent()).is_empty());
    let x = lab.v.explain(&lab.m.public_key()).unwrap();
    assert!(!x.candidates.iter().any(|c| inside.contains(&c.addr)));
}

/// Answers every STUN request the victim sent (on any socket) as a sequential NAT would: each
/// new request gets the next port of 203.0.113.5. Returns everything else it sent.
fn answer_stun_sequentially(
    lab: &mut Lab,
    next_port: &mut u16,
    sent: Vec<Transmit>,
) -> Vec<Transmit> {
    let servers = [addr(STUN_1), addr(STUN_2)];
    let mut other = Vec::new();
    let mut pending = sent;
    for _ in 0..4 {
        for t in std::mem::take(&mut pending) {
            match &t {
                Transmit::Udp {
                    socket,
                    dst,
                    payload,
                } if servers.contains(dst) => {
                    let mut server = BindingServer::new(ServerConfig::new(*dst));
                    let mut buf = [0u8; 1500];
                    let mapped = SocketAddr::from(([203, 0, 113, 5], *next_port));
                    *next_port += 1;
                    let r = server
                        .handle_packet(*dst, mapped, payload, &mut buf)
                        .unwrap();
                    let input = Input::Udp {
                        socket: *socket,
                        from: *dst,
                        data: &buf[..r.len],
                    };
                    let _ = lab.v.handle_input(lab.now, input);
                }
                _ => other.push(t),
            }
        }
        pending = lab.sent();
    }
    other.extend(pending);
    other
}

/// The victim is behind a sequential NAT; the attacker flips its NatInfo between sequential and
/// fixed five times a second, announcing a fresh port each time. Each flip used to replace the
/// victim's prediction with a new one, whose first round starts at once: a round per flip
/// (7 fresh flows each, sessions on the victim's NAT) instead of four rounds, then 20 s, 40 s…
/// Now a role change keeps the pacing and back-off.
#[test]
fn flipping_nat_info_does_not_reset_the_prediction_pacing() {
    let mut lab = Lab::new(true, vec![]);
    let mut next_port = 4000;
    let sent = lab.sent();
    answer_stun_sequentially(&mut lab, &mut next_port, sent);
    assert_eq!(lab.v.nat().unwrap().delta, Some(1), "{:?}", lab.v.nat());
    let target: IpAddr = "198.51.100.66".parse().unwrap();
    lab.relay(&Message::CallMeMaybe {
        endpoints: vec![SocketAddr::new(target, 1000)],
    });
    let secs = 20;
    let end = lab.now + Duration::from_secs(secs);
    let mut flows = BTreeSet::new();
    let mut round = 0u32;
    while lab.now < end {
        round += 1;
        let fixed = round % 2 == 0;
        lab.relay(&Message::NatInfo {
            mapping_varies: !fixed,
            predictable: !fixed,
            mapped: false,
        });
        lab.relay(&Message::PortPrediction {
            round,
            port: 20000 + round as u16,
        });
        lab.now += Duration::from_millis(200);
        lab.v.handle_timeout(lab.now);
        let sent = lab.sent();
        for t in answer_stun_sequentially(&mut lab, &mut next_port, sent) {
            if let Transmit::Udp { socket, dst, .. } = t {
                if socket != 0 && dst.ip() == target {
                    flows.insert((socket, dst));
                }
            }
        }
    }
    let predicted = lab.v.stats(&lab.m.public_key()).unwrap().predicted;
    let config = burrow_punch::PredictionConfig::default();
    // Four rounds in a row, then a 20 s pause: at most one attempt (and the next's first round).
    let budget = u64::from(config.max_sockets()) * u64::from(config.rounds + 1);
    assert!(predicted > 0, "prediction did run");
    assert!(
        predicted <= budget,
        "{predicted} prediction pings in {secs} s (budget {budget}); {} flows",
        flows.len()
    );
    assert!(flows.len() as u64 <= budget, "{} fresh flows", flows.len());
}

/// The victim's NAT allocates at random; the attacker claims a sequential NAT, so the victim
/// searches: 128 sockets toward each announced port, a round a second. Flipping its NatInfo
/// (sequential, then fixed, then sequential…) ten times a second with a new announcement each
/// time used to give every flip a new search with a fresh budget: 128 packets per flip. Now
/// the search keeps its pacing across the flips.
#[test]
fn flipping_nat_info_does_not_multiply_a_search() {
    let mut lab = Lab::new(true, vec![]);
    lab.stun(["203.0.113.5:4000", "203.0.113.5:51234"]);
    assert!(lab.v.nat().unwrap().is_hard_random());
    let target: IpAddr = "198.51.100.66".parse().unwrap();
    lab.relay(&Message::CallMeMaybe {
        endpoints: vec![SocketAddr::new(target, 1000)],
    });
    let secs = 10;
    let end = lab.now + Duration::from_secs(secs);
    let mut round = 0u32;
    while lab.now < end {
        round += 1;
        let fixed = round % 2 == 0;
        lab.relay(&Message::NatInfo {
            mapping_varies: !fixed,
            predictable: !fixed,
            mapped: false,
        });
        lab.relay(&Message::PortPrediction {
            round,
            port: 20000 + round as u16,
        });
        lab.now += Duration::from_millis(100);
        lab.v.handle_timeout(lab.now);
        lab.sent();
    }
    let predicted = lab.v.stats(&lab.m.public_key()).unwrap().predicted;
    let config = burrow_punch::PredictionConfig::default();
    // A round a second at most (and the first at once).
    let budget = u64::from(config.search_sockets) * (secs + 1);
    assert!(predicted > 0, "the search did run");
    assert!(
        predicted <= budget,
        "{predicted} search pings in {secs} s (budget {budget})"
    );
}
