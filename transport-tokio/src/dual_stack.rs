//! Listening on both address families: the servers (`burrow derper`, `burrow control serve`,
//! STUN) bind `[::]:PORT` with IPV6_V6ONLY off by default, so one socket takes IPv6 and IPv4
//! (as IPv4-mapped IPv6), and fall back to `0.0.0.0:PORT` on a host without IPv6.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

/// Backlog of the listening sockets (tokio's `TcpListener::bind` uses the same).
const BACKLOG: i32 = 1024;

/// Where a server listens: the address given on the command line, or (none given) every
/// address of both families on `default_port`.
pub fn listen_addr(explicit: Option<SocketAddr>, default_port: u16) -> SocketAddr {
    explicit.unwrap_or(SocketAddr::new(
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        default_port,
    ))
}

/// Whether `addr` is the IPv6 wildcard, which these servers bind dual-stack.
fn is_v6_wildcard(addr: SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V6(ip) if ip.is_unspecified())
}

/// Whether a failure to bind `[::]` means the host has no usable IPv6 (the kernel lacks it,
/// or it is disabled), as opposed to a port in use or a permission problem.
fn no_ipv6(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
    )
}

fn socket(addr: SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    if is_v6_wildcard(addr) {
        socket.set_only_v6(false)?;
    }
    if ty == Type::STREAM {
        // As tokio's bind does: a restarted server must not wait out TIME_WAIT.
        socket.set_reuse_address(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn tcp_exact(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket(addr, Type::STREAM, Protocol::TCP)?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

fn udp_exact(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::from_std(socket(addr, Type::DGRAM, Protocol::UDP)?.into())
}

/// A TCP listener on `addr`; `[::]` is bound dual-stack (IPV6_V6ONLY off). With `fallback`
/// (the address was not given explicitly), a host without IPv6 gets `0.0.0.0` on the same
/// port instead. Must be called within a tokio runtime.
pub fn tcp_listener(addr: SocketAddr, fallback: bool) -> io::Result<TcpListener> {
    match tcp_exact(addr) {
        Err(e) if fallback && is_v6_wildcard(addr) && no_ipv6(&e) => {
            tracing::info!(error = %e, "no IPv6 here; listening on IPv4 only");
            tcp_exact(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()))
        }
        r => r,
    }
}

/// A UDP socket on `addr`, bound as [`tcp_listener`] binds.
pub fn udp_socket(addr: SocketAddr, fallback: bool) -> io::Result<UdpSocket> {
    match udp_exact(addr) {
        Err(e) if fallback && is_v6_wildcard(addr) && no_ipv6(&e) => {
            tracing::info!(error = %e, "no IPv6 here; STUN on IPv4 only");
            udp_exact(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()))
        }
        r => r,
    }
}

/// A peer's address with an IPv4-mapped IPv6 address (an IPv4 client of a dual-stack
/// socket) written as the IPv4 address it is.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The address to send to `to` from a socket bound to `local`: an IPv4 destination is written
/// IPv4-mapped for an IPv6 socket (a dual-stack socket reaches it that way on every OS).
pub fn for_socket(local: SocketAddr, to: SocketAddr) -> SocketAddr {
    match (local, to) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Connects from `from` to the listener's port and returns the source the listener saw.
    async fn seen_from(l: &TcpListener, to: IpAddr) -> SocketAddr {
        let port = l.local_addr().unwrap().port();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect((to, port)), l.accept());
        let mut client = client.unwrap();
        let (mut server, peer) = accepted.unwrap();
        server.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        client.read_exact(&mut b).await.unwrap();
        assert_eq!(client.local_addr().unwrap().port(), peer.port());
        peer
    }

    #[tokio::test]
    async fn the_default_listener_takes_both_families() {
        let l = tcp_listener(listen_addr(None, 0), true).unwrap();
        if !l.local_addr().unwrap().is_ipv6() {
            eprintln!("SKIPPED: no IPv6 on this host");
            return;
        }
        let v6 = seen_from(&l, Ipv6Addr::LOCALHOST.into()).await;
        assert_eq!(v6.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
        let v4 = seen_from(&l, Ipv4Addr::LOCALHOST.into()).await;
        assert_eq!(
            v4.ip(),
            IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            "an IPv4 client arrives IPv4-mapped"
        );
        assert_eq!(canonical(v4).ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[tokio::test]
    async fn an_explicit_address_is_bound_as_given() {
        let l = tcp_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert_eq!(
            l.local_addr().unwrap().ip(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        let port = l.local_addr().unwrap().port();
        assert!(
            tokio::net::TcpStream::connect((Ipv6Addr::LOCALHOST, port))
                .await
                .is_err(),
            "an IPv4 listener is not reachable over IPv6"
        );
    }

    #[tokio::test]
    async fn the_default_udp_socket_answers_both_families() {
        let s = udp_socket(listen_addr(None, 0), true).unwrap();
        let local = s.local_addr().unwrap();
        if !local.is_ipv6() {
            eprintln!("SKIPPED: no IPv6 on this host");
            return;
        }
        for client_ip in [IpAddr::V4(Ipv4Addr::LOCALHOST), Ipv6Addr::LOCALHOST.into()] {
            let c = UdpSocket::bind((client_ip, 0)).await.unwrap();
            c.send_to(b"ping", (client_ip, local.port())).await.unwrap();
            let mut b = [0u8; 8];
            let (_, from) = s.recv_from(&mut b).await.unwrap();
            let from = canonical(from);
            assert_eq!(from, c.local_addr().unwrap());
            s.send_to(b"pong", for_socket(local, from)).await.unwrap();
            let (n, back) = c.recv_from(&mut b).await.unwrap();
            assert_eq!((&b[..n], back.ip()), (&b"pong"[..], client_ip));
        }
    }

    #[test]
    fn ipv4_destinations_are_mapped_only_for_ipv6_sockets() {
        let v4: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let v6: SocketAddr = "[::]:1".parse().unwrap();
        assert_eq!(
            for_socket(v6, v4),
            "[::ffff:192.0.2.1]:9".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(for_socket("0.0.0.0:1".parse().unwrap(), v4), v4);
        assert_eq!(canonical(for_socket(v6, v4)), v4);
    }
}
