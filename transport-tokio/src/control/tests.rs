//! The control server's state machine: removals, expiry and endpoint changes in flight.

use super::*;

fn control_with_node() -> (Arc<Control>, NodeRecord) {
    let (store, record) = store::memory_store_with_node();
    let c = Control::new(store, Control::policy(ALLOW_ALL).unwrap(), vec![]).unwrap();
    (c, record)
}

fn report(port: u16) -> Report {
    Report {
        endpoints: vec![SocketAddr::from(([203, 0, 113, 1], port))],
        home_region: 1,
        relay_port: None,
        fixed_mapping: false,
    }
}

/// Audit #19: an endpoint change in flight while the admin removes the node must not
/// bring it back into the tailnet, whichever order the two are applied in.
#[test]
fn a_change_in_flight_does_not_revive_a_removed_node() {
    let (c, record) = control_with_node();
    assert!(c.inner.lock().unwrap().tailnet.get(record.id).is_some());
    // The report commits first, the removal second, but the removal is applied first.
    let (_, reported) = c.store.report(record.id, &report(41641)).unwrap().unwrap();
    let removed = c.store.remove(record.id).unwrap().unwrap();
    c.commit(removed);
    c.commit(reported);
    assert!(c.inner.lock().unwrap().tailnet.get(record.id).is_none());
    // Once removed, a report is refused and logs nothing.
    assert!(c.store.report(record.id, &report(41642)).unwrap().is_none());
}

/// An expired node's report is refused, and a later expiry sweep does not log it twice.
#[test]
fn an_expired_node_reports_nothing_and_expires_once() {
    let (c, record) = control_with_node();
    let before = c.applied();
    let expired = c.store.expire(record.id, 5).unwrap().unwrap();
    assert_eq!(expired.len(), 1);
    c.commit(expired);
    assert!(c.inner.lock().unwrap().tailnet.get(record.id).is_none());
    assert!(c.store.report(record.id, &report(41641)).unwrap().is_none());
    assert_eq!(c.expire_due(10).unwrap(), Vec::<u64>::new());
    assert_eq!(c.applied(), before + 1, "one removal logged");
}

/// A stream that reconnects with the id of the last change it saw gets the deltas since,
/// and a whole netmap once they are gone from the history.
#[test]
fn a_stream_resumes_from_its_last_change() {
    let (store, a) = store::memory_store_with_node();
    let pk = |b| {
        burrow_wg::PrivateKey::from_bytes([b; 32])
            .public_key()
            .to_base64()
    };
    let key = store
        .create_auth_key(&store::AuthKeySpec {
            user: "u".into(),
            reusable: true,
            expires_at: None,
            tags: vec![],
        })
        .unwrap();
    let c = Control::new(store.clone(), Control::policy(ALLOW_ALL).unwrap(), vec![]).unwrap();
    let (b, _, logged) = store
        .register(&Registration {
            auth_key: Some(&key),
            node_secret: None,
            name: "b",
            node_key: &pk(5),
            disco_key: &pk(6),
            expires_at: None,
            challenge: None,
        })
        .unwrap();
    c.commit(logged);
    let seen = c.applied();
    for port in 1..=3 {
        let (_, logged) = store.report(b.id, &report(port)).unwrap().unwrap();
        c.commit(logged);
    }
    let inner = c.inner.lock().unwrap();
    // b changed three times: the resumed stream gets b as it is now, once.
    let resumed = Control::resume(&inner, a.id, seen).expect("all here");
    assert!(matches!(resumed[0], (None, Outgoing::Resumed(s)) if s == seen));
    assert_eq!(resumed.len(), 2, "{resumed:?}");
    assert_eq!(
        resumed[1].0,
        Some(seen + 3),
        "the last message names the head"
    );
    let Outgoing::Delta(d) = &resumed[1].1 else {
        panic!("a delta")
    };
    let Delta::PeerUpsert(p) = &**d else {
        panic!("b's last endpoints")
    };
    assert_eq!(p.endpoints, report(3).endpoints);
    let nothing = Control::resume(&inner, a.id, seen + 3).unwrap();
    assert!(matches!(nothing[..], [(Some(id), Outgoing::Resumed(_))] if id == seen + 3));
    assert!(
        Control::resume(&inner, a.id, seen + 4).is_none(),
        "ahead of this server"
    );
    assert!(
        Control::resume(&inner, a.id, inner.history_start).is_none(),
        "from before this server loaded the tailnet (its configuration may have changed)"
    );
    drop(inner);
    // More parts changed than the history keeps: a whole netmap.
    let mut inner = c.inner.lock().unwrap();
    let applied = inner.follower.applied();
    for k in 0..=HISTORY_PER_NODE as u64 {
        Control::publish(
            &mut inner,
            applied,
            vec![(a.id, Delta::PeerRemove { id: 1000 + k })],
        );
    }
    assert!(
        Control::resume(&inner, a.id, seen).is_none(),
        "let go: a whole netmap"
    );
    assert!(
        Control::resume(&inner, a.id, applied).is_some(),
        "from the last change let go on, it resumes"
    );
}

