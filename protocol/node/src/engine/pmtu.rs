//! Path MTU discovery on a peer's direct path: padded disco pings sized as the data datagrams
//! they stand for, and what the tunnel does with a packet too big for the path.
//!
//! While the search runs, datagrams above the size confirmed so far go over DERP (which has
//! no MTU to speak of) rather than into a possible black hole; once it settles below the
//! tunnel's MTU, packets above it get ICMP "too big" back into the TUN (or are fragmented,
//! for IPv4 packets that allow it), so the sender's TCP lowers its segment size.

use std::net::SocketAddr;
use std::time::Instant;

use burrow_disco::Message;
use burrow_punch::{MtuReport, MtuSizes, PathMtu, Route};
use burrow_wg::messages::{TAG_LEN, TRANSPORT_HEADER_LEN};
use rand_chacha::rand_core::RngCore;

use super::{Node, Transmit};
use crate::icmp::TooBig;

/// The smallest tunnel MTU a path is searched from (the IPv6 minimum).
pub const MIN_TUNNEL_MTU: u16 = 1280;
/// WireGuard's transport overhead on a packet (header and tag).
const WG_OVERHEAD: usize = TRANSPORT_HEADER_LEN + TAG_LEN;
/// A sealed disco Ping with a node key and no padding, in bytes (magic, sender key, nonce,
/// box tag; type, version, transaction ID, node key).
const PING_LEN: usize = 6 + 32 + 24 + 16 + 2 + 12 + 32;
/// A datagram every path is taken to carry: a 1,280-byte IPv6 packet's UDP payload.
const ASSUMED_DATAGRAM: usize = 1280 - 40 - 8;

/// Path MTU settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtuConfig {
    /// Probe each direct path and follow it (on by default). Off: every packet is sent as it
    /// comes, whatever the path carries.
    pub discovery: bool,
    /// The tunnel's MTU (the TUN device's): the largest inner packet, and the top of the search.
    pub tunnel_mtu: u16,
    /// The MTU of the host's interface toward the Internet: no probe is larger.
    pub interface_mtu: u16,
}

impl Default for MtuConfig {
    fn default() -> Self {
        MtuConfig {
            discovery: true,
            tunnel_mtu: MIN_TUNNEL_MTU,
            interface_mtu: 1500,
        }
    }
}

/// A peer's direct path and its discovery.
#[derive(Debug, Default)]
pub(super) struct PeerMtu {
    path: Option<(SocketAddr, PathMtu)>,
}

impl PeerMtu {
    fn on(&self, addr: SocketAddr) -> Option<&PathMtu> {
        self.path
            .as_ref()
            .filter(|(a, _)| *a == addr)
            .map(|(_, m)| m)
    }

    fn on_mut(&mut self, addr: SocketAddr) -> Option<&mut PathMtu> {
        self.path
            .as_mut()
            .filter(|(a, _)| *a == addr)
            .map(|(_, m)| m)
    }

    /// When its probe times out or the next is due, while `route` is the path it probes (off
    /// it, the search waits for the path to come back).
    pub(super) fn poll_timeout(&self, route: Route) -> Option<Instant> {
        match (route, self.path.as_ref()) {
            (Route::Direct(a), Some((b, m))) if a == *b => m.poll_timeout(),
            _ => None,
        }
    }
}

impl Node {
    /// The datagram sizes a direct path to `addr` is searched over.
    fn mtu_sizes(&self, addr: SocketAddr) -> MtuSizes {
        let c = self.config.mtu;
        let by_interface = usize::from(c.interface_mtu).saturating_sub(ip_udp_overhead(addr));
        MtuSizes {
            assumed: ASSUMED_DATAGRAM,
            floor: usize::from(MIN_TUNNEL_MTU) + WG_OVERHEAD,
            ceiling: by_interface.min(usize::from(c.tunnel_mtu) + WG_OVERHEAD),
        }
    }

