//! Where the coordination server keeps what must survive a restart: pre-auth keys and
//! registered nodes (public keys only). One trait; SQLite (one file, migrations at start) is
//! the implementation today.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use burrow_control::changelog::{Change, ChangeId};
use burrow_control::netmap::MAX_NODE_ID;
use futures::FutureExt;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// A storage failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database refused.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The pre-auth key is unknown, used up or expired.
    #[error("the auth key is unknown, already used, or expired")]
    BadAuthKey,
    /// The node key is registered already, and the caller showed neither the node's current
    /// secret nor an unspent auth key of the node's own user and tags.
    #[error("this node key is registered: re-register with the node's current secret, or with an unspent auth key of its user and tags")]
    NotPermitted,
    /// Another node has this disco key.
    #[error("another node already has this disco key")]
    DiscoKeyTaken,
    /// Every tailnet address has been handed out (node ids are never reused).
    #[error("the tailnet's address pool is exhausted")]
    AddressPoolExhausted,
    /// The node's budget of endpoint changes is spent ([`CHANGE_BUDGET`]).
    #[error("too many endpoint changes: at most 10 at once, then 1 a second")]
    ChangeBudgetSpent,
    /// The challenge was answered already (on this server or another sharing the store).
    #[error("challenge already used: ask for a new one")]
    ChallengeReplayed,
    /// A stored value did not parse.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// PostgreSQL refused.
    #[error("postgres: {0}")]
    Pg(#[from] tokio_postgres::Error),
}

/// A pre-auth key's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthKeySpec {
    /// The user nodes registered with it belong to.
    pub user: String,
    /// Usable more than once.
    pub reusable: bool,
    /// Unix seconds after which it is refused.
    pub expires_at: Option<u64>,
    /// Tags given to nodes registered with it.
    pub tags: Vec<String>,
}

/// A registered node, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Id (also indexes its addresses).
    pub id: u64,
    /// Host name.
    pub name: String,
    /// Owner.
    pub user: String,
    /// Tags.
    pub tags: Vec<String>,
    /// WireGuard public key (base64).
    pub node_key: String,
    /// Disco public key (base64).
    pub disco_key: String,
    /// Its IPv4 and IPv6 tailnet addresses.
    pub addresses: Vec<IpAddr>,
    /// Last reported candidate endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Home DERP region.
    pub home_region: u16,
    /// Unix seconds after which the node is expired (None: never).
    pub expires_at: Option<u64>,
    /// The UDP port it relays on for others (peer relays), as it last reported; None: it
    /// does not relay.
    pub relay_port: Option<u16>,
    /// It last reported a fixed public mapping (with the policy's `autoRelay`).
    pub fixed_mapping: bool,
}

impl NodeRecord {
    /// The node as its peers see it.
    pub fn peer(&self) -> burrow_control::PeerInfo {
        burrow_control::PeerInfo {
            node: burrow_control::NodeInfo {
                id: self.id,
                name: self.name.clone(),
                user: self.user.clone(),
                tags: self.tags.clone(),
                addresses: self.addresses.clone(),
            },
            node_key: self.node_key.clone(),
            disco_key: self.disco_key.clone(),
            endpoints: self.endpoints.clone(),
            home_region: self.home_region,
        }
    }

    /// Its relay capability, as the policy judges it.
    pub fn relay_capability(&self) -> burrow_control::RelayCapability {
        burrow_control::RelayCapability {
            port: self.relay_port,
            fixed_mapping: self.fixed_mapping,
        }
    }
}

/// Changes one write committed, with the ids the store gave them (consecutive, in commit
/// order): the server applies them through its [`burrow_control::Follower`].
pub type Logged = Vec<(ChangeId, Change)>;

/// What a node reports of itself (`POST /machine/endpoints`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Its candidate endpoints, as vouched for.
    pub endpoints: Vec<SocketAddr>,
    /// Its home DERP region.
    pub home_region: u16,
    /// The UDP port it relays on (None: it does not relay).
    pub relay_port: Option<u16>,
    /// Its mapping is fixed.
    pub fixed_mapping: bool,
}

/// The tailnet as committed, read in one transaction: the live nodes, the id of the last
/// change they include, and the policy the store holds (shared stores only).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Nodes in the tailnet (neither removed nor retired by expiry).
    pub nodes: Vec<NodeRecord>,
    /// The last change the nodes include.
    pub head: ChangeId,
    /// The policy source in force, where the store keeps it.
    pub policy: Option<String>,
}

