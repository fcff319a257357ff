//! The node's main UDP socket on loopback: dual-stack (`[::]`, IPV6_V6ONLY off) it hears and
//! answers IPv4 and IPv6 peers on one port; IPv4 only it keeps to 127.0.0.1. Skipped (with a
//! SKIPPED line) on a host without IPv6.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use burrow::transport::{bind_udp_socket, bind_udp_socket_as, SocketFamilies};
use tokio::net::UdpSocket;

/// Receives one datagram, or fails the test rather than hang.
async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("a datagram in time")
        .expect("recv_from");
    (buf[..n].to_vec(), from)
}

/// The dual-stack main socket, or None (and a SKIPPED line) where the host has no IPv6.
fn dual_stack(test: &str) -> Option<UdpSocket> {
    let s = bind_udp_socket(0).expect("bind_udp_socket");
    let local = s.local_addr().unwrap();
    if SocketFamilies::of(local) == SocketFamilies::Ipv4Only {
        eprintln!("SKIPPED {test}: this host has no IPv6 (bind_udp_socket fell back to {local})");
        return None;
    }
    assert_eq!(
        local.ip(),
        Ipv6Addr::UNSPECIFIED,
        "a dual-stack socket is bound on [::]"
    );
    Some(s)
}

#[tokio::test]
async fn dual_stack_socket_hears_and_answers_ipv4_and_ipv6_peers() {
    let Some(node) = dual_stack("dual_stack_socket_hears_and_answers_ipv4_and_ipv6_peers") else {
        return;
    };
    let port = node.local_addr().unwrap().port();
    let v4 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let v6 = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).await.unwrap();
    let (v4_addr, v6_addr) = (v4.local_addr().unwrap(), v6.local_addr().unwrap());

    // In: an IPv4 peer arrives as IPv4-mapped IPv6, which canonical_remote turns back.
    v4.send_to(b"from v4", (Ipv4Addr::LOCALHOST, port))
        .await
        .unwrap();
    let (data, from) = recv(&node).await;
    assert_eq!(data, b"from v4");
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", v4_addr.port())
        .parse()
        .unwrap();
    assert_eq!(from, mapped, "the kernel's form of an IPv4 source");
    assert_eq!(burrow_punch::canonical_remote(from), v4_addr);

    v6.send_to(b"from v6", (Ipv6Addr::LOCALHOST, port))
        .await
        .unwrap();
    let (data, from) = recv(&node).await;
    assert_eq!(data, b"from v6");
    assert_eq!(from, v6_addr);
    assert_eq!(burrow_punch::canonical_remote(from), v6_addr);

    // Out: a plain IPv4 SocketAddr (as the engine keeps IPv4 peers) and an IPv6 one, both
    // arriving from the node's one port.
    node.send_to(b"to v4", v4_addr).await.unwrap();
    let (data, from) = recv(&v4).await;
    assert_eq!(data, b"to v4");
    assert_eq!(from, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));

    node.send_to(b"to v6", v6_addr).await.unwrap();
    let (data, from) = recv(&v6).await;
    assert_eq!(data, b"to v6");
    assert_eq!(from, SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
}

#[tokio::test]
async fn dual_stack_socket_holds_its_port_in_both_families() {
    let Some(node) = dual_stack("dual_stack_socket_holds_its_port_in_both_families") else {
        return;
    };
    let port = node.local_addr().unwrap().port();
    // IPV6_V6ONLY is off: the IPv4 port is taken too, so nobody else hears the node's IPv4
    // peers on it.
    let e = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
        .expect_err("0.0.0.0 on the dual-stack socket's port");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
}

#[tokio::test]
async fn ipv4_only_socket_keeps_to_ipv4() {
    let node = bind_udp_socket_as(SocketFamilies::Ipv4Only, 0).unwrap();
    let local = node.local_addr().unwrap();
    assert_eq!(local.ip(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(SocketFamilies::of(local), SocketFamilies::Ipv4Only);

    let v4 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    v4.send_to(b"from v4", (Ipv4Addr::LOCALHOST, local.port()))
        .await
        .unwrap();
    let (data, from) = recv(&node).await;
    assert_eq!(data, b"from v4");
    assert_eq!(from, v4.local_addr().unwrap(), "plain IPv4 already");

    let to_v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 9));
    assert!(
        node.send_to(b"x", to_v6).await.is_err(),
        "an IPv4 socket cannot send to IPv6"
    );
}
