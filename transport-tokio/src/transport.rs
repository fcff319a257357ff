//! What the drivers need from the outside world, so the same driver code runs over tokio's
//! sockets in the `burrow` binary and over the simulator's sockets in `burrow-sim`.
//!
//! Time comes from `tokio::time`, which the simulator (turmoil) controls; drivers never read
//! `std::time::Instant::now()` directly.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

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
