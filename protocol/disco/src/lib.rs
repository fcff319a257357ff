#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

pub use burrow_nacl::BoxKey;
use burrow_wg::{PrivateKey, PublicKey};
use rand_core::RngCore;
use thiserror::Error;

/// Every disco packet starts with this: "TS💬". It tells disco from STUN and WireGuard on the
/// one UDP socket (WireGuard starts with 1–4 and three zeros; STUN with 0x00/0x01 and the cookie).
pub const MAGIC: [u8; 6] = [0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac];
/// Magic, sender key, nonce.
pub const HEADER_LEN: usize = 6 + 32 + 24;
/// NaCl box overhead (the Poly1305 tag).
pub const BOX_OVERHEAD: usize = 16;
/// Largest number of endpoints a CallMeMaybe carries (keeps it under a 1,280-byte MTU). Applied
/// both ways: encoding keeps the first this many, decoding refuses more
/// ([`DiscoError::TooManyEndpoints`]), so a 64 KiB relayed message cannot name thousands of
/// addresses for the receiver to ping.
pub const MAX_CALL_ME_MAYBE_ENDPOINTS: usize = 60;

const TYPE_PING: u8 = 0x01;
const TYPE_PONG: u8 = 0x02;
const TYPE_CALL_ME_MAYBE: u8 = 0x03;
const TYPE_NAT_INFO: u8 = 0x80;
const TYPE_PORT_PREDICTION: u8 = 0x81;
const VERSION: u8 = 0;
const ENDPOINT_LEN: usize = 18;

/// A 12-byte transaction ID tying a Pong to its Ping.
pub type TxId = [u8; 12];

/// A disco message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// "Are you there on this path?" — answered with a Pong over the same path.
    Ping {
        /// Transaction ID.
        tx_id: TxId,
        /// The sender's WireGuard (node) key, so the receiver can tell which peer this path is.
        node_key: Option<PublicKey>,
        /// Zero bytes after the body, for path-MTU probing.
        padding: usize,
    },
    /// "Yes; and this is where your Ping came from" (a peer-reflexive candidate).
    Pong {
        /// The Ping's transaction ID.
        tx_id: TxId,
        /// The source address the responder saw.
        src: SocketAddr,
    },
    /// "Ping me at these endpoints" — sent only over DERP, to start simultaneous sends.
    CallMeMaybe {
        /// The sender's candidate endpoints.
        endpoints: Vec<SocketAddr>,
    },
    /// burrow's extension (type 0x80, ignored by Tailscale nodes as an unknown type), sent over
    /// DERP beside CallMeMaybe: how the sender's NAT maps, so the pair can choose birthday
    /// probing when one side's mapping varies by destination (a "hard" NAT).
    NatInfo {
        /// The sender's mapping varies by destination (endpoint-dependent: "hard").
        mapping_varies: bool,
        /// …but its ports are predictable (a sequential allocator): its CallMeMaybe carries
        /// predicted endpoints, so an easy peer need not birthday-probe.
        predictable: bool,
        /// Its gateway maps its port (NAT-PMP, PCP or UPnP): the mapped endpoint in its
        /// CallMeMaybe takes packets from anyone, so no birthday search is needed either way.
        /// (Flag bit 2; receivers that predate it ignore it.)
        mapped: bool,
    },
    /// burrow's extension (type 0x81, sent over DERP): mutual port prediction between
    /// sequential NATs. The sender measured its NAT's next port just now and commits to open
    /// flows toward the receiver until one of them leaves from `port` of its public address;
    /// the receiver aims its own flows there. A newer `round` replaces an older one.
    PortPrediction {
        /// The sender's round, increasing: older or repeated rounds are ignored.
        round: u32,
        /// The external port the sender's flow toward us will have.
        port: u16,
    },
    /// A message type this version does not know (ignored, for forward compatibility).
    Unknown {
        /// The type byte.
        kind: u8,
    },
}

