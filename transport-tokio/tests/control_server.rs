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

fn authkey(db: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let out = Command::new(BURROW)
        .args(["control", "authkey", "create", "--db"])
        .arg(db.as_ref())
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

fn serve(db: impl AsRef<std::ffi::OsStr>, policy: Option<&Path>) -> Running {
    let mut args = vec![
        "serve".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--db".into(),
        db.as_ref().to_string_lossy().into_owned(),
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
    let server = serve(db, None);
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
    let server = serve(db, None);
    let base = format!("http://{}", server.addr());
    let mut stream = MapStream::open(&http, &base, &a.secret).await;
    let MapMessage::NetMap(map) = stream.next().await else {
        panic!("netmap first")
    };
    assert_eq!(
        map.peers[0].endpoints,
        vec!["203.0.113.7:41641".parse().unwrap()]
    );
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

/// The same flow against a real PostgreSQL server this test starts (Debian package
/// postgresql) in a directory of its own, and stops. Needs root; SKIPPED otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_flow_on_postgresql() {
    const TEST: &str = "control_on_postgresql";
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
        d.filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").is_file())
    });
    let (true, Some(bin)) = (root, bin) else {
        assert!(
            std::env::var_os("BURROW_REQUIRE_INTEROP").is_none(),
            "{TEST} needs root and postgresql"
        );
        eprintln!("SKIPPED {TEST}: needs root and PostgreSQL (package postgresql)");
        return;
    };
    let dir = temp_dir("pg");
    let run_as = |args: &[&str]| {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    assert!(Command::new("chown")
        .args(["-R", "postgres"])
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    let data = dir.join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    run_as(&[
        bin.join("initdb").to_str().unwrap(),
        "-D",
        data.to_str().unwrap(),
        "-A",
        "trust",
        "-U",
        "postgres",
    ]);
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1",
        dir.display()
    );
    run_as(&[
        bin.join("pg_ctl").to_str().unwrap(),
        "-D",
        data.to_str().unwrap(),
        "-o",
        &opts,
        "-l",
        dir.join("pg.log").to_str().unwrap(),
        "-w",
        "start",
    ]);
    struct Stop(PathBuf, PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.0.join("pg_ctl"))
                .arg("-D")
                .arg(&self.1)
                .args(["-m", "immediate", "stop"])
                .output();
        }
    }
    let _stop = Stop(bin.clone(), data.clone());
    run_as(&[
        bin.join("createdb").to_str().unwrap(),
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "burrow",
    ]);
    flow(&format!("postgres://postgres@127.0.0.1:{port}/burrow")).await;
    drop(_stop);
    let _ = std::fs::remove_dir_all(&dir);
}
