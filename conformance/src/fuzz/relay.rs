//! The peer-relay server under a script of hostile datagrams, replays and timer ticks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_relay::{Forward, RelayBinding, RelayConfig, RelayServer};
use burrow_wg::PrivateKey;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn bind(
    server: &mut RelayServer,
    now: Instant,
    ep: &burrow_disco::UdpRelayEndpoint,
    me: &PrivateKey,
    peer: &PrivateKey,
    from: SocketAddr,
    captured: &mut Vec<Vec<u8>>,
) {
    let relay = ep.addrs[0];
    let mut c = RelayBinding::new(
        now,
        ep.clone(),
        me,
        peer.public_key(),
        1,
        ChaCha20Rng::seed_from_u64(5),
    )
    .expect("a valid endpoint");
    let bind = c.poll_transmit().expect("a Bind");
    server
        .handle_input(now, from, &bind.payload)
        .expect("Bind answered");
    let challenge = server.poll_transmit().expect("a Challenge");
    c.handle_input(now, relay, &challenge.payload)
        .expect("Challenge valid");
    let answer = c.poll_transmit().expect("an Answer");
    server
        .handle_input(now, from, &answer.payload)
        .expect("Answer accepted");
    captured.extend([bind.payload, challenge.payload, answer.payload]);
}

/// Script: a byte of kind, a byte of length, that many bytes. Kinds: a datagram from client
/// a's or b's bound address, or from an address given in the script; a captured handshake
/// datagram replayed from a scripted address; time passing; an allocation for scripted keys.
/// The relay must never forward anywhere but the other bound leg of the datagram's endpoint,
/// never send a reply larger than the datagram that caused it, and must still allocate, bind
/// and forward for a fresh pair afterwards.
pub fn relay_server(data: &[u8]) {
    let t0 = Instant::now();
    let relay: SocketAddr = "198.51.100.1:7000".parse().expect("addr");
    let mut server = RelayServer::new(
        t0,
        RelayConfig::new(vec![relay]),
        ChaCha20Rng::seed_from_u64(1),
    );
    let (a, b) = (
        PrivateKey::from_bytes([1; 32]),
        PrivateKey::from_bytes([2; 32]),
    );
    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (
        "192.0.2.1:41641".parse().expect("addr"),
        "203.0.113.2:41641".parse().expect("addr"),
    );
    let ep = server
        .allocate(t0, a.public_key(), [a.public_key(), b.public_key()])
        .expect("allocates");
    let mut captured = Vec::new();
    bind(&mut server, t0, &ep, &a, &b, a_addr, &mut captured);
    bind(&mut server, t0, &ep, &b, &a, b_addr, &mut captured);

    let mut now = t0;
    let mut rest = data;
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        let scripted = |body: &[u8]| {
            let b = |i: usize| body.get(i).copied().unwrap_or(0);
            SocketAddr::from(([b(0), b(1), b(2), b(3)], u16::from_be_bytes([b(4), b(5)])))
        };
        let (src, datagram): (SocketAddr, Vec<u8>) = match kind % 6 {
            0 => (a_addr, body.to_vec()),
            1 => (b_addr, body.to_vec()),
            2 => (scripted(body), body.get(6..).unwrap_or(&[]).to_vec()),
            3 => {
                let i = usize::from(body.first().copied().unwrap_or(0)) % captured.len();
                (scripted(body.get(1..).unwrap_or(&[])), captured[i].clone())
            }
            4 => {
                now += Duration::from_millis(u64::from(body.first().copied().unwrap_or(0)) * 1000);
                server.handle_timeout(now);
                continue;
            }
            _ => {
                let k = |i: usize| {
                    PrivateKey::from_bytes([body.get(i).copied().unwrap_or(0) | 0x40; 32])
                        .public_key()
                };
                let _ = server.allocate(now, k(0), [k(0), k(1)]);
                continue;
            }
        };
        let before: Vec<_> = server.sessions().collect();
        if let Ok(Some(Forward { dst })) = server.handle_input(now, src, &datagram) {
            let ok = before.iter().any(|s| {
                (s.bound[0] == Some(src) && s.bound[1] == Some(dst))
                    || (s.bound[1] == Some(src) && s.bound[0] == Some(dst))
            });
            assert!(ok, "forwarded from {src} to {dst}, not between bound legs");
        }
        while let Some(t) = server.poll_transmit() {
            assert!(t.payload.len() <= datagram.len(), "amplified");
            assert_eq!(t.dst, src, "a reply goes to the request's source");
        }
        while server.poll_event().is_some() {}
    }

    // A fresh pair still gets an endpoint, binds and is forwarded.
    let (c, d) = (
        PrivateKey::from_bytes([3; 32]),
        PrivateKey::from_bytes([4; 32]),
    );
    let (c_addr, d_addr): (SocketAddr, SocketAddr) = (
        "192.0.2.3:3".parse().expect("addr"),
        "192.0.2.4:4".parse().expect("addr"),
    );
    let ep = server
        .allocate(now, c.public_key(), [c.public_key(), d.public_key()])
        .expect("still allocates");
    let mut sink = Vec::new();
    bind(&mut server, now, &ep, &c, &d, c_addr, &mut sink);
    bind(&mut server, now, &ep, &d, &c, d_addr, &mut sink);
    let mut buf = [0u8; 16];
    let n = burrow_relay::encap(
        ep.vni,
        burrow_relay::GeneveProtocol::WireGuard,
        &[4, 0, 0, 0],
        &mut buf,
    )
    .expect("fits");
    assert_eq!(
        server.handle_input(now, c_addr, &buf[..n]),
        Ok(Some(Forward { dst: d_addr }))
    );
}