/// Why a packet is not a disco message we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DiscoError {
    /// No magic, or shorter than the header.
    #[error("not a disco packet")]
    NotDisco,
    /// The box did not open: not for us, from someone else, or corrupted.
    #[error("disco box does not open")]
    BadBox,
    /// The sender's disco key is low-order.
    #[error("sender's disco key is unusable")]
    BadKey,
    /// The plaintext is malformed for its type.
    #[error("malformed disco message of type {kind:#04x} ({len} bytes)")]
    Malformed {
        /// Type byte.
        kind: u8,
        /// Plaintext length.
        len: usize,
    },
    /// A CallMeMaybe names more endpoints than [`MAX_CALL_ME_MAYBE_ENDPOINTS`].
    #[error("CallMeMaybe with {count} endpoints (at most {max})", max = MAX_CALL_ME_MAYBE_ENDPOINTS)]
    TooManyEndpoints {
        /// How many it named.
        count: usize,
    },
}

/// Whether a datagram is disco (by its magic).
pub fn looks_like_disco(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN + BOX_OVERHEAD && datagram[..6] == MAGIC
}

/// The sender's disco key of a disco datagram, without opening it.
pub fn sender(datagram: &[u8]) -> Option<PublicKey> {
    looks_like_disco(datagram).then(|| PublicKey(datagram[6..38].try_into().expect("32 bytes")))
}

fn put_endpoint(out: &mut Vec<u8>, a: &SocketAddr) {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn get_endpoint(b: &[u8]) -> SocketAddr {
    let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).expect("16 bytes"));
    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
    SocketAddr::new(ip, u16::from_be_bytes([b[16], b[17]]))
}

