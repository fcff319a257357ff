//! PostgreSQL storage (`burrow control serve --db postgres://…`), for deployments that
//! outgrow one machine's SQLite file. Same schema and behaviour as [`super::store::SqliteStore`].

use std::net::Ipv6Addr;
use std::sync::Mutex;

use burrow_control::changelog::{Change, ChangeId};
use tokio_postgres::{Client, IsolationLevel, NoTls, Transaction};

use super::identity::CHALLENGE_TTL;
use super::store::{
    fresh_ula, hash, now_unix, number, random_token, record_changes, register_in, AuthKeySpec,
    Columns, KeyRow, Logged, NodeRecord, NodeRow, RegisterTx, Registration, Report, Snapshot,
    Store, StoreError, CHANGE_BUDGET,
};

const MIGRATIONS: &[&str] = &["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE auth_keys (hash TEXT PRIMARY KEY, \"user\" TEXT NOT NULL, reusable BOOLEAN NOT NULL,
        expires_at BIGINT, tags TEXT NOT NULL, uses BIGINT NOT NULL DEFAULT 0, created_at BIGINT NOT NULL);
     CREATE TABLE nodes (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, \"user\" TEXT NOT NULL,
        tags TEXT NOT NULL, node_key TEXT NOT NULL UNIQUE, disco_key TEXT NOT NULL,
        endpoints TEXT NOT NULL DEFAULT '', home_region BIGINT NOT NULL DEFAULT 1,
        secret_hash TEXT NOT NULL, expires_at BIGINT, created_at BIGINT NOT NULL);",
    // Keys stored before they were canonical lose their whitespace; disco keys become unique.
    "UPDATE nodes SET node_key = btrim(node_key, E' \\t\\n\\r'), disco_key = btrim(disco_key, E' \\t\\n\\r');
     CREATE UNIQUE INDEX nodes_disco_key ON nodes (disco_key);",
    // Peer relays: the port a node relays on and whether its mapping is fixed.
    "ALTER TABLE nodes ADD COLUMN relay_port BIGINT;
     ALTER TABLE nodes ADD COLUMN fixed_mapping BOOLEAN NOT NULL DEFAULT FALSE;",
    // Replicas: nodes retired by expiry stay stored; every change is logged with an id from
    // the one-row head (consecutive, in commit order); challenges are spent tailnet-wide.
    "ALTER TABLE nodes ADD COLUMN retired BOOLEAN NOT NULL DEFAULT FALSE;
     ALTER TABLE nodes ADD COLUMN change_tokens DOUBLE PRECISION NOT NULL DEFAULT 0;
     ALTER TABLE nodes ADD COLUMN change_at DOUBLE PRECISION NOT NULL DEFAULT 0;
     UPDATE nodes SET retired = TRUE
        WHERE expires_at IS NOT NULL AND expires_at <= extract(epoch FROM now())::bigint;
     CREATE INDEX nodes_expiry ON nodes (expires_at) WHERE NOT retired;
     CREATE TABLE change_log (id BIGINT PRIMARY KEY, change TEXT NOT NULL, at BIGINT NOT NULL);
     CREATE TABLE change_head (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), id BIGINT NOT NULL);
     INSERT INTO change_head (id) VALUES (0);
     CREATE TABLE redeemed_challenges (challenge BYTEA PRIMARY KEY, expires_at BIGINT NOT NULL);
     ALTER TABLE nodes ADD COLUMN seen_at BIGINT;"];

/// PostgreSQL storage.
pub struct PgStore {
    client: Mutex<Client>,
    ula: Ipv6Addr,
    url: String,
    challenge_key: [u8; 32],
}

/// Runs a future to completion from synchronous code, inside or outside the runtime's workers.
fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

fn columns(r: &tokio_postgres::Row) -> Columns {
    Columns {
        id: r.get("id"),
        name: r.get("name"),
        user: r.get("user"),
        tags: r.get("tags"),
        node_key: r.get("node_key"),
        disco_key: r.get("disco_key"),
        endpoints: r.get("endpoints"),
        home_region: r.get("home_region"),
        expires_at: r.get("expires_at"),
        relay_port: r.get("relay_port"),
        fixed_mapping: r.get("fixed_mapping"),
    }
}

