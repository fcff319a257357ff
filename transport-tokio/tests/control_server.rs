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

/// The admin socket `serve` gives the server of database `db` (one per database, so tests
/// running at once do not meet).
fn admin_socket(db: impl AsRef<std::ffi::OsStr>) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    db.as_ref().hash(&mut h);
    std::env::temp_dir().join(format!(
        "burrow-admin-{}-{:x}.sock",
        std::process::id(),
        h.finish()
    ))
}

fn serve(db: impl AsRef<std::ffi::OsStr>, policy: Option<&Path>) -> Running {
    serve_with(db, policy, &[])
}

fn serve_with(db: impl AsRef<std::ffi::OsStr>, policy: Option<&Path>, extra: &[&str]) -> Running {
    let mut args = vec![
        "serve".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--db".into(),
        db.as_ref().to_string_lossy().into_owned(),
        "--admin-socket".into(),
        admin_socket(&db).display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
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

/// A fresh registration challenge.
async fn challenge(http: &reqwest::Client, base: &str) -> burrow::control::ChallengeResponse {
    http.get(format!("{base}/machine/challenge"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Registers node `seed` the way a node does: a challenge, then the body sealed with its key.
async fn register(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    name: &str,
    seed: u8,
) -> reqwest::Response {
    let (_, disco_key) = keypair(seed);
    let body = burrow::control::RegisterBody {
        auth_key: Some(key.into()),
        hostname: name.into(),
        disco_key,
        ..Default::default()
    };
    register_sealed(http, base, seed, body).await
}

async fn register_sealed(
    http: &reqwest::Client,
    base: &str,
    seed: u8,
    body: burrow::control::RegisterBody,
) -> reqwest::Response {
    let node = burrow_wg::PrivateKey::from_bytes([seed; 32]);
    let challenge = challenge(http, base).await;
    let req = burrow::control::identity::seal_registration(&node, &challenge, body).unwrap();
    http.post(format!("{base}/machine/register"))
        .json(&req)
        .send()
        .await
        .unwrap()
}

/// Registers a node that must be accepted.
async fn registered(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    name: &str,
    seed: u8,
) -> RegisterResponse {
    let r = register(http, base, key, name, seed).await;
    assert_eq!(r.status(), 200, "registering {name}");
    r.json().await.unwrap()
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
}

/// Runs `burrow control ARGS --admin-socket …` against `db`'s server: stdout, or stderr on
/// failure.
fn admin(db: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(BURROW)
        .arg("control")
        .args(args)
        .arg("--admin-socket")
        .arg(admin_socket(db))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

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

// Hostile clients of the control server (security audit #2, #5, #6, #7, #18). Every test named
// `attack_*` also runs under `cargo xtask attack`.

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
