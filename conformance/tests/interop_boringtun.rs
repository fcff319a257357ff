//! burrow-wg against boringtun (Cloudflare's WireGuard), in process: handshakes both ways,
//! with and without PSK, data both ways, across rekeys and across cookie exchanges.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use burrow_wg::{Decapsulated, Device, Encapsulated, PrivateKey, Received, Tunnel, TunnelConfig};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const BURROW_KEY: [u8; 32] = [0x11; 32];
const BORING_KEY: [u8; 32] = [0x22; 32];
const BURROW_ADDR: &str = "192.0.2.10:51820";

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

fn ipv4(payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        64,
        17,
        0,
        0,
        10,
        0,
        0,
        1,
        10,
        0,
        0,
        2,
    ];
    p.extend_from_slice(payload);
    p
}

fn boring(psk: Option<[u8; 32]>, limiter: Option<Arc<RateLimiter>>) -> Tunn {
    let burrow_public = x25519::PublicKey::from(PrivateKey::from_bytes(BURROW_KEY).public_key().0);
    Tunn::new(
        x25519::StaticSecret::from(BORING_KEY),
        burrow_public,
        psk,
        None,
        7,
        limiter,
    )
}

fn burrow(psk: Option<[u8; 32]>, now: Instant) -> Tunnel {
    let boring_public = x25519::PublicKey::from(&x25519::StaticSecret::from(BORING_KEY));
    Tunnel::new(
        TunnelConfig {
            private_key: PrivateKey::from_bytes(BURROW_KEY),
            peer: burrow_wg::PublicKey(boring_public.to_bytes()),
            preshared_key: psk.map(burrow_wg::PresharedKey::from_bytes),
            persistent_keepalive: None,
        },
        ChaCha20Rng::seed_from_u64(9),
        now,
        unix_now(),
    )
}

/// Feeds a datagram to boringtun; returns what it wants sent back and what it decrypted.
fn to_boring(b: &mut Tunn, datagram: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut net, mut tun) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 2048];
    let src: IpAddr = BURROW_ADDR.parse::<SocketAddr>().unwrap().ip();
    match b.decapsulate(Some(src), datagram, &mut buf) {
        TunnResult::WriteToNetwork(p) => {
            net.push(p.to_vec());
            // boringtun flushes queued packets on repeated calls with an empty datagram.
            while let TunnResult::WriteToNetwork(p) = b.decapsulate(Some(src), &[], &mut buf) {
                net.push(p.to_vec());
            }
        }
        TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
            tun.push(p.to_vec())
        }
        TunnResult::Done => {}
        TunnResult::Err(e) => panic!("boringtun rejected a burrow datagram: {e:?}"),
    }
    (net, tun)
}

/// Runs datagrams between burrow and boringtun until quiet; returns plaintexts each received.
fn pump(
    w: &mut Tunnel,
    b: &mut Tunn,
    now: Instant,
    mut to_b: Vec<Vec<u8>>,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut got_w, mut got_b) = (Vec::new(), Vec::new());
    let mut out = vec![0u8; 2048];
    for _ in 0..20 {
        while let Some(d) = w.poll_transmit() {
            to_b.push(d);
        }
        if to_b.is_empty() {
            break;
        }
        let mut to_w = Vec::new();
        for d in to_b.drain(..) {
            let (net, tun) = to_boring(b, &d);
            to_w.extend(net);
            got_b.extend(tun);
        }
        for d in to_w {
            match w
                .decapsulate(now, &d, &mut out)
                .expect("burrow accepts boringtun's datagram")
            {
                Decapsulated::Data(n) => got_w.push(out[..n].to_vec()),
                Decapsulated::Keepalive | Decapsulated::Handshake | Decapsulated::CookieReply => {}
            }
        }
    }
    (got_w, got_b)
}

fn burrow_sends(w: &mut Tunnel, now: Instant, packet: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    match w.encapsulate(now, packet, &mut buf).unwrap() {
        Encapsulated::Sent(n) => buf[..n].to_vec(),
        Encapsulated::Queued => panic!("no session"),
    }
}

fn boring_sends(b: &mut Tunn, packet: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    match b.encapsulate(packet, &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("boringtun did not encrypt: {other:?}"),
    }
}

fn data_both_ways(w: &mut Tunnel, b: &mut Tunn, now: Instant, tag: &str) {
    let to_b = burrow_sends(w, now, &ipv4(format!("burrow→boringtun {tag}").as_bytes()));
    let (_, tun) = to_boring(b, &to_b);
    assert_eq!(
        tun,
        vec![ipv4(format!("burrow→boringtun {tag}").as_bytes())]
    );
    let to_w = boring_sends(b, &ipv4(format!("boringtun→burrow {tag}").as_bytes()));
    let mut out = vec![0u8; 2048];
    let Decapsulated::Data(n) = w.decapsulate(now, &to_w, &mut out).unwrap() else {
        panic!("no data")
    };
    assert_eq!(
        &out[..n],
        &ipv4(format!("boringtun→burrow {tag}").as_bytes())[..]
    );
}

