//! DERP frames: 1 type byte, a big-endian u32 length, the payload. Encoding into any
//! `BufMut`; decoding borrowed, never panicking; and an incremental decoder for a byte stream
//! split anywhere.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, BytesMut};
use thiserror::Error;

/// The 8-byte magic in ServerKey: "DERP🔑".
pub const MAGIC: [u8; 8] = [0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91];
/// The DERP protocol version burrow speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest packet a SendPacket / RecvPacket carries.
pub const MAX_PACKET_SIZE: usize = 64 << 10;
/// Largest frame payload accepted: a ForwardPacket of the largest packet.
pub const MAX_FRAME_SIZE: usize = MAX_PACKET_SIZE + 64;
/// Frame header length.
pub const HEADER_LEN: usize = 5;
/// Length of a public key on the wire.
pub const KEY_LEN: usize = 32;
/// Length of a NaCl box nonce.
pub const NONCE_LEN: usize = 24;

/// Frame type bytes (Tailscale `derp/derp.go`).
#[allow(missing_docs)]
pub mod types {
    pub const SERVER_KEY: u8 = 0x01;
    pub const CLIENT_INFO: u8 = 0x02;
    pub const SERVER_INFO: u8 = 0x03;
    pub const SEND_PACKET: u8 = 0x04;
    pub const RECV_PACKET: u8 = 0x05;
    pub const KEEP_ALIVE: u8 = 0x06;
    pub const NOTE_PREFERRED: u8 = 0x07;
    pub const PEER_GONE: u8 = 0x08;
    pub const PEER_PRESENT: u8 = 0x09;
    pub const FORWARD_PACKET: u8 = 0x0a;
    pub const WATCH_CONNS: u8 = 0x10;
    pub const CLOSE_PEER: u8 = 0x11;
    pub const PING: u8 = 0x12;
    pub const PONG: u8 = 0x13;
    pub const HEALTH: u8 = 0x14;
    pub const RESTARTING: u8 = 0x15;
}

/// Why a peer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerGoneReason {
    /// It disconnected (0x00).
    Disconnected,
    /// It is not connected to this server (0x01).
    NotHere,
    /// A reason this version does not know.
    Other(u8),
}

impl PeerGoneReason {
    fn to_u8(self) -> u8 {
        match self {
            PeerGoneReason::Disconnected => 0,
            PeerGoneReason::NotHere => 1,
            PeerGoneReason::Other(x) => x,
        }
    }
}

/// A decoded frame, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Server → client: the server's public key.
    ServerKey {
        /// The key.
        key: [u8; KEY_LEN],
    },
    /// Client → server: the client's key and a NaCl box of JSON client info.
    ClientInfo {
        /// The client's public key.
        key: [u8; KEY_LEN],
        /// Box nonce.
        nonce: [u8; NONCE_LEN],
        /// The sealed JSON.
        sealed: &'a [u8],
    },
    /// Server → client: a NaCl box of JSON server info.
    ServerInfo {
        /// Box nonce.
        nonce: [u8; NONCE_LEN],
        /// The sealed JSON.
        sealed: &'a [u8],
    },
    /// Client → server: relay `packet` to `dst`.
    SendPacket {
        /// Destination public key.
        dst: [u8; KEY_LEN],
        /// The packet.
        packet: &'a [u8],
    },
    /// Server → client: `packet` from `src`.
    RecvPacket {
        /// Source public key.
        src: [u8; KEY_LEN],
        /// The packet.
        packet: &'a [u8],
    },
    /// Either way: nothing, to keep middleboxes and timeouts happy.
    KeepAlive,
    /// Client → server: whether this server is the client's home.
    NotePreferred {
        /// Preferred.
        preferred: bool,
    },
    /// Server → client: a peer left (or is not here).
    PeerGone {
        /// The peer.
        key: [u8; KEY_LEN],
        /// Why.
        reason: PeerGoneReason,
    },
    /// Server → watcher: a peer is connected.
    PeerPresent {
        /// The peer.
        key: [u8; KEY_LEN],
        /// Its address as the server sees it, if sent.
        endpoint: Option<SocketAddr>,
        /// Flags, if sent.
        flags: Option<u8>,
    },
    /// Mesh: a packet from `src` to `dst`, forwarded by another server of the region.
    ForwardPacket {
        /// Source public key.
        src: [u8; KEY_LEN],
        /// Destination public key.
        dst: [u8; KEY_LEN],
        /// The packet.
        packet: &'a [u8],
    },
    /// Mesh peer → server: send me PeerPresent / PeerGone for every client.
    WatchConns,
    /// Mesh peer → server: close this client's connection.
    ClosePeer {
        /// The client.
        key: [u8; KEY_LEN],
    },
    /// Either way: answer with Pong.
    Ping([u8; 8]),
    /// The Ping's data echoed.
    Pong([u8; 8]),
    /// Server → client: a health problem, empty to clear.
    Health {
        /// The problem, UTF-8.
        problem: &'a str,
    },
    /// Server → client: restarting; reconnect after `reconnect_in_ms`, keep trying for `try_for_ms`.
    Restarting {
        /// Milliseconds to wait.
        reconnect_in_ms: u32,
        /// Milliseconds to keep trying.
        try_for_ms: u32,
    },
    /// A frame type this version does not know (ignored, for forward compatibility).
    Unknown {
        /// The type byte.
        frame_type: u8,
        /// The payload.
        payload: &'a [u8],
    },
}

