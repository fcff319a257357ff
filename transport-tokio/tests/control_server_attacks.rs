//! Hostile clients of `burrow control serve` (security audit #2, #5, #6, #7, #18): node
//! takeover, one key for many nodes and bad host names, register and stream floods,
//! slowloris and big bodies. The whole target runs under `cargo xtask attack`.

mod common;

use std::time::Duration;

use burrow::control::{MapMessage, RegisterResponse};
use burrow_control::Delta;
use common::control::{
    admin, authkey, challenge, keypair, register, register_sealed, registered, serve, serve_with,
    temp_dir, MapStream,
};
use futures::StreamExt;

/// Registers node `seed` with `body`, sealed by `sealer`'s key but claiming `seed`'s public key.
async fn register_forged(
    http: &reqwest::Client,
    base: &str,
    seed: u8,
    sealer: u8,
    body: burrow::control::RegisterBody,
) -> reqwest::Response {
    let challenge = challenge(http, base).await;
    let sealer = burrow_wg::PrivateKey::from_bytes([sealer; 32]);
    let mut req = burrow::control::identity::seal_registration(&sealer, &challenge, body).unwrap();
    req.node_key = burrow_wg::PrivateKey::from_bytes([seed; 32])
        .public_key()
        .to_base64();
    http.post(format!("{base}/machine/register"))
        .json(&req)
        .send()
        .await
        .unwrap()
}

fn body(
    key: Option<&str>,
    secret: Option<&str>,
    name: &str,
    disco_seed: u8,
) -> burrow::control::RegisterBody {
    burrow::control::RegisterBody {
        auth_key: key.map(String::from),
        node_secret: secret.map(String::from),
        hostname: name.into(),
        disco_key: keypair(disco_seed).1,
        ..Default::default()
    }
}

