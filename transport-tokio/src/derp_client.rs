//! A tokio DERP client: connects over HTTP(S) upgrade, runs [`burrow_derp::Client`], and (as
//! [`DerpClient`]) reconnects with jittered backoff, re-sending NotePreferred.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use burrow_derp::{Client, ClientEvent};
use burrow_wg::{PrivateKey, PublicKey};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::transport::Stream;

pub mod happy_eyeballs;
pub use happy_eyeballs::{race, sort_addresses, CONNECTION_ATTEMPT_DELAY};

/// Where a relay is: `http://host:port/derp` or `https://host[:port]/derp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerpUrl {
    /// TLS or not.
    pub tls: bool,
    /// Host name or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path (normally `/derp`).
    pub path: String,
}

impl FromStr for DerpUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "{s:?}: expected http://HOST:PORT/derp or https://HOST[:PORT]/derp"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/derp"),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            // [v6]:port or [v6]
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse::<u16>().map_err(|_| format!("{s:?}: bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("{s:?}: junk after ']'")),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("{s:?}: bad port"))?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("{s:?}: no host"));
        }
        Ok(DerpUrl {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

impl fmt::Display for DerpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// Extra trust anchors for TLS (a self-signed relay's certificate), on top of the web PKI.
pub type ExtraRoots = Vec<Vec<u8>>;

fn tls_connector(extra_roots: &ExtraRoots) -> io::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in extra_roots {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(io::Error::other)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The addresses to dial for a relay whose control server gave fixed `ipv4`/`ipv6` (a DERP
/// map's), with the URL's port, in Happy Eyeballs order. A control server is not trusted to
/// aim the node anywhere: an unspecified, multicast, broadcast or IPv4-mapped address, or a
/// loopback one for a relay whose URL is not itself on loopback, is left out with a warning.
/// Empty: resolve the URL's host as without fixed addresses.
pub fn region_dial_addrs(
    url: &DerpUrl,
    ipv4: Option<std::net::Ipv4Addr>,
    ipv6: Option<std::net::Ipv6Addr>,
) -> Vec<SocketAddr> {
    let url_loopback = url.host.eq_ignore_ascii_case("localhost")
        || url
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let ips = ipv6
        .map(std::net::IpAddr::V6)
        .into_iter()
        .chain(ipv4.map(std::net::IpAddr::V4));
    let usable = ips.filter(|&ip| {
        let bad = match ip {
            std::net::IpAddr::V4(v4) => {
                v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
            }
            std::net::IpAddr::V6(v6) => {
                v6.is_unspecified() || v6.is_multicast() || v6.to_ipv4_mapped().is_some()
            }
        };
        let why = if bad {
            "not an address to connect to"
        } else if ip.is_loopback() && !url_loopback {
            "loopback, for a relay whose URL is not"
        } else {
            return true;
        };
        tracing::warn!(%url, %ip, why, "the control server's relay address ignored");
        false
    });
    sort_addresses(usable.map(|ip| SocketAddr::new(ip, url.port)))
}

/// The URL's host's addresses (a name's IPv6 and IPv4 addresses, or the IP it is) with its
/// port, in the order Happy Eyeballs tries them ([`sort_addresses`]).
pub async fn resolve(url: &DerpUrl) -> io::Result<Vec<SocketAddr>> {
    let addrs = tokio::net::lookup_host((url.host.as_str(), url.port)).await?;
    Ok(sort_addresses(addrs))
}

/// A TCP connection to the URL's host and port (every address of both families, raced
/// Happy Eyeballs style: see [`happy_eyeballs`]), inside TLS for https:// (web PKI roots plus
/// `roots`).
pub async fn connect_stream(url: &DerpUrl, roots: &ExtraRoots) -> io::Result<Box<dyn Stream>> {
    let addrs = resolve(url).await?;
    connect_stream_to(url, &addrs, roots).await
}

/// [`connect_stream`] to known addresses (a DERP map node's fixed IPv4 and IPv6, see
/// [`burrow_derp::DerpNode::dial_addrs`]), tried in the order given; the URL still names the
/// host for TLS and HTTP.
pub async fn connect_stream_to(
    url: &DerpUrl,
    addrs: &[SocketAddr],
    roots: &ExtraRoots,
) -> io::Result<Box<dyn Stream>> {
    let (addr, tcp) = race(
        addrs,
        CONNECTION_ATTEMPT_DELAY,
        TcpStream::connect::<SocketAddr>,
    )
    .await
    .map_err(|e| io::Error::new(e.kind(), format!("connecting to {url}: {e}")))?;
    tracing::debug!(%url, %addr, "relay connected");
    let _ = tcp.set_nodelay(true);
    Ok(if url.tls {
        let name =
            rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(io::Error::other)?;
        Box::new(tls_connector(roots)?.connect(name, tcp).await?)
    } else {
        Box::new(tcp)
    })
}

/// A connection taken apart: its read half, write half and protocol state.
pub type ConnParts = (
    ReadHalf<Box<dyn Stream>>,
    WriteHalf<Box<dyn Stream>>,
    Client,
);

/// An authenticated DERP connection.
pub struct RawConn {
    rd: ReadHalf<Box<dyn Stream>>,
    wr: WriteHalf<Box<dyn Stream>>,
    /// The protocol state.
    pub client: Client,
}

/// Connects, upgrades, and completes the DERP handshake (10 s limit).
pub async fn connect_raw(
    url: &DerpUrl,
    key: PrivateKey,
    mesh_key: Option<String>,
    fast_start: bool,
) -> io::Result<RawConn> {
    connect_with_roots(url, key, mesh_key, fast_start, &Vec::new()).await
}

/// [`connect_raw`] trusting extra roots.
pub async fn connect_with_roots(
    url: &DerpUrl,
    key: PrivateKey,
    mesh_key: Option<String>,
    fast_start: bool,
    roots: &ExtraRoots,
) -> io::Result<RawConn> {
    connect_via(url, &[], key, mesh_key, fast_start, roots).await
}

/// [`connect_with_roots`] dialling `dial` (the region's fixed addresses, raced in the order
/// given) instead of resolving the URL's host; empty `dial` resolves it. The URL still names
/// the host for TLS and HTTP.
pub async fn connect_via(
    url: &DerpUrl,
    dial: &[SocketAddr],
    key: PrivateKey,
    mesh_key: Option<String>,
    fast_start: bool,
    roots: &ExtraRoots,
) -> io::Result<RawConn> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let stream = match dial {
            [] => connect_stream(url, roots).await?,
            addrs => connect_stream_to(url, addrs, roots).await?,
        };
        upgrade(
            stream,
            url,
            key,
            mesh_key,
            fast_start,
            ChaCha20Rng::from_os_rng(),
        )
        .await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "DERP handshake timed out"))?
}

/// Upgrades an open stream to DERP and completes the handshake: for streams other than
/// tokio's TCP (the simulator's), with the client's randomness from `rng`.
pub async fn upgrade(
    mut stream: Box<dyn Stream>,
    url: &DerpUrl,
    key: PrivateKey,
    mesh_key: Option<String>,
    fast_start: bool,
    rng: ChaCha20Rng,
) -> io::Result<RawConn> {
    // An IPv6 literal goes in brackets (RFC 9110 §7.2), as proxies in front of a relay expect.
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n{}\r\n",
        url.path,
        if fast_start {
            "Derp-Fast-Start: 1\r\n"
        } else {
            ""
        }
    );
    stream.write_all(request.as_bytes()).await?;
    let mut leftover = Vec::new();
    if !fast_start {
        let mut head = Vec::new();
        let mut byte = [0u8; 1024];
        loop {
            let n = stream.read(&mut byte).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            head.extend_from_slice(&byte[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                leftover = head.split_off(end + 4);
                break;
            }
            if head.len() > 16 * 1024 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too large",
                ));
            }
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("relay refused the upgrade: {line}"),
            ));
        }
    }
    let mut client = Client::new(key, None, mesh_key, rng);
    client.handle_bytes(&leftover).map_err(io::Error::other)?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = vec![0u8; 4096];
    while !client.is_ready() {
        while let Some(b) = client.poll_transmit() {
            wr.write_all(&b).await?;
        }
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        client.handle_bytes(&buf[..n]).map_err(io::Error::other)?;
    }
    Ok(RawConn { rd, wr, client })
}

