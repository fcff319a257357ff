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

    /// How many datagrams one [`send_segments`](Self::send_segments) call may carry in one
    /// system call (UDP GSO); 1 when the socket sends one at a time.
    fn max_segments(&self) -> usize {
        1
    }

    /// Sends `buf` to `target` as datagrams of `segment` bytes each (the last may be shorter).
    /// Without GSO: one [`send_to`](Self::send_to) per datagram.
    fn send_segments(
        &self,
        buf: &[u8],
        segment: usize,
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<()>> + Send {
        async move {
            for datagram in buf.chunks(segment.max(1)) {
                self.send_to(datagram, target).await?;
            }
            Ok(())
        }
    }

    /// How many slots one [`recv_batch`](Self::recv_batch) fills at most (a slot holds one
    /// datagram, or with UDP GRO a coalesced run of them): a [`RecvBatch`] for this socket has
    /// that many.
    fn recv_slots(&self) -> usize {
        1
    }

    /// Bytes each slot of a [`RecvBatch`] for this socket needs at least: with UDP GRO on,
    /// one slot takes a whole coalesced run of datagrams ([`GRO_SLOT_LEN`]).
    fn recv_slot_len(&self) -> usize {
        0
    }

    /// Receives one or more datagrams into `batch` (its earlier contents are dropped).
    /// Without batching: one [`recv_from`](Self::recv_from).
    fn recv_batch(&self, batch: &mut RecvBatch) -> impl Future<Output = io::Result<()>> + Send {
        async move {
            batch.clear();
            let (len, from) = self.recv_from(batch.slot_mut(0)).await?;
            batch.push(from, 0, len);
            Ok(())
        }
    }
}

/// The datagram slots one [`UdpTransport::recv_batch`] fills.
#[derive(Debug)]
pub struct RecvBatch {
    data: Vec<u8>,
    slot_len: usize,
    /// Longer datagrams are dropped (a slot may be larger, for coalesced runs).
    max_datagram: usize,
    /// Per datagram: source, offset in `data` and length (a slot holds several when the
    /// kernel coalesced them, UDP GRO).
    got: Vec<(SocketAddr, usize, usize)>,
}

impl RecvBatch {
    /// `slots` slots of `slot_len` bytes each (at least one).
    pub fn new(slots: usize, slot_len: usize) -> Self {
        RecvBatch {
            data: vec![0; slots.max(1) * slot_len],
            slot_len,
            max_datagram: slot_len,
            got: Vec::with_capacity(slots.max(1)),
        }
    }

    /// A batch for `socket` that passes on datagrams of up to `max_datagram` bytes (longer
    /// ones are dropped): its number of slots, each as large as the socket needs (a coalesced
    /// run with UDP GRO) and at least `max_datagram`.
    pub fn for_socket<S: UdpTransport>(socket: &S, max_datagram: usize) -> Self {
        RecvBatch {
            max_datagram,
            ..RecvBatch::new(
                socket.recv_slots(),
                max_datagram.max(socket.recv_slot_len()),
            )
        }
    }

    /// The datagrams read, in order: source and bytes.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.got
            .iter()
            .map(|&(from, at, len)| (from, &self.data[at..at + len]))
    }

    /// How many datagrams the last read brought.
    pub fn len(&self) -> usize {
        self.got.len()
    }

    /// Whether the last read brought none.
    pub fn is_empty(&self) -> bool {
        self.got.is_empty()
    }

    fn clear(&mut self) {
        self.got.clear();
    }

    fn slots(&self) -> usize {
        self.data.len() / self.slot_len.max(1)
    }

    fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let at = i * self.slot_len;
        &mut self.data[at..at + self.slot_len]
    }

    /// Records a datagram of `len` bytes at `at` as read (in order).
    fn push(&mut self, from: SocketAddr, at: usize, len: usize) {
        let len = len.min(self.data.len().saturating_sub(at));
        self.got.push((from, at, len));
    }

    /// Records what one read put into slot `i`: `len` bytes, cut into datagrams of `stride`
    /// bytes (the last may be shorter) when the kernel coalesced a run (UDP GRO). When the
    /// slot was too small for what arrived (`truncated`), a datagram it cut is dropped; so is
    /// one longer than the batch passes on, and a run no kernel would build.
    fn push_slot(
        &mut self,
        i: usize,
        from: SocketAddr,
        len: usize,
        stride: Option<usize>,
        truncated: bool,
    ) {
        let base = i * self.slot_len;
        let len = len.min(self.slot_len);
        let Some(stride) = stride else {
            if !truncated && len <= self.max_datagram {
                self.push(from, base, len);
            }
            return;
        };
        if stride == 0 || len.div_ceil(stride) > MAX_RUN || stride > self.max_datagram {
            return;
        }
        let mut at = 0;
        while at < len {
            // Every datagram of a run but the last is `stride` long; a shorter piece at the
            // end of a cut slot is a cut datagram.
            if truncated && at + stride > len {
                break;
            }
            self.push(from, base + at, stride.min(len - at));
            at += stride;
        }
    }
}

