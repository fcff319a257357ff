//! `burrow derper`: the DERP relay over TCP or TLS, with HTTP/1.1 upgrade, `/generate_204`,
//! `/health`, Prometheus `/metrics`, an optional STUN server, and mesh links to other relays.
//!
//! Admission: the open-files limit is raised at start and the caps are fitted under it;
//! unauthenticated connections pass a [`PreAuthGate`] (per source, and globally with the
//! oldest closed first); accept errors are logged and backed off, never fatal; with
//! [`VerifyClients`] each new client key is checked with the control server.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_derp::{ConnId, MeshKey, MeshLink, PreAuthGate, Server, ServerConfig, Ticket, Verdict};
use burrow_wg::{PrivateKey, PublicKey};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::sync::Notify;

use crate::derp_client::DerpUrl;
use crate::transport::now;

/// File descriptors kept aside from the caps: listener, STUN, mesh links, verification
/// lookups, logs.
const RESERVED_FDS: u64 = 128;
/// How long a verification lookup may take before the client is refused (not cached).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

// Moved to `crate::transport`; re-exported so existing paths keep working.
pub use crate::transport::Stream;
// Moved to `crate::tls`; re-exported so existing paths keep working.
pub use crate::tls::{self_signed, tls_from_der, tls_from_files};

mod mesh;
mod metrics;
mod serve;
mod verify;

pub use mesh::mesh_link;
pub use serve::{serve, serve_stream};
pub use verify::{VerifyClients, VERIFY_CONCURRENCY};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_default_to_what_memory_allows() {
        assert_eq!(Admission::default().max_clients, 20_000);
    }
}