impl RawConn {
    /// The connection's halves and protocol state, for load generators.
    pub fn into_parts(self) -> ConnParts {
        (self.rd, self.wr, self.client)
    }

    /// Runs until the connection ends: writes raw frames from `outgoing` and whatever the
    /// client queues, reads frames and hands each event to `on_event`.
    pub async fn run(
        mut self,
        mut on_event: impl FnMut(ClientEvent),
        outgoing: &mut mpsc::Receiver<bytes::Bytes>,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        loop {
            write_queued(&mut self.client, &mut self.wr, &mut out).await?;
            while let Some(e) = self.client.poll_event() {
                on_event(e);
            }
            tokio::select! {
                r = self.rd.read(&mut buf) => {
                    let n = r?;
                    if n == 0 {
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                    }
                    self.client.handle_bytes(&buf[..n]).map_err(io::Error::other)?;
                }
                frame = outgoing.recv() => match frame {
                    Some(f) => {
                        // Frames already waiting join this one's write.
                        out.clear();
                        out.extend_from_slice(&f);
                        while out.len() < WRITE_BYTES {
                            match outgoing.try_recv() {
                                Ok(f) => out.extend_from_slice(&f),
                                Err(_) => break,
                            }
                        }
                        write_within(&mut self.wr, &out).await?;
                    }
                    None => return Ok(()),
                },
            }
        }
    }
}

