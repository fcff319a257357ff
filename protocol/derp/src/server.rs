//! The relay, sans-IO: connections are byte streams identified by [`ConnId`]; the driver feeds
//! what it reads and writes what `poll_transmit` yields. Routes by destination key, keeps
//! bounded per-client queues (a small separate one for disco), drops and counts on overflow,
//! tells watchers about arrivals and departures, forwards over the mesh.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use burrow_wg::{PrivateKey, PublicKey};
use bytes::Bytes;
use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;

use crate::frame::{Frame, FrameDecoder, FrameError, PeerGoneReason, NONCE_LEN, PROTOCOL_VERSION};
use crate::info::{ClientInfo, ServerInfo};
use crate::nacl::BoxKey;

/// Disco messages start with this magic ("TS💬"); they get the small priority queue.
pub const DISCO_MAGIC: &[u8; 6] = b"TS\xf0\x9f\x92\xac";

/// Control frames (pongs, peer notices, keep-alives) queued per client before new ones drop.
const MAX_CONTROL_QUEUE: usize = 1024;

/// How long a new connection has to send its ClientInfo.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A connection's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// A mesh link: our outgoing connection to another server of the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeshLink(pub u32);

/// Relay settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The server's key (clients seal ClientInfo to it).
    pub private_key: PrivateKey,
    /// Servers sharing this key form a mesh.
    pub mesh_key: Option<String>,
    /// Data packets queued per client before new ones are dropped.
    pub queue_limit: usize,
    /// Disco packets queued per client before new ones are dropped.
    pub disco_queue_limit: usize,
    /// KeepAlive to a client after this long without writing to it.
    pub keepalive: Duration,
    /// Per-client rate limit on what it sends: (bytes per second, burst bytes).
    pub rate_limit: Option<(u64, u64)>,
}

