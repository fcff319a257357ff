//! `burrow control serve` as a process, with its SQLite file: registration expiry and peers
//! told of it, clear errors for bad requests, ACL-driven visibility, and endpoint updates
//! that cost nothing when unchanged and are slowed when flapping. The whole flow on each
//! database and over TLS is in `control_server_backends.rs`; the attacks in
//! `control_server_attacks.rs`.

mod common;

use std::time::Duration;

use burrow::control::{MapMessage, RegisterResponse};
use burrow_control::Delta;
use common::control::{
    admin, authkey, register, registered, serve, serve_with, temp_dir, MapStream,
};

#[tokio::test(flavor = "multi_thread")]
async fn registrations_expire_and_peers_are_told() {
    let dir = temp_dir("expiry");
    let db = dir.join("control.sqlite");
    let key = authkey(&db, &["--reusable"]);
    let server = serve_with(&db, None, &["--node-expiry", "3s"]);
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    let a = registered(&http, &base, &key, "a", 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = registered(&http, &base, &key, "b", 2).await;
    let mut stream = MapStream::open(&http, &base, &b.secret).await;
    let MapMessage::NetMap(map) = stream.next().await else {
        panic!("netmap first")
    };
    assert_eq!(map.peers.len(), 1, "a is still valid");
    // a's registration ends a second or two later: b is told without anyone asking.
    let MapMessage::Delta(Delta::PeerRemove { id }) = stream.next().await else {
        panic!("a expired")
    };
    assert_eq!(id, a.node.id);
    let r = http
        .get(format!("{base}/machine/map"))
        .bearer_auth(&a.secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Survives a restart: the expired node stays out of the tailnet.
    drop(stream);
    drop(server);
    let server = serve_with(&db, None, &["--node-expiry", "3s"]);
    let base = format!("http://{}", server.addr());
    let r = register(&http, &base, &key, "c", 3).await;
    let c: RegisterResponse = r.json().await.unwrap();
    let mut stream = MapStream::open(&http, &base, &c.secret).await;
    let MapMessage::NetMap(map) = stream.next().await else {
        panic!("netmap first")
    };
    assert!(
        map.peers.iter().all(|p| p.node.id != a.node.id),
        "an expired node is not handed out after a restart"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let dir = temp_dir("errors");
    let db = dir.join("control.sqlite");
    let once = authkey(&db, &[]);
    let expired = authkey(&db, &["--expiry", "0s"]);
    let server = serve(&db, None);
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();

    let r = register(&http, &base, "burrowkey-nope", "x", 3).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("auth key"));
    let r = register(&http, &base, &expired, "x", 3).await;
    assert_eq!(r.status(), 401);
    assert_eq!(register(&http, &base, &once, "x", 3).await.status(), 200);
    assert_eq!(
        register(&http, &base, &once, "y", 4).await.status(),
        401,
        "a one-off key is spent"
    );
    assert_eq!(
        register(&http, &base, &once, "x", 3).await.status(),
        401,
        "a spent one-off key re-registers nothing, not even its own node (audit #2)"
    );
    let r = http
        .post(format!("{base}/machine/register"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let r = http
        .post(format!("{base}/machine/register"))
        .json(&serde_json::json!({ "node_key": "short", "challenge": "x", "sealed": "y" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("malformed node key"));
    let r = http
        .get(format!("{base}/machine/map"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/machine/map"))
        .bearer_auth("burrownode-nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        http.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_policy_decides_who_hears_of_whom() {
    let dir = temp_dir("acl");
    let db = dir.join("control.sqlite");
    let policy = dir.join("policy.hujson");
    std::fs::write(
        &policy,
        r#"{
  "tagOwners": { "tag:db": ["alice"] },
  "acls": [
    { "action": "accept", "src": ["alice"], "dst": ["tag:db:5432"], "proto": "tcp" },
  ],
}"#,
    )
    .unwrap();
    let alice = authkey(&db, &["--user", "alice"]);
    let dbkey = authkey(&db, &["--user", "alice", "--tag", "tag:db"]);
    let mallory = authkey(&db, &["--user", "mallory"]);
    let server = serve(&db, Some(&policy));
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    let a = registered(&http, &base, &alice, "laptop", 1).await;
    let d = registered(&http, &base, &dbkey, "db", 2).await;
    let m = registered(&http, &base, &mallory, "m", 3).await;
    assert_eq!(d.node.tags, vec!["tag:db".to_string()]);
    let mut s = MapStream::open(&http, &base, &d.secret).await;
    let MapMessage::NetMap(map) = s.next().await else {
        panic!()
    };
    let names: Vec<&str> = map.peers.iter().map(|p| p.node.name.as_str()).collect();
    assert_eq!(names, vec!["laptop"], "the db knows only who may reach it");
    assert_eq!(map.filter.len(), 1, "its filter: alice's addresses to 5432");
    let mut s = MapStream::open(&http, &base, &m.secret).await;
    let MapMessage::NetMap(map) = s.next().await else {
        panic!()
    };
    assert!(map.peers.is_empty(), "mallory hears of nobody");
    let _ = a;

    // A policy with an error is refused, with its line, and the running one stays.
    std::fs::write(&policy, "{\n  \"acls\": [ { \"action\": \"maybe\" } ]\n}").unwrap();
    let err = admin(db.to_str().unwrap(), &["policy", "reload"]).unwrap_err();
    assert!(
        err.contains("policy.hujson") && err.contains("line 2"),
        "{err}"
    );
    // Everyone may reach the db now: mallory hears of it at once, and the db's filter widens.
    std::fs::write(
        &policy,
        r#"{
  "tagOwners": { "tag:db": ["alice"] },
  "acls": [ { "action": "accept", "src": ["*"], "dst": ["tag:db:5432"] } ],
}"#,
    )
    .unwrap();
    let out = admin(db.to_str().unwrap(), &["policy", "reload"]).unwrap();
    assert!(out.contains("policy reloaded"), "{out}");
    let MapMessage::Delta(Delta::PeerUpsert(p)) = s.next().await else {
        panic!("mallory hears of the db")
    };
    assert_eq!(p.node.name, "db");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_endpoints_cost_nothing_and_a_flapping_node_is_slowed() {
    let dir = temp_dir("flap");
    let db = dir.join("control.sqlite");
    let key = authkey(&db, &["--reusable"]);
    let server = serve(&db, None);
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();
    let a = registered(&http, &base, &key, "a", 1).await;
    let b = registered(&http, &base, &key, "b", 2).await;
    let mut stream = MapStream::open(&http, &base, &a.secret).await;
    let MapMessage::NetMap(_) = stream.next().await else {
        panic!("netmap first")
    };
    let post = |port: u16| {
        http.post(format!("{base}/machine/endpoints"))
            .bearer_auth(&b.secret)
            .json(&serde_json::json!({ "endpoints": [format!("203.0.113.7:{port}")], "home_region": 1 }))
            .send()
    };
    assert_eq!(post(1000).await.unwrap().status(), 204);
    // The same endpoints again (after every STUN round): accepted, and nobody is told; the
    // next message a hears is the next real change.
    assert_eq!(post(1000).await.unwrap().status(), 204);
    assert_eq!(post(1001).await.unwrap().status(), 204);
    for want in [1000u16, 1001] {
        let MapMessage::Delta(Delta::PeerUpsert(p)) = stream.next().await else {
            panic!("an update")
        };
        assert_eq!(p.endpoints[0].port(), want);
    }
    // Flapping: a burst of changes goes through, then the server says slow down.
    let mut refused = 0;
    for port in 2000..2030 {
        let r = post(port).await.unwrap();
        if r.status() == 429 {
            refused += 1;
            assert!(r.text().await.unwrap().contains("too many"));
        }
    }
    assert!((15..=22).contains(&refused), "{refused} of 30 refused");
    let _ = std::fs::remove_dir_all(&dir);
}
