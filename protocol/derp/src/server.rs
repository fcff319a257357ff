//! The relay, sans-IO: connections are byte streams identified by [`ConnId`]; the driver feeds
//! what it reads and writes what `poll_transmit` yields. Routes by destination key, keeps
//! bounded per-client queues (a small separate one for disco), drops and counts on overflow,
//! tells watchers about arrivals and departures, forwards over the mesh.
//!
//! Admission: a ClientInfo whose nonce its key has already used (while connected, or within
//! the replay window since) is a replay and is refused without touching the live connection
//! of that key; nonces are remembered per admitted key, so handshakes of other keys cannot
//! flush them. Clients are capped globally and per source; with
//! [`ServerConfig::verify_clients`] a key waits (see [`Server::poll_verify`]) until the driver
//! reports the control server's [`Verdict`], with the keys waiting capped globally and per
//! source.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::ops::Bound;
use std::time::{Duration, Instant};

use burrow_wg::{PrivateKey, PublicKey};
use bytes::Bytes;
use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;

use crate::frame::{
    Frame, FrameDecoder, FrameError, PeerGoneReason, HEADER_LEN, MAX_FRAME_SIZE, NONCE_LEN,
    PROTOCOL_VERSION,
};
use crate::gate::SourceCounts;
use crate::info::{ClientInfo, ServerInfo};
use crate::nacl::BoxKey;
use crate::recent::{NonceMemory, Recent};

/// Disco messages start with this magic ("TS💬"); they get the small priority queue.
pub const DISCO_MAGIC: &[u8; 6] = b"TS\xf0\x9f\x92\xac";

/// Control frames (pongs, peer notices, keep-alives) queued per client before new ones drop.
/// Watchers' PeerPresent / PeerGone do not go through this queue (see [`MAX_WATCH_CHANGES`]).
const MAX_CONTROL_QUEUE: usize = 1024;

/// Presence changes remembered per watcher before it is re-sent the whole client list.
pub const MAX_WATCH_CHANGES: usize = 65_536;

/// How long a new connection has to send its ClientInfo (and be verified).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Shortest mesh key accepted, in bytes after trimming whitespace.
pub const MIN_MESH_KEY_LEN: usize = 32;

/// Distinct keys waiting for verification at once; more connections are refused.
pub const MAX_PENDING_VERIFICATIONS: usize = 256;

/// Keys one source (an IPv4 address or IPv6 /64; [`crate::gate::SITE_SHARES`] times that per
/// /48; loopback exempt) may have waiting for verification at once, so that a few sources
/// cannot take every place of [`MAX_PENDING_VERIFICATIONS`].
pub const MAX_PENDING_VERIFICATIONS_PER_SOURCE: usize = 16;

/// Clients at once by default: each costs a driver some tens of KiB at least (socket and
/// TLS buffers, queues), so 20,000 stays near a gigabyte; raise it where memory allows.
pub const DEFAULT_MAX_CLIENTS: usize = 20_000;

/// How long a verification answer is reused: allowed keys, then denied keys.
pub const VERIFY_ALLOW_TTL: Duration = Duration::from_secs(60);
/// See [`VERIFY_ALLOW_TTL`].
pub const VERIFY_DENY_TTL: Duration = Duration::from_secs(10);
/// Verification answers cached at most (each of allowed and denied).
const VERIFY_CACHE: usize = 8192;

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A connection's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// A mesh link: our outgoing connection to another server of the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeshLink(pub u32);

/// The region's shared secret: a client presenting it is a mesh peer (it may watch, forward
/// and close other clients), so it must not be guessable. Debug never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshKey(String);

/// A mesh key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshKeyError {
    /// Too short (an empty file trims to nothing).
    #[error("the mesh key has {len} bytes after trimming; at least {MIN_MESH_KEY_LEN} are needed (e.g. `openssl rand -hex 32`)")]
    TooShort {
        /// Its length after trimming.
        len: usize,
    },
}

impl MeshKey {
    /// The key in `text` with surrounding whitespace trimmed; at least [`MIN_MESH_KEY_LEN`] bytes.
    pub fn new(text: &str) -> Result<Self, MeshKeyError> {
        let t = text.trim();
        if t.len() < MIN_MESH_KEY_LEN {
            return Err(MeshKeyError::TooShort { len: t.len() });
        }
        Ok(MeshKey(t.to_owned()))
    }

