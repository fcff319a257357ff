//! Cryptokey routing in the engine (security audit finding #1): a peer's decrypted packets are
//! delivered only when their inner source is one of that peer's allowed addresses, so a member
//! node cannot speak as another node and pass a receiver's ACL under its rules. Also #7's node
//! side: a disco key belongs to one peer, and a rotated disco key is honoured at once.

mod common;

use std::net::IpAddr;
use std::time::Instant;

use burrow_node::{Node, NodeConfig, NodeError, PeerConfig};
use burrow_wg::PrivateKey;
use common::relay_all;

fn node(k: u8) -> Node {
    Node::new(
        NodeConfig::new(
            PrivateKey::from_bytes([k; 32]),
            PrivateKey::from_bytes([k + 100; 32]),
            u64::from(k),
        ),
        Instant::now(),
    )
}

fn peer(n: &Node, allowed: &[&str]) -> PeerConfig {
    PeerConfig {
        node_key: n.public_key(),
        disco_key: n.disco_public_key(),
        home_region: 1,
        endpoints: vec![],
        allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

/// A minimal IPv4 UDP packet.
fn v4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
    p
}

/// A minimal IPv6 UDP packet.
fn v6(src: &str, dst: &str) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    p.extend_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
    p
}

#[test]
fn a_peer_cannot_send_from_another_peers_address() {
    let now = Instant::now();
    let (mut victim, mut alice, mut mallory) = (node(1), node(2), node(3));
    victim
        .add_peer(
            now,
            peer(&alice, &["100.64.0.2/32", "fd7a:115c:a1e0::2/128"]),
        )
        .unwrap();
    victim
        .add_peer(
            now,
            peer(&mallory, &["100.64.0.3/32", "fd7a:115c:a1e0::3/128"]),
        )
        .unwrap();
    alice
        .add_peer(now, peer(&victim, &["100.64.0.1/32"]))
        .unwrap();
    mallory
        .add_peer(now, peer(&victim, &["100.64.0.1/32"]))
        .unwrap();
    let v = victim.public_key();

    // Mallory's packets from its own addresses get through...
    let own4 = v4([100, 64, 0, 3], [100, 64, 0, 1]);
    let own6 = v6("fd7a:115c:a1e0::3", "fd7a:115c:a1e0::1");
    mallory.send(now, &v, &own4).unwrap();
    mallory.send(now, &v, &own6).unwrap();
    // ...but not from alice's, nor from outside the tailnet, in either family.
    for spoofed in [
        v4([100, 64, 0, 2], [100, 64, 0, 1]),
        v4([192, 168, 1, 1], [100, 64, 0, 1]),
        v6("fd7a:115c:a1e0::2", "fd7a:115c:a1e0::1"),
        vec![0x45, 0, 0, 10], // too short to have a source
        b"not ip at all".to_vec(),
    ] {
        mallory.send(now, &v, &spoofed).unwrap();
    }
    // Alice's own packets still arrive.
    let alice4 = v4([100, 64, 0, 2], [100, 64, 0, 1]);
    alice.send(now, &v, &alice4).unwrap();

    let got = relay_all(now, &mut [&mut victim, &mut alice, &mut mallory]);
    assert_eq!(
        got[0].len(),
        3,
        "only the three honest packets: {:?}",
        got[0]
    );
    assert!(got[0].contains(&own4) && got[0].contains(&own6) && got[0].contains(&alice4));
    let stats = victim.stats(&mallory.public_key()).unwrap();
    assert_eq!(
        stats.rx_spoofed, 5,
        "each spoofed packet is counted for its sender"
    );
    assert_eq!(victim.stats(&alice.public_key()).unwrap().rx_spoofed, 0);
}

#[test]
fn the_engine_knows_which_peer_owns_an_address() {
    let now = Instant::now();
    let (mut me, alice, router) = (node(1), node(2), node(3));
    me.add_peer(now, peer(&alice, &["100.64.0.2/32"])).unwrap();
    me.add_peer(now, peer(&router, &["100.64.0.3/32", "10.20.0.0/16"]))
        .unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(me.peer_for_ip(ip("100.64.0.2")), Some(alice.public_key()));
    assert_eq!(me.peer_for_ip(ip("10.20.3.4")), Some(router.public_key()));
    assert_eq!(me.peer_for_ip(ip("100.64.0.9")), None);
}

#[test]
fn a_disco_key_belongs_to_one_peer_and_rotation_is_honoured() {
    let now = Instant::now();
    let (mut me, alice, mallory) = (node(1), node(2), node(3));
    me.add_peer(now, peer(&alice, &["100.64.0.2/32"])).unwrap();
    // Mallory registered with alice's disco key: refused, alice keeps it.
    let mut stolen = peer(&mallory, &["100.64.0.3/32"]);
    stolen.disco_key = alice.disco_public_key();
    assert_eq!(
        me.add_peer(now, stolen),
        Err(NodeError::DuplicateDiscoKey(mallory.public_key()))
    );
    assert_eq!(me.peer_keys(), vec![alice.public_key()]);
    // Alice rotates her disco key: the old one is no longer hers, so another peer may have it.
    let mut rotated = peer(&alice, &["100.64.0.2/32"]);
    rotated.disco_key = PrivateKey::from_bytes([77; 32]).public_key();
    me.add_peer(now, rotated).unwrap();
    let mut reuse = peer(&mallory, &["100.64.0.3/32"]);
    reuse.disco_key = alice.disco_public_key();
    me.add_peer(now, reuse).unwrap();
}

/// The review's address-collision attack: two peers with one address could speak for each
/// other. The same prefix twice is refused, and where prefixes nest the longest one owns the
/// address: a peer with a wide route cannot send from a narrower peer's address.
#[test]
fn an_address_has_one_owner_and_the_longest_prefix_wins() {
    let now = Instant::now();
    let (mut victim, mut alice, mut router) = (node(1), node(2), node(3));
    victim
        .add_peer(now, peer(&alice, &["100.64.0.2/32"]))
        .unwrap();
    let mallory = node(4);
    assert_eq!(
        victim.add_peer(now, peer(&mallory, &["100.64.0.2/32"])),
        Err(NodeError::OverlappingAddresses(mallory.public_key()))
    );
    victim
        .add_peer(now, peer(&router, &["100.64.0.0/10"]))
        .unwrap();
    alice
        .add_peer(now, peer(&victim, &["100.64.0.1/32"]))
        .unwrap();
    router
        .add_peer(now, peer(&victim, &["100.64.0.1/32"]))
        .unwrap();
    let v = victim.public_key();
    let as_alice = v4([100, 64, 0, 2], [100, 64, 0, 1]);
    let own = v4([100, 64, 0, 9], [100, 64, 0, 1]);
    router.send(now, &v, &as_alice).unwrap();
    router.send(now, &v, &own).unwrap();
    let got = relay_all(now, &mut [&mut victim, &mut alice, &mut router]);
    assert_eq!(got[0], vec![own], "only the router's own address");
    assert_eq!(victim.stats(&router.public_key()).unwrap().rx_spoofed, 1);
    assert_eq!(
        victim.peer_for_ip("100.64.0.2".parse().unwrap()),
        Some(alice.public_key())
    );
}
