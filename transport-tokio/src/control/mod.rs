//! `burrow control`: the coordination server. It hands out addresses, tells every node its
//! peers' public keys and endpoints and its own packet filter, and streams changes as they
//! happen (server-sent events). It never sees a private key and never carries user traffic.

pub mod admin;
pub mod client;
pub mod derp_map;
pub mod identity;
pub mod limits;
pub mod pg;
pub mod store;
pub mod validate;
pub mod verify;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use burrow_control::changelog::{Change, ChangeId, Follower};
use burrow_control::{CompiledPolicy, Delta, Policy, Tailnet};
use tokio::sync::mpsc;

pub use identity::{ChallengeResponse, RegisterBody, RegisterRequest};
use identity::{Challenges, ProofError};
use limits::{Limits, RateLimiter};
use store::{Logged, NodeRecord, Registration, Report, Store, StoreError};
use validate::{canonical_key, is_canonical_key};
pub use validate::{hostname_label, valid_hostname, vouched_endpoints};

/// The policy when none is given: every node may reach every other on every port.
pub const ALLOW_ALL: &str =
    r#"{ "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ] }"#;

pub use burrow_control::{EndpointsRequest, MapMessage, RegisterResponse};

/// Parts of its netmap (a peer, the filter, the relay grants) remembered per node as changed,
/// for streams that resume (`Last-Event-ID`); a node further behind gets a whole netmap.
pub const HISTORY_PER_NODE: usize = 32;

/// How often (seconds) a server sharing its store notes which nodes stream from it; a node
/// counts as online on every server for three times as long.
pub const ONLINE_EVERY: u64 = 10;

/// Map streams a node may hold at once; a newer one replaces the oldest.
pub const MAX_STREAMS_PER_NODE: usize = 2;
/// Messages a map stream may have waiting; a stream that falls this far behind is closed, and
/// its node reconnects and gets a fresh netmap.
pub const STREAM_QUEUE: usize = 256;
/// Largest request body the API reads.
pub const MAX_BODY: usize = 64 * 1024;

/// A message for a map stream. A delta that many nodes are sent (a peer's new endpoints) is
/// one allocation, shared by their streams and histories, and serialized per stream.
#[derive(Debug, Clone)]
enum Outgoing {
    NetMap(Box<burrow_control::NetMap>),
    Delta(Arc<Delta>),
    Resumed(ChangeId),
}

