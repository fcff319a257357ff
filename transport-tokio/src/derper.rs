//! `burrow derper`: the DERP relay over TCP or TLS, with HTTP/1.1 upgrade, `/generate_204`,
//! `/health`, Prometheus `/metrics`, an optional STUN server, and mesh links to other relays.
//!
//! Admission: the open-files limit is raised at start and the caps are fitted under it;
//! unauthenticated connections pass a [`PreAuthGate`] (per source, and globally with the
//! oldest closed first); accept errors are logged and backed off, never fatal; with
//! [`VerifyClients`] each new client key is checked with the control server.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_derp::{
    ClientEvent, ConnId, MeshKey, MeshLink, PreAuthGate, Server, ServerConfig, Ticket, Verdict,
};
use burrow_wg::{PrivateKey, PublicKey};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::derp_client::{self, DerpUrl};
use crate::transport::now;

/// How long a client may take to send its request head (and TLS handshake).
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// How long one write to a client may block before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Back-off after a failed accept (out of file descriptors, kernel memory): doubles from the
/// first to the second while failures last.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// File descriptors kept aside from the caps: listener, STUN, mesh links, verification
/// lookups, logs.
const RESERVED_FDS: u64 = 128;
/// How long a verification lookup may take before the client is refused (not cached).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// Verification lookups under way at once, and so connections to the control server (kept
/// alive and reused): new client keys cannot multiply the control server's load.
pub const VERIFY_CONCURRENCY: usize = 16;
/// A connection's read buffer while idle; it grows to [`LARGE_READ`] while data streams in
/// and goes back before the connection waits again.
const SMALL_READ: usize = 4096;
/// See [`SMALL_READ`].
const LARGE_READ: usize = 64 * 1024;

// Moved to `crate::transport`; re-exported so existing paths keep working.
pub use crate::transport::Stream;
// Moved to `crate::tls`; re-exported so existing paths keep working.
pub use crate::tls::{self_signed, tls_from_der, tls_from_files};

/// Relay settings.
#[derive(Clone)]
pub struct DerperConfig {
    /// The relay's private key.
    pub private_key: PrivateKey,
    /// Shared by the servers of one region (checked: at least 32 bytes).
    pub mesh_key: Option<MeshKey>,
    /// Other relays of the region to mesh with.
    pub mesh_with: Vec<DerpUrl>,
    /// TLS, if any.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Per-client rate limit: bytes per second and burst.
    pub rate_limit: Option<(u64, u64)>,
    /// Connection caps and client verification.
    pub admission: Admission,
}

impl DerperConfig {
    /// A plain relay with this key and default caps: no mesh, TLS, rate limit or verification.
    pub fn new(private_key: PrivateKey) -> Self {
        DerperConfig {
            private_key,
            mesh_key: None,
            mesh_with: Vec::new(),
            tls: None,
            rate_limit: None,
            admission: Admission::default(),
        }
    }
}

impl std::fmt::Debug for DerperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DerperConfig")
            .field("public_key", &self.private_key.public_key())
            .field("mesh_key", &self.mesh_key.as_ref().map(|_| "<redacted>"))
            .field("mesh_with", &self.mesh_with)
            .field("tls", &self.tls.is_some())
            .field("rate_limit", &self.rate_limit)
            .field("admission", &self.admission)
            .finish()
    }
}

/// Who may connect: caps on connections that have not authenticated yet and on clients,
/// globally and per source (an IPv4 address or an IPv6 /64, and four times that per /48;
/// loopback is capped only globally), and optional verification of client keys with the
/// control server.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Unauthenticated connections (TLS, HTTP head, ClientInfo) at once; when full the
    /// oldest is closed to make room.
    pub max_pending: usize,
    /// Unauthenticated connections at once from one source; more are closed at once.
    pub max_pending_per_ip: usize,
    /// Clients at once (mesh peers are never refused).
    pub max_clients: usize,
    /// Clients at once from one source.
    pub max_clients_per_ip: usize,
    /// Ask the control server about each new client key.
    pub verify: Option<VerifyClients>,
}

impl Default for Admission {
    /// 1,024 pending (64 per source), [`burrow_derp::server::DEFAULT_MAX_CLIENTS`] clients
    /// (1,000 per source), no verification.
    fn default() -> Self {
        Admission {
            max_pending: 1024,
            max_pending_per_ip: 64,
            max_clients: burrow_derp::server::DEFAULT_MAX_CLIENTS,
            max_clients_per_ip: 1000,
            verify: None,
        }
    }
}

