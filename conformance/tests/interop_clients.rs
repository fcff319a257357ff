//! Third-party STUN clients against `burrow stun`: coturn's `turnutils_stunclient` (RFC 5780)
//! and Debian's `stun` (package stun-client, an RFC 3489 client).

use std::net::SocketAddr;
use std::process::Command;

use burrow::stun_server::StunServer;
use burrow_conformance::tools::{free_port_pair, require};
use burrow_stun::ServerConfig;

async fn start_burrow() -> (SocketAddr, SocketAddr) {
    let (p, q) = free_port_pair();
    let primary: SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
    let alt: SocketAddr = format!("127.0.0.2:{q}").parse().unwrap();
    let server = StunServer::bind(ServerConfig {
        primary,
        alternate: Some(alt),
        software: Some("burrow-test".into()),
    })
    .await
    .expect("bind burrow stun")
    .with_rfc3489(true); // the `stun` client speaks RFC 3489 (off by default)
    tokio::spawn(server.run(1, std::future::pending()));
    (primary, alt)
}

fn output(mut cmd: Command) -> (bool, String) {
    let out = cmd.output().expect("run client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turnutils_stunclient_gets_rfc5780_answers() {
    let Some(bin) = require(
        "turnutils_stunclient_gets_rfc5780_answers",
        "turnutils_stunclient",
        "coturn",
    ) else {
        return;
    };
    let (primary, alt) = start_burrow().await;
    let mut cmd = Command::new(bin);
    cmd.args(["-p", &primary.port().to_string(), "127.0.0.1"]);
    let (ok, text) = tokio::task::spawn_blocking(move || output(cmd))
        .await
        .unwrap();
    assert!(ok, "turnutils_stunclient failed:\n{text}");
    assert!(text.contains("UDP reflexive addr: 127.0.0.1:"), "{text}");
    assert!(text.contains(&format!("Other addr: : {alt}")), "{text}");
    // Responses 2 and 3 answer CHANGE-REQUEST from the alternate address.
    assert!(
        text.contains(&format!("Response origin: : {primary}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("Response origin: : {alt}")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc3489_stun_client_classifies_loopback_as_open() {
    let Some(bin) = require(
        "rfc3489_stun_client_classifies_loopback_as_open",
        "stun",
        "stun-client",
    ) else {
        return;
    };
    let (primary, _alt) = start_burrow().await;
    let mut cmd = Command::new(bin);
    cmd.arg(primary.to_string()).arg("-v");
    let (_, text) = tokio::task::spawn_blocking(move || output(cmd))
        .await
        .unwrap();
    // Test I: plain request; test II: change IP and port; test III: change port.
    for line in ["test I = 1", "test II = 1", "test III = 1", "Primary: Open"] {
        assert!(text.contains(line), "missing {line:?}:\n{text}");
    }
}
