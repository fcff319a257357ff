//! `burrow derper` as a real process on loopback under the attacks of the security audit
//! (see /work/notes/derp-attacks.md): a connection flood at the open-files limit, a replayed
//! ClientInfo, garbage and oversized frames, unverified clients, a short mesh key, and
//! verification that must not cost the control server a connection per key.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use burrow::derp_client::{DerpClient, DerpUrl};
use burrow_derp::ClientEvent;
use burrow_wg::PrivateKey;

mod common;
use common::derper::{connected, deliver, derper, http_get, key};
use common::{Running as Derper, BURROW};

/// The upgrade request of a client that does not wait for the HTTP answer (fast start).
const UPGRADE: &[u8] = b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Fast-Start: 1\r\n\r\n";

/// A DERP client driven by hand over loopback (burrow's sans-IO client) that keeps the exact
/// ClientInfo frame it sent: what an on-path attacker could capture.
struct RawClient {
    stream: tokio::net::TcpStream,
    client: burrow_derp::Client,
    client_info: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: SocketAddr, k: PrivateKey, seed: u64) -> RawClient {
        use rand_chacha::rand_core::SeedableRng;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(UPGRADE).await.unwrap();
        let mut client =
            burrow_derp::Client::new(k, None, None, rand_chacha::ChaCha20Rng::seed_from_u64(seed));
        let mut client_info = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while !client.is_ready() {
            while let Some(b) = client.poll_transmit() {
                if client_info.is_empty() {
                    client_info = b.clone();
                }
                stream.write_all(&b).await.unwrap();
            }
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("handshake in time")
                .unwrap();
            assert!(n > 0, "the relay closed the handshake");
            client.handle_bytes(&buf[..n]).unwrap();
        }
        RawClient {
            stream,
            client,
            client_info,
        }
    }

    async fn recv_packet(&mut self) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Some(e) = self.client.poll_event() {
                if let ClientEvent::Packet { data, .. } = e {
                    return data;
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf))
                .await
                .expect("a packet in time")
                .unwrap();
            assert!(n > 0, "the relay closed the connection");
            self.client.handle_bytes(&buf[..n]).unwrap();
        }
    }
}

/// Everything the relay sends on `stream` until it closes it (10 s at most).
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the relay closes the connection")
        .ok();
    out
}

/// The frame types in a byte stream.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        types.push(bytes[0]);
        bytes = &bytes[(5 + len).min(bytes.len())..];
    }
    types
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

/// Starts `burrow ARGS…` with its open-files limit (soft and hard) set to `nofile` by
/// util-linux `prlimit`, which then executes it (same process).
fn start_limited(nofile: u32, args: &[&str]) -> Derper {
    use std::io::BufRead;
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg(BURROW)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Derper(child, vec![addr])
}

