//! What the drivers need from the outside world, so the same driver code runs over tokio's
//! sockets in the `burrow` binary and over the simulator's sockets in `burrow-sim`.
//!
//! Time comes from `tokio::time`, which the simulator (turmoil) controls; drivers never read
//! `std::time::Instant::now()` directly.
//!
//! Also the byte-stream trait the DERP and control connections are generic over, and the
//! large-buffered UDP socket `burrow wg` and `burrow up` bind.

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

/// A UDP socket on 0.0.0.0:`port` with large buffers.
pub fn bind_udp_socket(port: u16) -> io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
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
    s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    UdpSocket::from_std(s.into())
}
