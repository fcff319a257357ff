//! WireGuard: sending on a peer's route (both paths while a direct one is unconfirmed),
//! receiving with cryptokey routing, the device's own transmits and events, and noticing a
//! direct path that swallows data.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_punch::{Route, SocketId};
use burrow_wg::device::Received;
use burrow_wg::tunnel::{Decapsulated, Event as WgEvent};
use burrow_wg::PublicKey;

use super::{Event, Node, NodeError};
use crate::batch::Dest;
use crate::routing::inner_source;

/// WireGuard keep-alive (10 s) plus rekey timeout (5 s): data sent on a direct path with no
/// answer on it for this long means the path loses data.
pub(super) const DATA_STALL_AFTER: Duration = Duration::from_secs(15);

/// Data from the peer from another direct address than its data before it answers ours on
/// the direct path only once it has come from there this long.
const PEER_SWITCH_WINDOW: Duration = Duration::from_secs(1);

impl Node {
    /// A direct path is trusted while its pongs are recent and its latest ping was answered.
    fn trusted(&self, now: Instant, i: usize, addr: SocketAddr) -> bool {
        let paths = &self.peers[i].paths;
        paths.missed(addr) == 0
            && !paths.on_probation(addr)
            && paths
                .last_pong(addr)
                .is_some_and(|t| now.saturating_duration_since(t) <= self.config.trust)
    }

    /// Sends a WireGuard datagram on the peer's route; over both paths while a direct path is
    /// not freshly confirmed.
    pub(super) fn send_wg(&mut self, now: Instant, i: usize, datagram: &[u8], data: bool) {
        let route = self.peers[i].paths.route();
        if !matches!(route, Route::Direct(_)) {
            self.peers[i].doubt.end(now, super::DoubtEnd::Left);
        }
        let mut relay = true;
        let relayed = self.relay_route(now, i).filter(|(addr, _, _)| {
            // A datagram the peer relay's socket cannot send whole goes over DERP alone.
            self.relay_limit(*addr).is_none_or(|l| datagram.len() <= l)
        });
        if let (Route::Relay, Some((addr, vni, trusted))) = (route, relayed) {
            // A peer relay: DERP too until it is trusted (no loss at the switch).
            relay = !trusted;
            self.peers[i].stats.tx_peer_relay += 1;
            if data {
                self.note_relay_data(now, i);
            }
            self.send_wg_via_relay(addr, vni, datagram);
        }
        // A datagram larger than the direct path is known to carry goes over DERP alone while
        // the path's MTU search runs (the search settled, `Node::send` keeps such packets out).
        let oversize = match route {
            Route::Direct(addr) => self.path_limit(i, addr).is_some_and(|l| datagram.len() > l),
            Route::Relay => false,
        };
        if oversize {
            self.peers[i].stats.tx_oversize_relay += 1;
        }
        if let (Route::Direct(addr), false) = (route, oversize) {
            let trusted = self.trusted(now, i, addr);
            let rtt = self.peers[i].paths.rtt(addr);
            let socket = self.peers[i].paths.socket_of(addr);
            let p = &mut self.peers[i];
            p.stats.tx_direct += 1;
            if data && p.first_unanswered_direct.is_none() {
                p.first_unanswered_direct = Some(now);
                p.unanswered_sent = 0;
            }
            if data {
                p.unanswered_sent = p.unanswered_sent.saturating_add(1);
            }
            // Data unanswered past the path's usual answer time: over the relay too, and a
            // ping to settle it (demotion waits for the usual evidence, or for the doubt to
            // keep coming back, which is a data stall).
            let verdict = match data {
                true => p.doubt.on_send(now, addr, rtt),
                false => super::doubt::Verdict {
                    in_doubt: p.doubt.in_doubt_about(addr),
                    ..Default::default()
                },
            };
            let doubt = verdict.in_doubt;
            // A doubt that keeps coming back while the path's size is being checked waits for
            // that answer: a black hole for large packets is no reason to leave the path.
            let verifying = verdict.recurring && self.pmtu_verifying(i, addr);
            if data {
                self.pmtu_note_send(now, i, addr, datagram.len());
            }
            let at_risk = self.pmtu_at_risk(i, addr, datagram.len());
            let p = &mut self.peers[i];
            if trusted && doubt {
                p.doubt.note_duplicate(datagram.len());
            }
            // What doubt costs, the path's size being checked included.
            if trusted && (doubt || at_risk) {
                p.stats.tx_doubt += 1;
                p.stats.tx_doubt_bytes += datagram.len() as u64;
            }
            if verdict.recurring && !verifying {
                p.paths.report_data_stall(now, addr);
            } else if verdict.began {
                p.paths.probe(now, addr);
            }
            if verdict.began {
                p.stats.doubt_episodes += 1;
                // A black hole for large packets looks just like this: the path's size is
                // checked again beside the ping.
                self.pmtu_verify(now, i, addr);
                self.flush_paths(now, i);
            }
            relay = !trusted || doubt || at_risk;
            self.transmits
                .push(Dest::Udp { socket, dst: addr }, datagram);
        }
        if relay {
            let p = &mut self.peers[i];
            p.stats.tx_relay += 1;
            let dest = Dest::Derp {
                region: p.config.home_region,
                dst: p.config.node_key,
            };
            self.transmits.push(dest, datagram);
        }
    }

