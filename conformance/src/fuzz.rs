//! Fuzz target bodies. Each must never panic on any input; the checks inside panic only
//! when an invariant of the code under test breaks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_stun::attribute::types;
use burrow_stun::server::MAX_RESPONSE_LEN;
use burrow_stun::{Attribute, BindingServer, Encoder, Message, ServerConfig};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

mod control_api;
mod offload;
mod policy;
mod relay;

pub use control_api::control_api;
pub use offload::offload;
pub use policy::policy_parse;
pub use relay::relay_server;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every fuzz target, by name, for corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("stun_decode", stun_decode),
    ("stun_server", stun_server),
    ("netcheck_input", netcheck_input),
    ("wg_parse", wg_parse),
    ("wg_tunnel", wg_tunnel),
    ("derp_frames", derp_frames),
    ("derp_server", derp_server),
    ("disco_decode", disco_decode),
    ("node_input", node_input),
    ("policy_parse", policy_parse),
    ("control_api", control_api),
    ("upnp_decode", upnp_decode),
    ("pmp_decode", pmp_decode),
    ("pcp_decode", pcp_decode),
    ("portmap_client", portmap_client),
    ("relay_server", relay_server),
    ("offload", offload),
];

/// Decodes arbitrary bytes; whatever decodes must re-encode to something that decodes to the
/// same attributes.
pub fn stun_decode(data: &[u8]) {
    let _ = burrow_stun::is_stun(data);
    for msg in [Message::parse(data), Message::parse_rfc3489(data)]
        .into_iter()
        .flatten()
    {
        let _ = msg.verify_fingerprint();
        let _ = msg.verify_integrity(b"key");
        let _ = msg.verify_integrity_sha256(b"key");
        let _ = msg.unknown_comprehension_required().count();
        let _ = msg.mapped_address();
        let attrs: Vec<Attribute<'_>> = msg
            .attributes()
            .filter_map(Result::ok)
            .filter(|a| {
                !matches!(
                    a.attr_type(),
                    types::MESSAGE_INTEGRITY | types::MESSAGE_INTEGRITY_SHA256 | types::FINGERPRINT
                )
            })
            .collect();
        let enc = Encoder::with_raw_id(msg.message_type(), msg.xor_key()).attributes(&attrs);
        let mut out = Vec::new();
        if enc.encode(&mut out).is_err() {
            continue; // e.g. a text value longer than burrow itself would send
        }
        let again = Message::parse_rfc3489(&out).expect("re-encoded message parses");
        let back: Vec<Attribute<'_>> = again
            .attributes()
            .map(|a| a.expect("re-encoded attribute decodes"))
            .collect();
        assert_eq!(attrs, back, "attributes survive a re-encode");
        assert_eq!(again.message_type(), msg.message_type());
    }
}

/// Feeds arbitrary datagrams to an RFC 5780 server from each of its four addresses; every
/// answer must be a well-formed STUN response with the request's transaction ID.
pub fn stun_server(data: &[u8]) {
    let primary: SocketAddr = "192.0.2.1:3478".parse().expect("literal");
    let alt: SocketAddr = "192.0.2.2:3479".parse().expect("literal");
    let mut server = BindingServer::new(ServerConfig {
        primary,
        alternate: Some(alt),
        software: Some("fuzz".into()),
    });
    let client: SocketAddr = "203.0.113.1:5000".parse().expect("literal");
    let mut out = [0u8; MAX_RESPONSE_LEN];
    for local in server.config().listen_addresses() {
        if let Ok(reply) = server.handle_packet(local, client, data, &mut out) {
            let answer =
                Message::parse_rfc3489(&out[..reply.len]).expect("server writes valid STUN");
            assert_eq!(&out[4..20], &data[4..20], "transaction ID echoed");
            assert!(answer.attributes().all(|a| a.is_ok()));
            assert!(server.config().listen_addresses().contains(&reply.from));
        }
    }
}