/// Audit #4 (attack `fd-flood`): 1,100 connections that never authenticate, against a relay
/// whose open-files limit is 1,024 (soft and hard, as under systemd). The relay used to exit
/// on the accept error (EMFILE); now pending connections are capped under the limit (the
/// oldest closed first), and a real client still connects and relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_connection_flood_at_its_open_files_limit() {
    // This test holds 1,100 sockets itself.
    let _ = burrow::derper::raise_fd_limit();
    let mut d = start_limited(1024, &["derper", "--listen", "127.0.0.1:0"]);
    let addr = d.addr();
    let held = tokio::task::spawn_blocking(move || {
        (0..1100)
            .filter_map(|i| {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
                if i % 2 == 0 {
                    // Half a request head: a slow client.
                    let _ = s.write_all(b"GET /derp HTTP/1.1\r\n");
                }
                Some(s)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(held.len() >= 1000, "only {} connections opened", held.len());
    assert!(d.0.try_wait().unwrap().is_none(), "the relay exited");
    let url: DerpUrl = format!("http://{addr}/derp").parse().unwrap();
    let mut a = DerpClient::spawn(url.clone(), key(1), vec![]);
    let mut b = DerpClient::spawn(url, key(2), vec![]);
    connected(&mut a).await;
    connected(&mut b).await;
    deliver(&a, &mut b, key(2).public_key(), b"through the flood").await;
    let metrics = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap();
    assert!(
        metric(&metrics, "derp_pending_evicted_total") > 0,
        "{metrics}"
    );
    assert!(metric(&metrics, "derp_pending_connections") <= 1024);
    assert!(d.0.try_wait().unwrap().is_none(), "the relay exited");
    drop(held);
}

/// Audit #10 (attack `clientinfo-replay`): the exact ClientInfo bytes of a connected client,
/// replayed on a new connection, get no ServerInfo, and the real client is not kicked: it
/// still receives its packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_client_info_is_refused_and_the_real_client_keeps_relaying() {
    use tokio::io::AsyncWriteExt;
    let d = derper(&["--listen", "127.0.0.1:0"]);
    let mut a = RawClient::connect(d.addr(), key(1), 1).await;
    let url: DerpUrl = format!("http://{}/derp", d.addr()).parse().unwrap();
    let mut b = DerpClient::spawn(url, key(2), vec![]);
    connected(&mut b).await;
    let mut replay = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
    replay.write_all(UPGRADE).await.unwrap();
    replay.write_all(&a.client_info).await.unwrap();
    // Closed without a ServerInfo (the ServerKey may not even have been written yet).
    let answer = read_until_closed(&mut replay).await;
    assert!(
        !frame_types(&answer).contains(&burrow_derp::frame::types::SERVER_INFO),
        "{answer:?}"
    );
    b.send(key(1).public_key(), b"still for the real a".to_vec());
    assert_eq!(a.recv_packet().await, b"still for the real a");
    let addr = d.addr();
    let metrics = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap();
    assert_eq!(metric(&metrics, "derp_replayed_client_infos_total"), 1);
}

/// Attack `bad-frames`: garbage instead of a ClientInfo, an oversized frame from an
/// authenticated client, and a frame too short for its type each close only their own
/// connection; the relay keeps relaying between the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_close_only_their_connection() {
    use tokio::io::AsyncWriteExt;
    let mut d = derper(&["--listen", "127.0.0.1:0"]);
    let addr = d.addr();
    let url: DerpUrl = format!("http://{addr}/derp").parse().unwrap();
    let mut a = DerpClient::spawn(url.clone(), key(1), vec![]);
    let mut b = DerpClient::spawn(url, key(2), vec![]);
    connected(&mut a).await;
    connected(&mut b).await;
    // Garbage where the ClientInfo belongs (its "length" is 2.9 GB).
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage.write_all(UPGRADE).await.unwrap();
    garbage
        .write_all(b"\xde\xad\xbe\xef\x00junk")
        .await
        .unwrap();
    read_until_closed(&mut garbage).await;
    // An authenticated client announcing a 1 MiB SendPacket (the limit is 64 KiB + 64).
    let mut big = RawClient::connect(addr, key(5), 5).await;
    big.stream
        .write_all(&[0x04, 0x00, 0x10, 0x00, 0x00])
        .await
        .unwrap();
    read_until_closed(&mut big.stream).await;
    // A SendPacket too short to hold a destination key.
    let mut short = RawClient::connect(addr, key(6), 6).await;
    short
        .stream
        .write_all(&[0x04, 0x00, 0x00, 0x00, 0x03, 1, 2, 3])
        .await
        .unwrap();
    read_until_closed(&mut short.stream).await;
    deliver(&a, &mut b, key(2).public_key(), b"still relaying").await;
    let metrics = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap();
    assert_eq!(metric(&metrics, "derp_bad_connections_total"), 3);
    assert!(d.0.try_wait().unwrap().is_none(), "the relay exited");
}

/// A plain HTTP/1.1 GET (closing) with optional headers; the whole answer.
async fn get(addr: SocketAddr, path: &str, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

/// Audit #10 (attack `open-relay`): with --verify-clients, keys the control server does not
/// know are refused; its nodes relay as before. The verification endpoint answers nothing
/// without the shared token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_clients_serves_only_the_control_servers_nodes() {
    use burrow::control::verify::{self, LiveKeys};
    struct Nodes(Vec<burrow_wg::PublicKey>);
    impl LiveKeys for Nodes {
        fn is_live(&self, key: &burrow_wg::PublicKey) -> Result<bool, String> {
            Ok(self.0.contains(key))
        }
    }
    let dir = std::env::temp_dir().join(format!("burrow-derper-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = "verify-token-0123456789abcdef0123456789";
    let token_file = dir.join("verify.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let nodes = Nodes(vec![key(1).public_key(), key(2).public_key()]);
    let router: axum::Router = verify::router(std::sync::Arc::new(nodes), token.into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    // Not an oracle for whoever asks.
    let path = verify::path_for(&key(1).public_key());
    assert!(get(control, &path, "").await.starts_with("HTTP/1.1 401"));
    let wrong = get(control, &path, "Authorization: Bearer guess\r\n").await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let right = get(
        control,
        &path,
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    assert!(right.contains(r#"{"allow":true}"#), "{right}");

    let d = derper(&[
        "--listen",
        "127.0.0.1:0",
        "--verify-clients",
        &format!("http://{control}"),
        "--verify-token-file",
        token_file.to_str().unwrap(),
    ]);
    let url: DerpUrl = format!("http://{}/derp", d.addr()).parse().unwrap();
    let mut a = DerpClient::spawn(url.clone(), key(1), vec![]);
    let mut b = DerpClient::spawn(url.clone(), key(2), vec![]);
    connected(&mut a).await;
    connected(&mut b).await;
    deliver(&a, &mut b, key(2).public_key(), b"verified").await;
    // A self-made key is refused: its handshake never completes.
    let stranger = RawClient::connect_refused(d.addr(), key(3)).await;
    assert!(!frame_types(&stranger).contains(&burrow_derp::frame::types::SERVER_INFO));
    let addr = d.addr();
    let metrics = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap();
    assert_eq!(metric(&metrics, "derp_refused_clients_total"), 1);
    assert_eq!(metric(&metrics, "derp_clients"), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

impl RawClient {
    /// Sends a valid ClientInfo for `k`; returns what the relay sent until it hung up.
    async fn connect_refused(addr: SocketAddr, k: PrivateKey) -> Vec<u8> {
        use rand_chacha::rand_core::SeedableRng;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(UPGRADE).await.unwrap();
        let mut client =
            burrow_derp::Client::new(k, None, None, rand_chacha::ChaCha20Rng::seed_from_u64(3));
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
            client.handle_bytes(&buf[..n]).unwrap();
            if let Some(info) = client.poll_transmit() {
                stream.write_all(&info).await.unwrap();
                break;
            }
        }
        seen.extend(read_until_closed(&mut stream).await);
        seen
    }
}

/// Audit #16 (attack `empty-mesh-key`): a mesh key file that trims to less than 32 bytes is
/// refused at start, instead of making every client that sends it a mesh peer.
#[test]
fn a_short_mesh_key_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("burrow-derper-meshkey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in [("empty", "  \n"), ("short", "region-secret\n")] {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let mut child = Command::new(BURROW)
            .args(["derper", "--listen", "127.0.0.1:0", "--mesh-key"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut status = None;
        for _ in 0..100 {
            status = child.try_wait().unwrap();
            if status.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name}: the relay started with a short mesh key");
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(!status.success());
        assert!(err.contains("at least 32"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Records each connection's peer address (a new address is a new TCP connection).
async fn record_peer(
    axum::extract::State(peers): axum::extract::State<
        std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<SocketAddr>>>,
    >,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    peers.lock().unwrap().insert(peer);
    next.run(req).await
}

/// Security review follow-up (attack `verify-amplify`): with --verify-clients, each unknown
/// key used to cost the control server a new TCP (and TLS) connection. 40 self-made keys at
/// once now cost at most VERIFY_CONCURRENCY connections, kept alive and reused; every key
/// is still asked about and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_reuses_a_few_connections_to_the_control_server() {
    use burrow::control::verify::{self, LiveKeys};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    struct NoNodes(Arc<AtomicUsize>);
    impl LiveKeys for NoNodes {
        fn is_live(&self, _key: &burrow_wg::PublicKey) -> Result<bool, String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(false)
        }
    }
    const STRANGERS: usize = 40;
    let dir = std::env::temp_dir().join(format!("burrow-derper-vconn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = "verify-token-0123456789abcdef0123456789";
    let token_file = dir.join("verify.token");
    std::fs::write(&token_file, token).unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let peers: Arc<Mutex<std::collections::BTreeSet<SocketAddr>>> = Arc::default();
    let router: axum::Router = verify::router(Arc::new(NoNodes(asked.clone())), token.into());
    let router = router.layer(axum::middleware::from_fn_with_state(
        peers.clone(),
        record_peer,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let d = derper(&[
        "--listen",
        "127.0.0.1:0",
        "--verify-clients",
        &format!("http://{control}"),
        "--verify-token-file",
        token_file.to_str().unwrap(),
    ]);
    let addr = d.addr();
    let strangers: Vec<_> = (0..STRANGERS)
        .map(|i| tokio::spawn(RawClient::connect_refused(addr, key(100 + i as u8))))
        .collect();
    for s in strangers {
        let seen = s.await.unwrap();
        assert!(!frame_types(&seen).contains(&burrow_derp::frame::types::SERVER_INFO));
    }
    assert_eq!(asked.load(Ordering::SeqCst), STRANGERS);
    let connections = peers.lock().unwrap().len();
    assert!(
        connections <= burrow::derper::VERIFY_CONCURRENCY,
        "{connections} connections for {STRANGERS} lookups"
    );
    let metrics = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "derp_refused_clients_total"),
        STRANGERS as u64
    );
    assert_eq!(
        metric(&metrics, "derp_verify_connections_total"),
        connections as u64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
