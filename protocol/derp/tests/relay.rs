//! The relay and its clients, in memory: routing, handshakes, bad input, slow readers,
//! rate limits, keepalives, watchers and mesh. Admission under attack (replays, verification,
//! client caps, mesh keys) is in `relay_attacks.rs`.

mod common;

use std::time::Duration;

use burrow_derp::server::DISCO_MAGIC;
use burrow_derp::{
    Client, ClientEvent, CloseReason, ConnId, DropReason, Frame, MeshLink, PeerGoneReason,
    ServerConfig,
};
use common::{key, Net, REGION};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

#[test]
fn clients_authenticate_and_relay_both_ways() {
    let mut net = Net::new(ServerConfig::new(key(9)));
    let a = net.connect(1, key(1), None);
    let b = net.connect(2, key(2), None);
    assert!(matches!(net.events(a)[..], [ClientEvent::Connected { .. }]));
    assert!(matches!(net.events(b)[..], [ClientEvent::Connected { .. }]));
    net.clients
        .get_mut(&a)
        .unwrap()
        .send_packet(&key(2).public_key(), b"hello b");
    net.clients
        .get_mut(&b)
        .unwrap()
        .send_packet(&key(1).public_key(), b"hello a");
    net.pump();
    assert_eq!(
        net.events(b),
        vec![ClientEvent::Packet {
            src: key(1).public_key(),
            data: b"hello b".to_vec()
        }]
    );
    assert_eq!(
        net.events(a),
        vec![ClientEvent::Packet {
            src: key(2).public_key(),
            data: b"hello a".to_vec()
        }]
    );
    assert_eq!(net.server.stats().packets_relayed, 2);
    assert_eq!(net.server.stats().clients, 2);
}

#[test]
fn packets_queued_before_the_handshake_are_sent_after_it() {
    let mut net = Net::new(ServerConfig::new(key(9)));
    let b = net.connect(2, key(2), None);
    let conn = ConnId(1);
    let mut early = Client::new(key(1), None, None, ChaCha20Rng::seed_from_u64(5));
    early.send_packet(&key(2).public_key(), b"early");
    net.clients.insert(conn, early);
    net.server.accept(net.now, conn);
    net.pump();
    assert!(net.events(b).contains(&ClientEvent::Packet {
        src: key(1).public_key(),
        data: b"early".to_vec()
    }));
}