    /// The secret itself (to put in a mesh client's ClientInfo).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl core::str::FromStr for MeshKey {
    type Err = MeshKeyError;
    fn from_str(s: &str) -> Result<Self, MeshKeyError> {
        MeshKey::new(s)
    }
}

impl core::fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MeshKey(<redacted>)")
    }
}

/// Relay settings.
#[derive(Clone)]
pub struct ServerConfig {
    /// The server's key (clients seal ClientInfo to it).
    pub private_key: PrivateKey,
    /// Servers sharing this key form a mesh.
    pub mesh_key: Option<MeshKey>,
    /// Data packets queued per client before new ones are dropped.
    pub queue_limit: usize,
    /// Disco packets queued per client before new ones are dropped.
    pub disco_queue_limit: usize,
    /// KeepAlive to a client after this long without writing to it.
    pub keepalive: Duration,
    /// Per-client rate limit on what it sends: (bytes per second, burst bytes).
    pub rate_limit: Option<(u64, u64)>,
    /// Clients connected at once (a mesh peer is never refused); more are refused.
    pub max_clients: usize,
    /// Clients connected at once from one source (an IPv4 address or an IPv6 /64, and
    /// [`crate::gate::SITE_SHARES`] times that per /48; loopback is exempt). Mesh peers do
    /// not count.
    pub max_clients_per_ip: usize,
    /// Hold each new client key (mesh peers excepted) until the driver reports a verdict.
    pub verify_clients: bool,
    /// How long the ClientInfo nonces of a key are remembered after its last connection
    /// ended, to refuse replays. A connected key's nonces are kept as long as it is connected.
    pub replay_window: Duration,
    /// Nonces remembered at most for keys no longer connected (the longest gone are
    /// forgotten first). Connected keys' nonces do not count: nothing pushes them out.
    pub replay_memory: usize,
}

impl core::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("public_key", &self.private_key.public_key())
            .field("mesh_key", &self.mesh_key.as_ref().map(|_| "<redacted>"))
            .field("queue_limit", &self.queue_limit)
            .field("disco_queue_limit", &self.disco_queue_limit)
            .field("keepalive", &self.keepalive)
            .field("rate_limit", &self.rate_limit)
            .field("max_clients", &self.max_clients)
            .field("max_clients_per_ip", &self.max_clients_per_ip)
            .field("verify_clients", &self.verify_clients)
            .field("replay_window", &self.replay_window)
            .field("replay_memory", &self.replay_memory)
            .finish()
    }
}

impl ServerConfig {
    /// Defaults: 32 data and 8 disco packets per client, keep-alives every 60 s, no rate
    /// limit, [`DEFAULT_MAX_CLIENTS`] clients (1,000 per source), no verification, ClientInfo
    /// replays refused while connected and for 10 minutes after (65,536 nonces of departed
    /// keys remembered).
    pub fn new(private_key: PrivateKey) -> Self {
        ServerConfig {
            private_key,
            mesh_key: None,
            queue_limit: 32,
            disco_queue_limit: 8,
            keepalive: Duration::from_secs(60),
            rate_limit: None,
            max_clients: DEFAULT_MAX_CLIENTS,
            max_clients_per_ip: 1_000,
            verify_clients: false,
            replay_window: Duration::from_secs(600),
            replay_memory: 65_536,
        }
    }

    /// The same with a mesh key, checked (at least [`MIN_MESH_KEY_LEN`] bytes after trimming).
    pub fn with_mesh_key(mut self, mesh_key: &str) -> Result<Self, MeshKeyError> {
        self.mesh_key = Some(MeshKey::new(mesh_key)?);
        Ok(self)
    }
}