/// Connection state a [`DerpClient`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerpState {
    /// Connecting, or waiting to reconnect after `last_error`.
    Connecting {
        /// Why the last attempt or connection failed.
        last_error: Option<String>,
    },
    /// Authenticated to the relay.
    Connected,
}

/// A packet for the relay.
type Command = (PublicKey, Vec<u8>);

/// Packets waiting for the relay connection, at most; more are dropped and counted
/// ([`DerpClient::dropped`]), as UDP would drop them, instead of growing without bound when
/// the relay stops reading.
pub const COMMAND_QUEUE: usize = 1024;

/// Disco messages (pings, CallMeMaybe, NatInfo, port predictions) wait in a lane of their own
/// and go out before queued data: a relay path saturated by data must not starve the messages
/// that would move that data to a direct path.
pub const CONTROL_QUEUE: usize = 64;

/// How long one write to the relay may block before the connection is taken for dead (the
/// relay stopped reading) and replaced.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of frames one write to the relay carries at most (it may carry one frame more).
const WRITE_BYTES: usize = 256 * 1024;
/// Packets taken off the queues before the frames they make are written: one system call
/// (and one TLS flush) per wake-up, not per packet.
const SEND_BATCH: usize = 32;

/// Writes what `client` has queued, many frames per write.
async fn write_queued<W: tokio::io::AsyncWrite + Unpin>(
    client: &mut Client,
    wr: &mut W,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        out.clear();
        if !client.write_transmit(out, WRITE_BYTES) {
            break;
        }
        write_within(wr, out).await?;
    }
    if out.capacity() > 4 * WRITE_BYTES {
        *out = Vec::new();
    }
    Ok(())
}

/// Writes all of `bytes`, or fails after [`WRITE_TIMEOUT`].
async fn write_within<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    bytes: &[u8],
) -> io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(bytes))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the relay stopped reading (write timed out)",
            )
        })?
}

