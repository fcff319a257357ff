//! `burrow derper` as a real process on loopback, with burrow's tokio DERP clients: relaying,
//! HTTP endpoints, bad clients, TLS, mesh, a kill-and-restart mid-stream, the restart
//! announcement, and netcheck against it. The security audit's attacks on it are in
//! `derper_attacks.rs`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use burrow::derp_client::{DerpClient, DerpState, DerpUrl};
use burrow_derp::ClientEvent;

mod common;
use common::derper::{connected, deliver, derper, http_get, key};
use common::BURROW;

async fn recv_packet(c: &mut DerpClient) -> (burrow_wg::PublicKey, Vec<u8>) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.events.recv())
            .await
            .expect("a packet in time")
            .unwrap()
        {
            ClientEvent::Packet { src, data } => return (src, data),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_between_clients_and_serves_http_endpoints() {
    let d = derper(&["--listen", "127.0.0.1:0"]);
    let url: DerpUrl = format!("http://{}/derp", d.addr()).parse().unwrap();
    let mut a = DerpClient::spawn(url.clone(), key(1), vec![]);
    let mut b = DerpClient::spawn(url, key(2), vec![]);
    connected(&mut a).await;
    connected(&mut b).await;
    a.note_preferred(true);
    a.send(key(2).public_key(), b"a to b".to_vec());
    assert_eq!(
        recv_packet(&mut b).await,
        (key(1).public_key(), b"a to b".to_vec())
    );
    b.send(key(1).public_key(), b"b to a".to_vec());
    assert_eq!(
        recv_packet(&mut a).await,
        (key(2).public_key(), b"b to a".to_vec())
    );

    assert!(http_get(d.addr(), "/generate_204").starts_with("HTTP/1.1 204"));
    assert!(http_get(d.addr(), "/health").contains("ok"));
    let metrics = http_get(d.addr(), "/metrics");
    assert!(metrics.contains("derp_clients 2"), "{metrics}");
    assert!(
        metrics.contains("derp_packets_relayed_total 2"),
        "{metrics}"
    );
    assert!(http_get(d.addr(), "/nope").starts_with("HTTP/1.1 404"));
    assert!(
        http_get(d.addr(), "/derp").starts_with("HTTP/1.1 426"),
        "no Upgrade header"
    );

    // A client speaking garbage is dropped; the others keep relaying.
    let mut bad = TcpStream::connect(d.addr()).unwrap();
    write!(
        bad,
        "GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
    )
    .unwrap();
    bad.write_all(&[0x02, 0x7f, 0xff, 0xff, 0xff, 1, 2, 3])
        .unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = Vec::new();
    let _ = bad.read_to_end(&mut sink); // the relay closes it
    a.send(key(2).public_key(), b"still relaying".to_vec());
    assert_eq!(recv_packet(&mut b).await.1, b"still relaying".to_vec());
    assert!(http_get(d.addr(), "/metrics").contains("derp_bad_connections_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_after_the_relay_restarts() {
    let dir = std::env::temp_dir().join(format!("burrow-derper-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("derp.key");
    let _ = std::fs::remove_file(&key_file);
    let d = derper(&[
        "--listen",
        "127.0.0.1:0",
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    let addr = d.addr();
    let url: DerpUrl = format!("http://{addr}/derp").parse().unwrap();
    let mut a = DerpClient::spawn(url.clone(), key(1), vec![]);
    let mut b = DerpClient::spawn(url, key(2), vec![]);
    connected(&mut a).await;
    connected(&mut b).await;
    deliver(&a, &mut b, key(2).public_key(), b"before").await;
    // Kill it mid-stream, start it again on the same port with the same key.
    drop(d);
    tokio::time::timeout(
        Duration::from_secs(10),
        a.state
            .wait_for(|s| matches!(s, DerpState::Connecting { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    let _d2 = derper(&[
        "--listen",
        &addr.to_string(),
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    connected(&mut a).await;
    connected(&mut b).await;
    deliver(&a, &mut b, key(2).public_key(), b"after the restart").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_self_signed_certificate() {
    let dir = std::env::temp_dir().join(format!("burrow-derper-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.der");
    let d = derper(&[
        "--listen",
        "127.0.0.1:0",
        "--self-signed",
        "localhost",
        "--cert-out",
        cert.to_str().unwrap(),
    ]);
    let url: DerpUrl = format!("https://localhost:{}/derp", d.addr().port())
        .parse()
        .unwrap();
    let roots = vec![std::fs::read(&cert).unwrap()];
    let mut a = DerpClient::spawn(url.clone(), key(1), roots.clone());
    let mut b = DerpClient::spawn(url.clone(), key(2), roots);
    connected(&mut a).await;
    connected(&mut b).await;
    let src = deliver(&a, &mut b, key(2).public_key(), b"over TLS").await;
    assert_eq!(src, key(1).public_key());
    // Without trusting the certificate, the client never connects.
    let mut untrusting = DerpClient::spawn(url, key(3), vec![]);
    let state = tokio::time::timeout(
        Duration::from_secs(10),
        untrusting.state.wait_for(|s| {
            matches!(
                s,
                DerpState::Connecting {
                    last_error: Some(_)
                }
            )
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert!(
        matches!(state, DerpState::Connecting { last_error: Some(e) } if e.contains("certificate") || e.contains("Unknown"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_meshed_relays_forward_between_their_clients() {
    let dir = std::env::temp_dir().join(format!("burrow-derper-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mesh = dir.join("mesh.key");
    std::fs::write(&mesh, "region-secret-0123456789abcdef0123456789\n").unwrap();
    // Reserve two ports, then start both relays pointing at each other.
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let url = |p: u16| format!("http://127.0.0.1:{p}/derp");
    let d1 = derper(&[
        "--listen",
        &format!("127.0.0.1:{}", ports[0]),
        "--mesh-key",
        mesh.to_str().unwrap(),
        "--mesh-with",
        &url(ports[1]),
    ]);
    let d2 = derper(&[
        "--listen",
        &format!("127.0.0.1:{}", ports[1]),
        "--mesh-key",
        mesh.to_str().unwrap(),
        "--mesh-with",
        &url(ports[0]),
    ]);
    let mut a = DerpClient::spawn(url(ports[0]).parse().unwrap(), key(1), vec![]);
    let mut b = DerpClient::spawn(url(ports[1]).parse().unwrap(), key(2), vec![]);
    connected(&mut a).await;
    connected(&mut b).await;
    let src = deliver(&a, &mut b, key(2).public_key(), b"across the region").await;
    assert_eq!(src, key(1).public_key());
    assert!(http_get(d1.addr(), "/metrics").contains("derp_mesh_peers 1"));
    let _ = (d1, d2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_relay_announces_its_restart() {
    let d = derper(&["--listen", "127.0.0.1:0"]);
    let url: DerpUrl = format!("http://{}/derp", d.addr()).parse().unwrap();
    let mut a = DerpClient::spawn(url, key(1), vec![]);
    connected(&mut a).await;
    Command::new("kill")
        .args(["-TERM", &d.0.id().to_string()])
        .status()
        .unwrap();
    let restarting = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(ClientEvent::Restarting { reconnect_in, .. }) = a.events.recv().await {
                return reconnect_in;
            }
        }
    })
    .await
    .expect("Restarting announced");
    assert_eq!(restarting, Duration::from_millis(500));
}

#[test]
fn netcheck_reads_a_derp_map_and_measures_the_relay_region() {
    let stun_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = derper(&[
        "--listen",
        "127.0.0.1:0",
        "--stun-listen",
        &format!("127.0.0.1:{stun_port}"),
    ]);
    let dir = std::env::temp_dir().join(format!("burrow-derpmap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let map = dir.join("map.json");
    std::fs::write(
        &map,
        format!(
            r#"{{"Regions":{{"900":{{"RegionID":900,"RegionCode":"lo","RegionName":"Loopback","Nodes":[{{"Name":"900a","HostName":"localhost","IPv4":"127.0.0.1","STUNPort":{stun_port},"DERPPort":{},"InsecureForTests":true}}]}}}}}}"#,
            d.addr().port()
        ),
    )
    .unwrap();
    let out = Command::new(BURROW)
        .args(["netcheck", "--json", "--derp-map", map.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["region_latency"][0]["code"], "lo");
    assert_eq!(v["region_latency"][0]["id"], 900);
    assert!(v["region_latency"][0]["latency_ms"].as_f64().is_some());
    assert_eq!(v["preferred_region"], 900);
    let _ = std::fs::remove_dir_all(&dir);
}
