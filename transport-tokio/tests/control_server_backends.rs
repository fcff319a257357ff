//! `burrow control serve` as a process, end to end on each backend: pre-auth keys,
//! registration with public keys only, the netmap stream (server-sent events) and its deltas,
//! the admin socket, and nothing lost across a restart, on SQLite and on PostgreSQL; and the
//! API over TLS with a self-signed certificate.

mod common;

use std::time::{Duration, Instant};

use burrow::control::MapMessage;
use burrow_control::Delta;
use common::control::{
    admin, authkey, keypair, registered, serve, serve_with, temp_dir, MapStream,
};

#[tokio::test(flavor = "multi_thread")]
async fn registration_netmaps_and_deltas_survive_a_restart() {
    let dir = temp_dir("flow");
    flow(dir.join("control.sqlite").to_str().unwrap()).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Registration, the netmap stream, a delta within a second, and a restart that loses nothing,
/// against the database `db` (a SQLite file or a postgres:// URL).
async fn flow(db: &str) {
    let key = authkey(db, &["--reusable", "--user", "alice", "--expiry", "1h"]);
    // Everyone reaches everyone, and may relay through any node that runs a relay.
    let policy = std::env::temp_dir().join(format!(
        "burrow-flow-policy-{}-{}.json",
        std::process::id(),
        db.len()
    ));
    std::fs::write(
        &policy,
        r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
            "relay": [{"src": ["*"], "via": ["*"]}]}"#,
    )
    .unwrap();
    let server = serve(db, Some(&policy));
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();

    let a = registered(&http, &base, &key, "a", 1).await;
    let b = registered(&http, &base, &key, "b", 2).await;
    assert_ne!(a.node.addresses, b.node.addresses);
    assert!(
        a.node
            .addresses
            .iter()
            .any(|ip| ip.to_string().starts_with("100.")),
        "{:?}",
        a.node.addresses
    );
    assert!(
        a.node
            .addresses
            .iter()
            .any(|ip| ip.to_string().starts_with("fd")),
        "ULA too"
    );

    // A's stream starts with its netmap, which has B.
    let mut stream = MapStream::open(&http, &base, &a.secret).await;
    let MapMessage::NetMap(map) = stream.next().await else {
        panic!("netmap first")
    };
    assert_eq!(map.peers.len(), 1);
    assert_eq!(map.peers[0].node.name, "b");
    assert_eq!(map.peers[0].node_key, keypair(2).0);

    assert!(map.relay.is_empty(), "nobody runs a relay yet");

    // B reports endpoints and a relay port: A hears of it within a second, and that B now
    // relays for it.
    let sent = Instant::now();
    let r = http
        .post(format!("{base}/machine/endpoints"))
        .bearer_auth(&b.secret)
        .json(&serde_json::json!({
            "endpoints": ["203.0.113.7:41641"], "home_region": 1, "relay_port": 7000
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let MapMessage::Delta(Delta::PeerUpsert(p)) = stream.next().await else {
        panic!("a peer update")
    };
    assert!(sent.elapsed() < Duration::from_secs(1));
    assert_eq!(p.endpoints, vec!["203.0.113.7:41641".parse().unwrap()]);
    let MapMessage::Delta(Delta::Relay(g)) = stream.next().await else {
        panic!("a's relay grants")
    };
    assert_eq!(g.relays, [b.node.id].into());
    assert!(g.clients.is_empty(), "a runs no relay");

    // Restart: nothing registered is lost.
    drop(stream);
    drop(server);
    let server = serve(db, Some(&policy));
    let base = format!("http://{}", server.addr());
    let mut stream = MapStream::open(&http, &base, &a.secret).await;
    let MapMessage::NetMap(map) = stream.next().await else {
        panic!("netmap first")
    };
    assert_eq!(
        map.peers[0].endpoints,
        vec!["203.0.113.7:41641".parse().unwrap()]
    );
    // B's relay port was stored: it still relays for A.
    assert_eq!(map.relay.relays, [b.node.id].into());

    // The admin lists the nodes over the admin socket: a holds a stream open, b does not.
    let nodes = admin(db, &["nodes", "--json"]).unwrap();
    let nodes: Vec<burrow::control::admin::NodeSummary> = serde_json::from_str(&nodes).unwrap();
    let names: Vec<(&str, bool, bool)> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n.online, n.expired))
        .collect();
    assert_eq!(names, vec![("a", true, false), ("b", false, false)]);
    let table = admin(db, &["nodes"]).unwrap();
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains(" a ") && l.contains("online")),
        "{table}"
    );

    // Expiring b: a hears within a second that b is gone; b is refused until it registers again.
    let sent = Instant::now();
    let out = admin(db, &["node", "expire", "b"]).unwrap();
    assert!(out.contains("expired node"), "{out}");
    let MapMessage::Delta(Delta::PeerRemove { id }) = stream.next().await else {
        panic!("b's removal")
    };
    assert!(sent.elapsed() < Duration::from_secs(1));
    assert_eq!(id, b.node.id);
    let MapMessage::Delta(Delta::Relay(g)) = stream.next().await else {
        panic!("a loses its relay")
    };
    assert!(g.is_empty());
    let r = http
        .get(format!("{base}/machine/map"))
        .bearer_auth(&b.secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("expired"));
    let nodes = admin(db, &["nodes", "--json"]).unwrap();
    assert!(nodes.contains("\"expired\": true"), "{nodes}");
    // Registering again brings b back, with its address.
    let b2 = registered(&http, &base, &key, "b", 2).await;
    assert_eq!(b2.node.addresses, b.node.addresses);
    let MapMessage::Delta(Delta::PeerUpsert(p)) = stream.next().await else {
        panic!("b is back")
    };
    assert_eq!(p.node.id, b.node.id);
    let MapMessage::Delta(Delta::Relay(g)) = stream.next().await else {
        panic!("b relays again: its port is on record")
    };
    assert_eq!(g.relays, [b.node.id].into());

    // Removing b (by id): a hears at once, b's secret is dead, and b is no longer listed.
    let out = admin(db, &["node", "remove", &b.node.id.to_string()]).unwrap();
    assert!(out.contains("removed node"), "{out}");
    let MapMessage::Delta(Delta::PeerRemove { id }) = stream.next().await else {
        panic!("b's removal")
    };
    assert_eq!(id, b.node.id);
    let r = http
        .post(format!("{base}/machine/endpoints"))
        .bearer_auth(&b2.secret)
        .json(&serde_json::json!({ "endpoints": [], "home_region": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let nodes = admin(db, &["nodes", "--json"]).unwrap();
    assert!(!nodes.contains("\"b\""), "{nodes}");
    let err = admin(db, &["node", "remove", "b"]).unwrap_err();
    assert!(err.contains("no node named"), "{err}");
    let _ = std::fs::remove_file(&policy);
}

/// The same flow against a real PostgreSQL server this test starts (Debian package
/// postgresql) in a directory of its own, and stops. Needs root; SKIPPED otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_flow_on_postgresql() {
    let Some(pg) = common::postgres::Postgres::start("control_on_postgresql") else {
        return;
    };
    flow(&pg.url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_over_tls_with_a_self_signed_certificate() {
    use burrow::control::client::ControlClient;
    let dir = temp_dir("tls");
    let db = dir.join("control.sqlite");
    let ca = dir.join("control.der");
    let key = authkey(&db, &["--reusable"]);
    let tls = [
        "--self-signed",
        "localhost",
        "--cert-out",
        ca.to_str().unwrap(),
    ];
    let server = serve_with(&db, None, &tls);
    let url = format!("https://localhost:{}", server.addr().port());
    let request = |seed: u8| {
        let (_, disco_key) = keypair(seed);
        let body = burrow::control::RegisterBody {
            auth_key: Some(key.clone()),
            hostname: format!("n{seed}"),
            disco_key,
            ..Default::default()
        };
        (burrow_wg::PrivateKey::from_bytes([seed; 32]), body)
    };
    // Without the certificate the client refuses the server.
    let untrusting = ControlClient::new(&url).unwrap();
    let (k, b) = request(1);
    let err = untrusting.register(&k, b).await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // Plain HTTP to the TLS port gets nowhere, and the server keeps serving.
    let plain = ControlClient::new(&format!("http://127.0.0.1:{}", server.addr().port())).unwrap();
    let (k, b) = request(1);
    assert!(plain.register(&k, b).await.is_err());
    // Trusting it: register, then the netmap stream.
    let trusting = ControlClient::with_roots(&url, vec![std::fs::read(&ca).unwrap()]).unwrap();
    let (k, b) = request(1);
    let a = trusting.register(&k, b).await.unwrap();
    let (k, b) = request(2);
    trusting.register(&k, b).await.unwrap();
    let (_stream, map) = trusting.open_map(&a.secret).await.unwrap();
    assert_eq!(map.peers.len(), 1);
    assert_eq!(map.peers[0].node.name, "n2");
    // A bad secret is a typed refusal.
    let err = trusting.open_map("burrownode-nope").await.unwrap_err();
    assert!(err.is_unauthorized(), "{err}");
    // The certificate's key is kept (0600) and reused: after a restart, nodes still trust it.
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(dir.join("control.der.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    drop(server);
    let server = serve_with(&db, None, &tls);
    let url = format!("https://localhost:{}", server.addr().port());
    let trusting = ControlClient::with_roots(&url, vec![std::fs::read(&ca).unwrap()]).unwrap();
    let (_stream, map) = trusting.open_map(&a.secret).await.unwrap();
    assert_eq!(map.peers.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
