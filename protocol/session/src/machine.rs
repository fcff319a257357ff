//! The session state machine: registration, the netmap stream, peers, routes, the filter and
//! endpoint reports, with no I/O. The driver carries out each [`Request`] with its HTTP client
//! and feeds the outcome back as an [`Input`]; it applies each [`SessionEvent`] to its node
//! engine; it asks [`Session::route_outbound`] and [`Session::admit_inbound`] about packets.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_control::changelog::ChangeId;
use burrow_control::{
    parse_packet, Delta, DerpRegion, DropReason, EndpointsRequest, Filter, MapMessage, NetMap,
    NodeInfo, PeerInfo, RegisterBody, RegisterResponse, RelayGrants, Verdict,
};
use burrow_node::{PeerConfig, PeerRelayPolicy};
use burrow_wg::PublicKey;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use thiserror::Error;

use crate::peers::{Change, Peers};

/// What a session is set up with.
#[derive(Clone)]
pub struct SessionConfig {
    /// Host name to register.
    pub hostname: String,
    /// The node's disco public key.
    pub disco_key: PublicKey,
    /// A pre-auth key: needed for a first registration, and again once the server forgets
    /// the node (removed or expired).
    pub auth_key: Option<String>,
    /// The node secret from an earlier registration (None: register first).
    pub secret: Option<String>,
    /// The home DERP region reported with the endpoints.
    pub home_region: u16,
    /// First wait before reopening a lost map stream or retrying a failed registration;
    /// doubled on each failure up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Wait before posting endpoints again after a failed post.
    pub endpoints_retry: Duration,
    /// Shortest time between two endpoint posts (the server budgets each node's changes).
    pub endpoints_spacing: Duration,
    /// Each back-off wait is stretched by a random share up to this (0.25: up to 25 % longer),
    /// so nodes cut off together (a server restart) do not all come back at the same instant.
    pub backoff_jitter: f64,
    /// Seed of the jitter's randomness (the driver passes one from its RNG).
    pub seed: u64,
    /// The port this node relays on for others (`burrow up --relay-port N`), reported with
    /// the endpoints; None: it does not relay.
    pub relay_port: Option<u16>,
}

impl SessionConfig {
    /// A configuration with the usual timings: 0.5 s to 10 s back-off, endpoint posts at
    /// most once a second and retried after 5 s.
    pub fn new(hostname: impl Into<String>, disco_key: PublicKey) -> Self {
        SessionConfig {
            hostname: hostname.into(),
            disco_key,
            auth_key: None,
            secret: None,
            home_region: 1,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            endpoints_retry: Duration::from_secs(5),
            endpoints_spacing: Duration::from_secs(1),
            backoff_jitter: 0.25,
            seed: 0,
            relay_port: None,
        }
    }
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("hostname", &self.hostname)
            .field("disco_key", &self.disco_key)
            .field("auth_key", &self.auth_key.as_ref().map(|_| "<redacted>"))
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("home_region", &self.home_region)
            .field("relay_port", &self.relay_port)
            .finish_non_exhaustive()
    }
}

/// A request for the control server; the driver sends it and reports the outcome.
#[derive(Clone, PartialEq, Eq)]
pub enum Request {
    /// Register (challenge, sealed body): answer with [`Input::Registered`] or
    /// [`Input::Failed`].
    Register(RegisterBody),
    /// Open the map stream with this secret: answer with [`Input::MapOpened`] (or
    /// [`Input::MapResumed`] when the server resumed after `since`), then each message as
    /// [`Input::Map`] and the change it completes as [`Input::MapSeen`], and
    /// [`Input::MapLost`] when the stream ends; or [`Input::Failed`] if it cannot be opened.
    OpenMap {
        /// The node's bearer secret.
        secret: String,
        /// The last change a stream delivered in full (`Last-Event-ID`): the server may
        /// resume after it instead of sending the whole netmap again.
        since: Option<ChangeId>,
    },
    /// Report the node's endpoints: answer with [`Input::EndpointsPosted`] or
    /// [`Input::Failed`].
    PostEndpoints {
        /// The node's bearer secret.
        secret: String,
        /// What to post.
        request: EndpointsRequest,
    },
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Register(body) => f.debug_tuple("Register").field(body).finish(),
            Request::OpenMap { .. } => f.write_str("OpenMap { secret: <redacted> }"),
            Request::PostEndpoints { request, .. } => f
                .debug_struct("PostEndpoints")
                .field("secret", &"<redacted>")
                .field("request", request)
                .finish(),
        }
    }
}

