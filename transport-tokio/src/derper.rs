//! `burrow derper`: the DERP relay over TCP or TLS, with HTTP/1.1 upgrade, `/generate_204`,
//! `/health`, Prometheus `/metrics`, an optional STUN server, and mesh links to other relays.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_derp::{ClientEvent, ConnId, MeshLink, Server, ServerConfig};
use burrow_wg::PrivateKey;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::derp_client::{self, DerpUrl};
use crate::transport::now;

/// How long a client may take to send its request head (and TLS handshake).
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// How long one write to a client may block before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A bidirectional byte stream (plain TCP or TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Relay settings.
#[derive(Debug, Clone)]
pub struct DerperConfig {
    /// The relay's private key.
    pub private_key: PrivateKey,
    /// Shared by the servers of one region.
    pub mesh_key: Option<String>,
    /// Other relays of the region to mesh with.
    pub mesh_with: Vec<DerpUrl>,
    /// TLS, if any.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Per-client rate limit: bytes per second and burst.
    pub rate_limit: Option<(u64, u64)>,
}

struct ConnHandle {
    wake: Arc<Notify>,
    closed: Arc<AtomicBool>,
}

/// State shared by every connection task.
pub struct Relay {
    server: Mutex<Server>,
    conns: Mutex<BTreeMap<ConnId, ConnHandle>>,
    mesh: Mutex<BTreeMap<MeshLink, tokio::sync::mpsc::Sender<bytes::Bytes>>>,
    next_conn: AtomicU64,
    http_requests: AtomicU64,
    connections_total: AtomicU64,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Relay {
    /// A relay (not yet listening).
    pub fn new(config: &DerperConfig) -> Arc<Self> {
        Self::with_rng(config, ChaCha20Rng::from_os_rng())
    }

    /// A relay whose randomness comes from `rng` (the simulator seeds it).
    pub fn with_rng(config: &DerperConfig, rng: ChaCha20Rng) -> Arc<Self> {
        let mut sc = ServerConfig::new(config.private_key.clone());
        sc.mesh_key = config.mesh_key.clone();
        sc.rate_limit = config.rate_limit;
        Arc::new(Relay {
            server: Mutex::new(Server::new(sc, rng)),
            conns: Mutex::new(BTreeMap::new()),
            mesh: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(1),
            http_requests: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            tls: config.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        })
    }

    /// Wakes writers of connections with output; ends connections the server closed; sends
    /// mesh frames.
    fn dispatch(&self, server: &mut Server) {
        let conns = self.conns.lock().expect("conns");
        for id in server.take_woken() {
            if let Some(h) = conns.get(&id) {
                h.wake.notify_one();
            }
        }
        while let Some((id, reason)) = server.poll_close() {
            tracing::info!(conn = id.0, %reason, "closing connection");
            if let Some(h) = conns.get(&id) {
                h.closed.store(true, Ordering::SeqCst);
                h.wake.notify_one();
            }
        }
        let mesh = self.mesh.lock().expect("mesh");
        while let Some((link, frame)) = server.poll_mesh_transmit() {
            if let Some(tx) = mesh.get(&link) {
                // A slow mesh link drops rather than grows without bound.
                let _ = tx.try_send(frame);
            }
        }
    }

    /// Prometheus text for `/metrics`.
    pub fn metrics(&self) -> String {
        let s = self.server.lock().expect("server").stats();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        gauge(
            "derp_clients",
            "Clients connected now.",
            "gauge",
            s.clients as u64,
        );
        gauge(
            "derp_packets_relayed_total",
            "Packets relayed.",
            "counter",
            s.packets_relayed,
        );
        gauge(
            "derp_bytes_relayed_total",
            "Packet bytes relayed.",
            "counter",
            s.bytes_relayed,
        );
        gauge(
            "derp_packets_forwarded_total",
            "Packets forwarded over the mesh.",
            "counter",
            s.packets_forwarded,
        );
        gauge(
            "derp_bad_connections_total",
            "Connections closed for bad input.",
            "counter",
            s.bad_connections,
        );
        gauge(
            "derp_mesh_peers",
            "Mesh links up.",
            "gauge",
            s.mesh_peers as u64,
        );
        gauge(
            "derp_connections_total",
            "Connections accepted.",
            "counter",
            self.connections_total.load(Ordering::Relaxed),
        );
        gauge(
            "derp_http_requests_total",
            "HTTP requests served.",
            "counter",
            self.http_requests.load(Ordering::Relaxed),
        );
        out.push_str("# HELP derp_packets_dropped_total Packets dropped, by reason.\n# TYPE derp_packets_dropped_total counter\n");
        for (reason, n) in [
            (
                "unknown_destination",
                burrow_derp::DropReason::UnknownDestination,
            ),
            ("queue_full", burrow_derp::DropReason::QueueFull),
            ("rate_limited", burrow_derp::DropReason::RateLimited),
        ]
        .map(|(l, r)| (l, s.drops.get(&r).copied().unwrap_or(0)))
        {
            out.push_str(&format!(
                "derp_packets_dropped_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        out
    }
}

impl Relay {
    /// Tells every client the relay is restarting (reconnect in `reconnect_in`, keep trying
    /// for `try_for`), so they come back without operator action.
    pub fn announce_restart(&self, reconnect_in: Duration, try_for: Duration) {
        let mut server = self.server.lock().expect("server");
        server.announce_restart(reconnect_in, try_for);
        self.dispatch(&mut server);
    }
}

/// Runs the relay's timers (keep-alives, handshake deadlines) in a task, until the runtime ends.
pub fn spawn_timers(relay: Arc<Relay>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut server = relay.server.lock().expect("server");
            server.handle_timeout(now());
            relay.dispatch(&mut server);
        }
    });
}

/// Serves one accepted plain-text connection (HTTP, then DERP after the upgrade): for
/// listeners other than tokio's, such as the simulator's. Call [`spawn_timers`] once per relay.
pub async fn serve_stream(
    relay: Arc<Relay>,
    stream: Box<dyn Stream>,
    peer: SocketAddr,
) -> io::Result<()> {
    handle_http(relay, stream, peer).await
}

/// Serves HTTP(S) on `listener` until the task is dropped.
pub async fn serve(relay: Arc<Relay>, listener: TcpListener) -> io::Result<()> {
    spawn_timers(relay.clone());
    loop {
        let (tcp, peer) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let relay = relay.clone();
        tokio::spawn(async move {
            let result = match relay.tls.clone() {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => handle_http(relay, Box::new(tls), peer).await,
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "TLS handshake too slow",
                        )),
                    }
                }
                None => handle_http(relay, Box::new(tcp), peer).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

/// Reads an HTTP/1.1 request head (at most 16 KiB); returns it and any bytes after it.
async fn read_head(stream: &mut Box<dyn Stream>) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP request head too large",
            ));
        }
    }
}