/// [`MapMessage`] as the wire spells it, borrowed.
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum WireMessage<'a> {
    NetMap(&'a burrow_control::NetMap),
    Delta(&'a Delta),
    Resumed { since: ChangeId },
}

impl Outgoing {
    fn to_json(&self) -> String {
        let wire = match self {
            Outgoing::NetMap(m) => WireMessage::NetMap(m),
            Outgoing::Delta(d) => WireMessage::Delta(d),
            Outgoing::Resumed(since) => WireMessage::Resumed { since: *since },
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

/// A map stream's messages, each with the change id a resuming stream names (on the last
/// message of each change, and on the netmap).
type StreamTx = mpsc::Sender<(Option<ChangeId>, Outgoing)>;

/// What part of a node's netmap a delta changed: a resumed stream is sent the current value
/// of each part that changed since the node's last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Peer(u64),
    Filter,
    Relay,
}

impl Part {
    fn of(d: &Delta) -> Part {
        match d {
            Delta::PeerUpsert(p) => Part::Peer(p.node.id),
            Delta::PeerRemove { id } => Part::Peer(*id),
            Delta::Filter { .. } => Part::Filter,
            Delta::Relay(_) => Part::Relay,
        }
    }

    /// Four bytes: node ids stay below `MAX_NODE_ID` (2^22).
    fn pack(self) -> u32 {
        match self {
            Part::Peer(id) => u32::try_from(id).unwrap_or(u32::MAX - 2),
            Part::Filter => u32::MAX,
            Part::Relay => u32::MAX - 1,
        }
    }

    fn unpack(p: u32) -> Part {
        match p {
            u32::MAX => Part::Filter,
            x if x == u32::MAX - 1 => Part::Relay,
            id => Part::Peer(u64::from(id)),
        }
    }
}

/// The parts of a node's netmap that changed lately, each with the last change that touched
/// it: eight bytes an entry (the change as an offset from where the server loaded the
/// tailnet), so every replica can keep them for every node.
#[derive(Default)]
struct History {
    /// Parts changed at or before this offset were let go: a resume from before it gets a
    /// whole netmap.
    floor: u32,
    touched: VecDeque<(u32, u32)>,
}

impl History {
    /// Notes that change `offset` (from the history's start) changed `part`.
    fn touch(&mut self, offset: u32, part: Part) {
        let part = part.pack();
        if self.touched.capacity() == 0 {
            self.touched.reserve_exact(HISTORY_PER_NODE + 1);
        }
        self.touched.retain(|(_, p)| *p != part);
        self.touched.push_back((offset, part));
        while self.touched.len() > HISTORY_PER_NODE {
            if let Some((gone, _)) = self.touched.pop_front() {
                self.floor = self.floor.max(gone);
            }
        }
    }
}

struct Inner {
    tailnet: Tailnet,
    /// Where this server is in the change log.
    follower: Follower,
    /// The last change applied, to check that the log still holds it (a database restored
    /// from a backup holds other changes under the same ids).
    last_applied: Option<(ChangeId, Change)>,
    /// The first change whose deltas the histories hold (where this server loaded the tailnet).
    history_start: ChangeId,
    history: BTreeMap<u64, History>,
    streams: BTreeMap<u64, VecDeque<StreamTx>>,
    /// How long a registration is good for (None: forever).
    node_expiry: Option<Duration>,
    /// Challenges issued and redeemed.
    challenges: Challenges,
    /// Challenge, registration and map requests per source address.
    per_ip: RateLimiter<IpAddr>,
    /// Registrations per node key.
    per_key: RateLimiter<String>,
    /// Map streams opened per node (each costs a whole netmap).
    per_node_map: RateLimiter<u64>,
}

/// The server's shared state.
pub struct Control {
    store: Arc<dyn Store>,
    /// Whether other servers share the store (PostgreSQL), read once at start.
    shared: bool,
    /// The DERP map every netmap carries (kept for reloads of the whole tailnet).
    derp: Vec<burrow_control::DerpRegion>,
    /// When this server last read the shared change log to its head (a store other servers
    /// write only): `/health` fails when that is not recent.
    caught_up: Mutex<Option<tokio::time::Instant>>,
    /// The token relays present to `GET /derp/verify/…` (none: no such route).
    verify_token: Mutex<Option<String>>,
    /// The policy file `reload_policy` reads again (None: the built-in allow-all).
    policy_file: Mutex<Option<std::path::PathBuf>>,
    inner: Mutex<Inner>,
}

/// The tailnet a snapshot holds, under `policy` (or the snapshot's own, where the store keeps
/// one).
fn load(
    snapshot: &store::Snapshot,
    policy: CompiledPolicy,
    derp: Vec<burrow_control::DerpRegion>,
) -> Tailnet {
    let policy = match &snapshot.policy {
        Some(source) => Control::policy(source).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the stored policy does not compile; using the given one");
            policy
        }),
        None => policy,
    };
    let mut tailnet = Tailnet::new(policy);
    tailnet.set_derp_map(derp);
    for r in &snapshot.nodes {
        tailnet.upsert(r.peer());
        tailnet.set_relay_capability(r.id, r.relay_capability());
    }
    tailnet
}

impl Control {
    /// Loads every stored node under `policy`; every netmap carries `derp`.
    pub fn new(
        store: Arc<dyn Store>,
        policy: CompiledPolicy,
        derp: Vec<burrow_control::DerpRegion>,
    ) -> Result<Arc<Self>, StoreError> {
        // Nodes retired by expiry stay stored (an admin may list them, the node may
        // re-register) but are not part of the tailnet.
        let snapshot = store.snapshot()?;
        let challenge_key = store.challenge_key()?.unwrap_or_else(random_bytes);
        let tailnet = load(&snapshot, policy, derp.clone());
        let shared = store.shared_url().is_some();
        Ok(Arc::new(Control {
            store,
            derp,
            verify_token: Mutex::new(None),
            caught_up: Mutex::new(None),
            shared,
            policy_file: Mutex::new(None),
            inner: Mutex::new(Inner {
                tailnet,
                follower: Follower::new(snapshot.head),
                last_applied: None,
                history_start: snapshot.head,
                history: BTreeMap::new(),
                streams: BTreeMap::new(),
                node_expiry: None,
                challenges: Challenges::new(challenge_key),
                per_ip: per_ip_limiter(Limits::default().per_ip_rate),
                per_key: RateLimiter::new(0.2, 10.0, 65_536),
                per_node_map: RateLimiter::new(1.0, 10.0, 65_536),
            }),
        }))
    }

    /// Lets relays with this token ask whether a key is a live node (`burrow derper
    /// --verify-clients`); takes effect in routers made after it.
    pub fn set_verify_token(&self, token: String) {
        *self.verify_token.lock().expect("token") = Some(token);
    }

    /// Sets the per-source request rate (`Limits::per_ip_rate`).
    pub fn set_limits(&self, limits: &Limits) {
        self.inner.lock().expect("control state").per_ip = per_ip_limiter(limits.per_ip_rate);
    }

    /// Takes one request from `ip`'s budget.
    fn allow_source(&self, ip: IpAddr) -> Result<(), ApiError> {
        let now = tokio::time::Instant::now();
        if self
            .inner
            .lock()
            .expect("control state")
            .per_ip
            .allow(&ip, now)
        {
            Ok(())
        } else {
            Err(ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests from this address; slow down".into(),
            ))
        }
    }

    /// How long a registration is good for before the node must register again with an
    /// auth key (None: forever, the default).
    pub fn set_node_expiry(&self, expiry: Option<Duration>) {
        self.inner.lock().expect("control state").node_expiry = expiry;
    }

    /// Applies changes the store committed (from this server's writes, or read from the log
    /// other servers write): each in id order, once, its deltas sent to the streams. Returns
    /// the nodes told something.
    pub fn commit(&self, logged: Logged) -> std::collections::BTreeSet<u64> {
        let mut inner = self.inner.lock().expect("control state");
        for (id, change) in logged {
            inner.follower.offer(id, change);
        }
        Self::apply_ready(&mut inner)
    }

    fn apply_ready(inner: &mut Inner) -> std::collections::BTreeSet<u64> {
        let mut told = std::collections::BTreeSet::new();
        while let Some((id, change)) = inner.follower.next_ready() {
            if let Change::Remove { id: node } = &change {
                // Its streams end, and its budgets are forgotten. Its history is let go up to
                // this change: a stream back with an id from before (the node registered
                // again under its id) gets a whole netmap.
                inner.per_node_map.forget(node);
                inner.streams.remove(node);
                let offset =
                    u32::try_from(id.saturating_sub(inner.history_start)).unwrap_or(u32::MAX);
                let h = inner.history.entry(*node).or_default();
                h.touched = VecDeque::new();
                h.floor = offset;
            }
            inner.last_applied = Some((id, change.clone()));
            match change.apply(&mut inner.tailnet) {
                Ok(deltas) => {
                    told.extend(deltas.iter().map(|(n, _)| *n));
                    Self::publish(inner, id, deltas);
                }
                Err(e) => {
                    tracing::error!(change = id, error = %e, "a logged policy does not compile")
                }
            }
        }
        told
    }

    /// The last change this server applied.
    pub fn applied(&self) -> ChangeId {
        self.inner.lock().expect("control state").follower.applied()
    }

    /// Reloads the whole tailnet from the store (this server fell further behind than the log
    /// reaches): every stream ends, so its node reconnects and gets a whole netmap.
    fn reload(&self) -> Result<(), StoreError> {
        let snapshot = self.store.snapshot()?;
        let mut inner = self.inner.lock().expect("control state");
        let policy = inner.tailnet.policy().clone();
        inner.tailnet = load(&snapshot, policy, self.derp.clone());
        inner.follower = Follower::new(snapshot.head);
        inner.last_applied = None;
        inner.history_start = snapshot.head;
        inner.history.clear();
        inner.streams.clear();
        tracing::warn!(head = snapshot.head, "reloaded the tailnet from the store");
        Ok(())
    }

    /// Retires every node whose key expired by `now` (unix seconds; the store does it once,
    /// whichever server asks first); returns their ids.
    pub fn expire_due(&self, now: u64) -> Result<Vec<u64>, StoreError> {
        let logged = self.store.expire_due(now)?;
        let ids = logged
            .iter()
            .filter_map(|(_, c)| match c {
                Change::Remove { id } => Some(*id),
                _ => None,
            })
            .collect::<Vec<_>>();
        for id in &ids {
            tracing::info!(id, "node key expired");
        }
        self.commit(logged);
        Ok(ids)
    }

    /// Checks for expired nodes once a second, for as long as the runtime runs.
    pub fn spawn_expiry(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let c = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut ticks = 0u64;
            loop {
                tick.tick().await;
                ticks += 1;
                let Some(c) = c.upgrade() else { return };
                let c2 = c.clone();
                if let Err(e) = c
                    .with_store(move |_| c2.expire_due(store::now_unix()))
                    .await
                {
                    tracing::warn!(error = %e.1, "expiry check failed");
                }
                // Who streams here, for the other servers' node lists.
                if ticks % ONLINE_EVERY == 1 && c.shared {
                    let ids: Vec<u64> = c
                        .inner
                        .lock()
                        .expect("control state")
                        .streams
                        .iter()
                        .filter(|(_, s)| s.iter().any(|tx| !tx.is_closed()))
                        .map(|(id, _)| *id)
                        .collect();
                    let now = store::now_unix();
                    if let Err(e) = c.with_store(move |s| s.note_online(&ids, now)).await {
                        tracing::warn!(error = %e.1, "noting online nodes failed");
                    }
                }
            }
        })
    }

    /// Follows the changes other servers commit to a shared store (PostgreSQL): listens for
    /// their announcements, reads the log for every change it has not applied (after a lost
    /// announcement or a dropped connection too, and once a second regardless), and reloads
    /// the whole tailnet if it fell behind what the log keeps. Reconnects with back-off.
    /// Does nothing for a store only this process writes.
    pub fn spawn_follow(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let url = self.store.shared_url()?;
        let c = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match pg::listen(&url).await {
                    Ok((client, mut heads)) => {
                        tracing::info!("following the change log");
                        let mut tick = tokio::time::interval(Duration::from_secs(1));
                        // The head is read from the log at first and on every tick (covering
                        // announcements lost or dropped), and otherwise taken from them.
                        let mut announced = None;
                        loop {
                            let Some(control) = c.upgrade() else { return };
                            if let Err(e) = control.catch_up(&client, announced.take()).await {
                                tracing::warn!(error = %e, "reading the change log failed");
                                break;
                            }
                            // Back-off starts over only once the log was read.
                            backoff = Duration::from_millis(100);
                            *control.caught_up.lock().expect("caught up") =
                                Some(tokio::time::Instant::now());
                            drop(control);
                            tokio::select! {
                                head = heads.recv() => match head {
                                    Some(mut h) => {
                                        // A burst of announcements is read as one.
                                        while let Ok(later) = heads.try_recv() {
                                            h = h.max(later);
                                        }
                                        announced = Some(h);
                                    }
                                    None => break,
                                },
                                _ = tick.tick() => {}
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "listening for changes failed"),
                }
                let jitter = Duration::from_millis(u64::from(random_bytes::<1>()[0]));
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }))
    }

    /// Reads from the log every change this server has not applied, up to the log's head
    /// (`announced`, or read from the log).
    async fn catch_up(
        &self,
        client: &tokio_postgres::Client,
        announced: Option<ChangeId>,
    ) -> Result<(), StoreError> {
        // An announcement may name an older commit than one this server applied already
        // (its own, applied as it committed); the head read from the log may not.
        // What was applied before the read was committed before it, so the head read can
        // be no lower.
        let applied_before = self.applied();
        let (head, read) = match announced {
            Some(h) => (h, false),
            None => (pg::head(client).await?, true),
        };
        let mut behind = read && head < applied_before;
        if read && !behind {
            // The same id, another change: the log was replaced under this server.
            let last = self
                .inner
                .lock()
                .expect("control state")
                .last_applied
                .clone();
            if let Some((id, change)) = last {
                behind = pg::change_at(client, id).await?.as_ref() != Some(&change);
            }
        }
        self.inner
            .lock()
            .expect("control state")
            .follower
            .note_head(head);
        if behind {
            // The log went back (a database restored from a backup, a failover that lost
            // commits): what this server applied is not the log's any more.
            tracing::error!(head, "the change log is behind this server");
            tokio::task::block_in_place(|| self.reload())?;
        }
        loop {
            let gap = self.inner.lock().expect("control state").follower.gap();
            let Some(gap) = gap else { return Ok(()) };
            let logged = match pg::changes_since(client, *gap.start(), 1000).await {
                Ok(logged) => logged,
                Err(StoreError::Corrupt(what)) => {
                    // A change this version cannot read (a newer replica's, or damaged):
                    // the tables hold its effect, so load them whole.
                    tracing::error!(%what, "an unreadable change in the log");
                    tokio::task::block_in_place(|| self.reload())?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if logged.first().is_none_or(|(id, _)| id > gap.start()) {
                // The log no longer reaches back to what this server needs.
                tokio::task::block_in_place(|| self.reload())?;
                continue;
            }
            self.commit(logged);
        }
    }

    /// Puts a policy's source in force tailnet-wide: checked, committed, applied. Returns how
    /// many nodes were told something.
    pub fn set_policy_source(&self, source: &str) -> Result<usize, String> {
        Control::policy(source).map_err(|e| e.to_string())?;
        let logged = self.store.set_policy(source).map_err(|e| e.to_string())?;
        Ok(self.commit(logged).len())
    }

    /// Names the policy file the server was started with, for [`Control::reload_policy`].
    pub fn set_policy_file(&self, path: Option<std::path::PathBuf>) {
        *self.policy_file.lock().expect("policy file") = path;
    }

    /// Reads the policy file again and applies it; a policy that does not check leaves the
    /// running one in place. Returns how many nodes were told something.
    pub fn reload_policy(&self) -> Result<usize, String> {
        // One reload at a time, from reading the file to applying it: two at once must not
        // leave the older text in force.
        let path = self.policy_file.lock().expect("policy file");
        let text = match &*path {
            Some(p) => {
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?
            }
            // The whole tailnet follows a reload on a shared store: one without a file of its
            // own must not put allow-all in force everywhere.
            None if self.shared => {
                return Err(
                    "this server was started without --policy: reload on one that \
                     has the policy file"
                        .into(),
                )
            }
            None => ALLOW_ALL.to_string(),
        };
        let told = self.set_policy_source(&text).map_err(|e| match &*path {
            Some(p) => format!("{}: {e}", p.display()),
            None => e,
        })?;
        drop(path);
        Ok(told)
    }

    /// Compiles a policy file's text (JSON or HuJSON).
    pub fn policy(text: &str) -> Result<CompiledPolicy, burrow_control::PolicyError> {
        Policy::check(text).map(|(_, c)| c)
    }

    /// Sends a change's deltas to their nodes' streams, under the same lock that computed them
    /// (so no later change can overtake them), and keeps them for streams that resume. The
    /// last delta of the change for each node carries its id. A stream whose queue is full is
    /// closed (its sender dropped): the node reconnects and resumes, or starts again from a
    /// whole netmap, so a slow or hostile reader costs the server at most `STREAM_QUEUE`
    /// messages.
    fn publish(inner: &mut Inner, id: ChangeId, deltas: Vec<(u64, Delta)>) {
        let mut last: BTreeMap<u64, usize> = BTreeMap::new();
        for (i, (node, _)) in deltas.iter().enumerate() {
            last.insert(*node, i);
        }
        // The same delta for many nodes (a peer's upsert for each that sees it) is shared.
        let mut shared: Option<Arc<Delta>> = None;
        // A change too far past the history's start to note (2^32 changes) lets it go: such
        // a node resumes with a whole netmap.
        let offset = u32::try_from(id.saturating_sub(inner.history_start)).ok();
        for (i, (node, d)) in deltas.into_iter().enumerate() {
            let h = inner.history.entry(node).or_default();
            match offset {
                Some(o) => h.touch(o, Part::of(&d)),
                None => h.floor = u32::MAX,
            }
            let Some(subs) = inner.streams.get_mut(&node) else {
                continue;
            };
            let d = match &shared {
                Some(s) if **s == d => s.clone(),
                _ => shared.insert(Arc::new(d)).clone(),
            };
            let tag = (last[&node] == i).then_some(id);
            subs.retain(|tx| tx.try_send((tag, Outgoing::Delta(d.clone()))).is_ok());
        }
    }

    /// What a stream that resumes after change `last` is sent: the current value of every
    /// part of the node's netmap that changed since (the last message carrying the id this
    /// server is at), or None when this server cannot tell what changed: `last` is from
    /// before it loaded the tailnet (an earlier run of it, whose configuration may differ),
    /// ahead of it, or older than what the node's history keeps.
    fn resume(
        inner: &Inner,
        node: u64,
        last: ChangeId,
    ) -> Option<Vec<(Option<ChangeId>, Outgoing)>> {
        let applied = inner.follower.applied();
        if last <= inner.history_start || last > applied {
            return None;
        }
        let last_offset = u32::try_from(last - inner.history_start).ok()?;
        let h = inner.history.get(&node);
        if h.is_some_and(|h| h.floor > last_offset) {
            return None;
        }
        let parts: Vec<Part> = h
            .map(|h| {
                h.touched
                    .iter()
                    .filter(|(o, _)| *o > last_offset)
                    .map(|(_, p)| Part::unpack(*p))
                    .collect()
            })
            .unwrap_or_default();
        let mut out = vec![(None, Outgoing::Resumed(last))];
        if !parts.is_empty() {
            let map = inner.tailnet.netmap(node)?;
            for part in parts {
                let d = match part {
                    Part::Filter => Delta::Filter {
                        rules: map.filter.clone(),
                    },
                    Part::Relay => Delta::Relay(map.relay.clone()),
                    Part::Peer(p) => match map.peers.iter().find(|q| q.node.id == p) {
                        Some(peer) => Delta::PeerUpsert(peer.clone()),
                        None => Delta::PeerRemove { id: p },
                    },
                };
                out.push((None, Outgoing::Delta(Arc::new(d))));
            }
        }
        if let Some(closing) = out.last_mut() {
            closing.0 = Some(applied);
        }
        Some(out)
    }

    /// Runs a storage call off the async workers (on a multi-threaded runtime), or inline on a
    /// current-thread one (the simulator's hosts, where it must stay deterministic).
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        let flavor = tokio::runtime::Handle::current().runtime_flavor();
        if flavor == tokio::runtime::RuntimeFlavor::CurrentThread {
            return Ok(f(store.as_ref())?);
        }
        Ok(tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "worker failed".into()))??)
    }

    /// Serves the HTTP API on `listener` (with TLS when `tls` is given) under `limits` until
    /// `shutdown`.
    pub async fn serve<L>(
        self: &Arc<Self>,
        listener: L,
        limits: Limits,
        tls: Option<Arc<rustls::ServerConfig>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        self.set_limits(&limits);
        limits::serve(listener, self.router(), limits, tls, shutdown).await
    }

    /// The HTTP API.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/machine/challenge", get(challenge))
            .route("/machine/register", post(register))
            .route("/machine/endpoints", post(endpoints))
            .route("/machine/map", get(map))
            .merge(match self.verify_token.lock().expect("token").clone() {
                Some(token) => verify::store_router(self.store.clone(), token),
                None => Router::new(),
            })
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .layer(axum::middleware::from_fn(request_timeout))
            .with_state(self.clone())
    }
}

