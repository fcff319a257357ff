//! Peer-relay disco messages (types 0x04–0x09): byte-exact layouts written out by hand from
//! the research notes (notes/peer-relay-research.md §1), parse rules, and round trips.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use burrow_disco::{
    BindBody, DiscoError, Message, UdpRelayEndpoint, MAX_CALL_ME_MAYBE_ENDPOINTS,
    MAX_RELAY_LIFETIME,
};
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

fn bind_body() -> BindBody {
    BindBody {
        vni: 0x0012_3456,
        generation: 7,
        remote_key: PublicKey([0x22; 32]),
        challenge: [0x33; 32],
    }
}

fn endpoint() -> UdpRelayEndpoint {
    UdpRelayEndpoint {
        server_disco: PublicKey([0x01; 32]),
        client_disco: [PublicKey([0x02; 32]), PublicKey([0x03; 32])],
        lamport_id: 0x0102_0304_0506_0708,
        vni: 0x00ab_cdef,
        bind_lifetime: Duration::from_secs(30),
        steady_state_lifetime: Duration::from_secs(300),
        addrs: vec![
            "192.0.2.1:41641".parse().unwrap(),
            "[2001:db8::1]:7".parse().unwrap(),
        ],
    }
}

/// The endpoint block of [`endpoint`], written out by hand.
fn endpoint_hex() -> String {
    format!(
        "{} {} {} 0102030405060708 00abcdef 00000006fc23ac00 00000045d964b800 \
         00000000000000000000ffffc0000201 a2a9 20010db8000000000000000000000001 0007",
        "01".repeat(32),
        "02".repeat(32),
        "03".repeat(32)
    )
}

#[test]
fn bind_challenge_answer_layouts() {
    let body = format!("00123456 00000007 {} {}", "22".repeat(32), "33".repeat(32));
    for (kind, m) in [
        ("04", Message::BindUdpRelayEndpoint(bind_body())),
        ("05", Message::BindUdpRelayEndpointChallenge(bind_body())),
        ("06", Message::BindUdpRelayEndpointAnswer(bind_body())),
    ] {
        let want = hex(&format!("{kind} 00 {body}"));
        assert_eq!(want.len(), 2 + 72);
        assert_eq!(m.to_plaintext(), want);
        assert_eq!(Message::from_plaintext(&want).unwrap(), m);
        // The version byte is not checked, and bytes after the 72 are ignored.
        let mut other = want.clone();
        other[1] = 9;
        other.extend_from_slice(&[0xee; 5]);
        assert_eq!(Message::from_plaintext(&other).unwrap(), m);
        // One byte short is malformed.
        assert_eq!(
            Message::from_plaintext(&want[..want.len() - 1]),
            Err(DiscoError::Malformed {
                kind: want[0],
                len: 73
            })
        );
    }
}

#[test]
fn call_me_maybe_via_layout() {
    let m = Message::CallMeMaybeVia(endpoint());
    let want = hex(&format!("07 00 {}", endpoint_hex()));
    assert_eq!(want.len(), 2 + 124 + 2 * 18);
    assert_eq!(m.to_plaintext(), want);
    assert_eq!(Message::from_plaintext(&want).unwrap(), m);
}

#[test]
fn allocate_request_layout() {
    let m = Message::AllocateUdpRelayEndpointRequest {
        client_disco: [PublicKey([0x44; 32]), PublicKey([0x55; 32])],
        generation: 0xdead_beef,
    };
    let want = hex(&format!(
        "08 00 {} {} deadbeef",
        "44".repeat(32),
        "55".repeat(32)
    ));
    assert_eq!(want.len(), 2 + 68);
    assert_eq!(m.to_plaintext(), want);
    assert_eq!(Message::from_plaintext(&want).unwrap(), m);
    assert!(matches!(
        Message::from_plaintext(&want[..69]),
        Err(DiscoError::Malformed { kind: 8, .. })
    ));
}