impl PgStore {
    /// Connects and migrates (a `postgres://user@host:port/db` URL).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut client = connect(url).await?;
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL); ")
            .await?;
        let tx = client.transaction().await?;
        tx.batch_execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")
            .await?;
        let version: i64 = tx
            .query_opt("SELECT version FROM schema_version", &[])
            .await?
            .map_or(0, |r| r.get(0));
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(m).await?;
            tx.execute("DELETE FROM schema_version", &[]).await?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&((i + 1) as i64)],
            )
            .await?;
        }
        tx.commit().await?;
        let ula = meta_once(&client, "ula", || fresh_ula().to_string()).await?;
        let ula = ula
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("ula {ula:?}")))?;
        let key = meta_once(&client, "challenge_key", || {
            hex(&super::random_bytes::<32>())
        })
        .await?;
        let challenge_key =
            unhex(&key).ok_or_else(|| StoreError::Corrupt("challenge_key".into()))?;
        Ok(PgStore {
            client: Mutex::new(client),
            ula,
            url: url.to_owned(),
            challenge_key,
        })
    }

    fn with<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.client.lock().expect("postgres client");
        if client.is_closed() {
            // The server restarted or the connection broke: connect again (this request
            // fails if it cannot, and the next one tries again).
            *client = block(connect(&self.url))?;
            tracing::info!("reconnected to postgres");
        }
        block(f(&mut client))
    }
}

/// Whether an error means the database cannot be reached now (down, restarting, shutting
/// sessions down, a broken connection), rather than that it refused the request.
pub fn unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // Connection exceptions (08…) and operator intervention (57…: shutdown, restart).
        Some(code) => code.code().starts_with("08") || code.code().starts_with("57"),
        None => e.as_db_error().is_none(),
    }
}

/// The connection settings of `url`, with time limits where it sets none: a database that
/// vanished from the network (no reset, no answer) fails requests within seconds instead of
/// holding them for TCP's two hours.
fn config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(std::time::Duration::from_secs(15));
    }
    config
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(10));
    Ok(config)
}

/// A connection, driven by a task of its own until it ends.
async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, connection) = config(url)?.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// A value in `meta`, made by `fresh` by whichever server asks first.
async fn meta_once(
    client: &Client,
    key: &str,
    fresh: impl FnOnce() -> String,
) -> Result<String, StoreError> {
    client
        .execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&key, &fresh()],
        )
        .await?;
    Ok(client
        .query_one("SELECT value FROM meta WHERE key = $1", &[&key])
        .await?
        .get(0))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A registration's steps on an open PostgreSQL transaction; the key and node rows it reads
/// are locked (`FOR UPDATE`) until it ends.
struct PgTx<'a>(Transaction<'a>);