/// Runs a netcheck to two servers and feeds it arbitrary datagrams (split on 0xFF bytes) and
/// time steps; it must keep going and end with a report by its deadline.
pub fn netcheck_input(data: &[u8]) {
    use burrow_netcheck::{Config, Event, Netcheck, Region};
    let regions = vec![
        Region {
            id: 1,
            code: "a".into(),
            servers: vec!["192.0.2.1:3478".parse().expect("literal")],
        },
        Region {
            id: 2,
            code: "b".into(),
            servers: vec!["[2001:db8::1]:3478".parse().expect("literal")],
        },
    ];
    let config = Config::new(
        regions,
        Some("10.0.0.1:4000".parse().expect("literal")),
        Some("[2001:db8::2]:4000".parse().expect("literal")),
    );
    let deadline = config.deadline;
    let mut check = Netcheck::new(config, ChaCha20Rng::seed_from_u64(0));
    let t0 = Instant::now();
    check.start(t0).expect("servers usable");
    let mut now = t0;
    let from: SocketAddr = "192.0.2.1:3478".parse().expect("literal");
    for chunk in data.split(|&b| b == 0xFF) {
        while check.poll_transmit().is_some() {}
        let _ = check.handle_input(now, from, chunk);
        now += Duration::from_millis(chunk.len() as u64 * 10);
        check.handle_timeout(now);
    }
    while let Some(t) = check.poll_timeout() {
        assert!(t <= t0 + deadline, "netcheck never waits past its deadline");
        now = now.max(t);
        check.handle_timeout(now);
    }
    let mut reports = 0;
    while let Some(Event::Report(_)) = check.poll_event() {
        reports += 1;
    }
    assert_eq!(reports, 1, "exactly one report");
}

/// Parses arbitrary bytes as WireGuard messages and offers them to a tunnel and a device
/// (as initiation, response, cookie reply or transport data); nothing may panic or succeed
/// without authentication.
pub fn wg_parse(data: &[u8]) {
    use burrow_wg::{Decapsulated, Device, Message, PrivateKey, Tunnel, TunnelConfig};
    let _ = Message::parse(data).map(|m| m.receiver_index());
    let now = Instant::now();
    let unix = Duration::from_secs(1_764_000_000);
    let (a, b) = (
        PrivateKey::from_bytes([1; 32]),
        PrivateKey::from_bytes([2; 32]),
    );
    let mut t = Tunnel::new(
        TunnelConfig {
            private_key: a.clone(),
            peer: b.public_key(),
            preshared_key: None,
            persistent_keepalive: None,
        },
        ChaCha20Rng::seed_from_u64(1),
        now,
        unix,
    );
    let mut out = vec![0u8; 4096];
    if let Ok(Decapsulated::Data(_) | Decapsulated::Keepalive) = t.decapsulate(now, data, &mut out)
    {
        panic!("unauthenticated transport data accepted");
    }
    let mut dev = Device::new(b, ChaCha20Rng::seed_from_u64(2), now, unix);
    dev.add_peer(now, a.public_key(), None, None);
    dev.set_under_load(data.first().is_some_and(|b| b & 1 == 1));
    let _ = dev.decapsulate(now, "192.0.2.1:1".parse().expect("literal"), data, &mut out);
}

/// Drives a live tunnel pair with a byte-coded sequence of deliveries, mutations, replays and
/// time steps: every plaintext that comes out was sent, and none comes out twice.
pub fn wg_tunnel(data: &[u8]) {
    use burrow_wg::{Decapsulated, Encapsulated, PrivateKey, Tunnel, TunnelConfig};
    let t0 = Instant::now();
    let unix = Duration::from_secs(1_764_000_000);
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
            t0,
            unix,
        )
    };
    let (mut a, mut b) = (mk(&ka, &kb, 1), mk(&kb, &ka, 2));
    let mut now = t0;
    let mut wire: Vec<Vec<u8>> = Vec::new(); // every datagram A ever sent
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut delivered = std::collections::BTreeSet::new();
    let mut out = vec![0u8; 4096];
    let mut buf = vec![0u8; 4096];
    for (step, op) in data.chunks(2).enumerate() {
        let arg = op.get(1).copied().unwrap_or(0) as usize;
        match op[0] % 6 {
            0 => {
                // A sends a numbered packet.
                let payload = (step as u32).to_le_bytes();
                sent.push(payload.to_vec());
                if let Ok(Encapsulated::Sent(n)) = a.encapsulate(now, &payload, &mut buf) {
                    wire.push(buf[..n].to_vec());
                }
            }
            1 | 2 => {
                // Deliver (or, for 2, corrupt then deliver) one of A's datagrams to B.
                if wire.is_empty() {
                    continue;
                }
                let mut d = wire[arg % wire.len()].clone();
                if op[0] % 6 == 2 {
                    let i = arg % d.len();
                    d[i] ^= 0x5a;
                }
                if let Ok(Decapsulated::Data(n)) = b.decapsulate(now, &d, &mut out) {
                    let p = out[..n.min(4)].to_vec();
                    let idx = sent
                        .iter()
                        .position(|s| s[..] == p[..])
                        .expect("a plaintext A sent");
                    assert!(delivered.insert(idx), "plaintext delivered twice");
                    assert!(op[0] % 6 == 1, "a corrupted datagram was accepted");
                }
            }
            3 => now += Duration::from_millis(arg as u64 * 500),
            4 => {
                a.handle_timeout(now);
                b.handle_timeout(now);
            }
            _ => {
                // Handshake traffic both ways (B's answers reach A; A's reach B).
                while let Some(d) = b.poll_transmit() {
                    let _ = a.decapsulate(now, &d, &mut out);
                }
            }
        }
        while let Some(d) = a.poll_transmit() {
            wire.push(d);
        }
    }
}

