//! Routing: packets to the destination's queues (or over the mesh), rate limits, control
//! frames, presence news for watchers, and closing connections.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::frame::{Frame, PeerGoneReason};

use super::{
    c_mut, frame, CloseReason, ConnId, DropReason, Dump, Out, Server, State, DISCO_MAGIC,
    MAX_CONTROL_QUEUE, MAX_WATCH_CHANGES,
};

impl Server {
    pub(super) fn take_tokens(&mut self, now: Instant, conn: ConnId, len: usize) -> bool {
        let Some((rate, burst)) = self.config.rate_limit else {
            return true;
        };
        let c = c_mut(&mut self.conns, conn);
        let elapsed = now.saturating_duration_since(c.last_refill).as_secs_f64();
        c.last_refill = now;
        c.tokens = (c.tokens + elapsed * rate as f64).min(burst as f64);
        if c.tokens >= len as f64 {
            c.tokens -= len as f64;
            true
        } else {
            false
        }
    }

    pub(super) fn count_drop(&mut self, reason: DropReason) {
        *self.stats.drops.entry(reason).or_default() += 1;
    }

    pub(super) fn route(&mut self, src: [u8; 32], dst: [u8; 32], packet: Bytes, from_mesh: bool) {
        if let Some(&to) = self.by_key.get(&dst) {
            let mut header = [0u8; 37];
            header[0] = crate::frame::types::RECV_PACKET;
            header[1..5].copy_from_slice(&((32 + packet.len()) as u32).to_be_bytes());
            header[5..].copy_from_slice(&src);
            let packet_len = packet.len();
            let is_disco = packet.starts_with(DISCO_MAGIC);
            let bytes = Out {
                header,
                body: packet,
            };
            let (limit_data, limit_disco) =
                (self.config.queue_limit, self.config.disco_queue_limit);
            let c = c_mut(&mut self.conns, to);
            let (queue, limit) = if is_disco {
                (&mut c.disco, limit_disco)
            } else {
                (&mut c.data, limit_data)
            };
            if queue.len() >= limit {
                self.count_drop(DropReason::QueueFull);
                return;
            }
            queue.push_back(bytes);
            self.ready.insert(to);
            self.woken.insert(to);
            self.stats.packets_relayed += 1;
            self.stats.bytes_relayed += packet_len as u64;
        } else if let (false, Some(&link)) = (from_mesh, self.remote.get(&dst)) {
            self.mesh_out.push_back((
                link,
                frame(Frame::ForwardPacket {
                    src,
                    dst,
                    packet: &packet,
                }),
            ));
            self.stats.packets_forwarded += 1;
        } else {
            self.count_drop(DropReason::UnknownDestination);
            // As Tailscale: tell the sender only about disco packets (a peer looking for a
            // path), at most one PeerGone per second per sender.
            if !from_mesh && packet.starts_with(DISCO_MAGIC) {
                if let Some(&back) = self
                    .by_key
                    .get(&src)
                    .filter(|b| self.peer_gone_allowed(**b))
                {
                    self.push_control(
                        back,
                        frame(Frame::PeerGone {
                            key: dst,
                            reason: PeerGoneReason::NotHere,
                        }),
                    );
                    let now = self.now;
                    c_mut(&mut self.conns, back).last_peer_gone = now;
                }
            }
        }
    }

    pub(super) fn peer_gone_allowed(&self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        let Some(now) = self.now else { return true };
        c.last_peer_gone
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
    }

    pub(super) fn push_control(&mut self, conn: ConnId, bytes: Bytes) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.control.len() >= MAX_CONTROL_QUEUE {
                *self.stats.drops.entry(DropReason::QueueFull).or_default() += 1;
                return;
            }
            c.control.push_back(bytes);
            self.ready.insert(conn);
            self.woken.insert(conn);
        }
    }

    /// Tells every watcher (but the key's own connection) that `key` arrived or left; what
    /// it is told is decided when the frame is written.
    pub(super) fn note_change(&mut self, key: [u8; 32]) {
        let own = self.by_key.get(&key).copied();
        for &w in &self.watchers {
            if Some(w) == own {
                continue;
            }
            let Some(watch) = self.conns.get_mut(&w).and_then(|c| c.watch.as_mut()) else {
                continue;
            };
            if watch.changed.len() >= MAX_WATCH_CHANGES {
                // Too much news for a watcher that does not read: start it over with the
                // whole list (departures in between are not announced).
                watch.changed.clear();
                watch.dump = Dump::Start;
            } else {
                watch.changed.insert(key);
            }
            self.ready.insert(w);
            self.woken.insert(w);
        }
    }

    pub(super) fn drop_conn(&mut self, conn: ConnId, announce: bool) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.ready.remove(&conn);
        self.watchers.remove(&conn);
        if let Some(ip) = c.counted {
            self.per_source.remove(ip);
        }
        match c.state {
            State::Active { key, mesh, .. } => {
                if !mesh {
                    self.non_mesh -= 1;
                }
                // The replay window runs from the end of the key's last connection.
                self.nonces
                    .disconnected(self.now.unwrap_or(c.accepted_at), &key);
                if self.by_key.get(&key) == Some(&conn) {
                    self.by_key.remove(&key);
                    if announce {
                        self.note_change(key);
                    }
                }
            }
            State::Verifying { key, .. } => {
                if let Some(waiting) = self.verifying.get_mut(&key) {
                    waiting.conns.remove(&conn);
                    if waiting.conns.is_empty() {
                        self.end_verification(&key);
                    }
                }
            }
            State::AwaitingClientInfo => {}
        }
    }

    pub(super) fn close(&mut self, _now: Instant, conn: ConnId, reason: CloseReason) {
        if self.conns.contains_key(&conn) {
            self.closing.push_back((conn, reason));
            self.drop_conn(conn, true);
        }
    }
}