/// Why the server closes a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// A malformed frame.
    #[error("malformed frame: {0}")]
    Malformed(#[from] FrameError),
    /// The first frame was not a valid ClientInfo (wrong key, bad box, bad JSON, bad version).
    #[error("bad ClientInfo: {0}")]
    BadClientInfo(String),
    /// A ClientInfo whose nonce its key has already used: a replayed handshake.
    #[error("replayed ClientInfo")]
    Replayed,
    /// A frame that only a mesh peer may send.
    #[error("{0} from a client that is not a mesh peer")]
    NotMeshPeer(&'static str),
    /// A newer connection with the same key took over.
    #[error("replaced by a newer connection for the same key")]
    Replaced,
    /// A mesh peer asked (ClosePeer).
    #[error("closed at a mesh peer's request")]
    ClosedByMeshPeer,
    /// The client cap is reached.
    #[error("too many clients")]
    TooManyClients,
    /// The per-source client cap is reached.
    #[error("too many clients from this address")]
    TooManyFromAddress,
    /// Verification denied the key, or could not answer.
    #[error("client not verified: {0}")]
    NotVerified(&'static str),
    /// Too many keys are waiting for verification.
    #[error("too many clients waiting for verification")]
    VerifyBusy,
}

impl CloseReason {
    /// Whether the client sent something wrong (counted in [`Stats::bad_connections`]),
    /// rather than being refused by policy.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            CloseReason::Malformed(_)
                | CloseReason::BadClientInfo(_)
                | CloseReason::Replayed
                | CloseReason::NotMeshPeer(_)
        )
    }
}

/// What the control server said about a client key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A live node: admit (remembered for [`VERIFY_ALLOW_TTL`]).
    Allowed,
    /// Not a node: refuse (remembered for [`VERIFY_DENY_TTL`]).
    Denied,
    /// No answer (control server unreachable): refuse this connection, remember nothing.
    Unknown,
}

/// Why a packet was dropped (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// The destination is not connected here or on the mesh.
    UnknownDestination,
    /// The destination's queue was full.
    QueueFull,
    /// The sender exceeded its rate limit.
    RateLimited,
}

/// Counters, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Clients connected now.
    pub clients: usize,
    /// Packets relayed.
    pub packets_relayed: u64,
    /// Bytes relayed.
    pub bytes_relayed: u64,
    /// Packets forwarded to or from mesh peers.
    pub packets_forwarded: u64,
    /// Drops, by reason.
    pub drops: BTreeMap<DropReason, u64>,
    /// Connections closed for bad input.
    pub bad_connections: u64,
    /// Mesh links up.
    pub mesh_peers: usize,
    /// ClientInfos refused as replays.
    pub replayed_client_infos: u64,
    /// Clients refused by a cap or by verification.
    pub refused_clients: u64,
    /// Keys waiting for verification now.
    pub pending_verifications: usize,
}

enum State {
    AwaitingClientInfo,
    /// ClientInfo opened; waiting for the driver's verdict on `key`.
    Verifying {
        key: [u8; 32],
        nonce: [u8; NONCE_LEN],
        bx: Box<BoxKey>,
    },
    Active {
        key: [u8; 32],
        mesh: bool,
    },
}

/// A key waiting for its verdict.
struct Pending {
    conns: BTreeSet<ConnId>,
    /// The source counted for this lookup (that of the connection that caused it).
    source: Option<IpAddr>,
}

/// A relayed packet waiting in a queue: its RecvPacket header plus the packet bytes sliced
/// from the sender's read buffer (no copy until the writer batches it).
struct Out {
    header: [u8; 37],
    body: Bytes,
}

impl Out {
    fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.body);
    }
}

/// Where a watcher's dump of the client list stands.
#[derive(Clone, Copy)]
enum Dump {
    Start,
    After([u8; 32]),
    Done,
}

/// A mesh watcher's pending news: the client list, walked as its writer drains (not
/// queued), and the keys whose presence changed since, announced as they are when written.
struct Watch {
    dump: Dump,
    changed: BTreeSet<[u8; 32]>,
}

impl Watch {
    fn next_dump_key(
        &self,
        by_key: &BTreeMap<[u8; 32], ConnId>,
        own: [u8; 32],
    ) -> Option<[u8; 32]> {
        let mut keys = match self.dump {
            Dump::Done => return None,
            Dump::Start => by_key.range::<[u8; 32], _>(..),
            Dump::After(k) => by_key.range((Bound::Excluded(k), Bound::Unbounded)),
        };
        keys.find(|(k, _)| **k != own).map(|(k, _)| *k)
    }

    fn pending(&self, by_key: &BTreeMap<[u8; 32], ConnId>, own: [u8; 32]) -> bool {
        !self.changed.is_empty() || self.next_dump_key(by_key, own).is_some()
    }