/// An API error: a status and a one-line reason as JSON.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadAuthKey | StoreError::NotPermitted | StoreError::ChallengeReplayed => {
                ApiError(StatusCode::UNAUTHORIZED, e.to_string())
            }
            StoreError::DiscoKeyTaken => ApiError(StatusCode::CONFLICT, e.to_string()),
            StoreError::ChangeBudgetSpent => ApiError(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            StoreError::AddressPoolExhausted => {
                tracing::error!("registration refused: the address pool is exhausted");
                ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            StoreError::Pg(e) if pg::unavailable(&e) => {
                // The database cannot be reached (restarting, a broken connection): nothing
                // was written, and the request may be tried again.
                tracing::warn!(error = %e, "database unavailable");
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unavailable; try again shortly".into(),
                )
            }
            other => {
                tracing::error!(error = %other, "storage failed");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, "storage failed".into())
            }
        }
    }
}

impl From<ProofError> for ApiError {
    fn from(e: ProofError) -> Self {
        let status = match e {
            ProofError::Malformed(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        };
        ApiError(status, e.to_string())
    }
}

/// A request must be answered (its body read included) within the limit: a client that trickles
/// its body cannot hold a connection and a worker (streams answer at once, then stream).
async fn request_timeout(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(Limits::default().request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            ApiError(StatusCode::REQUEST_TIMEOUT, "request took too long".into()).into_response()
        }
    }
}