/// A tokio UDP socket that sends runs of equal-sized datagrams to one destination in one
/// system call (UDP GSO: `sendmsg` with `UDP_SEGMENT`) and reads up to [`RECV_SLOTS`]
/// datagrams per call (`recvmmsg`). The peer relay's socket is one: it forwards runs of
/// same-sized WireGuard datagrams between two legs, and GSO lets one buffer cross the kernel
/// (on veth, through every router namespace behind it) instead of one per packet.
///
/// Path MTU handling is the kernel's default. GSO is used only where the kernel knows
/// `UDP_SEGMENT` (Linux 4.18 and later; an older one would send a run as one large datagram).
/// A run the kernel refuses goes out one datagram at a time; a streak of refusals turns GSO
/// off for a while.
///
/// [`with_gro`](Self::with_gro) turns UDP GRO on where the kernel has it (Linux 5.0): a run
/// that crossed the kernel as one buffer (sent with GSO over veth or loopback, or merged by
/// the NIC) is read as one, and [`RecvBatch`] cuts it back into datagrams. Every read must
/// then go through [`recv_batch`](UdpTransport::recv_batch) with
/// [`RecvBatch::for_socket`]'s slots: a plain `recv_from` would see a run as one datagram.
#[derive(Debug)]
pub struct BatchUdpSocket {
    io: UdpSocket,
    /// The kernel knows `UDP_SEGMENT`.
    gso_supported: bool,
    gso: std::sync::atomic::AtomicBool,
    /// GSO sends refused in a row.
    gso_refusals: std::sync::atomic::AtomicU32,
    /// Datagrams sent one at a time since GSO was turned off.
    singles: std::sync::atomic::AtomicU32,
    /// UDP GRO is on: a read may bring a coalesced run.
    gro: bool,
}

/// Bytes a [`RecvBatch`] slot needs for a coalesced run (UDP GRO): the largest IP payload.
pub const GRO_SLOT_LEN: usize = 65_535;

/// Slots one `recvmmsg` call fills at most (each a datagram, or a coalesced run with GRO).
pub const RECV_SLOTS: usize = 32;
/// Datagrams in one coalesced run, at most: the kernel builds up to 64 (128 on recent kernels
/// for runs sent locally); a slot claiming more is dropped whole.
const MAX_RUN: usize = 128;
/// Datagrams one GSO send carries at most (the kernel's `UDP_MAX_SEGMENTS`).
const GSO_SEGMENTS: usize = 64;
/// GSO sends refused in a row after which the socket stops trying for [`GSO_RETRY`] datagrams.
const GSO_REFUSALS: u32 = 16;
/// Datagrams sent singly before GSO, turned off by refusals, is tried again.
const GSO_RETRY: u32 = 65_536;

impl BatchUdpSocket {
    /// Wraps a bound socket (such as [`bind_udp_socket`]'s).
    pub fn new(io: UdpSocket) -> Self {
        // The option reads back on kernels that honour it in `sendmsg`.
        let gso_supported =
            nix::sys::socket::getsockopt(&io, nix::sys::socket::sockopt::UdpGsoSegment).is_ok();
        BatchUdpSocket {
            io,
            gso_supported,
            gso: std::sync::atomic::AtomicBool::new(gso_supported),
            gso_refusals: std::sync::atomic::AtomicU32::new(0),
            singles: std::sync::atomic::AtomicU32::new(0),
            gro: false,
        }
    }