/// Feeds arbitrary bytes to the DERP stream decoder in arbitrary pieces; every frame that
/// decodes re-encodes to the same frame.
pub fn derp_frames(data: &[u8]) {
    use burrow_derp::{Frame, FrameDecoder};
    let mut d = FrameDecoder::new();
    let step = data.first().map_or(1, |b| (*b as usize % 17) + 1);
    for chunk in data.chunks(step) {
        d.extend(chunk);
        while let Some(next) = d.next_frame() {
            let Ok((t, payload)) = next else { return };
            if let Ok(f) = Frame::decode(t, &payload) {
                let bytes = f.to_vec();
                assert_eq!(
                    Frame::decode(bytes[0], &bytes[5..]),
                    Ok(f),
                    "re-encode changed the frame"
                );
            }
        }
    }
}

/// A relay with two honest clients and a third connection speaking arbitrary bytes: the
/// garbage may close its own connection, but the honest clients keep relaying.
pub fn derp_server(data: &[u8]) {
    use burrow_derp::{Client, ClientEvent, ConnId, Server, ServerConfig};
    use burrow_wg::PrivateKey;
    let now = Instant::now();
    let mut server = Server::new(
        ServerConfig::new(PrivateKey::from_bytes([9; 32])),
        ChaCha20Rng::seed_from_u64(0),
    );
    let mut a = Client::new(
        PrivateKey::from_bytes([1; 32]),
        None,
        None,
        ChaCha20Rng::seed_from_u64(1),
    );
    let mut b = Client::new(
        PrivateKey::from_bytes([2; 32]),
        None,
        None,
        ChaCha20Rng::seed_from_u64(2),
    );
    let pb = PrivateKey::from_bytes([2; 32]).public_key();
    server.accept(now, ConnId(1));
    server.accept(now, ConnId(2));
    server.accept(now, ConnId(3));
    let pump = |server: &mut Server, a: &mut Client, b: &mut Client| {
        for _ in 0..6 {
            while let Some((conn, bytes)) = server.poll_transmit(now) {
                match conn {
                    ConnId(1) => a.handle_bytes(&bytes).expect("honest client accepts"),
                    ConnId(2) => b.handle_bytes(&bytes).expect("honest client accepts"),
                    _ => {}
                }
            }
            while let Some(x) = a.poll_transmit() {
                server.handle_bytes(now, ConnId(1), &x);
            }
            while let Some(x) = b.poll_transmit() {
                server.handle_bytes(now, ConnId(2), &x);
            }
            while server.poll_close().is_some() {}
        }
    };
    pump(&mut server, &mut a, &mut b);
    for chunk in data.chunks(64) {
        server.handle_bytes(now, ConnId(3), chunk);
    }
    while server.poll_close().is_some() {}
    a.send_packet(&pb, b"still relayed");
    pump(&mut server, &mut a, &mut b);
    let got = std::iter::from_fn(|| b.poll_event())
        .any(|e| matches!(e, ClientEvent::Packet { ref data, .. } if data == b"still relayed"));
    assert!(
        got,
        "garbage on one connection stopped relaying between others"
    );
}