fn per_ip_limiter(rate: f64) -> RateLimiter<IpAddr> {
    RateLimiter::new(rate, rate * 4.0, 65_536)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut b = [0u8; N];
    rand_chacha::ChaCha20Rng::from_os_rng().fill_bytes(&mut b);
    b
}

/// `GET /health`: "ok", or 503 while a server sharing its store with others is not following
/// their changes (it could serve stale maps), for load balancers to route around it.
async fn health(
    State(c): State<Arc<Control>>,
    limits::Source(ip): limits::Source,
) -> Result<&'static str, ApiError> {
    c.allow_source(ip)?;
    if c.shared {
        let recent = c
            .caught_up
            .lock()
            .expect("caught up")
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5));
        if !recent {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "not following the change log (is the database reachable?)".into(),
            ));
        }
    }
    Ok("ok\n")
}

async fn challenge(
    State(c): State<Arc<Control>>,
    limits::Source(ip): limits::Source,
) -> Result<Json<ChallengeResponse>, ApiError> {
    c.allow_source(ip)?;
    let inner = c.inner.lock().expect("control state");
    Ok(Json(
        inner.challenges.issue(store::now_unix(), random_bytes()),
    ))
}

/// A registration: the registrant proves it holds the node key (a box sealed under it for a
/// fresh challenge), then the store decides whether that key may (re-)register. A refused
/// registration gives its challenge back, so only successful ones are remembered.
async fn register(
    State(c): State<Arc<Control>>,
    limits::Source(ip): limits::Source,
    Json(req): Json<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    c.allow_source(ip)?;
    let now = store::now_unix();
    let (node_key, body) = c
        .inner
        .lock()
        .expect("control state")
        .challenges
        .redeem(now, &req)?;
    let challenge = identity::challenge_bytes(&req);
    let result = admit_registration(&c, now, node_key, body, challenge).await;
    if result.is_err() {
        c.inner
            .lock()
            .expect("control state")
            .challenges
            .release(&req);
    }
    result.map(Json)
}