/// Longest wait a relay's Restarting may impose before the next attempt: a hostile relay, or
/// anyone injecting into plain-HTTP DERP, must not park a node for weeks.
pub const MAX_RESTART_WAIT: Duration = Duration::from_secs(30);
/// Longest window of quick retries a Restarting may ask for.
pub const MAX_RESTART_TRY_FOR: Duration = Duration::from_secs(300);
/// Pace of the retries within a Restarting's try-for window (jittered ±25 %).
pub const RESTART_RETRY: Duration = Duration::from_millis(250);

/// What a Restarting asks, within bounds: wait `reconnect_in` (at most [`MAX_RESTART_WAIT`]),
/// then retry every [`RESTART_RETRY`] for `try_for` (at most [`MAX_RESTART_TRY_FOR`]).
fn restart_plan(reconnect_in: Duration, try_for: Duration) -> (Duration, Duration) {
    (
        reconnect_in.min(MAX_RESTART_WAIT),
        try_for.min(MAX_RESTART_TRY_FOR),
    )
}

/// A DERP client that stays connected: reconnects with jittered exponential backoff
/// (250 ms to 10 s), honours Restarting (within bounds, see [`MAX_RESTART_WAIT`]), and
/// re-sends NotePreferred after each reconnect. Outgoing packets wait in a bounded queue
/// ([`COMMAND_QUEUE`]); a write blocked for [`WRITE_TIMEOUT`] ends the connection.
pub struct DerpClient {
    commands: mpsc::Sender<Command>,
    control: mpsc::Sender<Command>,
    preferred: watch::Sender<Option<bool>>,
    dropped: Arc<AtomicU64>,
    /// Packets and peer events from the relay.
    pub events: mpsc::Receiver<ClientEvent>,
    /// The connection state.
    pub state: watch::Receiver<DerpState>,
}

impl DerpClient {
    /// Starts the client task.
    pub fn spawn(url: DerpUrl, key: PrivateKey, roots: ExtraRoots) -> Self {
        Self::spawn_to(url, Vec::new(), key, roots)
    }

    /// Starts the client task dialling `dial` (a region's fixed addresses, see
    /// [`region_dial_addrs`]) on every (re)connect; empty `dial` resolves the URL's host.
    pub fn spawn_to(
        url: DerpUrl,
        dial: Vec<SocketAddr>,
        key: PrivateKey,
        roots: ExtraRoots,
    ) -> Self {
        let label = url.to_string();
        Self::spawn_with(
            label,
            move || {
                let (url, dial, key, roots) =
                    (url.clone(), dial.clone(), key.clone(), roots.clone());
                async move { connect_via(&url, &dial, key, None, false, &roots).await }
            },
            ChaCha20Rng::from_os_rng(),
        )
    }

