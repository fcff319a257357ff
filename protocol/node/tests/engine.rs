//! The node engine on its own: relay first, typed errors for bad input, explanations.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_node::{Event, Input, Node, NodeConfig, NodeError, PeerConfig, Transmit};
use burrow_punch::Route;
use burrow_wg::{PrivateKey, PublicKey, WgError};
use common::relay_all;
use proptest::prelude::*;

fn pair(now: Instant) -> (Node, Node) {
    let key = |b| PrivateKey::from_bytes([b; 32]);
    let mut a = NodeConfig::new(key(1), key(2), 1);
    a.local_addrs = vec!["192.168.1.10:41641".parse().unwrap()];
    let mut b = NodeConfig::new(key(3), key(4), 2);
    b.local_addrs = vec!["192.168.7.20:41641".parse().unwrap()];
    let (mut a, mut b) = (Node::new(a, now), Node::new(b, now));
    let peer = |n: &Node| PeerConfig {
        node_key: n.public_key(),
        disco_key: n.disco_public_key(),
        home_region: 1,
        endpoints: vec![],
        // Any source: these tests are about paths (cryptokey routing has its own below).
        allowed_ips: vec!["0.0.0.0/0".parse().unwrap()],
    };
    let _ = a.add_peer(now, peer(&b));
    let _ = b.add_peer(now, peer(&a));
    (a, b)
}

/// Moves `from`'s DERP packets to `to` (UDP is dropped: no direct path exists); returns the
/// packets `to` decrypted and how many datagrams `from` tried to send directly.
fn carry(now: Instant, from: &mut Node, to: &mut Node) -> (Vec<Vec<u8>>, usize) {
    let key = from.public_key();
    let mut udp = 0;
    while let Some(t) = from.poll_transmit() {
        match t {
            Transmit::Derp { payload, .. } => {
                let _ = to.handle_input(
                    now,
                    Input::Derp {
                        region: 1,
                        from: key,
                        data: &payload,
                    },
                );
            }
            Transmit::Udp { .. } => udp += 1,
        }
    }
    let mut got = Vec::new();
    while let Some(e) = to.poll_event() {
        if let Event::Packet { data, .. } = e {
            got.push(data);
        }
    }
    (got, udp)
}

/// DERP both ways until quiet; returns what a and b decrypted and the direct attempts.
fn relay_only(now: Instant, a: &mut Node, b: &mut Node) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, usize) {
    let (mut to_a, mut to_b, mut udp) = (Vec::new(), Vec::new(), 0);
    for _ in 0..6 {
        let (got, n) = carry(now, a, b);
        to_b.extend(got);
        udp += n;
        let (got, n) = carry(now, b, a);
        to_a.extend(got);
        udp += n;
    }
    (to_a, to_b, udp)
}

const PACKET: [u8; 20] = [
    0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 100, 64, 0, 1, 100, 64, 0, 2,
];

#[test]
fn a_peer_is_reachable_over_derp_from_the_first_packet() {
    let now = Instant::now();
    let (mut a, mut b) = pair(now);
    assert_eq!(a.route(&b.public_key()), Some(Route::Relay));
    a.send(now, &b.public_key(), &PACKET).unwrap();
    let (to_a, to_b, udp) = relay_only(now, &mut a, &mut b);
    assert_eq!(to_b, vec![PACKET.to_vec()]);
    assert!(to_a.is_empty());
    // Direct candidates were tried in parallel (disco pings to the LAN addresses).
    assert!(udp > 0);
    // And the explanation says what was tried.
    let later = now + Duration::from_secs(6);
    a.handle_timeout(later);
    let x = a.explain(&b.public_key()).unwrap();
    assert_eq!(x.route, Route::Relay);
    assert!(x
        .candidates
        .iter()
        .any(|c| c.addr == "192.168.7.20:41641".parse::<SocketAddr>().unwrap()));
    assert!(
        !x.attempts.is_empty(),
        "unanswered pings are explained: {x:?}"
    );
}

#[test]
fn unknown_peers_and_garbage_are_typed_errors() {
    let now = Instant::now();
    let (mut a, _b) = pair(now);
    let stranger = PublicKey([9; 32]);
    assert_eq!(
        a.send(now, &stranger, &PACKET),
        Err(NodeError::UnknownPeer(stranger))
    );
    let from: SocketAddr = "203.0.113.9:1".parse().unwrap();
    assert_eq!(
        a.handle_input(
            now,
            Input::Udp {
                socket: 0,
                from,
                data: b"hello"
            }
        ),
        Err(NodeError::Unrecognised(from))
    );
}

