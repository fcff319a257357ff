//! Peer relay paths end to end: three engines (two clients and a relay node) on a small
//! in-memory network with latency; direct UDP between the clients is blocked, so they settle
//! on the peer relay. Moving to direct loses nothing (the side that validates direct first
//! keeps taking what the other still sends through the relay), and a relay node that forwards
//! disco but drops WireGuard cannot hold the pair's traffic.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_node::{
    Event, Input, Node, NodeConfig, PeerConfig, PeerRelayPolicy, RelayServerSettings, Transmit,
    RELAY_SOCKET,
};
use burrow_punch::Route;
use burrow_wg::{PrivateKey, PublicKey};

const ONE_WAY: Duration = Duration::from_millis(20);
const DERP_ONE_WAY: Duration = Duration::from_millis(40);
const RELAY_PORT: u16 = 40000;

fn key(b: u8) -> PrivateKey {
    PrivateKey::from_bytes([b; 32])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

enum What {
    Udp {
        socket: u16,
        from: SocketAddr,
        data: Vec<u8>,
    },
    Derp {
        from: PublicKey,
        data: Vec<u8>,
    },
}

struct Net {
    nodes: Vec<Node>,
    addrs: Vec<SocketAddr>,
    relay_addr: SocketAddr,
    /// (deliver at, to, what), in sending order.
    wire: Vec<(Instant, usize, What)>,
    direct_open: bool,
    /// A hostile relay node: the WireGuard it forwards to these nodes is dropped (its disco
    /// still goes through, so its pings are answered).
    relay_drops_wg_to: Vec<usize>,
    /// Control (bind handshake) frames from node 0 to the relay dropped by their order: `[1]`
    /// loses its first Answer (its first control frame is its Bind).
    drop_control_from_0: Vec<usize>,
    control_from_0: usize,
    /// Packets each node decrypted, by (sender index, sequence number).
    got: Vec<BTreeSet<(usize, u16)>>,
    /// `burrow ping` answers: (node, route, peer relay).
    pongs: Vec<(usize, Route, Option<PublicKey>)>,
}

impl Net {
    fn by_key(&self, k: &PublicKey) -> Option<usize> {
        self.nodes.iter().position(|n| n.public_key() == *k)
    }

    /// Moves every node's output onto the wire and delivers what is due.
    fn step(&mut self, now: Instant) {
        for i in 0..self.nodes.len() {
            self.nodes[i].handle_timeout(now);
            while let Some(t) = self.nodes[i].poll_transmit() {
                match t {
                    Transmit::Udp {
                        socket,
                        dst,
                        payload,
                    } => {
                        let from = if socket == RELAY_SOCKET {
                            self.relay_addr
                        } else if socket == 0 {
                            self.addrs[i]
                        } else {
                            continue;
                        };
                        let (to, to_socket) = if dst == self.relay_addr {
                            (2, RELAY_SOCKET)
                        } else if let Some(j) = self.addrs.iter().position(|a| *a == dst) {
                            (j, 0)
                        } else {
                            continue;
                        };
                        // Direct UDP between the two clients is blocked until `direct_open`.
                        if i < 2 && to < 2 && !self.direct_open {
                            continue;
                        }
                        if i == 0 && to == 2 && payload.get(..2) == Some(&[0, 0x80][..]) {
                            let k = self.control_from_0;
                            self.control_from_0 += 1;
                            if self.drop_control_from_0.contains(&k) {
                                continue;
                            }
                        }
                        let wireguard_in_geneve = payload.get(2..4) == Some(&[0x7A, 0x12][..]);
                        if socket == RELAY_SOCKET
                            && wireguard_in_geneve
                            && self.relay_drops_wg_to.contains(&to)
                        {
                            continue;
                        }
                        self.wire.push((
                            now + ONE_WAY,
                            to,
                            What::Udp {
                                socket: to_socket,
                                from,
                                data: payload,
                            },
                        ));
                    }
                    Transmit::Derp { dst, payload, .. } => {
                        if let Some(j) = self.by_key(&dst) {
                            let from = self.nodes[i].public_key();
                            self.wire.push((
                                now + DERP_ONE_WAY,
                                j,
                                What::Derp {
                                    from,
                                    data: payload,
                                },
                            ));
                        }
                    }
                }
            }
        }
        let due: Vec<_> = {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire)
                .into_iter()
                .partition(|(t, _, _)| *t <= now);
            self.wire = later;
            due
        };
        for (_, to, what) in due {
            let input = match &what {
                What::Udp { socket, from, data } => Input::Udp {
                    socket: *socket,
                    from: *from,
                    data,
                },
                What::Derp { from, data } => Input::Derp {
                    region: 1,
                    from: *from,
                    data,
                },
            };
            let _ = self.nodes[to].handle_input(now, input);
        }
        for i in 0..self.nodes.len() {
            while let Some(e) = self.nodes[i].poll_event() {
                match e {
                    Event::Packet { peer, data } => {
                        let from = self.by_key(&peer).unwrap();
                        self.got[i].insert((from, u16::from_be_bytes([data[4], data[5]])));
                    }
                    Event::PingResult {
                        via, peer_relay, ..
                    } => self.pongs.push((i, via, peer_relay)),
                    _ => {}
                }
            }
        }
    }
}

