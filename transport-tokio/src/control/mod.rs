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
use burrow_control::{CompiledPolicy, Delta, NodeInfo, PeerInfo, Policy, Tailnet};
use tokio::sync::mpsc;

pub use identity::{ChallengeResponse, RegisterBody, RegisterRequest};
use identity::{Challenges, ProofError};
use limits::{Limits, RateLimiter};
use store::{NodeRecord, Registration, Store, StoreError};
use validate::{canonical_key, is_canonical_key};
pub use validate::{hostname_label, valid_hostname, vouched_endpoints};

/// The policy when none is given: every node may reach every other on every port.
pub const ALLOW_ALL: &str =
    r#"{ "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ] }"#;

pub use burrow_control::{EndpointsRequest, MapMessage, RegisterResponse};

/// Map streams a node may hold at once; a newer one replaces the oldest.
pub const MAX_STREAMS_PER_NODE: usize = 2;
/// Messages a map stream may have waiting; a stream that falls this far behind is closed, and
/// its node reconnects and gets a fresh netmap.
pub const STREAM_QUEUE: usize = 256;
/// Largest request body the API reads.
pub const MAX_BODY: usize = 64 * 1024;

struct Inner {
    tailnet: Tailnet,
    streams: BTreeMap<u64, VecDeque<mpsc::Sender<MapMessage>>>,
    /// How long a registration is good for (None: forever).
    node_expiry: Option<Duration>,
    /// When each node in the tailnet expires (unix seconds).
    expires: BTreeMap<u64, u64>,
    /// Each node's endpoint-change budget.
    changes: RateLimiter<u64>,
    /// Challenges issued and redeemed.
    challenges: Challenges,
    /// Challenge, registration and map requests per source address.
    per_ip: RateLimiter<IpAddr>,
    /// Registrations per node key.
    per_key: RateLimiter<String>,
    /// Map streams opened per node (each costs a whole netmap).
    per_node_map: RateLimiter<u64>,
}

/// Endpoint changes a node may make in a burst, and per second after that: a flapping or
/// hostile node cannot make the server flood its peers with deltas.
const CHANGE_BURST: f64 = 10.0;
const CHANGES_PER_SECOND: f64 = 1.0;

/// The server's shared state.
pub struct Control {
    store: Arc<dyn Store>,
    /// The token relays present to `GET /derp/verify/…` (none: no such route).
    verify_token: Mutex<Option<String>>,
    /// The policy file `reload_policy` reads again (None: the built-in allow-all).
    policy_file: Mutex<Option<std::path::PathBuf>>,
    inner: Mutex<Inner>,
}

fn peer_of(r: &NodeRecord) -> PeerInfo {
    PeerInfo {
        node: NodeInfo {
            id: r.id,
            name: r.name.clone(),
            user: r.user.clone(),
            tags: r.tags.clone(),
            addresses: r.addresses.clone(),
        },
        node_key: r.node_key.clone(),
        disco_key: r.disco_key.clone(),
        endpoints: r.endpoints.clone(),
        home_region: r.home_region,
    }
}

