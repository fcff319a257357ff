//! A DERP client, sans-IO: feed it the bytes read from the connection, write what
//! `poll_transmit` yields, read events.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use burrow_wg::{PrivateKey, PublicKey};
use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;

use crate::frame::{Frame, FrameDecoder, FrameError, PeerGoneReason, NONCE_LEN, PROTOCOL_VERSION};
use crate::info::{ClientInfo, ServerInfo};
use crate::nacl::BoxKey;

/// What happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server authenticated us; packets can flow.
    Connected {
        /// The server's key.
        server: PublicKey,
        /// What it told us.
        info: ServerInfo,
    },
    /// A packet from a peer.
    Packet {
        /// The sender.
        src: PublicKey,
        /// The packet.
        data: Vec<u8>,
    },
    /// A peer left, or is not on this server.
    PeerGone {
        /// The peer.
        key: PublicKey,
        /// Why.
        reason: PeerGoneReason,
    },
    /// (Watchers) a peer is connected to the server.
    PeerPresent {
        /// The peer.
        key: PublicKey,
        /// Its address, if the server said.
        endpoint: Option<SocketAddr>,
    },
    /// The server reports a health problem (empty: resolved).
    Health(String),
    /// The server is restarting.
    Restarting {
        /// Wait this long before reconnecting.
        reconnect_in: Duration,
        /// Keep trying this long.
        try_for: Duration,
    },
    /// The server answered our ping.
    Pong([u8; 8]),
}

/// Why the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A malformed frame.
    #[error("malformed frame: {0}")]
    Malformed(#[from] FrameError),
    /// The server key is not the one expected.
    #[error("server key {got} is not the expected {expected}")]
    WrongServerKey {
        /// The key pinned by the caller.
        expected: PublicKey,
        /// The key the server sent.
        got: PublicKey,
    },
    /// ServerInfo did not open or parse.
    #[error("bad ServerInfo: {0}")]
    BadServerInfo(String),
    /// A frame before the handshake finished.
    #[error("unexpected frame type {0:#04x} during the handshake")]
    Unexpected(u8),
}

enum State {
    AwaitingServerKey,
    AwaitingServerInfo(Box<BoxKey>, PublicKey),
    Ready,
}

/// A DERP client connection.
pub struct Client {
    key: PrivateKey,
    expected_server: Option<PublicKey>,
    mesh_key: Option<String>,
    rng: ChaCha20Rng,
    state: State,
    decoder: FrameDecoder,
    out: VecDeque<Vec<u8>>,
    pending: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
}

impl core::fmt::Debug for Client {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client")
            .field("key", &self.key.public_key())
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for a new connection. `expected_server` pins the server's key if known;
    /// `mesh_key` makes this a mesh peer.
    pub fn new(
        key: PrivateKey,
        expected_server: Option<PublicKey>,
        mesh_key: Option<String>,
        rng: ChaCha20Rng,
    ) -> Self {
        Client {
            key,
            expected_server,
            mesh_key,
            rng,
            state: State::AwaitingServerKey,
            decoder: FrameDecoder::new(),
            out: VecDeque::new(),
            pending: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Whether the handshake is done.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready)
    }

    fn send(&mut self, f: Frame<'_>) {
        let bytes = f.to_vec();
        if self.is_ready() {
            self.out.push_back(bytes);
        } else {
            self.pending.push_back(bytes);
        }
    }

    /// Relays `data` to `dst` (queued until the handshake is done).
    pub fn send_packet(&mut self, dst: &PublicKey, data: &[u8]) {
        self.send(Frame::SendPacket {
            dst: dst.0,
            packet: data,
        });
    }

    /// Tells the server whether it is our home region.
    pub fn note_preferred(&mut self, preferred: bool) {
        self.send(Frame::NotePreferred { preferred });
    }

    /// (Mesh peers) asks for PeerPresent / PeerGone about every client.
    pub fn watch_conns(&mut self) {
        self.send(Frame::WatchConns);
    }

    /// (Mesh peers) forwards a packet between two clients.
    pub fn forward_packet(&mut self, src: &[u8; 32], dst: &[u8; 32], data: &[u8]) {
        self.send(Frame::ForwardPacket {
            src: *src,
            dst: *dst,
            packet: data,
        });
    }

