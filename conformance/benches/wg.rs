//! `cargo xtask bench wg` (micro part): burrow-wg against boringtun and against the bare AEAD,
//! side by side in one process. Prints one JSON object.
//!
//! - transport: seal + open of 1,420-byte packets through a live tunnel pair;
//! - aead: ring's ChaCha20-Poly1305 seal + open on the same buffers (the ceiling);
//! - handshakes: initiation → response → first data, complete, per second.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use burrow_wg::{Decapsulated, Encapsulated, PrivateKey, Tunnel, TunnelConfig};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const PACKET: usize = 1420;
const UNIX: Duration = Duration::from_secs(1_764_000_000);

fn ip_packet() -> Vec<u8> {
    ip_packet_of(PACKET)
}

fn ip_packet_of(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    p
}

fn burrow_pair(now: Instant) -> (Tunnel, Tunnel) {
    let (ka, kb) = (
        PrivateKey::from_bytes([1; 32]),
        PrivateKey::from_bytes([2; 32]),
    );
    let mk = |own: &PrivateKey, peer: &PrivateKey, seed| {
        Tunnel::new(
            TunnelConfig {
                private_key: own.clone(),
                peer: peer.public_key(),
                preshared_key: None,
                persistent_keepalive: None,
            },
            ChaCha20Rng::seed_from_u64(seed),
            now,
            UNIX,
        )
    };
    (mk(&ka, &kb, 1), mk(&kb, &ka, 2))
}

/// One complete burrow handshake at `now`: initiation, response, first (keep-alive) data.
fn burrow_handshake(a: &mut Tunnel, b: &mut Tunnel, now: Instant, out: &mut [u8]) {
    a.force_handshake(now);
    let init = a.poll_transmit().expect("initiation");
    b.decapsulate(now, &init, out).expect("responder");
    let resp = b.poll_transmit().expect("response");
    a.decapsulate(now, &resp, out).expect("initiator");
    let first = a.poll_transmit().expect("keep-alive");
    assert_eq!(
        b.decapsulate(now, &first, out).expect("confirmation"),
        Decapsulated::Keepalive
    );
}

fn boring_pair() -> (Tunn, Tunn) {
    let (sa, sb) = (
        x25519::StaticSecret::from([1u8; 32]),
        x25519::StaticSecret::from([2u8; 32]),
    );
    let (pa, pb) = (x25519::PublicKey::from(&sa), x25519::PublicKey::from(&sb));
    (
        Tunn::new(sa, pb, None, None, 1, None),
        Tunn::new(sb, pa, None, None, 2, None),
    )
}

fn net(step: &str, r: TunnResult<'_>) -> Vec<u8> {
    match r {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("{step}: expected a datagram, got {other:?}"),
    }
}

fn boring_handshake(a: &mut Tunn, b: &mut Tunn, buf: &mut [u8]) {
    let src: Option<IpAddr> = Some([192, 0, 2, 1].into());
    let init = net("initiation", a.format_handshake_initiation(buf, true));
    let resp = net("response", b.decapsulate(src, &init, buf));
    // boringtun sends a keep-alive only after its first session; later, the first data packet
    // is what confirms the keys.
    let first = match a.decapsulate(src, &resp, buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        TunnResult::Done => net("first data", a.encapsulate(&ip_packet_of(64), buf)),
        other => panic!("boringtun initiator: {other:?}"),
    };
    match b.decapsulate(src, &first, buf) {
        TunnResult::Done | TunnResult::WriteToNetwork(_) | TunnResult::WriteToTunnelV4(..) => {}
        other => panic!("boringtun confirmation: {other:?}"),
    }
}

/// Runs `f` for about `for_` and returns operations per second.
fn rate(for_: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < for_ {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn best(rounds: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..rounds).map(|_| f()).fold(0.0, f64::max)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (dur, rounds) = if quick {
        (Duration::from_millis(200), 2)
    } else {
        (Duration::from_secs(2), 5)
    };
    let packet = ip_packet();
    let now = Instant::now();

    // burrow-wg transport.
    let (mut a, mut b) = burrow_pair(now);
    let mut wire = vec![0u8; 2048];
    let mut plain = vec![0u8; 2048];
    burrow_handshake(&mut a, &mut b, now, &mut plain);

    // Interleave the contenders round by round so machine noise hits all alike.
    let mut burrow_tx = 0.0f64;
    let mut boring_tx = 0.0f64;
    let mut aead_tx = 0.0f64;
    let (mut ba, mut bb) = boring_pair();
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    boring_handshake(&mut ba, &mut bb, &mut buf);
    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &[7u8; 32]).unwrap(),
    );
    let mut counter = 0u64;
    let mut aead_buf = packet.clone();
    for _ in 0..rounds {
        burrow_tx = burrow_tx.max(rate(dur, || {
            let Encapsulated::Sent(n) = a.encapsulate(now, black_box(&packet), &mut wire).unwrap()
            else {
                panic!()
            };
            black_box(b.decapsulate(now, &wire[..n], &mut plain).unwrap());
        }));
        boring_tx = boring_tx.max(rate(dur, || {
            let n = match ba.encapsulate(black_box(&packet), &mut buf) {
                TunnResult::WriteToNetwork(p) => p.len(),
                other => panic!("{other:?}"),
            };
            match bb.decapsulate(None, &buf[..n], &mut buf2) {
                TunnResult::WriteToTunnelV4(p, _) => {
                    black_box(p);
                }
                other => panic!("{other:?}"),
            }
        }));
        aead_tx = aead_tx.max(rate(dur, || {
            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_le_bytes());
            let tag = key
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::empty(),
                    &mut aead_buf,
                )
                .unwrap();
            key.open_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                tag,
                &mut aead_buf,
                0..,
            )
            .unwrap();
            black_box(&aead_buf);
        }));
    }

    // Handshakes: burrow advances its (simulated) clock past the 50/s initiation limit.
    let mut t = now;
    let burrow_hs = best(rounds, || {
        rate(dur, || {
            t += Duration::from_millis(25);
            burrow_handshake(&mut a, &mut b, t, &mut plain);
        })
    });
    let boring_hs = best(rounds, || {
        rate(dur, || boring_handshake(&mut ba, &mut bb, &mut buf))
    });

    println!(
        "{{\"packet_bytes\":{PACKET},\"transport\":{{\"burrow_per_s\":{burrow_tx:.0},\"boringtun_per_s\":{boring_tx:.0},\"aead_per_s\":{aead_tx:.0}}},\"handshakes\":{{\"burrow_per_s\":{burrow_hs:.0},\"boringtun_per_s\":{boring_hs:.0}}}}}"
    );
}
