//! Disco plaintext layouts (Tailscale's disco.go, as in shared/reference §7.1), sealing, and
//! robustness.

use std::net::SocketAddr;

use burrow_disco::{looks_like_disco, sender, DiscoError, Message, MAGIC};
use burrow_wg::{PrivateKey, PublicKey};
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn plaintext_layouts() {
    let ping = Message::Ping {
        tx_id: [0xaa; 12],
        node_key: Some(PublicKey([0x11; 32])),
        padding: 3,
    };
    assert_eq!(
        ping.to_plaintext(),
        hex(&format!(
            "01 00 {} {} 000000",
            "aa".repeat(12),
            "11".repeat(32)
        ))
    );
    let pong = Message::Pong {
        tx_id: [0xbb; 12],
        src: "192.0.2.1:41641".parse().unwrap(),
    };
    assert_eq!(
        pong.to_plaintext(),
        hex(&format!(
            "02 00 {} 00000000000000000000ffffc0000201 a2a9",
            "bb".repeat(12)
        ))
    );
    assert_eq!(pong.to_plaintext().len(), 2 + 30);
    let cmm = Message::CallMeMaybe {
        endpoints: vec![
            "192.0.2.1:41641".parse().unwrap(),
            "[2001:db8::1]:7".parse().unwrap(),
        ],
    };
    assert_eq!(
        cmm.to_plaintext(),
        hex("03 00 00000000000000000000ffffc0000201 a2a9 20010db8000000000000000000000001 0007")
    );
    for m in [
        ping,
        pong,
        cmm,
        Message::Ping {
            tx_id: [1; 12],
            node_key: None,
            padding: 0,
        },
    ] {
        assert_eq!(Message::from_plaintext(&m.to_plaintext()).unwrap(), m);
    }
}

#[test]
fn sealed_wire_format_and_key_separation() {
    let (a, b, c) = (
        PrivateKey::from_bytes([1; 32]),
        PrivateKey::from_bytes([2; 32]),
        PrivateKey::from_bytes([3; 32]),
    );
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let m = Message::CallMeMaybe {
        endpoints: vec!["203.0.113.7:41641".parse().unwrap()],
    };
    let wire = m.seal(&a, &b.public_key(), &mut rng).unwrap();
    assert_eq!(&wire[..6], &MAGIC);
    assert_eq!(&wire[6..38], a.public_key().as_bytes());
    assert_eq!(sender(&wire), Some(a.public_key()));
    assert_eq!(wire.len(), 6 + 32 + 24 + 16 + 2 + 18);
    assert_eq!(Message::open(&b, &wire).unwrap(), (a.public_key(), m));
    // Not for c; and any flipped byte in the box is refused.
    assert_eq!(Message::open(&c, &wire), Err(DiscoError::BadBox));
    let mut bad = wire.clone();
    bad[70] ^= 1;
    assert_eq!(Message::open(&b, &bad), Err(DiscoError::BadBox));
    // STUN and WireGuard never look like disco.
    assert!(!looks_like_disco(&[
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42
    ]));
    assert!(!looks_like_disco(&[1, 0, 0, 0]));
}

#[test]
fn malformed_plaintexts_are_typed_errors() {
    assert!(matches!(
        Message::from_plaintext(&[]),
        Err(DiscoError::Malformed { .. })
    ));
    assert!(matches!(
        Message::from_plaintext(&[1, 0, 1, 2]),
        Err(DiscoError::Malformed { kind: 1, .. })
    ));
    assert!(matches!(
        Message::from_plaintext(&[2, 0, 0]),
        Err(DiscoError::Malformed { kind: 2, .. })
    ));
    assert!(matches!(
        Message::from_plaintext(&[3, 0, 1]),
        Err(DiscoError::Malformed { kind: 3, .. })
    ));
    assert_eq!(
        Message::from_plaintext(&[0x42, 0]).unwrap(),
        Message::Unknown { kind: 0x42 }
    );
}

proptest! {
    #[test]
    fn open_never_panics_and_round_trips(data in proptest::collection::vec(any::<u8>(), 0..200), eps in proptest::collection::vec((any::<[u8; 16]>(), any::<u16>()), 0..10)) {
        let b = PrivateKey::from_bytes([2; 32]);
        let _ = Message::open(&b, &data);
        let _ = Message::from_plaintext(&data);
        let endpoints: Vec<SocketAddr> = eps.into_iter().map(|(ip, p)| {
            let ip = std::net::Ipv6Addr::from(ip);
            SocketAddr::new(ip.to_ipv4_mapped().map_or(std::net::IpAddr::V6(ip), std::net::IpAddr::V4), p)
        }).collect();
        let m = Message::CallMeMaybe { endpoints };
        prop_assert_eq!(Message::from_plaintext(&m.to_plaintext()).unwrap(), m);
    }
}