impl Request {
    /// Which kind of request this is.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Register(_) => RequestKind::Register,
            Request::OpenMap { .. } => RequestKind::OpenMap,
            Request::PostEndpoints { .. } => RequestKind::PostEndpoints,
        }
    }
}

/// The kinds of [`Request`], for reporting a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// [`Request::Register`].
    Register,
    /// [`Request::OpenMap`].
    OpenMap,
    /// [`Request::PostEndpoints`].
    PostEndpoints,
}

/// What the driver tells the session.
#[derive(Debug, Clone)]
pub enum Input {
    /// A registration succeeded.
    Registered(RegisterResponse),
    /// The map stream opened with this netmap.
    MapOpened(NetMap),
    /// The map stream resumed after the change the request named: the netmap held stays,
    /// and the deltas since then follow.
    MapResumed,
    /// The map stream delivered every message of this change (its event id).
    MapSeen(ChangeId),
    /// A message on the map stream.
    Map(MapMessage),
    /// The map stream ended or broke.
    MapLost,
    /// An endpoint post succeeded with these endpoints.
    EndpointsPosted(Vec<SocketAddr>),
    /// A request failed.
    Failed {
        /// Which request.
        request: RequestKind,
        /// How.
        failure: Failure,
    },
    /// The node engine found these endpoints (the latest set replaces any earlier one).
    LocalEndpoints(Vec<SocketAddr>),
    /// STUN shows (or no longer shows) a fixed public mapping: no NAT, or an
    /// endpoint-independent one. Reported with the endpoints when the node relays.
    FixedMapping(bool),
}

/// How a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server does not know, or no longer accepts, the node (HTTP 401).
    Unauthorized,
    /// Trying again will not help: a refusal other than 401, 408 or 429, a bad URL, a
    /// certificate the node does not trust. At start the session stops with it; once the
    /// node is running it is retried like the rest (the server may be mid-upgrade).
    Permanent(String),
    /// The network or the server's load: try again after a pause.
    Transient,
}

/// What the session tells the driver.
#[derive(Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A registration gave a new secret: keep it (in the state file) for the next start.
    SecretChanged(String),
    /// A whole netmap arrived (at start and after every reconnect): the node's own addresses
    /// and the DERP map. Peer events for it follow.
    NetMap {
        /// The node itself.
        node: NodeInfo,
        /// The DERP map.
        derp: Vec<DerpRegion>,
    },
    /// The map stream came back without a whole netmap: the server resumed after the last
    /// change this node saw, and the netmap it holds stays.
    MapResumed,
    /// Give the engine this peer (new, or changed).
    PeerUpsert {
        /// The peer's host name.
        name: String,
        /// The peer as the engine takes it.
        config: PeerConfig,
    },
    /// The engine must forget this peer.
    PeerRemove {
        /// The peer's host name.
        name: String,
        /// Its node key.
        key: PublicKey,
    },
    /// A netmap peer was not taken.
    PeerRefused {
        /// The peer's host name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The packet filter changed.
    FilterChanged,
    /// Endpoints were reported to the server.
    EndpointsPosted(Vec<SocketAddr>),
    /// Who relays for this node and for whom it relays changed (from the netmap's grants and
    /// the peers held): give the engine this policy.
    PeerRelayPolicy(PeerRelayPolicy),
    /// The session cannot go on; the driver should stop and report this.
    Failed(SessionError),
}

