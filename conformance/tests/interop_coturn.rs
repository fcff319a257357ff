//! burrow's STUN client and netcheck against coturn's `turnserver` (Debian package coturn),
//! running as a plain STUN server with RFC 5780 on 127.0.0.1 / 127.0.0.2.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use burrow_conformance::tools::{free_port_pair, require, KillOnDrop};
use burrow_netcheck::{FilteringBehavior, MappingBehavior, NatType};
use burrow_stun::{Encoder, Message, MessageType, TransactionId};

struct Coturn {
    _child: KillOnDrop,
    primary: SocketAddr,
    alt: SocketAddr,
}

fn start_coturn(test: &str) -> Option<Coturn> {
    let bin = require(test, "turnserver", "coturn")?;
    // A port taken between choosing it and coturn binding it, or a slow start on a loaded
    // machine, gets fresh ports and another try rather than a failed test.
    let mut last = None;
    for _ in 0..3 {
        let (p, q) = free_port_pair();
        let dir = std::env::temp_dir().join(format!("burrow-coturn-{}-{p}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(&bin)
            .args([
                "-n",
                "--stun-only",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--no-auth",
            ])
            .args(["-L", "127.0.0.1", "-L", "127.0.0.2"])
            .args(["-p", &p.to_string(), "--alt-listening-port", &q.to_string()])
            .args(["--log-file", "stdout", "--simple-log"])
            .arg("--pidfile")
            .arg(dir.join("turnserver.pid"))
            .arg("--userdb")
            .arg(dir.join("turndb"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        let c = Coturn {
            _child: KillOnDrop(child),
            primary: format!("127.0.0.1:{p}").parse().unwrap(),
            alt: format!("127.0.0.2:{q}").parse().unwrap(),
        };
        // Wait until it answers (100 ms per try).
        for _ in 0..150 {
            if binding(c.primary).is_some() {
                return Some(c);
            }
        }
        last = Some(c.primary);
    }
    panic!("turnserver did not answer (last on {last:?}) in three starts of 15 s");
}

/// One Binding request over a plain socket; the raw response bytes and our socket address.
fn binding(server: SocketAddr) -> Option<(Vec<u8>, SocketAddr)> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut req = Vec::new();
    Encoder::new(MessageType::BINDING_REQUEST, TransactionId([0x42; 12]))
        .fingerprint()
        .encode(&mut req)
        .unwrap();
    s.send_to(&req, server).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some((buf[..n].to_vec(), s.local_addr().unwrap()))
}

#[test]
fn coturn_answers_parse_strictly_with_valid_fingerprint() {
    let Some(coturn) = start_coturn("coturn_answers_parse_strictly_with_valid_fingerprint") else {
        return;
    };
    let (bytes, me) = binding(coturn.primary).expect("coturn answers");
    let m = Message::parse(&bytes).expect("coturn's answer parses");
    assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
    assert_eq!(m.transaction_id(), TransactionId([0x42; 12]));
    if m.has_fingerprint() {
        m.verify_fingerprint()
            .expect("coturn's FINGERPRINT verifies");
    }
    assert!(m.attributes().all(|a| a.is_ok()), "every attribute decodes");
    assert_eq!(m.mapped_address(), Some(me));
    let other = m
        .attributes()
        .flatten()
        .find_map(|a| match a {
            burrow_stun::Attribute::OtherAddress(a) => Some(a),
            _ => None,
        })
        .expect("coturn with two IPs offers OTHER-ADDRESS");
    assert_eq!(other, coturn.alt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netcheck_against_coturn_rfc5780() {
    let Some(coturn) = start_coturn("netcheck_against_coturn_rfc5780") else {
        return;
    };
    let spec = format!("coturn={}", coturn.primary).parse().unwrap();
    let report = burrow::netcheck::run(&[spec], Duration::from_secs(5))
        .await
        .expect("report");
    assert!(report.udp && report.ipv4);
    assert_eq!(report.global_v4.unwrap().ip().to_string(), "127.0.0.1");
    assert_eq!(report.nat_type, NatType::None);
    assert_eq!(report.mapping, MappingBehavior::EndpointIndependent);
    assert_eq!(report.filtering, FilteringBehavior::EndpointIndependent);
    assert_eq!(report.mapping_varies_by_dest_ip, Some(false));
    assert_eq!(report.region_latency.len(), 1);
    assert!(report.region_latency[0].v4_ms.is_some());
    assert_eq!(report.preferred_region, Some(1));
}