#[test]
fn wireguard_refusals_carry_the_wireguard_error_as_their_source() {
    let now = Instant::now();
    let (mut a, mut b) = pair(now);
    a.send(now, &b.public_key(), &PACKET).unwrap();
    relay_only(now, &mut a, &mut b);
    b.send(now, &a.public_key(), &PACKET).unwrap();
    let Some(Transmit::Derp { payload, .. }) = b.poll_transmit() else {
        panic!("b's packet goes over DERP");
    };
    let from: SocketAddr = "203.0.113.9:41641".parse().unwrap();
    let input = Input::Udp {
        socket: 0,
        from,
        data: &payload,
    };
    assert_eq!(a.handle_input(now, input), Ok(()));
    let e = a.handle_input(now, input).unwrap_err();
    assert_eq!(
        e,
        NodeError::WgInput {
            from,
            source: WgError::Replay
        }
    );
    let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<WgError>());
    assert_eq!(source, Some(&WgError::Replay));
    // Drivers log the message (the simulator counts replays by it).
    assert!(e.to_string().contains("replayed"), "{e}");
}

proptest! {
    #[test]
    fn arbitrary_input_never_panics_or_poisons_the_engine(
        datagrams in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..200), any::<bool>(), 0u16..3), 0..40),
        prefix in prop::sample::select(vec![vec![], vec![1u8, 0, 0, 0], vec![4u8, 0, 0, 0], burrow_disco::MAGIC.to_vec(), vec![0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]]),
    ) {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let from: SocketAddr = "203.0.113.9:1".parse().unwrap();
        for (d, derp, socket) in &datagrams {
            let mut data = prefix.clone();
            data.extend_from_slice(d);
            let input = if *derp {
                Input::Derp { region: 1, from: b.public_key(), data: &data }
            } else {
                Input::Udp { socket: *socket, from, data: &data }
            };
            let _ = a.handle_input(now, input);
        }
        // Still works: a packet from b arrives over DERP.
        b.send(now, &a.public_key(), &PACKET).unwrap();
        let (to_a, _, _) = relay_only(now, &mut a, &mut b);
        prop_assert_eq!(to_a, vec![PACKET.to_vec()]);
    }
}

fn peer_of(n: &Node) -> PeerConfig {
    PeerConfig {
        node_key: n.public_key(),
        disco_key: n.disco_public_key(),
        home_region: 1,
        endpoints: vec![],
        allowed_ips: vec!["0.0.0.0/0".parse().unwrap()],
    }
}

/// An IP packet from 100.64.0.3.
const C_PACKET: [u8; 20] = [
    0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 100, 64, 0, 3, 100, 64, 0, 2,
];

#[test]
fn a_removed_peer_is_forgotten_and_the_others_keep_working() {
    let now = Instant::now();
    let (mut a, mut b) = pair(now);
    let key = |x| PrivateKey::from_bytes([x; 32]);
    let mut c = Node::new(NodeConfig::new(key(5), key(6), 3), now);
    // b may send from anywhere; c from 100.64.0.3 (the longest prefix owns an address).
    let mut c_at_a = peer_of(&c);
    c_at_a.allowed_ips = vec!["100.64.0.3/32".parse().unwrap()];
    a.add_peer(now, c_at_a).unwrap();
    let _ = c.add_peer(now, peer_of(&a));
    // Sessions with both.
    b.send(now, &a.public_key(), &PACKET).unwrap();
    c.send(now, &a.public_key(), &C_PACKET).unwrap();
    let got = relay_all(now, &mut [&mut a, &mut b, &mut c]);
    assert_eq!(got[0].len(), 2, "a hears b and c before the removal");

    // b was a's first peer: removing it moves c into its slot.
    assert!(a.remove_peer(now, &b.public_key()));
    assert!(!a.remove_peer(now, &b.public_key()));
    assert_eq!(a.peer_keys(), vec![c.public_key()]);
    assert_eq!(
        a.send(now, &b.public_key(), &PACKET),
        Err(NodeError::UnknownPeer(b.public_key()))
    );
    // b's established session no longer decrypts, and a new handshake is refused.
    b.send(now, &a.public_key(), &PACKET).unwrap();
    let t = now + Duration::from_secs(200);
    b.handle_timeout(t);
    b.send(t, &a.public_key(), &PACKET).unwrap();
    let got = relay_all(t, &mut [&mut a, &mut b]);
    assert!(
        got[0].is_empty(),
        "a removed peer still got through: {got:?}"
    );
    // c still reaches a, and a reaches c.
    c.send(t, &a.public_key(), &C_PACKET).unwrap();
    a.send(t, &c.public_key(), &PACKET).unwrap();
    let got = relay_all(t, &mut [&mut a, &mut c]);
    assert_eq!(got[0], vec![C_PACKET.to_vec()]);
    assert_eq!(got[1], vec![PACKET.to_vec()]);

    // Added again (re-registered), b gets a fresh session.
    let _ = a.add_peer(t, peer_of(&b));
    // b's handshake retransmission (5 s later) now completes, and its queued packet arrives.
    let t2 = t + Duration::from_secs(6);
    b.handle_timeout(t2);
    let got = relay_all(t2, &mut [&mut a, &mut b]);
    assert!(got[0].contains(&PACKET.to_vec()), "{got:?}");
}