/// A malformed frame. The connection it came on should be closed; others are unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The declared length exceeds [`MAX_FRAME_SIZE`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is too short (or too long) for its type.
    #[error("frame type {frame_type:#04x} with a {len}-byte payload is malformed")]
    BadLength {
        /// The type.
        frame_type: u8,
        /// Payload length.
        len: usize,
    },
    /// ServerKey without the magic.
    #[error("ServerKey frame without the DERP magic")]
    BadMagic,
    /// A Health message that is not UTF-8.
    #[error("Health frame is not UTF-8")]
    BadUtf8,
}

fn key(b: &[u8]) -> [u8; KEY_LEN] {
    b[..KEY_LEN].try_into().expect("length checked")
}

impl<'a> Frame<'a> {
    /// Decodes one frame's payload.
    pub fn decode(frame_type: u8, p: &'a [u8]) -> Result<Self, FrameError> {
        use types::*;
        let bad = || FrameError::BadLength {
            frame_type,
            len: p.len(),
        };
        let at_least = |n: usize| if p.len() >= n { Ok(()) } else { Err(bad()) };
        let exactly = |n: usize| if p.len() == n { Ok(()) } else { Err(bad()) };
        Ok(match frame_type {
            SERVER_KEY => {
                at_least(MAGIC.len() + KEY_LEN)?;
                if p[..8] != MAGIC {
                    return Err(FrameError::BadMagic);
                }
                Frame::ServerKey { key: key(&p[8..]) }
            }
            CLIENT_INFO => {
                at_least(KEY_LEN + NONCE_LEN)?;
                Frame::ClientInfo {
                    key: key(p),
                    nonce: p[KEY_LEN..KEY_LEN + NONCE_LEN].try_into().expect("24"),
                    sealed: &p[KEY_LEN + NONCE_LEN..],
                }
            }
            SERVER_INFO => {
                at_least(NONCE_LEN)?;
                Frame::ServerInfo {
                    nonce: p[..NONCE_LEN].try_into().expect("24"),
                    sealed: &p[NONCE_LEN..],
                }
            }
            SEND_PACKET | RECV_PACKET => {
                at_least(KEY_LEN)?;
                if p.len() - KEY_LEN > MAX_PACKET_SIZE {
                    return Err(bad());
                }
                if frame_type == SEND_PACKET {
                    Frame::SendPacket {
                        dst: key(p),
                        packet: &p[KEY_LEN..],
                    }
                } else {
                    Frame::RecvPacket {
                        src: key(p),
                        packet: &p[KEY_LEN..],
                    }
                }
            }
            KEEP_ALIVE => Frame::KeepAlive,
            NOTE_PREFERRED => {
                exactly(1)?;
                Frame::NotePreferred {
                    preferred: p[0] != 0,
                }
            }
            PEER_GONE => {
                at_least(KEY_LEN)?;
                let reason = match p.get(KEY_LEN).copied().unwrap_or(0) {
                    0 => PeerGoneReason::Disconnected,
                    1 => PeerGoneReason::NotHere,
                    x => PeerGoneReason::Other(x),
                };
                Frame::PeerGone {
                    key: key(p),
                    reason,
                }
            }
            PEER_PRESENT => {
                at_least(KEY_LEN)?;
                let endpoint = (p.len() >= KEY_LEN + 18).then(|| {
                    let ip: [u8; 16] = p[KEY_LEN..KEY_LEN + 16].try_into().expect("16");
                    let ip = Ipv6Addr::from(ip);
                    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
                    SocketAddr::new(ip, u16::from_be_bytes([p[KEY_LEN + 16], p[KEY_LEN + 17]]))
                });
                let flags = p.get(KEY_LEN + 18).copied();
                Frame::PeerPresent {
                    key: key(p),
                    endpoint,
                    flags,
                }
            }
            FORWARD_PACKET => {
                at_least(2 * KEY_LEN)?;
                if p.len() - 2 * KEY_LEN > MAX_PACKET_SIZE {
                    return Err(bad());
                }
                Frame::ForwardPacket {
                    src: key(p),
                    dst: key(&p[KEY_LEN..]),
                    packet: &p[2 * KEY_LEN..],
                }
            }
            WATCH_CONNS => Frame::WatchConns,
            CLOSE_PEER => {
                exactly(KEY_LEN)?;
                Frame::ClosePeer { key: key(p) }
            }
            PING | PONG => {
                exactly(8)?;
                let data: [u8; 8] = p.try_into().expect("8");
                if frame_type == PING {
                    Frame::Ping(data)
                } else {
                    Frame::Pong(data)
                }
            }
            // Go takes any bytes as a string; a message that is not UTF-8 must not cost the connection.
            HEALTH => Frame::Health {
                problem: std::str::from_utf8(p).unwrap_or("(health message not UTF-8)"),
            },
            RESTARTING => {
                exactly(8)?;
                Frame::Restarting {
                    reconnect_in_ms: u32::from_be_bytes(p[..4].try_into().expect("4")),
                    try_for_ms: u32::from_be_bytes(p[4..].try_into().expect("4")),
                }
            }
            other => Frame::Unknown {
                frame_type: other,
                payload: p,
            },
        })
    }