    /// Keeps peer `i`'s discovery on its direct route, and sends its probes when due.
    pub(super) fn run_pmtu(&mut self, now: Instant, i: usize) {
        if !self.config.mtu.discovery {
            return;
        }
        let Route::Direct(addr) = self.peers[i].paths.route() else {
            return;
        };
        if self.peers[i].mtu.on(addr).is_none() {
            let sizes = self.mtu_sizes(addr);
            self.peers[i].mtu.path = Some((addr, PathMtu::new(now, sizes)));
        }
        let rtt = self.peers[i].paths.rtt(addr);
        let last_pong = self.peers[i].paths.last_pong(addr);
        let Some(m) = self.peers[i].mtu.on_mut(addr) else {
            return;
        };
        // The path answered nothing since the probe: the verdict waits for its next
        // heartbeat's answer (no extra ping: a lost one would count against the path).
        m.handle_timeout(now, last_pong);
        let rng = &mut self.rng;
        let Some(m) = self.peers[i].mtu.on_mut(addr) else {
            return;
        };
        // One probe at a time: the next comes after this one's answer or timeout.
        let probe = m.poll_probe(now, rtt, || {
            let mut id = [0u8; 12];
            rng.fill_bytes(&mut id);
            id
        });
        let Some((tx_id, size)) = probe else {
            return;
        };
        let ping = Message::Ping {
            tx_id,
            node_key: Some(self.device.public_key()),
            padding: size.saturating_sub(PING_LEN),
        };
        if let Some(payload) = self.seal(i, &ping) {
            debug_assert_eq!(payload.len(), size.max(PING_LEN));
            self.peers[i].stats.mtu_probes += 1;
            let socket = self.peers[i].paths.socket_of(addr);
            self.queue(Transmit::Udp {
                socket,
                dst: addr,
                payload,
            });
        }
    }

    /// A pong from `from`: whether it answered peer `i`'s probe there.
    pub(super) fn pmtu_pong(
        &mut self,
        now: Instant,
        i: usize,
        from: SocketAddr,
        tx_id: &burrow_disco::TxId,
    ) -> bool {
        let answered = self.peers[i]
            .mtu
            .on_mut(from)
            .is_some_and(|m| m.handle_pong(now, tx_id));
        if answered {
            self.run_pmtu(now, i);
        }
        answered
    }

    /// The route (re)enters the direct path to `addr`: a size the path confirmed before it was
    /// left is checked again, and larger datagrams go over DERP as well until the answer is
    /// in (the path's MTU may have dropped while the traffic went elsewhere, and a black hole
    /// shows no other sign before data is lost in it).
    pub(super) fn pmtu_route_entered(&mut self, now: Instant, i: usize, addr: SocketAddr) {
        if let Some(m) = self.peers[i].mtu.on_mut(addr) {
            m.route_entered(now);
        }
    }

    /// Data went unanswered on the direct path to `addr`: its confirmed size is checked again.
    pub(super) fn pmtu_verify(&mut self, now: Instant, i: usize, addr: SocketAddr) {
        if let Some(m) = self.peers[i].mtu.on_mut(addr) {
            m.verify(now);
        }
    }

    /// A data datagram of `len` bytes goes out on the direct path to `addr` (large data on a
    /// size not confirmed lately has it checked again).
    pub(super) fn pmtu_note_send(&mut self, now: Instant, i: usize, addr: SocketAddr, len: usize) {
        if let Some(m) = self.peers[i].mtu.on_mut(addr) {
            m.note_send(now, len);
        }
    }

    /// Whether the direct path to `addr` has its size checked again right now (data that goes
    /// unanswered meanwhile may be too large for it rather than lost on it).
    pub(super) fn pmtu_verifying(&self, i: usize, addr: SocketAddr) -> bool {
        self.peers[i].mtu.on(addr).is_some_and(|m| m.verifying())
    }

    /// Whether a datagram of `len` bytes to `addr` may be lost to a black hole: the path's size
    /// is being checked again and the datagram is larger than every path carries. Such a
    /// datagram goes over DERP as well until the answer is in.
    pub(super) fn pmtu_at_risk(&self, i: usize, addr: SocketAddr, len: usize) -> bool {
        len > ASSUMED_DATAGRAM && self.peers[i].mtu.on(addr).is_some_and(|m| m.suspected())
    }