#[test]
fn allocate_response_layout() {
    let m = Message::AllocateUdpRelayEndpointResponse {
        generation: 3,
        endpoint: endpoint(),
    };
    let want = hex(&format!("09 00 00000003 {}", endpoint_hex()));
    assert_eq!(want.len(), 2 + 128 + 2 * 18);
    assert_eq!(m.to_plaintext(), want);
    assert_eq!(Message::from_plaintext(&want).unwrap(), m);
}

#[test]
fn endpoint_block_parse_rules() {
    let full = hex(&format!("07 00 {}", endpoint_hex()));
    let fixed = &full[..2 + 124];
    // No address at all, a partial address, a trailing byte: malformed.
    for bad in [
        fixed.to_vec(),
        full[..full.len() - 1].to_vec(),
        [full.clone(), vec![0]].concat(),
        full[..50].to_vec(),
    ] {
        assert!(
            matches!(
                Message::from_plaintext(&bad),
                Err(DiscoError::Malformed { kind: 7, len }) if len == bad.len()
            ),
            "{} bytes",
            bad.len()
        );
    }
    // Response: too short for even the generation.
    assert!(matches!(
        Message::from_plaintext(&hex("09 00 0000")),
        Err(DiscoError::Malformed { kind: 9, .. })
    ));
    // A version other than 0 makes 0x07–0x09 unknown (ignored), even when short.
    for kind in [7u8, 8, 9] {
        assert_eq!(
            Message::from_plaintext(&[kind, 1, 0, 0]).unwrap(),
            Message::Unknown { kind }
        );
        // …and an Unknown of those types stays unknown when written and read back.
        let again = Message::Unknown { kind }.to_plaintext();
        assert_eq!(again, vec![kind, 1]);
        assert_eq!(
            Message::from_plaintext(&again).unwrap(),
            Message::Unknown { kind }
        );
    }
    // 61 addresses are too many; 60 are fine.
    let addr = "00000000000000000000ffffc0000201a2a9";
    let with = |n: usize| {
        let mut h = format!("07 00 {}", &endpoint_hex());
        // Drop the two addresses of endpoint_hex() and put n copies of one.
        h.truncate(h.len() - (32 + 1 + 4 + 1 + 32 + 1 + 4));
        hex(&format!("{h} {}", addr.repeat(n)))
    };
    assert_eq!(with(1).len(), 2 + 124 + 18);
    let Message::CallMeMaybeVia(e) = Message::from_plaintext(&with(60)).unwrap() else {
        panic!("not a CallMeMaybeVia")
    };
    assert_eq!(e.addrs.len(), 60);
    assert_eq!(
        Message::from_plaintext(&with(61)),
        Err(DiscoError::TooManyEndpoints { count: 61 })
    );
}

#[test]
fn lifetimes_are_checked() {
    let base = hex(&format!("07 00 {}", endpoint_hex()));
    let at = 2 + 108;
    let with_bind_lifetime = |ns: &str| {
        let mut p = base.clone();
        p[at..at + 8].copy_from_slice(&hex(ns));
        p
    };
    // -1 ns, i64::MIN, a day and a nanosecond: refused with the wire value.
    for (ns, nanos) in [
        ("ffffffffffffffff", -1i64),
        ("8000000000000000", i64::MIN),
        ("00004e94914f0001", 86_400_000_000_001),
    ] {
        assert_eq!(
            Message::from_plaintext(&with_bind_lifetime(ns)),
            Err(DiscoError::BadLifetime { kind: 7, nanos })
        );
    }
    // Exactly a day, and zero, are accepted.
    let Message::CallMeMaybeVia(e) =
        Message::from_plaintext(&with_bind_lifetime("00004e94914f0000")).unwrap()
    else {
        panic!()
    };
    assert_eq!(e.bind_lifetime, MAX_RELAY_LIFETIME);
    assert!(Message::from_plaintext(&with_bind_lifetime("0000000000000000")).is_ok());
    // The steady-state lifetime too.
    let mut p = base.clone();
    p[2 + 116] = 0x80;
    assert!(matches!(
        Message::from_plaintext(&p),
        Err(DiscoError::BadLifetime { kind: 7, .. })
    ));
    // Encoding clamps an absurd lifetime to the maximum.
    let mut e = endpoint();
    e.steady_state_lifetime = Duration::MAX;
    let p = Message::CallMeMaybeVia(e).to_plaintext();
    assert_eq!(&p[2 + 116..2 + 124], &hex("00004e94914f0000")[..]);
}

