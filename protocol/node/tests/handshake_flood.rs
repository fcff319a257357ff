//! A flood of WireGuard initiations (security audit #8): past the handshake rate the node asks
//! for cookies (WireGuard's DoS defence) instead of spending a Diffie-Hellman on each, over UDP
//! and over DERP alike, and a legitimate peer still completes its handshake.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_node::{Input, Node, NodeConfig, PeerConfig, Transmit};
use burrow_wg::device::Device;
use burrow_wg::{PrivateKey, PublicKey, UNDER_LOAD_HANDSHAKES_PER_SECOND};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// One initiation from a fresh key toward `victim`.
fn initiation(now: Instant, seed: u64, victim: PublicKey) -> Vec<u8> {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[31] = 0x5a;
    let mut d = Device::new(
        PrivateKey::from_bytes(bytes),
        ChaCha20Rng::seed_from_u64(seed),
        now,
        Duration::from_secs(1_700_000_000),
    );
    let p = d.add_peer(now, victim, None, None);
    let mut out = vec![0u8; 2048];
    let _ = d.encapsulate(now, p, &[0x45; 20], &mut out);
    d.poll_transmit().expect("an initiation").1
}

fn message_type(payload: &[u8]) -> u8 {
    payload[0]
}

#[test]
fn attack_initiation_floods_get_cookies_not_diffie_hellman() {
    let now = Instant::now();
    let mut victim = Node::new(
        NodeConfig::new(
            PrivateKey::from_bytes([1; 32]),
            PrivateKey::from_bytes([2; 32]),
            1,
        ),
        now,
    );
    let v = victim.public_key();
    while victim.poll_transmit().is_some() {}
    let flood = 1_000u64;
    let (mut cookies_udp, mut cookies_derp, mut other) = (0, 0, 0);
    for i in 0..flood {
        let init = initiation(now, i + 10, v);
        // Half from spoofed UDP sources, half over DERP from throwaway keys.
        let input = if i % 2 == 0 {
            let from = SocketAddr::from(([198, 51, 100, (i % 250) as u8], 1000 + i as u16));
            Input::Udp {
                socket: 0,
                from,
                data: &init,
            }
        } else {
            let from = PrivateKey::from_bytes([(i % 250) as u8 + 3; 32]).public_key();
            Input::Derp {
                region: 1,
                from,
                data: &init,
            }
        };
        let _ = victim.handle_input(now, input);
        while let Some(t) = victim.poll_transmit() {
            match t {
                Transmit::Udp { payload, .. } if message_type(&payload) == 3 => cookies_udp += 1,
                Transmit::Derp { payload, .. } if message_type(&payload) == 3 => cookies_derp += 1,
                _ => other += 1,
            }
        }
    }
    let expensive = flood - cookies_udp - cookies_derp;
    assert!(
        expensive <= u64::from(UNDER_LOAD_HANDSHAKES_PER_SECOND) + 1,
        "{expensive} initiations reached Diffie-Hellman ({cookies_udp} UDP and {cookies_derp} DERP cookies, {other} other)"
    );
    assert!(
        cookies_udp > 400 && cookies_derp > 400,
        "{cookies_udp} {cookies_derp}"
    );

    // After a quiet second a known peer handshakes as usual.
    let later = now + Duration::from_secs(3);
    let mut alice = Node::new(
        NodeConfig::new(
            PrivateKey::from_bytes([7; 32]),
            PrivateKey::from_bytes([8; 32]),
            2,
        ),
        later,
    );
    let peer = |n: &Node| PeerConfig {
        node_key: n.public_key(),
        disco_key: n.disco_public_key(),
        home_region: 1,
        endpoints: vec![],
        allowed_ips: vec!["100.64.0.0/10".parse().unwrap()],
    };
    victim.add_peer(later, peer(&alice)).unwrap();
    alice.add_peer(later, peer(&victim)).unwrap();
    let packet = [
        0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 100, 64, 0, 7, 100, 64, 0, 1,
    ];
    alice.send(later, &v, &packet).unwrap();
    let mut delivered = false;
    for _ in 0..4 {
        carry(later, &mut alice, &mut victim);
        carry(later, &mut victim, &mut alice);
        while let Some(e) = victim.poll_event() {
            delivered |= matches!(e, burrow_node::Event::Packet { .. });
        }
    }
    assert!(delivered, "alice's packet arrived after the flood");
}

/// Moves `from`'s DERP packets for `to` into `to`.
fn carry(now: Instant, from: &mut Node, to: &mut Node) {
    let key = from.public_key();
    while let Some(t) = from.poll_transmit() {
        if let Transmit::Derp { payload, dst, .. } = t {
            if dst == to.public_key() {
                let input = Input::Derp {
                    region: 1,
                    from: key,
                    data: &payload,
                };
                let _ = to.handle_input(now, input);
            }
        }
    }
}