    /// Starts the client task with its own way to connect (the simulator's TCP) and its
    /// back-off jitter drawn from `rng`.
    pub fn spawn_with<F, Fut>(label: String, connect: F, mut rng: ChaCha20Rng) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = io::Result<RawConn>> + Send + 'static,
    {
        let (commands, cmd_rx) = mpsc::channel::<Command>(COMMAND_QUEUE);
        let (control, control_rx) = mpsc::channel::<Command>(CONTROL_QUEUE);
        let mut lanes = Lanes {
            control: control_rx,
            data: cmd_rx,
            streak: 0,
        };
        let (preferred_tx, mut pref_rx) = watch::channel(None::<bool>);
        // Bounded: when the engine falls behind, the connection stops being read and the
        // relay's own per-client queue drops (audit #8), instead of this process growing.
        let (ev_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (state_tx, state) = watch::channel(DerpState::Connecting { last_error: None });
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            let mut held = Held::default();
            // Until when a relay's Restarting asked for quick retries.
            let mut quick_until: Option<tokio::time::Instant> = None;
            loop {
                let mut wait = None;
                let connect = connect();
                // While connecting, recent sends are held (a few, briefly) and a dropped handle
                // ends the task.
                let attempt = tokio::select! {
                    r = connect => Some(r),
                    closed = hold_while_disconnected(&mut lanes, &mut held) => { let () = closed; None }
                };
                let Some(attempt) = attempt else { return };
                let error = match attempt {
                    Ok(mut conn) => {
                        let up_since = tokio::time::Instant::now();
                        quick_until = None;
                        if let Some(p) = *pref_rx.borrow_and_update() {
                            conn.client.note_preferred(p);
                        }
                        let _ = state_tx.send(DerpState::Connected);
                        for (dst, data) in held.take_fresh() {
                            conn.client.send_packet(&dst, &data);
                        }
                        let r = drive(&mut conn, &mut lanes, &ev_tx, &mut pref_rx, &mut wait).await;
                        // Back off afresh only after a connection that lasted: one that is accepted
                        // and dropped at once must not be retried every 250 ms forever.
                        if up_since.elapsed() >= Duration::from_secs(10) {
                            backoff = Duration::from_millis(250);
                        }
                        match r {
                            Ok(()) => return, // the handle was dropped
                            Err(e) => e.to_string(),
                        }
                    }
                    Err(e) => e.to_string(),
                };
                tracing::debug!(url = %label, %error, "DERP connection lost");
                let _ = state_tx.send(DerpState::Connecting {
                    last_error: Some(error),
                });
                let jitter = 0.75 + (rng.next_u32() as f64 / u32::MAX as f64) * 0.5;
                let now = tokio::time::Instant::now();
                let delay = match wait {
                    Some((reconnect_in, try_for)) => {
                        quick_until = Some(now + reconnect_in + try_for);
                        reconnect_in
                    }
                    None if quick_until.is_some_and(|t| now < t) => RESTART_RETRY.mul_f64(jitter),
                    None => backoff.mul_f64(jitter),
                };
                let slept = tokio::select! {
                    _ = tokio::time::sleep(delay) => true,
                    () = hold_while_disconnected(&mut lanes, &mut held) => false,
                };
                if !slept {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        });
        DerpClient {
            commands,
            control,
            preferred: preferred_tx,
            dropped: Arc::new(AtomicU64::new(0)),
            events,
            state,
        }
    }

    /// Relays a packet to `dst`. While disconnected, the latest [`HELD_PACKETS`] packets are
    /// held for up to [`HELD_FOR`] and sent on connecting (so a node's first packets, sent while
    /// its relay connection is still being set up, are not lost); older ones are dropped, as UDP
    /// would drop them.
    /// When [`COMMAND_QUEUE`] packets already wait (the relay is slow or stopped reading),
    /// the packet is dropped and counted in [`DerpClient::dropped`].
    /// Disco messages take a lane of their own ([`CONTROL_QUEUE`]) that goes first.
    pub fn send(&self, dst: PublicKey, data: Vec<u8>) {
        let lane = if burrow_disco::looks_like_disco(&data) {
            &self.control
        } else {
            &self.commands
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = lane.try_send((dst, data)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Packets dropped so far because the queue to the relay was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Marks this relay as (not) our home; remembered across reconnects.
    pub fn note_preferred(&self, preferred: bool) {
        self.preferred.send_replace(Some(preferred));
    }
}

/// Packets held while disconnected, at most.
pub const HELD_PACKETS: usize = 128;
/// How long a held packet stays worth sending.
pub const HELD_FOR: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Held(std::collections::VecDeque<(tokio::time::Instant, PublicKey, Vec<u8>)>);

impl Held {
    fn push(&mut self, dst: PublicKey, data: Vec<u8>) {
        if self.0.len() >= HELD_PACKETS {
            self.0.pop_front();
        }
        self.0.push_back((tokio::time::Instant::now(), dst, data));
    }

    fn take_fresh(&mut self) -> Vec<(PublicKey, Vec<u8>)> {
        let now = tokio::time::Instant::now();
        self.0
            .drain(..)
            .filter(|(at, ..)| now.saturating_duration_since(*at) < HELD_FOR)
            .map(|(_, dst, data)| (dst, data))
            .collect()
    }
}

/// The two queues toward the relay: disco first, then data.
struct Lanes {
    control: mpsc::Receiver<Command>,
    data: mpsc::Receiver<Command>,
    /// Disco frames sent in a row while data waited.
    streak: usize,
}

/// Disco frames that may go ahead of waiting data in a row: a peer that makes us answer a
/// flood of relayed pings gets our pongs, not our whole upload.
const CONTROL_STREAK: usize = 8;

impl Lanes {
    /// The next packet, disco before data (but data at least every [`CONTROL_STREAK`] + 1
    /// frames); `None` once the handle has been dropped.
    async fn recv(&mut self) -> Option<Command> {
        if self.streak >= CONTROL_STREAK {
            if let Ok(c) = self.data.try_recv() {
                self.streak = 0;
                return Some(c);
            }
        }
        tokio::select! {
            biased;
            Some(c) = self.control.recv() => {
                self.streak += 1;
                Some(c)
            }
            c = self.data.recv() => {
                self.streak = 0;
                c
            }
        }
    }

    /// The next packet already waiting, in the order [`recv`](Self::recv) keeps; `None` when
    /// both queues are empty (or closed).
    fn try_recv(&mut self) -> Option<Command> {
        if self.streak < CONTROL_STREAK {
            if let Ok(c) = self.control.try_recv() {
                self.streak += 1;
                return Some(c);
            }
        }
        if let Ok(c) = self.data.try_recv() {
            self.streak = 0;
            return Some(c);
        }
        let c = self.control.try_recv().ok()?;
        self.streak += 1;
        Some(c)
    }
}

/// Consumes packets while there is no connection: recent ones are held. Returns when the
/// handle has been dropped.
async fn hold_while_disconnected(lanes: &mut Lanes, held: &mut Held) {
    while let Some((dst, data)) = lanes.recv().await {
        held.push(dst, data);
    }
}

/// Relayed packets and events waiting for the engine.
const EVENT_QUEUE: usize = 1024;

/// Without a byte from the relay for this long (it sends keep-alives every 60 s), the
/// connection is taken for dead.
const READ_DEADLINE: Duration = Duration::from_secs(150);

async fn drive(
    conn: &mut RawConn,
    lanes: &mut Lanes,
    events: &mpsc::Sender<ClientEvent>,
    preferred: &mut watch::Receiver<Option<bool>>,
    wait: &mut Option<(Duration, Duration)>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        write_queued(&mut conn.client, &mut conn.wr, &mut out).await?;
        while let Some(e) = conn.client.poll_event() {
            if let ClientEvent::Restarting {
                reconnect_in,
                try_for,
            } = e
            {
                *wait = Some(restart_plan(reconnect_in, try_for));
            }
            if events.send(e).await.is_err() {
                return Ok(()); // nobody listens any more
            }
        }
        tokio::select! {
            r = tokio::time::timeout(READ_DEADLINE, conn.rd.read(&mut buf)) => {
                let n = r.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no keep-alive from the relay"))??;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "relay closed the connection"));
                }
                conn.client.handle_bytes(&buf[..n]).map_err(io::Error::other)?;
            }
            cmd = lanes.recv() => match cmd {
                Some((dst, data)) => {
                    conn.client.send_packet(&dst, &data);
                    // Packets already waiting join this one's write.
                    for _ in 1..SEND_BATCH {
                        let Some((dst, data)) = lanes.try_recv() else {
                            break;
                        };
                        conn.client.send_packet(&dst, &data);
                    }
                }
                None => return Ok(()),
            },
            changed = preferred.changed() => {
                if changed.is_err() {
                    return Ok(()); // the handle was dropped
                }
                if let Some(p) = *preferred.borrow_and_update() {
                    conn.client.note_preferred(p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