impl Message {
    /// The plaintext inside the box: type, version, body.
    pub fn to_plaintext(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Message::Ping {
                tx_id,
                node_key,
                padding,
            } => {
                out.extend_from_slice(&[TYPE_PING, VERSION]);
                out.extend_from_slice(tx_id);
                if let Some(k) = node_key {
                    out.extend_from_slice(k.as_bytes());
                }
                out.resize(out.len() + padding, 0);
            }
            Message::Pong { tx_id, src } => {
                out.extend_from_slice(&[TYPE_PONG, VERSION]);
                out.extend_from_slice(tx_id);
                put_endpoint(&mut out, src);
            }
            Message::CallMeMaybe { endpoints } => {
                out.extend_from_slice(&[TYPE_CALL_ME_MAYBE, VERSION]);
                for e in endpoints.iter().take(MAX_CALL_ME_MAYBE_ENDPOINTS) {
                    put_endpoint(&mut out, e);
                }
            }
            Message::NatInfo {
                mapping_varies,
                predictable,
                mapped,
            } => {
                let flags = u8::from(*mapping_varies)
                    | (u8::from(*predictable) << 1)
                    | (u8::from(*mapped) << 2);
                out.extend_from_slice(&[TYPE_NAT_INFO, VERSION, flags]);
            }
            Message::PortPrediction { round, port } => {
                out.extend_from_slice(&[TYPE_PORT_PREDICTION, VERSION]);
                out.extend_from_slice(&round.to_be_bytes());
                out.extend_from_slice(&port.to_be_bytes());
            }
            Message::Unknown { kind } => out.extend_from_slice(&[*kind, VERSION]),
        }
        out
    }

    /// Reads a plaintext. Trailing bytes are ignored, as Tailscale's receivers do.
    pub fn from_plaintext(p: &[u8]) -> Result<Self, DiscoError> {
        let malformed = || DiscoError::Malformed {
            kind: p.first().copied().unwrap_or(0),
            len: p.len(),
        };
        let (&kind, rest) = p.split_first().ok_or_else(malformed)?;
        let body = rest.get(1..).ok_or_else(malformed)?; // skip the version byte
        Ok(match kind {
            TYPE_PING => {
                let tx_id: TxId = body
                    .get(..12)
                    .ok_or_else(malformed)?
                    .try_into()
                    .expect("12");
                let rest = &body[12..];
                let (node_key, padding) = if rest.len() >= 32 {
                    (
                        Some(PublicKey(rest[..32].try_into().expect("32"))),
                        rest.len() - 32,
                    )
                } else {
                    (None, rest.len())
                };
                Message::Ping {
                    tx_id,
                    node_key,
                    padding,
                }
            }
            TYPE_PONG => {
                let b = body.get(..12 + ENDPOINT_LEN).ok_or_else(malformed)?;
                Message::Pong {
                    tx_id: b[..12].try_into().expect("12"),
                    src: get_endpoint(&b[12..]),
                }
            }
            TYPE_CALL_ME_MAYBE => {
                if body.len() % ENDPOINT_LEN != 0 {
                    return Err(malformed());
                }
                let count = body.len() / ENDPOINT_LEN;
                if count > MAX_CALL_ME_MAYBE_ENDPOINTS {
                    return Err(DiscoError::TooManyEndpoints { count });
                }
                Message::CallMeMaybe {
                    endpoints: body.chunks_exact(ENDPOINT_LEN).map(get_endpoint).collect(),
                }
            }
            TYPE_NAT_INFO => {
                let flags = *body.first().ok_or_else(malformed)?;
                Message::NatInfo {
                    mapping_varies: flags & 1 != 0,
                    predictable: flags & 2 != 0,
                    mapped: flags & 4 != 0,
                }
            }
            TYPE_PORT_PREDICTION => {
                let b = body.get(..6).ok_or_else(malformed)?;
                Message::PortPrediction {
                    round: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    port: u16::from_be_bytes([b[4], b[5]]),
                }
            }
            other => Message::Unknown { kind: other },
        })
    }

    /// Seals the message from `local` to `peer` with a fresh nonce: magic ‖ our disco key ‖
    /// nonce ‖ box.
    pub fn seal(
        &self,
        local: &PrivateKey,
        peer: &PublicKey,
        rng: &mut impl RngCore,
    ) -> Result<Vec<u8>, DiscoError> {
        let bx = BoxKey::new(local, peer).ok_or(DiscoError::BadKey)?;
        Ok(self.seal_with(&bx, &local.public_key(), rng))
    }

    /// [`Message::seal`] with the pair's box key computed once ([`BoxKey::new`]) and reused:
    /// one X25519 per peer instead of one per packet.
    pub fn seal_with(
        &self,
        bx: &BoxKey,
        local_public: &PublicKey,
        rng: &mut impl RngCore,
    ) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(HEADER_LEN + BOX_OVERHEAD + 64);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(local_public.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&bx.seal(&nonce, &self.to_plaintext()));
        out
    }

    /// Opens a disco datagram with the box key of its sender (see [`sender`]).
    pub fn open_with(bx: &BoxKey, datagram: &[u8]) -> Result<Self, DiscoError> {
        if !looks_like_disco(datagram) {
            return Err(DiscoError::NotDisco);
        }
        let nonce: [u8; 24] = datagram[38..62].try_into().expect("24 bytes");
        let plain = bx
            .open(&nonce, &datagram[HEADER_LEN..])
            .ok_or(DiscoError::BadBox)?;
        Message::from_plaintext(&plain)
    }

    /// Opens a disco datagram addressed to `local`; returns the sender's disco key and the message.
    pub fn open(local: &PrivateKey, datagram: &[u8]) -> Result<(PublicKey, Message), DiscoError> {
        if !looks_like_disco(datagram) {
            return Err(DiscoError::NotDisco);
        }
        let from = PublicKey(datagram[6..38].try_into().expect("32 bytes"));
        let nonce: [u8; 24] = datagram[38..62].try_into().expect("24 bytes");
        let bx = BoxKey::new(local, &from).ok_or(DiscoError::BadKey)?;
        let plain = bx
            .open(&nonce, &datagram[HEADER_LEN..])
            .ok_or(DiscoError::BadBox)?;
        Ok((from, Message::from_plaintext(&plain)?))
    }
}