    fn next_frame(&mut self, by_key: &BTreeMap<[u8; 32], ConnId>, own: [u8; 32]) -> Option<Bytes> {
        if let Some(key) = self.changed.pop_first() {
            return Some(if by_key.contains_key(&key) {
                present(key)
            } else {
                frame(Frame::PeerGone {
                    key,
                    reason: PeerGoneReason::Disconnected,
                })
            });
        }
        match self.next_dump_key(by_key, own) {
            Some(key) => {
                self.dump = Dump::After(key);
                Some(present(key))
            }
            None => {
                self.dump = Dump::Done;
                None
            }
        }
    }
}

fn present(key: [u8; 32]) -> Bytes {
    frame(Frame::PeerPresent {
        key,
        endpoint: None,
        flags: None,
    })
}

struct Conn {
    state: State,
    decoder: FrameDecoder,
    data: VecDeque<Out>,
    disco: VecDeque<Out>,
    control: VecDeque<Bytes>,
    watch: Option<Box<Watch>>,
    last_write: Instant,
    tokens: f64,
    last_refill: Instant,
    preferred: bool,
    accepted_at: Instant,
    last_peer_gone: Option<Instant>,
    /// The source address, if the driver said.
    ip: Option<IpAddr>,
    /// The source address this client counts against in the per-source caps, once admitted.
    counted: Option<IpAddr>,
}

/// What a connection writes next.
enum Next {
    Frame(Bytes),
    Packet(Out),
}

impl Conn {
    fn own_key(&self) -> [u8; 32] {
        match self.state {
            State::Active { key, .. } | State::Verifying { key, .. } => key,
            State::AwaitingClientInfo => [0; 32],
        }
    }

    fn next(&mut self, by_key: &BTreeMap<[u8; 32], ConnId>) -> Option<Next> {
        if let Some(b) = self.control.pop_front() {
            return Some(Next::Frame(b));
        }
        let own = self.own_key();
        if let Some(b) = self.watch.as_mut().and_then(|w| w.next_frame(by_key, own)) {
            return Some(Next::Frame(b));
        }
        self.disco
            .pop_front()
            .or_else(|| self.data.pop_front())
            .map(Next::Packet)
    }

    fn has_output(&self, by_key: &BTreeMap<[u8; 32], ConnId>) -> bool {
        !self.control.is_empty()
            || !self.disco.is_empty()
            || !self.data.is_empty()
            || self
                .watch
                .as_ref()
                .is_some_and(|w| w.pending(by_key, self.own_key()))
    }
}

/// The relay.
pub struct Server {
    config: ServerConfig,
    public: PublicKey,
    rng: ChaCha20Rng,
    conns: BTreeMap<ConnId, Conn>,
    by_key: BTreeMap<[u8; 32], ConnId>,
    watchers: BTreeSet<ConnId>,
    /// Clients of other mesh servers, and the link that reaches them.
    remote: BTreeMap<[u8; 32], MeshLink>,
    mesh_links: BTreeSet<MeshLink>,
    mesh_out: VecDeque<(MeshLink, Bytes)>,
    ready: BTreeSet<ConnId>,
    woken: BTreeSet<ConnId>,
    closing: VecDeque<(ConnId, CloseReason)>,
    stats: Stats,
    now: Option<Instant>,
    last_served: Option<ConnId>,
    /// ClientInfo nonces of admitted keys.
    nonces: NonceMemory,
    verify_allowed: Recent<[u8; 32], ()>,
    verify_denied: Recent<[u8; 32], ()>,
    /// Keys waiting for a verdict: their connections, and the source that asked first.
    verifying: BTreeMap<[u8; 32], Pending>,
    /// Keys waiting for a verdict, per source that asked first.
    verifying_per_source: SourceCounts,
    /// Keys for the driver to look up.
    verify_out: VecDeque<[u8; 32]>,
    /// Admitted clients per source.
    per_source: SourceCounts,
    /// Admitted clients that are not mesh peers.
    non_mesh: usize,
}

impl core::fmt::Debug for Server {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server")
            .field("public_key", &self.public)
            .field("clients", &self.by_key.len())
            .finish_non_exhaustive()
    }
}

