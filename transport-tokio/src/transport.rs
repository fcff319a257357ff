//! What the drivers need from the outside world, so the same driver code runs over tokio's
//! sockets in the `burrow` binary and over the simulator's sockets in `burrow-sim`.
//!
//! Time comes from `tokio::time`, which the simulator (turmoil) controls; drivers never read
//! `std::time::Instant::now()` directly.
//!
//! Also the byte-stream trait the DERP and control connections are generic over, and the
//! large-buffered, dual-stack UDP socket `burrow wg` and `burrow up` bind.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;

/// A bidirectional byte stream (plain TCP or TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A bound UDP socket.
pub trait UdpTransport: Send + Sync + 'static {
    /// Sends one datagram.
    fn send_to(
        &self,
        buf: &[u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send;
    /// Receives one datagram.
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;
    /// The address the socket is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl UdpTransport for tokio::net::UdpSocket {
    fn send_to(
        &self,
        buf: &[u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send {
        tokio::net::UdpSocket::send_to(self, buf, target)
    }

    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send {
        tokio::net::UdpSocket::recv_from(self, buf)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }
}

/// The current time as the protocol crates want it: tokio's clock, simulated under turmoil.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Socket buffers as large as wireguard-go asks for, so bursts are not dropped by the kernel.
const SOCKET_BUFFER: usize = 7 << 20;

/// Which address families a bound UDP socket carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketFamilies {
    /// `[::]:port` with IPV6_V6ONLY off: IPv6, and IPv4 as IPv4-mapped addresses.
    DualStack,
    /// `0.0.0.0:port`: the host has no IPv6.
    Ipv4Only,
}

impl SocketFamilies {
    /// What a socket [`bind_udp_socket`] returned carries, from its bound address.
    pub fn of(local: SocketAddr) -> Self {
        match local {
            SocketAddr::V6(_) => SocketFamilies::DualStack,
            SocketAddr::V4(_) => SocketFamilies::Ipv4Only,
        }
    }

    /// Whether IPv6 peers are reachable from it.
    pub fn ipv6(self) -> bool {
        self == SocketFamilies::DualStack
    }
}

/// Whether a dual-stack socket failed for want of IPv6 on this host (kernel booted without it,
/// no IPv6 socket options), so IPv4 alone is worth a try; not for causes IPv4 shares (the port
/// in use, no permission).
pub fn lacks_ipv6(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|code| {
        matches!(
            Errno::from_raw(code),
            Errno::EAFNOSUPPORT
                | Errno::EPFNOSUPPORT
                | Errno::EPROTONOSUPPORT
                | Errno::EADDRNOTAVAIL
                | Errno::ENOPROTOOPT
        )
    })
}

/// The node's main UDP socket, with large buffers: dual-stack `[::]:port` (IPV6_V6ONLY off,
/// so one socket carries both families), or `0.0.0.0:port` when the host has no IPv6.
/// [`SocketFamilies::of`] its local address tells which.
pub fn bind_udp_socket(port: u16) -> io::Result<UdpSocket> {
    match bind_udp_socket_as(SocketFamilies::DualStack, port) {
        Ok(s) => {
            tracing::info!(local = ?s.local_addr().ok(), "UDP socket dual-stack (IPv4 and IPv6)");
            Ok(s)
        }
        Err(e) if lacks_ipv6(&e) => {
            tracing::info!(error = %e, "no IPv6 on this host: UDP socket on 0.0.0.0, IPv4 only");
            bind_udp_socket_as(SocketFamilies::Ipv4Only, port)
        }
        Err(e) => Err(e),
    }
}

/// A UDP socket with large buffers carrying `families`, on the unspecified address and `port`.
pub fn bind_udp_socket_as(families: SocketFamilies, port: u16) -> io::Result<UdpSocket> {
    let (domain, addr) = match families {
        SocketFamilies::DualStack => (
            socket2::Domain::IPV6,
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
        ),
        SocketFamilies::Ipv4Only => (
            socket2::Domain::IPV4,
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
        ),
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if families == SocketFamilies::DualStack {
        // Linux defaults to off (net.ipv6.bindv6only = 0), but the sysctl may say otherwise.
        s.set_only_v6(false)?;
    }
    for (set, name) in [
        (
            socket2::Socket::set_recv_buffer_size as fn(&socket2::Socket, usize) -> io::Result<()>,
            "receive",
        ),
        (socket2::Socket::set_send_buffer_size, "send"),
    ] {
        if let Err(e) = set(&s, SOCKET_BUFFER) {
            tracing::debug!(error = %e, "cannot enlarge the {name} buffer");
        }
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    fn os(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e as i32)
    }

    #[test]
    fn falls_back_to_ipv4_only_for_a_host_without_ipv6() {
        // ipv6.disable=1 (no AF_INET6 sockets), no IPv6 socket options, no IPv6 address.
        for e in [
            Errno::EAFNOSUPPORT,
            Errno::EPFNOSUPPORT,
            Errno::EPROTONOSUPPORT,
            Errno::EADDRNOTAVAIL,
            Errno::ENOPROTOOPT,
        ] {
            assert!(lacks_ipv6(&os(e)), "{e}");
        }
    }

    #[test]
    fn does_not_fall_back_for_what_ipv4_would_hit_too() {
        for e in [
            Errno::EADDRINUSE,
            Errno::EACCES,
            Errno::EMFILE,
            Errno::ENOBUFS,
        ] {
            assert!(!lacks_ipv6(&os(e)), "{e}");
        }
        assert!(!lacks_ipv6(&io::Error::other("not from the OS")));
    }

    #[test]
    fn families_follow_the_bound_address() {
        let dual: SocketAddr = "[::]:41641".parse().unwrap();
        let v4: SocketAddr = "0.0.0.0:41641".parse().unwrap();
        assert_eq!(SocketFamilies::of(dual), SocketFamilies::DualStack);
        assert!(SocketFamilies::of(dual).ipv6());
        assert_eq!(SocketFamilies::of(v4), SocketFamilies::Ipv4Only);
        assert!(!SocketFamilies::of(v4).ipv6());
    }
}