    /// The frame's type byte.
    pub fn frame_type(&self) -> u8 {
        use types::*;
        match self {
            Frame::ServerKey { .. } => SERVER_KEY,
            Frame::ClientInfo { .. } => CLIENT_INFO,
            Frame::ServerInfo { .. } => SERVER_INFO,
            Frame::SendPacket { .. } => SEND_PACKET,
            Frame::RecvPacket { .. } => RECV_PACKET,
            Frame::KeepAlive => KEEP_ALIVE,
            Frame::NotePreferred { .. } => NOTE_PREFERRED,
            Frame::PeerGone { .. } => PEER_GONE,
            Frame::PeerPresent { .. } => PEER_PRESENT,
            Frame::ForwardPacket { .. } => FORWARD_PACKET,
            Frame::WatchConns => WATCH_CONNS,
            Frame::ClosePeer { .. } => CLOSE_PEER,
            Frame::Ping(_) => PING,
            Frame::Pong(_) => PONG,
            Frame::Health { .. } => HEALTH,
            Frame::Restarting { .. } => RESTARTING,
            Frame::Unknown { frame_type, .. } => *frame_type,
        }
    }

    /// Payload length when encoded.
    pub fn payload_len(&self) -> usize {
        match self {
            Frame::ServerKey { .. } => MAGIC.len() + KEY_LEN,
            Frame::ClientInfo { sealed, .. } => KEY_LEN + NONCE_LEN + sealed.len(),
            Frame::ServerInfo { sealed, .. } => NONCE_LEN + sealed.len(),
            Frame::SendPacket { packet, .. } | Frame::RecvPacket { packet, .. } => {
                KEY_LEN + packet.len()
            }
            Frame::KeepAlive | Frame::WatchConns => 0,
            Frame::NotePreferred { .. } => 1,
            Frame::PeerGone { .. } => KEY_LEN + 1,
            Frame::PeerPresent {
                endpoint, flags, ..
            } => {
                KEY_LEN
                    + if endpoint.is_some() {
                        18 + usize::from(flags.is_some())
                    } else {
                        0
                    }
            }
            Frame::ForwardPacket { packet, .. } => 2 * KEY_LEN + packet.len(),
            Frame::ClosePeer { .. } => KEY_LEN,
            Frame::Ping(_) | Frame::Pong(_) | Frame::Restarting { .. } => 8,
            Frame::Health { problem } => problem.len(),
            Frame::Unknown { payload, .. } => payload.len(),
        }
    }

