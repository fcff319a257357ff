//! IPv6 end to end for the servers, on loopback: `burrow derper` and `burrow control serve`
//! listening on `[::]` take clients over 127.0.0.1 and ::1; the DERP client's Happy Eyeballs
//! over real sockets; a dual-stack STUN server answers each family with its own address.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use burrow::control::MapMessage;
use burrow::derp_client::{connect_stream_to, DerpClient, DerpUrl};
use burrow::stun_server::StunServer;
use burrow_stun::ServerConfig;
use common::control::{authkey, registered, temp_dir, MapStream};
use common::derper::{connected, deliver, derper, key};
use common::start;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether this host has IPv6 loopback (containers may not); tests print SKIPPED without.
fn have_ipv6() -> bool {
    std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

macro_rules! require_ipv6 {
    ($name:literal) => {
        if !have_ipv6() {
            eprintln!("SKIPPED {}: no IPv6 loopback", $name);
            return;
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derper_on_the_ipv6_wildcard_relays_between_ipv4_and_ipv6_clients() {
    require_ipv6!("derper_on_the_ipv6_wildcard_relays_between_ipv4_and_ipv6_clients");
    let d = derper(&["--listen", "[::]:0"]);
    assert!(d.addr().is_ipv6(), "announced {}", d.addr());
    let port = d.addr().port();
    let v4: DerpUrl = format!("http://127.0.0.1:{port}/derp").parse().unwrap();
    let v6: DerpUrl = format!("http://[::1]:{port}/derp").parse().unwrap();
    let mut a = DerpClient::spawn(v4, key(1), vec![]);
    let mut b = DerpClient::spawn(v6, key(2), vec![]);
    connected(&mut a).await;
    connected(&mut b).await;
    let src = deliver(&a, &mut b, key(2).public_key(), b"v4 to v6").await;
    assert_eq!(src, key(1).public_key());
    let src = deliver(&b, &mut a, key(1).public_key(), b"v6 to v4").await;
    assert_eq!(src, key(2).public_key());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_on_the_ipv6_wildcard_serves_ipv4_and_ipv6_clients() {
    require_ipv6!("control_on_the_ipv6_wildcard_serves_ipv4_and_ipv6_clients");
    let dir = temp_dir("dual-stack");
    let db = dir.join("control.sqlite");
    let key = authkey(&db, &["--reusable"]);
    let socket = dir.join("admin.sock");
    let derp_map = dir.join("derpmap.json");
    std::fs::write(
        &derp_map,
        r#"{"Regions":{"1":{"RegionID":1,"RegionCode":"lo","Nodes":[{"Name":"1a",
            "HostName":"localhost","IPv4":"127.0.0.1","IPv6":"::1","STUNPort":3479,
            "DERPPort":8443,"InsecureForTests":true}]}}}"#,
    )
    .unwrap();
    let server = start(
        "control",
        &[
            "serve",
            "--listen",
            "[::]:0",
            "--db",
            db.to_str().unwrap(),
            "--admin-socket",
            socket.to_str().unwrap(),
            "--derp-map",
            derp_map.to_str().unwrap(),
        ],
    );
    assert!(server.addr().is_ipv6(), "announced {}", server.addr());
    let port = server.addr().port();
    let http = reqwest::Client::new();
    let base4 = format!("http://127.0.0.1:{port}");
    let base6 = format!("http://[::1]:{port}");
    for base in [&base4, &base6] {
        let r = http.get(format!("{base}/health")).send().await.unwrap();
        assert!(r.status().is_success(), "{base}: {}", r.status());
    }
    let a = registered(&http, &base4, &key, "over-v4", 1).await;
    let b = registered(&http, &base6, &key, "over-v6", 2).await;
    assert_ne!(a.node.id, b.node.id);
    // The netmap carries the relay and its STUN server in both families, IPv6 first.
    let mut stream = MapStream::open(&http, &base6, &b.secret).await;
    let MapMessage::NetMap(map) = stream.next().await else {
        panic!("a netmap first")
    };
    assert_eq!(map.peers.len(), 1);
    assert_eq!(
        map.derp,
        vec![burrow_control::DerpRegion {
            id: 1,
            code: "lo".into(),
            url: "http://localhost:8443/derp".into(),
            stun: vec![
                "[::1]:3479".parse().unwrap(),
                "127.0.0.1:3479".parse().unwrap()
            ],
            // The relay's fixed addresses from the DERP map, both families.
            ipv4: Some(Ipv4Addr::LOCALHOST),
            ipv6: Some(Ipv6Addr::LOCALHOST),
        }]
    );
}