async fn respond(
    stream: &mut Box<dyn Stream>,
    status: &str,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

async fn handle_http(
    relay: Arc<Relay>,
    mut stream: Box<dyn Stream>,
    peer: SocketAddr,
) -> io::Result<()> {
    let (head, rest) = tokio::time::timeout(HANDSHAKE_DEADLINE, read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "HTTP request too slow"))??;
    relay.http_requests.fetch_add(1, Ordering::Relaxed);
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
        return respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            "bad request\n",
        )
        .await;
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let path = req
        .path
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_owned();
    match (req.method.unwrap_or(""), path.as_str()) {
        ("GET", "/derp") => {
            if !header("Upgrade").is_some_and(|u| u.eq_ignore_ascii_case("DERP")) {
                return respond(
                    &mut stream,
                    "426 Upgrade Required",
                    "text/plain",
                    "DERP requires connection upgrade\n",
                )
                .await;
            }
            let fast_start = header("Derp-Fast-Start").as_deref() == Some("1");
            if !fast_start {
                let key = relay.server.lock().expect("server").public_key();
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\nDerp-Public-Key: {}\r\n\r\n",
                    key.0.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
                stream.write_all(head.as_bytes()).await?;
            }
            run_derp(relay, stream, rest, peer).await
        }
        ("GET", "/derp/probe") | ("GET", "/derp/latency-check") => {
            respond(&mut stream, "200 OK", "text/plain", "").await
        }
        ("GET", "/generate_204") => {
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .await?;
            stream.flush().await
        }
        ("GET", "/health") => {
            respond(&mut stream, "200 OK", "text/plain", "derp server ok\n").await
        }
        ("GET", "/metrics") => {
            let body = relay.metrics();
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        ("GET", "/") => {
            respond(
                &mut stream,
                "200 OK",
                "text/plain",
                "This is a burrow DERP relay.\n",
            )
            .await
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
    }
}

/// One DERP connection: a reader feeding the server, a writer draining this connection's
/// queue as fast as the socket takes it.
async fn run_derp(
    relay: Arc<Relay>,
    stream: Box<dyn Stream>,
    already: Vec<u8>,
    peer: SocketAddr,
) -> io::Result<()> {
    let id = ConnId(relay.next_conn.fetch_add(1, Ordering::Relaxed));
    relay.connections_total.fetch_add(1, Ordering::Relaxed);
    let wake = Arc::new(Notify::new());
    let closed = Arc::new(AtomicBool::new(false));
    relay.conns.lock().expect("conns").insert(
        id,
        ConnHandle {
            wake: wake.clone(),
            closed: closed.clone(),
        },
    );
    {
        let mut server = relay.server.lock().expect("server");
        server.accept(now(), id);
        if !already.is_empty() {
            server.handle_bytes(now(), id, &already);
        }
        relay.dispatch(&mut server);
    }
    tracing::debug!(conn = id.0, %peer, "DERP connection");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = {
        let (relay, wake, closed) = (relay.clone(), wake.clone(), closed.clone());
        async move {
            // Everything queued for this connection goes out in one write: one lock and one
            // syscall per wake-up, not per frame.
            let mut batch: Vec<u8> = Vec::new();
            loop {
                loop {
                    batch.clear();
                    relay.server.lock().expect("server").write_transmit_for(
                        now(),
                        id,
                        &mut batch,
                        256 * 1024,
                    );
                    if batch.is_empty() {
                        break;
                    }
                    // A client that stops reading must not pin its writer forever (as
                    // Tailscale's 2 s write deadline).
                    match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&batch)).await {
                        Ok(r) => r?,
                        Err(_) => {
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "client stopped reading",
                            ))
                        }
                    }
                }
                if batch.capacity() > 64 * 1024 {
                    batch = Vec::new(); // an idle connection keeps no large buffer
                }
                wr.flush().await?;
                if closed.load(Ordering::SeqCst) {
                    let _ = wr.shutdown().await;
                    return Ok::<(), io::Error>(());
                }
                wake.notified().await;
            }
        }
    };
    let reader = {
        let (relay, closed) = (relay.clone(), closed.clone());
        async move {
            // Small while idle (idle clients must cost little), larger once traffic fills it.
            let mut buf = vec![0u8; 4096];
            loop {
                let n = rd.read(&mut buf).await?;
                if n == buf.len() && buf.len() < 64 * 1024 {
                    buf.resize(64 * 1024, 0);
                }
                if n == 0 || closed.load(Ordering::SeqCst) {
                    return Ok::<(), io::Error>(());
                }
                let mut server = relay.server.lock().expect("server");
                server.handle_bytes(now(), id, &buf[..n]);
                relay.dispatch(&mut server);
            }
        }
    };
    let result = tokio::select! {
        r = writer => r,
        r = reader => r,
    };
    relay.conns.lock().expect("conns").remove(&id);
    let mut server = relay.server.lock().expect("server");
    server.disconnected(id);
    relay.dispatch(&mut server);
    result
}

