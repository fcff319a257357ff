//! Asking the control server whether a client key may use the relay, over a small pool of
//! keep-alive connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use burrow_wg::PublicKey;

use crate::derp_client::{self, DerpUrl};

/// Verification lookups under way at once, and so connections to the control server (kept
/// alive and reused): new client keys cannot multiply the control server's load.
pub const VERIFY_CONCURRENCY: usize = 16;

/// Verification of client keys: `GET {base}/derp/verify/{key, base64url}` on the control
/// server with a shared bearer token; a client is admitted only on `{"allow": true}`. At
/// most [`VERIFY_CONCURRENCY`] lookups run at once, over keep-alive connections that are
/// reused (a lookup used to cost a TCP and TLS handshake).
#[derive(Clone)]
pub struct VerifyClients {
    target: DerpUrl,
    prefix: String,
    host: String,
    token: String,
    roots: derp_client::ExtraRoots,
    /// Idle keep-alive connections to the control server.
    idle: Arc<Mutex<Vec<ControlConn>>>,
    /// One per lookup under way.
    permits: Arc<tokio::sync::Semaphore>,
    /// Connections opened so far (for tests and metrics).
    opened: Arc<AtomicU64>,
}

type ControlConn = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

impl std::fmt::Debug for VerifyClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyClients")
            .field("url", &self.target.to_string())
            .field("prefix", &self.prefix)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl VerifyClients {
    /// The control server at `url` (http[s]://HOST[:PORT][/PREFIX]), the shared token
    /// (at least 32 bytes), and extra trust anchors for a self-signed server.
    pub fn new(url: &str, token: &str, roots: derp_client::ExtraRoots) -> Result<Self, String> {
        let token = crate::control::verify::check_token(token)?;
        let trimmed = url.trim_end_matches('/');
        let target: DerpUrl = trimmed.parse()?;
        let after_scheme = trimmed.split_once("://").map_or("", |x| x.1);
        let prefix = if after_scheme.contains('/') {
            target.path.clone()
        } else {
            String::new()
        };
        let host = match (target.tls, target.port) {
            (true, 443) | (false, 80) => target.host.clone(),
            (_, port) if target.host.contains(':') => format!("[{}]:{port}", target.host),
            (_, port) => format!("{}:{port}", target.host),
        };
        Ok(VerifyClients {
            target,
            prefix,
            host,
            token,
            roots,
            idle: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(tokio::sync::Semaphore::new(VERIFY_CONCURRENCY)),
            opened: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Connections to the control server opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// A new keep-alive connection to the control server.
    async fn connect(&self) -> Result<ControlConn, String> {
        let stream = derp_client::connect_stream(&self.target, &self.roots)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// An idle connection still open, if any.
    fn take_idle(&self) -> Option<ControlConn> {
        let mut idle = self.idle.lock().expect("idle");
        while let Some(c) = idle.pop() {
            if !c.is_closed() && c.is_ready() {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, conn: ControlConn) {
        let mut idle = self.idle.lock().expect("idle");
        if !conn.is_closed() && idle.len() < VERIFY_CONCURRENCY {
            idle.push(conn);
        }
    }

    /// One request on `conn`: the status and body, or a transport error.
    async fn request(
        &self,
        conn: &mut ControlConn,
        key: &PublicKey,
    ) -> Result<(hyper::StatusCode, bytes::Bytes), String> {
        use http_body_util::{BodyExt, Full};
        let req = hyper::Request::builder()
            .method("GET")
            .uri(format!(
                "{}{}",
                self.prefix,
                crate::control::verify::path_for(key)
            ))
            .header("host", &self.host)
            .header("authorization", format!("Bearer {}", self.token))
            .body(Full::new(bytes::Bytes::new()))
            .map_err(|e| e.to_string())?;
        conn.ready().await.map_err(|e| e.to_string())?;
        let res = conn.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// Whether the control server says `key` is a live node. Waits for one of the
    /// [`VERIFY_CONCURRENCY`] places; uses a kept connection if one is open (once more on a
    /// new one if it fails: the server may have closed it while idle).
    pub async fn ask(&self, key: &PublicKey) -> Result<bool, String> {
        let _place = self
            .permits
            .acquire()
            .await
            .map_err(|_| "verification stopped".to_owned())?;
        let mut answer = None;
        if let Some(mut conn) = self.take_idle() {
            if let Ok(a) = self.request(&mut conn, key).await {
                self.put_idle(conn);
                answer = Some(a);
            }
        }
        let (status, body) = match answer {
            Some(a) => a,
            None => {
                let mut conn = self.connect().await?;
                let a = self.request(&mut conn, key).await?;
                self.put_idle(conn);
                a
            }
        };
        if !status.is_success() {
            return Err(format!("control server answered {status}"));
        }
        let answer: crate::control::verify::VerifyAnswer =
            serde_json::from_slice(&body).map_err(|e| format!("answer: {e}"))?;
        Ok(answer.allow)
    }
}
