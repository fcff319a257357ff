//! The client's bind machine against a relay whose key the test holds: only the first valid
//! Challenge counts, and it is answered where it came from.

mod common;

use std::time::Duration;

use burrow_disco::{BindBody, Message, UdpRelayEndpoint};
use burrow_relay::{decap, BindingError, BindingEvent, RelayBinding};
use burrow_wg::PrivateKey;
use common::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn endpoint(server: &PrivateKey, a: &PrivateKey, b: &PrivateKey) -> UdpRelayEndpoint {
    UdpRelayEndpoint {
        server_disco: server.public_key(),
        client_disco: [a.public_key(), b.public_key()],
        lamport_id: 1,
        vni: 77,
        bind_lifetime: secs(30),
        steady_state_lifetime: secs(300),
        addrs: vec![addr("198.51.100.1:7000"), addr("[2001:db8::7]:7000")],
    }
}

fn challenge(
    from: &PrivateKey,
    to: &PrivateKey,
    vni: u32,
    generation: u32,
    remote: &PrivateKey,
) -> Vec<u8> {
    let m = Message::BindUdpRelayEndpointChallenge(BindBody {
        vni,
        generation,
        remote_key: remote.public_key(),
        challenge: [0x5a; 32],
    });
    let sealed = m
        .seal(from, &to.public_key(), &mut ChaCha20Rng::seed_from_u64(1))
        .unwrap();
    let mut out = vec![0, 0x80, 0x7a, 0x11];
    out.extend_from_slice(&vni.to_be_bytes()[1..]);
    out.push(0);
    out.extend_from_slice(&sealed);
    out
}

#[test]
fn binds_are_sealed_to_the_server_and_only_the_right_challenge_is_answered() {
    let (server, a, b, stranger) = (key(50), key(1), key(2), key(3));
    let ep = endpoint(&server, &a, &b);
    let now = lab_now();
    let mut c = RelayBinding::new(
        now,
        ep.clone(),
        &a,
        b.public_key(),
        5,
        ChaCha20Rng::seed_from_u64(1),
    )
    .unwrap();
    // One Bind per address: Geneve control, disco, VNI 77, sealed from a to the server key.
    let binds: Vec<_> = std::iter::from_fn(|| c.poll_transmit()).collect();
    assert_eq!(binds.len(), 2);
    for t in &binds {
        assert_eq!(&t.payload[..8], &[0, 0x80, 0x7a, 0x11, 0, 0, 77, 0]);
        let (from, msg) = Message::open(&server, &t.payload[8..]).unwrap();
        assert_eq!(from, a.public_key());
        assert_eq!(
            msg,
            Message::BindUdpRelayEndpoint(BindBody {
                vni: 77,
                generation: 5,
                remote_key: b.public_key(),
                challenge: [0; 32]
            })
        );
    }
    let relay6 = addr("[2001:db8::7]:7000");
    let cases = [
        (
            addr("192.0.2.1:7000"),
            challenge(&server, &a, 77, 5, &b),
            BindingError::UnknownSource(addr("192.0.2.1:7000")),
        ),
        (
            relay6,
            challenge(&stranger, &a, 77, 5, &b),
            BindingError::NotFromServer,
        ),
        (
            relay6,
            challenge(&server, &a, 77, 4, &b),
            BindingError::ChallengeMismatch,
        ),
        (
            relay6,
            challenge(&server, &a, 77, 5, &stranger),
            BindingError::ChallengeMismatch,
        ),
        (
            relay6,
            challenge(&server, &a, 78, 5, &b),
            BindingError::NotForUs,
        ),
        (
            relay6,
            challenge(&server, &stranger, 77, 5, &b),
            BindingError::Disco(burrow_disco::DiscoError::BadBox),
        ),
    ];
    for (src, datagram, want) in cases {
        assert_eq!(c.handle_input(now, src, &datagram), Err(want));
    }
    assert!(c.poll_transmit().is_none());
    assert_eq!(c.relay_addr(), None);
    // The right one, from the second address: answered there, with the MAC echoed.
    c.handle_input(now, relay6, &challenge(&server, &a, 77, 5, &b))
        .unwrap();
    let answer = c.poll_transmit().unwrap();
    assert_eq!(answer.dst, relay6);
    let (h, disco) = decap(&answer.payload).unwrap();
    assert!(h.control);
    let (_, msg) = Message::open(&server, disco).unwrap();
    assert_eq!(
        msg,
        Message::BindUdpRelayEndpointAnswer(BindBody {
            vni: 77,
            generation: 5,
            remote_key: b.public_key(),
            challenge: [0x5a; 32]
        })
    );
    assert_eq!(
        c.poll_event(),
        Some(BindingEvent::Bound {
            relay_addr: relay6,
            vni: 77
        })
    );
    assert_eq!(c.relay_addr(), Some(relay6));
    // Later Challenges are ignored; no more timers.
    let late = challenge(&server, &a, 77, 5, &b);
    assert_eq!(
        c.handle_input(now, addr("198.51.100.1:7000"), &late),
        Err(BindingError::Finished)
    );
    assert_eq!(c.poll_timeout(), None);
    c.handle_timeout(now + Duration::from_secs(60));
    assert!(c.poll_transmit().is_none());
}

#[test]
fn a_binding_refuses_bad_endpoints() {
    let (server, a, b) = (key(50), key(1), key(2));
    let now = lab_now();
    let rng = || ChaCha20Rng::seed_from_u64(1);
    let ep = endpoint(&server, &a, &b);
    let err = |ep: UdpRelayEndpoint, peer, generation| {
        RelayBinding::new(now, ep, &a, peer, generation, rng()).err()
    };
    assert_eq!(
        err(ep.clone(), b.public_key(), 0),
        Some(BindingError::ZeroGeneration)
    );
    assert_eq!(
        err(ep.clone(), a.public_key(), 1),
        Some(BindingError::PeerNotInPair)
    );
    assert_eq!(
        err(ep.clone(), key(9).public_key(), 1),
        Some(BindingError::PeerNotInPair)
    );
    for vni in [0, 0x0100_0000] {
        assert_eq!(
            err(UdpRelayEndpoint { vni, ..ep.clone() }, b.public_key(), 1),
            Some(BindingError::BadVni(vni))
        );
    }
    assert_eq!(
        err(
            UdpRelayEndpoint {
                addrs: vec![],
                ..ep.clone()
            },
            b.public_key(),
            1
        ),
        Some(BindingError::NoAddresses)
    );
    let not_ours = UdpRelayEndpoint {
        client_disco: [key(8).public_key(), b.public_key()],
        ..ep
    };
    assert_eq!(
        err(not_ours, b.public_key(), 1),
        Some(BindingError::NotAClient)
    );
}

fn lab_now() -> std::time::Instant {
    Lab::new().t0
}
