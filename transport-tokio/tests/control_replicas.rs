//! Three `burrow control serve` replicas on one PostgreSQL server (started by the test): nodes
//! spread over them follow each other's changes; a replica killed with SIGKILL during a burst
//! of registrations and endpoint changes loses and duplicates nothing, and its nodes resume
//! their streams on the others; a PostgreSQL restart is ridden out. Every node's netmap, as
//! it built it from its stream, is checked against one computed from scratch from the
//! database. Needs root and the package postgresql; SKIPPED otherwise.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow::control::client::{ClientError, ControlClient, Opened};
use burrow::control::store::Store;
use burrow::control::{Control, EndpointsRequest, MapMessage, RegisterBody};
use burrow_control::{Delta, NetMap, Tailnet};
use common::control::{admin_at, authkey, challenge, keypair, serve_replica, temp_dir};
use common::postgres::Postgres;
use common::Running;

/// Everyone reaches everyone's SSH; the eng group reaches the databases.
const WIDE: &str = r#"{
  "groups": { "group:eng": ["alice"] },
  "acls": [
    { "action": "accept", "src": ["*"], "dst": ["*:22"] },
    { "action": "accept", "src": ["group:eng"], "dst": ["*:5432"] },
  ],
}"#;

/// Only SSH.
const NARROW: &str = r#"{ "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:22"] } ] }"#;

/// A node's netmap as it built it from its stream, and how its stream fared.
#[derive(Default)]
struct View {
    map: Option<NetMap>,
    last: Option<u64>,
    whole: usize,
    resumed: usize,
    /// When it last resumed with deltas.
    resumed_at: Option<Instant>,
    lost_at: Option<Instant>,
    back_at: Option<Instant>,
    removed: bool,
}

fn apply(map: &mut NetMap, m: MapMessage) {
    match m {
        MapMessage::NetMap(whole) => *map = whole,
        MapMessage::Delta(Delta::PeerUpsert(p)) => {
            map.peers.retain(|q| q.node.id != p.node.id);
            map.peers.push(p);
        }
        MapMessage::Delta(Delta::PeerRemove { id }) => map.peers.retain(|q| q.node.id != id),
        MapMessage::Delta(Delta::Filter { rules }) => map.filter = rules,
        MapMessage::Delta(Delta::Relay(g)) => map.relay = g,
        MapMessage::Resumed { .. } => {}
    }
}

/// Follows a node's map stream as `burrow up` does: after a loss it waits half a second (and
/// a jitter), then reopens after the last change it saw, on whichever replica answers.
async fn follow(client: ControlClient, secret: String, view: Arc<Mutex<View>>) {
    loop {
        let since = view.lock().unwrap().last;
        match client.open_map_since(&secret, since).await {
            Ok((mut stream, opened)) => {
                {
                    let mut v = view.lock().unwrap();
                    match opened {
                        Opened::NetMap(m) => {
                            v.map = Some(*m);
                            v.whole += 1;
                        }
                        Opened::Resumed { .. } => {
                            v.resumed += 1;
                            v.resumed_at = Some(Instant::now());
                        }
                    }
                    v.last = stream.last_change();
                    if v.lost_at.is_some() && v.back_at.is_none() {
                        v.back_at = Some(Instant::now());
                    }
                }
                while let Ok(m) = stream.next_within(Duration::from_secs(20)).await {
                    let mut v = view.lock().unwrap();
                    if let Some(map) = v.map.as_mut() {
                        apply(map, m);
                    }
                    v.last = stream.last_change();
                }
                let mut v = view.lock().unwrap();
                v.lost_at = Some(Instant::now());
                v.back_at = None;
            }
            Err(e) if e.is_unauthorized() => {
                view.lock().unwrap().removed = true;
                return;
            }
            Err(_) => {}
        }
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_micros()) % 125);
        tokio::time::sleep(Duration::from_millis(500 + jitter)).await;
    }
}

struct Node {
    id: u64,
    name: String,
    secret: String,
    client: ControlClient,
    view: Arc<Mutex<View>>,
}