impl Control {
    /// Loads every stored node under `policy`; every netmap carries `derp`.
    pub fn new(
        store: Arc<dyn Store>,
        policy: CompiledPolicy,
        derp: Vec<burrow_control::DerpRegion>,
    ) -> Result<Arc<Self>, StoreError> {
        let mut tailnet = Tailnet::new(policy);
        tailnet.set_derp_map(derp);
        let mut expires = BTreeMap::new();
        let now = store::now_unix();
        // Expired nodes stay stored (an admin may list them, the node may re-register) but
        // are not part of the tailnet.
        for r in store.nodes()? {
            match r.expires_at {
                Some(at) if at <= now => continue,
                Some(at) => {
                    expires.insert(r.id, at);
                }
                None => {}
            }
            tailnet.upsert(peer_of(&r));
            tailnet.set_relay_capability(r.id, r.relay_capability());
        }
        Ok(Arc::new(Control {
            store,
            verify_token: Mutex::new(None),
            policy_file: Mutex::new(None),
            inner: Mutex::new(Inner {
                tailnet,
                streams: BTreeMap::new(),
                node_expiry: None,
                expires,
                changes: RateLimiter::new(CHANGES_PER_SECOND, CHANGE_BURST, 65_536),
                challenges: Challenges::new(random_bytes()),
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

    /// Takes a node out of the tailnet (removed or expired): its peers are told at once and
    /// its own map streams end.
    fn retire(&self, id: u64) {
        let mut inner = self.inner.lock().expect("control state");
        inner.expires.remove(&id);
        inner.changes.forget(&id);
        inner.per_node_map.forget(&id);
        inner.streams.remove(&id);
        let deltas = inner.tailnet.remove(id);
        Self::publish(&mut inner, deltas);
    }

    /// Retires every node whose key expired by `now` (unix seconds); returns their ids.
    pub fn expire_due(&self, now: u64) -> Vec<u64> {
        let due: Vec<u64> = self
            .inner
            .lock()
            .expect("control state")
            .expires
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            tracing::info!(id, "node key expired");
            self.retire(*id);
        }
        due
    }

    /// Checks for expired nodes once a second, for as long as the runtime runs.
    pub fn spawn_expiry(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let c = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(c) = c.upgrade() else { return };
                c.expire_due(store::now_unix());
            }
        })
    }

    /// Replaces the policy: every node is told at once of the peers it may now see, those it
    /// no longer may, and its new filter. Returns how many nodes were told something.
    pub fn set_policy(&self, policy: CompiledPolicy) -> usize {
        let mut inner = self.inner.lock().expect("control state");
        let deltas = inner.tailnet.set_policy(policy);
        let told: std::collections::BTreeSet<u64> = deltas.iter().map(|(id, _)| *id).collect();
        Self::publish(&mut inner, deltas);
        told.len()
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
            None => ALLOW_ALL.to_string(),
        };
        let policy = Control::policy(&text).map_err(|e| match &*path {
            Some(p) => format!("{}: {e}", p.display()),
            None => e.to_string(),
        })?;
        let told = self.set_policy(policy);
        drop(path);
        Ok(told)
    }

    /// Compiles a policy file's text (JSON or HuJSON).
    pub fn policy(text: &str) -> Result<CompiledPolicy, burrow_control::PolicyError> {
        Policy::check(text).map(|(_, c)| c)
    }

    /// Sends deltas to their nodes' streams, under the same lock that computed them (so no
    /// later change can overtake them). A stream whose queue is full is closed (its sender
    /// dropped): the node reconnects and starts again from a whole netmap, so a slow or
    /// hostile reader costs the server at most `STREAM_QUEUE` messages.
    fn publish(inner: &mut Inner, deltas: Vec<(u64, Delta)>) {
        for (id, d) in deltas {
            if let Some(subs) = inner.streams.get_mut(&id) {
                subs.retain(|tx| tx.try_send(MapMessage::Delta(d.clone())).is_ok());
            }
        }
    }

    fn upsert(&self, r: &NodeRecord) {
        let mut inner = self.inner.lock().expect("control state");
        match r.expires_at {
            Some(at) => inner.expires.insert(r.id, at),
            None => inner.expires.remove(&r.id),
        };
        let mut deltas = inner.tailnet.upsert(peer_of(r));
        deltas.extend(
            inner
                .tailnet
                .set_relay_capability(r.id, r.relay_capability()),
        );
        Self::publish(&mut inner, deltas);
    }

    /// Updates a node that must still be in the tailnet: a change that was in flight while an
    /// admin removed or expired the node must not bring it back (security audit #19). The
    /// check and the update happen under one lock, and removal takes the same lock.
    fn update_live(&self, r: &NodeRecord) -> bool {
        let mut inner = self.inner.lock().expect("control state");
        let expired = r.expires_at.is_some_and(|at| at <= store::now_unix());
        if inner.tailnet.get(r.id).is_none() || expired {
            return false;
        }
        let mut deltas = inner.tailnet.upsert(peer_of(r));
        deltas.extend(
            inner
                .tailnet
                .set_relay_capability(r.id, r.relay_capability()),
        );
        Self::publish(&mut inner, deltas);
        true
    }

    /// Takes one endpoint change from a node's budget; false when it is spent.
    fn take_change(&self, id: u64) -> bool {
        let now = tokio::time::Instant::now();
        self.inner
            .lock()
            .expect("control state")
            .changes
            .allow(&id, now)
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
            StoreError::BadAuthKey | StoreError::NotPermitted => {
                ApiError(StatusCode::UNAUTHORIZED, e.to_string())
            }
            StoreError::DiscoKeyTaken => ApiError(StatusCode::CONFLICT, e.to_string()),
            StoreError::AddressPoolExhausted => {
                tracing::error!("registration refused: the address pool is exhausted");
                ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
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

async fn health(
    State(c): State<Arc<Control>>,
    limits::Source(ip): limits::Source,
) -> Result<&'static str, ApiError> {
    c.allow_source(ip)?;
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
    let result = admit_registration(&c, now, node_key, body).await;
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
    let (record, secret) = c
        .with_store(move |store| {
            store.register(&Registration {
                auth_key: body.auth_key.as_deref(),
                node_secret: body.node_secret.as_deref(),
                name: &body.hostname,
                node_key: &node_key,
                disco_key: &disco_key,
                expires_at,
            })
        })
        .await?;
    c.upsert(&record);
    // An admin's remove or expire may have landed between the store's commit and the upsert
    // (audit #19): read the record back and retire the node if it is gone or expired. The
    // admin removes from the store before retiring, so one of the two always sees the other.
    let id = record.id;
    let stored = c.with_store(move |store| store.node(id)).await?;
    if stored.is_none_or(|r| r.expires_at.is_some_and(|at| at <= store::now_unix())) {
        c.retire(id);
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "the node was removed or expired while it registered".into(),
        ));
    }
    tracing::info!(id = record.id, name = %record.name, "node registered");
    Ok(RegisterResponse {
        node: peer_of(&record).node,
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
                "unknown node secret (the node was removed, or never registered)".into(),
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
    let mut node = authenticate(&c, &headers).await?;
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
    if !c.take_change(node.id) {
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            "too many endpoint changes: at most 10 at once, then 1 a second".into(),
        ));
    }
    let (id, eps, region) = (node.id, req.endpoints.clone(), req.home_region);
    c.with_store(move |store| store.set_endpoints(id, &eps, region))
        .await?;
    if !relay_same {
        let (port, fixed) = (req.relay_port, req.fixed_mapping);
        c.with_store(move |store| store.set_relay(id, port, fixed))
            .await?;
        tracing::info!(id, relay_port = ?port, fixed_mapping = fixed, "node relay report");
    }
    node.endpoints = req.endpoints;
    node.home_region = req.home_region;
    node.relay_port = req.relay_port;
    node.fixed_mapping = req.fixed_mapping;
    if !c.update_live(&node) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "the node was removed or expired".into(),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn map(
    State(c): State<Arc<Control>>,
    limits::Source(ip): limits::Source,
    headers: HeaderMap,
) -> Result<Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    c.allow_source(ip)?;
    let node = authenticate(&c, &headers).await?;
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    {
        let mut inner = c.inner.lock().expect("control state");
        if !inner
            .per_node_map
            .allow(&node.id, tokio::time::Instant::now())
        {
            return Err(ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                "too many map streams opened by this node; slow down".into(),
            ));
        }
        let netmap = inner
            .tailnet
            .netmap(node.id)
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "node was removed".into()))?;
        let _ = tx.try_send(MapMessage::NetMap(netmap));
        let streams = inner.streams.entry(node.id).or_default();
        streams.retain(|s| !s.is_closed());
        while streams.len() >= MAX_STREAMS_PER_NODE {
            streams.pop_front(); // the oldest ends; its reader reconnects if it still cares
        }
        streams.push_back(tx);
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let m = rx.recv().await?;
        let data = serde_json::to_string(&m).unwrap_or_default();
        Some((Ok(SseEvent::default().data(data)), rx))
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