async fn admit_registration(
    c: &Arc<Control>,
    now: u64,
    node_key: burrow_wg::PublicKey,
    body: RegisterBody,
    challenge: Option<[u8; 32]>,
) -> Result<RegisterResponse, ApiError> {
    if !is_canonical_key(&node_key) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "node_key must be a canonical X25519 public key".into(),
        ));
    }
    let node_key = node_key.to_base64();
    let Some(disco_key) = canonical_key(&body.disco_key) else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "disco_key must be a canonical base64 X25519 public key".into(),
        ));
    };
    if !valid_hostname(&body.hostname) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "hostname must be a DNS label: 1 to 63 letters, digits or inner hyphens".into(),
        ));
    }
    let expires_at = {
        let mut inner = c.inner.lock().expect("control state");
        if !inner.per_key.allow(&node_key, tokio::time::Instant::now()) {
            return Err(ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                "too many registrations of this node key; slow down".into(),
            ));
        }
        inner.node_expiry.map(|d| now + d.as_secs())
    };
    // Servers that share a store spend the challenge in the registration's transaction.
    let challenge = challenge.filter(|_| c.shared);
    let c2 = c.clone();
    let (record, secret) = c
        .with_store(move |store| {
            let (record, secret, logged) = store.register(&Registration {
                auth_key: body.auth_key.as_deref(),
                node_secret: body.node_secret.as_deref(),
                name: &body.hostname,
                node_key: &node_key,
                disco_key: &disco_key,
                expires_at,
                challenge,
            })?;
            // Applied here, in the blocking call, so a request dropped midway cannot leave a
            // committed change unapplied; an admin's remove or expire that lands meanwhile has
            // a later id, and is applied after it (audit #19).
            c2.commit(logged);
            Ok((record, secret))
        })
        .await?;
    tracing::info!(id = record.id, name = %record.name, "node registered");
    Ok(RegisterResponse {
        node: record.peer().node,
        secret,
    })
}