/// Opens arbitrary bytes as disco (sealed and plain); whatever parses re-encodes to itself, and
/// a sealed round trip of it opens to the same message.
pub fn disco_decode(data: &[u8]) {
    use burrow_disco::Message;
    use burrow_wg::PrivateKey;
    let me = PrivateKey::from_bytes([2; 32]);
    let _ = burrow_disco::sender(data);
    let _ = Message::open(&me, data);
    if let Ok(m) = Message::from_plaintext(data) {
        let again =
            Message::from_plaintext(&m.to_plaintext()).expect("re-encoded plaintext parses");
        assert_eq!(again, m);
        let peer = PrivateKey::from_bytes([1; 32]);
        let wire = m
            .seal(&peer, &me.public_key(), &mut ChaCha20Rng::seed_from_u64(3))
            .expect("usable keys");
        assert_eq!(Message::open(&me, &wire).expect("opens").1, m);
    }
}

/// Drives a node engine with arbitrary datagrams, relayed packets, sends and timer ticks (the
/// bytes are a script: kind, length, payload). The engine must not panic, must never put its
/// private keys on a wire, and must still carry a packet from its peer over DERP afterwards.
pub fn node_input(data: &[u8]) {
    use burrow_node::{
        Dest, Event, Input, Node, NodeConfig, PacketBatch, PeerConfig, Transmit, TransmitBatch,
    };
    use burrow_wg::PrivateKey;
    let t0 = Instant::now();
    let keys = [[1u8; 32], [2; 32], [3; 32], [4; 32]];
    let mut a_cfg = NodeConfig::new(
        PrivateKey::from_bytes(keys[0]),
        PrivateKey::from_bytes(keys[1]),
        1,
    );
    a_cfg.stun_servers = vec!["198.51.100.1:3478".parse().expect("addr")];
    a_cfg.local_addrs = vec!["10.0.0.1:41641".parse().expect("addr")];
    // A relay for others too: hostile bytes reach its relay socket as well.
    a_cfg.relay_server = Some(burrow_node::RelayServerSettings::on_port(40000));
    let mut a = Node::new(a_cfg, t0);
    let mut b = Node::new(
        NodeConfig::new(
            PrivateKey::from_bytes(keys[2]),
            PrivateKey::from_bytes(keys[3]),
            2,
        ),
        t0,
    );
    let peer = |n: &Node| PeerConfig {
        node_key: n.public_key(),
        disco_key: n.disco_public_key(),
        home_region: 1,
        endpoints: vec!["203.0.113.7:41641".parse().expect("addr")],
        allowed_ips: vec!["100.64.0.0/10".parse().expect("net")],
    };
    let _ = a.add_peer(t0, peer(&b));
    let _ = b.add_peer(t0, peer(&a));
    let secrets: Vec<[u8; 32]> = [&keys[0], &keys[1]]
        .iter()
        .map(|k| {
            let mut c = **k;
            // X25519 clamping, as stored.
            c[0] &= 248;
            c[31] &= 127;
            c[31] |= 64;
            c
        })
        .chain(keys[..2].iter().copied())
        .collect();
    let check_bytes = |bytes: &[u8]| {
        for k in &secrets {
            assert!(
                !bytes.windows(32).any(|w| w == k),
                "a private key went on a wire"
            );
        }
    };
    let check = |t: &Transmit| match t {
        Transmit::Udp { payload, .. } | Transmit::Derp { payload, .. } => check_bytes(payload),
    };
    let mut now = t0;
    let from: SocketAddr = "203.0.113.7:41641".parse().expect("addr");
    let b_key = b.public_key();
    let (mut out, mut delivered, mut packets) =
        (TransmitBatch::new(), PacketBatch::new(), PacketBatch::new());
    let mut rest = data;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], rest[1] as usize);
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        // The high bit: the body is a batch of several inputs (or packets), through the batch
        // calls, split in as many pieces as its first byte says.
        if kind & 0x80 != 0 {
            let (n, body) = body
                .split_first()
                .map_or((1, body), |(n, b)| (*n as usize % 8 + 1, b));
            let piece = body.len().div_ceil(n).max(1);
            let pieces = body.chunks(piece);
            match (kind & 0x7f) % 3 {
                0 => {
                    let inputs = pieces.enumerate().map(|(k, data)| match k % 3 {
                        0 => Input::Udp {
                            socket: 0,
                            from,
                            data,
                        },
                        1 => Input::Udp {
                            socket: burrow_node::RELAY_SOCKET,
                            from,
                            data,
                        },
                        _ => Input::Derp {
                            region: 1,
                            from: b_key,
                            data,
                        },
                    });
                    let o = a.handle_batch(now, inputs, &mut out, &mut delivered);
                    assert!(o.refused <= o.handled && o.handled <= n);
                }
                1 => {
                    packets.clear();
                    for p in pieces {
                        packets.push(b_key, p);
                    }
                    let o = a.send_batch(now, &packets, &mut out, &mut delivered);
                    assert_eq!(o.handled, packets.len());
                }
                _ => {
                    now += Duration::from_millis(100 * (len as u64 + 1));
                    a.handle_timeout(now);
                    a.poll_transmits(&mut out);
                }
            }
            // Every datagram is in exactly one run, whole, each socket's in order; and new
            // flows leave in the order they were made.
            let udp: Vec<(Dest, &[u8])> = out
                .iter()
                .filter(|(d, _)| matches!(d, Dest::Udp { .. }))
                .collect();
            let in_runs: Vec<(Dest, &[u8])> = out
                .udp_runs(64)
                .flat_map(|r| {
                    let dest = Dest::Udp {
                        socket: r.socket,
                        dst: r.dst,
                    };
                    r.segments().map(move |d| (dest, d))
                })
                .collect();
            let of = |v: &[(Dest, &[u8])], s: u16| -> Vec<Vec<u8>> {
                v.iter()
                    .filter(|(d, _)| matches!(d, Dest::Udp { socket, .. } if *socket == s))
                    .map(|(_, b)| b.to_vec())
                    .collect()
            };
            for s in udp.iter().filter_map(|(d, _)| match d {
                Dest::Udp { socket, .. } => Some(*socket),
                Dest::Derp { .. } => None,
            }) {
                assert_eq!(
                    of(&udp, s),
                    of(&in_runs, s),
                    "socket {s}'s datagrams in order"
                );
            }
            assert_eq!(udp.len(), in_runs.len(), "every datagram in one run");
            let firsts = |v: &[(Dest, &[u8])]| {
                let mut seen: Vec<Dest> = Vec::new();
                for (d, _) in v {
                    if !seen.contains(d) {
                        seen.push(*d);
                    }
                }
                seen
            };
            assert_eq!(
                firsts(&udp),
                firsts(&in_runs),
                "flows leave in the order made"
            );
            for (_, bytes) in out.iter() {
                check_bytes(bytes);
            }
            out.clear();
            delivered.clear();
            while a.poll_event().is_some() {}
            continue;
        }
        match kind % 6 {
            5 => drop(a.handle_input(
                now,
                Input::Udp {
                    socket: burrow_node::RELAY_SOCKET,
                    from,
                    data: body,
                },
            )),
            0 => drop(a.handle_input(
                now,
                Input::Udp {
                    socket: 0,
                    from,
                    data: body,
                },
            )),
            1 => drop(a.handle_input(
                now,
                Input::Udp {
                    socket: 1 + (len as u16 % 4),
                    from,
                    data: body,
                },
            )),
            2 => drop(a.handle_input(
                now,
                Input::Derp {
                    region: 1,
                    from: b_key,
                    data: body,
                },
            )),
            3 => {
                now += Duration::from_millis(100 * (len as u64 + 1));
                a.handle_timeout(now);
            }
            _ => drop(a.send(now, &b_key, body)),
        }
        while let Some(t) = a.poll_transmit() {
            check(&t);
        }
        while a.poll_event().is_some() {}
    }
    // Still carries b's packet over DERP.
    let packet = [
        0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 100, 64, 0, 1, 100, 64, 0, 2,
    ];
    b.send(now, &a.public_key(), &packet).expect("known peer");
    let mut got = false;
    for _ in 0..6 {
        while let Some(t) = b.poll_transmit() {
            if let Transmit::Derp { payload, .. } = t {
                let _ = a.handle_input(
                    now,
                    Input::Derp {
                        region: 1,
                        from: b_key,
                        data: &payload,
                    },
                );
            }
        }
        while let Some(t) = a.poll_transmit() {
            check(&t);
            if let Transmit::Derp { payload, .. } = t {
                let _ = b.handle_input(
                    now,
                    Input::Derp {
                        region: 1,
                        from: a.public_key(),
                        data: &payload,
                    },
                );
            }
        }
        while let Some(e) = a.poll_event() {
            got |= matches!(e, Event::Packet { ref data, .. } if data[..] == packet[..]);
        }
    }
    assert!(
        got,
        "after the fuzz input, a packet over DERP no longer arrives"
    );
}