fn frame(f: Frame<'_>) -> Bytes {
    Bytes::from(f.to_vec())
}

impl Server {
    /// A relay with its own random source (for ServerInfo nonces).
    pub fn new(config: ServerConfig, rng: ChaCha20Rng) -> Self {
        let public = config.private_key.public_key();
        let nonces = NonceMemory::new(config.replay_window, config.replay_memory);
        Server {
            config,
            public,
            rng,
            conns: BTreeMap::new(),
            by_key: BTreeMap::new(),
            watchers: BTreeSet::new(),
            remote: BTreeMap::new(),
            mesh_links: BTreeSet::new(),
            mesh_out: VecDeque::new(),
            ready: BTreeSet::new(),
            woken: BTreeSet::new(),
            closing: VecDeque::new(),
            stats: Stats::default(),
            now: None,
            last_served: None,
            nonces,
            verify_allowed: Recent::new(VERIFY_ALLOW_TTL, VERIFY_CACHE),
            verify_denied: Recent::new(VERIFY_DENY_TTL, VERIFY_CACHE),
            verifying: BTreeMap::new(),
            verifying_per_source: SourceCounts::new(),
            verify_out: VecDeque::new(),
            per_source: SourceCounts::new(),
            non_mesh: 0,
        }
    }

    /// The server's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Counters now.
    pub fn stats(&self) -> Stats {
        Stats {
            clients: self.by_key.len(),
            mesh_peers: self.mesh_links.len(),
            pending_verifications: self.verifying.len(),
            ..self.stats.clone()
        }
    }

    /// A new connection: the server speaks first (ServerKey). Without a source address,
    /// per-source caps do not apply to it; see [`Server::accept_from`].
    pub fn accept(&mut self, now: Instant, conn: ConnId) {
        self.accept_from(now, conn, None);
    }

    /// A new connection from `ip` (counted against the per-source client cap once admitted).
    pub fn accept_from(&mut self, now: Instant, conn: ConnId, ip: Option<IpAddr>) {
        self.now = Some(now);
        let mut c = Conn {
            state: State::AwaitingClientInfo,
            decoder: FrameDecoder::new(),
            data: VecDeque::new(),
            disco: VecDeque::new(),
            control: VecDeque::new(),
            watch: None,
            last_write: now,
            tokens: self
                .config
                .rate_limit
                .map_or(0.0, |(_, burst)| burst as f64),
            last_refill: now,
            preferred: false,
            accepted_at: now,
            last_peer_gone: None,
            ip,
            counted: None,
        };
        c.control
            .push_back(frame(Frame::ServerKey { key: self.public.0 }));
        self.conns.insert(conn, c);
        self.ready.insert(conn);
        self.woken.insert(conn);
    }

