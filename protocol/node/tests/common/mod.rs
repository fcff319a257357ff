//! The hand-wired harness the engine tests share: engines joined by an in-memory DERP relay.

// Each test binary uses its own part of this.
#![allow(dead_code)]

use std::time::Instant;

use burrow_node::{Event, Input, Node, NodeConfig, PeerConfig, Transmit};
use burrow_wg::PrivateKey;

/// Two LAN addresses for a pair of engines.
pub const A_ADDR: &str = "192.168.1.10:41641";
pub const B_ADDR: &str = "192.168.1.20:41641";

/// An engine on a LAN at `addr`, its keys and seed from `n`.
pub fn lan_node(n: u8, addr: &str, now: Instant) -> Node {
    let mut c = NodeConfig::new(
        PrivateKey::from_bytes([n; 32]),
        PrivateKey::from_bytes([n + 1; 32]),
        u64::from(n),
    );
    c.local_addrs = vec![addr.parse().unwrap()];
    Node::new(c, now)
}

/// `n` as a peer at `addr` owning `ip`.
pub fn lan_peer(n: &Node, addr: &str, ip: &str) -> PeerConfig {
    PeerConfig {
        node_key: n.public_key(),
        disco_key: n.disco_public_key(),
        home_region: 1,
        endpoints: vec![addr.parse().unwrap()],
        allowed_ips: vec![ip.parse().unwrap()],
    }
}

/// Two engines on one LAN that know each other: at `A_ADDR` owning 100.64.0.1, at `B_ADDR`
/// owning 100.64.0.2.
pub fn lan_pair(now: Instant) -> [Node; 2] {
    let (mut a, mut b) = (lan_node(1, A_ADDR, now), lan_node(3, B_ADDR, now));
    a.add_peer(now, lan_peer(&b, B_ADDR, "100.64.0.2/32"))
        .unwrap();
    b.add_peer(now, lan_peer(&a, A_ADDR, "100.64.0.1/32"))
        .unwrap();
    [a, b]
}

/// Carries DERP packets among `nodes` until quiet (UDP is dropped: no direct path exists);
/// returns what each node decrypted.
pub fn relay_all(now: Instant, nodes: &mut [&mut Node]) -> Vec<Vec<Vec<u8>>> {
    let mut got = vec![Vec::new(); nodes.len()];
    for _ in 0..6 {
        for i in 0..nodes.len() {
            let from = nodes[i].public_key();
            while let Some(t) = nodes[i].poll_transmit() {
                if let Transmit::Derp { dst, payload, .. } = t {
                    if let Some(j) = nodes.iter().position(|n| n.public_key() == dst) {
                        let input = Input::Derp {
                            region: 1,
                            from,
                            data: &payload,
                        };
                        let _ = nodes[j].handle_input(now, input);
                    }
                }
            }
        }
        for (i, n) in nodes.iter_mut().enumerate() {
            while let Some(e) = n.poll_event() {
                if let Event::Packet { data, .. } = e {
                    got[i].push(data);
                }
            }
        }
    }
    got
}
