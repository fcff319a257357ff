//! PostgreSQL storage (`burrow control serve --db postgres://…`), for deployments that
//! outgrow one machine's SQLite file. Same schema and behaviour as [`super::store::SqliteStore`].

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Mutex;

use tokio_postgres::{Client, NoTls, Transaction};

use super::store::{
    fresh_ula, hash, now_unix, random_token, register_in, AuthKeySpec, Columns, KeyRow, NodeRecord,
    NodeRow, RegisterTx, Registration, Store, StoreError,
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
     ALTER TABLE nodes ADD COLUMN fixed_mapping BOOLEAN NOT NULL DEFAULT FALSE;"];

/// PostgreSQL storage.
pub struct PgStore {
    client: Mutex<Client>,
    ula: Ipv6Addr,
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
        let (mut client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(error = %e, "postgres connection ended");
            }
        });
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
        let ula = match client
            .query_opt("SELECT value FROM meta WHERE key = 'ula'", &[])
            .await?
        {
            Some(r) => {
                let s: String = r.get(0);
                s.parse()
                    .map_err(|_| StoreError::Corrupt(format!("ula {s:?}")))?
            }
            None => {
                let a = fresh_ula();
                client
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('ula', $1) ON CONFLICT DO NOTHING",
                        &[&a.to_string()],
                    )
                    .await?;
                let r = client
                    .query_one("SELECT value FROM meta WHERE key = 'ula'", &[])
                    .await?;
                let s: String = r.get(0);
                s.parse()
                    .map_err(|_| StoreError::Corrupt(format!("ula {s:?}")))?
            }
        };
        Ok(PgStore {
            client: Mutex::new(client),
            ula,
        })
    }

    fn with<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.client.lock().expect("postgres client");
        block(f(&mut client))
    }
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
                "SELECT id, \"user\", tags, secret_hash, expires_at FROM nodes WHERE node_key = $1 FOR UPDATE",
                &[&node_key],
            )
            .await?
            .map(|r| NodeRow {
                id: r.get(0),
                user: r.get(1),
                tags: r.get(2),
                secret_hash: r.get(3),
                expires_at: r.get(4),
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
                    "UPDATE nodes SET name = $1, disco_key = $2, secret_hash = $3, expires_at = $4 WHERE id = $5",
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

    fn register(&self, reg: &Registration<'_>) -> Result<(NodeRecord, String), StoreError> {
        let ula = self.ula;
        self.with(async move |c: &mut Client| {
            let mut tx = PgTx(c.transaction().await?);
            let secret = register_in(&mut tx, reg).await?;
            let row =
                tx.0.query_one("SELECT * FROM nodes WHERE node_key = $1", &[&reg.node_key])
                    .await?;
            tx.0.commit().await?;
            Ok((columns(&row).record(ula), secret))
        })
    }

    fn node(&self, id: u64) -> Result<Option<NodeRecord>, StoreError> {
        let ula = self.ula;
        self.with(async move |c: &mut Client| {
            Ok(
                c.query_opt("SELECT * FROM nodes WHERE id = $1", &[&(id as i64)])
                    .await?
                    .map(|r| columns(&r).record(ula)),
            )
        })
    }

    fn node_by_secret(&self, secret: &str) -> Result<Option<NodeRecord>, StoreError> {
        let (ula, h) = (self.ula, hash(secret));
        self.with(async move |c: &mut Client| {
            Ok(
                c.query_opt("SELECT * FROM nodes WHERE secret_hash = $1", &[&h])
                    .await?
                    .map(|r| columns(&r).record(ula)),
            )
        })
    }

    fn node_by_key(&self, key: &str) -> Result<Option<NodeRecord>, StoreError> {
        let (ula, key) = (self.ula, key.to_owned());
        self.with(async move |c: &mut Client| {
            Ok(
                c.query_opt("SELECT * FROM nodes WHERE node_key = $1", &[&key])
                    .await?
                    .map(|r| columns(&r).record(ula)),
            )
        })
    }

    fn set_endpoints(
        &self,
        id: u64,
        endpoints: &[SocketAddr],
        home_region: u16,
    ) -> Result<(), StoreError> {
        let list: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
        let list = list.join(",");
        self.with(async move |c: &mut Client| {
            c.execute(
                "UPDATE nodes SET endpoints = $1, home_region = $2 WHERE id = $3",
                &[&list, &i64::from(home_region), &(id as i64)],
            )
            .await?;
            Ok(())
        })
    }

    fn set_relay(
        &self,
        id: u64,
        relay_port: Option<u16>,
        fixed_mapping: bool,
    ) -> Result<(), StoreError> {
        let port = relay_port.map(i64::from);
        self.with(async move |c: &mut Client| {
            c.execute(
                "UPDATE nodes SET relay_port = $1, fixed_mapping = $2 WHERE id = $3",
                &[&port, &fixed_mapping, &(id as i64)],
            )
            .await?;
            Ok(())
        })
    }

    fn set_expiry(&self, id: u64, expires_at: Option<u64>) -> Result<bool, StoreError> {
        let expires_at = expires_at.map(|e| e as i64);
        self.with(async move |c: &mut Client| {
            Ok(c.execute(
                "UPDATE nodes SET expires_at = $1 WHERE id = $2",
                &[&expires_at, &(id as i64)],
            )
            .await?
                > 0)
        })
    }

    fn remove(&self, id: u64) -> Result<bool, StoreError> {
        self.with(async move |c: &mut Client| {
            Ok(
                c.execute("DELETE FROM nodes WHERE id = $1", &[&(id as i64)])
                    .await?
                    > 0,
            )
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
}