impl RegisterTx for PgTx<'_> {
    async fn auth_key(&mut self, hash: &str) -> Result<Option<KeyRow>, StoreError> {
        Ok(self
            .0
            .query_opt(
                "SELECT \"user\", reusable, expires_at, tags, uses FROM auth_keys WHERE hash = $1 FOR UPDATE",
                &[&hash],
            )
            .await?
            .map(|k| KeyRow {
                user: k.get(0),
                reusable: k.get(1),
                expires_at: k.get(2),
                tags: k.get(3),
                uses: k.get(4),
            }))
    }

    async fn node_row(&mut self, node_key: &str) -> Result<Option<NodeRow>, StoreError> {
        Ok(self
            .0
            .query_opt(
                "SELECT id, \"user\", tags, secret_hash, expires_at, retired FROM nodes WHERE node_key = $1 FOR UPDATE",
                &[&node_key],
            )
            .await?
            .map(|r| NodeRow {
                id: r.get(0),
                user: r.get(1),
                tags: r.get(2),
                secret_hash: r.get(3),
                expires_at: r.get(4),
                retired: r.get(5),
            }))
    }

    async fn disco_key_taken(
        &mut self,
        disco_key: &str,
        node_key: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .0
            .query_opt(
                "SELECT id FROM nodes WHERE disco_key = $1 AND node_key != $2",
                &[&disco_key, &node_key],
            )
            .await?
            .is_some())
    }

    async fn update_node(
        &mut self,
        id: i64,
        reg: &Registration<'_>,
        secret_hash: &str,
        set_expiry: bool,
    ) -> Result<(), StoreError> {
        if set_expiry {
            self.0
                .execute(
                    "UPDATE nodes SET name = $1, disco_key = $2, secret_hash = $3, expires_at = $4, retired = FALSE WHERE id = $5",
                    &[&reg.name, &reg.disco_key, &secret_hash, &reg.expires_at.map(|e| e as i64), &id],
                )
                .await?;
        } else {
            self.0
                .execute(
                    "UPDATE nodes SET name = $1, disco_key = $2, secret_hash = $3 WHERE id = $4",
                    &[&reg.name, &reg.disco_key, &secret_hash, &id],
                )
                .await?;
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
        let row = self
            .0
            .query_one(
                "INSERT INTO nodes (name, \"user\", tags, node_key, disco_key, secret_hash, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                &[&reg.name, &user, &tags, &reg.node_key, &reg.disco_key, &secret_hash, &reg.expires_at.map(|e| e as i64), &(now_unix() as i64)],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn spend_key(&mut self, hash: &str) -> Result<(), StoreError> {
        self.0
            .execute(
                "UPDATE auth_keys SET uses = uses + 1 WHERE hash = $1",
                &[&hash],
            )
            .await?;
        Ok(())
    }
}

impl Store for PgStore {
    fn create_auth_key(&self, spec: &AuthKeySpec) -> Result<String, StoreError> {
        let key = random_token("burrowkey");
        let spec = spec.clone();
        let h = hash(&key);
        self.with(async move |c: &mut Client| {
            c.execute(
                "INSERT INTO auth_keys (hash, \"user\", reusable, expires_at, tags, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&h, &spec.user, &spec.reusable, &spec.expires_at.map(|e| e as i64), &spec.tags.join(","), &(now_unix() as i64)],
            )
            .await?;
            Ok(())
        })?;
        Ok(key)
    }

    fn register(&self, reg: &Registration<'_>) -> Result<(NodeRecord, String, Logged), StoreError> {
        let ula = self.ula;
        self.with(async move |c: &mut Client| {
            let mut tx = PgTx(c.transaction().await?);
            if let Some(challenge) = reg.challenge {
                // Kept past the challenge's own expiry (its first 8 bytes are when it was
                // issued), whichever server's clock sweeps it.
                let mut issued = [0u8; 8];
                issued.copy_from_slice(&challenge[..8]);
                let until = u64::from_be_bytes(issued).saturating_add(2 * CHALLENGE_TTL);
                let until = i64::try_from(until).unwrap_or(i64::MAX);
                let fresh = tx
                    .0
                    .execute(
                        "INSERT INTO redeemed_challenges (challenge, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[&challenge.as_slice(), &until],
                    )
                    .await?;
                if fresh == 0 {
                    return Err(StoreError::ChallengeReplayed);
                }
            }
            let secret = register_in(&mut tx, reg).await?;
            let row =
                tx.0.query_one("SELECT * FROM nodes WHERE node_key = $1", &[&reg.node_key])
                    .await?;
            let record = columns(&row).record(ula);
            let logged = log(&tx.0, record_changes(&record, false)).await?;
            tx.0.commit().await?;
            Ok((record, secret, logged))
        })
    }

    fn node(&self, id: u64) -> Result<Option<NodeRecord>, StoreError> {
        self.one("SELECT * FROM nodes WHERE id = $1", id as i64)
    }

    fn node_by_secret(&self, secret: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.one(
            "SELECT * FROM nodes WHERE secret_hash = $1 AND NOT retired",
            hash(secret),
        )
    }

    fn node_by_key(&self, key: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.one("SELECT * FROM nodes WHERE node_key = $1", key.to_owned())
    }

    fn report(&self, id: u64, report: &Report) -> Result<Option<(NodeRecord, Logged)>, StoreError> {
        let list: Vec<String> = report.endpoints.iter().map(|e| e.to_string()).collect();
        let list = list.join(",");
        let report = report.clone();
        let ula = self.ula;
        self.with(async move |c: &mut Client| {
            let tx = c.transaction().await?;
            let Some(old) = tx
                .query_opt(
                    // The database's clock times the budget: one clock for every replica.
                    "SELECT *, extract(epoch FROM clock_timestamp())::float8 AS db_now
                        FROM nodes WHERE id = $1 AND NOT retired FOR UPDATE",
                    &[&(id as i64)],
                )
                .await?
            else {
                return Ok(None);
            };
            let (tokens, at): (f64, f64) = (old.get("change_tokens"), old.get("change_at"));
            let db_now: f64 = old.get("db_now");
            let old = columns(&old).record(ula);
            let (tokens, now) = CHANGE_BUDGET
                .take(tokens, at, db_now)
                .ok_or(StoreError::ChangeBudgetSpent)?;
            let row = tx
                .query_one(
                    "UPDATE nodes SET endpoints = $1, home_region = $2, relay_port = $3, fixed_mapping = $4,
                        change_tokens = $5, change_at = $6 WHERE id = $7 RETURNING *",
                    &[
                        &list,
                        &i64::from(report.home_region),
                        &report.relay_port.map(i64::from),
                        &report.fixed_mapping,
                        &tokens,
                        &now,
                        &(id as i64),
                    ],
                )
                .await?;
            let record = columns(&row).record(ula);
            let relay_changed = old.relay_capability() != record.relay_capability();
            let logged = log(&tx, record_changes(&record, relay_changed)).await?;
            tx.commit().await?;
            Ok(Some((record, logged)))
        })
    }

    fn expire(&self, id: u64, now: u64) -> Result<Option<Logged>, StoreError> {
        self.with(async move |c: &mut Client| {
            let tx = c.transaction().await?;
            let Some(row) = tx
                .query_opt(
                    "SELECT retired FROM nodes WHERE id = $1 FOR UPDATE",
                    &[&(id as i64)],
                )
                .await?
            else {
                return Ok(None);
            };
            let retired: bool = row.get(0);
            tx.execute(
                "UPDATE nodes SET expires_at = $1, retired = TRUE WHERE id = $2",
                &[&(now as i64), &(id as i64)],
            )
            .await?;
            let changes = match retired {
                false => vec![Change::Remove { id }],
                true => Vec::new(),
            };
            let logged = log(&tx, changes).await?;
            tx.commit().await?;
            Ok(Some(logged))
        })
    }

    fn remove(&self, id: u64) -> Result<Option<Logged>, StoreError> {
        self.with(async move |c: &mut Client| {
            let tx = c.transaction().await?;
            if tx
                .execute("DELETE FROM nodes WHERE id = $1", &[&(id as i64)])
                .await?
                == 0
            {
                return Ok(None);
            }
            let logged = log(&tx, vec![Change::Remove { id }]).await?;
            tx.commit().await?;
            Ok(Some(logged))
        })
    }

    fn expire_due(&self, now: u64) -> Result<Logged, StoreError> {
        self.with(async move |c: &mut Client| {
            let tx = c.transaction().await?;
            // One replica at a time retires and tidies; the others follow the log.
            let leader: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&EXPIRY_LOCK])
                .await?
                .get(0);
            if !leader {
                return Ok(Vec::new());
            }
            let now = now as i64;
            let ids: Vec<i64> = tx
                .query(
                    "UPDATE nodes SET retired = TRUE WHERE NOT retired AND expires_at <= $1 RETURNING id",
                    &[&now],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            tx.execute(
                "DELETE FROM redeemed_challenges WHERE expires_at < $1",
                &[&now],
            )
            .await?;
            tx.execute(
                "DELETE FROM change_log WHERE id <= (SELECT id FROM change_head) - $1",
                &[&LOG_KEPT],
            )
            .await?;
            let changes = ids
                .into_iter()
                .map(|id| Change::Remove { id: id as u64 })
                .collect();
            let logged = log(&tx, changes).await?;
            tx.commit().await?;
            Ok(logged)
        })
    }

    fn set_policy(&self, source: &str) -> Result<Logged, StoreError> {
        let source = source.to_owned();
        self.with(async move |c: &mut Client| {
            let tx = c.transaction().await?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('policy', $1)
                    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&source],
            )
            .await?;
            let logged = log(&tx, vec![Change::Policy { source }]).await?;
            tx.commit().await?;
            Ok(logged)
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let ula = self.ula;
        self.with(async move |c: &mut Client| {
            Ok(c.query("SELECT * FROM nodes ORDER BY id", &[])
                .await?
                .iter()
                .map(|r| columns(r).record(ula))
                .collect())
        })
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let ula = self.ula;
        self.with(async move |c: &mut Client| snapshot(c, ula).await)
    }

    fn changes_since(&self, from: ChangeId, limit: usize) -> Result<Logged, StoreError> {
        self.with(async move |c: &mut Client| changes_since(c, from, limit).await)
    }

    fn shared_url(&self) -> Option<String> {
        Some(self.url.clone())
    }

    fn challenge_key(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(Some(self.challenge_key))
    }

    fn note_online(&self, ids: &[u64], now: u64) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = ids.iter().map(|i| *i as i64).collect();
        self.with(async move |c: &mut Client| {
            c.execute(
                "UPDATE nodes SET seen_at = $1 WHERE id = ANY($2)",
                &[&(now as i64), &ids],
            )
            .await?;
            Ok(())
        })
    }

    fn online_since(&self, since: u64) -> Result<std::collections::BTreeSet<u64>, StoreError> {
        self.with(async move |c: &mut Client| {
            Ok(c.query(
                "SELECT id FROM nodes WHERE seen_at >= $1",
                &[&(since as i64)],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect())
        })
    }
}