#[test]
fn burrow_initiates_with_and_without_psk_and_rekeys() {
    for psk in [None, Some([0x5a; 32])] {
        let now = Instant::now();
        let mut w = burrow(psk, now);
        let mut b = boring(psk, None);
        let mut buf = vec![0u8; 2048];
        assert_eq!(
            w.encapsulate(now, &ipv4(b"queued"), &mut buf).unwrap(),
            Encapsulated::Queued
        );
        let (_, got_b) = pump(&mut w, &mut b, now, vec![]);
        assert_eq!(got_b, vec![ipv4(b"queued")], "psk {psk:?}");
        data_both_ways(&mut w, &mut b, now, "first session");
        // Rekey initiated by burrow with traffic flowing.
        w.force_handshake(now);
        pump(&mut w, &mut b, now, vec![]);
        data_both_ways(&mut w, &mut b, now, "after burrow rekey");
    }
}

#[test]
fn boringtun_initiates_with_and_without_psk_and_rekeys() {
    for psk in [None, Some([0x33; 32])] {
        let now = Instant::now();
        let mut w = burrow(psk, now);
        let mut b = boring(psk, None);
        let mut buf = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(init) = b.format_handshake_initiation(&mut buf, false)
        else {
            panic!()
        };
        let init = init.to_vec();
        let mut out = vec![0u8; 2048];
        assert_eq!(
            w.decapsulate(now, &init, &mut out).unwrap(),
            Decapsulated::Handshake
        );
        pump(&mut w, &mut b, now, vec![]);
        // boringtun (initiator) confirms with data; then burrow may send.
        let to_w = boring_sends(&mut b, &ipv4(b"confirm"));
        let Decapsulated::Data(n) = w.decapsulate(now, &to_w, &mut out).unwrap() else {
            panic!()
        };
        assert_eq!(&out[..n], &ipv4(b"confirm")[..]);
        data_both_ways(&mut w, &mut b, now, "boringtun session");
        // Rekey initiated by boringtun.
        let TunnResult::WriteToNetwork(init) = b.format_handshake_initiation(&mut buf, true) else {
            panic!()
        };
        let init = init.to_vec();
        std::thread::sleep(Duration::from_millis(25)); // TAI64N granularity and the 50/s limit
        let later = now + Duration::from_millis(25);
        w.decapsulate(later, &init, &mut out).unwrap();
        pump(&mut w, &mut b, later, vec![]);
        let to_w = boring_sends(&mut b, &ipv4(b"new keys"));
        let Decapsulated::Data(n) = w.decapsulate(later, &to_w, &mut out).unwrap() else {
            panic!()
        };
        assert_eq!(&out[..n], &ipv4(b"new keys")[..]);
        data_both_ways(&mut w, &mut b, later, "after boringtun rekey");
    }
}

#[test]
fn burrow_initiator_handles_boringtun_cookie_reply() {
    let now = Instant::now();
    let boring_public = x25519::PublicKey::from(&x25519::StaticSecret::from(BORING_KEY));
    // A limit of zero: boringtun is always "under load" and demands mac2.
    let limiter = Arc::new(RateLimiter::new(&boring_public, 0));
    let mut w = burrow(None, now);
    let mut b = boring(None, Some(limiter));
    w.force_handshake(now);
    let init = w.poll_transmit().unwrap();
    let (net, _) = to_boring(&mut b, &init);
    assert_eq!(net.len(), 1);
    assert_eq!(net[0].len(), 64, "a cookie reply");
    let mut out = vec![0u8; 2048];
    assert_eq!(
        w.decapsulate(now, &net[0], &mut out).unwrap(),
        Decapsulated::CookieReply
    );
    // burrow retries after REKEY_TIMEOUT with mac2; boringtun accepts it.
    let retry = w.poll_timeout().unwrap();
    w.handle_timeout(retry);
    pump(&mut w, &mut b, retry, vec![]);
    assert!(w.has_session(retry));
    data_both_ways(&mut w, &mut b, retry, "after cookie");
}