/// An IPv4 header (UDP, no payload) from node `from` to node `to`'s tailnet address,
/// carrying `seq` in its identification field.
fn packet(seq: u16, from: u8, to: u8) -> Vec<u8> {
    let [s0, s1] = seq.to_be_bytes();
    vec![
        0x45,
        0,
        0,
        20,
        s0,
        s1,
        0,
        0,
        64,
        17,
        0,
        0,
        100,
        64,
        0,
        from + 1,
        100,
        64,
        0,
        to + 1,
    ]
}

fn network(now: Instant) -> Net {
    let addrs = vec![
        addr("192.0.2.1:41641"),
        addr("192.0.2.2:41641"),
        addr("198.51.100.50:41641"),
    ];
    let relay_addr = SocketAddr::new(addrs[2].ip(), RELAY_PORT);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let mut c = NodeConfig::new(key(10 * i as u8 + 10), key(10 * i as u8 + 11), i as u64);
            c.local_addrs = vec![addrs[i]];
            if i == 2 {
                c.relay_server = Some(RelayServerSettings::on_port(RELAY_PORT));
            }
            Node::new(c, now)
        })
        .collect();
    let keys: Vec<_> = nodes
        .iter()
        .map(|n| (n.public_key(), n.disco_public_key()))
        .collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        for j in 0..3 {
            if i != j {
                let pc = PeerConfig {
                    node_key: keys[j].0,
                    disco_key: keys[j].1,
                    home_region: 1,
                    endpoints: vec![addrs[j]],
                    allowed_ips: vec![format!("100.64.0.{}/32", j + 1).parse().unwrap()],
                };
                n.add_peer(now, pc).unwrap();
            }
        }
    }
    for n in nodes.iter_mut().take(2) {
        n.set_peer_relay_policy(PeerRelayPolicy {
            relays: [keys[2].0].into(),
            clients: Default::default(),
        });
    }
    nodes[2].set_peer_relay_policy(PeerRelayPolicy {
        relays: Default::default(),
        clients: [keys[0].0, keys[1].0].into(),
    });
    Net {
        nodes,
        addrs,
        relay_addr,
        wire: Vec::new(),
        direct_open: false,
        relay_drops_wg_to: Vec::new(),
        drop_control_from_0: Vec::new(),
        control_from_0: 0,
        got: vec![BTreeSet::new(); 3],
        pongs: Vec::new(),
    }
}

#[test]
fn a_ping_on_a_peer_relay_path_goes_through_the_relay_and_says_so() {
    let t0 = Instant::now();
    let mut net = network(t0);
    let (ka, kb) = (net.nodes[0].public_key(), net.nodes[1].public_key());
    let relay = net.nodes[2].public_key();
    let tick = Duration::from_millis(5);
    let mut now = t0;
    let mut seq = 0u16;
    // Over DERP first: the ping says DERP (no peer relay).
    net.nodes[0].ping(now, &kb).unwrap();
    while now < t0 + Duration::from_secs(1) {
        now += tick;
        net.step(now);
    }
    assert_eq!(
        net.pongs,
        vec![(0, Route::Relay, None)],
        "over DERP at first"
    );
    net.pongs.clear();
    let on_relay = |net: &Net| {
        net.nodes[0].peer_relay(&kb).is_some_and(|r| r.in_use)
            && net.nodes[1].peer_relay(&ka).is_some_and(|r| r.in_use)
    };
    while !on_relay(&net) && now < t0 + Duration::from_secs(30) {
        now += tick;
        if (now - t0).as_millis() % 10 == 0 {
            seq += 1;
            net.nodes[0].send(now, &kb, &packet(seq, 0, 1)).unwrap();
        }
        net.step(now);
    }
    assert!(on_relay(&net), "both clients on the peer relay");
    net.nodes[0].ping(now, &kb).unwrap();
    let asked = now;
    while now < asked + Duration::from_secs(1) {
        now += tick;
        net.step(now);
    }
    assert_eq!(
        net.pongs,
        vec![(0, Route::Relay, Some(relay))],
        "the pong came through the peer relay, and the answer names it"
    );
}