impl PgStore {
    fn one(
        &self,
        sql: &'static str,
        param: impl tokio_postgres::types::ToSql + Sync + Send + 'static,
    ) -> Result<Option<NodeRecord>, StoreError> {
        let ula = self.ula;
        self.with(async move |c: &mut Client| {
            Ok(c.query_opt(sql, &[&param])
                .await?
                .map(|r| columns(&r).record(ula)))
        })
    }
}

/// The channel replicas announce committed changes on; the payload is the last id committed.
pub const CHANNEL: &str = "burrow_changes";
/// The advisory lock whose holder retires expired nodes and trims the log.
const EXPIRY_LOCK: i64 = 0x6275_7272_6f77_0001;
/// Changes the log keeps; a replica further behind than this reloads the whole tailnet.
pub const LOG_KEPT: i64 = 100_000;

/// Appends `changes` to the log inside `tx`, numbered after the head; the head's row stays
/// locked until `tx` ends, so ids are consecutive and in commit order, and a rolled-back
/// transaction gives its ids back. Announces the new head on [`CHANNEL`] (sent on commit).
async fn log(tx: &Transaction<'_>, changes: Vec<Change>) -> Result<Logged, StoreError> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let n = changes.len() as i64;
    let last: i64 = tx
        .query_one("UPDATE change_head SET id = id + $1 RETURNING id", &[&n])
        .await?
        .get(0);
    let logged = number((last - n) as ChangeId, changes);
    let at = now_unix() as i64;
    let insert = tx
        .prepare("INSERT INTO change_log (id, change, at) VALUES ($1, $2, $3)")
        .await?;
    for (id, change) in &logged {
        let json = serde_json::to_string(change).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.execute(&insert, &[&(*id as i64), &json, &at]).await?;
    }
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &last.to_string()])
        .await?;
    Ok(logged)
}

