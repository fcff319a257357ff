#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

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
    /// Peer relays (type 0x04): a client asks the relay server to bind it to an endpoint.
    /// Sent in Geneve (control bit set) straight to the relay, sealed to the server's disco key.
    BindUdpRelayEndpoint(BindBody),
    /// Peer relays (type 0x05): the server's reply to a Bind, carrying its MAC in
    /// [`BindBody::challenge`]; sent to the Bind's source address.
    BindUdpRelayEndpointChallenge(BindBody),
    /// Peer relays (type 0x06): the client echoes the Challenge's MAC, proving it receives at
    /// its address; the server then binds that address.
    BindUdpRelayEndpointAnswer(BindBody),
    /// Peer relays (type 0x07, over DERP only): "I allocated this relay endpoint for us; bind to
    /// it too".
    CallMeMaybeVia(UdpRelayEndpoint),
    /// Peer relays (type 0x08, over DERP only, to the relay node's disco key): allocate an
    /// endpoint for these two disco keys.
    AllocateUdpRelayEndpointRequest {
        /// The two disco keys allowed to bind: the requester's own and its peer's.
        client_disco: [PublicKey; 2],
        /// The requester's counter, echoed in the response.
        generation: u32,
    },
    /// Peer relays (type 0x09, over DERP only): the relay node's answer to an allocation.
    AllocateUdpRelayEndpointResponse {
        /// The request's generation, echoed.
        generation: u32,
        /// The allocated (or existing) endpoint.
        endpoint: UdpRelayEndpoint,
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
    /// A relay endpoint's lifetime is negative or longer than [`MAX_RELAY_LIFETIME`].
    #[error("relay endpoint lifetime of {nanos} ns in message type {kind:#04x} is negative or longer than a day")]
    BadLifetime {
        /// Type byte.
        kind: u8,
        /// The lifetime on the wire, in nanoseconds.
        nanos: i64,
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
            Message::BindUdpRelayEndpoint(b) => b.put(TYPE_BIND, &mut out),
            Message::BindUdpRelayEndpointChallenge(b) => b.put(TYPE_BIND_CHALLENGE, &mut out),
            Message::BindUdpRelayEndpointAnswer(b) => b.put(TYPE_BIND_ANSWER, &mut out),
            Message::CallMeMaybeVia(e) => {
                out.extend_from_slice(&[TYPE_CALL_ME_MAYBE_VIA, VERSION]);
                e.put(&mut out);
            }
            Message::AllocateUdpRelayEndpointRequest {
                client_disco,
                generation,
            } => {
                out.extend_from_slice(&[TYPE_ALLOCATE_REQUEST, VERSION]);
                out.extend_from_slice(client_disco[0].as_bytes());
                out.extend_from_slice(client_disco[1].as_bytes());
                out.extend_from_slice(&generation.to_be_bytes());
            }
            Message::AllocateUdpRelayEndpointResponse {
                generation,
                endpoint,
            } => {
                out.extend_from_slice(&[TYPE_ALLOCATE_RESPONSE, VERSION]);
                out.extend_from_slice(&generation.to_be_bytes());
                endpoint.put(&mut out);
            }
            Message::Unknown { kind } => out.extend_from_slice(&[*kind, unknown_version(*kind)]),
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
            TYPE_BIND | TYPE_BIND_CHALLENGE | TYPE_BIND_ANSWER => {
                let b = BindBody::get(body).ok_or_else(malformed)?;
                match kind {
                    TYPE_BIND => Message::BindUdpRelayEndpoint(b),
                    TYPE_BIND_CHALLENGE => Message::BindUdpRelayEndpointChallenge(b),
                    _ => Message::BindUdpRelayEndpointAnswer(b),
                }
            }
            TYPE_CALL_ME_MAYBE_VIA | TYPE_ALLOCATE_REQUEST | TYPE_ALLOCATE_RESPONSE
                if rest[0] != VERSION =>
            {
                // Tailscale reads a later version of these as nothing at all: ignored.
                Message::Unknown { kind }
            }
            TYPE_CALL_ME_MAYBE_VIA => {
                Message::CallMeMaybeVia(UdpRelayEndpoint::get(kind, p.len(), body)?)
            }
            TYPE_ALLOCATE_REQUEST => {
                let b = body.get(..ALLOCATE_REQUEST_LEN).ok_or_else(malformed)?;
                Message::AllocateUdpRelayEndpointRequest {
                    client_disco: [key_at(b, 0), key_at(b, 32)],
                    generation: u32_at(b, 64),
                }
            }
            TYPE_ALLOCATE_RESPONSE => {
                let generation = u32_at(body.get(..4).ok_or_else(malformed)?, 0);
                Message::AllocateUdpRelayEndpointResponse {
                    generation,
                    endpoint: UdpRelayEndpoint::get(kind, p.len(), &body[4..])?,
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

// ---- Peer relays (types 0x04–0x09) ----

const TYPE_BIND: u8 = 0x04;
const TYPE_BIND_CHALLENGE: u8 = 0x05;
const TYPE_BIND_ANSWER: u8 = 0x06;
const TYPE_CALL_ME_MAYBE_VIA: u8 = 0x07;
const TYPE_ALLOCATE_REQUEST: u8 = 0x08;
const TYPE_ALLOCATE_RESPONSE: u8 = 0x09;
const ALLOCATE_REQUEST_LEN: usize = 68;

/// Length of the body shared by Bind, Challenge and Answer (types 0x04–0x06).
pub const BIND_BODY_LEN: usize = 72;
/// Fixed part of a relay endpoint block, before its 18-byte addresses.
pub const RELAY_ENDPOINT_FIXED_LEN: usize = 124;
/// Longest relay endpoint lifetime a decoder accepts; longer (or negative) is
/// [`DiscoError::BadLifetime`]. Encoding clamps to it. Tailscale sends 30 s and 5 min.
pub const MAX_RELAY_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The body of Bind, Challenge and Answer: 72 bytes, the same for all three so a Challenge
/// is never larger than the Bind that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindBody {
    /// The endpoint's VNI, repeated inside the box so a changed Geneve header is caught.
    pub vni: u32,
    /// The client's handshake generation (nonzero, new per handshake), echoed by the server.
    pub generation: u32,
    /// The disco key of the endpoint's *other* client, as seen by the recipient.
    pub remote_key: PublicKey,
    /// Padding in a Bind; the server's MAC in the Challenge; echoed in the Answer.
    pub challenge: [u8; 32],
}

impl BindBody {
    fn put(&self, kind: u8, out: &mut Vec<u8>) {
        out.extend_from_slice(&[kind, VERSION]);
        out.extend_from_slice(&self.vni.to_be_bytes());
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(self.remote_key.as_bytes());
        out.extend_from_slice(&self.challenge);
    }

    /// At least 72 bytes; anything after them is ignored.
    fn get(b: &[u8]) -> Option<Self> {
        let b = b.get(..BIND_BODY_LEN)?;
        Some(BindBody {
            vni: u32_at(b, 0),
            generation: u32_at(b, 4),
            remote_key: key_at(b, 8),
            challenge: b[40..72].try_into().expect("32 bytes"),
        })
    }
}

/// A relay endpoint as allocated by a relay server (inside CallMeMaybeVia and the allocation
/// response): who may bind, under which VNI, for how long, and at which addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpRelayEndpoint {
    /// The relay server's own disco key (not its node's): Binds are sealed to it.
    pub server_disco: PublicKey,
    /// The two clients' disco keys, sorted bytewise by the server.
    pub client_disco: [PublicKey; 2],
    /// With `server_disco`, names the allocation; a later allocation has a larger one.
    pub lamport_id: u64,
    /// The Geneve VNI (24 bits used, 1..=0xFFFFFF).
    pub vni: u32,
    /// How long the endpoint waits for both clients to bind (i64 nanoseconds on the wire).
    pub bind_lifetime: Duration,
    /// How long a bound endpoint lives without traffic (i64 nanoseconds on the wire).
    pub steady_state_lifetime: Duration,
    /// The relay's addresses; at least one on the wire, at most
    /// [`MAX_CALL_ME_MAYBE_ENDPOINTS`] (encoding keeps the first that many).
    pub addrs: Vec<SocketAddr>,
}

impl UdpRelayEndpoint {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.server_disco.as_bytes());
        out.extend_from_slice(self.client_disco[0].as_bytes());
        out.extend_from_slice(self.client_disco[1].as_bytes());
        out.extend_from_slice(&self.lamport_id.to_be_bytes());
        out.extend_from_slice(&self.vni.to_be_bytes());
        out.extend_from_slice(&lifetime_nanos(self.bind_lifetime).to_be_bytes());
        out.extend_from_slice(&lifetime_nanos(self.steady_state_lifetime).to_be_bytes());
        for a in self.addrs.iter().take(MAX_CALL_ME_MAYBE_ENDPOINTS) {
            put_endpoint(out, a);
        }
    }

    /// 124 fixed bytes, then a nonzero multiple of 18 (no trailing bytes).
    fn get(kind: u8, len: usize, b: &[u8]) -> Result<Self, DiscoError> {
        let malformed = DiscoError::Malformed { kind, len };
        if b.len() < RELAY_ENDPOINT_FIXED_LEN {
            return Err(malformed);
        }
        let rest = &b[RELAY_ENDPOINT_FIXED_LEN..];
        if rest.is_empty() || rest.len() % ENDPOINT_LEN != 0 {
            return Err(malformed);
        }
        let count = rest.len() / ENDPOINT_LEN;
        if count > MAX_CALL_ME_MAYBE_ENDPOINTS {
            return Err(DiscoError::TooManyEndpoints { count });
        }
        let lifetime = |at: usize| {
            let nanos = i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
            u64::try_from(nanos)
                .ok()
                .map(Duration::from_nanos)
                .filter(|d| *d <= MAX_RELAY_LIFETIME)
                .ok_or(DiscoError::BadLifetime { kind, nanos })
        };
        Ok(UdpRelayEndpoint {
            server_disco: key_at(b, 0),
            client_disco: [key_at(b, 32), key_at(b, 64)],
            lamport_id: u64::from_be_bytes(b[96..104].try_into().expect("8 bytes")),
            vni: u32_at(b, 104),
            bind_lifetime: lifetime(108)?,
            steady_state_lifetime: lifetime(116)?,
            addrs: rest.chunks_exact(ENDPOINT_LEN).map(get_endpoint).collect(),
        })
    }
}

/// A lifetime as the wire's i64 nanoseconds, clamped to [`MAX_RELAY_LIFETIME`].
fn lifetime_nanos(d: Duration) -> i64 {
    i64::try_from(d.min(MAX_RELAY_LIFETIME).as_nanos()).expect("a day fits in i64 nanoseconds")
}

/// The version byte an `Unknown` is written with: 1 for the types this version reads only at
/// version 0 (so the message stays unknown when read back), else 0.
fn unknown_version(kind: u8) -> u8 {
    match kind {
        TYPE_CALL_ME_MAYBE_VIA | TYPE_ALLOCATE_REQUEST | TYPE_ALLOCATE_RESPONSE => 1,
        _ => VERSION,
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn key_at(b: &[u8], at: usize) -> PublicKey {
    PublicKey(b[at..at + 32].try_into().expect("32 bytes"))
}