/// Feeds arbitrary bytes to every UPnP decoder (SSDP, HTTP, description, SOAP, both sides).
/// None may panic; what a server-side decoder accepts re-encodes to something that decodes
/// to the same value.
pub fn upnp_decode(data: &[u8]) {
    use burrow_portmap::upnp::{description, http, soap, ssdp, Action, HttpResponse, HttpUrl};
    use burrow_portmap::TransportProtocol;
    let base = HttpUrl::parse("http://192.168.1.1:5000/rootDesc.xml").expect("valid base");
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(url) = HttpUrl::parse(text) {
            assert_eq!(HttpUrl::parse(&url.to_string()).as_ref(), Ok(&url));
        }
        let _ = base.join(text);
    }
    if let Ok(r) = ssdp::parse_response(data) {
        let again = ssdp::parse_response(&ssdp::response(
            &r.location,
            &r.search_target,
            "uuid:x",
            "s",
        ))
        .expect("re-encoded SSDP answer parses");
        assert_eq!(again.location, r.location);
        assert_eq!(again.search_target, r.search_target);
    }
    if let Ok(st) = ssdp::parse_m_search(data) {
        assert_eq!(ssdp::parse_m_search(&ssdp::m_search(&st)), Ok(st));
    }
    let mapping = soap::PortMappingRequest {
        remote_host: None,
        external_port: 41641,
        protocol: TransportProtocol::Udp,
        internal_port: 41641,
        internal_client: std::net::Ipv4Addr::new(192, 168, 1, 2),
        description: "burrow".into(),
        lease_seconds: 7200,
    };
    let actions = [
        Action::GetExternalIpAddress,
        Action::GetStatusInfo,
        Action::AddPortMapping(mapping.clone()),
        Action::AddAnyPortMapping(mapping),
        Action::DeletePortMapping {
            external_port: 41641,
            protocol: TransportProtocol::Udp,
        },
    ];
    let mut bodies = vec![data.to_vec()];
    for parsed in [
        http::parse_response(data).ok().flatten(),
        http::parse_response_at_eof(data).ok(),
    ]
    .into_iter()
    .flatten()
    {
        bodies.push(parsed.body);
    }
    for body in &bodies {
        for status in [200, 500] {
            let response = HttpResponse {
                status,
                body: body.clone(),
            };
            for action in &actions {
                let _ = soap::decode_response(action, &response);
            }
        }
        if let Ok(d) = description::parse_description(body, &base) {
            assert!(
                d.best_service().is_some(),
                "a parsed description has a service"
            );
            let paths: Vec<_> = d
                .services
                .iter()
                .map(|s| (s.kind, s.control_url.path.clone()))
                .collect();
            let paths: Vec<_> = paths.iter().map(|(k, p)| (*k, p.as_str())).collect();
            let again = description::parse_description(
                &description::render("x", d.igd_version, &paths),
                &base,
            )
            .expect("a rendered description parses");
            let kinds = |d: &description::DeviceDescription| {
                d.services.iter().map(|s| s.kind).collect::<Vec<_>>()
            };
            assert_eq!(kinds(&again), kinds(&d));
        }
    }
    if let Ok(Some(req)) = http::parse_request(data) {
        let _ = soap::decode_request(req.soap_action.as_deref(), &req.body);
    }
    if let Ok((service_type, action)) = soap::decode_request(None, data) {
        let again = soap::decode_request(None, &soap::encode_request(&service_type, &action))
            .expect("a re-encoded call decodes");
        assert_eq!(again, (service_type, action));
    }
}