impl std::fmt::Debug for SessionEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEvent::SecretChanged(_) => f.write_str("SecretChanged(<redacted>)"),
            SessionEvent::NetMap { node, derp } => f
                .debug_struct("NetMap")
                .field("node", node)
                .field("derp", derp)
                .finish(),
            SessionEvent::PeerUpsert { name, config } => f
                .debug_struct("PeerUpsert")
                .field("name", name)
                .field("config", config)
                .finish(),
            SessionEvent::PeerRemove { name, key } => f
                .debug_struct("PeerRemove")
                .field("name", name)
                .field("key", key)
                .finish(),
            SessionEvent::PeerRefused { name, reason } => f
                .debug_struct("PeerRefused")
                .field("name", name)
                .field("reason", reason)
                .finish(),
            SessionEvent::MapResumed => f.write_str("MapResumed"),
            SessionEvent::FilterChanged => f.write_str("FilterChanged"),
            SessionEvent::EndpointsPosted(e) => f.debug_tuple("EndpointsPosted").field(e).finish(),
            SessionEvent::PeerRelayPolicy(p) => f.debug_tuple("PeerRelayPolicy").field(p).finish(),
            SessionEvent::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// Why a session stopped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    /// There is neither a node secret nor an auth key to register with.
    #[error("this node is not registered: it needs an auth key (`burrow control authkey create`)")]
    NotRegistered,
    /// The server refused the auth key or the secret.
    #[error("the control server refused the registration (a spent, expired or unknown auth key)")]
    RegistrationRefused,
    /// At start, the control server could not be used, and trying again will not help.
    #[error("the control server cannot be used: {0}")]
    Unusable(String),
    /// The server no longer knows the node: it was removed or expired while running (an
    /// admin's decision a running node does not undo), or at start with no auth key to register
    /// again with.
    #[error(
        "the control server no longer knows this node (it was removed, or its key expired): \
         run `burrow up` with an auth key to register again"
    )]
    NodeRemoved,
}

/// Where the session is with the control server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A registration is in flight.
    Registering,
    /// Opening the map stream.
    Opening,
    /// Following the map stream.
    Following,
    /// Waiting until `until`, then registering (`register`) or opening the stream.
    Waiting { until: Instant, register: bool },
    /// Stopped for good.
    Stopped,
}