#[test]
fn encoding_keeps_at_most_sixty_addresses() {
    let mut e = endpoint();
    e.addrs = (0..100)
        .map(|i| SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), i))
        .collect();
    let p = Message::CallMeMaybeVia(e).to_plaintext();
    assert_eq!(p.len(), 2 + 124 + MAX_CALL_ME_MAYBE_ENDPOINTS * 18);
}

#[test]
fn sealed_bind_is_160_bytes_with_geneve() {
    let (a, s) = (
        PrivateKey::from_bytes([1; 32]),
        PrivateKey::from_bytes([9; 32]),
    );
    let m = Message::BindUdpRelayEndpoint(bind_body());
    let wire = m
        .seal(&a, &s.public_key(), &mut ChaCha20Rng::seed_from_u64(1))
        .unwrap();
    // 160 bytes on the wire once the 8-byte Geneve header is in front.
    assert_eq!(8 + wire.len(), 160);
    assert_eq!(Message::open(&s, &wire).unwrap(), (a.public_key(), m));
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| {
        let ip = Ipv6Addr::from(ip);
        SocketAddr::new(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4), p)
    })
}

fn arb_endpoint() -> impl Strategy<Value = UdpRelayEndpoint> {
    (
        any::<[[u8; 32]; 3]>(),
        any::<u64>(),
        any::<u32>(),
        0..=MAX_RELAY_LIFETIME.as_nanos() as u64,
        0..=MAX_RELAY_LIFETIME.as_nanos() as u64,
        proptest::collection::vec(arb_addr(), 1..=MAX_CALL_ME_MAYBE_ENDPOINTS),
    )
        .prop_map(|(k, lamport_id, vni, b, s, addrs)| UdpRelayEndpoint {
            server_disco: PublicKey(k[0]),
            client_disco: [PublicKey(k[1]), PublicKey(k[2])],
            lamport_id,
            vni,
            bind_lifetime: Duration::from_nanos(b),
            steady_state_lifetime: Duration::from_nanos(s),
            addrs,
        })
}

fn arb_bind() -> impl Strategy<Value = BindBody> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(vni, generation, k, challenge)| BindBody {
            vni,
            generation,
            remote_key: PublicKey(k),
            challenge,
        })
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        arb_bind().prop_map(Message::BindUdpRelayEndpoint),
        arb_bind().prop_map(Message::BindUdpRelayEndpointChallenge),
        arb_bind().prop_map(Message::BindUdpRelayEndpointAnswer),
        arb_endpoint().prop_map(Message::CallMeMaybeVia),
        (any::<[[u8; 32]; 2]>(), any::<u32>()).prop_map(|(k, generation)| {
            Message::AllocateUdpRelayEndpointRequest {
                client_disco: [PublicKey(k[0]), PublicKey(k[1])],
                generation,
            }
        }),
        (any::<u32>(), arb_endpoint()).prop_map(|(generation, endpoint)| {
            Message::AllocateUdpRelayEndpointResponse {
                generation,
                endpoint,
            }
        }),
    ]
}

proptest! {
    #[test]
    fn relay_messages_round_trip(m in arb_message()) {
        prop_assert_eq!(Message::from_plaintext(&m.to_plaintext()).unwrap(), m.clone());
        let (a, b) = (PrivateKey::from_bytes([1; 32]), PrivateKey::from_bytes([2; 32]));
        let wire = m.seal(&a, &b.public_key(), &mut ChaCha20Rng::seed_from_u64(5)).unwrap();
        prop_assert_eq!(Message::open(&b, &wire).unwrap(), (a.public_key(), m));
    }

    #[test]
    fn relay_plaintexts_never_panic_and_reencode(kind in 4u8..=9, version in 0u8..=1, body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let p = [vec![kind, version], body].concat();
        if let Ok(m) = Message::from_plaintext(&p) {
            prop_assert_eq!(Message::from_plaintext(&m.to_plaintext()).unwrap(), m);
        }
    }
}