/// The changes that bring a replica's tailnet up to `record`: its peer entry, and its relay
/// capability when it relays or `relay_changed`.
pub fn record_changes(record: &NodeRecord, relay_changed: bool) -> Vec<Change> {
    let mut out = vec![Change::Upsert(record.peer())];
    let capability = record.relay_capability();
    if relay_changed || capability != burrow_control::RelayCapability::default() {
        out.push(Change::RelayCapability {
            id: record.id,
            capability,
        });
    }
    out
}

/// A token bucket kept in a node's row: every server sharing the store draws on one budget.
#[derive(Debug, Clone, Copy)]
pub struct ChangeBudget {
    /// Changes at once.
    pub burst: f64,
    /// Changes per second after that.
    pub per_second: f64,
}

/// Endpoint changes a node may make in a burst, and per second after that: a flapping or
/// hostile node cannot make the servers flood its peers with deltas, however many servers it
/// spreads its reports over.
pub const CHANGE_BUDGET: ChangeBudget = ChangeBudget {
    burst: 10.0,
    per_second: 1.0,
};

impl ChangeBudget {
    /// The tokens left after taking one at `now` from a bucket that held `tokens` at `at`
    /// (unix seconds), and the time to record with them; None when it is spent. Time never
    /// goes back: a server whose clock is behind the last one's refills nothing and records
    /// the later time, so servers with different clocks cannot refill a budget between them.
    pub fn take(&self, tokens: f64, at: f64, now: f64) -> Option<(f64, f64)> {
        let now = now.max(at);
        let t = (tokens + (now - at) * self.per_second).min(self.burst);
        (t >= 1.0).then_some((t - 1.0, now))
    }
}

/// Unix time in seconds, with fractions.
pub(crate) fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Numbers `changes` from `head + 1` on.
pub(crate) fn number(head: ChangeId, changes: Vec<Change>) -> Logged {
    (head + 1..).zip(changes).collect()
}