/// Keeps a mesh link to another relay: connects as a mesh client, watches its clients, and
/// carries forwarded packets; reconnects with backoff.
pub async fn mesh_link(
    relay: Arc<Relay>,
    link: MeshLink,
    url: DerpUrl,
    key: PrivateKey,
    mesh_key: String,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4096);
        match derp_client::connect_raw(&url, key.clone(), Some(mesh_key.clone()), true).await {
            Ok(mut conn) => {
                backoff = Duration::from_millis(250);
                let own = relay.server.lock().expect("server").public_key();
                if let Some(ClientEvent::Connected { server, .. }) = conn.client.poll_event() {
                    if server == own {
                        tracing::info!(%url, "mesh peer is this relay itself; not meshing with it");
                        return;
                    }
                }
                conn.client.watch_conns();
                relay.mesh.lock().expect("mesh").insert(link, tx);
                relay.server.lock().expect("server").mesh_link_up(link);
                tracing::info!(%url, "mesh link up");
                let r = conn
                    .run(
                        |event| {
                            if let ClientEvent::PeerPresent { key, .. }
                            | ClientEvent::PeerGone { key, .. } = &event
                            {
                                let present = matches!(event, ClientEvent::PeerPresent { .. });
                                relay
                                    .server
                                    .lock()
                                    .expect("server")
                                    .mesh_peer(link, key.0, present);
                            }
                        },
                        &mut rx,
                    )
                    .await;
                tracing::warn!(%url, error = ?r.err(), "mesh link down");
                relay.mesh.lock().expect("mesh").remove(&link);
                relay.server.lock().expect("server").mesh_link_down(link);
            }
            Err(e) => tracing::debug!(%url, error = %e, "mesh connect failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// A fresh self-signed certificate for these host names or IP addresses (for tests and private
/// deployments): the server configuration, the certificate (DER) and its key (PKCS #8 DER).
#[allow(clippy::type_complexity)]
pub fn self_signed(
    names: &[String],
) -> Result<(Arc<rustls::ServerConfig>, Vec<u8>, Vec<u8>), Box<dyn std::error::Error + Send + Sync>>
{
    let cert = rcgen::generate_simple_self_signed(names.to_vec())?;
    let der = cert.cert.der().to_vec();
    let key = cert.key_pair.serialize_der();
    Ok((tls_from_der(der.clone(), key.clone())?, der, key))
}

/// TLS from one certificate (DER) and its PKCS #8 key (DER), e.g. a kept self-signed one.
pub fn tls_from_der(
    cert: Vec<u8>,
    key: Vec<u8>,
) -> Result<Arc<rustls::ServerConfig>, Box<dyn std::error::Error + Send + Sync>> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![rustls::pki_types::CertificateDer::from(cert)],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
    )?;
    Ok(Arc::new(config))
}

/// TLS from PEM files.
pub fn tls_from_files(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, Box<dyn std::error::Error + Send + Sync>> {
    let certs = rustls_pemfile::certs(&mut io::BufReader::new(std::fs::File::open(cert)?))
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut io::BufReader::new(std::fs::File::open(key)?))?
        .ok_or("no private key in the key file")?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}