    /// The largest datagram the direct path to `addr` is known to carry (`None`: no limit,
    /// discovery is off).
    pub(super) fn path_limit(&self, i: usize, addr: SocketAddr) -> Option<usize> {
        if !self.config.mtu.discovery {
            return None;
        }
        Some(
            self.peers[i]
                .mtu
                .on(addr)
                .map_or(ASSUMED_DATAGRAM, |m| m.limit()),
        )
    }

    /// The largest WireGuard datagram a peer relay at `relay` takes from us: what the
    /// interface carries less IP, UDP and Geneve headers (not probed: the relay's other leg
    /// may carry less, which only a probe through it would show). `None` without discovery.
    pub(super) fn relay_limit(&self, relay: SocketAddr) -> Option<usize> {
        if !self.config.mtu.discovery {
            return None;
        }
        Some(
            usize::from(self.config.mtu.interface_mtu)
                .saturating_sub(ip_udp_overhead(relay) + burrow_relay::GENEVE_HEADER_LEN),
        )
    }

    /// The tunnel MTU toward peer `i` once its path's size is known below the tunnel's own:
    /// its direct path's settled search, or a peer relay's fixed limit. Packets above it are
    /// too big.
    fn settled_mtu(&self, i: usize) -> Option<usize> {
        let limit = match self.peers[i].paths.route() {
            Route::Direct(addr) => self.peers[i].mtu.on(addr)?.settled()?,
            Route::Relay => {
                let (relay, _, _) = self.relay_route(self.last_now, i)?;
                self.relay_limit(relay)?
            }
        };
        // WireGuard pads to 16: the largest inner packet whose datagram fits.
        let inner = limit.checked_sub(WG_OVERHEAD)? / 16 * 16;
        // Below the IPv6 minimum the path is no tunnel path: larger packets take DERP.
        let tunnel = usize::from(self.config.mtu.tunnel_mtu);
        (inner >= usize::from(MIN_TUNNEL_MTU) && inner < tunnel).then_some(inner)
    }

    /// Peer `i`'s packet that is too big for its path: the error written back or the
    /// fragments to send instead; `None` when it fits (or nothing is known yet).
    pub(super) fn oversize(&mut self, i: usize, packet: &[u8]) -> Option<TooBig> {
        if !self.config.mtu.discovery {
            return None;
        }
        let mtu = self.settled_mtu(i)?;
        (packet.len() > mtu).then(|| crate::icmp::too_big(packet, mtu))
    }

    /// Whether a packet of `len` bytes for `peer` leaves on the direct path as things stand:
    /// the route is direct and the path's known size carries its datagram (a larger one takes
    /// DERP). For observers, such as the simulator telling a relay's losses from the path's.
    pub fn goes_direct(&self, peer: &burrow_wg::PublicKey, len: usize) -> bool {
        let Some(&i) = self.by_node.get(peer) else {
            return false;
        };
        let Route::Direct(addr) = self.peers[i].paths.route() else {
            return false;
        };
        let datagram = WG_OVERHEAD + burrow_wg::messages::padded(len);
        self.path_limit(i, addr).is_none_or(|l| datagram <= l)
    }

    /// The tunnel MTU toward `peer` as things stand: its direct path's, or the tunnel's own.
    pub fn path_mtu(&self, peer: &burrow_wg::PublicKey) -> Option<u16> {
        let &i = self.by_node.get(peer)?;
        let own = self.config.mtu.tunnel_mtu;
        Some(self.settled_mtu(i).map_or(own, |m| m as u16))
    }

    /// Peer `i`'s direct path discovery, for the explanation.
    pub(super) fn mtu_report(&self, i: usize) -> Option<(SocketAddr, MtuReport)> {
        self.peers[i]
            .mtu
            .path
            .as_ref()
            .map(|(a, m)| (*a, m.report()))
    }
}

/// IP and UDP header bytes on a datagram to `addr` (IPv4-mapped addresses count as IPv4).
fn ip_udp_overhead(addr: SocketAddr) -> usize {
    let ip = if burrow_punch::canonical_remote(addr).is_ipv4() {
        20
    } else {
        40
    };
    ip + 8
}