/// The server's storage. Every write that changes the tailnet returns the changes it
/// committed, numbered by the store, so replicas (and one server's concurrent requests)
/// apply them in commit order.
pub trait Store: Send + Sync {
    /// Creates a pre-auth key; returns it (only its hash is kept).
    fn create_auth_key(&self, spec: &AuthKeySpec) -> Result<String, StoreError>;
    /// Registers (or re-registers, by node key) a node as [`admit`] allows; returns the node,
    /// a fresh secret for its later requests (only its hash is kept) and the changes logged.
    /// The node key expires at `expires_at` (unix seconds; None: never); re-registering renews
    /// it and brings an expired node back. The caller has checked that the registrant holds
    /// the node key's private key.
    fn register(&self, reg: &Registration<'_>) -> Result<(NodeRecord, String, Logged), StoreError>;
    /// The node a request secret belongs to, if it is in the tailnet (not retired by expiry,
    /// whatever this server's clock says).
    fn node_by_secret(&self, secret: &str) -> Result<Option<NodeRecord>, StoreError>;
    /// The node with this node key (canonical base64, as stored): one indexed lookup, for
    /// the relays' client verification.
    fn node_by_key(&self, key: &str) -> Result<Option<NodeRecord>, StoreError>;
    /// The node with this id.
    fn node(&self, id: u64) -> Result<Option<NodeRecord>, StoreError>;
    /// Records a node's report, if the node is in the tailnet (not removed, not retired by
    /// expiry) and its [`CHANGE_BUDGET`] allows: the updated record and the changes logged;
    /// None when the node is not in the tailnet.
    fn report(&self, id: u64, report: &Report) -> Result<Option<(NodeRecord, Logged)>, StoreError>;
    /// Expires a node at `now` (unix seconds): it leaves the tailnet until it registers again.
    /// None: no such node.
    fn expire(&self, id: u64, now: u64) -> Result<Option<Logged>, StoreError>;
    /// Removes a node; None: no such node.
    fn remove(&self, id: u64) -> Result<Option<Logged>, StoreError>;
    /// Retires every node whose key expired by `now` (each once, whichever server asks).
    fn expire_due(&self, now: u64) -> Result<Logged, StoreError>;
    /// Puts a policy (its checked source) in force.
    fn set_policy(&self, source: &str) -> Result<Logged, StoreError>;
    /// Every node, expired ones included.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// The tailnet as committed.
    fn snapshot(&self) -> Result<Snapshot, StoreError>;
    /// Committed changes from `from` on, at most `limit`, in id order (what the log still
    /// holds; a store whose changes never leave the process holds none).
    fn changes_since(&self, from: ChangeId, limit: usize) -> Result<Logged, StoreError>;
    /// Where other servers share this store (a PostgreSQL URL to listen for changes on);
    /// None: this process is the only writer.
    fn shared_url(&self) -> Option<String> {
        None
    }
    /// The key challenges are made under, where servers share it (None: a key of this
    /// process's own).
    fn challenge_key(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(None)
    }
    /// Notes that these nodes hold a map stream on this server at `now` (unix seconds), for
    /// the other servers sharing the store (nothing where no other server does).
    fn note_online(&self, _ids: &[u64], _now: u64) -> Result<(), StoreError> {
        Ok(())
    }
    /// The nodes some server sharing the store saw holding a map stream since `since`.
    fn online_since(&self, _since: u64) -> Result<std::collections::BTreeSet<u64>, StoreError> {
        Ok(std::collections::BTreeSet::new())
    }
}

/// SQLite storage: one file, migrated at open.
pub struct SqliteStore {
    db: Mutex<Connection>,
    /// The last change id given out (taken while `db` is held, so ids follow commit order,
    /// and kept in `meta` so they stay unique across restarts). Only this process writes, so
    /// the changes themselves are handed straight to its server.
    head: Mutex<ChangeId>,
    ula: Ipv6Addr,
}

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE auth_keys (hash TEXT PRIMARY KEY, user TEXT NOT NULL, reusable INTEGER NOT NULL,
        expires_at INTEGER, tags TEXT NOT NULL, uses INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL);
     CREATE TABLE nodes (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, user TEXT NOT NULL,
        tags TEXT NOT NULL, node_key TEXT NOT NULL UNIQUE, disco_key TEXT NOT NULL,
        endpoints TEXT NOT NULL DEFAULT '', home_region INTEGER NOT NULL DEFAULT 1,
        secret_hash TEXT NOT NULL, expires_at INTEGER, created_at INTEGER NOT NULL);",
    // Keys stored before they were canonical lose their whitespace; disco keys become unique.
    "UPDATE nodes SET node_key = trim(node_key, ' ' || char(9) || char(10) || char(13)),
        disco_key = trim(disco_key, ' ' || char(9) || char(10) || char(13));
     CREATE UNIQUE INDEX nodes_disco_key ON nodes (disco_key);",
    // Peer relays: the port a node relays on and whether its mapping is fixed.
    "ALTER TABLE nodes ADD COLUMN relay_port INTEGER;
     ALTER TABLE nodes ADD COLUMN fixed_mapping INTEGER NOT NULL DEFAULT 0;",
    // A node retired by expiry stays stored (listed, and it may register again) but is out of
    // the tailnet, and nothing but a registration brings it back. Its budget of endpoint
    // changes is kept with it.
    "ALTER TABLE nodes ADD COLUMN retired INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE nodes ADD COLUMN change_tokens REAL NOT NULL DEFAULT 0;
     ALTER TABLE nodes ADD COLUMN change_at REAL NOT NULL DEFAULT 0;
     UPDATE nodes SET retired = 1
        WHERE expires_at IS NOT NULL AND expires_at <= CAST(strftime('%s', 'now') AS INTEGER);
     CREATE INDEX nodes_expiry ON nodes (expires_at) WHERE retired = 0;",
];

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a registration presents. Keys are canonical base64 (decoded and re-encoded), so one
/// key has one spelling.
#[derive(Clone, Copy)]
pub struct Registration<'a> {
    /// A pre-auth key, if the registrant has one.
    pub auth_key: Option<&'a str>,
    /// The node's current secret, when it re-registers (renewal).
    pub node_secret: Option<&'a str>,
    /// Host name (already checked to be a DNS label).
    pub name: &'a str,
    /// WireGuard public key, canonical base64.
    pub node_key: &'a str,
    /// Disco public key, canonical base64.
    pub disco_key: &'a str,
    /// When the registration expires (unix seconds; None: never).
    pub expires_at: Option<u64>,
    /// The challenge it answered, for stores that servers share: spent in the registration's
    /// transaction, so no replica accepts it twice (one server alone remembers its own).
    pub challenge: Option<[u8; 32]>,
}