#[test]
fn no_packet_is_lost_moving_from_a_peer_relay_to_direct() {
    let t0 = Instant::now();
    let mut net = network(t0);
    let (ka, kb) = (net.nodes[0].public_key(), net.nodes[1].public_key());
    let tick = Duration::from_millis(5);
    let mut now = t0;
    let mut seq = 0u16;
    let mut counted_from = None;
    let mut direct_at = None;
    let end = t0 + Duration::from_secs(90);
    while now < end {
        now += tick;
        // Both clients send every 10 ms, until a second before the end.
        if (now - t0).as_millis() % 10 == 0 && now + Duration::from_secs(1) < end {
            seq += 1;
            net.nodes[0].send(now, &kb, &packet(seq, 0, 1)).unwrap();
            net.nodes[1].send(now, &ka, &packet(seq, 1, 0)).unwrap();
        }
        net.step(now);
        let on_relay = net.nodes[0].peer_relay(&kb).is_some_and(|r| r.in_use)
            && net.nodes[1].peer_relay(&ka).is_some_and(|r| r.in_use);
        if counted_from.is_none() && on_relay && now > t0 + Duration::from_secs(10) {
            // Steady on the relay: count from here, and let the direct path be found.
            counted_from = Some(seq + 1);
            net.direct_open = true;
        }
        let direct = |n: &Node, k| matches!(n.route(k), Some(Route::Direct(_)));
        if direct_at.is_none() && direct(&net.nodes[0], &kb) && direct(&net.nodes[1], &ka) {
            direct_at = Some(now);
        }
    }
    let first = counted_from.expect("both clients settled on the peer relay");
    assert!(direct_at.is_some(), "the direct path was found");
    for (to, from) in [(0, 1), (1, 0)] {
        let lost: Vec<u16> = (first..=seq)
            .filter(|s| !net.got[to].contains(&(from, *s)))
            .collect();
        assert!(
            lost.is_empty(),
            "node {from} → node {to}: {} of {} lost moving from the peer relay to direct: {:?}",
            lost.len(),
            seq - first + 1,
            &lost[..lost.len().min(20)]
        );
    }
}

/// Runs the pair on the relay, then turns the relay hostile toward `victims` for 60 s: the
/// share of packets delivered each way in the last 30 s of it.
fn delivered_under_hostile_relay(victims: Vec<usize>) -> [f64; 2] {
    let t0 = Instant::now();
    let mut net = network(t0);
    let (ka, kb) = (net.nodes[0].public_key(), net.nodes[1].public_key());
    let tick = Duration::from_millis(5);
    let mut now = t0;
    let mut seq = 0u16;
    let mut hostile_at = None;
    let mut judged_from = None;
    let end = t0 + Duration::from_secs(80);
    while now < end {
        now += tick;
        if (now - t0).as_millis() % 10 == 0 && now + Duration::from_secs(1) < end {
            seq += 1;
            net.nodes[0].send(now, &kb, &packet(seq, 0, 1)).unwrap();
            net.nodes[1].send(now, &ka, &packet(seq, 1, 0)).unwrap();
        }
        net.step(now);
        let on_relay = net.nodes[0].peer_relay(&kb).is_some_and(|r| r.in_use)
            && net.nodes[1].peer_relay(&ka).is_some_and(|r| r.in_use);
        if hostile_at.is_none() && on_relay && now > t0 + Duration::from_secs(10) {
            hostile_at = Some(now);
            net.relay_drops_wg_to = victims.clone();
        }
        if judged_from.is_none() && hostile_at.is_some_and(|h| now >= h + Duration::from_secs(30)) {
            judged_from = Some(seq + 1);
        }
    }
    let first = judged_from.expect("the pair settled on the relay, then 30 s passed");
    let n = f64::from(seq - first + 1);
    [(1, 0), (0, 1)].map(|(to, from)| {
        let got = (first..=seq)
            .filter(|s| net.got[to].contains(&(from, *s)))
            .count();
        got as f64 / n
    })
}

/// The relay node forwards the clients' pings (so its path looks alive and fastest) but drops
/// all their WireGuard. Before: the pair stayed on it and nothing got through, ever. Now data
/// sent on the relay with no answer for 15 s (as on a direct path) ends it, and the pair moves
/// to DERP (or another relay).
#[test]
fn a_relay_that_drops_wireguard_but_forwards_disco_cannot_hold_the_traffic() {
    let [to_b, to_a] = delivered_under_hostile_relay(vec![0, 1]);
    assert!(
        to_b > 0.99 && to_a > 0.99,
        "delivered {to_b:.3} to B and {to_a:.3} to A"
    );
}