/// A region whose URL's host name does not resolve (`.invalid`, RFC 6761) is still reached
/// through its fixed addresses: the DERP client dials ::1 and 127.0.0.1 and speaks to the
/// relay under the URL's name. Without them the same URL never connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_is_reached_at_its_fixed_addresses_when_its_host_name_does_not_resolve() {
    require_ipv6!("a_relay_is_reached_at_its_fixed_addresses_when_its_host_name_does_not_resolve");
    let d = derper(&["--listen", "[::]:0"]);
    let port = d.addr().port();
    let url: DerpUrl = format!("http://derp.invalid:{port}/derp").parse().unwrap();
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut a = DerpClient::spawn_to(url.clone(), vec![v6, v4], key(1), vec![]);
    // IPv6 refused (nothing listens there): Happy Eyeballs goes on to IPv4 at once.
    let mut b = DerpClient::spawn_to(url.clone(), vec![refused_v6(), v4], key(2), vec![]);
    connected(&mut a).await;
    connected(&mut b).await;
    let src = deliver(&a, &mut b, key(2).public_key(), b"fixed addresses").await;
    assert_eq!(src, key(1).public_key());
    // The name alone: the lookup fails, the client keeps trying and never connects.
    let mut unresolved = DerpClient::spawn(url, key(3), vec![]);
    // (A client that connected would never match: the wait would time out.)
    tokio::time::timeout(
        Duration::from_secs(20),
        unresolved.state.wait_for(|s| {
            matches!(
                s,
                burrow::derp_client::DerpState::Connecting {
                    last_error: Some(_)
                }
            )
        }),
    )
    .await
    .expect("a failed attempt")
    .unwrap();
}

/// A region's fixed addresses for a relay on loopback pass the node's checks and are raced
/// IPv6 first: with both families listening, IPv6 takes the connection and IPv4 is never tried.
#[tokio::test]
async fn a_regions_fixed_addresses_are_raced_ipv6_first() {
    require_ipv6!("a_regions_fixed_addresses_are_raced_ipv6_first");
    let v6 = tokio::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let port = v6.local_addr().unwrap().port();
    let Ok(v4) = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await else {
        eprintln!("SKIPPED: 127.0.0.1:{port} is taken");
        return;
    };
    let url: DerpUrl = format!("http://localhost:{port}/derp").parse().unwrap();
    let dial = burrow::derp_client::region_dial_addrs(
        &url,
        Some(Ipv4Addr::LOCALHOST),
        Some(Ipv6Addr::LOCALHOST),
    );
    assert_eq!(
        dial,
        vec![
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port))
        ]
    );
    let accepted = tokio::spawn(accept_one(v6));
    assert!(connect_and_read(&dial).await.starts_with("HTTP/1.1 200"));
    assert_eq!(accepted.await.unwrap(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), v4.accept())
            .await
            .is_err(),
        "IPv4 was not tried"
    );
}

/// A listener that accepts one connection and says which family it came in on.
async fn accept_one(l: tokio::net::TcpListener) -> IpAddr {
    let (mut s, peer) = l.accept().await.unwrap();
    s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
    peer.ip()
}

/// A port on ::1 with nothing listening (bound, then closed): connecting is refused.
fn refused_v6() -> SocketAddr {
    let l = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap()
}

async fn connect_and_read(addrs: &[SocketAddr]) -> String {
    let url: DerpUrl = "http://relay.test/derp".parse().unwrap();
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        connect_stream_to(&url, addrs, &vec![]),
    )
    .await
    .expect("connects in time")
    .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn happy_eyeballs_over_loopback_falls_back_to_ipv4_when_ipv6_is_refused() {
    require_ipv6!("happy_eyeballs_over_loopback_falls_back_to_ipv4_when_ipv6_is_refused");
    let v4 = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let v4_addr = v4.local_addr().unwrap();
    let accepted = tokio::spawn(accept_one(v4));
    let dead = refused_v6();
    assert!(connect_and_read(&[dead, v4_addr])
        .await
        .starts_with("HTTP/1.1 200"));
    assert_eq!(accepted.await.unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[tokio::test]
async fn happy_eyeballs_over_loopback_prefers_ipv6_when_both_work() {
    require_ipv6!("happy_eyeballs_over_loopback_prefers_ipv6_when_both_work");
    let v6 = tokio::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let v4 = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addrs =
        burrow::derp_client::sort_addresses([v4.local_addr().unwrap(), v6.local_addr().unwrap()]);
    assert!(addrs[0].is_ipv6(), "IPv6 first: {addrs:?}");
    let accepted = tokio::spawn(accept_one(v6));
    assert!(connect_and_read(&addrs).await.starts_with("HTTP/1.1 200"));
    assert_eq!(accepted.await.unwrap(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    // The IPv4 listener never saw a connection.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), v4.accept())
            .await
            .is_err(),
        "IPv4 was not tried"
    );
}

/// A STUN Binding request (no attributes) with a fixed transaction ID.
fn binding_request() -> Vec<u8> {
    let mut b = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    b.extend_from_slice(&[7u8; 12]);
    b
}

#[tokio::test]
async fn a_dual_stack_stun_server_answers_each_family_with_its_own_address() {
    require_ipv6!("a_dual_stack_stun_server_answers_each_family_with_its_own_address");
    let server = StunServer::bind(ServerConfig::new("[::]:0".parse().unwrap()))
        .await
        .unwrap();
    let port = server.config().primary.port();
    assert!(server.config().primary.is_ipv6());
    tokio::spawn(server.run(1, std::future::pending()));
    for ip in [IpAddr::V4(Ipv4Addr::LOCALHOST), Ipv6Addr::LOCALHOST.into()] {
        let c = tokio::net::UdpSocket::bind((ip, 0)).await.unwrap();
        c.send_to(&binding_request(), (ip, port)).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(from, SocketAddr::new(ip, port), "answered from the server");
        let m = burrow_stun::Message::parse(&buf[..n]).unwrap();
        assert_eq!(
            m.mapped_address(),
            Some(c.local_addr().unwrap()),
            "a client on {ip} sees its own address, in its own family"
        );
    }
}