/// A node retired and registered again under its id gets a whole netmap for a stream from
/// before: what changed while it was out is not in its history.
#[test]
fn a_node_back_under_its_id_does_not_resume_from_before() {
    let (store, a) = store::memory_store_with_node();
    let c = Control::new(store.clone(), Control::policy(ALLOW_ALL).unwrap(), vec![]).unwrap();
    let (_, logged) = store.report(a.id, &report(1)).unwrap().unwrap();
    c.commit(logged);
    let seen = c.applied();
    c.commit(store.expire(a.id, 5).unwrap().unwrap());
    let key = store
        .create_auth_key(&store::AuthKeySpec {
            user: "u".into(),
            reusable: false,
            expires_at: None,
            tags: vec![],
        })
        .unwrap();
    let (back, _, logged) = store
        .register(&Registration {
            auth_key: Some(&key),
            node_secret: None,
            name: "a",
            node_key: &a.node_key,
            disco_key: &a.disco_key,
            expires_at: None,
            challenge: None,
        })
        .unwrap();
    assert_eq!(back.id, a.id, "the same node");
    c.commit(logged);
    let inner = c.inner.lock().unwrap();
    assert!(inner.tailnet.get(a.id).is_some());
    assert!(Control::resume(&inner, a.id, seen).is_none());
    assert!(Control::resume(&inner, a.id, inner.follower.applied()).is_some());
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
            1,
            vec![(record.id, Delta::PeerRemove { id: 99 })],
        );
    }
    let mut queued = 0;
    while let Ok(m) = rx.try_recv() {
        assert!(matches!(m, (Some(1), Outgoing::Delta(_))));
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
            let (rec, _, _) = store
                .register(&store::Registration {
                    auth_key: Some(&key),
                    node_secret: None,
                    name,
                    node_key: &pk(b),
                    disco_key: &pk(b + 1),
                    expires_at: None,
                    challenge: None,
                })
                .unwrap();
            assert_eq!((rec.relay_port, rec.fixed_mapping), (None, false));
            ids.push(rec.id);
        }
        let relay = Report {
            endpoints: vec![],
            home_region: 1,
            relay_port: Some(7000),
            fixed_mapping: true,
        };
        store.report(ids[1], &relay).unwrap().unwrap();
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
    let relay = Report {
        relay_port: Some(41642),
        ..report(1)
    };
    store.report(nodes[0].id, &relay).unwrap().unwrap();
    assert_eq!(
        store.node(nodes[0].id).unwrap().unwrap().relay_port,
        Some(41642)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The borrowed wire form spells every message as [`MapMessage`] does.
#[test]
fn outgoing_messages_serialize_as_map_messages() {
    let (c, record) = control_with_node();
    let netmap = c.inner.lock().unwrap().tailnet.netmap(record.id).unwrap();
    let delta = Delta::PeerRemove { id: 9 };
    let pairs = [
        (
            Outgoing::NetMap(Box::new(netmap.clone())),
            MapMessage::NetMap(netmap),
        ),
        (
            Outgoing::Delta(Arc::new(delta.clone())),
            MapMessage::Delta(delta),
        ),
        (Outgoing::Resumed(7), MapMessage::Resumed { since: 7 }),
    ];
    for (out, message) in pairs {
        let json = out.to_json();
        assert_eq!(json, serde_json::to_string(&message).unwrap());
        assert_eq!(serde_json::from_str::<MapMessage>(&json).unwrap(), message);
    }
}

/// Nodes sent the same delta share one copy of it.
#[test]
fn a_delta_for_many_nodes_is_sent_as_one_copy() {
    let (c, _) = control_with_node();
    let mut inner = c.inner.lock().unwrap();
    let mut receivers = Vec::new();
    for node in 1..=3 {
        let (tx, rx) = mpsc::channel(4);
        inner.streams.entry(node).or_default().push_back(tx);
        receivers.push(rx);
    }
    let d = Delta::PeerRemove { id: 9 };
    Control::publish(&mut inner, 5, vec![(1, d.clone()), (2, d.clone()), (3, d)]);
    let arcs: Vec<Arc<Delta>> = receivers
        .iter_mut()
        .map(|rx| match rx.try_recv().unwrap() {
            (Some(5), Outgoing::Delta(d)) => d,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(Arc::ptr_eq(&arcs[0], &arcs[2]));
}

/// The endpoint budget: ten at once, then one a second; a clock that went back refills
/// nothing.
#[test]
fn the_change_budget_is_a_token_bucket() {
    let b = store::CHANGE_BUDGET;
    let (mut tokens, mut at) = (0.0, 0.0);
    for _ in 0..10 {
        (tokens, at) = b.take(tokens, at, 1000.0).expect("a burst of ten");
    }
    assert_eq!(b.take(tokens, at, 1000.5), None, "spent");
    assert!(b.take(tokens, at, 1001.0).is_some(), "one a second");
    assert_eq!(b.take(tokens, at, 900.0), None, "back in time");
    // Two servers, one a minute ahead: alternating between them refills nothing.
    let (t, ahead) = b.take(0.0, 0.0, 2060.0).unwrap();
    assert_eq!(ahead, 2060.0);
    let (t, kept) = b.take(t, ahead, 2000.0).unwrap();
    assert_eq!(kept, 2060.0, "the later time is kept");
    assert!(t < 9.0, "{t}");
}

/// The budget is kept in the store: a node that spends it is refused until it refills.
#[test]
fn a_node_that_spends_its_budget_is_refused_by_the_store() {
    let (c, record) = control_with_node();
    for port in 1..=10 {
        assert!(c.store.report(record.id, &report(port)).unwrap().is_some());
    }
    assert!(matches!(
        c.store.report(record.id, &report(11)),
        Err(StoreError::ChangeBudgetSpent)
    ));
}

/// Change ids stay unique across restarts of a SQLite server: a node's last id from an earlier
/// run never names a change of this one.
#[test]
fn sqlite_change_ids_continue_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("burrow-change-ids-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("control.sqlite");
    let _ = std::fs::remove_file(&path);
    let before = {
        let store = store::SqliteStore::open(&path).unwrap();
        store.set_policy(ALLOW_ALL).unwrap();
        let logged = store.set_policy(ALLOW_ALL).unwrap();
        assert_eq!(logged[0].0, 2);
        store.snapshot().unwrap().head
    };
    let store = store::SqliteStore::open(&path).unwrap();
    assert_eq!(store.snapshot().unwrap().head, before);
    assert_eq!(store.set_policy(ALLOW_ALL).unwrap()[0].0, before + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node's netmap as a stream builds it, and where the stream is.
#[derive(Default)]
struct Follower2 {
    map: Option<burrow_control::NetMap>,
    last: Option<ChangeId>,
    rx: Option<mpsc::Receiver<(Option<ChangeId>, Outgoing)>>,
}

impl Follower2 {
    fn take(&mut self, (tag, m): (Option<ChangeId>, Outgoing)) {
        match m {
            Outgoing::NetMap(map) => self.map = Some(*map),
            Outgoing::Resumed(_) => {}
            Outgoing::Delta(d) => {
                let map = self.map.as_mut().expect("a netmap first");
                match (*d).clone() {
                    Delta::PeerUpsert(p) => {
                        map.peers.retain(|q| q.node.id != p.node.id);
                        map.peers.push(p);
                    }
                    Delta::PeerRemove { id } => map.peers.retain(|q| q.node.id != id),
                    Delta::Filter { rules } => map.filter = rules,
                    Delta::Relay(g) => map.relay = g,
                }
            }
        }
        if tag.is_some() {
            self.last = tag;
        }
    }

    fn drain(&mut self) {
        let mut got = Vec::new();
        if let Some(rx) = self.rx.as_mut() {
            while let Ok(m) = rx.try_recv() {
                got.push(m);
            }
        }
        for m in got {
            self.take(m);
        }
    }

    /// Opens a stream as the map handler does: resumed after `last` when the server can,
    /// else from a whole netmap; whether it resumed.
    fn connect(&mut self, c: &Control, id: u64) -> bool {
        let mut inner = c.inner.lock().unwrap();
        let resumed = self.last.and_then(|l| Control::resume(&inner, id, l));
        let was_resumed = resumed.is_some();
        let messages = match resumed {
            Some(m) => m,
            None => {
                let map = inner.tailnet.netmap(id).unwrap();
                vec![(
                    Some(inner.follower.applied()),
                    Outgoing::NetMap(Box::new(map)),
                )]
            }
        };
        let (tx, rx) = mpsc::channel(4096);
        inner.streams.entry(id).or_default().push_back(tx);
        drop(inner);
        for m in messages {
            self.take(m);
        }
        self.rx = Some(rx);
        was_resumed
    }
}

/// Streams that drop and resume at random moments, through registrations, endpoint and relay
/// reports, expiries and policy changes, end with the netmap a whole one gives: what a
/// resume sends (the current value of every part that changed) is enough, whatever was let go.
#[test]
fn resumed_streams_end_with_the_netmap_a_whole_one_gives() {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    const SPLIT: &str = r#"{ "acls": [ { "action": "accept", "src": ["u"], "dst": ["u:*"] },
                                  { "action": "accept", "src": ["v"], "dst": ["*:22"] } ],
                             "relay": [ { "src": ["*"], "via": ["*"] } ] }"#;
    let pk = |b: u8| {
        burrow_wg::PrivateKey::from_bytes([b; 32])
            .public_key()
            .to_base64()
    };
    let mut resumes = 0;
    for seed in 0..32u64 {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let (store, a) = store::memory_store_with_node();
        let c = Control::new(store.clone(), Control::policy(ALLOW_ALL).unwrap(), vec![]).unwrap();
        let keys: Vec<String> = ["u", "v"]
            .iter()
            .map(|user| {
                store
                    .create_auth_key(&store::AuthKeySpec {
                        user: (*user).into(),
                        reusable: true,
                        expires_at: None,
                        tags: vec![],
                    })
                    .unwrap()
            })
            .collect();
        let mut nodes: BTreeMap<u64, (NodeRecord, Follower2)> = BTreeMap::new();
        let mut first = Follower2::default();
        let _ = first.connect(&c, a.id);
        nodes.insert(a.id, (a.clone(), first));
        let mut next_key = 10u8;
        for _ in 0..160 {
            let live: Vec<u64> = nodes.keys().copied().collect();
            let pick = live[rng.next_u32() as usize % live.len()];
            match rng.next_u32() % 10 {
                0..=2 if next_key < 90 => {
                    let user = rng.next_u32() as usize % 2;
                    let (r, _, logged) = store
                        .register(&Registration {
                            auth_key: Some(&keys[user]),
                            node_secret: None,
                            name: &format!("n{next_key}"),
                            node_key: &pk(next_key),
                            disco_key: &pk(next_key + 100),
                            expires_at: None,
                            challenge: None,
                        })
                        .unwrap();
                    next_key += 1;
                    c.commit(logged);
                    let mut f = Follower2::default();
                    let _ = f.connect(&c, r.id);
                    nodes.insert(r.id, (r, f));
                }
                2 | 3 => {
                    let mut rep = report(1 + (rng.next_u32() % 5) as u16);
                    rep.relay_port = (rng.next_u32() % 3 == 0).then_some(7000);
                    if let Ok(Some((_, logged))) = store.report(pick, &rep) {
                        c.commit(logged);
                    }
                }
                4 if nodes.len() > 2 => {
                    c.commit(store.expire(pick, 5).unwrap().unwrap());
                    nodes.remove(&pick);
                }
                5 => {
                    let text = if rng.next_u32() % 2 == 0 {
                        SPLIT
                    } else {
                        ALLOW_ALL
                    };
                    c.set_policy_source(text).unwrap();
                }
                6 | 7 => {
                    // The stream drops.
                    let f = &mut nodes.get_mut(&pick).unwrap().1;
                    f.drain();
                    f.rx = None;
                    c.inner.lock().unwrap().streams.remove(&pick);
                }
                _ => {
                    let f = &mut nodes.get_mut(&pick).unwrap().1;
                    if f.rx.is_none() && f.connect(&c, pick) {
                        resumes += 1;
                    }
                }
            }
            for (_, f) in nodes.values_mut() {
                f.drain();
            }
        }
        for (id, (_, f)) in nodes.iter_mut() {
            if f.rx.is_none() && f.connect(&c, *id) {
                resumes += 1;
            }
            f.drain();
            let inner = c.inner.lock().unwrap();
            let mut want = inner.tailnet.netmap(*id).unwrap();
            let mut have = f.map.clone().unwrap();
            want.peers.sort_by_key(|p| p.node.id);
            have.peers.sort_by_key(|p| p.node.id);
            assert_eq!(have, want, "seed {seed}, node {id}");
        }
    }
    assert!(resumes > 200, "the resume path ran {resumes} times");
}
