//! The relay and its clients, in memory: routing, handshakes, bad input, slow readers, mesh.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use burrow_derp::server::DISCO_MAGIC;
use burrow_derp::{
    Client, ClientEvent, CloseReason, ConnId, DropReason, Frame, MeshKey, MeshKeyError, MeshLink,
    PeerGoneReason, Server, ServerConfig, Verdict,
};
use burrow_wg::PrivateKey;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

struct Net {
    server: Server,
    clients: BTreeMap<ConnId, Client>,
    closed: Vec<(ConnId, CloseReason)>,
    now: Instant,
    /// Connections whose reads the driver pauses (slow readers).
    paused: Vec<ConnId>,
}

/// A region's mesh key (long enough to be accepted).
const REGION: &str = "region-secret-0123456789abcdef0123456789";

fn key(n: u8) -> PrivateKey {
    PrivateKey::from_bytes([n; 32])
}

impl Net {
    fn new(config: ServerConfig) -> Self {
        Net {
            server: Server::new(config, ChaCha20Rng::seed_from_u64(1)),
            clients: BTreeMap::new(),
            closed: Vec::new(),
            now: Instant::now(),
            paused: Vec::new(),
        }
    }

    fn connect(&mut self, id: u64, k: PrivateKey, mesh_key: Option<&str>) -> ConnId {
        let conn = ConnId(id);
        let server_key = self.server.public_key();
        self.clients.insert(
            conn,
            Client::new(
                k,
                Some(server_key),
                mesh_key.map(str::to_owned),
                ChaCha20Rng::seed_from_u64(id),
            ),
        );
        self.server.accept(self.now, conn);
        self.pump();
        conn
    }

    /// Connects from a source address (for the per-source caps).
    fn connect_from(&mut self, id: u64, k: PrivateKey, ip: &str) -> ConnId {
        let conn = ConnId(id);
        let server_key = self.server.public_key();
        self.clients.insert(
            conn,
            Client::new(k, Some(server_key), None, ChaCha20Rng::seed_from_u64(id)),
        );
        self.server
            .accept_from(self.now, conn, Some(ip.parse().unwrap()));
        self.pump();
        conn
    }

    /// Connects and returns the exact ClientInfo frame the client sent (what an on-path
    /// attacker could capture).
    fn connect_capturing(&mut self, id: u64, k: PrivateKey) -> (ConnId, Vec<u8>) {
        let conn = ConnId(id);
        let mut client = Client::new(
            k,
            Some(self.server.public_key()),
            None,
            ChaCha20Rng::seed_from_u64(id),
        );
        self.server.accept(self.now, conn);
        let server_key = self.server.poll_transmit_for(self.now, conn).unwrap();
        client.handle_bytes(&server_key).unwrap();
        let client_info = client.poll_transmit().unwrap();
        self.server.handle_bytes(self.now, conn, &client_info);
        self.clients.insert(conn, client);
        self.pump();
        (conn, client_info)
    }

    /// Moves bytes like `pump`, but never writes to `skip` (a watcher that is not reading).
    fn pump_except(&mut self, skip: ConnId) {
        loop {
            let mut moved = false;
            let ids: Vec<ConnId> = self
                .clients
                .keys()
                .copied()
                .filter(|c| *c != skip)
                .collect();
            for conn in ids {
                while let Some(bytes) = self.server.poll_transmit_for(self.now, conn) {
                    moved = true;
                    if let Some(c) = self.clients.get_mut(&conn) {
                        c.handle_bytes(&bytes).unwrap();
                    }
                }
            }
            for (&conn, c) in self.clients.iter_mut() {
                while let Some(b) = c.poll_transmit() {
                    moved = true;
                    self.server.handle_bytes(self.now, conn, &b);
                }
            }
            while let Some((conn, reason)) = self.server.poll_close() {
                self.clients.remove(&conn);
                self.closed.push((conn, reason));
            }
            if !moved {
                return;
            }
        }
    }