impl std::fmt::Debug for Registration<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("auth_key", &self.auth_key.map(|_| "<redacted>"))
            .field("node_secret", &self.node_secret.map(|_| "<redacted>"))
            .field("name", &self.name)
            .field("node_key", &self.node_key)
            .field("disco_key", &self.disco_key)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A stored pre-auth key, as [`admit`] judges it.
pub(crate) struct KeyRow {
    pub(crate) user: String,
    pub(crate) reusable: bool,
    pub(crate) expires_at: Option<i64>,
    pub(crate) tags: String,
    pub(crate) uses: i64,
}

impl KeyRow {
    /// Not expired, and either reusable or never used.
    fn usable(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|e| now < e) && (self.reusable || self.uses == 0)
    }
}

/// A stored node, as [`admit`] judges a registration of its key.
pub(crate) struct NodeRow {
    pub(crate) id: i64,
    pub(crate) user: String,
    pub(crate) tags: String,
    pub(crate) secret_hash: String,
    pub(crate) expires_at: Option<i64>,
    /// Retired by expiry (whatever this server's clock says of `expires_at`).
    pub(crate) retired: bool,
}

/// What a registration may do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// A new node for the key's user and tags; `spend` counts a use of the key (which spends a
    /// one-off key).
    New {
        /// Whether the key's use count goes up.
        spend: bool,
    },
    /// The existing node `id` renews (its secret) or re-authenticates (an unspent key of its
    /// own user and tags, which is then spent). Only re-authentication moves the expiry: a
    /// node that renews with its secret keeps the expiry it has, so `--node-expiry` holds.
    Existing {
        /// The node.
        id: i64,
        /// Whether an auth key's use count goes up (and the expiry is set anew).
        spend: bool,
    },
}

/// The one rule both stores apply (security audit #2): a new node key needs a usable auth key;
/// an existing one re-registers only with its current, unexpired secret, or with a usable auth
/// key of the same user and tags. A spent one-off key admits nothing, so an expired or removed
/// node cannot be brought back with the key it once used, and nobody can take a node over.
pub(crate) fn admit(
    reg: &Registration<'_>,
    existing: Option<&NodeRow>,
    key: Option<&KeyRow>,
    now: i64,
) -> Result<Admission, StoreError> {
    let key = key.filter(|k| k.usable(now));
    let Some(node) = existing else {
        key.ok_or(StoreError::BadAuthKey)?;
        return Ok(Admission::New { spend: true });
    };
    let live = !node.retired && node.expires_at.is_none_or(|e| now < e);
    let secret_ok = reg.node_secret.is_some_and(|s| {
        use subtle::ConstantTimeEq;
        hash(s).as_bytes().ct_eq(node.secret_hash.as_bytes()).into()
    });
    if secret_ok && live {
        return Ok(Admission::Existing {
            id: node.id,
            spend: false,
        });
    }
    match key {
        Some(k) if k.user == node.user && k.tags == node.tags => Ok(Admission::Existing {
            id: node.id,
            spend: true,
        }),
        _ => Err(StoreError::NotPermitted),
    }
}

/// The few SQL steps of a registration, inside one open transaction. [`register_in`] orders
/// them and applies [`admit`], so SQLite and PostgreSQL share one transaction logic.
pub(crate) trait RegisterTx {
    /// The pre-auth key with this hash (locked for the transaction where the database can).
    async fn auth_key(&mut self, hash: &str) -> Result<Option<KeyRow>, StoreError>;
    /// The node with this node key (locked for the transaction where the database can).
    async fn node_row(&mut self, node_key: &str) -> Result<Option<NodeRow>, StoreError>;
    /// Whether a node with another node key has this disco key.
    async fn disco_key_taken(
        &mut self,
        disco_key: &str,
        node_key: &str,
    ) -> Result<bool, StoreError>;
    /// Gives node `id` the registration's name and disco key and a new secret hash; with
    /// `set_expiry`, also the registration's expiry.
    async fn update_node(
        &mut self,
        id: i64,
        reg: &Registration<'_>,
        secret_hash: &str,
        set_expiry: bool,
    ) -> Result<(), StoreError>;
    /// Inserts the registration as a new node of `user` with `tags`; its id.
    async fn insert_node(
        &mut self,
        reg: &Registration<'_>,
        user: &str,
        tags: &str,
        secret_hash: &str,
    ) -> Result<i64, StoreError>;
    /// Counts one use of the pre-auth key with this hash.
    async fn spend_key(&mut self, hash: &str) -> Result<(), StoreError>;
}