impl Admission {
    /// Lowers the global caps so that pending connections plus clients fit in `fd_limit`
    /// open files (with some kept aside): the relay then refuses connections rather than
    /// running out of descriptors.
    pub fn fit_to_fd_limit(mut self, fd_limit: u64) -> Self {
        let avail = usize::try_from(fd_limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
        if self.max_pending.saturating_add(self.max_clients) > avail {
            self.max_pending = self.max_pending.min((avail / 4).max(1));
            self.max_clients = self.max_clients.min(avail.saturating_sub(self.max_pending));
        }
        self
    }
}

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

/// Raises the soft open-files limit to the hard one (as Tailscale's derper does: systemd's
/// default soft limit of 1,024 is a few hundred clients); returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return Some(soft);
    }
    let mut target = hard;
    if hard == RLIM_INFINITY {
        // Linux refuses more than fs.nr_open.
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => Some(target),
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "could not raise the open-files limit");
            Some(soft)
        }
    }
}

struct ConnHandle {
    wake: Arc<Notify>,
    closed: Arc<AtomicBool>,
}

/// The pre-auth gate and how to reach each pending connection's task.
struct Gate {
    gate: PreAuthGate,
    kicks: BTreeMap<Ticket, Arc<Notify>>,
}

/// A connection's place at the gate until it authenticates or ends.
struct PendingSlot {
    relay: Arc<Relay>,
    ticket: Ticket,
    kick: Arc<Notify>,
    released: AtomicBool,
}