    fn is_connected(&mut self, conn: ConnId) -> bool {
        self.clients.contains_key(&conn) && self.server.is_admitted(conn)
    }

    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some((conn, bytes)) = self.server.poll_transmit(self.now) {
                if self.paused.contains(&conn) {
                    // The bytes are written; the client just has not read them yet.
                    self.clients.get_mut(&conn).map(|c| c.handle_bytes(&bytes));
                    continue;
                }
                moved = true;
                if let Some(c) = self.clients.get_mut(&conn) {
                    c.handle_bytes(&bytes)
                        .expect("client accepts the server's frames");
                }
            }
            for (&conn, c) in self.clients.iter_mut() {
                while let Some(b) = c.poll_transmit() {
                    moved = true;
                    self.server.handle_bytes(self.now, conn, &b);
                }
            }
            while let Some((conn, reason)) = self.server.poll_close() {
                self.clients.remove(&conn);
                self.closed.push((conn, reason));
            }
            if !moved {
                return;
            }
        }
    }

    fn events(&mut self, conn: ConnId) -> Vec<ClientEvent> {
        let c = self.clients.get_mut(&conn).unwrap();
        std::iter::from_fn(|| c.poll_event()).collect()
    }
}

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

fn send(net: &mut Net, from: ConnId, to: u8, data: &[u8]) {
    net.clients
        .get_mut(&from)
        .unwrap()
        .send_packet(&key(to).public_key(), data);
    net.pump();
}

fn got_packet(net: &mut Net, conn: ConnId, data: &[u8]) -> bool {
    net.events(conn)
        .iter()
        .any(|e| matches!(e, ClientEvent::Packet { data: d, .. } if d == data))
}

/// Audit #10: a captured ClientInfo replayed on a new connection is refused, and the real
/// client keeps its connection and its packets (it used to be kicked off as "replaced").
#[test]
fn a_replayed_client_info_is_refused_and_does_not_kick_the_real_client() {
    let mut net = Net::new(ServerConfig::new(key(9)));
    let (a, captured) = net.connect_capturing(1, key(1));
    let b = net.connect(2, key(2), None);
    assert!(net.is_connected(a));
    let replay = ConnId(66);
    net.server.accept(net.now, replay);
    let _server_key = net.server.poll_transmit_for(net.now, replay);
    net.server.handle_bytes(net.now, replay, &captured);
    assert_eq!(
        net.server.poll_transmit_for(net.now, replay),
        None,
        "no ServerInfo"
    );
    assert_eq!(
        net.server.poll_close(),
        Some((replay, CloseReason::Replayed))
    );
    assert!(net.is_connected(a), "the real client was not kicked");
    net.events(a);
    send(&mut net, b, 1, b"still yours");
    assert!(got_packet(&mut net, a, b"still yours"));
    // After the real client left, the same bytes are still refused (within the window).
    net.server.disconnected(a);
    net.clients.remove(&a);
    net.now += Duration::from_secs(60);
    let again = ConnId(67);
    net.server.accept(net.now, again);
    net.server.handle_bytes(net.now, again, &captured);
    assert_eq!(
        net.server.poll_close(),
        Some((again, CloseReason::Replayed))
    );
    assert_eq!(net.server.stats().replayed_client_infos, 2);
    // A fresh handshake with the same key (new nonce) is fine.
    let fresh = net.connect(3, key(1), None);
    assert!(net.is_connected(fresh));
}