    /// Moves the device's handshake and keep-alive datagrams onto each peer's route, and its
    /// completed handshakes to events.
    pub(super) fn drain_device(&mut self, now: Instant) {
        while let Some((wg, datagram)) = self.device.poll_transmit() {
            if let Some(&i) = self.by_wg.get(&wg) {
                self.send_wg(now, i, &datagram, false);
            }
        }
        while let Some((wg, e)) = self.device.poll_event() {
            if let (Some(&i), WgEvent::HandshakeCompleted { .. }) = (self.by_wg.get(&wg), e) {
                self.peers[i].stats.last_handshake = Some(now);
                let peer = self.peers[i].config.node_key;
                self.events.push_back(Event::HandshakeDone { peer });
            }
        }
    }

    /// A datagram that is neither STUN nor disco: WireGuard's, or unrecognised.
    pub(super) fn handle_wg(
        &mut self,
        now: Instant,
        data: &[u8],
        source: WgSource,
    ) -> Result<(), NodeError> {
        let (direct, src) = match source {
            WgSource::Direct(socket, from) => (Some((socket, from)), from),
            WgSource::PeerRelay(from, _) => (None, from),
            // Each DERP sender gets its own stand-in address, so under load WireGuard's cookies
            // bind to the sender's key: one key's flood does not cost the others their handshakes.
            WgSource::Relay(_, key) => (None, relay_addr_of(&key)),
        };
        if burrow_wg::Message::parse(data).is_err() {
            return Err(NodeError::Unrecognised(src));
        }
        let mut out = std::mem::take(&mut self.buf);
        let r = self.device.decapsulate(now, src, data, &mut out);
        let result = match r {
            Ok(Received::Peer(wg, what)) => {
                if let Some(&i) = self.by_wg.get(&wg) {
                    let p = &mut self.peers[i];
                    // Anything authenticated from the peer answers our data: when we send only
                    // on the direct path, a reply means it got there (the peer may answer over
                    // DERP while its own side of the path is not validated yet).
                    // While the direct path is in doubt, only an answer on it clears it: the
                    // relay carries the answers then, and the data-stall clock keeps running
                    // for a path that eats data but answers pings.
                    // Data from a direct address the peer did not send from a moment ago (its
                    // NAT rebound, or it was renumbered) says nothing of the path we send on,
                    // which may be dead: for a while it does not settle a doubt's clock unless
                    // it comes from that path itself (it still resets the data-stall clock, as
                    // any answer does; missed pongs then demote a dead route).
                    let from_path = direct.map(|(_, from)| from);
                    if let Some(a) = from_path {
                        if p.rx_source.is_none_or(|(s, _)| s != a) {
                            p.rx_source = Some((a, now));
                        }
                    }
                    let new_source = from_path.is_some_and(|a| {
                        p.paths.route() != Route::Direct(a)
                            && p.rx_source.is_some_and(|(_, since)| {
                                now.saturating_duration_since(since) < PEER_SWITCH_WINDOW
                            })
                    });
                    let relayed_in_doubt = from_path.is_none() && p.doubt.is_open();
                    if !new_source {
                        p.doubt.answered(now, from_path);
                    }
                    if !relayed_in_doubt {
                        p.first_unanswered_direct = None;
                    }
                    p.relays.note_answered();
                    match (direct, source) {
                        (Some((_, from)), _) => {
                            p.stats.rx_direct += 1;
                            p.paths.report_data_flowing(now, from);
                        }
                        (None, WgSource::PeerRelay(..)) => p.stats.rx_peer_relay += 1,
                        (None, _) => p.stats.rx_relay += 1,
                    }
                    if let Decapsulated::Data(n) = what {
                        // Cryptokey routing: the inner source must be an address this peer
                        // owns (the longest prefix holding it is this peer's).
                        let owner =
                            inner_source(&out[..n]).and_then(|ip| self.allowed.owner_of(ip));
                        if owner == Some(self.peers[i].config.node_key) {
                            let p = &mut self.peers[i];
                            p.stats.rx_bytes += n as u64;
                            let peer = p.config.node_key;
                            self.deliver(peer, &out[..n]);
                        } else {
                            self.peers[i].stats.rx_spoofed += 1;
                        }
                    }
                    self.flush_paths(now, i);
                }
                Ok(())
            }
            Ok(Received::CookieReply(n)) => {
                let reply = &out[..n];
                match source {
                    WgSource::Direct(socket, dst) => {
                        self.transmits.push(Dest::Udp { socket, dst }, reply)
                    }
                    WgSource::Relay(region, dst) => {
                        self.transmits.push(Dest::Derp { region, dst }, reply)
                    }
                    WgSource::PeerRelay(addr, vni) => self.send_wg_via_relay(addr, vni, reply),
                }
                Ok(())
            }
            Err(source) => Err(NodeError::WgInput { from: src, source }),
        };
        self.buf = out;
        self.drain_device(now);
        result
    }