/// The node's candidates from its latest `Endpoints` event.
fn endpoints(n: &mut Node) -> Option<Vec<burrow_punch::Candidate>> {
    let mut last = None;
    while let Some(e) = n.poll_event() {
        if let Event::Endpoints { candidates, .. } = e {
            last = Some(candidates);
        }
    }
    last
}

#[test]
fn an_ipv6_pinhole_is_a_port_mapped_candidate_peers_learn() {
    use burrow_punch::CandidateSource;
    let now = Instant::now();
    let key = |b| PrivateKey::from_bytes([b; 32]);
    let v6: SocketAddr = "[2001:db8:1::10]:41641".parse().unwrap();
    let mut ac = NodeConfig::new(key(1), key(2), 1);
    ac.local_addrs = vec!["192.168.1.10:41641".parse().unwrap(), v6];
    let mut bc = NodeConfig::new(key(3), key(4), 2);
    bc.local_addrs = vec!["192.168.7.20:41641".parse().unwrap()];
    let (mut a, mut b) = (Node::new(ac, now), Node::new(bc, now));
    let peer = |n: &Node| PeerConfig {
        node_key: n.public_key(),
        disco_key: n.disco_public_key(),
        home_region: 1,
        endpoints: vec![],
        allowed_ips: vec!["0.0.0.0/0".parse().unwrap()],
    };
    let _ = a.add_peer(now, peer(&b));
    let _ = b.add_peer(now, peer(&a));
    a.handle_timeout(now);
    let before = endpoints(&mut a).expect("gathered");
    let source =
        |c: &[burrow_punch::Candidate], addr| c.iter().find(|x| x.addr == addr).map(|x| x.source);
    assert_eq!(source(&before, v6), Some(CandidateSource::Interface));

    // Not global: refused, nothing changes.
    for bad in [
        "[fe80::1]:41641",
        "[fd00::1]:41641",
        "[::1]:41641",
        "1.2.3.4:41641",
    ] {
        a.set_ipv6_pinhole(now, Some(bad.parse().unwrap()));
        assert_eq!(a.ipv6_pinhole(), None, "{bad}");
    }

    a.set_ipv6_pinhole(now, Some(v6));
    assert_eq!(a.ipv6_pinhole(), Some(v6));
    let with = endpoints(&mut a).expect("gathered again");
    // The same address, now from the port mapping (once, and first).
    assert_eq!(source(&with, v6), Some(CandidateSource::PortMapping));
    assert_eq!(with.iter().filter(|c| c.addr == v6).count(), 1);
    assert_eq!(with[0].addr, v6);
    // A pinhole on another address than the interface's is a candidate of its own.
    let other: SocketAddr = "[2001:db8:1::20]:41641".parse().unwrap();
    a.set_ipv6_pinhole(now, Some(other));
    let moved = endpoints(&mut a).expect("gathered again");
    assert_eq!(source(&moved, other), Some(CandidateSource::PortMapping));
    assert_eq!(source(&moved, v6), Some(CandidateSource::Interface));

    // b learns it (over DERP) and its explanation shows it.
    let t = now + Duration::from_secs(1);
    a.handle_timeout(t);
    b.handle_timeout(t);
    let _ = relay_only(t, &mut a, &mut b);
    let x = b.explain(&a.public_key()).expect("a is b's peer");
    assert!(
        x.candidates.iter().any(|c| c.addr == other),
        "{:?}",
        x.candidates
    );

    a.set_ipv6_pinhole(now, None);
    let after = endpoints(&mut a).expect("gathered again");
    assert_eq!(source(&after, other), None);
    assert_eq!(source(&after, v6), Some(CandidateSource::Interface));
}