/// Audit #10: with verification on, a key is held (nothing relayed, no ServerInfo) until the
/// driver's verdict; verdicts are cached; mesh peers are not asked.
#[test]
fn verification_holds_a_key_until_the_verdict_and_caches_it() {
    let mut config = ServerConfig::new(key(9)).with_mesh_key(REGION).unwrap();
    config.verify_clients = true;
    let mut net = Net::new(config);
    let a = net.connect(1, key(1), None);
    let a2 = net.connect(2, key(1), None);
    let b = net.connect(3, key(2), None);
    assert!(!net.server.is_admitted(a) && !net.server.is_admitted(b));
    assert!(net.events(a).is_empty(), "no ServerInfo before the verdict");
    // One question per key, however many connections wait for it.
    let asked: Vec<_> = std::iter::from_fn(|| net.server.poll_verify()).collect();
    assert_eq!(asked, vec![key(1).public_key(), key(2).public_key()]);
    assert_eq!(net.server.stats().pending_verifications, 2);
    // A frame pipelined before the verdict waits, and is handled once admitted.
    let early = Frame::SendPacket {
        dst: key(7).public_key().0,
        packet: b"early",
    }
    .to_vec();
    net.server.handle_bytes(net.now, a2, &early);
    net.server
        .verified(net.now, &key(1).public_key(), Verdict::Allowed);
    net.server
        .verified(net.now, &key(2).public_key(), Verdict::Denied);
    net.pump();
    assert!(
        net.is_connected(a2),
        "admitted (the newer connection replaces the older)"
    );
    assert!(net.closed.contains(&(a, CloseReason::Replaced)));
    assert!(matches!(net.closed.last(), Some((c, CloseReason::NotVerified(_))) if *c == b));
    assert_eq!(
        net.server
            .stats()
            .drops
            .get(&DropReason::UnknownDestination),
        Some(&1),
        "the pipelined packet was handled"
    );
    // Cached: the allowed key gets in at once, the denied one is refused at once.
    let a3 = net.connect(4, key(1), None);
    assert!(net.is_connected(a3));
    let b2 = net.connect(5, key(2), None);
    assert!(matches!(net.closed.last(), Some((c, CloseReason::NotVerified(_))) if *c == b2));
    assert_eq!(net.server.poll_verify(), None);
    // A denial is forgotten after its TTL; no answer at all is never cached.
    net.now += burrow_derp::server::VERIFY_DENY_TTL;
    let b3 = net.connect(6, key(2), None);
    assert_eq!(net.server.poll_verify(), Some(key(2).public_key()));
    net.server
        .verified(net.now, &key(2).public_key(), Verdict::Unknown);
    net.pump();
    assert!(matches!(net.closed.last(), Some((c, CloseReason::NotVerified(_))) if *c == b3));
    let _b4 = net.connect(7, key(2), None);
    assert_eq!(net.server.poll_verify(), Some(key(2).public_key()));
    // A mesh peer is never asked about.
    let m = net.connect(8, key(8), Some(REGION));
    assert!(net.is_connected(m));
    assert_eq!(net.server.poll_verify(), None);
    // A connection whose verdict never comes times out with the handshake.
    net.now += burrow_derp::server::HANDSHAKE_TIMEOUT;
    net.server.handle_timeout(net.now);
    net.pump();
    assert!(matches!(
        net.closed.last(),
        Some((ConnId(7), CloseReason::BadClientInfo(_)))
    ));
    assert_eq!(net.server.stats().pending_verifications, 0);
}

/// Audit #10: the number of keys waiting for a verdict is bounded.
#[test]
fn too_many_pending_verifications_are_refused() {
    let mut config = ServerConfig::new(key(9));
    config.verify_clients = true;
    let mut net = Net::new(config);
    let max = burrow_derp::server::MAX_PENDING_VERIFICATIONS as u64;
    for i in 0..max {
        let mut k = [0u8; 32];
        k[1..9].copy_from_slice(&(i + 1).to_le_bytes());
        net.connect(i + 1, PrivateKey::from_bytes(k), None);
    }
    let over = net.connect(max + 1, key(200), None);
    assert!(matches!(net.closed.last(), Some((c, CloseReason::VerifyBusy)) if *c == over));
    assert_eq!(net.server.stats().pending_verifications, max as usize);
}