    /// Wraps a bound socket with UDP GRO on if the kernel takes it (see the type's notes:
    /// reads then go through `recv_batch` only).
    pub fn with_gro(io: UdpSocket) -> Self {
        let gro =
            nix::sys::socket::setsockopt(&io, nix::sys::socket::sockopt::UdpGroSegment, &true)
                .is_ok();
        if !gro {
            tracing::info!("UDP GRO not available; one datagram per read slot");
        }
        BatchUdpSocket {
            gro,
            ..BatchUdpSocket::new(io)
        }
    }

    /// Whether UDP GRO is on.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Each datagram, one at a time; the first error is returned once all were tried.
    async fn send_singly(&self, buf: &[u8], segment: usize, target: SocketAddr) -> io::Result<()> {
        let mut first_error = None;
        for datagram in buf.chunks(segment) {
            if let Err(e) = self.send_to(datagram, target).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The tokio socket underneath.
    pub fn get_ref(&self) -> &UdpSocket {
        &self.io
    }

    /// One `sendmsg`, with `UDP_SEGMENT` when `segment` is given.
    async fn send_segmented(
        &self,
        buf: &[u8],
        segment: Option<u16>,
        target: SocketAddr,
    ) -> io::Result<()> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
        use std::os::fd::AsRawFd;
        let addr = SockaddrStorage::from(target);
        let iov = [std::io::IoSlice::new(buf)];
        loop {
            self.io.writable().await?;
            let sent = self.io.try_io(tokio::io::Interest::WRITABLE, || {
                let size;
                let cmsgs: &[ControlMessage<'_>] = match &segment {
                    Some(s) => {
                        size = [ControlMessage::UdpGsoSegments(s)];
                        &size
                    }
                    None => &[],
                };
                sendmsg(
                    self.io.as_raw_fd(),
                    &iov,
                    cmsgs,
                    MsgFlags::empty(),
                    Some(&addr),
                )
                .map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r.map(drop),
            }
        }
    }
}

impl UdpTransport for BatchUdpSocket {
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.gso_supported
            && !self.gso.load(Relaxed)
            && self.singles.fetch_add(1, Relaxed) >= GSO_RETRY
        {
            // GSO was refused a while ago (a path MTU, a route): try it again.
            self.singles.store(0, Relaxed);
            self.gso_refusals.store(0, Relaxed);
            self.gso.store(true, Relaxed);
        }
        self.io.send_to(buf, target).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        if self.gro {
            // It would take a coalesced run for one datagram.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a UDP GRO socket is read with recv_batch",
            ));
        }
        self.io.recv_from(buf).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn max_segments(&self) -> usize {
        if self.gso.load(std::sync::atomic::Ordering::Relaxed) {
            GSO_SEGMENTS
        } else {
            1
        }
    }