/// The registration transaction of [`Store::register`], up to reading the record back and
/// committing (the caller's part); returns the node's new secret. On an error the caller drops
/// the transaction, which rolls it back.
pub(crate) async fn register_in(
    tx: &mut impl RegisterTx,
    reg: &Registration<'_>,
) -> Result<String, StoreError> {
    let key_hash = reg.auth_key.map(hash);
    let key = match &key_hash {
        Some(h) => tx.auth_key(h).await?,
        None => None,
    };
    let existing = tx.node_row(reg.node_key).await?;
    let admission = admit(reg, existing.as_ref(), key.as_ref(), now_unix() as i64)?;
    if tx.disco_key_taken(reg.disco_key, reg.node_key).await? {
        return Err(StoreError::DiscoKeyTaken);
    }
    let secret = random_token("burrownode");
    let secret_hash = hash(&secret);
    let spend = match admission {
        Admission::Existing { id, spend } => {
            tx.update_node(id, reg, &secret_hash, spend).await?;
            spend
        }
        Admission::New { spend } => {
            let k = key.as_ref().ok_or(StoreError::BadAuthKey)?;
            let id = tx.insert_node(reg, &k.user, &k.tags, &secret_hash).await?;
            if id as u64 > MAX_NODE_ID {
                return Err(StoreError::AddressPoolExhausted); // rolled back
            }
            spend
        }
    };
    if let (true, Some(h)) = (spend, &key_hash) {
        tx.spend_key(h).await?;
    }
    Ok(secret)
}

pub(crate) fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn random_token(prefix: &str) -> String {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
    let mut b = [0u8; 24];
    rng.fill_bytes(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}-{hex}")
}

impl SqliteStore {
    /// Opens (creating and migrating) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let tx = db.transaction()?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        // The tailnet's IPv6 ULA /48, chosen once.
        let ula: Option<String> = db
            .query_row("SELECT value FROM meta WHERE key = 'ula'", [], |r| r.get(0))
            .optional()?;
        let ula = match ula {
            Some(s) => s
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("ula {s:?}")))?,
            None => {
                let a = fresh_ula();
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('ula', ?1)",
                    params![a.to_string()],
                )?;
                a
            }
        };
        // The last change id, kept so ids stay unique across restarts.
        let head: Option<String> = db
            .query_row(
                "SELECT value FROM meta WHERE key = 'change_head'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let head = match head {
            Some(s) => s
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("change_head {s:?}")))?,
            None => 0,
        };
        Ok(SqliteStore {
            db: Mutex::new(db),
            head: Mutex::new(head),
            ula,
        })
    }

    fn record(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeRecord> {
        let id: i64 = r.get("id")?;
        let expires: Option<i64> = r.get("expires_at")?;
        let region: i64 = r.get("home_region")?;
        let relay_port: Option<i64> = r.get("relay_port")?;
        let fixed: i64 = r.get("fixed_mapping")?;
        Ok(Columns {
            id,
            name: r.get("name")?,
            user: r.get("user")?,
            tags: r.get("tags")?,
            node_key: r.get("node_key")?,
            disco_key: r.get("disco_key")?,
            endpoints: r.get("endpoints")?,
            home_region: region,
            expires_at: expires,
            relay_port,
            fixed_mapping: fixed != 0,
        }
        .record(self.ula))
    }
}

/// A node row as both databases store it.
pub(crate) struct Columns {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) user: String,
    pub(crate) tags: String,
    pub(crate) node_key: String,
    pub(crate) disco_key: String,
    pub(crate) endpoints: String,
    pub(crate) home_region: i64,
    pub(crate) expires_at: Option<i64>,
    pub(crate) relay_port: Option<i64>,
    pub(crate) fixed_mapping: bool,
}