/// The tailnet as committed, in one repeatable-read transaction.
pub(crate) async fn snapshot(c: &mut Client, ula: Ipv6Addr) -> Result<Snapshot, StoreError> {
    let tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let head: i64 = tx
        .query_one("SELECT id FROM change_head", &[])
        .await?
        .get(0);
    let nodes = tx
        .query("SELECT * FROM nodes WHERE NOT retired ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| columns(r).record(ula))
        .collect();
    let policy = tx
        .query_opt("SELECT value FROM meta WHERE key = 'policy'", &[])
        .await?
        .map(|r| r.get(0));
    tx.commit().await?;
    Ok(Snapshot {
        nodes,
        head: head as ChangeId,
        policy,
    })
}

/// Up to `limit` logged changes from `from` on.
pub(crate) async fn changes_since(
    c: &Client,
    from: ChangeId,
    limit: usize,
) -> Result<Logged, StoreError> {
    let rows = c
        .query(
            "SELECT id, change FROM change_log WHERE id >= $1 ORDER BY id LIMIT $2",
            &[&(from as i64), &(limit as i64)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let text: String = r.get(1);
            let change = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("change {id}: {e}")))?;
            Ok((id as ChangeId, change))
        })
        .collect()
}

/// The logged change with this id, if the log holds it.
pub(crate) async fn change_at(c: &Client, id: ChangeId) -> Result<Option<Change>, StoreError> {
    Ok(changes_since(c, id, 1)
        .await?
        .into_iter()
        .find(|(i, _)| *i == id)
        .map(|(_, change)| change))
}

/// The log's head as committed.
pub(crate) async fn head(c: &Client) -> Result<ChangeId, StoreError> {
    let id: i64 = c.query_one("SELECT id FROM change_head", &[]).await?.get(0);
    Ok(id as ChangeId)
}

/// A connection that listens on [`CHANNEL`]: the client (for reading the log) and a stream of
/// announced heads; the stream ends when the connection does.
pub(crate) async fn listen(
    url: &str,
) -> Result<(Client, tokio::sync::mpsc::Receiver<ChangeId>), StoreError> {
    let (client, mut connection) = config(url)?.connect(NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
            match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if let Ok(id) = n.payload().parse() {
                        // A full queue loses nothing: the follower reads the head again.
                        let _ = tx.try_send(id);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "postgres listener connection failed");
                    return;
                }
                None => return,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok((client, rx))
}