/// NAT-PMP requests and responses: whatever decodes re-encodes to bytes that decode the same.
pub fn pmp_decode(data: &[u8]) {
    use burrow_portmap::pmp::{Request, Response};
    if let Ok(r) = Request::decode(data) {
        assert_eq!(Request::decode(&r.to_bytes()), Ok(r));
    }
    if let Ok(r) = Response::decode(data) {
        assert_eq!(Response::decode(&r.to_bytes()), Ok(r));
    }
}

/// PCP requests and responses (with options): whatever decodes re-encodes to bytes that
/// decode the same.
pub fn pcp_decode(data: &[u8]) {
    use burrow_portmap::pcp::{Request, Response};
    if let Ok(r) = Request::decode(data) {
        assert_eq!(Request::decode(&r.to_bytes()), Ok(r));
    }
    if let Ok(r) = Response::decode(data) {
        assert_eq!(Response::decode(&r.to_bytes()), Ok(r));
    }
}

/// Drives a port mapper with a script of gateway answers (kind, length, payload): NAT-PMP/PCP
/// datagrams from the gateway, SSDP answers, HTTP answers to its latest request, datagrams from
/// strangers, PCP over IPv6 from the gateway (the pinhole), time passing, recheck and
/// shutdown. It must not panic, must send only to the gateway (either address) or SSDP's
/// group, and must never follow a URL off the gateway.
pub fn portmap_client(data: &[u8]) {
    use burrow_portmap::{Input, PinholeConfig, PortMapper, PortMapperConfig, Transmit};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::time::{Duration, Instant};
    let gw = Ipv4Addr::new(192, 168, 1, 1);
    let gw6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    let t0 = Instant::now();
    let mut now = t0;
    let mut config = PortMapperConfig::new(gw, Ipv4Addr::new(192, 168, 1, 10), 41641, 1);
    config.pinhole = Some(PinholeConfig {
        gateway: gw6,
        local_ip: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10),
        scope_id: 0,
    });
    let mut m = PortMapper::new(config);
    m.start(now);
    let mut last_http = None;
    let mut rest = data;
    let mut steps = 0;
    while rest.len() >= 2 && steps < 256 {
        steps += 1;
        let (kind, len) = (rest[0], usize::from(rest[1]));
        let payload = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        let gw_port = |p| SocketAddr::from((gw, p));
        let _ = match kind % 8 {
            0 => m.handle_input(
                now,
                Input::Udp {
                    from: gw_port(5351),
                    data: payload,
                },
            ),
            1 => m.handle_input(
                now,
                Input::Udp {
                    from: gw_port(1900),
                    data: payload,
                },
            ),
            2 => match last_http.take() {
                Some(id) => m.handle_input(
                    now,
                    Input::Http {
                        id,
                        response: Some(payload),
                    },
                ),
                None => Ok(()),
            },
            3 => {
                let from = SocketAddr::from(([192, 168, 1, 66], 5351));
                m.handle_input(
                    now,
                    Input::Udp {
                        from,
                        data: payload,
                    },
                )
            }
            4 => {
                let step = u64::from(payload.first().copied().unwrap_or(1)) * 100;
                now += Duration::from_millis(step);
                m.handle_timeout(now);
                Ok(())
            }
            5 => {
                m.start(now);
                Ok(())
            }
            6 => {
                m.shutdown(now);
                Ok(())
            }
            _ => m.handle_input(
                now,
                Input::Udp {
                    from: SocketAddr::from((gw6, 5351)),
                    data: payload,
                },
            ),
        };
        while let Some(t) = m.poll_transmit() {
            match t {
                Transmit::Udp { dst, .. } => assert!(
                    dst.ip() == std::net::IpAddr::V4(gw)
                        || dst == SocketAddr::from((gw6, 5351))
                        || dst == SocketAddr::V4(burrow_portmap::upnp::ssdp::SSDP_ADDR),
                    "sent to {dst}"
                ),
                Transmit::Http { id, dst, .. } => {
                    assert_eq!(dst.ip(), std::net::IpAddr::V4(gw), "HTTP to {dst}");
                    last_http = Some(id);
                }
            }
        }
        while m.poll_event().is_some() {}
        while m.poll_pinhole_event().is_some() {}
        if let Some(t) = m.poll_timeout() {
            assert!(t >= t0);
        }
    }
}
