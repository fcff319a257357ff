//! The Geneve header byte for byte (RFC 8926's fixed part with Tailscale's values), and the
//! classifier against STUN, disco and WireGuard.

use burrow_relay::{
    decap, encap, looks_like_geneve, GeneveError, GeneveHeader, GeneveProtocol, GENEVE_HEADER_LEN,
    MAX_VNI,
};
use proptest::prelude::*;

#[test]
fn header_layout() {
    let mut out = [0xffu8; 8];
    let h = GeneveHeader {
        control: true,
        protocol: GeneveProtocol::Disco,
        vni: 0x00ab_cdef,
    };
    assert_eq!(h.encode(&mut out), Ok(8));
    assert_eq!(out, [0x00, 0x80, 0x7a, 0x11, 0xab, 0xcd, 0xef, 0x00]);
    assert_eq!(GeneveHeader::decode(&out), Ok((h, &[][..])));
    let h = GeneveHeader {
        control: false,
        protocol: GeneveProtocol::WireGuard,
        vni: 1,
    };
    h.encode(&mut out).unwrap();
    assert_eq!(out, [0x00, 0x00, 0x7a, 0x12, 0x00, 0x00, 0x01, 0x00]);
    // Encoding refuses a VNI over 24 bits and a short buffer.
    let big = GeneveHeader {
        vni: MAX_VNI + 1,
        ..h
    };
    assert_eq!(
        big.encode(&mut out),
        Err(GeneveError::VniTooLarge(0x0100_0000))
    );
    assert_eq!(
        h.encode(&mut [0; 7]),
        Err(GeneveError::BufferTooSmall { need: 8, have: 7 })
    );
}

#[test]
fn encap_and_decap() {
    let mut out = [0u8; 16];
    let n = encap(
        0x123456,
        GeneveProtocol::WireGuard,
        &[4, 0, 0, 0, 9],
        &mut out,
    )
    .unwrap();
    assert_eq!(
        &out[..n],
        &[0, 0, 0x7a, 0x12, 0x12, 0x34, 0x56, 0, 4, 0, 0, 0, 9]
    );
    let (h, payload) = decap(&out[..n]).unwrap();
    assert_eq!(
        (h.vni, h.control, h.protocol),
        (0x123456, false, GeneveProtocol::WireGuard)
    );
    assert_eq!(payload, &[4, 0, 0, 0, 9]);
    assert_eq!(
        encap(1, GeneveProtocol::Disco, &[0; 9], &mut out),
        Err(GeneveError::BufferTooSmall { need: 17, have: 16 })
    );
}

fn stun_binding_request() -> Vec<u8> {
    // RFC 8489 header: type 0x0001, length 0, magic cookie, transaction ID.
    let mut p = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    p.extend_from_slice(&[7; 12]);
    p
}

fn disco_datagram() -> Vec<u8> {
    let mut p = burrow_disco::MAGIC.to_vec();
    p.extend_from_slice(&[5; 32 + 24 + 16 + 14]);
    p
}

fn wireguard_messages() -> Vec<Vec<u8>> {
    (1u8..=4)
        .map(|t| {
            let mut p = vec![t, 0, 0, 0];
            p.extend_from_slice(&[0x33; 144]);
            p
        })
        .collect()
}

#[test]
fn stun_disco_and_wireguard_are_not_geneve() {
    assert!(!looks_like_geneve(&stun_binding_request()));
    assert!(!looks_like_geneve(&disco_datagram()));
    for wg in wireguard_messages() {
        assert!(!looks_like_geneve(&wg));
    }
    assert!(!looks_like_geneve(&[]));
    assert!(!looks_like_geneve(&[0, 0, 0x7a, 0x12, 0, 0, 1]));
}

#[test]
fn geneve_is_not_stun_disco_or_wireguard() {
    let mut framed = vec![0u8; 256];
    let n = encap(7, GeneveProtocol::Disco, &disco_datagram(), &mut framed).unwrap();
    let disco = &framed[..n];
    assert!(looks_like_geneve(disco));
    assert!(!burrow_stun::is_stun(disco));
    assert!(!burrow_disco::looks_like_disco(disco));
    // Disco protocol without the magic after the header is not Geneve to the classifier.
    let mut no_magic = disco.to_vec();
    no_magic[GENEVE_HEADER_LEN] ^= 0xff;
    assert!(!looks_like_geneve(&no_magic));
    // A control packet (the bind handshake) too.
    let mut control = disco.to_vec();
    control[1] = 0x80;
    assert!(looks_like_geneve(&control));
}

#[test]
fn decode_is_strict() {
    let ok = [0u8, 0, 0x7a, 0x12, 0, 0, 1, 0];
    assert!(GeneveHeader::decode(&ok).is_ok());
    let with = |i: usize, v: u8| {
        let mut p = ok;
        p[i] = v;
        GeneveHeader::decode(&p).map(|_| ())
    };
    assert_eq!(with(0, 0x80), Err(GeneveError::Version { version: 2 }));
    assert_eq!(with(0, 0x02), Err(GeneveError::Options { words: 2 }));
    assert_eq!(with(1, 0x40), Err(GeneveError::Reserved));
    assert_eq!(with(1, 0x01), Err(GeneveError::Reserved));
    assert_eq!(with(7, 0x01), Err(GeneveError::Reserved));
    assert_eq!(with(3, 0x13), Err(GeneveError::Protocol(0x7a13)));
}

proptest! {
    #[test]
    fn every_header_round_trips_and_is_classified_as_geneve(
        control in any::<bool>(),
        wg in any::<bool>(),
        vni in 0..=MAX_VNI,
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let protocol = if wg { GeneveProtocol::WireGuard } else { GeneveProtocol::Disco };
        let payload = if wg { body } else { [burrow_disco::MAGIC.to_vec(), body].concat() };
        let mut out = vec![0; GENEVE_HEADER_LEN + payload.len()];
        let n = encap(vni, protocol, &payload, &mut out).unwrap();
        if control {
            out[1] |= 0x80;
        }
        let (h, p) = decap(&out[..n]).unwrap();
        prop_assert_eq!(h, GeneveHeader { control, protocol, vni });
        prop_assert_eq!(p, &payload[..]);
        prop_assert!(looks_like_geneve(&out));
        prop_assert!(!burrow_stun::is_stun(&out));
        prop_assert!(!burrow_disco::looks_like_disco(&out));
        // WireGuard's first byte is 1–4; Geneve's is 0.
        prop_assert_eq!(out[0], 0);
    }

    #[test]
    fn stun_and_disco_are_never_geneve(tail in proptest::collection::vec(any::<u8>(), 0..200), kind in any::<u16>()) {
        let mut stun = stun_binding_request();
        stun[0] = (kind >> 8) as u8 & 0x3f;
        stun[1] = kind as u8;
        stun.extend_from_slice(&tail);
        if burrow_stun::is_stun(&stun) {
            prop_assert!(!looks_like_geneve(&stun));
        }
        let disco = [burrow_disco::MAGIC.to_vec(), tail.clone()].concat();
        prop_assert!(!looks_like_geneve(&disco));
        for t in 1u8..=4 {
            let wg = [vec![t, 0, 0, 0], tail.clone()].concat();
            prop_assert!(!looks_like_geneve(&wg));
        }
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decap(&bytes);
        let _ = looks_like_geneve(&bytes);
    }
}
