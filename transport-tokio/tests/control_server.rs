//! `burrow control serve` as a process, with its SQLite file: pre-auth keys, registration with
//! public keys only, the netmap stream (server-sent events) and its deltas, ACL-driven
//! visibility, clear errors for bad requests, and nothing lost across a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use burrow::control::{MapMessage, RegisterResponse};
use burrow_control::Delta;
use common::{start, Running, BURROW};
use futures::StreamExt;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("burrow-control-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn authkey(db: &Path, args: &[&str]) -> String {
    let out = Command::new(BURROW)
        .args(["control", "authkey", "create", "--db"])
        .arg(db)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn serve(db: &Path, policy: Option<&Path>) -> Running {
    let mut args = vec![
        "serve".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--db".into(),
        db.display().to_string(),
    ];
    if let Some(p) = policy {
        args.push("--policy".into());
        args.push(p.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start("control", &args)
}

fn keypair(seed: u8) -> (String, String) {
    let wg = burrow_wg::PrivateKey::from_bytes([seed; 32])
        .public_key()
        .to_base64();
    let disco = burrow_wg::PrivateKey::from_bytes([seed.wrapping_add(100); 32])
        .public_key()
        .to_base64();
    (wg, disco)
}

async fn register(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    name: &str,
    seed: u8,
) -> reqwest::Response {
    let (node_key, disco_key) = keypair(seed);
    http.post(format!("{base}/machine/register"))
        .json(&serde_json::json!({ "auth_key": key, "hostname": name, "node_key": node_key, "disco_key": disco_key }))
        .send()
        .await
        .unwrap()
}

/// Reads the map stream's messages (SSE `data:` lines).
struct MapStream(
    std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    String,
);

impl MapStream {
    async fn open(http: &reqwest::Client, base: &str, secret: &str) -> Self {
        let r = http
            .get(format!("{base}/machine/map"))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        MapStream(Box::pin(r.bytes_stream()), String::new())
    }

    async fn next(&mut self) -> MapMessage {
        loop {
            if let Some(end) = self.1.find("\n\n") {
                let event: String = self.1.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.0.next())
                .await
                .expect("a map message within 5 s")
                .unwrap()
                .unwrap();
            self.1.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn registration_netmaps_and_deltas_survive_a_restart() {
    let dir = temp_dir("flow");
    let db = dir.join("control.sqlite");
    let key = authkey(&db, &["--reusable", "--user", "alice", "--expiry", "1h"]);
    let server = serve(&db, None);
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();

    let a: RegisterResponse = register(&http, &base, &key, "a", 1)
        .await
        .json()
        .await
        .unwrap();
    let b: RegisterResponse = register(&http, &base, &key, "b", 2)
        .await
        .json()
        .await
        .unwrap();
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

    // B reports endpoints: A hears of it within a second.
    let sent = Instant::now();
    let r = http
        .post(format!("{base}/machine/endpoints"))
        .bearer_auth(&b.secret)
        .json(&serde_json::json!({ "endpoints": ["203.0.113.7:41641"], "home_region": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let MapMessage::Delta(Delta::PeerUpsert(p)) = stream.next().await else {
        panic!("a peer update")
    };
    assert!(sent.elapsed() < Duration::from_secs(1));
    assert_eq!(p.endpoints, vec!["203.0.113.7:41641".parse().unwrap()]);

    // Restart: nothing registered is lost.
    drop(stream);
    drop(server);
    let server = serve(&db, None);
    let base = format!("http://{}", server.addr());
    let mut stream = MapStream::open(&http, &base, &a.secret).await;
    let MapMessage::NetMap(map) = stream.next().await else {
        panic!("netmap first")
    };
    assert_eq!(
        map.peers[0].endpoints,
        vec!["203.0.113.7:41641".parse().unwrap()]
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
        200,
        "the same node may re-register"
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
        .json(&serde_json::json!({ "auth_key": once, "hostname": "z", "node_key": "short", "disco_key": "short" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("public keys"));
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
    let a: RegisterResponse = register(&http, &base, &alice, "laptop", 1)
        .await
        .json()
        .await
        .unwrap();
    let d: RegisterResponse = register(&http, &base, &dbkey, "db", 2)
        .await
        .json()
        .await
        .unwrap();
    let m: RegisterResponse = register(&http, &base, &mallory, "m", 3)
        .await
        .json()
        .await
        .unwrap();
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
    let _ = std::fs::remove_dir_all(&dir);
}