    /// Whether the connection's client was admitted (its ClientInfo accepted and verified).
    pub fn is_admitted(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| matches!(c.state, State::Active { .. }))
    }

    /// Bytes read from a connection.
    pub fn handle_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        self.now = Some(now);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.decoder.extend(bytes);
        self.process(now, conn);
    }

    /// Handles the whole frames buffered for `conn`.
    fn process(&mut self, now: Instant, conn: ConnId) {
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
    fn refuse(&mut self, now: Instant, conn: ConnId, reason: CloseReason) {
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

    fn handle_frame(
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

    /// A ClientInfo that opened: refuse replays, then verify or admit.
    fn client_info(
        &mut self,
        now: Instant,
        conn: ConnId,
        key: [u8; 32],
        nonce: [u8; NONCE_LEN],
        bx: BoxKey,
        info: &ClientInfo,
    ) -> Result<(), CloseReason> {
        // The wire format has no server challenge, so a captured ClientInfo could be
        // replayed; refuse a nonce this key has used (remembered per admitted key) or one a
        // connection of this key waiting for its verdict presented, before anything happens
        // to the live connection of that key.
        let waiting_with_nonce = self.verifying.get(&key).is_some_and(|p| {
            p.conns.iter().any(|id| {
                self.conns.get(id).is_some_and(
                    |c| matches!(&c.state, State::Verifying { nonce: n, .. } if *n == nonce),
                )
            })
        });
        if waiting_with_nonce || self.nonces.contains(now, &key, &nonce) {
            return Err(CloseReason::Replayed);
        }
        // As Tailscale: a wrong mesh key makes an ordinary client, not an error.
        let mesh = matches!((&info.mesh_key, &self.config.mesh_key), (Some(theirs), Some(ours)) if constant_eq(theirs.as_bytes(), ours.0.as_bytes()));
        if self.config.verify_clients && !mesh && self.verify_allowed.get(now, &key).is_none() {
            if self.verify_denied.get(now, &key).is_some() {
                return Err(CloseReason::NotVerified("denied by the control server"));
            }
            if !self.verifying.contains_key(&key) {
                let ip = self.conns.get(&conn).and_then(|c| c.ip);
                if self.verifying.len() >= MAX_PENDING_VERIFICATIONS
                    || ip.is_some_and(|ip| {
                        self.verifying_per_source.is_full(
                            ip,
                            MAX_PENDING_VERIFICATIONS_PER_SOURCE,
                            None,
                        )
                    })
                {
                    return Err(CloseReason::VerifyBusy);
                }
                if let Some(ip) = ip {
                    self.verifying_per_source.add(ip);
                }
                self.verifying.insert(
                    key,
                    Pending {
                        conns: BTreeSet::new(),
                        source: ip,
                    },
                );
                self.verify_out.push_back(key);
            }
            if let Some(p) = self.verifying.get_mut(&key) {
                p.conns.insert(conn);
            }
            c_mut(&mut self.conns, conn).state = State::Verifying {
                key,
                nonce,
                bx: Box::new(bx),
            };
            return Ok(());
        }
        self.admit(now, conn, key, mesh, nonce, &bx)
    }

    /// Forgets a key's pending verification (its source's place is freed).
    fn end_verification(&mut self, key: &[u8; 32]) -> Option<BTreeSet<ConnId>> {
        let p = self.verifying.remove(key)?;
        if let Some(ip) = p.source {
            self.verifying_per_source.remove(ip);
        }
        Some(p.conns)
    }

    /// Replays, caps, then ServerInfo: the client is in.
    fn admit(
        &mut self,
        now: Instant,
        conn: ConnId,
        key: [u8; 32],
        mesh: bool,
        nonce: [u8; NONCE_LEN],
        bx: &BoxKey,
    ) -> Result<(), CloseReason> {
        // Checked again here: two connections with the same ClientInfo may have waited for
        // one verdict; the first admitted records the nonce, the other is a replay.
        if self.nonces.contains(now, &key, &nonce) {
            return Err(CloseReason::Replayed);
        }
        let replacing = self.by_key.get(&key).and_then(|id| self.conns.get(id));
        let mut counted = None;
        if !mesh {
            let replacing_counts =
                replacing.is_some_and(|r| matches!(r.state, State::Active { mesh: false, .. }));
            let others = self.non_mesh - usize::from(replacing_counts);
            if others >= self.config.max_clients {
                return Err(CloseReason::TooManyClients);
            }
            if let Some(ip) = self.conns.get(&conn).and_then(|c| c.ip) {
                let except = replacing.and_then(|r| r.counted);
                if self
                    .per_source
                    .is_full(ip, self.config.max_clients_per_ip, except)
                {
                    return Err(CloseReason::TooManyFromAddress);
                }
                counted = Some(ip);
            }
        }
        self.nonces.connected(now, key, nonce);
        let mut server_nonce = [0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut server_nonce);
        let (rate, burst) = self.config.rate_limit.unwrap_or((0, 0));
        let reply = ServerInfo {
            version: PROTOCOL_VERSION,
            token_bucket_bytes_per_second: rate,
            token_bucket_bytes_burst: burst,
        };
        let sealed = bx.seal(
            &server_nonce,
            &serde_json::to_vec(&reply).expect("serializable"),
        );
        let c = c_mut(&mut self.conns, conn);
        c.control.push_back(frame(Frame::ServerInfo {
            nonce: server_nonce,
            sealed: &sealed,
        }));
        c.state = State::Active { key, mesh };
        c.counted = counted;
        if !mesh {
            self.non_mesh += 1;
        }
        if let Some(ip) = counted {
            self.per_source.add(ip);
        }
        self.ready.insert(conn);
        self.woken.insert(conn);
        // A newer connection for the same key replaces the older one.
        if let Some(old) = self.by_key.insert(key, conn) {
            if old != conn {
                self.closing.push_back((old, CloseReason::Replaced));
                self.drop_conn(old, false);
            }
        }
        self.note_change(key);
        Ok(())
    }

    /// The next key the driver should verify (with the control server), then report with
    /// [`Server::verified`]. Each key is asked once however many connections wait for it.
    pub fn poll_verify(&mut self) -> Option<PublicKey> {
        while let Some(k) = self.verify_out.pop_front() {
            if self.verifying.contains_key(&k) {
                return Some(PublicKey(k));
            }
        }
        None
    }

    /// The verdict on `key`: its waiting connections are admitted (and their buffered frames
    /// handled) or closed.
    pub fn verified(&mut self, now: Instant, key: &PublicKey, verdict: Verdict) {
        self.now = Some(now);
        match verdict {
            Verdict::Allowed => {
                self.verify_denied.remove(&key.0);
                self.verify_allowed.insert(now, key.0, ());
            }
            Verdict::Denied => {
                self.verify_allowed.remove(&key.0);
                self.verify_denied.insert(now, key.0, ());
            }
            Verdict::Unknown => {}
        }
        let Some(waiting) = self.end_verification(&key.0) else {
            return;
        };
        for conn in waiting {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let State::Verifying { key, nonce, bx } =
                std::mem::replace(&mut c.state, State::AwaitingClientInfo)
            else {
                continue;
            };
            let result = match verdict {
                Verdict::Allowed => self.admit(now, conn, key, false, nonce, &bx),
                Verdict::Denied => Err(CloseReason::NotVerified("denied by the control server")),
                Verdict::Unknown => Err(CloseReason::NotVerified(
                    "no answer from the control server",
                )),
            };
            match result {
                Ok(()) => self.process(now, conn),
                Err(reason) => self.refuse(now, conn, reason),
            }
        }
    }

    fn take_tokens(&mut self, now: Instant, conn: ConnId, len: usize) -> bool {
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

    fn count_drop(&mut self, reason: DropReason) {
        *self.stats.drops.entry(reason).or_default() += 1;
    }

    fn route(&mut self, src: [u8; 32], dst: [u8; 32], packet: Bytes, from_mesh: bool) {
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

    fn peer_gone_allowed(&self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        let Some(now) = self.now else { return true };
        c.last_peer_gone
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
    }

    fn push_control(&mut self, conn: ConnId, bytes: Bytes) {
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
    fn note_change(&mut self, key: [u8; 32]) {
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

    fn drop_conn(&mut self, conn: ConnId, announce: bool) {
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

    fn close(&mut self, _now: Instant, conn: ConnId, reason: CloseReason) {
        if self.conns.contains_key(&conn) {
            self.closing.push_back((conn, reason));
            self.drop_conn(conn, true);
        }
    }

    /// The driver saw the connection end.
    pub fn disconnected(&mut self, conn: ConnId) {
        self.drop_conn(conn, true);
    }

    /// Tells every client to reconnect after `reconnect_in` and keep trying for `try_for`.
    pub fn announce_restart(&mut self, reconnect_in: Duration, try_for: Duration) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for c in conns {
            self.push_control(
                c,
                frame(Frame::Restarting {
                    reconnect_in_ms: reconnect_in.as_millis() as u32,
                    try_for_ms: try_for.as_millis() as u32,
                }),
            );
        }
    }

    /// Sends keep-alives to clients idle for the keep-alive interval.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        self.nonces.expire(now);
        // Connections not admitted within the handshake timeout are closed (slowloris, or a
        // verification that never came back).
        let stalled: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !matches!(c.state, State::Active { .. })
                    && now.saturating_duration_since(c.accepted_at) >= HANDSHAKE_TIMEOUT
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            self.close(
                now,
                id,
                CloseReason::BadClientInfo("no ClientInfo within the handshake timeout".into()),
            );
        }
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.state, State::Active { .. })
                    && now.saturating_duration_since(c.last_write) >= self.config.keepalive
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.push_control(id, frame(Frame::KeepAlive));
            c_mut(&mut self.conns, id).last_write = now;
        }
    }

    /// When `handle_timeout` should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .map(|c| match c.state {
                State::Active { .. } => c.last_write + self.config.keepalive,
                _ => c.accepted_at + HANDSHAKE_TIMEOUT,
            })
            .min()
    }

    /// The next bytes to write to a connection (control first, then watcher news, then
    /// disco, then data).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(ConnId, Bytes)> {
        loop {
            // Round-robin: the next ready connection after the one served last.
            let after = self.last_served.and_then(|l| {
                self.ready
                    .range((Bound::Excluded(l), Bound::Unbounded))
                    .next()
                    .copied()
            });
            let Some(id) = after.or_else(|| self.ready.iter().next().copied()) else {
                break;
            };
            self.last_served = Some(id);
            let Some(c) = self.conns.get_mut(&id) else {
                self.ready.remove(&id);
                continue;
            };
            match c.next(&self.by_key) {
                Some(next) => {
                    c.last_write = now;
                    if !c.has_output(&self.by_key) {
                        self.ready.remove(&id);
                    }
                    return Some((id, materialize(next)));
                }
                None => {
                    self.ready.remove(&id);
                }
            }
        }
        None
    }

    /// The next bytes for one connection: for a driver with a writer task per connection,
    /// which takes only as fast as its socket accepts (the server's queues stay the bound).
    pub fn poll_transmit_for(&mut self, now: Instant, conn: ConnId) -> Option<Bytes> {
        let c = self.conns.get_mut(&conn)?;
        let next = c.next(&self.by_key);
        if next.is_some() {
            c.last_write = now;
        }
        if !c.has_output(&self.by_key) {
            self.ready.remove(&conn);
        }
        next.map(materialize)
    }

    /// Appends this connection's queued frames to `out`, up to about `max` bytes; returns
    /// whether anything was appended. The relay's fast path: one copy per relayed packet.
    pub fn write_transmit_for(
        &mut self,
        now: Instant,
        conn: ConnId,
        out: &mut Vec<u8>,
        max: usize,
    ) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let start = out.len();
        while out.len() - start < max {
            match c.next(&self.by_key) {
                Some(Next::Frame(b)) => out.extend_from_slice(&b),
                Some(Next::Packet(o)) => o.append_to(out),
                None => break,
            }
        }
        let wrote = out.len() > start;
        if wrote {
            c.last_write = now;
        }
        if !c.has_output(&self.by_key) {
            self.ready.remove(&conn);
        }
        wrote
    }

    /// Connections that got something to write since the last call (to wake their writers).
    pub fn take_woken(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.woken).into_iter().collect()
    }

    /// The next connection to close, and why (its queues are already discarded).
    pub fn poll_close(&mut self) -> Option<(ConnId, CloseReason)> {
        self.closing.pop_front()
    }

    /// Mesh: a link to another server came up (the driver runs a `Client` with WatchConns on it).
    pub fn mesh_link_up(&mut self, link: MeshLink) {
        self.mesh_links.insert(link);
    }

    /// Mesh: a link went down; its clients are unreachable through it.
    pub fn mesh_link_down(&mut self, link: MeshLink) {
        self.mesh_links.remove(&link);
        self.remote.retain(|_, l| *l != link);
    }

    /// Mesh: the server behind `link` has (or no longer has) client `key`.
    pub fn mesh_peer(&mut self, link: MeshLink, key: [u8; 32], present: bool) {
        if present {
            self.remote.insert(key, link);
        } else if self.remote.get(&key) == Some(&link) {
            self.remote.remove(&key);
        }
    }

    /// Mesh: the next frame to send to another server.
    pub fn poll_mesh_transmit(&mut self) -> Option<(MeshLink, Bytes)> {
        self.mesh_out.pop_front()
    }

    /// Whether a client with this key is connected here.
    pub fn has_client(&self, key: &PublicKey) -> bool {
        self.by_key.contains_key(&key.0)
    }
}

fn materialize(next: Next) -> Bytes {
    match next {
        Next::Frame(b) => b,
        Next::Packet(o) => {
            let mut v = Vec::with_capacity(37 + o.body.len());
            o.append_to(&mut v);
            Bytes::from(v)
        }
    }
}

fn c_mut(conns: &mut BTreeMap<ConnId, Conn>, id: ConnId) -> &mut Conn {
    conns.get_mut(&id).expect("connection exists")
}
