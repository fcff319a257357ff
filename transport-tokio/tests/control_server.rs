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
        let (node_key, disco_key) = keypair(seed);
        burrow::control::RegisterRequest {
            auth_key: key.clone(),
            hostname: format!("n{seed}"),
            node_key,
            disco_key,
        }
    };
    // Without the certificate the client refuses the server.
    let untrusting = ControlClient::new(&url).unwrap();
    let err = untrusting.register(&request(1)).await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // Plain HTTP to the TLS port gets nowhere, and the server keeps serving.
    let plain = ControlClient::new(&format!("http://127.0.0.1:{}", server.addr().port())).unwrap();
    assert!(plain.register(&request(1)).await.is_err());
    // Trusting it: register, then the netmap stream.
    let trusting = ControlClient::with_roots(&url, vec![std::fs::read(&ca).unwrap()]).unwrap();
    let a = trusting.register(&request(1)).await.unwrap();
    trusting.register(&request(2)).await.unwrap();
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
