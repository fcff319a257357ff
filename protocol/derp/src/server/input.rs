//! Reading a connection: whole frames out of its decoder, each handled by type.

use std::collections::BTreeSet;
use std::time::Instant;

use burrow_wg::PublicKey;
use bytes::Bytes;

use crate::frame::{Frame, HEADER_LEN, MAX_FRAME_SIZE, PROTOCOL_VERSION};
use crate::info::ClientInfo;
use crate::nacl::BoxKey;

use super::{c_mut, frame, CloseReason, ConnId, DropReason, Dump, Server, State, Watch};

impl Server {
    /// Handles the whole frames buffered for `conn`.
    pub(super) fn process(&mut self, now: Instant, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let active = match c.state {
                State::Active { key, .. } => Some(key),
                State::AwaitingClientInfo => None,
                State::Verifying { .. } => {
                    // Nothing is read until the verdict; a client that pushes more than a
                    // frame's worth meanwhile is not waiting for ServerInfo as it should.
                    if c.decoder.buffered() > HEADER_LEN + MAX_FRAME_SIZE {
                        self.refuse(
                            now,
                            conn,
                            CloseReason::BadClientInfo(
                                "sent too much before the server's answer".into(),
                            ),
                        );
                    }
                    return;
                }
            };
            let next = match c.decoder.next_frame() {
                None => return,
                Some(Err(e)) => Err(CloseReason::Malformed(e)),
                // The hot path: relay a packet without copying it.
                Some(Ok((crate::frame::types::SEND_PACKET, payload)))
                    if active.is_some()
                        && payload.len() >= 32
                        && payload.len() - 32 <= crate::frame::MAX_PACKET_SIZE =>
                {
                    let dst: [u8; 32] = payload[..32].try_into().expect("32 bytes");
                    if self.take_tokens(now, conn, payload.len() - 32) {
                        self.route(active.expect("checked"), dst, payload.slice(32..), false);
                    } else {
                        self.count_drop(DropReason::RateLimited);
                    }
                    Ok(())
                }
                Some(Ok((t, payload))) => Frame::decode(t, &payload)
                    .map_err(CloseReason::from)
                    .and_then(|f| self.handle_frame(now, conn, f)),
            };
            if let Err(reason) = next {
                self.refuse(now, conn, reason);
                return;
            }
        }
    }

    /// Closes a connection for `reason`, counting it.
    pub(super) fn refuse(&mut self, now: Instant, conn: ConnId, reason: CloseReason) {
        match reason {
            CloseReason::Replayed => self.stats.replayed_client_infos += 1,
            CloseReason::TooManyClients
            | CloseReason::TooManyFromAddress
            | CloseReason::NotVerified(_)
            | CloseReason::VerifyBusy => self.stats.refused_clients += 1,
            _ => {}
        }
        if reason.is_bad_input() {
            self.stats.bad_connections += 1;
        }
        self.close(now, conn, reason);
    }

    pub(super) fn handle_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        f: Frame<'_>,
    ) -> Result<(), CloseReason> {
        let c = self.conns.get_mut(&conn).expect("caller checked");
        let (key, mesh) = match c.state {
            State::AwaitingClientInfo => {
                let Frame::ClientInfo { key, nonce, sealed } = f else {
                    return Err(CloseReason::BadClientInfo(format!(
                        "expected ClientInfo, got frame type {:#04x}",
                        f.frame_type()
                    )));
                };
                let client = PublicKey(key);
                let bx = BoxKey::new(&self.config.private_key, &client)
                    .ok_or_else(|| CloseReason::BadClientInfo("low-order client key".into()))?;
                let json = bx.open(&nonce, sealed).ok_or_else(|| {
                    CloseReason::BadClientInfo(
                        "box does not open: not sealed to this server's key".into(),
                    )
                })?;
                let info: ClientInfo = serde_json::from_slice(&json)
                    .map_err(|e| CloseReason::BadClientInfo(format!("JSON: {e}")))?;
                if info.version < PROTOCOL_VERSION {
                    return Err(CloseReason::BadClientInfo(format!(
                        "protocol version {} < {PROTOCOL_VERSION}",
                        info.version
                    )));
                }
                return self.client_info(now, conn, key, nonce, bx, &info);
            }
            // process() reads nothing while verifying; never reached, but never a panic either.
            State::Verifying { .. } => {
                return Err(CloseReason::BadClientInfo(
                    "a frame before the verdict".into(),
                ))
            }
            State::Active { key, mesh, .. } => (key, mesh),
        };
        match f {
            Frame::SendPacket { dst, packet } => {
                if !self.take_tokens(now, conn, packet.len()) {
                    self.count_drop(DropReason::RateLimited);
                    return Ok(());
                }
                self.route(key, dst, Bytes::copy_from_slice(packet), false);
            }
            Frame::ForwardPacket { src, dst, packet } => {
                if !mesh {
                    return Err(CloseReason::NotMeshPeer("ForwardPacket"));
                }
                self.stats.packets_forwarded += 1;
                self.route(src, dst, Bytes::copy_from_slice(packet), true);
            }
            Frame::NotePreferred { preferred } => {
                c_mut(&mut self.conns, conn).preferred = preferred
            }
            Frame::KeepAlive | Frame::Pong(_) | Frame::Unknown { .. } => {}
            Frame::Ping(data) => {
                // At most one Pong waits per client: a flood of Pings cannot grow the queue.
                let c = c_mut(&mut self.conns, conn);
                c.control
                    .retain(|b| b.first() != Some(&crate::frame::types::PONG));
                self.push_control(conn, frame(Frame::Pong(data)));
            }
            Frame::WatchConns => {
                if !mesh {
                    return Err(CloseReason::NotMeshPeer("WatchConns"));
                }
                self.watchers.insert(conn);
                // The client list goes out as the writer drains, never through the capped
                // control queue: every client is reported however many there are.
                let c = c_mut(&mut self.conns, conn);
                match &mut c.watch {
                    Some(w) => w.dump = Dump::Start,
                    None => {
                        c.watch = Some(Box::new(Watch {
                            dump: Dump::Start,
                            changed: BTreeSet::new(),
                        }))
                    }
                }
                self.ready.insert(conn);
                self.woken.insert(conn);
            }
            Frame::ClosePeer { key: target } => {
                if !mesh {
                    return Err(CloseReason::NotMeshPeer("ClosePeer"));
                }
                if let Some(&victim) = self.by_key.get(&target) {
                    self.close(now, victim, CloseReason::ClosedByMeshPeer);
                }
            }
            // Server-to-client frames from a client: ignore, as Tailscale's server does.
            _ => {}
        }
        Ok(())
    }
}