    async fn send_segments(
        &self,
        buf: &[u8],
        segment: usize,
        target: SocketAddr,
    ) -> io::Result<()> {
        let segment = segment.max(1);
        if buf.len() > segment && self.max_segments() > 1 {
            if let Ok(size) = u16::try_from(segment) {
                match self.send_segmented(buf, Some(size), target).await {
                    Ok(()) => {
                        self.gso_refusals
                            .store(0, std::sync::atomic::Ordering::Relaxed);
                        return Ok(());
                    }
                    // The kernel refused this run before sending any of it: EIO (a route
                    // or device that cannot segment, IPsec), EINVAL or EMSGSIZE (a path MTU
                    // below the segment, among other causes). These datagrams go one at a
                    // time; a streak of refusals turns GSO off for a while.
                    Err(e)
                        if e.raw_os_error()
                            .is_some_and(|c| c == EIO || c == EINVAL || c == EMSGSIZE) =>
                    {
                        let streak = self
                            .gso_refusals
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            + 1;
                        if streak >= GSO_REFUSALS {
                            tracing::info!(error = %e, "UDP GSO refused; sending one datagram at a time for a while");
                            self.singles.store(0, std::sync::atomic::Ordering::Relaxed);
                            self.gso.store(false, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.send_singly(buf, segment, target).await
    }

    fn recv_slots(&self) -> usize {
        RECV_SLOTS
    }

    fn recv_slot_len(&self) -> usize {
        if self.gro {
            GRO_SLOT_LEN
        } else {
            0
        }
    }

    async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<()> {
        use nix::sys::socket::{
            recvmmsg, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrLike, SockaddrStorage,
        };
        use std::os::fd::AsRawFd;
        batch.clear();
        let slots = batch.slots().min(RECV_SLOTS);
        let slot_len = batch.slot_len;
        let gro = self.gro;
        loop {
            self.io.readable().await?;
            let got = self.io.try_io(tokio::io::Interest::READABLE, || {
                // Room for UDP_GRO's size, and to spare: a truncated control buffer is caught.
                let cmsg = gro.then(|| nix::cmsg_space!(i32, [u8; 64]));
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slots, cmsg);
                let mut iovs: Vec<[std::io::IoSliceMut<'_>; 1]> = batch.data[..slots * slot_len]
                    .chunks_mut(slot_len)
                    .map(|c| [std::io::IoSliceMut::new(c)])
                    .collect();
                let results = recvmmsg(
                    self.io.as_raw_fd(),
                    &mut headers,
                    iovs.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                )
                .map_err(io::Error::from)?;
                let mut got = [Slot::default(); RECV_SLOTS];
                let mut n = 0;
                for (slot, msg) in got.iter_mut().zip(results) {
                    let from = msg
                        .address
                        .and_then(|a: SockaddrStorage| match a.family()? {
                            nix::sys::socket::AddressFamily::Inet => {
                                a.as_sockaddr_in().map(|v4| SocketAddr::from(*v4))
                            }
                            nix::sys::socket::AddressFamily::Inet6 => {
                                a.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
                            }
                            _ => None,
                        });
                    // The run's datagram size, when the kernel coalesced one. Control messages
                    // that did not fit (MSG_CTRUNC) could hide it: the slot is dropped whole
                    // rather than passed on as one datagram.
                    let (stride, unreadable) = match (gro, msg.cmsgs()) {
                        (false, _) => (None, false),
                        (true, Ok(mut c)) => (
                            c.find_map(|m| match m {
                                ControlMessageOwned::UdpGroSegments(s) => usize::try_from(s).ok(),
                                _ => None,
                            }),
                            false,
                        ),
                        (true, Err(_)) => (None, true),
                    };
                    *slot = Slot {
                        from,
                        len: msg.bytes,
                        stride,
                        truncated: unreadable || msg.flags.contains(MsgFlags::MSG_TRUNC),
                    };
                    n += 1;
                }
                Ok((got, n))
            });
            match got {
                Ok((got, n)) => {
                    for (i, slot) in got.into_iter().take(n).enumerate() {
                        // UDP always gives a source; were one missing, the datagram would come
                        // from 0.0.0.0:0, which no peer or path has.
                        let from = slot.from.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                        batch.push_slot(i, from, slot.len, slot.stride, slot.truncated);
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// What one `recvmmsg` put into a slot.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    from: Option<SocketAddr>,
    len: usize,
    /// Datagram size of a coalesced run (UDP GRO).
    stride: Option<usize>,
    /// The slot was too small for what arrived.
    truncated: bool,
}

const EIO: i32 = nix::errno::Errno::EIO as i32;
const EINVAL: i32 = nix::errno::Errno::EINVAL as i32;
const EMSGSIZE: i32 = nix::errno::Errno::EMSGSIZE as i32;

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

/// Sets the socket to send every datagram with Don't Fragment and never fragment it here,
/// whatever the kernel has learned of the path (`IP_PMTUDISC_PROBE`, and its IPv6 twin on a
/// dual-stack socket): path MTU discovery sizes datagrams itself, and its probes must be
/// the size they say.
pub fn set_path_mtu_probe(socket: &UdpSocket) -> io::Result<()> {
    use rustix::net::sockopt;
    let v6 = socket.local_addr()?.is_ipv6();
    // On a dual-stack socket the IPv4 option covers IPv4-mapped traffic; a kernel that refuses
    // it there still gets the IPv6 one.
    match sockopt::set_ip_mtu_discover(socket, sockopt::Ipv4PathMtuDiscovery::PROBE) {
        Err(e) if !v6 => return Err(e.into()),
        _ => {}
    }
    if v6 {
        sockopt::set_ipv6_mtu_discover(socket, sockopt::Ipv6PathMtuDiscovery::PROBE)?;
    }
    Ok(())
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

    async fn recv(rx: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 2048];
        let (n, from) =
            tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv_from(&mut buf))
                .await
                .expect("a datagram in time")
                .unwrap();
        buf.truncate(n);
        (buf, from)
    }

    #[tokio::test]
    async fn a_segmented_send_arrives_as_separate_datagrams() {
        // The node's dual-stack main socket sending to an IPv4 address, as on the relay path.
        let tx = BatchUdpSocket::new(bind_udp_socket(0).unwrap());
        assert!(tx.max_segments() > 1, "Linux sends with UDP GSO");
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut run = Vec::new();
        for i in 0..5u8 {
            run.extend([i; 100]);
        }
        run.extend([9u8; 40]);
        tx.send_segments(&run, 100, rx.local_addr().unwrap())
            .await
            .unwrap();
        for i in 0..5u8 {
            let (d, _) = recv(&rx).await;
            assert_eq!(d, vec![i; 100], "datagram {i}");
        }
        assert_eq!(recv(&rx).await.0, vec![9u8; 40], "the shorter last one");
        assert_eq!(
            tx.gso_refusals.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "sent as one segmented run, not refused and split"
        );
    }

    #[tokio::test]
    async fn a_socket_that_refuses_gso_still_sends_every_datagram_and_stops_trying() {
        // With checksums off (SO_NO_CHECK) Linux refuses UDP GSO with EINVAL at send time,
        // although the option reads back: a refusal only a real send finds out.
        let io = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        const SO_NO_CHECK: libc::c_int = 11;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket, and a pointer to an int with its size.
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&io),
                libc::SOL_SOCKET,
                SO_NO_CHECK,
                std::ptr::from_ref(&on).cast(),
                std::mem::size_of_val(&on) as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_NO_CHECK set");
        let tx = BatchUdpSocket::new(io);
        assert!(
            tx.max_segments() > 1,
            "GSO looks available before the first send"
        );
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let mut sent = 0u32;
        for run in 0..GSO_REFUSALS {
            let mut buf = Vec::new();
            for i in 0..3u8 {
                buf.extend([i.wrapping_add(run as u8); 200]);
            }
            tx.send_segments(&buf, 200, to).await.unwrap();
            sent += 3;
            for i in 0..3u8 {
                let (d, _) = recv(&rx).await;
                assert_eq!(
                    d,
                    vec![i.wrapping_add(run as u8); 200],
                    "run {run} datagram {i}"
                );
            }
        }
        assert_eq!(sent, 3 * GSO_REFUSALS);
        assert_eq!(tx.max_segments(), 1, "a streak of refusals turns GSO off");
        // Off, a run goes out singly without asking the kernel again, and still arrives whole.
        tx.send_segments(&[7u8; 250], 100, to).await.unwrap();
        assert_eq!(recv(&rx).await.0, vec![7u8; 100]);
        assert_eq!(recv(&rx).await.0, vec![7u8; 100]);
        assert_eq!(recv(&rx).await.0, vec![7u8; 50]);
        assert_eq!(
            tx.gso_refusals.load(std::sync::atomic::Ordering::Relaxed),
            GSO_REFUSALS
        );
    }

    #[tokio::test]
    async fn a_coalesced_run_is_read_back_as_its_datagrams() {
        let rx = BatchUdpSocket::with_gro(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        assert!(rx.gro(), "Linux has UDP GRO");
        let to = rx.local_addr().unwrap();
        let tx = BatchUdpSocket::new(bind_udp_socket(0).unwrap());
        let mut expected = Vec::new();
        for run in 0..3u8 {
            let mut buf = Vec::new();
            for i in 0..20u8 {
                buf.extend([run * 32 + i; 1000]);
                expected.push(vec![run * 32 + i; 1000]);
            }
            buf.extend([run * 32 + 31; 10]);
            expected.push(vec![run * 32 + 31; 10]);
            tx.send_segments(&buf, 1000, to).await.unwrap();
        }
        let mut batch = RecvBatch::for_socket(&rx, 2048);
        assert!(
            rx.recv_from(&mut [0u8; 2048]).await.is_err(),
            "a plain read would take a run for one datagram"
        );
        let mut got = Vec::new();
        let mut reads = 0;
        while got.len() < expected.len() {
            tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv_batch(&mut batch))
                .await
                .expect("datagrams in time")
                .unwrap();
            reads += 1;
            // Without GRO every datagram would start a slot of its own.
            assert!(
                batch.got.windows(2).any(|w| w[1].1 == w[0].1 + w[0].2),
                "a run crossed the kernel as one and shared a slot"
            );
            got.extend(batch.datagrams().map(|(_, d)| d.to_vec()));
        }
        assert_eq!(got, expected, "every datagram, whole and in order");
        assert!(reads <= 3, "a run per slot at most ({reads} reads)");
    }

    #[test]
    fn a_slot_is_cut_at_the_run_stride_and_a_cut_datagram_is_dropped() {
        let from: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let lens = |b: &RecvBatch| b.datagrams().map(|(_, d)| d.len()).collect::<Vec<_>>();
        let mut b = RecvBatch::new(2, 100);
        b.push_slot(0, from, 70, Some(30), false);
        b.push_slot(1, from, 30, None, false);
        assert_eq!(lens(&b), [30, 30, 10, 30]);
        assert_eq!(
            b.datagrams().nth(3).unwrap().1.as_ptr(),
            b.data[100..].as_ptr()
        );
        b.clear();
        // The run did not fit: the datagram cut at the slot's end goes, the rest stay.
        b.push_slot(0, from, 100, Some(30), true);
        assert_eq!(lens(&b), [30, 30, 30]);
        b.clear();
        // A single datagram larger than the slot is not passed on cut.
        b.push_slot(0, from, 100, None, true);
        assert!(b.is_empty());
        // An empty datagram is still one.
        b.push_slot(1, from, 0, None, false);
        assert_eq!(lens(&b), [0]);
        b.clear();
        // Cut exactly at a datagram's end: every piece is whole.
        b.push_slot(0, from, 90, Some(30), true);
        assert_eq!(lens(&b), [30, 30, 30]);
        b.clear();
        // No kernel builds a run of 1-byte datagrams this long, nor one of datagrams longer
        // than the batch passes on.
        let mut big = RecvBatch::new(1, 1000);
        big.max_datagram = 100;
        big.push_slot(0, from, 1000, Some(1), false);
        big.push_slot(0, from, 1000, Some(200), false);
        assert!(big.is_empty());
        // A datagram longer than the batch passes on is dropped, a run of short ones is not.
        big.push_slot(0, from, 150, None, false);
        assert!(big.is_empty());
        big.push_slot(0, from, 1000, Some(100), false);
        assert_eq!(lens(&big), [100; 10]);
    }

    #[tokio::test]
    async fn a_batch_read_brings_every_queued_datagram_with_its_source() {
        let rx = BatchUdpSocket::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let to = rx.local_addr().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..20u8 {
            let s = if i % 2 == 0 { &a } else { &b };
            s.send_to(&[i; 300], to).await.unwrap();
        }
        let mut batch = RecvBatch::new(rx.recv_slots(), 4096);
        let mut got = Vec::new();
        let mut reads = 0;
        while got.len() < 20 {
            tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv_batch(&mut batch))
                .await
                .expect("datagrams in time")
                .unwrap();
            reads += 1;
            assert!(!batch.is_empty());
            got.extend(batch.datagrams().map(|(from, d)| (from, d.to_vec())));
        }
        assert_eq!(got.len(), 20);
        assert!(reads < 20, "several datagrams per read ({reads} reads)");
        for (i, (from, d)) in got.iter().enumerate() {
            let i = u8::try_from(i).unwrap();
            assert_eq!(d, &vec![i; 300]);
            let sender = if i % 2 == 0 { &a } else { &b };
            assert_eq!(*from, sender.local_addr().unwrap());
        }
    }

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