/// The control plane under test.
struct Plane {
    key: String,
    urls: Vec<String>,
    replicas: Vec<Option<(Running, PathBuf)>>,
}

impl Plane {
    /// A client whose first choice is replica `home`, then the others in turn.
    fn client(&self, home: usize) -> ControlClient {
        let n = self.urls.len();
        let order: Vec<&str> = (0..n).map(|k| self.urls[(home + k) % n].as_str()).collect();
        ControlClient::replicas(&order, Vec::new()).unwrap()
    }

    fn socket(&self, n: usize) -> PathBuf {
        self.replicas[n].as_ref().unwrap().1.clone()
    }

    /// Kills replica `n` with SIGKILL; when (just before the signal).
    fn kill(&self, n: usize) -> Instant {
        let pid = self.replicas[n].as_ref().unwrap().0 .0.id();
        let at = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        at
    }

    /// Starts replica `n` again on its port.
    fn restart(&mut self, n: usize, db: &str, policy: &std::path::Path) {
        drop(self.replicas[n].take()); // reaped
        let listen = self.urls[n].trim_start_matches("http://").to_string();
        self.replicas[n] = Some(serve_replica(
            db,
            policy,
            n,
            &listen,
            &["--per-ip-rate", "1000"],
        ));
    }

    /// Registers node `seed` through replica `home` (failing over as a node does), retrying
    /// refusals of an unavailable database; the node and its stream follower.
    async fn join(&self, seed: u8, home: usize) -> Result<Node, ClientError> {
        let client = self.client(home);
        let name = format!("n{seed}");
        let body = RegisterBody {
            auth_key: Some(self.key.clone()),
            hostname: name.clone(),
            disco_key: keypair(seed).1,
            ..Default::default()
        };
        let node_key = burrow_wg::PrivateKey::from_bytes([seed; 32]);
        let r = client.register(&node_key, body).await?;
        let view = Arc::new(Mutex::new(View::default()));
        tokio::spawn(follow(client.clone(), r.secret.clone(), view.clone()));
        Ok(Node {
            id: r.node.id,
            name,
            secret: r.secret,
            client,
            view,
        })
    }
}

async fn post(node: &Node, port: u16) -> Result<(), ClientError> {
    let req = EndpointsRequest {
        endpoints: vec![format!("203.0.113.{}:{port}", node.id % 250 + 1)
            .parse()
            .unwrap()],
        home_region: 1,
        relay_port: None,
        fixed_mapping: false,
    };
    node.client.post_endpoints(&node.secret, &req).await
}

/// Posts until the change is taken: the burst spent the node's budget of changes (ten at
/// once, then one a second), as a flapping node's would be.
async fn settle(node: &Node, port: u16) {
    let t = Instant::now();
    loop {
        match post(node, port).await {
            Ok(()) => return,
            Err(ClientError::Refused { status: 429, .. })
                if t.elapsed() < Duration::from_secs(30) =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => panic!("{}: {e}", node.name),
        }
    }
}

/// The tailnet computed from scratch from what the database holds.
fn from_scratch(store: &dyn Store) -> Tailnet {
    let snapshot = store.snapshot().unwrap();
    let policy = Control::policy(snapshot.policy.as_deref().expect("a stored policy")).unwrap();
    let mut t = Tailnet::new(policy);
    for r in &snapshot.nodes {
        t.upsert(r.peer());
        t.set_relay_capability(r.id, r.relay_capability());
    }
    t
}

fn sorted(mut m: NetMap) -> NetMap {
    m.peers.sort_by_key(|p| p.node.id);
    m
}

