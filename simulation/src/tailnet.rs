//! Tailnet stories: several nodes, the real coordination server and DERP relay in simulated
//! time, and a script of admin actions: a node removed or expired, a policy change, a
//! control-server restart. Every node runs what `burrow up` runs (the node session through
//! burrow's `SessionDriver`, the engine through `run_node`), and routes and filters its packets
//! through the session, so what happens here is what users get.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow::session::lock;
use burrow_control::Verdict;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tower::ServiceExt;

use crate::capture::Recorder;
use crate::control::SimControl;
use crate::net::{derive_seed, Link, LinkConfig, SimSocket, Uplink};

/// An admin action at a point of the story.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `burrow control node remove NAME`.
    Remove(String),
    /// `burrow control node expire NAME`.
    Expire(String),
    /// A new policy (HuJSON), as `burrow control policy reload` applies it.
    Policy(String),
    /// The control server's host restarts (its process and every connection to it).
    RestartControl,
}

/// A story: the nodes (each its own user, so a policy can name it), the script, how long.
#[derive(Debug, Clone)]
pub struct Story {
    /// Node names.
    pub nodes: Vec<String>,
    /// Admin actions, at seconds of simulated time.
    pub script: Vec<(f64, Action)>,
    /// Simulated seconds.
    pub duration_s: f64,
}

/// One packet a node received: when (ms), from which node, and whether its filter let it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Simulated milliseconds.
    pub at_ms: u64,
    /// The sending node's index in [`Story::nodes`].
    pub from: usize,
    /// Accepted by the receiver's filter.
    pub accepted: bool,
}

/// What a story did.
#[derive(Debug, Clone, Default)]
pub struct StoryOutcome {
    /// Per node (by index): what it received.
    pub arrivals: Vec<Vec<Arrival>>,
    /// Per node: the peers its session held at the end (names).
    pub peers_at_end: Vec<Vec<String>>,
    /// The trace's hash (the same seed gives the same hash).
    pub trace_hash: String,
    /// Why the simulation itself failed, if it did.
    pub error: Option<String>,
}

/// The named stories (`burrow-sim --tailnet NAME`): three nodes a, b, c for 16 s, and at 6 s
/// one admin action.
pub const PRESETS: [&str; 4] = ["removal", "expiry", "policy", "restart"];

/// The policy of the `policy` story: from 6 s only a may reach b.
pub const NARROW_POLICY: &str =
    r#"{ "acls": [ { "action": "accept", "src": ["a"], "dst": ["b:*"] } ] }"#;

/// One of [`PRESETS`].
pub fn preset(name: &str) -> Option<Story> {
    let action = match name {
        "removal" => Action::Remove("c".into()),
        "expiry" => Action::Expire("c".into()),
        "policy" => Action::Policy(NARROW_POLICY.into()),
        "restart" => Action::RestartControl,
        _ => return None,
    };
    Some(Story {
        nodes: vec!["a".into(), "b".into(), "c".into()],
        script: vec![(6.0, action)],
        duration_s: 16.0,
    })
}

impl StoryOutcome {
    /// Packets node `to` got from node `from` in [start, end) ms: (accepted, dropped by its
    /// filter).
    pub fn between(&self, from: usize, to: usize, window: (u64, u64)) -> (usize, usize) {
        let hits = self.arrivals[to]
            .iter()
            .filter(|a| a.from == from && (window.0..window.1).contains(&a.at_ms));
        hits.fold((0, 0), |(ok, dropped), a| match a.accepted {
            true => (ok + 1, dropped),
            false => (ok, dropped + 1),
        })
    }