impl Columns {
    /// The record, with addresses derived from the id and the tailnet's ULA /48.
    pub(crate) fn record(self, ula: Ipv6Addr) -> NodeRecord {
        let id = self.id as u64;
        let mut v6 = ula.segments();
        v6[6] = (id >> 16) as u16;
        v6[7] = id as u16;
        NodeRecord {
            id,
            name: self.name,
            user: self.user,
            tags: self
                .tags
                .split(',')
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
            node_key: self.node_key,
            disco_key: self.disco_key,
            addresses: vec![
                burrow_control::netmap::address_v4(id as u32),
                IpAddr::V6(Ipv6Addr::from(v6)),
            ],
            endpoints: self
                .endpoints
                .split(',')
                .filter_map(|e| e.parse().ok())
                .collect(),
            home_region: self.home_region as u16,
            expires_at: self.expires_at.map(|e| e as u64),
            relay_port: self.relay_port.and_then(|p| u16::try_from(p).ok()),
            fixed_mapping: self.fixed_mapping,
        }
    }
}

/// A fresh random ULA /48 (fdXX:XXXX:XXXX::/48).
pub(crate) fn fresh_ula() -> Ipv6Addr {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut r = [0u8; 5];
    rand_chacha::ChaCha20Rng::from_os_rng().fill_bytes(&mut r);
    Ipv6Addr::new(
        0xfd00 | u16::from(r[0]),
        u16::from_be_bytes([r[1], r[2]]),
        u16::from_be_bytes([r[3], r[4]]),
        0,
        0,
        0,
        0,
        0,
    )
}

/// A registration's steps on an open SQLite transaction. They never wait, so the shared
/// (async) [`register_in`] completes on its first poll.
struct SqliteTx<'a>(rusqlite::Transaction<'a>);