/// Audit #4: total clients and clients per source are capped; replacing one's own
/// connection is not refused; loopback and mesh peers are exempt where documented.
#[test]
fn clients_are_capped_globally_and_per_source() {
    let mut config = ServerConfig::new(key(9)).with_mesh_key(REGION).unwrap();
    config.max_clients = 4;
    config.max_clients_per_ip = 2;
    let mut net = Net::new(config);
    let a = net.connect_from(1, key(1), "192.0.2.1");
    net.connect_from(2, key(2), "192.0.2.1");
    let c = net.connect_from(3, key(3), "192.0.2.1");
    assert!(matches!(net.closed.last(), Some((x, CloseReason::TooManyFromAddress)) if *x == c));
    // The same IPv6 /64 is one source.
    net.connect_from(4, key(4), "2001:db8::1");
    let v6 = net.connect_from(5, key(5), "2001:db8::2");
    assert!(net.is_connected(v6));
    let full = net.connect_from(6, key(6), "198.51.100.1");
    assert!(matches!(net.closed.last(), Some((x, CloseReason::TooManyClients)) if *x == full));
    // A client reconnecting (same key, same source) replaces itself even at both caps.
    let a_again = net.connect_from(7, key(1), "192.0.2.1");
    assert!(net.is_connected(a_again));
    assert!(net.closed.contains(&(a, CloseReason::Replaced)));
    // Mesh peers are not refused.
    let m = net.connect(8, key(8), Some(REGION));
    assert!(net.is_connected(m));
    assert_eq!(net.server.stats().refused_clients, 2);
    // A departure frees a place.
    net.server.disconnected(v6);
    net.clients.remove(&v6);
    let late = net.connect_from(9, key(10), "198.51.100.1");
    assert!(net.is_connected(late));

    // Loopback is capped only globally.
    let mut config = ServerConfig::new(key(9));
    config.max_clients_per_ip = 1;
    let mut net = Net::new(config);
    for i in 1..=5 {
        let c = net.connect_from(i, key(i as u8), "127.0.0.1");
        assert!(net.is_connected(c));
    }
}

/// Audit #11: a watcher is told about every client, beyond the 1,024-frame control queue:
/// the list present when it starts watching, and a burst of arrivals it is slow to read.
#[test]
fn a_watcher_hears_of_every_client_beyond_the_control_queue() {
    const N: u64 = 1_100;
    let mut net = Net::new(ServerConfig::new(key(9)).with_mesh_key(REGION).unwrap());
    let keys = |from: u64| {
        (from..from + N).map(|i| {
            let mut k = [0u8; 32];
            k[1..9].copy_from_slice(&i.to_le_bytes());
            PrivateKey::from_bytes(k)
        })
    };
    for (i, k) in keys(1).enumerate() {
        net.connect(i as u64 + 1, k, None);
    }
    let w = net.connect(10_000, key(200), Some(REGION));
    net.events(w);
    net.clients.get_mut(&w).unwrap().watch_conns();
    net.pump();
    let present = |events: Vec<ClientEvent>| {
        events
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::PeerPresent { key, .. } => Some(key),
                _ => None,
            })
            .collect::<std::collections::BTreeSet<_>>()
    };
    let first = present(net.events(w));
    assert_eq!(first.len(), N as usize);
    assert!(keys(1).all(|k| first.contains(&k.public_key())));
    // A burst while the watcher does not read.
    for (i, k) in keys(20_000).enumerate() {
        let conn = ConnId(20_000 + i as u64);
        net.clients.insert(
            conn,
            Client::new(k, None, None, ChaCha20Rng::seed_from_u64(conn.0)),
        );
        net.server.accept(net.now, conn);
    }
    net.pump_except(w);
    assert_eq!(net.server.stats().drops.get(&DropReason::QueueFull), None);
    net.pump();
    let burst = present(net.events(w));
    assert_eq!(burst.len(), N as usize);
    assert!(keys(20_000).all(|k| burst.contains(&k.public_key())));
}