async fn authenticate(c: &Arc<Control>, headers: &HeaderMap) -> Result<NodeRecord, ApiError> {
    let secret = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "missing Bearer secret".into()))?
        .to_string();
    let node = c
        .with_store(move |store| store.node_by_secret(&secret))
        .await?
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "unknown node secret: the node was removed, its key expired, or it never \
                 registered (register again with an auth key)"
                    .into(),
            )
        })?;
    if node.expires_at.is_some_and(|at| at <= store::now_unix()) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "the node's key expired: register again with an auth key".into(),
        ));
    }
    Ok(node)
}

async fn endpoints(
    State(c): State<Arc<Control>>,
    limits::Source(source): limits::Source,
    headers: HeaderMap,
    Json(mut req): Json<EndpointsRequest>,
) -> Result<StatusCode, ApiError> {
    c.allow_source(source)?;
    let node = authenticate(&c, &headers).await?;
    if req.endpoints.len() > 64 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "at most 64 endpoints".into(),
        ));
    }
    req.endpoints = vouched_endpoints(source, &req.endpoints, &node.endpoints);
    if req.relay_port == Some(0) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "relay_port 0 is no port".into(),
        ));
    }
    let relay_same = node.relay_port == req.relay_port && node.fixed_mapping == req.fixed_mapping;
    if node.endpoints == req.endpoints && node.home_region == req.home_region && relay_same {
        return Ok(StatusCode::NO_CONTENT); // nothing new: no write, no deltas
    }
    let report = Report {
        endpoints: req.endpoints,
        home_region: req.home_region,
        relay_port: req.relay_port,
        fixed_mapping: req.fixed_mapping,
    };
    let (id, c2) = (node.id, c.clone());
    // Recorded only while the node is in the tailnet: a change in flight when an admin
    // removes or expires the node must not bring it back (security audit #19). The store
    // takes it from the node's budget of changes, which every server sharing it draws on.
    let live = c
        .with_store(move |store| {
            let done = store.report(id, &report)?;
            Ok(done.map(|(_, logged)| c2.commit(logged)).is_some())
        })
        .await?;
    if !live {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "the node was removed or expired".into(),
        ));
    }
    if !relay_same {
        tracing::info!(id, relay_port = ?req.relay_port, fixed_mapping = req.fixed_mapping, "node relay report");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A node's map stream: a whole netmap, then deltas as changes are applied, as server-sent
/// events whose ids are change ids. A node that reconnects with `Last-Event-ID` (to this
/// server or another sharing the store) gets the deltas since then, or a whole netmap when
/// they are no longer all here.
async fn map(
    State(c): State<Arc<Control>>,
    limits::Source(ip): limits::Source,
    headers: HeaderMap,
) -> Result<Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    c.allow_source(ip)?;
    let node = authenticate(&c, &headers).await?;
    let last: Option<ChangeId> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    if !c
        .inner
        .lock()
        .expect("control state")
        .per_node_map
        .allow(&node.id, tokio::time::Instant::now())
    {
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            "too many map streams opened by this node; slow down".into(),
        ));
    }
    if c.shared {
        // Another server may have committed what this one has not applied yet (the node
        // registered there a moment ago, or saw later changes there): read the log first.
        let behind = {
            let inner = c.inner.lock().expect("control state");
            inner.tailnet.get(node.id).is_none()
                || last.is_some_and(|l| l > inner.follower.applied())
        };
        if behind {
            let (c2, from) = (c.clone(), c.applied() + 1);
            c.with_store(move |store| {
                let logged = store.changes_since(from, 1000)?;
                c2.commit(logged);
                Ok(())
            })
            .await?;
            // A change the node saw that is still not in the log is from a timeline the
            // database lost (a restore): it gets a whole netmap below, not a resume.
            if c.inner
                .lock()
                .expect("control state")
                .tailnet
                .get(node.id)
                .is_none()
            {
                return Err(ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this server is catching up with the others; try again".into(),
                ));
            }
        }
    }
    {
        let mut inner = c.inner.lock().expect("control state");
        if inner.tailnet.get(node.id).is_none() {
            return Err(ApiError(StatusCode::NOT_FOUND, "node was removed".into()));
        }
        match last.and_then(|l| Control::resume(&inner, node.id, l)) {
            Some(messages) if messages.len() < STREAM_QUEUE => {
                for m in messages {
                    let _ = tx.try_send(m);
                }
            }
            _ => {
                let netmap = inner
                    .tailnet
                    .netmap(node.id)
                    .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "node was removed".into()))?;
                let applied = inner.follower.applied();
                let _ = tx.try_send((Some(applied), Outgoing::NetMap(Box::new(netmap))));
            }
        }
        let streams = inner.streams.entry(node.id).or_default();
        streams.retain(|s| !s.is_closed());
        while streams.len() >= MAX_STREAMS_PER_NODE {
            streams.pop_front(); // the oldest ends; its reader reconnects if it still cares
        }
        streams.push_back(tx);
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let (id, m) = rx.recv().await?;
        let mut event = SseEvent::default().data(m.to_json());
        if let Some(id) = id {
            event = event.id(id.to_string());
        }
        Some((Ok(event), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Opens the store a `--db` value names: `postgres://…` (or `postgresql://…`) for PostgreSQL,
/// anything else a SQLite file.
pub async fn open_store(db: &str) -> Result<Arc<dyn Store>, StoreError> {
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        Ok(Arc::new(pg::PgStore::connect(db).await?))
    } else {
        Ok(Arc::new(store::SqliteStore::open(std::path::Path::new(
            db,
        ))?))
    }
}

/// Parses "30s", "15m", "24h", "90d".
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests;
