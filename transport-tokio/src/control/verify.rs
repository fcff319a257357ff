//! `GET /derp/verify/{node key, base64url}`: whether a key belongs to a live (registered, not
//! expired) node, for `burrow derper --verify-clients`, so the relay serves only tailnet
//! nodes.
//!
//! The answer reveals whether a key is registered, so the endpoint is not open to the world:
//! it exists only when the server has a verification token (`burrow control serve
//! --verify-token-file`, or [`router`] for an embedding program), and it answers
//! nothing without `Authorization: Bearer <token>` (compared in constant time). A token
//! rather than an address allow-list: relays usually sit on other hosts and behind NAT or
//! proxies, and the same token file is easy to give both sides.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use burrow_wg::PublicKey;
use serde::{Deserialize, Serialize};

use super::store::Store;

/// Shortest token accepted, in bytes after trimming.
pub const MIN_TOKEN_LEN: usize = 32;

/// The endpoint's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyAnswer {
    /// The key is a live node's: serve it.
    pub allow: bool,
}

/// The token in a file's text, trimmed; refused if shorter than [`MIN_TOKEN_LEN`].
pub fn check_token(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the verification token has {} bytes after trimming; at least {MIN_TOKEN_LEN} are needed (e.g. `openssl rand -hex 32`)",
            t.len()
        ));
    }
    Ok(t.to_owned())
}

/// Reads and checks a token file.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    check_token(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The request path for a key: `/derp/verify/` and the key in unpadded base64url.
pub fn path_for(key: &PublicKey) -> String {
    let b64: String = key
        .to_base64()
        .chars()
        .filter(|c| *c != '=')
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    format!("/derp/verify/{b64}")
}

/// A key from its base64url form (padded or not).
fn key_from_base64url(s: &str) -> Option<PublicKey> {
    if s.len() > 44 || s.contains(['+', '/']) {
        return None;
    }
    let mut std: String = s
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while std.len() % 4 != 0 {
        std.push('=');
    }
    PublicKey::from_base64(&std).ok()
}

/// Whether a node key belongs to a live node: the control store, or a stand-in in tests.
pub trait LiveKeys: Send + Sync + 'static {
    /// May block (a database query); called off the async workers.
    fn is_live(&self, key: &PublicKey) -> Result<bool, String>;
}

/// Whether `key` is among `nodes` (stored key, expiry in unix seconds) and not expired at
/// `now`. Keys are compared decoded: a stored key spelt differently is still the same key.
pub fn any_live<'a>(
    nodes: impl IntoIterator<Item = (&'a str, Option<u64>)>,
    key: &PublicKey,
    now: u64,
) -> bool {
    nodes.into_iter().any(|(stored, expires_at)| {
        PublicKey::from_base64(stored).is_ok_and(|k| k == *key)
            && expires_at.is_none_or(|at| at > now)
    })
}

/// The control store's nodes, looked up by key (one indexed query per question, not a scan
/// of every node: the relays ask about each new client key).
struct StoreKeys(Arc<dyn Store>);

impl LiveKeys for StoreKeys {
    fn is_live(&self, key: &PublicKey) -> Result<bool, String> {
        // Keys are stored canonical (decoded and re-encoded), the spelling to_base64 gives.
        let node = self
            .0
            .node_by_key(&key.to_base64())
            .map_err(|e| e.to_string())?;
        let now = super::store::now_unix();
        Ok(node.is_some_and(|n| n.expires_at.is_none_or(|at| at > now)))
    }
}

#[derive(Clone)]
struct Verifier {
    keys: Arc<dyn LiveKeys>,
    token: Arc<str>,
}

/// The endpoint over the control store with this token (for a `--verify-token-file` flag
/// of `burrow control serve`; see [`read_token`]).
pub fn store_router<S: Clone + Send + Sync + 'static>(
    store: Arc<dyn Store>,
    token: String,
) -> Router<S> {
    router(Arc::new(StoreKeys(store)), token)
}

/// The endpoint answering from `keys`, with this token.
pub fn router<S: Clone + Send + Sync + 'static>(
    keys: Arc<dyn LiveKeys>,
    token: String,
) -> Router<S> {
    Router::new()
        .route("/derp/verify/{key}", get(verify))
        .with_state(Verifier {
            keys,
            token: token.into(),
        })
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, reason: &str) -> Response {
    (status, Json(serde_json::json!({ "error": reason }))).into_response()
}

async fn verify(
    State(v): State<Verifier>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    let token: &str = &v.token;
    let presented = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_eq(presented.as_bytes(), token.as_bytes()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "a valid verification token is required",
        );
    }
    let Some(key) = key_from_base64url(&key) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the key must be 32 bytes in base64url",
        );
    };
    let keys = v.keys.clone();
    let lookup = move || keys.is_live(&key);
    // Off the async workers on a multi-threaded runtime (SQLite blocks); inline otherwise.
    let found = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => lookup(),
        _ => match tokio::task::spawn_blocking(lookup).await {
            Ok(r) => r,
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "worker failed"),
        },
    };
    match found {
        Ok(allow) => Json(VerifyAnswer { allow }).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "node lookup failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "storage failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_path_and_tokens_must_be_long() {
        for seed in [1u8, 0x3e, 0xff] {
            let key = burrow_wg::PrivateKey::from_bytes([seed; 32]).public_key();
            let path = path_for(&key);
            let b64 = path.strip_prefix("/derp/verify/").unwrap();
            assert!(!b64.contains(['+', '/', '=']), "{b64}");
            assert_eq!(key_from_base64url(b64), Some(key));
        }
        assert_eq!(key_from_base64url("not a key"), None);
        assert!(check_token(" short \n").is_err());
        assert_eq!(
            check_token(&format!(" {} \n", "t".repeat(32))).unwrap(),
            "t".repeat(32)
        );
    }

    #[test]
    fn only_unexpired_nodes_are_live() {
        let key = burrow_wg::PrivateKey::from_bytes([4; 32]).public_key();
        let b64 = key.to_base64();
        let other = burrow_wg::PrivateKey::from_bytes([5; 32])
            .public_key()
            .to_base64();
        assert!(any_live([(b64.as_str(), None)], &key, 100));
        assert!(any_live([(b64.as_str(), Some(101))], &key, 100));
        assert!(!any_live([(b64.as_str(), Some(100))], &key, 100), "expired");
        assert!(!any_live([(other.as_str(), None)], &key, 100));
        assert!(!any_live([("garbage", None)], &key, 100));
    }

    /// Security review follow-up: the verification endpoint looks a key up by index
    /// (`Store::node_by_key`) instead of reading every node per question; live, unknown and
    /// expired keys are told apart as before.
    #[test]
    fn the_store_answers_by_key_lookup() {
        let (store, node) = crate::control::store::memory_store_with_node();
        let pk = |b: u8| burrow_wg::PrivateKey::from_bytes([b; 32]).public_key();
        let node_key = pk(1).to_base64();
        let found = store.node_by_key(&node_key).unwrap().expect("found");
        assert_eq!(
            (found.id, found.node_key.as_str()),
            (node.id, node_key.as_str())
        );
        assert_eq!(store.node_by_key(&pk(3).to_base64()).unwrap(), None);
        let keys = StoreKeys(store.clone());
        assert!(keys.is_live(&pk(1)).unwrap());
        assert!(!keys.is_live(&pk(3)).unwrap(), "unknown");
        assert!(store.expire(node.id, 1).unwrap().is_some());
        assert!(!keys.is_live(&pk(1)).unwrap(), "expired");
    }
}