impl PendingSlot {
    /// The connection authenticated (or ended): it no longer counts, and is not evicted.
    fn release(&self) {
        if !self.released.swap(true, Ordering::SeqCst) {
            let mut g = self.relay.gate.lock().expect("gate");
            g.gate.release(self.ticket);
            g.kicks.remove(&self.ticket);
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// State shared by every connection task.
pub struct Relay {
    server: Mutex<Server>,
    conns: Mutex<BTreeMap<ConnId, ConnHandle>>,
    mesh: Mutex<BTreeMap<MeshLink, tokio::sync::mpsc::Sender<bytes::Bytes>>>,
    gate: Mutex<Gate>,
    verify: Option<VerifyClients>,
    verify_tx: tokio::sync::mpsc::UnboundedSender<PublicKey>,
    verify_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<PublicKey>>>,
    next_conn: AtomicU64,
    http_requests: AtomicU64,
    connections_total: AtomicU64,
    pending_refused: AtomicU64,
    pending_evicted: AtomicU64,
    accept_errors: AtomicU64,
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
        let a = &config.admission;
        sc.max_clients = a.max_clients;
        sc.max_clients_per_ip = a.max_clients_per_ip;
        sc.verify_clients = a.verify.is_some();
        let (verify_tx, verify_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Relay {
            server: Mutex::new(Server::new(sc, rng)),
            conns: Mutex::new(BTreeMap::new()),
            mesh: Mutex::new(BTreeMap::new()),
            gate: Mutex::new(Gate {
                gate: PreAuthGate::new(a.max_pending, a.max_pending_per_ip),
                kicks: BTreeMap::new(),
            }),
            verify: a.verify.clone(),
            verify_tx,
            verify_rx: Mutex::new(Some(verify_rx)),
            next_conn: AtomicU64::new(1),
            http_requests: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            pending_refused: AtomicU64::new(0),
            pending_evicted: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            tls: config.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        })
    }

    /// A place at the gate for a new connection from `ip`, or None (close it). When the
    /// gate is full, the oldest pending connection is told to close.
    fn admit_pending(self: &Arc<Self>, ip: IpAddr) -> Option<Arc<PendingSlot>> {
        let mut g = self.gate.lock().expect("gate");
        match g.gate.admit(ip) {
            Err(e) => {
                self.pending_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%ip, reason = %e, "connection refused");
                None
            }
            Ok((ticket, evicted)) => {
                if let Some(kick) = evicted.and_then(|t| g.kicks.remove(&t)) {
                    self.pending_evicted.fetch_add(1, Ordering::Relaxed);
                    kick.notify_one();
                }
                let kick = Arc::new(Notify::new());
                g.kicks.insert(ticket, kick.clone());
                Some(Arc::new(PendingSlot {
                    relay: self.clone(),
                    ticket,
                    kick,
                    released: AtomicBool::new(false),
                }))
            }
        }
    }

    /// Wakes writers of connections with output; ends connections the server closed; sends
    /// mesh frames; hands keys to verify to the verifier task.
    fn dispatch(&self, server: &mut Server) {
        while let Some(key) = server.poll_verify() {
            let _ = self.verify_tx.send(key);
        }
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
        gauge(
            "derp_pending_connections",
            "Connections not authenticated yet.",
            "gauge",
            self.gate.lock().expect("gate").gate.len() as u64,
        );
        gauge(
            "derp_pending_refused_total",
            "Connections closed at once: their source had too many pending.",
            "counter",
            self.pending_refused.load(Ordering::Relaxed),
        );
        gauge(
            "derp_pending_evicted_total",
            "Pending connections closed to make room for newer ones.",
            "counter",
            self.pending_evicted.load(Ordering::Relaxed),
        );
        gauge(
            "derp_accept_errors_total",
            "Failed accepts (e.g. out of file descriptors), each followed by a back-off.",
            "counter",
            self.accept_errors.load(Ordering::Relaxed),
        );
        gauge(
            "derp_replayed_client_infos_total",
            "Handshakes refused as replays of an earlier ClientInfo.",
            "counter",
            s.replayed_client_infos,
        );
        gauge(
            "derp_refused_clients_total",
            "Clients refused by a cap or by verification.",
            "counter",
            s.refused_clients,
        );
        gauge(
            "derp_pending_verifications",
            "Client keys waiting for the control server's answer.",
            "gauge",
            s.pending_verifications as u64,
        );
        if let Some(v) = &self.verify {
            gauge(
                "derp_verify_connections_total",
                "Connections opened to the control server for client verification.",
                "counter",
                v.connections_opened(),
            );
        }
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

/// Runs the relay's timers (keep-alives, handshake deadlines) in a task, until the runtime
/// ends; with verification, also the task that asks the control server about new keys.
pub fn spawn_timers(relay: Arc<Relay>) {
    let verify_rx = relay.verify_rx.lock().expect("verify").take();
    if let (Some(verify), Some(mut rx)) = (relay.verify.clone(), verify_rx) {
        let relay = relay.clone();
        tokio::spawn(async move {
            // One lookup per key at a time; the server bounds how many keys wait.
            while let Some(key) = rx.recv().await {
                let (relay, verify) = (relay.clone(), verify.clone());
                tokio::spawn(async move {
                    let verdict = match tokio::time::timeout(VERIFY_TIMEOUT, verify.ask(&key)).await
                    {
                        Ok(Ok(true)) => Verdict::Allowed,
                        Ok(Ok(false)) => Verdict::Denied,
                        Ok(Err(e)) => {
                            tracing::warn!(%key, error = %e, "client verification failed");
                            Verdict::Unknown
                        }
                        Err(_) => {
                            tracing::warn!(%key, "client verification timed out");
                            Verdict::Unknown
                        }
                    };
                    tracing::debug!(%key, ?verdict, "client verified");
                    let mut server = relay.server.lock().expect("server");
                    server.verified(now(), &key, verdict);
                    relay.dispatch(&mut server);
                });
            }
        });
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut server = relay.server.lock().expect("server");
            server.handle_timeout(now());
            relay.dispatch(&mut server);
        }
    });
}

/// Serves one accepted connection (TLS if configured, HTTP, then DERP after the upgrade): for
/// listeners other than tokio's, such as the simulator's. Call [`spawn_timers`] once per relay.
pub async fn serve_stream(
    relay: Arc<Relay>,
    stream: Box<dyn Stream>,
    peer: SocketAddr,
) -> io::Result<()> {
    let Some(slot) = relay.admit_pending(peer.ip()) else {
        return Ok(()); // dropping the stream closes it
    };
    let kick = slot.kick.clone();
    let work = async {
        match relay.tls.clone() {
            Some(acceptor) => {
                match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => handle_http(relay.clone(), Box::new(tls), peer, slot).await,
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS handshake too slow",
                    )),
                }
            }
            None => handle_http(relay.clone(), stream, peer, slot).await,
        }
    };
    // Evicted while still unauthenticated: a newer connection needed the place.
    tokio::select! {
        r = work => r,
        () = kick.notified() => Err(io::Error::other("closed to make room for newer connections")),
    }
}