/// Audit #16 and #17: short mesh keys are refused with a typed error, and the key never
/// shows in Debug output.
#[test]
fn short_mesh_keys_are_refused_and_never_printed() {
    for bad in ["", "   \n", "region-secret", &"x".repeat(31)] {
        assert!(
            matches!(
                ServerConfig::new(key(9)).with_mesh_key(bad),
                Err(MeshKeyError::TooShort { .. })
            ),
            "{bad:?}"
        );
        assert!(bad.parse::<MeshKey>().is_err());
    }
    let config = ServerConfig::new(key(9))
        .with_mesh_key(&format!("  {REGION}\n"))
        .unwrap();
    assert_eq!(config.mesh_key.as_ref().unwrap().expose(), REGION);
    let printed = format!("{config:?} {:?}", config.mesh_key);
    assert!(!printed.contains(REGION), "{printed}");
    assert!(printed.contains("redacted"), "{printed}");
}

/// A key of its own for flood connection `i` (never one of the small test keys).
fn flood_key(i: u64) -> PrivateKey {
    let mut k = [0u8; 32];
    k[1..9].copy_from_slice(&i.to_le_bytes());
    k[31] = 0x5a;
    PrivateKey::from_bytes(k)
}

/// Replays `captured` on a fresh connection `id`; returns why the server closed it, if it did.
fn replay(net: &mut Net, id: u64, captured: &[u8]) -> Option<CloseReason> {
    let conn = ConnId(id);
    net.server.accept(net.now, conn);
    let _server_key = net.server.poll_transmit_for(net.now, conn);
    net.server.handle_bytes(net.now, conn, captured);
    let mut why = None;
    while let Some((c, reason)) = net.server.poll_close() {
        if c == conn {
            why = Some(reason);
        } else {
            net.clients.remove(&c);
            net.closed.push((c, reason));
        }
    }
    why
}

/// Audit #10 follow-up (attack `nonce-flush`): the relay used to remember (key, nonce) pairs
/// in one map of its own size, filled before verification, so handshakes of many other keys
/// pushed a captured pair out and its replay then kicked the real client. Nonces are now
/// kept per admitted key, and a connected key's are never pushed out: after 40 times the
/// memory's worth of other keys, the replay of the real client's earlier ClientInfo is
/// still refused, and the real client keeps its connection and packets.
#[test]
fn a_flood_of_other_keys_cannot_flush_a_connected_clients_nonces() {
    let mut config = ServerConfig::new(key(9));
    config.replay_memory = 64;
    let mut net = Net::new(config);
    // The victim's first connection (captured), then a reconnection: live, with a new nonce.
    let (first, captured) = net.connect_capturing(1, key(1));
    net.server.disconnected(first);
    net.clients.remove(&first);
    let a = net.connect(2, key(1), None);
    let b = net.connect(3, key(2), None);
    assert!(net.is_connected(a));
    for i in 0..64 * 40 {
        let c = net.connect(1000 + i, flood_key(i), None);
        net.server.disconnected(c);
        net.clients.remove(&c);
    }
    assert_eq!(replay(&mut net, 66, &captured), Some(CloseReason::Replayed));
    assert!(net.is_connected(a), "the real client was not kicked");
    net.events(a);
    send(&mut net, b, 1, b"still yours");
    assert!(got_packet(&mut net, a, b"still yours"));
    assert_eq!(net.server.stats().replayed_client_infos, 1);
}

