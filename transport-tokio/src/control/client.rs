//! The node's side of the control API: register, report endpoints, and follow the netmap
//! stream (server-sent events). HTTP/1.1 (hyper) over any byte stream a [`Connector`] opens:
//! TCP or TLS for `burrow up`, the simulator's TCP in `burrow-sim`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use burrow_control::changelog::ChangeId;
use burrow_control::NetMap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use thiserror::Error;

use super::identity::{seal_registration, ChallengeResponse, RegisterBody};
use super::{EndpointsRequest, MapMessage, RegisterResponse};
use crate::derp_client::DerpUrl;
use crate::transport::Stream;

/// Opens a fresh byte stream to the control server.
pub type Connector = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<Box<dyn Stream>>> + Send>> + Send + Sync,
>;

/// Why a control request failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach the control server: {0}")]
    Io(#[from] io::Error),
    /// The HTTP exchange failed.
    #[error("control server HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The server answered with an error.
    #[error("the control server refused ({status}): {reason}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's reason.
        reason: String,
    },
    /// The answer did not parse.
    #[error("the control server sent something unexpected: {0}")]
    BadMessage(String),
    /// The map stream ended (the server restarted, or dropped this node).
    #[error("the map stream ended")]
    Ended,
    /// No answer in time.
    #[error("the control server did not answer within {0:?}")]
    Timeout(Duration),
    /// The server's URL does not parse.
    #[error("bad control server URL: {0}")]
    BadUrl(String),
}

impl ClientError {
    /// The server does not (or no longer) accept this node's credentials: it was removed,
    /// its key expired, or the auth key is bad.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ClientError::Refused { status: 401, .. })
    }
}

/// How long a request (not the map stream) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One control server: how to reach it, its Host header and path prefix.
#[derive(Clone)]
struct Server {
    connector: Connector,
    host: String,
    prefix: String,
}

/// A client of the control plane: one server, or several replicas sharing one database. A
/// request goes to the server that answered last; one that cannot be reached passes the
/// request to the next (each tried once per request), so a dead replica costs a refused
/// connection, not a back-off.
#[derive(Clone)]
pub struct ControlClient {
    servers: Arc<[Server]>,
    current: Arc<AtomicUsize>,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<&str> = self.servers.iter().map(|s| s.host.as_str()).collect();
        f.debug_struct("ControlClient")
            .field("hosts", &hosts)
            .finish_non_exhaustive()
    }
}

fn sent_is_refusal<T>(sent: &Result<T, ClientError>) -> bool {
    matches!(sent, Err(ClientError::Refused { .. }))
}

/// One server-sent event: its id and data lines (none: a keep-alive comment).
#[derive(Debug, Default, PartialEq, Eq)]
struct Event {
    id: Option<String>,
    data: Option<String>,
}

/// One SSE event, once a whole event ("…\n\n") is in `buf`.
fn take_event(buf: &mut Vec<u8>) -> Option<Event> {
    let end = buf.windows(2).position(|w| w == b"\n\n")?;
    let event: Vec<u8> = buf.drain(..end + 2).collect();
    let text = String::from_utf8_lossy(&event);
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(name)?.strip_prefix(':')?;
            Some(v.strip_prefix(' ').unwrap_or(v).to_owned())
        })
    };
    Some(Event {
        id: field("id"),
        data: field("data"),
    })
}

/// How a map stream began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// With the whole netmap.
    NetMap(Box<NetMap>),
    /// Resumed after the change the node named: the deltas since then follow.
    Resumed {
        /// That change.
        since: ChangeId,
    },
}

/// The netmap stream: one [`MapMessage`] at a time.
pub struct MapStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    last: Option<ChangeId>,
}

impl std::fmt::Debug for MapStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapStream")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// The largest event the map stream accepts (a netmap of ~100k peers).
const MAX_EVENT: usize = 64 << 20;

impl MapStream {
    /// The last change whose messages this stream has delivered in full (to resume from).
    pub fn last_change(&self) -> Option<ChangeId> {
        self.last
    }

    /// The next message; [`ClientError::Ended`] when the server closes the stream.
    pub async fn next(&mut self) -> Result<MapMessage, ClientError> {
        self.read(None).await
    }

    /// [`MapStream::next`], failing with [`ClientError::Timeout`] when the server sends
    /// nothing at all for `idle`: its keep-alives count, so a quiet netmap is no dead stream.
    pub async fn next_within(&mut self, idle: Duration) -> Result<MapMessage, ClientError> {
        self.read(Some(idle)).await
    }

