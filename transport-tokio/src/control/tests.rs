//! The control server's state machine: removals, expiry and endpoint changes in flight.

use super::*;

fn control_with_node() -> (Arc<Control>, NodeRecord) {
    let (store, record) = store::memory_store_with_node();
    let c = Control::new(store, Control::policy(ALLOW_ALL).unwrap(), vec![]).unwrap();
    (c, record)
}

/// Audit #19: an endpoint change in flight while the admin removes the node must not
/// bring it back into the tailnet.
#[test]
fn a_change_in_flight_does_not_revive_a_removed_node() {
    let (c, mut record) = control_with_node();
    assert!(c.inner.lock().unwrap().tailnet.get(record.id).is_some());
    c.retire(record.id); // the admin's remove/expire lands first
    record.endpoints = vec!["203.0.113.1:41641".parse().unwrap()];
    assert!(!c.update_live(&record), "refused");
    assert!(c.inner.lock().unwrap().tailnet.get(record.id).is_none());
}

/// Audit #6: a stream that does not read is closed once its queue is full, instead of
/// growing the server's memory.
#[test]
fn a_stream_that_falls_behind_is_closed_not_buffered() {
    let (c, record) = control_with_node();
    let (tx, mut rx) = mpsc::channel(STREAM_QUEUE);
    c.inner
        .lock()
        .unwrap()
        .streams
        .entry(record.id)
        .or_default()
        .push_back(tx);
    for _ in 0..STREAM_QUEUE * 3 {
        Control::publish(
            &mut c.inner.lock().unwrap(),
            vec![(record.id, Delta::PeerRemove { id: 99 })],
        );
    }
    let mut queued = 0;
    while let Ok(m) = rx.try_recv() {
        assert!(matches!(m, MapMessage::Delta(_)));
        queued += 1;
    }
    assert_eq!(queued, STREAM_QUEUE);
    assert!(
        matches!(rx.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)),
        "the stream was closed so the node resyncs"
    );
    assert!(c.inner.lock().unwrap().streams[&record.id].is_empty());
}

/// Peer relays: a node's reported relay port is stored, survives a restart of the server, and
/// gives its peers the grant the policy's relay rule makes.
#[test]
fn a_reported_relay_port_survives_a_restart_and_grants_its_peers() {
    let dir = std::env::temp_dir().join(format!("burrow-relay-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("control.sqlite");
    let _ = std::fs::remove_file(&path);
    let policy = r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
                     "relay": [{"src": ["*"], "via": ["*"]}]}"#;
    let pk = |b| {
        burrow_wg::PrivateKey::from_bytes([b; 32])
            .public_key()
            .to_base64()
    };
    let (a, r) = {
        let store = store::SqliteStore::open(&path).unwrap();
        let key = store
            .create_auth_key(&store::AuthKeySpec {
                user: "u".into(),
                reusable: true,
                expires_at: None,
                tags: vec![],
            })
            .unwrap();
        let mut ids = Vec::new();
        for (name, b) in [("a", 1), ("r", 3)] {
            let (rec, _) = store
                .register(&store::Registration {
                    auth_key: Some(&key),
                    node_secret: None,
                    name,
                    node_key: &pk(b),
                    disco_key: &pk(b + 1),
                    expires_at: None,
                })
                .unwrap();
            assert_eq!((rec.relay_port, rec.fixed_mapping), (None, false));
            ids.push(rec.id);
        }
        store.set_relay(ids[1], Some(7000), true).unwrap();
        (ids[0], ids[1])
    };
    let store = Arc::new(store::SqliteStore::open(&path).unwrap());
    let rec = store.node(r).unwrap().unwrap();
    assert_eq!((rec.relay_port, rec.fixed_mapping), (Some(7000), true));
    let c = Control::new(store, Control::policy(policy).unwrap(), vec![]).unwrap();
    let inner = c.inner.lock().unwrap();
    let map = inner.tailnet.netmap(a).unwrap();
    assert_eq!(map.relay.relays, [r].into());
    assert!(inner.tailnet.netmap(r).unwrap().relay.clients.contains(&a));
    drop(inner);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A database made before peer relays gains the columns, its nodes relay for nobody.
#[test]
fn an_older_database_migrates_to_relay_columns() {
    let dir = std::env::temp_dir().join(format!("burrow-relay-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("old.sqlite");
    let _ = std::fs::remove_file(&path);
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        // The schema as the first two migrations left it.
        db.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE auth_keys (hash TEXT PRIMARY KEY, user TEXT NOT NULL, reusable INTEGER NOT NULL,
                expires_at INTEGER, tags TEXT NOT NULL, uses INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL);
             CREATE TABLE nodes (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, user TEXT NOT NULL,
                tags TEXT NOT NULL, node_key TEXT NOT NULL UNIQUE, disco_key TEXT NOT NULL,
                endpoints TEXT NOT NULL DEFAULT '', home_region INTEGER NOT NULL DEFAULT 1,
                secret_hash TEXT NOT NULL, expires_at INTEGER, created_at INTEGER NOT NULL);
             CREATE UNIQUE INDEX nodes_disco_key ON nodes (disco_key);
             INSERT INTO meta VALUES ('ula', 'fd00:1:2::');
             INSERT INTO nodes (name, user, tags, node_key, disco_key, secret_hash, created_at)
                VALUES ('old', 'u', '', 'k', 'd', 'h', 0);
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let store = store::SqliteStore::open(&path).unwrap();
    let nodes = store.nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].name, "old");
    assert_eq!((nodes[0].relay_port, nodes[0].fixed_mapping), (None, false));
    store.set_relay(nodes[0].id, Some(41642), false).unwrap();
    assert_eq!(
        store.node(nodes[0].id).unwrap().unwrap().relay_port,
        Some(41642)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
