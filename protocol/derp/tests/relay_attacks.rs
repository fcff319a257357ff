//! The relay's admission under the attacks of the security audit (#4, #10, #11, #16, #17),
//! in memory: replayed ClientInfo frames, verification by the control server and its limits,
//! nonces that floods cannot flush, client caps per source, watchers told of every client,
//! and short mesh keys.

mod common;

use std::time::Duration;

use burrow_derp::{
    Client, ClientEvent, CloseReason, ConnId, DropReason, Frame, MeshKey, MeshKeyError,
    ServerConfig, Verdict,
};
use burrow_wg::PrivateKey;
use common::{got_packet, key, send, Net, REGION};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

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