    /// Reports peer `i`'s direct path to its path machine when data sent on it has had no
    /// answer for `DATA_STALL_AFTER`.
    pub(super) fn check_stall(&mut self, now: Instant, i: usize) {
        let p = &mut self.peers[i];
        let Route::Direct(addr) = p.paths.route() else {
            p.first_unanswered_direct = None;
            return;
        };
        if stall_deadline(p).is_some_and(|t| now >= t) {
            p.first_unanswered_direct = None;
            p.paths.report_data_stall(now, addr);
        }
    }
}

/// When peer `p`'s direct path counts as stalled if nothing comes back on it:
/// [`DATA_STALL_AFTER`] after the first unanswered data, once enough has been sent. On a lossy
/// path a few datagrams go unanswered by chance: it takes as many as make that unlikely given
/// how often the path answers pings (one on a path answering every ping, up to five on a new
/// one, 11 on one answering one in three).
pub(super) fn stall_deadline(p: &super::Peer) -> Option<Instant> {
    let Route::Direct(addr) = p.paths.route() else {
        return None;
    };
    let needed = p.paths.unlikely_silence(addr);
    if p.unanswered_sent < needed {
        return None;
    }
    p.first_unanswered_direct.map(|t| t + DATA_STALL_AFTER)
}

/// Where a WireGuard datagram came from.
#[derive(Debug, Clone, Copy)]
pub(super) enum WgSource {
    /// A UDP socket and the datagram's source.
    Direct(SocketId, SocketAddr),
    /// DERP: the region and the sending node's key.
    Relay(u16, PublicKey),
    /// A peer relay: its address and the endpoint's VNI.
    PeerRelay(SocketAddr, u32),
}

/// A DERP sender's stand-in address for WireGuard's cookie MACs: distinct per key.
fn relay_addr_of(key: &PublicKey) -> SocketAddr {
    let b = key.as_bytes();
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[..16]);
    SocketAddr::new(
        IpAddr::V6(std::net::Ipv6Addr::from(ip)),
        u16::from_be_bytes([b[16], b[17]]),
    )
}