    /// A table of what each node got from each other, per second.
    pub fn table(&self, names: &[String], seconds: u64) -> String {
        let mut out = String::from("from→to  ");
        for s in 0..seconds {
            out.push_str(&format!("{s:>6}"));
        }
        out.push('\n');
        for (to, to_name) in names.iter().enumerate() {
            for (from, from_name) in names.iter().enumerate().filter(|(f, _)| *f != to) {
                out.push_str(&format!("{from_name:>3}→{to_name:<4} "));
                for s in 0..seconds {
                    let (ok, dropped) = self.between(from, to, (s * 1000, (s + 1) * 1000));
                    let cell = match (ok, dropped) {
                        (0, 0) => "-".to_owned(),
                        (ok, 0) => ok.to_string(),
                        (ok, d) => format!("{ok}/x{d}"),
                    };
                    out.push_str(&format!("{cell:>6}"));
                }
                out.push('\n');
            }
        }
        out
    }
}

/// Each node sends one packet to every peer it knows this often.
const SEND_EVERY: Duration = Duration::from_millis(100);
const CONTROL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DERP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10 + i as u8))
}

/// Runs `story` under `seed`.
pub fn run(story: &Story, seed: u64) -> (StoryOutcome, Arc<Recorder>) {
    let rec = Arc::new(Recorder::new(false, true));
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs_f64(story.duration_s + 5.0))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(5))
        .max_message_latency(Duration::from_millis(5))
        .rng_seed(seed)
        .build();
    let derp_addr = SocketAddr::from((DERP, 80));
    let control_addr = SocketAddr::from((CONTROL, 8080));
    let derp_map = vec![burrow_control::DerpRegion {
        id: 1,
        code: "sim".into(),
        url: format!("http://{derp_addr}/derp"),
        stun: Vec::new(),
        ipv4: None,
        ipv6: None,
    }];
    let control = match SimControl::new(derp_map) {
        Ok(c) => Arc::new(c),
        Err(e) => return failed(e, rec),
    };
    let mut keys = Vec::new();
    for name in &story.nodes {
        match control.key_for(name) {
            Ok(k) => keys.push(k),
            Err(e) => return failed(e, rec),
        }
    }
    {
        let c = control.clone();
        sim.host(CONTROL, move || {
            let c = c.clone();
            async move { c.serve(control_addr.port()).await }
        });
    }
    let relay_seed = derive_seed(seed, "derp");
    sim.host(DERP, move || async move {
        let config = burrow::derper::DerperConfig {
            private_key: burrow_wg::PrivateKey::from_bytes([9; 32]),
            mesh_key: None,
            mesh_with: Vec::new(),
            tls: None,
            rate_limit: None,
            admission: Default::default(),
        };
        let relay =
            burrow::derper::Relay::with_rng(&config, ChaCha20Rng::seed_from_u64(relay_seed));
        burrow::derper::spawn_timers(relay.clone());
        let listener = turmoil::net::TcpListener::bind(("0.0.0.0", derp_addr.port())).await?;
        loop {
            let (stream, peer) = listener.accept().await?;
            let relay = relay.clone();
            tokio::spawn(async move {
                let _ = burrow::derper::serve_stream(relay, Box::new(stream), peer).await;
            });
        }
    });

    // Tailnet address → node index, filled in as nodes register.
    let book: Arc<Mutex<BTreeMap<IpAddr, usize>>> = Arc::default();
    let arrivals: Arc<Mutex<Vec<Vec<Arrival>>>> =
        Arc::new(Mutex::new(vec![Vec::new(); story.nodes.len()]));
    let peers_at_end: Arc<Mutex<Vec<Vec<String>>>> =
        Arc::new(Mutex::new(vec![Vec::new(); story.nodes.len()]));
    let until = Duration::from_secs_f64(story.duration_s);
    for (i, name) in story.nodes.iter().enumerate() {
        let node = NodeRun {
            index: i,
            name: name.clone(),
            auth_key: keys[i].clone(),
            seed: derive_seed(seed, &format!("node:{name}")),
            control: control_addr,
            derp: derp_addr,
            until,
            rec: rec.clone(),
            book: book.clone(),
            arrivals: arrivals.clone(),
            peers_at_end: peers_at_end.clone(),
        };
        sim.client(node_ip(i), node.run());
    }
    // The script: admin actions from a client of their own; restarts from the loop below.
    let admin: Vec<(f64, Action)> = (story.script.iter())
        .filter(|(_, a)| *a != Action::RestartControl)
        .cloned()
        .collect();
    {
        let (control, rec) = (control.clone(), rec.clone());
        sim.client("admin", async move {
            let start = tokio::time::Instant::now();
            for (at, action) in admin {
                tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
                admin_action(&control, &action, &rec).await;
            }
            Ok(())
        });
    }
    let mut restarts: Vec<f64> = (story.script.iter())
        .filter(|(_, a)| *a == Action::RestartControl)
        .map(|(t, _)| *t)
        .collect();
    restarts.sort_by(f64::total_cmp);
    let mut error = None;
    loop {
        if restarts
            .first()
            .is_some_and(|t| sim.elapsed() >= Duration::from_secs_f64(*t))
        {
            restarts.remove(0);
            rec.event(format_args!("admin restarts the control server"));
            sim.bounce(CONTROL);
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let (trace_hash, _) = rec.trace_hash();
    let outcome = StoryOutcome {
        arrivals: std::mem::take(&mut *arrivals.lock().expect("arrivals")),
        peers_at_end: std::mem::take(&mut *peers_at_end.lock().expect("peers")),
        trace_hash,
        error,
    };
    (outcome, rec)
}

fn failed(e: String, rec: Arc<Recorder>) -> (StoryOutcome, Arc<Recorder>) {
    let outcome = StoryOutcome {
        error: Some(e),
        ..StoryOutcome::default()
    };
    (outcome, rec)
}

/// Carries out one admin action the way the admin tools do (the admin API for removal and
/// expiry; the server's policy swap for a reload).
async fn admin_action(control: &SimControl, action: &Action, rec: &Recorder) {
    let Some(c) = control.current() else {
        rec.event(format_args!("admin: no control server running"));
        return;
    };
    let request = |method: &str, path: String| {
        axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .expect("a request")
    };
    let (what, status) = match action {
        Action::Remove(n) => {
            let r = c
                .admin_router()
                .oneshot(request("DELETE", format!("/nodes/{n}")));
            (format!("remove {n}"), r.await.map(|r| r.status().as_u16()))
        }
        Action::Expire(n) => {
            let r = c
                .admin_router()
                .oneshot(request("POST", format!("/nodes/{n}/expire")));
            (format!("expire {n}"), r.await.map(|r| r.status().as_u16()))
        }
        Action::Policy(text) => {
            let told = c.set_policy_source(text);
            let status = told.as_ref().map_or(422, |_| 200);
            (format!("policy change ({told:?} nodes told)"), Ok(status))
        }
        Action::RestartControl => unreachable!("restarts are the step loop's"),
    };
    rec.event(format_args!("admin {what}: {status:?}"));
}

/// One node of the story.
struct NodeRun {
    index: usize,
    name: String,
    auth_key: String,
    seed: u64,
    control: SocketAddr,
    derp: SocketAddr,
    until: Duration,
    rec: Arc<Recorder>,
    book: Arc<Mutex<BTreeMap<IpAddr, usize>>>,
    arrivals: Arc<Mutex<Vec<Vec<Arrival>>>>,
    peers_at_end: Arc<Mutex<Vec<Vec<String>>>>,
}

impl NodeRun {
    async fn run(self) -> turmoil::Result {
        let NodeRun {
            index, name, rec, ..
        } = &self;
        let ip = node_ip(*index);
        let key = |what: &str| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&derive_seed(self.seed, what).to_le_bytes());
            b[8] = *index as u8 + 1;
            burrow_wg::PrivateKey::from_bytes(b)
        };
        let (wg_key, disco_key) = (key("wg"), key("disco"));
        let client = crate::control::client(self.control);
        let (driver, me) =
            crate::control::join(client, name, &wg_key, &disco_key, &self.auth_key, rec).await?;
        let my_ip = me.addresses.iter().copied().find(IpAddr::is_ipv4);
        let Some(IpAddr::V4(my_ip)) = my_ip else {
            return Err("no IPv4 tailnet address".into());
        };
        self.book
            .lock()
            .expect("book")
            .insert(IpAddr::V4(my_ip), *index);
        let session = driver.session();
        let inputs = driver.inputs();
        let link = Link::new(name, LinkConfig::default(), self.seed, rec.clone());
        let uplink = Uplink::Direct {
            link,
            capture: name.clone(),
            firewall: None,
        };
        let sock = SimSocket::bind(SocketAddr::new(ip, 0), uplink.clone(), rec.clone()).await?;
        let local = burrow::transport::UdpTransport::local_addr(&sock)?;
        let derp = crate::node_io::derp_client(self.derp, &wg_key, self.seed, name);
        let mut config = burrow_node::NodeConfig::new(wg_key.clone(), disco_key, self.seed);
        config.local_addrs = vec![local];
        let start = tokio::time::Instant::now();
        let engine = burrow_node::Node::new(config, start.into_std());
        let (channels, handle) = burrow::node::channels();
        let burrow::node::NodeHandle {
            outbound,
            commands,
            mut events,
            mut delivered,
            batches,
        } = handle;
        crate::control::follow(driver, commands, rec.clone(), name.clone(), None);
        let binder = crate::node_io::SimBinder {
            ip,
            uplink,
            rec: rec.clone(),
        };
        let end = start + self.until;
        tokio::spawn(burrow::node::run_node(
            engine,
            sock,
            binder,
            derp,
            channels,
            Some(end),
        ));
        let mut tick = tokio::time::interval(SEND_EVERY);
        let mut sent: u32 = 0;
        loop {
            tokio::select! {
                b = delivered.recv() => match b {
                    Some(batch) => {
                        let now = tokio::time::Instant::now();
                        for (peer, data) in batch.iter() {
                            let verdict = lock(&session).admit_inbound(now.into_std(), &peer, data);
                            let from = data.get(12..16).and_then(|b| <[u8; 4]>::try_from(b).ok());
                            let from = from.and_then(|b| {
                                self.book.lock().expect("book").get(&IpAddr::from(b)).copied()
                            });
                            if let Some(from) = from {
                                let at_ms = now.duration_since(start).as_millis() as u64;
                                let accepted = !matches!(verdict, Verdict::Drop(_));
                                self.arrivals.lock().expect("arrivals")[*index]
                                    .push(Arrival { at_ms, from, accepted });
                            }
                        }
                        batches.give(batch);
                    }
                    None => break,
                },
                e = events.recv() => match e {
                    Some(burrow_node::Event::Endpoints { candidates, .. }) => {
                        let endpoints = candidates.iter().map(|c| c.addr).collect();
                        let _ = inputs.try_send(burrow_session::Input::LocalEndpoints(endpoints));
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now();
                    if now >= end {
                        break;
                    }
                    // A UDP packet (port 7 to 9) from this node's address to every peer's.
                    let targets: Vec<IpAddr> = lock(&session)
                        .peers()
                        .flat_map(|(p, _)| p.node.addresses.iter().copied())
                        .filter(IpAddr::is_ipv4)
                        .collect();
                    for dst in targets {
                        let IpAddr::V4(dst) = dst else { continue };
                        let mut p = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0];
                        p.extend_from_slice(&my_ip.octets());
                        p.extend_from_slice(&dst.octets());
                        p.extend_from_slice(&[0, 7, 0, 9, 0, 12, 0, 0]);
                        p.extend_from_slice(&sent.to_be_bytes());
                        sent += 1;
                        let peer = lock(&session).route_outbound(now.into_std(), &p);
                        if let Some(peer) = peer {
                            let mut batch = batches.take();
                            batch.push(peer, &p);
                            let _ = outbound.try_send(batch);
                        }
                    }
                }
            }
        }
        let mut names: Vec<String> = (lock(&session).peers())
            .map(|(p, _)| p.node.name.clone())
            .collect();
        names.sort();
        self.peers_at_end.lock().expect("peers")[*index] = names;
        Ok(())
    }
}