    /// Writes header and payload.
    pub fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_u8(self.frame_type());
        out.put_u32(self.payload_len() as u32);
        match self {
            Frame::ServerKey { key } => {
                out.put_slice(&MAGIC);
                out.put_slice(key);
            }
            Frame::ClientInfo { key, nonce, sealed } => {
                out.put_slice(key);
                out.put_slice(nonce);
                out.put_slice(sealed);
            }
            Frame::ServerInfo { nonce, sealed } => {
                out.put_slice(nonce);
                out.put_slice(sealed);
            }
            Frame::SendPacket { dst: k, packet } | Frame::RecvPacket { src: k, packet } => {
                out.put_slice(k);
                out.put_slice(packet);
            }
            Frame::KeepAlive | Frame::WatchConns => {}
            Frame::NotePreferred { preferred } => out.put_u8(u8::from(*preferred)),
            Frame::PeerGone { key, reason } => {
                out.put_slice(key);
                out.put_u8(reason.to_u8());
            }
            Frame::PeerPresent {
                key,
                endpoint,
                flags,
            } => {
                out.put_slice(key);
                if let Some(ep) = endpoint {
                    let ip = match ep.ip() {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                        IpAddr::V6(v6) => v6,
                    };
                    out.put_slice(&ip.octets());
                    out.put_u16(ep.port());
                    if let Some(f) = flags {
                        out.put_u8(*f);
                    }
                }
            }
            Frame::ForwardPacket { src, dst, packet } => {
                out.put_slice(src);
                out.put_slice(dst);
                out.put_slice(packet);
            }
            Frame::ClosePeer { key } => out.put_slice(key),
            Frame::Ping(d) | Frame::Pong(d) => out.put_slice(d),
            Frame::Health { problem } => out.put_slice(problem.as_bytes()),
            Frame::Restarting {
                reconnect_in_ms,
                try_for_ms,
            } => {
                out.put_u32(*reconnect_in_ms);
                out.put_u32(*try_for_ms);
            }
            Frame::Unknown { payload, .. } => out.put_slice(payload),
        }
    }

    /// Encodes into a new buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.payload_len());
        self.encode(&mut v);
        v
    }
}

/// Collects a byte stream and yields whole frames, however the stream was split. Once
/// drained, it lets go of a buffer bigger than [`IDLE_DECODER_CAPACITY`]: an idle
/// connection does not keep the room its last large frame needed.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

/// Buffer a drained [`FrameDecoder`] may keep.
pub const IDLE_DECODER_CAPACITY: usize = 4096;

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of buffer held now (what a connection costs while idle).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next whole frame as (type, payload), `None` if more bytes are needed. An oversized
    /// length is an error: the connection must be closed.
    pub fn next_frame(&mut self) -> Option<Result<(u8, bytes::Bytes), FrameError>> {
        if self.buf.len() < HEADER_LEN {
            if self.buf.is_empty() && self.buf.capacity() > IDLE_DECODER_CAPACITY {
                self.buf = BytesMut::new();
            }
            return None;
        }
        let frame_type = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME_SIZE {
            return Some(Err(FrameError::TooLarge {
                len,
                max: MAX_FRAME_SIZE,
            }));
        }
        if self.buf.len() < HEADER_LEN + len {
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return None;
        }
        self.buf.advance(HEADER_LEN);
        Some(Ok((frame_type, self.buf.split_to(len).freeze())))
    }
}