/// Audit #10 follow-up: with verification on, handshakes of keys the control server denies
/// are never remembered, so they cannot push out the nonces of a verified client that has
/// left either: its captured ClientInfo stays refused for the window (it used to be let in
/// on the cached verdict, as that client).
#[test]
fn denied_keys_cannot_flush_a_departed_verified_clients_nonces() {
    let mut config = ServerConfig::new(key(9));
    config.verify_clients = true;
    config.replay_memory = 64;
    let mut net = Net::new(config);
    let (a, captured) = net.connect_capturing(1, key(1));
    assert_eq!(net.server.poll_verify(), Some(key(1).public_key()));
    net.server
        .verified(net.now, &key(1).public_key(), Verdict::Allowed);
    net.pump();
    assert!(net.is_connected(a));
    net.server.disconnected(a);
    net.clients.remove(&a);
    for i in 0..64 * 40 {
        net.connect(1000 + i, flood_key(i), None);
        let asked = net.server.poll_verify().expect("a new key is asked about");
        net.server.verified(net.now, &asked, Verdict::Denied);
        net.pump();
    }
    assert_eq!(net.server.stats().pending_verifications, 0);
    assert_eq!(replay(&mut net, 66, &captured), Some(CloseReason::Replayed));
    // The real client, with a fresh handshake, is still welcome.
    let again = net.connect(67, key(1), None);
    assert!(net.is_connected(again));
}

/// Audit #10 follow-up: the same ClientInfo on two connections waiting for one verdict
/// admits only the first; the copy is a replay and never replaces it.
#[test]
fn a_replay_waiting_with_the_original_for_a_verdict_is_refused() {
    let mut config = ServerConfig::new(key(9));
    config.verify_clients = true;
    let mut net = Net::new(config);
    let (a, captured) = net.connect_capturing(1, key(1));
    assert_eq!(replay(&mut net, 66, &captured), Some(CloseReason::Replayed));
    net.server
        .verified(net.now, &key(1).public_key(), Verdict::Allowed);
    net.pump();
    assert!(net.is_connected(a));
    assert!(!net.closed.iter().any(|(c, _)| *c == a));
}

/// Audit #10 follow-up (attack `verify-starve`): one source (an IPv4 address, or an IPv6
/// /64; a /48 gets four times that) may have only MAX_PENDING_VERIFICATIONS_PER_SOURCE keys
/// waiting for the control server, so four sources no longer fill the global 256; other
/// sources still get asked about, and joining a lookup already under way costs nothing.
#[test]
fn one_source_cannot_fill_the_pending_verifications() {
    use burrow_derp::server::MAX_PENDING_VERIFICATIONS_PER_SOURCE as PER_SOURCE;
    let mut config = ServerConfig::new(key(9));
    config.verify_clients = true;
    let mut net = Net::new(config);
    let mut refused = 0;
    for i in 0..64u64 {
        let c = net.connect_from(100 + i, flood_key(i), "192.0.2.1");
        refused += usize::from(
            net.closed
                .last()
                .is_some_and(|(x, r)| *x == c && *r == CloseReason::VerifyBusy),
        );
    }
    assert_eq!(refused, 64 - PER_SOURCE);
    assert_eq!(net.server.stats().pending_verifications, PER_SOURCE);
    // Another source is asked about; a second connection for a key already being looked
    // up waits for that answer even from the full source.
    let other = net.connect_from(1, key(1), "198.51.100.1");
    let join = net.connect_from(2, flood_key(0), "192.0.2.1");
    assert!(!net.closed.iter().any(|(c, _)| *c == other || *c == join));
    assert_eq!(net.server.stats().pending_verifications, PER_SOURCE + 1);
    // A verdict frees the source's place.
    net.server
        .verified(net.now, &flood_key(3).public_key(), Verdict::Denied);
    net.pump();
    let next = net.connect_from(3, flood_key(500), "192.0.2.1");
    assert!(!net.closed.iter().any(|(c, _)| *c == next));
    // An IPv6 site: every /64 its own source, the /48 capped at four sources' worth.
    let mut v6 = 0;
    for i in 0..200u64 {
        let ip = format!("2001:db8:77:{i:x}::1");
        let c = net.connect_from(1000 + i, flood_key(1000 + i), &ip);
        v6 += usize::from(!net.closed.iter().any(|(x, _)| *x == c));
    }
    assert_eq!(v6, PER_SOURCE * burrow_derp::gate::SITE_SHARES);
}