#[test]
fn nat_info_extension_layout_and_keyed_sealing() {
    // burrow's extension: type 0x80, version 0, flags (bit 0 mapping varies, bit 1 predictable).
    let m = Message::NatInfo {
        mapping_varies: true,
        predictable: false,
        mapped: false,
    };
    assert_eq!(m.to_plaintext(), vec![0x80, 0x00, 0x01]);
    let both = Message::NatInfo {
        mapping_varies: true,
        predictable: true,
        mapped: false,
    };
    assert_eq!(both.to_plaintext(), vec![0x80, 0x00, 0x03]);
    let mapped = Message::NatInfo {
        mapping_varies: false,
        predictable: false,
        mapped: true,
    };
    assert_eq!(mapped.to_plaintext(), vec![0x80, 0x00, 0x04]);
    assert_eq!(
        Message::from_plaintext(&[0x80, 0x00, 0x04]).unwrap(),
        mapped
    );
    assert_eq!(
        Message::from_plaintext(&[0x80, 0x00, 0x02]).unwrap(),
        Message::NatInfo {
            mapping_varies: false,
            predictable: true,
            mapped: false,
        }
    );
    assert!(matches!(
        Message::from_plaintext(&[0x80, 0x00]),
        Err(DiscoError::Malformed { kind: 0x80, .. })
    ));
    // seal_with (a cached box key) and seal produce packets the other opens.
    let a = PrivateKey::from_bytes([3; 32]);
    let b = PrivateKey::from_bytes([4; 32]);
    let bx = burrow_disco::BoxKey::new(&a, &b.public_key()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let sealed = m.seal_with(&bx, &a.public_key(), &mut rng);
    assert_eq!(
        Message::open(&b, &sealed).unwrap(),
        (a.public_key(), m.clone())
    );
    let back = burrow_disco::BoxKey::new(&b, &a.public_key()).unwrap();
    let sealed = m.seal(&a, &b.public_key(), &mut rng).unwrap();
    assert_eq!(Message::open_with(&back, &sealed).unwrap(), m);
    // A box for someone else does not open.
    let c = PrivateKey::from_bytes([5; 32]);
    let other = burrow_disco::BoxKey::new(&c, &a.public_key()).unwrap();
    assert_eq!(Message::open_with(&other, &sealed), Err(DiscoError::BadBox));
}

/// Audit #3: a relayed CallMeMaybe used to decode with any number of endpoints (a 64 KiB DERP
/// packet holds about 3,600), each of which the receiver then pinged. Decoding now refuses
/// more than the cap that encoding keeps to, with a typed error.
#[test]
fn call_me_maybe_over_the_cap_is_refused_at_decode() {
    use burrow_disco::MAX_CALL_ME_MAYBE_ENDPOINTS as MAX;
    fn plaintext(n: usize) -> Vec<u8> {
        let mut p = vec![3u8, 0];
        for i in 0..n {
            p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 7]);
            p.extend_from_slice(&(1000 + i as u16).to_be_bytes());
        }
        p
    }
    // A hand-built message of 3,000 endpoints, as a hostile peer would relay it.
    assert_eq!(
        Message::from_plaintext(&plaintext(3000)),
        Err(DiscoError::TooManyEndpoints { count: 3000 })
    );
    assert_eq!(
        Message::from_plaintext(&plaintext(MAX + 1)),
        Err(DiscoError::TooManyEndpoints { count: MAX + 1 })
    );
    // Sealed, it is refused just the same when opened.
    let (a, b) = (
        PrivateKey::from_bytes([1; 32]),
        PrivateKey::from_bytes([2; 32]),
    );
    let bx = burrow_disco::BoxKey::new(&a, &b.public_key()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut wire = MAGIC.to_vec();
    wire.extend_from_slice(a.public_key().as_bytes());
    let mut nonce = [0u8; 24];
    rand_chacha::rand_core::RngCore::fill_bytes(&mut rng, &mut nonce);
    wire.extend_from_slice(&nonce);
    wire.extend_from_slice(&bx.seal(&nonce, &plaintext(3000)));
    assert_eq!(
        Message::open(&b, &wire),
        Err(DiscoError::TooManyEndpoints { count: 3000 })
    );
    // Exactly the cap decodes; and what encoding keeps of a longer list (the first MAX) decodes.
    match Message::from_plaintext(&plaintext(MAX)).unwrap() {
        Message::CallMeMaybe { endpoints } => assert_eq!(endpoints.len(), MAX),
        other => panic!("{other:?}"),
    }
    let long = Message::CallMeMaybe {
        endpoints: (0..200u16)
            .map(|p| SocketAddr::from(([198, 51, 100, 7], 1000 + p)))
            .collect(),
    };
    match Message::from_plaintext(&long.to_plaintext()).unwrap() {
        Message::CallMeMaybe { endpoints } => {
            assert_eq!(endpoints.len(), MAX);
            assert_eq!(endpoints[0], SocketAddr::from(([198, 51, 100, 7], 1000)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn port_prediction_extension_layout() {
    // burrow's extension: type 0x81, version 0, round (u32 BE), port (u16 BE).
    let m = Message::PortPrediction {
        round: 0x0102_0304,
        port: 0x4e21,
    };
    assert_eq!(
        m.to_plaintext(),
        vec![0x81, 0x00, 0x01, 0x02, 0x03, 0x04, 0x4e, 0x21]
    );
    assert_eq!(
        Message::from_plaintext(&[0x81, 0x00, 0, 0, 0, 7, 0x9c, 0x40, 0xff]).unwrap(),
        Message::PortPrediction {
            round: 7,
            port: 40000
        }
    );
    assert!(matches!(
        Message::from_plaintext(&[0x81, 0x00, 0, 0, 0, 7, 0x9c]),
        Err(DiscoError::Malformed { kind: 0x81, .. })
    ));
}
