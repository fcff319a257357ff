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

use burrow_wg::PublicKey;
use bytes::Bytes;
use rand_chacha::ChaCha20Rng;

use crate::frame::{Frame, FrameDecoder, FrameError};
use crate::gate::SourceCounts;
use crate::recent::{NonceMemory, Recent};

mod config;
mod conn;
mod handshake;
mod input;
mod relay;

use config::constant_eq;
pub use config::{MeshKey, MeshKeyError, ServerConfig, DEFAULT_MAX_CLIENTS, MIN_MESH_KEY_LEN};
use conn::frame;
pub use conn::ConnId;
use conn::{c_mut, materialize, Conn, Dump, Next, Out, Pending, State, Watch};

/// Disco messages start with this magic ("TS💬"); they get the small priority queue.
pub const DISCO_MAGIC: &[u8; 6] = b"TS\xf0\x9f\x92\xac";

/// Control frames (pongs, peer notices, keep-alives) queued per client before new ones drop.
/// Watchers' PeerPresent / PeerGone do not go through this queue (see [`MAX_WATCH_CHANGES`]).
const MAX_CONTROL_QUEUE: usize = 1024;

/// Presence changes remembered per watcher before it is re-sent the whole client list.
pub const MAX_WATCH_CHANGES: usize = 65_536;

/// How long a new connection has to send its ClientInfo (and be verified).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Distinct keys waiting for verification at once; more connections are refused.
pub const MAX_PENDING_VERIFICATIONS: usize = 256;

/// Keys one source (an IPv4 address or IPv6 /64; [`crate::gate::SITE_SHARES`] times that per
/// /48; loopback exempt) may have waiting for verification at once, so that a few sources
/// cannot take every place of [`MAX_PENDING_VERIFICATIONS`].
pub const MAX_PENDING_VERIFICATIONS_PER_SOURCE: usize = 16;

/// How long a verification answer is reused: allowed keys, then denied keys.
pub const VERIFY_ALLOW_TTL: Duration = Duration::from_secs(60);
/// See [`VERIFY_ALLOW_TTL`].
pub const VERIFY_DENY_TTL: Duration = Duration::from_secs(10);
/// Verification answers cached at most (each of allowed and denied).
const VERIFY_CACHE: usize = 8192;

/// A mesh link: our outgoing connection to another server of the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeshLink(pub u32);

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
