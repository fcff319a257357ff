//! Peer relays against hostile members (issue 17): engines wired by hand over a fake DERP, the
//! attacker's disco messages sealed with its own disco key. A relay allocates only for pairs
//! the policy lets use it; a CallMeMaybeVia cannot point a node's Binds at a third party;
//! relay-framed datagrams from anyone but a bound relay path are refused.

use std::net::SocketAddr;
use std::time::Instant;

use burrow_disco::{Message, UdpRelayEndpoint};
use burrow_node::{
    Input, Node, NodeConfig, PeerConfig, PeerRelayPolicy, RelayServerSettings, Transmit,
};
use burrow_relay::{encap, looks_like_geneve, GeneveProtocol};
use burrow_wg::{PrivateKey, PublicKey};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn key(b: u8) -> PrivateKey {
    PrivateKey::from_bytes([b; 32])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn peer_of(n: &Node, endpoints: Vec<SocketAddr>) -> PeerConfig {
    PeerConfig {
        node_key: n.public_key(),
        disco_key: n.disco_public_key(),
        home_region: 1,
        endpoints,
        allowed_ips: vec![],
    }
}

/// A node with keys `k` (WireGuard) and `k + 1` (disco), on `local`.
fn node(k: u8, local: &str, relay: bool, now: Instant) -> Node {
    let mut c = NodeConfig::new(key(k), key(k + 1), u64::from(k));
    c.local_addrs = vec![addr(local)];
    if relay {
        c.relay_server = Some(RelayServerSettings::on_port(40000));
    }
    Node::new(c, now)
}

fn drain(n: &mut Node) -> Vec<Transmit> {
    std::iter::from_fn(|| n.poll_transmit()).collect()
}

/// Seals `msg` as the holder of disco key `from` for `to`, and relays it over DERP from node
/// key `sender`.
fn derp(
    to: &mut Node,
    now: Instant,
    sender: PublicKey,
    from: &PrivateKey,
    msg: &Message,
) -> Result<(), burrow_node::NodeError> {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let wire = msg.seal(from, &to.disco_public_key(), &mut rng).unwrap();
    to.handle_input(
        now,
        Input::Derp {
            region: 1,
            from: sender,
            data: &wire,
        },
    )
}

/// Disco messages `n` sent over DERP to `dst`, opened with `dst_disco`.
fn derp_to(sent: &[Transmit], dst: PublicKey, dst_disco: &PrivateKey) -> Vec<Message> {
    sent.iter()
        .filter_map(|t| match t {
            Transmit::Derp {
                dst: d, payload, ..
            } if *d == dst => Message::open(dst_disco, payload).ok().map(|(_, m)| m),
            _ => None,
        })
        .collect()
}

#[test]
fn a_relay_allocates_only_for_pairs_the_policy_lets_use_it() {
    let now = Instant::now();
    let mut r = node(10, "198.51.100.50:41641", true, now);
    let (a, b, m) = (
        node(20, "192.168.1.2:41641", false, now),
        node(30, "192.168.2.2:41641", false, now),
        node(40, "192.168.3.2:41641", false, now),
    );
    for n in [&a, &b, &m] {
        r.add_peer(now, peer_of(n, vec![])).unwrap();
    }
    drain(&mut r);
    let (a_disco, m_disco) = (key(21), key(41));
    let ask = |pair: [PublicKey; 2]| Message::AllocateUdpRelayEndpointRequest {
        client_disco: pair,
        generation: 7,
    };
    let pair_ab = [a.disco_public_key(), b.disco_public_key()];
    // The policy lets A use the relay but not B: no allocation for the pair.
    r.set_peer_relay_policy(PeerRelayPolicy {
        relays: Default::default(),
        clients: [a.public_key()].into(),
    });
    derp(&mut r, now, a.public_key(), &a_disco, &ask(pair_ab)).unwrap();
    assert!(derp_to(&drain(&mut r), a.public_key(), &a_disco).is_empty());
    // Both allowed: an endpoint comes back, for exactly that pair.
    r.set_peer_relay_policy(PeerRelayPolicy {
        relays: Default::default(),
        clients: [a.public_key(), b.public_key()].into(),
    });
    derp(&mut r, now, a.public_key(), &a_disco, &ask(pair_ab)).unwrap();
    let got = derp_to(&drain(&mut r), a.public_key(), &a_disco);
    let [Message::AllocateUdpRelayEndpointResponse {
        generation: 7,
        endpoint,
    }] = &got[..]
    else {
        panic!("expected one allocation, got {got:?}");
    };
    let mut sorted = pair_ab;
    sorted.sort();
    assert_eq!(endpoint.client_disco, sorted);
    assert!(endpoint.addrs.iter().all(|a| a.port() == 40000));
    // Mallory, a member the policy does not name, asks for itself and A: refused.
    derp(
        &mut r,
        now,
        m.public_key(),
        &m_disco,
        &ask([m.disco_public_key(), a.disco_public_key()]),
    )
    .unwrap();
    assert!(derp_to(&drain(&mut r), m.public_key(), &m_disco).is_empty());
    // A cannot allocate for a pair it is not in (B with Mallory), nor speak for B over DERP.
    derp(
        &mut r,
        now,
        a.public_key(),
        &a_disco,
        &ask([b.disco_public_key(), m.disco_public_key()]),
    )
    .unwrap();
    assert!(derp_to(&drain(&mut r), a.public_key(), &a_disco).is_empty());
    assert!(
        derp(&mut r, now, a.public_key(), &key(31), &ask(pair_ab)).is_err(),
        "a message sealed with B's key but relayed from A's node key"
    );
}

#[test]
fn a_call_me_maybe_via_cannot_point_binds_at_a_third_party() {
    let now = Instant::now();
    let relay_addr = addr("198.51.100.50:41641");
    let mut v = node(50, "192.168.1.2:41641", false, now);
    let r = node(10, "198.51.100.50:41641", true, now);
    let m = node(40, "192.168.3.2:41641", false, now);
    v.add_peer(now, peer_of(&r, vec![relay_addr])).unwrap();
    v.add_peer(now, peer_of(&m, vec![])).unwrap();
    v.set_peer_relay_policy(PeerRelayPolicy {
        relays: [r.public_key()].into(),
        clients: Default::default(),
    });
    drain(&mut v);
    let mut pair = [v.disco_public_key(), m.disco_public_key()];
    pair.sort();
    let via = |addrs: Vec<SocketAddr>| {
        Message::CallMeMaybeVia(UdpRelayEndpoint {
            server_disco: key(99).public_key(),
            client_disco: pair,
            lamport_id: 1,
            vni: 5,
            bind_lifetime: std::time::Duration::from_secs(30),
            steady_state_lifetime: std::time::Duration::from_secs(300),
            addrs,
        })
    };
    let victim = addr("203.0.113.99:9999");
    derp(&mut v, now, m.public_key(), &key(41), &via(vec![victim])).unwrap();
    let sent = drain(&mut v);
    assert!(
        !sent
            .iter()
            .any(|t| matches!(t, Transmit::Udp { dst, .. } if dst.ip() == victim.ip())),
        "no Bind toward an address that is no relay's: {sent:?}"
    );
    // Mixed in with the relay candidate's own address, the stranger's is left out: the node
    // binds (a Geneve control frame) to the relay only.
    derp(
        &mut v,
        now,
        m.public_key(),
        &key(41),
        &via(vec![relay_addr, victim]),
    )
    .unwrap();
    let sent = drain(&mut v);
    assert!(
        !sent
            .iter()
            .any(|t| matches!(t, Transmit::Udp { dst, .. } if dst.ip() == victim.ip())),
        "no Bind toward the stranger mixed in: {sent:?}"
    );
    let binds: Vec<_> = sent
        .into_iter()
        .filter(|t| matches!(t, Transmit::Udp { dst, payload, .. } if *dst == relay_addr && looks_like_geneve(payload)))
        .collect();
    assert_eq!(binds.len(), 1, "one Bind to the relay");
}

#[test]
fn relay_framed_datagrams_from_anyone_but_a_bound_relay_are_refused() {
    let now = Instant::now();
    let mut v = node(50, "192.168.1.2:41641", false, now);
    let m = node(40, "192.168.3.2:41641", false, now);
    v.add_peer(now, peer_of(&m, vec![])).unwrap();
    drain(&mut v);
    let mut buf = [0u8; 256];
    for proto in [GeneveProtocol::WireGuard, GeneveProtocol::Disco] {
        // A WireGuard-looking or disco-looking payload in Geneve, from a stranger.
        let mut payload = vec![1u8, 0, 0, 0];
        payload.extend_from_slice(&[0u8; 144]);
        if proto == GeneveProtocol::Disco {
            payload = burrow_disco::MAGIC.to_vec();
            payload.extend_from_slice(m.disco_public_key().as_bytes());
            payload.extend_from_slice(&[0u8; 60]);
        }
        let n = encap(5, proto, &payload, &mut buf).unwrap();
        let r = v.handle_input(
            now,
            Input::Udp {
                socket: 0,
                from: addr("203.0.113.66:7777"),
                data: &buf[..n],
            },
        );
        assert!(r.is_err(), "{proto:?} from a stranger accepted");
        assert!(
            drain(&mut v).is_empty(),
            "{proto:?} from a stranger answered"
        );
    }
    // The relay socket of a node that runs no relay takes nothing either.
    let r = v.handle_input(
        now,
        Input::Udp {
            socket: burrow_node::RELAY_SOCKET,
            from: addr("203.0.113.66:7777"),
            data: &buf[..16],
        },
    );
    assert!(r.is_err());
}

fn via_endpoint(pair: [PublicKey; 2], lamport_id: u64, addrs: Vec<SocketAddr>) -> Message {
    Message::CallMeMaybeVia(UdpRelayEndpoint {
        server_disco: key(99).public_key(),
        client_disco: pair,
        lamport_id,
        vni: lamport_id as u32,
        bind_lifetime: std::time::Duration::from_secs(30),
        steady_state_lifetime: std::time::Duration::from_secs(300),
        addrs,
    })
}

fn udp_count(sent: &[Transmit]) -> usize {
    sent.iter()
        .filter(|t| matches!(t, Transmit::Udp { .. }))
        .count()
}

/// Mallory floods the victim with CallMeMaybeVia offers, each with a newer Lamport ID and VNI and 60
/// ports of a relay candidate's IP (the check is on IPs). Each offer used to restart the
/// binding with a burst of one Bind per address: 100 offers (≈ 125 kB over DERP) made 6,000
/// Binds (≈ 1 MB) at once toward ports Mallory chose. Now a restart comes at most once a
/// second and binds to at most 8 of the addresses.
#[test]
fn a_flood_of_call_me_maybe_via_offers_does_not_multiply_binds() {
    let mut now = Instant::now();
    let relay_addr = addr("198.51.100.50:41641");
    let mut v = node(50, "192.168.1.2:41641", false, now);
    let r = node(10, "198.51.100.50:41641", true, now);
    let m = node(40, "192.168.3.2:41641", false, now);
    v.add_peer(now, peer_of(&r, vec![relay_addr])).unwrap();
    v.add_peer(now, peer_of(&m, vec![])).unwrap();
    v.set_peer_relay_policy(PeerRelayPolicy {
        relays: [r.public_key()].into(),
        clients: Default::default(),
    });
    drain(&mut v);
    let mut pair = [v.disco_public_key(), m.disco_public_key()];
    pair.sort();
    let ports: Vec<SocketAddr> = (0..60u16)
        .map(|k| SocketAddr::new(relay_addr.ip(), 1000 + k))
        .collect();
    let mut binds = 0;
    for lamport in 1..=100 {
        derp(
            &mut v,
            now,
            m.public_key(),
            &key(41),
            &via_endpoint(pair, lamport, ports.clone()),
        )
        .unwrap();
        binds += udp_count(&drain(&mut v));
    }
    assert!(binds > 0, "the first offer is bound to");
    assert!(binds <= 8, "{binds} Binds from 100 offers in one instant");
    // A second later a newer offer may restart the binding: one more burst, no more.
    now += std::time::Duration::from_secs(1);
    let mut later = 0;
    for lamport in 101..=200 {
        derp(
            &mut v,
            now,
            m.public_key(),
            &key(41),
            &via_endpoint(pair, lamport, ports.clone()),
        )
        .unwrap();
        later += udp_count(&drain(&mut v));
    }
    assert!(
        later <= 8,
        "{later} Binds from 100 more offers a second later"
    );
}

/// A relay node answers the victim's allocation request with an endpoint on a third party's
/// address: the victim would Bind there every second for 30 s (and, through its peer's
/// CallMeMaybeVia, nowhere else). A relay's endpoint must be on the relay node's own
/// addresses, as a peer's offer must.
#[test]
fn a_relays_allocation_cannot_point_binds_at_a_third_party() {
    let now = Instant::now();
    let relay_addr = addr("198.51.100.50:41641");
    let mut v = node(50, "192.168.1.2:41641", false, now);
    let r = node(10, "198.51.100.50:41641", true, now);
    let b = node(30, "192.168.2.2:41641", false, now);
    v.add_peer(now, peer_of(&r, vec![relay_addr])).unwrap();
    v.add_peer(now, peer_of(&b, vec![])).unwrap();
    v.set_peer_relay_policy(PeerRelayPolicy {
        relays: [r.public_key()].into(),
        clients: Default::default(),
    });
    drain(&mut v);
    // B stays on DERP: after 3 s the victim asks the relay for an endpoint.
    let mut requests = Vec::new();
    for ms in (0..=4000).step_by(100) {
        v.handle_timeout(now + std::time::Duration::from_millis(ms));
        requests.extend(derp_to(&drain(&mut v), r.public_key(), &key(11)));
    }
    let later = now + std::time::Duration::from_secs(4);
    let Some(&Message::AllocateUdpRelayEndpointRequest {
        client_disco,
        generation,
    }) = requests.first()
    else {
        panic!("no allocation request: {requests:?}");
    };
    let mut pair = client_disco;
    pair.sort();
    let victim = addr("203.0.113.99:9999");
    let answer = Message::AllocateUdpRelayEndpointResponse {
        generation,
        endpoint: UdpRelayEndpoint {
            server_disco: key(98).public_key(),
            client_disco: pair,
            lamport_id: 1,
            vni: 9,
            bind_lifetime: std::time::Duration::from_secs(30),
            steady_state_lifetime: std::time::Duration::from_secs(300),
            addrs: vec![victim],
        },
    };
    derp(&mut v, later, r.public_key(), &key(11), &answer).unwrap();
    let mut sent = drain(&mut v);
    for s in 1..=5 {
        v.handle_timeout(later + std::time::Duration::from_secs(s));
        sent.extend(drain(&mut v));
    }
    let toward: Vec<_> = sent
        .iter()
        .filter(|t| matches!(t, Transmit::Udp { dst, .. } if dst.ip() == victim.ip()))
        .collect();
    assert!(toward.is_empty(), "Binds toward a third party: {toward:?}");
    // Nor is the offer passed on to B.
    assert!(derp_to(&sent, b.public_key(), &key(31))
        .iter()
        .all(|m| !matches!(m, Message::CallMeMaybeVia(_))));
}
