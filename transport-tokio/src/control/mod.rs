//! `burrow control`: the coordination server. It hands out addresses, tells every node its
//! peers' public keys and endpoints and its own packet filter, and streams changes as they
//! happen (server-sent events). It never sees a private key and never carries user traffic.

pub mod admin;
pub mod client;
pub mod pg;
pub mod store;
pub mod verify;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use burrow_control::{CompiledPolicy, Delta, NetMap, NodeInfo, PeerInfo, Policy, Tailnet};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use store::{NodeRecord, Store, StoreError};

/// The policy when none is given: every node may reach every other on every port.
pub const ALLOW_ALL: &str =
    r#"{ "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ] }"#;

/// A message on a node's map stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum MapMessage {
    /// The whole netmap (first message, and after any reconnect).
    NetMap(NetMap),
    /// A change.
    Delta(Delta),
}

/// `POST /machine/register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// A pre-auth key from `burrow control authkey create`.
    pub auth_key: String,
    /// The node's host name.
    pub hostname: String,
    /// WireGuard public key (base64). Never the private one.
    pub node_key: String,
    /// Disco public key (base64).
    pub disco_key: String,
}

/// The answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The node as the tailnet sees it (id, addresses, user, tags).
    pub node: NodeInfo,
    /// Bearer secret for this node's later requests.
    pub secret: String,
}

/// `POST /machine/endpoints`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointsRequest {
    /// Candidate endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Home DERP region.
    pub home_region: u16,
}

struct Inner {
    tailnet: Tailnet,
    streams: BTreeMap<u64, Vec<mpsc::UnboundedSender<MapMessage>>>,
    /// How long a registration is good for (None: forever).
    node_expiry: Option<Duration>,
    /// When each node in the tailnet expires (unix seconds).
    expires: BTreeMap<u64, u64>,
    /// Each node's endpoint-change budget: tokens and when they were counted.
    budgets: BTreeMap<u64, (f64, tokio::time::Instant)>,
}

/// Endpoint changes a node may make in a burst, and per second after that: a flapping or
/// hostile node cannot make the server flood its peers with deltas.
const CHANGE_BURST: f64 = 10.0;
const CHANGES_PER_SECOND: f64 = 1.0;

/// The server's shared state.
pub struct Control {
    store: Arc<dyn Store>,
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
        }
        Ok(Arc::new(Control {
            store,
            inner: Mutex::new(Inner {
                tailnet,
                streams: BTreeMap::new(),
                node_expiry: None,
                expires,
                budgets: BTreeMap::new(),
            }),
        }))
    }

    /// How long a registration is good for before the node must register again with an
    /// auth key (None: forever, the default).
    pub fn set_node_expiry(&self, expiry: Option<Duration>) {
        self.inner.lock().expect("control state").node_expiry = expiry;
    }

    /// Takes a node out of the tailnet (removed or expired): its peers are told at once and
    /// its own map streams end.
    fn retire(&self, id: u64) {
        let deltas = {
            let mut inner = self.inner.lock().expect("control state");
            inner.expires.remove(&id);
            inner.budgets.remove(&id);
            inner.streams.remove(&id);
            inner.tailnet.remove(id)
        };
        self.publish(deltas);
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

    /// Compiles a policy file's text (JSON or HuJSON).
    pub fn policy(text: &str) -> Result<CompiledPolicy, burrow_control::PolicyError> {
        Policy::check(text).map(|(_, c)| c)
    }

    fn publish(&self, deltas: Vec<(u64, Delta)>) {
        let mut inner = self.inner.lock().expect("control state");
        for (id, d) in deltas {
            if let Some(subs) = inner.streams.get_mut(&id) {
                subs.retain(|tx| tx.send(MapMessage::Delta(d.clone())).is_ok());
            }
        }
    }

    fn upsert(&self, r: &NodeRecord) {
        let deltas = {
            let mut inner = self.inner.lock().expect("control state");
            match r.expires_at {
                Some(at) => inner.expires.insert(r.id, at),
                None => inner.expires.remove(&r.id),
            };
            inner.tailnet.upsert(peer_of(r))
        };
        self.publish(deltas);
    }

    /// Takes one endpoint change from a node's budget; false when it is spent.
    fn take_change(&self, id: u64) -> bool {
        let now = tokio::time::Instant::now();
        let mut inner = self.inner.lock().expect("control state");
        let (tokens, at) = inner.budgets.entry(id).or_insert((CHANGE_BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * CHANGES_PER_SECOND)
            .min(CHANGE_BURST);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
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

    /// The HTTP API.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(|| async { "ok\n" }))
            .route("/machine/register", post(register))
            .route("/machine/endpoints", post(endpoints))
            .route("/machine/map", get(map))
            .merge(verify::routes(self.store.clone()))
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
            StoreError::BadAuthKey => ApiError(StatusCode::UNAUTHORIZED, e.to_string()),
            other => {
                tracing::error!(error = %other, "storage failed");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, "storage failed".into())
            }
        }
    }
}

fn is_key(s: &str) -> bool {
    burrow_wg::PublicKey::from_base64(s).is_ok()
}

async fn register(
    State(c): State<Arc<Control>>,
    Json(req): Json<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    if !is_key(&req.node_key) || !is_key(&req.disco_key) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "node_key and disco_key must be base64 X25519 public keys".into(),
        ));
    }
    if req.hostname.is_empty() || req.hostname.len() > 63 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "hostname must be 1 to 63 characters".into(),
        ));
    }
    let expires_at = c
        .inner
        .lock()
        .expect("control state")
        .node_expiry
        .map(|d| store::now_unix() + d.as_secs());
    let (record, secret) = c
        .with_store(move |store| {
            store.register(
                &req.auth_key,
                &req.hostname,
                &req.node_key,
                &req.disco_key,
                expires_at,
            )
        })
        .await?;
    c.upsert(&record);
    tracing::info!(id = record.id, name = %record.name, "node registered");
    Ok(Json(RegisterResponse {
        node: peer_of(&record).node,
        secret,
    }))
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
    headers: HeaderMap,
    Json(req): Json<EndpointsRequest>,
) -> Result<StatusCode, ApiError> {
    let mut node = authenticate(&c, &headers).await?;
    if req.endpoints.len() > 64 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "at most 64 endpoints".into(),
        ));
    }
    if node.endpoints == req.endpoints && node.home_region == req.home_region {
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
    node.endpoints = req.endpoints;
    node.home_region = req.home_region;
    c.upsert(&node);
    Ok(StatusCode::NO_CONTENT)
}

async fn map(
    State(c): State<Arc<Control>>,
    headers: HeaderMap,
) -> Result<Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let node = authenticate(&c, &headers).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut inner = c.inner.lock().expect("control state");
        let netmap = inner
            .tailnet
            .netmap(node.id)
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "node was removed".into()))?;
        let _ = tx.send(MapMessage::NetMap(netmap));
        inner.streams.entry(node.id).or_default().push(tx);
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

/// A TCP listener that hands axum TLS connections. Handshakes run in their own tasks (at most
/// 10 s each), so a slow or silent client never holds up the others.
pub struct TlsListener {
    ready: mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
    _accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener` with `config`.
    pub fn new(listener: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener {
            ready,
            local,
            _accepting: accepting,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self._accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