impl RegisterTx for SqliteTx<'_> {
    async fn auth_key(&mut self, hash: &str) -> Result<Option<KeyRow>, StoreError> {
        Ok(self
            .0
            .query_row(
                "SELECT user, reusable, expires_at, tags, uses FROM auth_keys WHERE hash = ?1",
                params![hash],
                |r| {
                    Ok(KeyRow {
                        user: r.get(0)?,
                        reusable: r.get(1)?,
                        expires_at: r.get(2)?,
                        tags: r.get(3)?,
                        uses: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    async fn node_row(&mut self, node_key: &str) -> Result<Option<NodeRow>, StoreError> {
        Ok(self
            .0
            .query_row(
                "SELECT id, user, tags, secret_hash, expires_at, retired FROM nodes WHERE node_key = ?1",
                params![node_key],
                |r| {
                    Ok(NodeRow {
                        id: r.get(0)?,
                        user: r.get(1)?,
                        tags: r.get(2)?,
                        secret_hash: r.get(3)?,
                        expires_at: r.get(4)?,
                        retired: r.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    async fn disco_key_taken(
        &mut self,
        disco_key: &str,
        node_key: &str,
    ) -> Result<bool, StoreError> {
        let taken: Option<i64> = self
            .0
            .query_row(
                "SELECT id FROM nodes WHERE disco_key = ?1 AND node_key != ?2",
                params![disco_key, node_key],
                |r| r.get(0),
            )
            .optional()?;
        Ok(taken.is_some())
    }

    async fn update_node(
        &mut self,
        id: i64,
        reg: &Registration<'_>,
        secret_hash: &str,
        set_expiry: bool,
    ) -> Result<(), StoreError> {
        if set_expiry {
            self.0.execute(
                "UPDATE nodes SET name = ?1, disco_key = ?2, secret_hash = ?3, expires_at = ?4, retired = 0 WHERE id = ?5",
                params![reg.name, reg.disco_key, secret_hash, reg.expires_at.map(|e| e as i64), id],
            )?;
        } else {
            self.0.execute(
                "UPDATE nodes SET name = ?1, disco_key = ?2, secret_hash = ?3 WHERE id = ?4",
                params![reg.name, reg.disco_key, secret_hash, id],
            )?;
        }
        Ok(())
    }

    async fn insert_node(
        &mut self,
        reg: &Registration<'_>,
        user: &str,
        tags: &str,
        secret_hash: &str,
    ) -> Result<i64, StoreError> {
        self.0.execute(
            "INSERT INTO nodes (name, user, tags, node_key, disco_key, secret_hash, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![reg.name, user, tags, reg.node_key, reg.disco_key, secret_hash, reg.expires_at.map(|e| e as i64), now_unix() as i64],
        )?;
        Ok(self.0.last_insert_rowid())
    }

    async fn spend_key(&mut self, hash: &str) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE auth_keys SET uses = uses + 1 WHERE hash = ?1",
            params![hash],
        )?;
        Ok(())
    }
}

impl Store for SqliteStore {
    fn create_auth_key(&self, spec: &AuthKeySpec) -> Result<String, StoreError> {
        let key = random_token("burrowkey");
        self.db.lock().expect("db").execute(
            "INSERT INTO auth_keys (hash, user, reusable, expires_at, tags, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                hash(&key),
                spec.user,
                spec.reusable,
                spec.expires_at.map(|e| e as i64),
                spec.tags.join(","),
                now_unix() as i64
            ],
        )?;
        Ok(key)
    }

    fn register(&self, reg: &Registration<'_>) -> Result<(NodeRecord, String, Logged), StoreError> {
        let mut db = self.db.lock().expect("db");
        let mut tx = SqliteTx(db.transaction()?);
        let secret = register_in(&mut tx, reg)
            .now_or_never()
            .expect("SQLite steps never wait")?;
        let record = tx.0.query_row(
            "SELECT * FROM nodes WHERE node_key = ?1",
            params![reg.node_key],
            |r| self.record(r),
        )?;
        let logged = self.log(&tx.0, record_changes(&record, false))?;
        tx.0.commit()?;
        Ok((record, secret, self.committed(logged)))
    }

    fn node_by_secret(&self, secret: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.one(
            "SELECT * FROM nodes WHERE secret_hash = ?1 AND retired = 0",
            &hash(secret),
        )
    }

    fn node_by_key(&self, key: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.one("SELECT * FROM nodes WHERE node_key = ?1", &key)
    }

    fn node(&self, id: u64) -> Result<Option<NodeRecord>, StoreError> {
        self.one("SELECT * FROM nodes WHERE id = ?1", &(id as i64))
    }

    fn report(&self, id: u64, report: &Report) -> Result<Option<(NodeRecord, Logged)>, StoreError> {
        let list: Vec<String> = report.endpoints.iter().map(|e| e.to_string()).collect();
        let mut db = self.db.lock().expect("db");
        let tx = db.transaction()?;
        let Some((old, tokens, at)) = tx
            .query_row(
                "SELECT * FROM nodes WHERE id = ?1 AND retired = 0",
                params![id as i64],
                |r| {
                    Ok((
                        self.record(r)?,
                        r.get("change_tokens")?,
                        r.get("change_at")?,
                    ))
                },
            )
            .optional()?
        else {
            return Ok(None);
        };
        let (tokens, now) = CHANGE_BUDGET
            .take(tokens, at, now_secs())
            .ok_or(StoreError::ChangeBudgetSpent)?;
        let record = tx.query_row(
            "UPDATE nodes SET endpoints = ?1, home_region = ?2, relay_port = ?3, fixed_mapping = ?4,
                change_tokens = ?5, change_at = ?6 WHERE id = ?7 RETURNING *",
            params![
                list.join(","),
                i64::from(report.home_region),
                report.relay_port.map(i64::from),
                i64::from(report.fixed_mapping),
                tokens,
                now,
                id as i64
            ],
            |r| self.record(r),
        )?;
        let relay_changed = old.relay_capability() != record.relay_capability();
        let logged = self.log(&tx, record_changes(&record, relay_changed))?;
        tx.commit()?;
        Ok(Some((record, self.committed(logged))))
    }

    fn expire(&self, id: u64, now: u64) -> Result<Option<Logged>, StoreError> {
        let mut db = self.db.lock().expect("db");
        let db = db.transaction()?;
        let retired: Option<i64> = db
            .query_row(
                "SELECT retired FROM nodes WHERE id = ?1",
                params![id as i64],
                |r| r.get(0),
            )
            .optional()?;
        let Some(retired) = retired else {
            return Ok(None);
        };
        db.execute(
            "UPDATE nodes SET expires_at = ?1, retired = 1 WHERE id = ?2",
            params![now as i64, id as i64],
        )?;
        let changes = match retired {
            0 => vec![Change::Remove { id }],
            _ => Vec::new(),
        };
        let logged = self.log(&db, changes)?;
        db.commit()?;
        Ok(Some(self.committed(logged)))
    }

    fn remove(&self, id: u64) -> Result<Option<Logged>, StoreError> {
        let mut db = self.db.lock().expect("db");
        let db = db.transaction()?;
        if db.execute("DELETE FROM nodes WHERE id = ?1", params![id as i64])? == 0 {
            return Ok(None);
        }
        let logged = self.log(&db, vec![Change::Remove { id }])?;
        db.commit()?;
        Ok(Some(self.committed(logged)))
    }

    fn expire_due(&self, now: u64) -> Result<Logged, StoreError> {
        let mut db = self.db.lock().expect("db");
        let db = db.transaction()?;
        let mut st = db.prepare(
            "UPDATE nodes SET retired = 1 WHERE retired = 0 AND expires_at <= ?1 RETURNING id",
        )?;
        let ids = st
            .query_map(params![now as i64], |r| r.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        drop(st);
        let changes = ids
            .into_iter()
            .map(|id| Change::Remove { id: id as u64 })
            .collect();
        let logged = self.log(&db, changes)?;
        db.commit()?;
        Ok(self.committed(logged))
    }

    fn set_policy(&self, source: &str) -> Result<Logged, StoreError> {
        let mut db = self.db.lock().expect("db");
        let db = db.transaction()?;
        let policy = Change::Policy {
            source: source.to_owned(),
        };
        let logged = self.log(&db, vec![policy])?;
        db.commit()?;
        Ok(self.committed(logged))
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.all("SELECT * FROM nodes ORDER BY id")
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let db = self.db.lock().expect("db");
        let mut st = db.prepare("SELECT * FROM nodes WHERE retired = 0 ORDER BY id")?;
        let nodes = st
            .query_map([], |r| self.record(r))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot {
            nodes,
            head: *self.head.lock().expect("head"),
            policy: None,
        })
    }

    fn changes_since(&self, _from: ChangeId, _limit: usize) -> Result<Logged, StoreError> {
        // Every change reaches this process's server as it commits.
        Ok(Vec::new())
    }
}

impl SqliteStore {
    /// Numbers changes and records the new head, inside the transaction that makes them
    /// (the caller holds `db`, so ids follow commit order); [`SqliteStore::committed`] takes
    /// the head on once it commits, so a rolled-back write gives its ids back.
    fn log(&self, db: &Connection, changes: Vec<Change>) -> Result<Logged, StoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let head = *self.head.lock().expect("head");
        let logged = number(head, changes);
        let last = head + logged.len() as u64;
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('change_head', ?1)
                ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![last.to_string()],
        )?;
        Ok(logged)
    }

    /// Takes the head on past changes just committed.
    fn committed(&self, logged: Logged) -> Logged {
        if let Some((last, _)) = logged.last() {
            *self.head.lock().expect("head") = *last;
        }
        logged
    }

    fn one(
        &self,
        sql: &str,
        param: &dyn rusqlite::ToSql,
    ) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self
            .db
            .lock()
            .expect("db")
            .query_row(sql, [param], |r| self.record(r))
            .optional()?)
    }

    fn all(&self, sql: &str) -> Result<Vec<NodeRecord>, StoreError> {
        let db = self.db.lock().expect("db");
        let mut st = db.prepare(sql)?;
        let rows = st.query_map([], |r| self.record(r))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

/// For tests: an in-memory store with node "a" registered (node key from `[1; 32]`, disco key
/// from `[2; 32]`) with a reusable key of user "u".
#[cfg(test)]
pub(crate) fn memory_store_with_node() -> (std::sync::Arc<SqliteStore>, NodeRecord) {
    let store = std::sync::Arc::new(SqliteStore::open(Path::new(":memory:")).expect("sqlite"));
    let key = store
        .create_auth_key(&AuthKeySpec {
            user: "u".into(),
            reusable: true,
            expires_at: None,
            tags: vec![],
        })
        .expect("auth key");
    let pk = |b| {
        burrow_wg::PrivateKey::from_bytes([b; 32])
            .public_key()
            .to_base64()
    };
    let (record, _, _) = store
        .register(&Registration {
            auth_key: Some(&key),
            node_secret: None,
            name: "a",
            node_key: &pk(1),
            disco_key: &pk(2),
            expires_at: None,
            challenge: None,
        })
        .expect("registered");
    (store, record)
}
