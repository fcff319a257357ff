//! The `burrow` binary as a user runs it.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

mod common;
use common::{Running as Server, BURROW};

fn start(args: &[&str]) -> Server {
    common::start("stun", args)
}

#[test]
fn netcheck_json_against_burrow_stun() {
    let server = start(&["--listen", "127.0.0.1:0"]);
    let addr = server.addr();
    let out = Command::new(BURROW)
        .args(["netcheck", "--json", "--stun", &format!("here={addr}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["udp"], true);
    assert_eq!(v["ipv4"], true);
    assert_eq!(v["nat_type"], "none");
    assert_eq!(v["region_latency"][0]["code"], "here");
    assert_eq!(v["preferred_region"], 1);
    // One plain server: the mapping test needs a second IP.
    assert_eq!(v["mapping_varies_by_dest_ip"], serde_json::Value::Null);
    let global: SocketAddr = v["global_v4"].as_str().unwrap().parse().unwrap();
    assert_eq!(global.ip().to_string(), "127.0.0.1");
}

#[test]
fn netcheck_with_no_answer_exits_nonzero_with_one_line() {
    // A bound socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let out = Command::new(BURROW)
        .args(["netcheck", "--timeout", "1", "--stun", &addr.to_string()])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no STUN server answered"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn server_survives_garbage_and_keeps_answering() {
    let server = start(&["--listen", "127.0.0.1:0"]);
    let addr = server.addr();
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for junk in [
        &b""[..],
        b"\x00\x01\x00\x04\x21\x12\xa4\x42",
        &[0xff; 600],
        &[
            0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            0x80, 0x22, 0x00, 0x40, 0, 0, 0, 0,
        ],
    ] {
        s.send_to(junk, addr).unwrap();
    }
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&[7; 12]);
    s.send_to(&req, addr).unwrap();
    let mut buf = [0u8; 600];
    let n = s.recv(&mut buf).expect("a valid request is still answered");
    let m = burrow_stun::Message::parse(&buf[..n]).unwrap();
    assert_eq!(m.transaction_id().0, [7; 12]);
    assert_eq!(m.mapped_address(), Some(s.local_addr().unwrap()));
}

#[test]
fn rfc5780_flags_are_validated() {
    let out = Command::new(BURROW)
        .args([
            "stun",
            "--listen",
            "127.0.0.1:3478",
            "--alt",
            "127.0.0.1:3479",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--alt must differ"));
}