/// The same relay drops only what goes to A: B's data never arrives, while A's does (so A sees
/// answers). B notices, leaves the relay and stops answering pings through it, so A leaves too.
#[test]
fn a_relay_that_drops_one_direction_cannot_hold_the_traffic() {
    let [to_b, to_a] = delivered_under_hostile_relay(vec![0]);
    assert!(
        to_b > 0.99 && to_a > 0.99,
        "delivered {to_b:.3} to B and {to_a:.3} to A"
    );
}

/// The relay node's policy stops letting B use it while A and B relay through it. Allocation
/// was checked once: before, the endpoint kept forwarding for as long as the pair kept it busy
/// (a pair the policy no longer allows, relayed indefinitely). Now the relay closes it at once,
/// and the pair goes back to DERP.
#[test]
fn a_relay_stops_relaying_for_a_pair_its_policy_no_longer_allows() {
    let t0 = Instant::now();
    let mut net = network(t0);
    let (ka, kb) = (net.nodes[0].public_key(), net.nodes[1].public_key());
    let tick = Duration::from_millis(5);
    let mut now = t0;
    let mut seq = 0u16;
    let mut revoked_at = None;
    let mut forwarded_then = 0;
    let end = t0 + Duration::from_secs(40);
    while now < end {
        now += tick;
        if (now - t0).as_millis() % 10 == 0 {
            seq += 1;
            net.nodes[0].send(now, &kb, &packet(seq, 0, 1)).unwrap();
            net.nodes[1].send(now, &ka, &packet(seq, 1, 0)).unwrap();
        }
        net.step(now);
        let on_relay = net.nodes[0].peer_relay(&kb).is_some_and(|r| r.in_use)
            && net.nodes[1].peer_relay(&ka).is_some_and(|r| r.in_use);
        if revoked_at.is_none() && on_relay && now > t0 + Duration::from_secs(10) {
            revoked_at = Some(now);
            net.nodes[2].set_peer_relay_policy(PeerRelayPolicy {
                relays: Default::default(),
                clients: [ka].into(),
            });
        }
        if revoked_at.is_some_and(|r| now < r + Duration::from_secs(1)) {
            forwarded_then = net.nodes[2]
                .relay_server()
                .unwrap()
                .stats()
                .forwarded_packets;
        }
    }
    assert!(revoked_at.is_some(), "the pair settled on the relay");
    let server = net.nodes[2].relay_server().unwrap();
    assert_eq!(server.sessions().count(), 0, "the endpoint is closed");
    assert_eq!(
        server.stats().forwarded_packets,
        forwarded_then,
        "nothing forwarded for the pair a second after the policy changed"
    );
    assert!(net.nodes[0].peer_relay(&kb).is_none() && net.nodes[1].peer_relay(&ka).is_none());
    // The pair is served by DERP: the last second's packets arrived (sent 2 s before the end).
    let last = seq - 200;
    assert!(
        (last - 100..last).all(|s| net.got[1].contains(&(0, s)) && net.got[0].contains(&(1, s)))
    );
}

/// A's first Answer to the relay is lost (UDP loss, or refused after an on-path attacker
/// replayed an older Bind of A's). The relay sends no acknowledgement, so A's binding thinks it
/// is bound; before, only the relay path's death (three missed pings) and a new discovery 10 s
/// later bound it again. Now a relay path that never answered binds again first.
#[test]
fn a_lost_answer_is_bound_again_without_waiting_for_rediscovery() {
    let t0 = Instant::now();
    let mut net = network(t0);
    net.drop_control_from_0 = vec![1];
    let (ka, kb) = (net.nodes[0].public_key(), net.nodes[1].public_key());
    let tick = Duration::from_millis(5);
    let mut now = t0;
    let mut first_bind = None;
    let mut on_relay_at = None;
    while now < t0 + Duration::from_secs(40) && on_relay_at.is_none() {
        now += tick;
        net.step(now);
        if first_bind.is_none() && net.control_from_0 > 0 {
            first_bind = Some(now);
        }
        let on_relay = net.nodes[0].peer_relay(&kb).is_some_and(|r| r.in_use)
            && net.nodes[1].peer_relay(&ka).is_some_and(|r| r.in_use);
        if on_relay {
            on_relay_at = Some(now);
        }
    }
    let first_bind = first_bind.expect("A bound to the relay");
    let on_relay_at = on_relay_at.expect("the pair reached the relay");
    assert!(
        net.control_from_0 >= 3,
        "the Answer was lost, then bound again"
    );
    let took = on_relay_at - first_bind;
    assert!(
        took < Duration::from_secs(8),
        "on the relay {took:?} after the first Bind (simulated time)"
    );
}