#[test]
fn boringtun_initiator_handles_burrow_cookie_reply() {
    let now = Instant::now();
    let boring_public = burrow_wg::PublicKey(
        x25519::PublicKey::from(&x25519::StaticSecret::from(BORING_KEY)).to_bytes(),
    );
    let mut dev = Device::new(
        PrivateKey::from_bytes(BURROW_KEY),
        ChaCha20Rng::seed_from_u64(5),
        now,
        unix_now(),
    );
    let peer = dev.add_peer(now, boring_public, None, None);
    dev.set_under_load(true);
    let mut b = boring(None, None);
    let src: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let mut buf = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = b.format_handshake_initiation(&mut buf, false) else {
        panic!()
    };
    let init = init.to_vec();
    let mut out = vec![0u8; 2048];
    let Received::CookieReply(n) = dev.decapsulate(now, src, &init, &mut out).unwrap() else {
        panic!("expected a cookie reply")
    };
    let cookie_reply = out[..n].to_vec();
    assert!(to_boring(&mut b, &cookie_reply).0.is_empty());
    // boringtun's retry carries mac2 computed from burrow's cookie.
    std::thread::sleep(Duration::from_millis(25));
    let TunnResult::WriteToNetwork(init2) = b.format_handshake_initiation(&mut buf, true) else {
        panic!()
    };
    let init2 = init2.to_vec();
    let later = now + Duration::from_millis(25);
    assert_eq!(
        dev.decapsulate(later, src, &init2, &mut out).unwrap(),
        Received::Peer(peer, Decapsulated::Handshake)
    );
    let (_, resp) = dev.poll_transmit().unwrap();
    let (net, _) = to_boring(&mut b, &resp);
    assert!(!net.is_empty(), "boringtun confirms the session");
    let to_w = boring_sends(&mut b, &ipv4(b"through the cookie"));
    match dev.decapsulate(later, src, &to_w, &mut out).unwrap() {
        Received::Peer(p, Decapsulated::Data(n)) => {
            assert_eq!(p, peer);
            assert_eq!(&out[..n], &ipv4(b"through the cookie")[..]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn simultaneous_rekey_with_boringtun_loses_nothing() {
    // Both ends start a handshake at the same moment, each with a packet sealed on the old
    // keypair still in flight; every message crosses the other's. Nothing may be lost: the old
    // packets open on the keypair each side keeps receiving on, and the new sessions carry
    // data both ways.
    let now = Instant::now();
    let mut w = burrow(None, now);
    let mut b = boring(None, None);
    let mut buf = vec![0u8; 2048];
    assert_eq!(
        w.encapsulate(now, &ipv4(b"queued"), &mut buf).unwrap(),
        Encapsulated::Queued
    );
    let (_, got_b) = pump(&mut w, &mut b, now, vec![]);
    assert_eq!(got_b, vec![ipv4(b"queued")]);
    data_both_ways(&mut w, &mut b, now, "first session");

    std::thread::sleep(Duration::from_millis(25)); // TAI64N granularity and the 50/s limit
    let later = now + Duration::from_millis(25);
    // In flight on the old keypairs, and both initiations at once.
    let old_w = burrow_sends(&mut w, later, &ipv4(b"burrow old"));
    let old_b = boring_sends(&mut b, &ipv4(b"boringtun old"));
    w.force_handshake(later);
    let init_w = w.poll_transmit().expect("burrow's initiation");
    let TunnResult::WriteToNetwork(init_b) = b.format_handshake_initiation(&mut buf, true) else {
        panic!("boringtun did not initiate")
    };
    let init_b = init_b.to_vec();
    // The initiations cross: each answers the other's.
    let mut out = vec![0u8; 2048];
    assert_eq!(
        w.decapsulate(later, &init_b, &mut out).unwrap(),
        Decapsulated::Handshake
    );
    let resp_w = w.poll_transmit().expect("burrow's response");
    let (resp_b, _) = to_boring(&mut b, &init_w);
    // The responses cross too, then the old packets arrive last.
    let (mut to_w, got) = to_boring(&mut b, &resp_w);
    assert!(got.is_empty());
    to_w.extend(resp_b);
    let mut got_w = Vec::new();
    for d in to_w.iter().chain([&old_b]) {
        match w.decapsulate(later, d, &mut out) {
            Ok(Decapsulated::Data(n)) => got_w.push(out[..n].to_vec()),
            Ok(_) => {}
            // boringtun's answer to our initiation, after its own keypair was confirmed and
            // ended our attempt (as wireguard-go's timersHandshakeComplete does): refused,
            // and both ends go on with boringtun's keypair.
            Err(burrow_wg::WgError::Handshake(burrow_wg::HandshakeError::Unexpected)) => {}
            Err(e) => panic!("burrow refused boringtun's datagram: {e:?}"),
        }
    }
    let (more, got_b) = to_boring(&mut b, &old_w);
    assert_eq!(
        got_b,
        vec![ipv4(b"burrow old")],
        "burrow's in-flight packet"
    );
    assert_eq!(
        got_w,
        vec![ipv4(b"boringtun old")],
        "boringtun's in-flight packet"
    );
    let (_, _) = pump(&mut w, &mut b, later, more);
    // Then the new sessions carry data both ways, packet after packet.
    for k in 0..5 {
        data_both_ways(
            &mut w,
            &mut b,
            later,
            &format!("after the simultaneous rekey {k}"),
        );
    }
}