/// The node's side of the control plane, sans-IO.
///
/// Drive it like every machine here: after each [`Session::handle_input`] or
/// [`Session::handle_timeout`], drain [`Session::poll_transmit`] (requests to send) and
/// [`Session::poll_event`] (changes to apply), then wake at [`Session::poll_timeout`].
pub struct Session {
    config: SessionConfig,
    phase: Phase,
    secret: Option<String>,
    backoff: Duration,
    /// Whether a map stream was ever open: after that, the server forgetting the node is an
    /// admin's removal or an expiry, which the node does not undo with its auth key.
    followed: bool,
    /// Whether this start already registered again after the server forgot the node (once is
    /// enough: a server that forgets it again at once is not helped by a loop).
    reregistered: bool,
    node: Option<NodeInfo>,
    /// The last change the map stream delivered in full, to resume from (None: start again
    /// from a whole netmap).
    last_change: Option<ChangeId>,
    derp: Vec<DerpRegion>,
    peers: Peers,
    filter: Filter,
    /// Endpoints the engine found last, those the server has, whether a post is in flight,
    /// and the earliest time of the next post.
    endpoints: Option<Vec<SocketAddr>>,
    posted: Option<Vec<SocketAddr>>,
    posting: bool,
    next_post: Instant,
    /// The latest fixed-mapping report, the one the server has, and the one in flight.
    fixed_mapping: bool,
    posted_fixed: Option<bool>,
    posting_fixed: bool,
    /// Peer-relay grants from the netmap (peer ids), and the policy last given the engine.
    relay_grants: RelayGrants,
    relay_policy: PeerRelayPolicy,
    rng: ChaCha20Rng,
    requests: VecDeque<Request>,
    events: VecDeque<SessionEvent>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("config", &self.config)
            .field("phase", &self.phase)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("peers", &self.peers.len())
            .field("posted", &self.posted)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session that registers first (no secret yet) or opens the map stream at once.
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        let seed = config.seed;
        let mut s = Session {
            secret: config.secret.clone(),
            backoff: config.backoff_min,
            followed: false,
            reregistered: false,
            config,
            phase: Phase::Stopped,
            node: None,
            last_change: None,
            derp: Vec::new(),
            peers: Peers::default(),
            filter: Filter::new(Vec::new()),
            endpoints: None,
            posted: None,
            posting: false,
            next_post: now,
            fixed_mapping: false,
            posted_fixed: None,
            posting_fixed: false,
            relay_grants: RelayGrants::default(),
            relay_policy: PeerRelayPolicy::default(),
            rng: ChaCha20Rng::seed_from_u64(seed),
            requests: VecDeque::new(),
            events: VecDeque::new(),
        };
        if s.secret.is_some() {
            s.open_map();
        } else {
            s.register();
        }
        s
    }

    /// Takes what the driver learned.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        if self.phase == Phase::Stopped {
            return;
        }
        match input {
            Input::Registered(r) => {
                if self.phase != Phase::Registering {
                    return;
                }
                self.secret = Some(r.secret.clone());
                // A new registration starts again from a whole netmap.
                self.last_change = None;
                self.events.push_back(SessionEvent::SecretChanged(r.secret));
                // A new registration may have new endpoints on record: report ours again.
                self.posted = None;
                self.posted_fixed = None;
                self.open_map();
            }
            Input::MapOpened(map) => {
                if self.phase != Phase::Opening {
                    return;
                }
                self.phase = Phase::Following;
                self.followed = true;
                self.backoff = self.config.backoff_min;
                self.take_netmap(map);
                self.update_relay_policy();
                self.maybe_post(now);
            }
            Input::Map(message) => {
                if self.phase != Phase::Following {
                    return;
                }
                match message {
                    MapMessage::NetMap(map) => self.take_netmap(map),
                    MapMessage::Delta(Delta::PeerUpsert(p)) => self.upsert(&p),
                    MapMessage::Delta(Delta::PeerRemove { id }) => self.remove(id),
                    MapMessage::Delta(Delta::Filter { rules }) => {
                        self.filter.set_rules(rules);
                        self.events.push_back(SessionEvent::FilterChanged);
                    }
                    MapMessage::Delta(Delta::Relay(grants)) => self.relay_grants = grants,
                    // Only a stream opened with the last change's id resumes; the netmap it
                    // holds stays, and the deltas since that change follow.
                    MapMessage::Resumed { .. } => {}
                }
                self.update_relay_policy();
            }
            Input::MapResumed => {
                if self.phase != Phase::Opening || self.last_change.is_none() {
                    return;
                }
                self.phase = Phase::Following;
                self.backoff = self.config.backoff_min;
                self.events.push_back(SessionEvent::MapResumed);
                self.maybe_post(now);
            }
            Input::MapSeen(id) => {
                if self.phase == Phase::Following {
                    self.last_change = Some(id);
                }
            }
            Input::MapLost => {
                if self.phase == Phase::Following {
                    // The tunnel keeps running on what it holds; reopen after a pause.
                    self.wait(now, false);
                }
            }
            Input::EndpointsPosted(endpoints) => {
                self.posting = false;
                self.events
                    .push_back(SessionEvent::EndpointsPosted(endpoints.clone()));
                self.posted = Some(endpoints);
                self.posted_fixed = Some(self.posting_fixed);
                self.maybe_post(now);
            }
            Input::Failed { request, failure } => self.failed(now, request, failure),
            Input::LocalEndpoints(endpoints) => {
                self.endpoints = Some(endpoints);
                self.maybe_post(now);
            }
            Input::FixedMapping(fixed) => {
                self.fixed_mapping = fixed;
                self.maybe_post(now);
            }
        }
    }

    /// Acts on a deadline that passed (a back-off ended, a post may be retried).
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Phase::Waiting { until, register } = self.phase {
            if now >= until {
                if register {
                    self.register();
                } else {
                    self.open_map();
                }
            }
        }
        self.maybe_post(now);
    }

    /// The next request for the control server.
    pub fn poll_transmit(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    /// The next change for the driver.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let wait = match self.phase {
            Phase::Waiting { until, .. } => Some(until),
            _ => None,
        };
        let post = self.wants_post().then_some(self.next_post);
        match (wait, post) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The peer a packet from the TUN goes to (by its destination, cryptokey routing), with
    /// the flow recorded so the answer is let back in; None drops it.
    pub fn route_outbound(&mut self, now: Instant, packet: &[u8]) -> Option<PublicKey> {
        let info = parse_packet(packet)?;
        let peer = self.peers.route(info.dst)?;
        self.filter.outbound(now, *peer.as_bytes(), packet);
        Some(peer)
    }

    /// Whether a packet `peer` sent may reach the TUN: only from a peer the netmap still
    /// holds (the engine may not have heard of a removal yet), and then the receiver's filter
    /// (the node's policy) or an answer to a flow this node started.
    pub fn admit_inbound(&mut self, now: Instant, peer: &PublicKey, packet: &[u8]) -> Verdict {
        if !self.peers.holds(peer) {
            return Verdict::Drop(DropReason::NotAPeer);
        }
        self.filter.inbound(now, *peer.as_bytes(), packet)
    }

    /// The peer owning a tailnet address.
    pub fn peer_for_ip(&self, ip: IpAddr) -> Option<PublicKey> {
        self.peers.route(ip)
    }

    /// The peers held, with their node keys.
    pub fn peers(&self) -> impl Iterator<Item = (&PeerInfo, &PublicKey)> {
        self.peers.iter()
    }

    /// How many peers are held.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The node as the latest netmap describes it (None before the first).
    pub fn node(&self) -> Option<&NodeInfo> {
        self.node.as_ref()
    }

    /// The latest DERP map.
    pub fn derp_map(&self) -> &[DerpRegion] {
        &self.derp
    }

    /// Whether the map stream is open.
    pub fn is_following(&self) -> bool {
        self.phase == Phase::Following
    }

    /// Who relays for this node and for whom it relays, as last given the engine.
    pub fn peer_relay_policy(&self) -> &PeerRelayPolicy {
        &self.relay_policy
    }

    /// The endpoints the server has from this node (None: none posted yet).
    pub fn posted_endpoints(&self) -> Option<&[SocketAddr]> {
        self.posted.as_deref()
    }

    fn register(&mut self) {
        if self.config.auth_key.is_none() && self.secret.is_none() {
            return self.stop(SessionError::NotRegistered);
        }
        self.phase = Phase::Registering;
        // The current secret renews a live registration; a removed or expired node needs an
        // unspent auth key.
        self.requests.push_back(Request::Register(RegisterBody {
            auth_key: self.config.auth_key.clone(),
            node_secret: self.secret.clone(),
            hostname: self.config.hostname.clone(),
            disco_key: self.config.disco_key.to_base64(),
            challenge: String::new(),
        }));
    }

    fn open_map(&mut self) {
        let Some(secret) = self.secret.clone() else {
            return self.register();
        };
        self.phase = Phase::Opening;
        self.requests.push_back(Request::OpenMap {
            secret,
            since: self.last_change,
        });
    }

    fn wait(&mut self, now: Instant, register: bool) {
        let share = f64::from(self.rng.next_u32()) / f64::from(u32::MAX);
        let stretch = self.config.backoff_jitter.clamp(0.0, 1.0) * share;
        self.phase = Phase::Waiting {
            until: now + self.backoff.mul_f64(1.0 + stretch),
            register,
        };
        self.backoff = (self.backoff * 2).min(self.config.backoff_max);
    }

    fn stop(&mut self, e: SessionError) {
        self.phase = Phase::Stopped;
        self.requests.clear();
        self.events.push_back(SessionEvent::Failed(e));
    }

    fn failed(&mut self, now: Instant, request: RequestKind, failure: Failure) {
        let at_start = !self.followed;
        match (request, failure) {
            (RequestKind::PostEndpoints, _) => {
                self.posting = false;
                self.next_post = now + self.config.endpoints_retry;
            }
            (RequestKind::Register, _) | (RequestKind::OpenMap, _)
                if self.phase != Phase::Registering && self.phase != Phase::Opening =>
            {
                // A late answer to a request already given up on.
            }
            (_, Failure::Permanent(why)) if at_start => self.stop(SessionError::Unusable(why)),
            (RequestKind::Register, Failure::Unauthorized) => {
                if self.config.auth_key.is_some() && self.secret.is_some() {
                    // The secret no longer renews (the node expired): the auth key alone.
                    self.secret = None;
                    return self.register();
                }
                self.stop(SessionError::RegistrationRefused);
            }
            (RequestKind::Register, _) => self.wait(now, true),
            (RequestKind::OpenMap, Failure::Unauthorized) => {
                // At start, a node the server forgot registers again (once) with the auth key
                // it was given; a running node that is removed or expires stays out.
                if self.config.auth_key.is_some() && at_start && !self.reregistered {
                    self.reregistered = true;
                    self.register();
                } else {
                    self.stop(SessionError::NodeRemoved);
                }
            }
            (RequestKind::OpenMap, _) => self.wait(now, false),
        }
    }

    /// A whole netmap: the filter, the node, and the peers diffed against those held.
    fn take_netmap(&mut self, map: NetMap) {
        let filter_changed = self.filter.rules() != map.filter.as_slice();
        self.filter.set_rules(map.filter);
        self.node = Some(map.node.clone());
        self.derp = map.derp.clone();
        self.relay_grants = map.relay.clone();
        self.events.push_back(SessionEvent::NetMap {
            node: map.node,
            derp: map.derp,
        });
        if filter_changed {
            self.events.push_back(SessionEvent::FilterChanged);
        }
        for id in self.peers.absent_from(&map.peers) {
            self.remove(id);
        }
        for p in &map.peers {
            self.upsert(p);
        }
    }

    fn upsert(&mut self, p: &PeerInfo) {
        match self.peers.upsert(p) {
            Change::Same => {}
            Change::Upsert { replaced, config } => {
                if let Some(key) = replaced {
                    self.events.push_back(SessionEvent::PeerRemove {
                        name: p.node.name.clone(),
                        key,
                    });
                }
                self.events.push_back(SessionEvent::PeerUpsert {
                    name: p.node.name.clone(),
                    config,
                });
            }
            Change::Refused(reason) => self.events.push_back(SessionEvent::PeerRefused {
                name: p.node.name.clone(),
                reason,
            }),
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some((info, key)) = self.peers.remove(id) {
            self.events.push_back(SessionEvent::PeerRemove {
                name: info.node.name,
                key,
            });
        }
    }

    /// The peer-relay policy the grants give over the peers held (by node key); an event
    /// when it changed.
    fn update_relay_policy(&mut self) {
        let keys = |ids: &std::collections::BTreeSet<u64>| {
            self.peers
                .iter()
                .filter(|(p, _)| ids.contains(&p.node.id))
                .map(|(_, k)| *k)
                .collect()
        };
        let policy = PeerRelayPolicy {
            relays: keys(&self.relay_grants.relays),
            clients: keys(&self.relay_grants.clients),
        };
        if policy != self.relay_policy {
            self.relay_policy = policy.clone();
            self.events.push_back(SessionEvent::PeerRelayPolicy(policy));
        }
    }

    /// The fixed-mapping report the server should have: only a relay's matters (`autoRelay`).
    fn fixed_report(&self) -> bool {
        self.config.relay_port.is_some() && self.fixed_mapping
    }

    fn wants_post(&self) -> bool {
        self.phase == Phase::Following
            && !self.posting
            && self.endpoints.is_some()
            && (self.endpoints != self.posted
                || (self.config.relay_port.is_some()
                    && self.posted_fixed != Some(self.fixed_report())))
    }

    /// Posts the latest endpoints if they changed, nothing is in flight and the spacing allows.
    fn maybe_post(&mut self, now: Instant) {
        if !self.wants_post() || now < self.next_post {
            return;
        }
        let (Some(secret), Some(endpoints)) = (self.secret.clone(), self.endpoints.clone()) else {
            return;
        };
        self.posting = true;
        self.posting_fixed = self.fixed_report();
        self.next_post = now + self.config.endpoints_spacing;
        self.requests.push_back(Request::PostEndpoints {
            secret,
            request: EndpointsRequest {
                endpoints,
                home_region: self.config.home_region,
                relay_port: self.config.relay_port,
                fixed_mapping: self.posting_fixed,
            },
        });
    }
}