    async fn read(&mut self, idle: Option<Duration>) -> Result<MapMessage, ClientError> {
        loop {
            while let Some(event) = take_event(&mut self.buf) {
                // Events without data are keep-alive comments.
                if let Some(data) = event.data {
                    let message = serde_json::from_str(&data)
                        .map_err(|e| ClientError::BadMessage(format!("map message: {e}")))?;
                    // The id names the change the node is up to once it has taken this.
                    if let Some(id) = event.id.and_then(|i| i.trim().parse().ok()) {
                        self.last = Some(id);
                    }
                    return Ok(message);
                }
            }
            if self.buf.len() > MAX_EVENT {
                return Err(ClientError::BadMessage("a map event over 64 MiB".into()));
            }
            let frame = match idle {
                Some(idle) => tokio::time::timeout(idle, self.body.frame())
                    .await
                    .map_err(|_| ClientError::Timeout(idle))?,
                None => self.body.frame().await,
            };
            match frame {
                None => return Err(ClientError::Ended),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

impl ControlClient {
    /// A client of `url` (http://HOST:PORT or https://HOST[:PORT], with an optional path
    /// prefix), over TCP or TLS.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        Self::with_roots(url, Vec::new())
    }

    /// [`ControlClient::new`], also trusting these certificates (DER) for https:// — a server
    /// with a self-signed certificate (`burrow control serve --self-signed … --cert-out`).
    pub fn with_roots(
        url: &str,
        roots: crate::derp_client::ExtraRoots,
    ) -> Result<Self, ClientError> {
        let trimmed = url.trim_end_matches('/');
        let parsed: DerpUrl = trimmed.parse().map_err(ClientError::BadUrl)?;
        let after_scheme = trimmed.split_once("://").map_or("", |x| x.1);
        let prefix = if after_scheme.contains('/') {
            parsed.path.clone()
        } else {
            String::new()
        };
        let host = match (parsed.tls, parsed.port) {
            (true, 443) | (false, 80) => parsed.host.clone(),
            (_, port) => format!("{}:{port}", parsed.host),
        };
        let roots = Arc::new(roots);
        let connector: Connector = Arc::new(move || {
            let (url, roots) = (parsed.clone(), roots.clone());
            Box::pin(async move {
                // IPv4 first (then Happy Eyeballs as usual): the control server vouches for a
                // node's public IPv4 endpoints only by the address its report comes from, so
                // a node that reaches it over IPv4 keeps its birthday-probing peers.
                let mut addrs = crate::derp_client::resolve(&url).await?;
                addrs.sort_by_key(|a| a.is_ipv6());
                crate::derp_client::connect_stream_to(&url, &addrs, &roots).await
            })
        });
        Ok(ControlClient::of(vec![Server {
            connector,
            host,
            prefix,
        }]))
    }

    /// A client of several replicas (`--control URL,URL,…`), each URL as
    /// [`ControlClient::with_roots`] takes it.
    pub fn replicas(
        urls: &[&str],
        roots: crate::derp_client::ExtraRoots,
    ) -> Result<Self, ClientError> {
        let mut servers = Vec::new();
        for url in urls {
            servers.extend(
                Self::with_roots(url, roots.clone())?
                    .servers
                    .iter()
                    .cloned(),
            );
        }
        if servers.is_empty() {
            return Err(ClientError::BadUrl("no control server named".into()));
        }
        Ok(ControlClient::of(servers))
    }

    fn of(servers: Vec<Server>) -> Self {
        ControlClient {
            servers: servers.into(),
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many servers this client knows.
    pub fn servers(&self) -> usize {
        self.servers.len()
    }

    /// A client that reaches the server through `connector` (the simulator's TCP, a proxy…);
    /// `host` is the Host header.
    pub fn with_connector(host: impl Into<String>, connector: Connector) -> Self {
        ControlClient::of(vec![Server {
            connector,
            host: host.into(),
            prefix: String::new(),
        }])
    }

    /// Sends a request to the server that answered last; one that cannot be reached (no
    /// connection within the request timeout) or cannot serve now (502, 503, 504) hands it to
    /// the next, each tried once.
    async fn send(
        &self,
        method: &str,
        path: &str,
        secret: Option<&str>,
        body: Option<Vec<u8>>,
        last_event: Option<ChangeId>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let first = self.current.load(Ordering::Relaxed);
        let n = self.servers.len();
        // Each server gets its share of the request's time, so one that hangs leaves time
        // for the others (the whole request stays within REQUEST_TIMEOUT).
        let attempt = (REQUEST_TIMEOUT / n as u32).max(Duration::from_secs(3));
        // A registration may have committed on a server that then failed to answer (a proxy's
        // 502, a connection lost during the commit): sent again elsewhere it would be refused
        // as a replay, and its secret lost. Only a server never reached passes it on.
        let idempotent = path != "/machine/register";
        let mut failure = None;
        for k in 0..n {
            let i = (first + k) % n;
            let server = &self.servers[i];
            // A server's answer says more than another's silence: it is the error kept.
            let answered = matches!(failure, Some(ClientError::Refused { .. }));
            let stream = match tokio::time::timeout(attempt, (server.connector)()).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    if !answered {
                        failure = Some(ClientError::Io(e));
                    }
                    continue;
                }
                Err(_) => {
                    if !answered {
                        failure = Some(ClientError::Timeout(attempt));
                    }
                    continue;
                }
            };
            if i != first {
                tracing::info!(server = %server.host, "control server failover");
                self.current.store(i, Ordering::Relaxed);
            }
            let last = k + 1 == n;
            let exchange = server.send(stream, method, path, secret, body.clone(), last_event);
            let sent = if last || !idempotent {
                exchange.await
            } else {
                match tokio::time::timeout(attempt, exchange).await {
                    Ok(sent) => sent,
                    Err(_) => Err(ClientError::Timeout(attempt)),
                }
            };
            // A replica that cannot serve now (its database out of reach, catching up, hung)
            // hands the request on, if there is another.
            let unavailable = match &sent {
                Err(ClientError::Refused { status, .. }) => (502..=504).contains(status),
                Err(ClientError::Timeout(_)) => true,
                _ => false,
            };
            if !unavailable || last || !idempotent {
                return sent;
            }
            if !matches!(failure, Some(ClientError::Refused { .. })) || sent_is_refusal(&sent) {
                failure = sent.err();
            }
        }
        // The next attempt starts with the next server.
        self.current.store((first + 1) % n, Ordering::Relaxed);
        Err(failure.unwrap_or(ClientError::Ended))
    }
}

impl Server {
    async fn send(
        &self,
        stream: Box<dyn Stream>,
        method: &str,
        path: &str,
        secret: Option<&str>,
        body: Option<Vec<u8>>,
        last_event: Option<ChangeId>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header("host", &self.host);
        if let Some(s) = secret {
            req = req.header("authorization", format!("Bearer {s}"));
        }
        if let Some(id) = last_event {
            req = req.header("last-event-id", id.to_string());
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadMessage(format!("request: {e}")))?;
        let res = sender.send_request(req).await?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let body = res.into_body().collect().await?.to_bytes();
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
        Err(ClientError::Refused {
            status: status.as_u16(),
            reason,
        })
    }
}

impl ControlClient {
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        secret: Option<&str>,
        body: &impl serde::Serialize,
    ) -> Result<Option<T>, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::BadMessage(e.to_string()))?;
        let exchange = async {
            let res = self.send(method, path, secret, Some(body), None).await?;
            if res.status() == hyper::StatusCode::NO_CONTENT {
                return Ok(None);
            }
            let bytes = res.into_body().collect().await?.to_bytes();
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ClientError::BadMessage(format!("{path}: {e}")))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))?
    }

    /// Registers this node: fetches a challenge, seals `body` (an auth key, or the node's
    /// current secret to renew) with the node's private key, which never leaves this process,
    /// and sends it. The server thereby knows the registrant holds the key it registers.
    pub async fn register(
        &self,
        node_key: &burrow_wg::PrivateKey,
        body: RegisterBody,
    ) -> Result<RegisterResponse, ClientError> {
        let exchange = async {
            let res = self
                .send("GET", "/machine/challenge", None, None, None)
                .await?;
            let bytes = res.into_body().collect().await?.to_bytes();
            serde_json::from_slice::<ChallengeResponse>(&bytes)
                .map_err(|e| ClientError::BadMessage(format!("/machine/challenge: {e}")))
        };
        let challenge = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))??;
        let req = seal_registration(node_key, &challenge, body)
            .map_err(|e| ClientError::BadMessage(format!("the server's challenge: {e}")))?;
        self.call("POST", "/machine/register", None, &req)
            .await?
            .ok_or_else(|| ClientError::BadMessage("an empty registration answer".into()))
    }

    /// Reports this node's candidate endpoints and home DERP region.
    pub async fn post_endpoints(
        &self,
        secret: &str,
        req: &EndpointsRequest,
    ) -> Result<(), ClientError> {
        self.call::<serde_json::Value>("POST", "/machine/endpoints", Some(secret), req)
            .await
            .map(|_| ())
    }

    /// Opens the netmap stream: the whole netmap first, then deltas.
    pub async fn open_map(&self, secret: &str) -> Result<(MapStream, NetMap), ClientError> {
        match self.open_map_since(secret, None).await? {
            (stream, Opened::NetMap(map)) => Ok((stream, *map)),
            (_, Opened::Resumed { .. }) => Err(ClientError::BadMessage(
                "the map stream resumed unasked".into(),
            )),
        }
    }

    /// Opens the netmap stream after change `since` (the last one a stream delivered in full,
    /// [`MapStream::last_change`]): the server resumes with the deltas since then when it
    /// still has them all, or starts again with the whole netmap.
    pub async fn open_map_since(
        &self,
        secret: &str,
        since: Option<ChangeId>,
    ) -> Result<(MapStream, Opened), ClientError> {
        let open = async {
            let res = self
                .send("GET", "/machine/map", Some(secret), None, since)
                .await?;
            let mut stream = MapStream {
                body: res.into_body(),
                buf: Vec::new(),
                last: None,
            };
            match stream.next().await? {
                MapMessage::NetMap(m) => Ok((stream, Opened::NetMap(Box::new(m)))),
                MapMessage::Resumed { since: s } if Some(s) == since => {
                    // Up to `since` unless the event named a later change (nothing followed).
                    stream.last = stream.last.or(Some(s));
                    Ok((stream, Opened::Resumed { since: s }))
                }
                MapMessage::Delta(_) | MapMessage::Resumed { .. } => Err(ClientError::BadMessage(
                    "the map stream did not start with a netmap".into(),
                )),
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, open)
            .await
            .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))?
    }
}