#[tokio::test]
async fn attack_node_takeover_needs_the_node_key_and_a_right_to_it() {
    let dir = temp_dir("takeover");
    let db = dir.join("control.sqlite");
    let alice_once = authkey(&db, &["--user", "alice"]);
    let alice_reusable = authkey(&db, &["--user", "alice", "--reusable"]);
    let bob_once = authkey(&db, &["--user", "bob"]);
    let server = serve(&db, None);
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    let alice: RegisterResponse = registered(&http, &base, &alice_once, "alice", 1).await;
    assert_eq!(
        register(&http, &base, &bob_once, "bob", 2).await.status(),
        200
    );

    // The audit's repro: bob's spent key and alice's public key. Without alice's private key
    // the registration cannot be sealed for her key...
    let r = register_forged(&http, &base, 1, 2, body(Some(&bob_once), None, "pwned", 9)).await;
    assert_eq!(r.status(), 401);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("not sealed with this node key"));
    // ...and even holding it, a spent key, another user's key, or no key at all is refused.
    for (key, why) in [
        (Some(alice_once.as_str()), "her own spent one-off key"),
        (Some(bob_once.as_str()), "another user's spent key"),
        (None, "no key and no secret"),
    ] {
        let r = register_sealed(&http, &base, 1, body(key, None, "pwned", 9)).await;
        assert_eq!(r.status(), 401, "{why}");
    }
    let bob_fresh = authkey(&db, &["--user", "bob", "--reusable"]);
    let r = register_sealed(&http, &base, 1, body(Some(&bob_fresh), None, "pwned", 9)).await;
    assert_eq!(r.status(), 401, "an unspent key of another user");
    let r = register_sealed(
        &http,
        &base,
        1,
        body(None, Some("burrownode-guess"), "pwned", 9),
    )
    .await;
    assert_eq!(r.status(), 401, "a wrong secret");
    // Alice's secret still works: nothing above changed her node.
    let mut stream = MapStream::open(&http, &base, &alice.secret).await;
    let MapMessage::NetMap(map) = stream.next().await else {
        panic!("netmap first")
    };
    assert_eq!(map.node.name, "alice");
    drop(stream);
    // Alice renews with her current secret, and her node keeps its id.
    let renewed: RegisterResponse =
        register_sealed(&http, &base, 1, body(None, Some(&alice.secret), "alice", 1))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(renewed.node.id, alice.node.id);
    // An admin's expiry is not undone by the old secret, only by an unspent key of her user.
    admin(db.to_str().unwrap(), &["node", "expire", "alice"]).unwrap();
    let r = register_sealed(
        &http,
        &base,
        1,
        body(None, Some(&renewed.secret), "alice", 1),
    )
    .await;
    assert_eq!(r.status(), 401, "an expired node's secret");
    let r = register_sealed(
        &http,
        &base,
        1,
        body(Some(&alice_reusable), None, "alice", 1),
    )
    .await;
    assert_eq!(r.status(), 200, "an unspent key of her own user");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn attack_one_key_is_one_node_and_names_are_dns_labels() {
    let dir = temp_dir("spellings");
    let db = dir.join("control.sqlite");
    let key = authkey(&db, &["--reusable"]);
    let server = serve(&db, None);
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    let first: RegisterResponse = registered(&http, &base, &key, "a", 1).await;
    // The same key spelled with whitespace is the same node (renewed), not a second one.
    for spelling in ["{K}\n", " {K}\t"] {
        let challenge = challenge(&http, &base).await;
        let node = burrow_wg::PrivateKey::from_bytes([1; 32]);
        let mut req = burrow::control::identity::seal_registration(
            &node,
            &challenge,
            body(Some(&key), None, "a", 1),
        )
        .unwrap();
        req.node_key = spelling.replace("{K}", &req.node_key);
        let r: RegisterResponse = http
            .post(format!("{base}/machine/register"))
            .json(&req)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r.node.id, first.node.id, "{spelling:?}");
    }
    // The same key with its top bit set (X25519 ignores it, so the box still opens): refused.
    {
        let challenge = challenge(&http, &base).await;
        let node = burrow_wg::PrivateKey::from_bytes([1; 32]);
        let mut req = burrow::control::identity::seal_registration(
            &node,
            &challenge,
            body(Some(&key), None, "a", 1),
        )
        .unwrap();
        let mut bytes = node.public_key().0;
        bytes[31] |= 0x80;
        req.node_key = burrow_wg::PublicKey(bytes).to_base64();
        let r = http
            .post(format!("{base}/machine/register"))
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "an aliased spelling of the key");
    }
    // A disco key another node has is refused.
    let r = register_sealed(&http, &base, 2, body(Some(&key), None, "b", 1)).await;
    assert_eq!(r.status(), 409);
    // Host names with control characters or escapes never reach a log or a terminal.
    for name in [
        "evil\u{1b}[31m",
        "a b",
        "new\nline",
        "",
        "-x",
        &"x".repeat(64),
    ] {
        let r = register_sealed(&http, &base, 3, body(Some(&key), None, name, 3)).await;
        assert_eq!(r.status(), 400, "{name:?}");
    }
    let nodes = admin(db.to_str().unwrap(), &["nodes", "--json"]).unwrap();
    let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{nodes}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn attack_register_and_stream_floods_are_limited_and_others_are_served() {
    let dir = temp_dir("floods");
    let db = dir.join("control.sqlite");
    let key = authkey(&db, &["--reusable"]);
    let server = serve_with(&db, None, &["--per-ip-rate", "2"]);
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    let a: RegisterResponse = registered(&http, &base, &key, "a", 1).await;
    // Source-address budget: 8 at once, then 2 a second; the flood gets 429s.
    let mut limited = 0;
    for _ in 0..30 {
        let r = http
            .get(format!("{base}/machine/challenge"))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 20, "{limited} of 30 limited");
    // Meanwhile another source is served.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = other.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    drop(server);

    // Map streams: at most two per node; each new one ends the oldest.
    let server = serve_with(&db, None, &["--per-ip-rate", "100"]);
    let base = format!("http://{}", server.addr());
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut s = MapStream::open(&http, &base, &a.secret).await;
        let MapMessage::NetMap(_) = s.next().await else {
            panic!("netmap first")
        };
        streams.push(s);
    }
    for (i, s) in streams.iter_mut().enumerate().take(3) {
        let ended = tokio::time::timeout(Duration::from_secs(5), s.0.next()).await;
        assert!(
            matches!(ended, Ok(None) | Ok(Some(Err(_)))),
            "stream {i} should have been closed"
        );
    }
    // The two newest still get deltas.
    let b: RegisterResponse = registered(&http, &base, &key, "b", 2).await;
    for s in streams.iter_mut().skip(3) {
        let MapMessage::Delta(Delta::PeerUpsert(p)) = s.next().await else {
            panic!("b's arrival")
        };
        assert_eq!(p.node.id, b.node.id);
    }
    // Per-node map budget: each stream costs a whole netmap, so reopening in a loop is slowed.
    drop(streams);
    let mut limited = 0;
    for _ in 0..20 {
        let r = http
            .get(format!("{base}/machine/map"))
            .bearer_auth(&a.secret)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 8, "{limited} of 20 map streams limited");
    // Per-key registration budget: a node key re-registering in a loop is slowed.
    let mut limited = 0;
    for _ in 0..12 {
        let r = register(&http, &base, &key, "b", 2).await;
        if r.status() == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 2, "{limited} of 12 re-registrations limited");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn attack_slowloris_and_big_bodies_do_not_lock_nodes_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir("slowloris");
    let db = dir.join("control.sqlite");
    let key = authkey(&db, &["--reusable"]);
    let server = serve_with(
        &db,
        None,
        &["--header-timeout", "2", "--max-connections-per-ip", "20"],
    );
    let addr = server.addr();
    // 40 sockets from 127.0.0.1: half an HTTP head each, or nothing.
    let mut idle = Vec::new();
    for i in 0..40 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await;
        }
        idle.push(s);
    }
    // Another source address (all of 127/8 is loopback) is served at once.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = other.connect(addr).await.unwrap();
    other
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), other.read_to_string(&mut answer))
        .await
        .expect("served while the sockets are held")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Every held socket is closed: over the cap at once, the rest at the header timeout.
    for (i, s) in idle.iter_mut().enumerate() {
        let mut buf = [0u8; 512];
        let r = tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(_)) | Ok(Err(_))),
            "socket {i} still held after the header timeout"
        );
    }
    // And then 127.0.0.1 registers again.
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    assert_eq!(register(&http, &base, &key, "a", 1).await.status(), 200);
    // A body over the limit is refused without being read whole.
    let r = http
        .post(format!("{base}/machine/register"))
        .header("content-type", "application/json")
        .body(vec![b' '; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let _ = std::fs::remove_dir_all(&dir);
}