#[test]
fn queued_frames_leave_in_one_write_whole_and_in_order() {
    let mut net = Net::new(ServerConfig::new(key(9)));
    let a = net.connect(1, key(1), None);
    let b = net.connect(2, key(2), None);
    net.events(a);
    net.events(b);
    let client = net.clients.get_mut(&a).unwrap();
    for i in 0..10u8 {
        client.send_packet(&key(2).public_key(), &[i; 1000]);
    }
    // A byte budget cuts between frames, never inside one.
    let mut first = Vec::new();
    assert!(client.write_transmit(&mut first, 2500));
    let mut rest = Vec::new();
    assert!(client.write_transmit(&mut rest, 1 << 20));
    assert!(
        !client.write_transmit(&mut Vec::new(), 1 << 20),
        "nothing left"
    );
    assert!(client.poll_transmit().is_none());
    let frame = 5 + 32 + 1000;
    assert_eq!(first.len(), 3 * frame, "frames up to the budget, whole");
    assert_eq!(rest.len(), 7 * frame);
    net.server.handle_bytes(net.now, a, &first);
    net.server.handle_bytes(net.now, a, &rest);
    net.pump();
    let got: Vec<_> = net
        .events(b)
        .into_iter()
        .map(|e| match e {
            ClientEvent::Packet { src, data } => {
                assert_eq!(src, key(1).public_key());
                data
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(got, (0..10u8).map(|i| vec![i; 1000]).collect::<Vec<_>>());
}

#[test]
fn unknown_destination_gets_peer_gone_for_disco_at_most_once_a_second() {
    let mut net = Net::new(ServerConfig::new(key(9)));
    let a = net.connect(1, key(1), None);
    net.events(a);
    // Data to nobody: dropped and counted, no answer (as Tailscale).
    net.clients
        .get_mut(&a)
        .unwrap()
        .send_packet(&key(7).public_key(), b"anyone?");
    net.pump();
    assert!(net.events(a).is_empty());
    // A disco ping to nobody: one PeerGone(NotHere), however many are sent in that second.
    let mut disco = DISCO_MAGIC.to_vec();
    disco.extend_from_slice(b"ping");
    for _ in 0..5 {
        net.clients
            .get_mut(&a)
            .unwrap()
            .send_packet(&key(7).public_key(), &disco);
    }
    net.pump();
    assert_eq!(
        net.events(a),
        vec![ClientEvent::PeerGone {
            key: key(7).public_key(),
            reason: PeerGoneReason::NotHere
        }]
    );
    assert_eq!(
        net.server
            .stats()
            .drops
            .get(&DropReason::UnknownDestination),
        Some(&6)
    );
}

#[test]
fn a_ping_flood_keeps_one_pong_and_silent_connections_time_out() {
    let mut net = Net::new(ServerConfig::new(key(9)));
    let a = net.connect(1, key(1), None);
    net.events(a);
    for i in 0..1000u32 {
        let mut d = [0u8; 8];
        d[..4].copy_from_slice(&i.to_le_bytes());
        net.server
            .handle_bytes(net.now, a, &Frame::Ping(d).to_vec());
    }
    net.pump();
    assert_eq!(net.events(a).len(), 1, "only the latest Pong was kept");
    // A connection that never sends ClientInfo is closed after the handshake timeout.
    let silent = ConnId(50);
    net.server.accept(net.now, silent);
    let _ = net.server.poll_transmit(net.now);
    net.now += burrow_derp::server::HANDSHAKE_TIMEOUT;
    net.server.handle_timeout(net.now);
    assert!(
        matches!(net.server.poll_close(), Some((c, CloseReason::BadClientInfo(_))) if c == silent)
    );
}

#[test]
fn bad_input_closes_only_that_connection() {
    let mut net = Net::new(ServerConfig::new(key(9)));
    let a = net.connect(1, key(1), None);
    let b = net.connect(2, key(2), None);
    let bad = net.connect(3, key(3), None);
    // An oversized length.
    net.server
        .handle_bytes(net.now, bad, &[0x04, 0x7f, 0xff, 0xff, 0xff]);
    net.pump();
    assert!(matches!(net.closed.last(), Some((c, CloseReason::Malformed(_))) if *c == bad));
    // ClientInfo sealed to the wrong server key.
    let wrong = ConnId(4);
    net.clients.insert(
        wrong,
        Client::new(key(4), None, None, ChaCha20Rng::seed_from_u64(4)),
    );
    net.server.accept(net.now, wrong);
    let _server_key = net.server.poll_transmit(net.now);
    let bogus = Frame::ClientInfo {
        key: key(4).public_key().0,
        nonce: [0; 24],
        sealed: &[0; 40],
    }
    .to_vec();
    net.server.handle_bytes(net.now, wrong, &bogus);
    net.pump();
    assert!(matches!(net.closed.last(), Some((c, CloseReason::BadClientInfo(_))) if *c == wrong));
    // A data frame before ClientInfo.
    let early = ConnId(5);
    net.server.accept(net.now, early);
    net.server.handle_bytes(
        net.now,
        early,
        &Frame::SendPacket {
            dst: [0; 32],
            packet: b"x",
        }
        .to_vec(),
    );
    net.pump();
    assert!(matches!(net.closed.last(), Some((c, CloseReason::BadClientInfo(_))) if *c == early));
    // The others still relay.
    net.events(a);
    net.events(b);
    net.clients
        .get_mut(&a)
        .unwrap()
        .send_packet(&key(2).public_key(), b"still here");
    net.pump();
    assert_eq!(
        net.events(b),
        vec![ClientEvent::Packet {
            src: key(1).public_key(),
            data: b"still here".to_vec()
        }]
    );
    assert_eq!(net.server.stats().bad_connections, 3);
}

#[test]
fn newer_connection_for_a_key_replaces_the_older() {
    let mut net = Net::new(ServerConfig::new(key(9)));
    let a = net.connect(1, key(1), None);
    let old_b = net.connect(2, key(2), None);
    let new_b = net.connect(3, key(2), None);
    assert!(net.closed.contains(&(old_b, CloseReason::Replaced)));
    net.events(new_b);
    net.clients
        .get_mut(&a)
        .unwrap()
        .send_packet(&key(2).public_key(), b"to the new one");
    net.pump();
    assert_eq!(
        net.events(new_b),
        vec![ClientEvent::Packet {
            src: key(1).public_key(),
            data: b"to the new one".to_vec()
        }]
    );
}

#[test]
fn a_slow_reader_loses_its_own_packets_only_and_disco_has_its_own_queue() {
    let mut config = ServerConfig::new(key(9));
    config.queue_limit = 4;
    config.disco_queue_limit = 2;
    let mut net = Net::new(config);
    let a = net.connect(1, key(1), None);
    let slow = net.connect(2, key(2), None);
    let c = net.connect(3, key(3), None);
    for x in [a, slow, c] {
        net.events(x);
    }
    // Queue straight into the server without letting it write to `slow`.
    let send = |net: &mut Net, from: ConnId, to: u8, data: &[u8]| {
        let f = Frame::SendPacket {
            dst: key(to).public_key().0,
            packet: data,
        }
        .to_vec();
        net.server.handle_bytes(net.now, from, &f);
    };
    for i in 0..10u8 {
        send(&mut net, a, 2, &[i]);
    }
    let mut disco = DISCO_MAGIC.to_vec();
    disco.push(1);
    send(&mut net, a, 2, &disco);
    send(&mut net, a, 3, b"to c");
    let s = net.server.stats();
    assert_eq!(s.drops.get(&DropReason::QueueFull), Some(&6));
    net.pump();
    let got = net.events(slow);
    assert_eq!(got.len(), 5, "4 data + 1 disco: {got:?}");
    assert!(got
        .iter()
        .any(|e| matches!(e, ClientEvent::Packet { data, .. } if data.starts_with(DISCO_MAGIC))));
    assert_eq!(
        net.events(c),
        vec![ClientEvent::Packet {
            src: key(1).public_key(),
            data: b"to c".to_vec()
        }]
    );
}

#[test]
fn rate_limit_drops_the_excess() {
    let mut config = ServerConfig::new(key(9));
    config.rate_limit = Some((1000, 1500));
    let mut net = Net::new(config);
    let a = net.connect(1, key(1), None);
    let b = net.connect(2, key(2), None);
    net.events(b);
    for _ in 0..4 {
        net.clients
            .get_mut(&a)
            .unwrap()
            .send_packet(&key(2).public_key(), &[0; 500]);
    }
    net.pump();
    assert_eq!(net.events(b).len(), 3, "1,500-byte burst");
    net.now += Duration::from_secs(1);
    net.clients
        .get_mut(&a)
        .unwrap()
        .send_packet(&key(2).public_key(), &[0; 500]);
    net.pump();
    assert_eq!(net.events(b).len(), 1, "refilled");
    assert_eq!(
        net.server.stats().drops.get(&DropReason::RateLimited),
        Some(&1)
    );
}

#[test]
fn ping_pong_keepalive_and_restart() {
    let mut net = Net::new(ServerConfig::new(key(9)));
    let a = net.connect(1, key(1), None);
    net.events(a);
    net.clients
        .get_mut(&a)
        .unwrap()
        .ping([1, 2, 3, 4, 5, 6, 7, 8]);
    net.pump();
    assert_eq!(
        net.events(a),
        vec![ClientEvent::Pong([1, 2, 3, 4, 5, 6, 7, 8])]
    );
    let due = net.server.poll_timeout().unwrap();
    assert_eq!(due, net.now + Duration::from_secs(60));
    net.now = due;
    net.server.handle_timeout(net.now);
    let (conn, bytes) = net.server.poll_transmit(net.now).unwrap();
    assert_eq!((conn, &bytes[..]), (a, &Frame::KeepAlive.to_vec()[..]));
    net.server
        .announce_restart(Duration::from_millis(500), Duration::from_secs(10));
    net.pump();
    assert_eq!(
        net.events(a),
        vec![ClientEvent::Restarting {
            reconnect_in: Duration::from_millis(500),
            try_for: Duration::from_secs(10)
        }]
    );
}

#[test]
fn watchers_need_the_mesh_key_and_hear_arrivals_and_departures() {
    let config = ServerConfig::new(key(9)).with_mesh_key(REGION).unwrap();
    let mut net = Net::new(config);
    let a = net.connect(1, key(1), None);
    // Not a mesh peer: WatchConns closes the connection.
    net.clients.get_mut(&a).unwrap().watch_conns();
    net.pump();
    assert!(matches!(net.closed.last(), Some((c, CloseReason::NotMeshPeer(_))) if *c == a));
    // The wrong mesh key makes an ordinary client (as Tailscale): it may not watch.
    let guess = net.connect(2, key(2), Some("guess"));
    net.events(guess);
    net.clients.get_mut(&guess).unwrap().watch_conns();
    net.pump();
    assert!(matches!(net.closed.last(), Some((c, CloseReason::NotMeshPeer(_))) if *c == guess));
    let b = net.connect(3, key(3), None);
    let w = net.connect(4, key(4), Some(REGION));
    net.events(w);
    net.clients.get_mut(&w).unwrap().watch_conns();
    net.pump();
    assert_eq!(
        net.events(w),
        vec![ClientEvent::PeerPresent {
            key: key(3).public_key(),
            endpoint: None
        }]
    );
    let c = net.connect(5, key(5), None);
    net.pump();
    assert_eq!(
        net.events(w),
        vec![ClientEvent::PeerPresent {
            key: key(5).public_key(),
            endpoint: None
        }]
    );
    net.server.disconnected(c);
    net.clients.remove(&c);
    net.pump();
    assert_eq!(
        net.events(w),
        vec![ClientEvent::PeerGone {
            key: key(5).public_key(),
            reason: PeerGoneReason::Disconnected
        }]
    );
    let _ = b;
}

#[test]
fn mesh_forwards_one_hop_between_servers_of_a_region() {
    let mesh = || ServerConfig::new(key(9)).with_mesh_key(REGION).unwrap();
    let mut s1 = Net::new(mesh());
    let mut s2 = Net::new(ServerConfig {
        private_key: key(8),
        ..mesh()
    });
    let a = s1.connect(1, key(1), None);
    let b = s2.connect(1, key(2), None);
    s1.events(a);
    s2.events(b);
    // s1 runs a mesh client to s2 and watches its clients.
    let link = MeshLink(0);
    let watcher = s2.connect(99, key(9), Some(REGION));
    s2.events(watcher);
    s2.clients.get_mut(&watcher).unwrap().watch_conns();
    s2.pump();
    s1.server.mesh_link_up(link);
    for e in s2.events(watcher) {
        if let ClientEvent::PeerPresent { key, .. } = e {
            s1.server.mesh_peer(link, key.0, true);
        }
    }
    // a (on s1) sends to b (on s2): s1 forwards over the link.
    s1.clients
        .get_mut(&a)
        .unwrap()
        .send_packet(&key(2).public_key(), b"across the mesh");
    s1.pump();
    let (l, bytes) = s1.server.poll_mesh_transmit().expect("forwarded");
    assert_eq!(l, link);
    s2.server.handle_bytes(s2.now, watcher, &bytes);
    s2.pump();
    assert_eq!(
        s2.events(b),
        vec![ClientEvent::Packet {
            src: key(1).public_key(),
            data: b"across the mesh".to_vec()
        }]
    );
    assert_eq!(s1.server.stats().mesh_peers, 1);
}
