//! Helpers for the tests of `burrow control serve` as a process: databases, pre-auth keys,
//! the server, sealed registration and the netmap stream.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use burrow::control::{MapMessage, RegisterResponse};
use futures::StreamExt;

use super::{start, Running, BURROW};

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("burrow-control-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn authkey(db: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
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
pub fn admin_socket(db: impl AsRef<std::ffi::OsStr>) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    db.as_ref().hash(&mut h);
    std::env::temp_dir().join(format!(
        "burrow-admin-{}-{:x}.sock",
        std::process::id(),
        h.finish()
    ))
}

pub fn serve(db: impl AsRef<std::ffi::OsStr>, policy: Option<&Path>) -> Running {
    serve_with(db, policy, &[])
}

pub fn serve_with(
    db: impl AsRef<std::ffi::OsStr>,
    policy: Option<&Path>,
    extra: &[&str],
) -> Running {
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

/// Starts replica `n` of a control plane whose servers share database `db` (PostgreSQL) on
/// `listen` (127.0.0.1:0: a free port) with an admin socket of its own; the server and its
/// admin socket.
pub fn serve_replica(
    db: &str,
    policy: &Path,
    n: usize,
    listen: &str,
    extra: &[&str],
) -> (Running, PathBuf) {
    let socket = std::env::temp_dir().join(format!(
        "burrow-admin-{}-replica{n}.sock",
        std::process::id()
    ));
    let mut args = vec![
        "serve".to_string(),
        "--listen".into(),
        listen.into(),
        "--db".into(),
        db.into(),
        "--admin-socket".into(),
        socket.display().to_string(),
        "--policy".into(),
        policy.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (start("control", &args), socket)
}

pub fn keypair(seed: u8) -> (String, String) {
    let wg = burrow_wg::PrivateKey::from_bytes([seed; 32])
        .public_key()
        .to_base64();
    let disco = burrow_wg::PrivateKey::from_bytes([seed.wrapping_add(100); 32])
        .public_key()
        .to_base64();
    (wg, disco)
}

/// A fresh registration challenge.
pub async fn challenge(http: &reqwest::Client, base: &str) -> burrow::control::ChallengeResponse {
    http.get(format!("{base}/machine/challenge"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Registers node `seed` the way a node does: a challenge, then the body sealed with its key.
pub async fn register(
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

pub async fn register_sealed(
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
pub async fn registered(
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
pub struct MapStream(
    pub std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    pub String,
);

impl MapStream {
    pub async fn open(http: &reqwest::Client, base: &str, secret: &str) -> Self {
        let r = http
            .get(format!("{base}/machine/map"))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        MapStream(Box::pin(r.bytes_stream()), String::new())
    }

    pub async fn next(&mut self) -> MapMessage {
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

/// `burrow control ARGS…` against the server `serve` started on database `db`: its output, or
/// its error output on failure.
pub fn admin(db: &str, args: &[&str]) -> Result<String, String> {
    admin_at(&admin_socket(db), args)
}

/// `burrow control ARGS… --admin-socket SOCKET`: its output, or its error output on failure.
pub fn admin_at(socket: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(BURROW)
        .arg("control")
        .args(args)
        .arg("--admin-socket")
        .arg(socket)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