    /// Pings the server.
    pub fn ping(&mut self, data: [u8; 8]) {
        self.send(Frame::Ping(data));
    }

    /// Bytes read from the connection.
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.decoder.extend(bytes);
        while let Some(next) = self.decoder.next_frame() {
            let (t, payload) = next?;
            let f = Frame::decode(t, &payload)?;
            self.handle_frame(f)?;
        }
        Ok(())
    }

    fn handle_frame(&mut self, f: Frame<'_>) -> Result<(), ClientError> {
        match (&self.state, f) {
            (State::AwaitingServerKey, Frame::ServerKey { key }) => {
                let server = PublicKey(key);
                if let Some(expected) = self.expected_server {
                    if expected != server {
                        return Err(ClientError::WrongServerKey {
                            expected,
                            got: server,
                        });
                    }
                }
                let bx = BoxKey::new(&self.key, &server)
                    .ok_or_else(|| ClientError::BadServerInfo("low-order server key".into()))?;
                let info = ClientInfo {
                    version: PROTOCOL_VERSION,
                    mesh_key: self.mesh_key.clone(),
                    can_ack_pings: true,
                    is_prober: false,
                };
                let mut nonce = [0u8; NONCE_LEN];
                self.rng.fill_bytes(&mut nonce);
                let sealed = bx.seal(&nonce, &serde_json::to_vec(&info).expect("serializable"));
                self.out.push_back(
                    Frame::ClientInfo {
                        key: self.key.public_key().0,
                        nonce,
                        sealed: &sealed,
                    }
                    .to_vec(),
                );
                self.state = State::AwaitingServerInfo(Box::new(bx), server);
            }
            (State::AwaitingServerInfo(bx, server), Frame::ServerInfo { nonce, sealed }) => {
                let json = bx
                    .open(&nonce, sealed)
                    .ok_or_else(|| ClientError::BadServerInfo("box does not open".into()))?;
                let info: ServerInfo = serde_json::from_slice(&json)
                    .map_err(|e| ClientError::BadServerInfo(e.to_string()))?;
                let server = *server;
                self.state = State::Ready;
                self.out.extend(self.pending.drain(..));
                self.events
                    .push_back(ClientEvent::Connected { server, info });
            }
            (State::Ready, f) => match f {
                Frame::RecvPacket { src, packet } => self.events.push_back(ClientEvent::Packet {
                    src: PublicKey(src),
                    data: packet.to_vec(),
                }),
                Frame::PeerGone { key, reason } => self.events.push_back(ClientEvent::PeerGone {
                    key: PublicKey(key),
                    reason,
                }),
                Frame::PeerPresent { key, endpoint, .. } => {
                    self.events.push_back(ClientEvent::PeerPresent {
                        key: PublicKey(key),
                        endpoint,
                    })
                }
                Frame::Ping(data) => self.out.push_back(Frame::Pong(data).to_vec()),
                Frame::Pong(data) => self.events.push_back(ClientEvent::Pong(data)),
                Frame::Health { problem } => self
                    .events
                    .push_back(ClientEvent::Health(problem.to_owned())),
                Frame::Restarting {
                    reconnect_in_ms,
                    try_for_ms,
                } => self.events.push_back(ClientEvent::Restarting {
                    reconnect_in: Duration::from_millis(reconnect_in_ms as u64),
                    try_for: Duration::from_millis(try_for_ms as u64),
                }),
                _ => {}
            },
            (_, Frame::KeepAlive) => {}
            (_, other) => return Err(ClientError::Unexpected(other.frame_type())),
        }
        Ok(())
    }

    /// The next bytes to write.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// Appends queued frames to `out`, whole, until it has grown by `max` bytes or more (at
    /// least one frame when any is queued), so a driver writes many frames in one system call.
    /// Returns whether anything was appended.
    pub fn write_transmit(&mut self, out: &mut Vec<u8>, max: usize) -> bool {
        let start = out.len();
        while out.len() - start < max.max(1) {
            let Some(frame) = self.out.pop_front() else {
                break;
            };
            out.extend_from_slice(&frame);
        }
        out.len() > start
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }
}