/// Whether an accept error concerns only the connection being accepted (retry at once),
/// rather than the process (out of descriptors or memory: back off).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Serves HTTP(S) on `listener` until the task is dropped. Accept errors never end it: they
/// are logged and followed by a back-off (10 ms doubling to 1 s), as out of file
/// descriptors is a state that passes.
pub async fn serve(relay: Arc<Relay>, listener: TcpListener) -> io::Result<()> {
    spawn_timers(relay.clone());
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF.0;
                accepted
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                relay.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let relay = relay.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_stream(relay, Box::new(tcp), peer).await {
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
    slot: Arc<PendingSlot>,
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
            run_derp(relay, stream, rest, peer, slot).await
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

/// A connection's read buffer: [`SMALL_READ`] while idle (idle clients must cost little),
/// [`LARGE_READ`] while data streams in, given back before the connection waits again (it
/// used to stay at 64 KiB for good after one large read).
struct ReadBuf {
    buf: Vec<u8>,
}

impl ReadBuf {
    fn new() -> Self {
        ReadBuf {
            buf: vec![0; SMALL_READ],
        }
    }

    /// Reads once from `rd`; the bytes are then [`ReadBuf::filled`].
    async fn read<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> io::Result<usize> {
        use std::future::Future;
        if self.buf.len() > SMALL_READ {
            // Large: read at once what is already there; if nothing is, shrink, then wait.
            let ready = {
                let mut read = std::pin::pin!(rd.read(&mut self.buf));
                std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await
            };
            match ready {
                std::task::Poll::Ready(r) => return r,
                std::task::Poll::Pending => self.buf = vec![0; SMALL_READ],
            }
        }
        let n = rd.read(&mut self.buf).await?;
        if n == self.buf.len() && self.buf.len() < LARGE_READ {
            self.buf.resize(LARGE_READ, 0);
        }
        Ok(n)
    }

    fn filled(&self, n: usize) -> &[u8] {
        &self.buf[..n]
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// One DERP connection: a reader feeding the server, a writer draining this connection's
/// queue as fast as the socket takes it.
async fn run_derp(
    relay: Arc<Relay>,
    stream: Box<dyn Stream>,
    already: Vec<u8>,
    peer: SocketAddr,
    slot: Arc<PendingSlot>,
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
        server.accept_from(now(), id, Some(peer.ip()));
        if !already.is_empty() {
            server.handle_bytes(now(), id, &already);
        }
        relay.dispatch(&mut server);
    }
    // Leaves the gate once the server admitted the client (seen by whichever half first).
    let admitted = Arc::new(AtomicBool::new(false));
    let note_admitted = {
        let (slot, admitted) = (slot.clone(), admitted.clone());
        move |server: &Server| {
            if !admitted.load(Ordering::Relaxed) && server.is_admitted(id) {
                admitted.store(true, Ordering::Relaxed);
                slot.release();
            }
        }
    };
    drop(slot);
    tracing::debug!(conn = id.0, %peer, "DERP connection");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = {
        let (relay, wake, closed) = (relay.clone(), wake.clone(), closed.clone());
        let note_admitted = note_admitted.clone();
        async move {
            // Everything queued for this connection goes out in one write: one lock and one
            // syscall per wake-up, not per frame.
            let mut batch: Vec<u8> = Vec::new();
            loop {
                loop {
                    batch.clear();
                    {
                        let mut server = relay.server.lock().expect("server");
                        server.write_transmit_for(now(), id, &mut batch, 256 * 1024);
                        note_admitted(&server);
                    }
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
                if batch.capacity() > SMALL_READ {
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
            let mut buf = ReadBuf::new();
            loop {
                let n = buf.read(&mut rd).await?;
                if n == 0 || closed.load(Ordering::SeqCst) {
                    return Ok::<(), io::Error>(());
                }
                let mut server = relay.server.lock().expect("server");
                server.handle_bytes(now(), id, buf.filled(n));
                note_admitted(&server);
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
    mesh_key: MeshKey,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4096);
        let secret = Some(mesh_key.expose().to_owned());
        match derp_client::connect_raw(&url, key.clone(), secret, true).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// Security review follow-up (derper memory): the read buffer grows while data streams
    /// in and is given back as soon as the connection has nothing more to read, before it
    /// waits (it used to stay at 64 KiB for the life of the connection).
    #[tokio::test]
    async fn the_read_buffer_shrinks_before_the_connection_waits() {
        let (mut ours, theirs) = tokio::io::duplex(256 * 1024);
        let (mut rd, _wr) = tokio::io::split(theirs);
        ours.write_all(&[7u8; 100_000]).await.unwrap();
        let mut buf = ReadBuf::new();
        let mut total = 0;
        while total < 100_000 {
            let n = buf.read(&mut rd).await.unwrap();
            assert!(buf.filled(n).iter().all(|b| *b == 7));
            total += n;
        }
        assert!(buf.capacity() >= LARGE_READ, "grew while data streamed in");
        // Nothing more to read: the next read waits, with the small buffer.
        assert!(buf.read(&mut rd).now_or_never().is_none());
        assert_eq!(buf.capacity(), SMALL_READ);
        ours.write_all(b"more").await.unwrap();
        let n = buf.read(&mut rd).await.unwrap();
        assert_eq!(buf.filled(n), b"more");
    }

    #[test]
    fn caps_default_to_what_memory_allows() {
        assert_eq!(Admission::default().max_clients, 20_000);
    }
}