/// Waits until every live node's netmap equals the one computed from scratch; returns how
/// long that took, or the first difference after 20 s.
async fn converged(store: &dyn Store, nodes: &[Node]) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let truth = tokio::task::block_in_place(|| from_scratch(store));
        let mut diff = None;
        for n in nodes {
            let v = n.view.lock().unwrap();
            let want = truth.netmap(n.id).map(sorted);
            let have = if v.removed {
                None
            } else {
                v.map.clone().map(sorted)
            };
            if want != have {
                diff = Some(format!(
                    "{} (id {}): holds {:?} peers, should hold {:?}",
                    n.name,
                    n.id,
                    have.map(|m| m.peers.iter().map(|p| p.node.id).collect::<Vec<_>>()),
                    want.map(|m| m.peers.iter().map(|p| p.node.id).collect::<Vec<_>>()),
                ));
                break;
            }
        }
        match diff {
            None => return Ok(start.elapsed()),
            Some(d) if start.elapsed() > Duration::from_secs(20) => return Err(d),
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_postgresql_and_ride_out_a_kill_and_a_database_restart() {
    let Some(pg) = Postgres::start("control_replicas") else {
        return;
    };
    let db = pg.url();
    let dir = temp_dir("replicas");
    let policy = dir.join("policy.hujson");
    std::fs::write(&policy, WIDE).unwrap();
    let key = authkey(&db, &["--reusable", "--user", "alice"]);
    let replicas: Vec<Option<(Running, PathBuf)>> = (0..3)
        .map(|n| {
            Some(serve_replica(
                &db,
                &policy,
                n,
                "127.0.0.1:0",
                &["--per-ip-rate", "1000"],
            ))
        })
        .collect();
    let urls = replicas
        .iter()
        .map(|r| format!("http://{}", r.as_ref().unwrap().0.addr()))
        .collect();
    let mut plane = Plane {
        key,
        urls,
        replicas,
    };
    let store = burrow::control::pg::PgStore::connect(&db).await.unwrap();

    // Nine nodes, three per replica, each following its own replica's stream.
    let mut nodes = Vec::new();
    for seed in 1..=9u8 {
        nodes.push(plane.join(seed, usize::from(seed) % 3).await.unwrap());
    }
    for (i, n) in nodes.iter().enumerate() {
        post(n, 41641 + i as u16).await.unwrap();
    }
    let took = converged(&store, &nodes).await.unwrap();
    eprintln!("9 nodes on 3 replicas converged in {took:?}");

    // One endpoint change reaches the nodes on every replica.
    let sent = Instant::now();
    post(&nodes[0], 50000).await.unwrap();
    let mut reached = BTreeMap::new();
    while reached.len() < nodes.len() - 1 {
        for n in &nodes[1..] {
            let v = n.view.lock().unwrap();
            let has = v.map.as_ref().is_some_and(|m| {
                m.peers
                    .iter()
                    .any(|p| p.node.id == nodes[0].id && p.endpoints[0].port() == 50000)
            });
            if has {
                reached.entry(n.id).or_insert_with(|| sent.elapsed());
            }
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "reached {reached:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eprintln!(
        "an endpoint change reached 8 nodes on 3 replicas within {:?}",
        reached.values().max().unwrap()
    );

    // A challenge from one replica registers on another, once: a replay on a third is
    // refused, since challenges are spent in the shared database.
    {
        let http = reqwest::Client::new();
        let challenge = challenge(&http, &plane.urls[0]).await;
        let body = RegisterBody {
            auth_key: Some(plane.key.clone()),
            hostname: "replayed".into(),
            disco_key: keypair(99).1,
            ..Default::default()
        };
        let node_key = burrow_wg::PrivateKey::from_bytes([99; 32]);
        let req =
            burrow::control::identity::seal_registration(&node_key, &challenge, body).unwrap();
        let first = http
            .post(format!("{}/machine/register", plane.urls[1]))
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), 200, "the shared challenge key");
        let again = http
            .post(format!("{}/machine/register", plane.urls[2]))
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 401);
        assert!(again.text().await.unwrap().contains("already used"));
        // It leaves again, through a third replica's admin socket.
        admin_at(&plane.socket(0), &["node", "remove", "replayed"]).unwrap();
    }

    // Removal through one replica's admin socket: a node of another replica leaves every
    // netmap, and its own stream ends.
    let gone = nodes.remove(2); // n3, on replica 0
    let out = admin_at(&plane.socket(1), &["node", "remove", &gone.id.to_string()]).unwrap();
    assert!(out.contains("removed node"), "{out}");
    converged(&store, &nodes).await.unwrap();
    let t = Instant::now();
    while !gone.view.lock().unwrap().removed {
        assert!(t.elapsed() < Duration::from_secs(10), "its stream ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A node's budget of endpoint changes is one, wherever it reports: ten at once, spread
    // over two replicas, and the eleventh is refused by a third.
    {
        let n = &nodes[0];
        let at = |r: usize| ControlClient::new(&plane.urls[r]).unwrap();
        let (one, two) = (at(1), at(2));
        let mut taken = 0;
        let mut refused_by = None;
        for k in 0..30u16 {
            let client = if k % 2 == 0 { &one } else { &two };
            let req = EndpointsRequest {
                endpoints: vec![format!("203.0.113.9:{}", 45000 + k).parse().unwrap()],
                home_region: 1,
                relay_port: None,
                fixed_mapping: false,
            };
            match client.post_endpoints(&n.secret, &req).await {
                Ok(()) => taken += 1,
                Err(ClientError::Refused { status: 429, .. }) => {
                    refused_by = Some(k);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        // Ten, or eleven if a second passed meanwhile; never ten per replica.
        assert!(refused_by.is_some() && taken <= 12, "taken {taken}");
        let req = EndpointsRequest {
            endpoints: vec!["203.0.113.9:46000".parse().unwrap()],
            home_region: 1,
            relay_port: None,
            fixed_mapping: false,
        };
        let third = at(0).post_endpoints(&n.secret, &req).await;
        assert!(
            matches!(third, Err(ClientError::Refused { status: 429, .. })),
            "{third:?}"
        );
        converged(&store, &nodes).await.unwrap();
    }

    // A policy reload through one replica changes every replica's filters.
    std::fs::write(&policy, NARROW).unwrap();
    admin_at(&plane.socket(2), &["policy", "reload"]).unwrap();
    converged(&store, &nodes).await.unwrap();
    let stored = tokio::task::block_in_place(|| store.snapshot()).unwrap();
    assert_eq!(stored.policy.as_deref(), Some(NARROW));

    // A burst of registrations and endpoint changes, and replica 0 killed with SIGKILL once
    // ten of the registrations are in.
    let registered = AtomicUsize::new(0);
    let burst = async {
        let mut joined = Vec::new();
        for seed in 20..50u8 {
            // As a node does: try again (after a pause) until the control plane answers.
            let node = loop {
                match plane.join(seed, usize::from(seed) % 3).await {
                    Ok(n) => break n,
                    Err(e) => {
                        eprintln!("registering n{seed}: {e}; again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            };
            registered.fetch_add(1, Ordering::Relaxed);
            joined.push(node);
        }
        joined
    };
    let changes = async {
        for round in 0..20u16 {
            for n in &nodes {
                // A refused or failed change is the node's to repeat; it does, next round.
                let _ = post(n, 42000 + round).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let kill = async {
        while registered.load(Ordering::Relaxed) < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        plane.kill(0)
    };
    let (joined, (), killed_at) = tokio::join!(burst, changes, kill);
    nodes.extend(joined);

    // Nothing lost, nothing twice: every registration that was answered is stored once.
    let stored = tokio::task::block_in_place(|| store.nodes()).unwrap();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &stored {
        *names.entry(r.name.as_str()).or_default() += 1;
    }
    for n in &nodes {
        assert_eq!(
            names.get(n.name.as_str()),
            Some(&1),
            "{} stored once",
            n.name
        );
    }
    assert_eq!(stored.len(), nodes.len(), "and nothing else: {names:?}");
    let took = converged(&store, &nodes).await.unwrap();
    let (took_over, moved, resumed) = failover(&nodes, killed_at).await;
    eprintln!(
        "SIGKILL during the burst: {moved} streams moved to other replicas, the last back \
         {took_over:?} after the kill ({resumed} resumed with deltas, the rest with whole \
         netmaps); {} nodes converged {took:?} after the burst",
        nodes.len()
    );
    assert!(moved >= 2, "replica 0's nodes moved");

    // Replica 0 comes back on its port; then replica 1 is killed while all is quiet: its
    // nodes resume on the others with the deltas since their last change.
    plane.restart(0, &db, &policy);
    for n in &nodes {
        settle(n, 43000).await;
    }
    converged(&store, &nodes).await.unwrap();
    let killed_at = plane.kill(1);
    let (took_over, moved, resumed) = failover(&nodes, killed_at).await;
    eprintln!(
        "SIGKILL while quiet: {moved} streams moved, the last back {took_over:?} after the \
         kill, {resumed} of them resumed with deltas"
    );
    assert!(moved >= 3, "replica 1's nodes moved");
    assert_eq!(
        resumed, moved,
        "a quiet tailnet resumes every stream without a netmap"
    );
    converged(&store, &nodes).await.unwrap();

    // PostgreSQL restarts: the replicas keep running and refuse writes with a clear error
    // meanwhile; afterwards writes work again and reach every replica.
    pg.stop().unwrap();
    let refused = plane
        .join(60, 2)
        .await
        .err()
        .expect("no database, no registration");
    eprintln!("with the database down: {refused}");
    assert!(
        refused.to_string().contains("database is unavailable"),
        "{refused}"
    );
    let http = reqwest::Client::new();
    tokio::time::sleep(Duration::from_secs(6)).await;
    for url in [&plane.urls[0], &plane.urls[2]] {
        // Still answering, and telling load balancers it is not following the others.
        let health = http.get(format!("{url}/health")).send().await.unwrap();
        assert_eq!(health.status(), 503, "{url}");
        assert!(health.text().await.unwrap().contains("not following"));
    }
    pg.start_again().unwrap();
    let late = loop {
        match plane.join(60, 2).await {
            Ok(n) => break n,
            Err(e) => {
                eprintln!("registering after the restart: {e}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    nodes.push(late);
    settle(nodes.last().unwrap(), 44000).await;
    for n in [0, 2] {
        let child = &mut plane.replicas[n].as_mut().unwrap().0 .0;
        assert!(
            child.try_wait().unwrap().is_none(),
            "replica {n} is running"
        );
    }
    let took = converged(&store, &nodes).await.unwrap();
    eprintln!(
        "after the database restart, {} nodes converged in {took:?}",
        nodes.len()
    );
    // Any replica's node list shows who is online, wherever each streams: replica 0, whose
    // nodes all moved away when it was killed, lists those streaming from replica 2.
    let t = Instant::now();
    loop {
        let out = admin_at(&plane.socket(0), &["nodes", "--json"]).unwrap();
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let offline: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["online"] != true)
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        if offline.is_empty() && list.as_array().unwrap().len() == nodes.len() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(25),
            "offline on replica 0's list: {offline:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And the replicas follow the log again.
    let t = Instant::now();
    for url in [&plane.urls[0], &plane.urls[2]] {
        while http
            .get(format!("{url}/health"))
            .send()
            .await
            .unwrap()
            .status()
            != 200
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{url} never recovered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(dir);
}

/// After a replica was killed at `killed_at`: waits until every stream it held is back;
/// returns the time from the kill to the last one back, how many moved, and how many of
/// those resumed with deltas (not a whole netmap).
async fn failover(nodes: &[Node], killed_at: Instant) -> (Duration, usize, usize) {
    // The kill closes its connections at once; their followers notice within milliseconds
    // and pause half a second before they reconnect.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let start = Instant::now();
    loop {
        let mut last = Duration::ZERO;
        let (mut moved, mut resumed, mut waiting) = (0, 0, 0);
        for n in nodes {
            let v = n.view.lock().unwrap();
            if v.lost_at.is_none_or(|t| t < killed_at) {
                continue;
            }
            moved += 1;
            match v.back_at {
                Some(b) => {
                    last = last.max(b - killed_at);
                    if v.resumed_at.is_some_and(|r| r >= killed_at) {
                        resumed += 1;
                    }
                }
                None => waiting += 1,
            }
        }
        if waiting == 0 {
            return (last, moved, resumed);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{waiting} streams not back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