pub use burrow_session::peer_config;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_split_on_blank_lines_and_skip_comments() {
        let mut buf = b": keep-alive\n\ndata: {\"a\":1}\nid: 7\n\ndata:x\n\ndata: partial".to_vec();
        assert_eq!(take_event(&mut buf), Some(Event::default()));
        let event = take_event(&mut buf).unwrap();
        assert_eq!(event.data.as_deref(), Some("{\"a\":1}"));
        assert_eq!(event.id.as_deref(), Some("7"));
        assert_eq!(take_event(&mut buf).unwrap().data.as_deref(), Some("x"));
        assert_eq!(take_event(&mut buf), None);
        assert_eq!(buf, b"data: partial");
    }

    /// A quiet netmap is not a dead stream: the server's keep-alive comments keep it open
    /// (before, only messages counted, and every idle node reconnected after 45 s).
    #[tokio::test]
    async fn keep_alives_hold_a_quiet_stream_open_and_silence_ends_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 4096];
            let _ = conn.read(&mut req).await.unwrap();
            let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
            let map = r#"{"type":"net-map","node":{"id":1,"name":"a","user":"u","tags":[],"addresses":[]},"peers":[],"filter":[]}"#;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            conn.write_all(format!("{head}{}", chunk(&format!("data: {map}\n\n"))).as_bytes())
                .await
                .unwrap();
            // Keep-alives every 50 ms for 600 ms, then a delta, then silence.
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                conn.write_all(chunk(":\n\n").as_bytes()).await.unwrap();
            }
            let delta = r#"{"type":"delta","kind":"peer-remove","id":9}"#;
            conn.write_all(chunk(&format!("data: {delta}\n\n")).as_bytes())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let c = ControlClient::new(&format!("http://{addr}")).unwrap();
        let (mut stream, map) = c.open_map("secret").await.unwrap();
        assert_eq!(map.node.id, 1);
        let idle = Duration::from_millis(300);
        match stream.next_within(idle).await {
            Ok(MapMessage::Delta(burrow_control::Delta::PeerRemove { id: 9 })) => {}
            other => panic!("the delta after 600 ms of keep-alives: {other:?}"),
        }
        assert!(matches!(
            stream.next_within(idle).await,
            Err(ClientError::Timeout(_))
        ));
        server.abort();
    }

    #[test]
    fn urls_give_the_host_header_and_the_path_prefix() {
        let c = ControlClient::new("http://10.0.0.1:8080").unwrap();
        let s = &c.servers[0];
        assert_eq!((s.host.as_str(), s.prefix.as_str()), ("10.0.0.1:8080", ""));
        let c = ControlClient::new("https://control.example/burrow/").unwrap();
        let s = &c.servers[0];
        assert_eq!(
            (s.host.as_str(), s.prefix.as_str()),
            ("control.example", "/burrow")
        );
        assert!(ControlClient::new("ftp://x").is_err());
    }
}