impl ServerConfig {
    /// Defaults: 32 data and 8 disco packets per client, keep-alives every 60 s, no rate limit.
    pub fn new(private_key: PrivateKey) -> Self {
        ServerConfig {
            private_key,
            mesh_key: None,
            queue_limit: 32,
            disco_queue_limit: 8,
            keepalive: Duration::from_secs(60),
            rate_limit: None,
        }
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
    /// A frame that only a mesh peer may send.
    #[error("{0} from a client that is not a mesh peer")]
    NotMeshPeer(&'static str),
    /// A newer connection with the same key took over.
    #[error("replaced by a newer connection for the same key")]
    Replaced,
    /// A mesh peer asked (ClosePeer).
    #[error("closed at a mesh peer's request")]
    ClosedByMeshPeer,
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
}

enum State {
    AwaitingClientInfo,
    Active { key: [u8; 32], mesh: bool },
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

struct Conn {
    state: State,
    decoder: FrameDecoder,
    data: VecDeque<Out>,
    disco: VecDeque<Out>,
    control: VecDeque<Bytes>,
    last_write: Instant,
    tokens: f64,
    last_refill: Instant,
    preferred: bool,
    accepted_at: Instant,
    last_peer_gone: Option<Instant>,
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
            ..self.stats.clone()
        }
    }

    /// A new connection: the server speaks first (ServerKey).
    pub fn accept(&mut self, now: Instant, conn: ConnId) {
        self.now = Some(now);
        let mut c = Conn {
            state: State::AwaitingClientInfo,
            decoder: FrameDecoder::new(),
            data: VecDeque::new(),
            disco: VecDeque::new(),
            control: VecDeque::new(),
            last_write: now,
            tokens: self
                .config
                .rate_limit
                .map_or(0.0, |(_, burst)| burst as f64),
            last_refill: now,
            preferred: false,
            accepted_at: now,
            last_peer_gone: None,
        };
        c.control
            .push_back(frame(Frame::ServerKey { key: self.public.0 }));
        self.conns.insert(conn, c);
        self.ready.insert(conn);
        self.woken.insert(conn);
    }

    /// Bytes read from a connection.
    pub fn handle_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        self.now = Some(now);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.decoder.extend(bytes);
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let active = match c.state {
                State::Active { key, .. } => Some(key),
                State::AwaitingClientInfo => None,
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
                self.stats.bad_connections += 1;
                self.close(now, conn, reason);
                return;
            }
        }
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
                // As Tailscale: a wrong mesh key makes an ordinary client, not an error.
                let mesh = matches!((&info.mesh_key, &self.config.mesh_key), (Some(theirs), Some(ours)) if constant_eq(theirs.as_bytes(), ours.as_bytes()));
                let mut nonce = [0u8; NONCE_LEN];
                self.rng.fill_bytes(&mut nonce);
                let (rate, burst) = self.config.rate_limit.unwrap_or((0, 0));
                let reply = ServerInfo {
                    version: PROTOCOL_VERSION,
                    token_bucket_bytes_per_second: rate,
                    token_bucket_bytes_burst: burst,
                };
                let sealed = bx.seal(&nonce, &serde_json::to_vec(&reply).expect("serializable"));
                c.control.push_back(frame(Frame::ServerInfo {
                    nonce,
                    sealed: &sealed,
                }));
                c.state = State::Active { key, mesh };
                self.ready.insert(conn);
                self.woken.insert(conn);
                // A newer connection for the same key replaces the older one.
                if let Some(old) = self.by_key.insert(key, conn) {
                    if old != conn {
                        self.closing.push_back((old, CloseReason::Replaced));
                        self.drop_conn(old, false);
                    }
                }
                self.broadcast_present(key);
                return Ok(());
            }
            State::Active { key, mesh } => (key, mesh),
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
                let present: Vec<[u8; 32]> =
                    self.by_key.keys().copied().filter(|k| *k != key).collect();
                for k in present {
                    self.push_control(
                        conn,
                        frame(Frame::PeerPresent {
                            key: k,
                            endpoint: None,
                            flags: None,
                        }),
                    );
                }
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

    fn broadcast_present(&mut self, key: [u8; 32]) {
        let watchers: Vec<ConnId> = self.watchers.iter().copied().collect();
        for w in watchers {
            if self.by_key.get(&key) != Some(&w) {
                self.push_control(
                    w,
                    frame(Frame::PeerPresent {
                        key,
                        endpoint: None,
                        flags: None,
                    }),
                );
            }
        }
    }

    fn drop_conn(&mut self, conn: ConnId, announce: bool) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.ready.remove(&conn);
        self.watchers.remove(&conn);
        if let State::Active { key, .. } = c.state {
            if self.by_key.get(&key) == Some(&conn) {
                self.by_key.remove(&key);
                if announce {
                    let watchers: Vec<ConnId> = self.watchers.iter().copied().collect();
                    for w in watchers {
                        self.push_control(
                            w,
                            frame(Frame::PeerGone {
                                key,
                                reason: PeerGoneReason::Disconnected,
                            }),
                        );
                    }
                }
            }
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
        // Connections that never sent a ClientInfo are closed (slowloris).
        let stalled: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.state, State::AwaitingClientInfo)
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
                State::AwaitingClientInfo => c.accepted_at + HANDSHAKE_TIMEOUT,
            })
            .min()
    }

    /// The next bytes to write to a connection (control first, then disco, then data).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(ConnId, Bytes)> {
        loop {
            // Round-robin: the next ready connection after the one served last.
            let after = self.last_served.and_then(|l| {
                self.ready
                    .range((std::ops::Bound::Excluded(l), std::ops::Bound::Unbounded))
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
            let next = c.control.pop_front().or_else(|| {
                c.disco
                    .pop_front()
                    .or_else(|| c.data.pop_front())
                    .map(materialize)
            });
            match next {
                Some(b) => {
                    c.last_write = now;
                    if c.control.is_empty() && c.disco.is_empty() && c.data.is_empty() {
                        self.ready.remove(&id);
                    } else {
                        // Round-robin: move to the back by re-inserting after others.
                        self.ready.remove(&id);
                        self.ready.insert(id);
                    }
                    return Some((id, b));
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
        let next = c.control.pop_front().or_else(|| {
            c.disco
                .pop_front()
                .or_else(|| c.data.pop_front())
                .map(materialize)
        });
        if next.is_some() {
            c.last_write = now;
        }
        if c.control.is_empty() && c.disco.is_empty() && c.data.is_empty() {
            self.ready.remove(&conn);
        }
        next
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
            if let Some(b) = c.control.pop_front() {
                out.extend_from_slice(&b);
            } else if let Some(o) = c.disco.pop_front().or_else(|| c.data.pop_front()) {
                o.append_to(out);
            } else {
                break;
            }
        }
        let wrote = out.len() > start;
        if wrote {
            c.last_write = now;
        }
        if c.control.is_empty() && c.disco.is_empty() && c.data.is_empty() {
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

fn materialize(o: Out) -> Bytes {
    let mut v = Vec::with_capacity(37 + o.body.len());
    o.append_to(&mut v);
    Bytes::from(v)
}

fn c_mut(conns: &mut BTreeMap<ConnId, Conn>, id: ConnId) -> &mut Conn {
    conns.get_mut(&id).expect("connection exists")
}
