//! Relay settings: the region's mesh key (checked for length, never printed) and
//! [`ServerConfig`].

use std::time::Duration;

use burrow_wg::PrivateKey;

/// Shortest mesh key accepted, in bytes after trimming whitespace.
pub const MIN_MESH_KEY_LEN: usize = 32;

/// Clients at once by default: each costs a driver some tens of KiB at least (socket and
/// TLS buffers, queues), so 20,000 stays near a gigabyte; raise it where memory allows.
pub const DEFAULT_MAX_CLIENTS: usize = 20_000;

pub(super) fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The region's shared secret: a client presenting it is a mesh peer (it may watch, forward
/// and close other clients), so it must not be guessable. Debug never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshKey(pub(super) String);

/// A mesh key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshKeyError {
    /// Too short (an empty file trims to nothing).
    #[error("the mesh key has {len} bytes after trimming; at least {MIN_MESH_KEY_LEN} are needed (e.g. `openssl rand -hex 32`)")]
    TooShort {
        /// Its length after trimming.
        len: usize,
    },
}

impl MeshKey {
    /// The key in `text` with surrounding whitespace trimmed; at least [`MIN_MESH_KEY_LEN`] bytes.
    pub fn new(text: &str) -> Result<Self, MeshKeyError> {
        let t = text.trim();
        if t.len() < MIN_MESH_KEY_LEN {
            return Err(MeshKeyError::TooShort { len: t.len() });
        }
        Ok(MeshKey(t.to_owned()))
    }

    /// The secret itself (to put in a mesh client's ClientInfo).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl core::str::FromStr for MeshKey {
    type Err = MeshKeyError;
    fn from_str(s: &str) -> Result<Self, MeshKeyError> {
        MeshKey::new(s)
    }
}

impl core::fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MeshKey(<redacted>)")
    }
}

/// Relay settings.
#[derive(Clone)]
pub struct ServerConfig {
    /// The server's key (clients seal ClientInfo to it).
    pub private_key: PrivateKey,
    /// Servers sharing this key form a mesh.
    pub mesh_key: Option<MeshKey>,
    /// Data packets queued per client before new ones are dropped.
    pub queue_limit: usize,
    /// Disco packets queued per client before new ones are dropped.
    pub disco_queue_limit: usize,
    /// KeepAlive to a client after this long without writing to it.
    pub keepalive: Duration,
    /// Per-client rate limit on what it sends: (bytes per second, burst bytes).
    pub rate_limit: Option<(u64, u64)>,
    /// Clients connected at once (a mesh peer is never refused); more are refused.
    pub max_clients: usize,
    /// Clients connected at once from one source (an IPv4 address or an IPv6 /64, and
    /// [`crate::gate::SITE_SHARES`] times that per /48; loopback is exempt). Mesh peers do
    /// not count.
    pub max_clients_per_ip: usize,
    /// Hold each new client key (mesh peers excepted) until the driver reports a verdict.
    pub verify_clients: bool,
    /// How long the ClientInfo nonces of a key are remembered after its last connection
    /// ended, to refuse replays. A connected key's nonces are kept as long as it is connected.
    pub replay_window: Duration,
    /// Nonces remembered at most for keys no longer connected (the longest gone are
    /// forgotten first). Connected keys' nonces do not count: nothing pushes them out.
    pub replay_memory: usize,
}

impl core::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("public_key", &self.private_key.public_key())
            .field("mesh_key", &self.mesh_key.as_ref().map(|_| "<redacted>"))
            .field("queue_limit", &self.queue_limit)
            .field("disco_queue_limit", &self.disco_queue_limit)
            .field("keepalive", &self.keepalive)
            .field("rate_limit", &self.rate_limit)
            .field("max_clients", &self.max_clients)
            .field("max_clients_per_ip", &self.max_clients_per_ip)
            .field("verify_clients", &self.verify_clients)
            .field("replay_window", &self.replay_window)
            .field("replay_memory", &self.replay_memory)
            .finish()
    }
}

impl ServerConfig {
    /// Defaults: 32 data and 8 disco packets per client, keep-alives every 60 s, no rate
    /// limit, [`DEFAULT_MAX_CLIENTS`] clients (1,000 per source), no verification, ClientInfo
    /// replays refused while connected and for 10 minutes after (65,536 nonces of departed
    /// keys remembered).
    pub fn new(private_key: PrivateKey) -> Self {
        ServerConfig {
            private_key,
            mesh_key: None,
            queue_limit: 32,
            disco_queue_limit: 8,
            keepalive: Duration::from_secs(60),
            rate_limit: None,
            max_clients: DEFAULT_MAX_CLIENTS,
            max_clients_per_ip: 1_000,
            verify_clients: false,
            replay_window: Duration::from_secs(600),
            replay_memory: 65_536,
        }
    }

    /// The same with a mesh key, checked (at least [`MIN_MESH_KEY_LEN`] bytes after trimming).
    pub fn with_mesh_key(mut self, mesh_key: &str) -> Result<Self, MeshKeyError> {
        self.mesh_key = Some(MeshKey::new(mesh_key)?);
        Ok(self)
    }
}
