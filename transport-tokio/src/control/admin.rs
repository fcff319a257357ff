//! The coordination server's admin API: list, expire and remove nodes. It is served on a Unix
//! socket (mode 0600, so only the server's own user may use it), never on the network;
//! `burrow control nodes` and `burrow control node …` are its client, and
//! `curl --unix-socket` works too.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::store::{now_unix, NodeRecord};
use super::{ApiError, Control};

/// One node as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Id.
    pub id: u64,
    /// Host name.
    pub name: String,
    /// Owner.
    pub user: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Tailnet addresses.
    pub addresses: Vec<IpAddr>,
    /// Last reported endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// When its key expires (unix seconds), if ever.
    pub expires_at: Option<u64>,
    /// Whether it has expired (and so is out of the tailnet until it registers again).
    pub expired: bool,
    /// Whether it holds a netmap stream open now.
    pub online: bool,
}

/// What an admin action did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionResult {
    /// The node acted on.
    pub node: NodeSummary,
    /// "removed" or "expired".
    pub action: String,
}

impl Control {
    /// The admin API (serve it on a Unix socket only).
    pub fn admin_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/nodes", get(list))
            .route("/nodes/{node}", delete(remove))
            .route("/nodes/{node}/expire", post(expire))
            .route("/policy/reload", post(reload_policy))
            .with_state(self.clone())
    }

    fn summary(&self, r: &NodeRecord, now: u64, elsewhere: &BTreeSet<u64>) -> NodeSummary {
        let online = elsewhere.contains(&r.id)
            || self
                .inner
                .lock()
                .expect("control state")
                .streams
                .get(&r.id)
                .is_some_and(|s| s.iter().any(|tx| !tx.is_closed()));
        NodeSummary {
            id: r.id,
            name: r.name.clone(),
            user: r.user.clone(),
            tags: r.tags.clone(),
            addresses: r.addresses.clone(),
            endpoints: r.endpoints.clone(),
            expires_at: r.expires_at,
            expired: r.expires_at.is_some_and(|at| at <= now),
            online,
        }
    }

    /// Nodes another server sharing the store saw streaming lately.
    async fn online_elsewhere(self: &Arc<Self>, now: u64) -> Result<BTreeSet<u64>, ApiError> {
        let since = now.saturating_sub(3 * super::ONLINE_EVERY);
        self.with_store(move |store| store.online_since(since))
            .await
    }

    async fn all_nodes(self: &Arc<Self>) -> Result<Vec<NodeRecord>, ApiError> {
        self.with_store(|store| store.nodes()).await
    }

    /// The node an admin names: by id, or by a host name only one node has.
    async fn find(self: &Arc<Self>, name: &str) -> Result<NodeRecord, ApiError> {
        let nodes = self.all_nodes().await?;
        let id: Option<u64> = name.parse().ok();
        let mut hits: Vec<NodeRecord> = nodes
            .into_iter()
            .filter(|n| Some(n.id) == id || n.name == name)
            .collect();
        match hits.len() {
            0 => Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no node named {name:?}"),
            )),
            1 => Ok(hits.remove(0)),
            n => Err(ApiError(
                StatusCode::CONFLICT,
                format!("{n} nodes are named {name:?}: use the id"),
            )),
        }
    }
}

async fn list(State(c): State<Arc<Control>>) -> Result<Json<Vec<NodeSummary>>, ApiError> {
    let now = now_unix();
    let nodes = c.all_nodes().await?;
    let elsewhere = c.online_elsewhere(now).await?;
    Ok(Json(
        nodes
            .iter()
            .map(|r| c.summary(r, now, &elsewhere))
            .collect(),
    ))
}

async fn remove(
    State(c): State<Arc<Control>>,
    UrlPath(node): UrlPath<String>,
) -> Result<Json<ActionResult>, ApiError> {
    let r = c.find(&node).await?;
    let id = r.id;
    let c2 = c.clone();
    c.with_store(move |store| Ok(store.remove(id)?.map(|logged| c2.commit(logged))))
        .await?;
    let summary = c.summary(&r, now_unix(), &BTreeSet::new());
    tracing::info!(id, name = %r.name, "node removed by the admin");
    Ok(Json(ActionResult {
        node: summary,
        action: "removed".into(),
    }))
}

async fn expire(
    State(c): State<Arc<Control>>,
    UrlPath(node): UrlPath<String>,
) -> Result<Json<ActionResult>, ApiError> {
    let mut r = c.find(&node).await?;
    let now = now_unix();
    let id = r.id;
    let c2 = c.clone();
    c.with_store(move |store| Ok(store.expire(id, now)?.map(|logged| c2.commit(logged))))
        .await?;
    r.expires_at = Some(now);
    tracing::info!(id, name = %r.name, "node expired by the admin");
    Ok(Json(ActionResult {
        node: c.summary(&r, now, &BTreeSet::new()),
        action: "expired".into(),
    }))
}

/// What a policy reload did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadResult {
    /// Nodes told of a change (peers or filter).
    pub nodes_told: usize,
}

async fn reload_policy(State(c): State<Arc<Control>>) -> Result<Json<ReloadResult>, ApiError> {
    let c2 = c.clone();
    let told = tokio::task::spawn_blocking(move || c2.reload_policy())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    tracing::info!(nodes_told = told, "policy reloaded by the admin");
    Ok(Json(ReloadResult { nodes_told: told }))
}

/// Serves the admin API on a fresh Unix socket at `path` (mode 0600) until the task is dropped.
pub async fn serve(path: &Path, control: Arc<Control>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    axum::serve(listener, control.admin_router()).await?;
    Ok(())
}

/// One admin request over the Unix socket: the JSON answer, or the server's error as an error.
pub async fn request(socket: &Path, method: &str, path: &str) -> Result<serde_json::Value> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| {
            format!(
                "connecting to {} (is `burrow control serve` running, with this --admin-socket?)",
                socket.display()
            )
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "burrow-control")
        .body(Empty::<bytes::Bytes>::new())?;
    let res = sender.send_request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("the server answered {status} with no JSON"))?;
    if !status.is_success() {
        let reason = value["error"].as_str().unwrap_or("no reason given");
        bail!("{reason} ({status})");
    }
    Ok(value)
}
