//! `burrow up`: a node of the mesh. It keeps its keys in a 0600 state file (the private keys
//! never leave it), registers with the coordination server, brings up a TUN interface with its
//! tailnet addresses, runs the node engine (hole punching, DERP, WireGuard) over one UDP socket,
//! and enforces its packet filter on everything it receives.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use burrow_control::{Delta, Filter, NetMap, PeerInfo, Verdict};
use burrow_node::{Event, Node, NodeConfig};
use burrow_wg::{PrivateKey, PublicKey};
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::control::client::{peer_config, ControlClient};
use crate::control::{EndpointsRequest, MapMessage, RegisterBody};
use crate::derp_client::{DerpClient, DerpUrl};
use crate::node::{channels, run_node, NodeCommand, TokioBinder};
use crate::transport::now;

/// `burrow up`'s settings.
#[derive(Clone)]
pub struct UpConfig {
    /// The coordination server, e.g. http://10.0.0.1:8080.
    pub control: String,
    /// A pre-auth key (needed the first time, or after the server forgot the node).
    pub auth_key: Option<String>,
    /// Where the keys and the node secret live.
    pub state_dir: PathBuf,
    /// TUN interface name.
    pub tun: String,
    /// UDP port of the node's socket (0: any).
    pub listen_port: u16,
    /// The DERP relay (None: the first region of the control server's DERP map).
    pub derp: Option<DerpUrl>,
    /// STUN servers (two or more tell an easy NAT from a hard one).
    pub stun: Vec<SocketAddr>,
    /// Host name to register.
    pub hostname: String,
    /// The local API's Unix socket (`burrow status`, `ping`, `doctor`, `down`).
    pub socket: PathBuf,
    /// Certificates (DER) trusted besides the web PKI, for https:// control and DERP servers.
    pub extra_roots: Vec<Vec<u8>>,
}

impl std::fmt::Debug for UpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpConfig")
            .field("control", &self.control)
            .field("auth_key", &self.auth_key.as_ref().map(|_| "<redacted>"))
            .field("state_dir", &self.state_dir)
            .field("tun", &self.tun)
            .field("listen_port", &self.listen_port)
            .field("derp", &self.derp)
            .field("stun", &self.stun)
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

/// What the state file holds.
#[derive(Serialize, Deserialize)]
struct State {
    private_key: String,
    disco_key: String,
    secret: Option<String>,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("node.json")
}

fn load_or_create_state(dir: &Path) -> Result<State> {
    let path = state_path(dir);
    if path.exists() {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        // Never through a symlink: whoever planted one would choose our keys.
        use std::os::unix::fs::MetadataExt;
        let mut text = String::new();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("reading {} (it must be a regular file)", path.display()))?;
        // Only a file that is ours alone holds our keys: one another user could write may hold
        // keys they chose.
        let meta = f.metadata()?;
        if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
            bail!(
                "{} must be owned by this user and private (mode 0600); it is not, so its keys \
                 cannot be trusted",
                path.display()
            );
        }
        f.read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        return serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()));
    }
    let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
    let state = State {
        private_key: PrivateKey::generate(&mut rng).expose_base64(),
        disco_key: PrivateKey::generate(&mut rng).expose_base64(),
        secret: None,
    };
    save_state(dir, &state)?;
    Ok(state)
}

fn save_state(dir: &Path, state: &State) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let path = state_path(dir);
    let tmp = path.with_extension("tmp");
    // A leftover (or planted) temporary file goes first; the new one is created exclusively
    // and never through a symlink, so its mode is 0600 and its place is ours (audit #18).
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", tmp.display()));
        }
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

async fn register(
    control: &ControlClient,
    cfg: &UpConfig,
    state: &mut State,
    keys: (&PrivateKey, &PrivateKey),
) -> Result<()> {
    if cfg.auth_key.is_none() && state.secret.is_none() {
        bail!(
            "this node is not registered: pass --auth-key-file or BURROW_AUTH_KEY (from \
             `burrow control authkey create`)"
        );
    }
    // The current secret renews a live registration; an expired or removed node needs an
    // unspent auth key of its user and tags.
    let reg = control
        .register(
            keys.0,
            RegisterBody {
                auth_key: cfg.auth_key.clone(),
                node_secret: state.secret.clone(),
                hostname: cfg.hostname.clone(),
                disco_key: keys.1.public_key().to_base64(),
                challenge: String::new(),
            },
        )
        .await
        .map_err(|e| {
            if e.is_unauthorized() && cfg.auth_key.is_none() {
                anyhow::anyhow!(
                    "the control server no longer accepts this node ({e}): it was removed or its \
                     key expired; register again with --auth-key-file or BURROW_AUTH_KEY"
                )
            } else {
                anyhow::Error::from(e).context("registering")
            }
        })?;
    state.secret = Some(reg.secret);
    save_state(&cfg.state_dir, state)?;
    tracing::info!(addresses = ?reg.node.addresses, "registered");
    Ok(())
}

fn ip_cmd(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs the node until `shutdown`.
pub async fn run(cfg: UpConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let mut state = load_or_create_state(&cfg.state_dir)?;
    let private = PrivateKey::from_base64(&state.private_key)
        .map_err(|_| anyhow::anyhow!("the state file's private key is corrupt"))?;
    let disco = PrivateKey::from_base64(&state.disco_key)
        .map_err(|_| anyhow::anyhow!("the state file's disco key is corrupt"))?;
    let control = ControlClient::with_roots(&cfg.control, cfg.extra_roots.clone())
        .with_context(|| format!("--control {:?}", cfg.control))?;
    warn_if_plain("control server", &cfg.control);
    if state.secret.is_none() {
        register(&control, &cfg, &mut state, (&private, &disco)).await?;
    }
    let mut map = control
        .open_map(state.secret.as_deref().unwrap_or_default())
        .await;
    if matches!(&map, Err(e) if e.is_unauthorized()) {
        // The server forgot us, or our key expired: register again.
        register(&control, &cfg, &mut state, (&private, &disco)).await?;
        map = control
            .open_map(state.secret.as_deref().unwrap_or_default())
            .await;
    }
    let (mut stream, first) = map.context("opening the netmap stream")?;
    let derp_url = match (&cfg.derp, first.derp.first()) {
        (Some(u), _) => u.clone(),
        (None, Some(r)) => r
            .url
            .parse()
            .map_err(|e| anyhow::anyhow!("the control server's DERP URL {:?}: {e}", r.url))?,
        (None, None) => bail!("no DERP relay: pass --derp, or run the control server with --derp"),
    };
    warn_if_plain("DERP relay", &derp_url.to_string());
    let stun_servers = if cfg.stun.is_empty() {
        first
            .derp
            .iter()
            .flat_map(|r| r.stun.iter().copied())
            .collect()
    } else {
        cfg.stun.clone()
    };
    let secret = state.secret.clone().unwrap_or_default();

    // The interface.
    let v4 = first
        .node
        .addresses
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .context("the control server gave no IPv4 address")?;
    let mut tun_config = tun::Configuration::default();
    tun_config.tun_name(&cfg.tun).mtu(1280).up();
    if let IpAddr::V4(a) = v4 {
        tun_config
            .address(a)
            .netmask(std::net::Ipv4Addr::new(255, 255, 255, 255));
    }
    let tun = Arc::new(
        tun::create_as_async(&tun_config)
            .with_context(|| format!("creating TUN {} (needs root or CAP_NET_ADMIN)", cfg.tun))?,
    );
    ip_cmd(&["route", "replace", "100.64.0.0/10", "dev", &cfg.tun])?;
    for a in first.node.addresses.iter().filter(|a| a.is_ipv6()) {
        ip_cmd(&["-6", "address", "add", &format!("{a}/128"), "dev", &cfg.tun])?;
        let segs = match a {
            IpAddr::V6(v6) => v6.segments(),
            IpAddr::V4(_) => unreachable!(),
        };
        let prefix = format!("{:x}:{:x}:{:x}::/48", segs[0], segs[1], segs[2]);
        ip_cmd(&["-6", "route", "replace", &prefix, "dev", &cfg.tun])?;
    }

    // The engine.
    let socket = crate::wg::bind_udp_socket(cfg.listen_port)
        .with_context(|| format!("binding UDP port {}", cfg.listen_port))?;
    let port = socket.local_addr()?.port();
    let mut config = NodeConfig::new(private.clone(), disco, rand_seed());
    config.stun_servers = stun_servers;
    config.local_addrs = local_addresses(port, &first);
    config.unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut engine = Node::new(config, now());
    let routes: Arc<Mutex<BTreeMap<IpAddr, PublicKey>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let known: Arc<Mutex<BTreeMap<PublicKey, PeerInfo>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let filter = Arc::new(Mutex::new(Filter::new(first.filter.clone())));
    for p in &first.peers {
        if let Some(pc) = peer_config(p) {
            if let Err(e) = engine.add_peer(now(), pc.clone()) {
                tracing::warn!(peer = %p.node.name, error = %e, "peer refused");
                continue;
            }
            known.lock().expect("peers").insert(pc.node_key, p.clone());
            let mut r = routes.lock().expect("routes");
            for a in &p.node.addresses {
                r.insert(*a, pc.node_key);
            }
        }
    }
    let derp = DerpClient::spawn(derp_url, private, cfg.extra_roots.clone());
    let (chans, handle) = channels();
    let crate::node::NodeHandle {
        outbound,
        commands,
        mut events,
    } = handle;
    tracing::info!(address = %v4, port, peers = first.peers.len(), "burrow up");
    println!(
        "up: {v4} on {}, UDP port {port}, {} peers",
        cfg.tun,
        first.peers.len()
    );

    let pings: crate::local_api::PingWaiters = Arc::new(Mutex::new(Vec::new()));
    let (down_tx, mut down_rx) = tokio::sync::mpsc::unbounded_channel();
    let api = crate::local_api::ApiContext {
        commands: commands.clone(),
        peers: known.clone(),
        name: first.node.name.clone(),
        addresses: first.node.addresses.clone(),
        pings: pings.clone(),
        down: down_tx,
    };
    let mut tasks = tokio::task::JoinSet::new();
    {
        let socket = cfg.socket.clone();
        tasks.spawn(async move { crate::local_api::serve(&socket, api).await });
    }
    tasks.spawn(async move {
        run_node(
            engine,
            socket,
            TokioBinder(SocketAddr::from(([0, 0, 0, 0], 0))),
            derp,
            chans,
            None,
        )
        .await
        .map(|_| ())
        .map_err(anyhow::Error::from)
    });
    // TUN → peers, through the filter's flow table (answers to what we send may come back).
    {
        let (tun, routes, filter) = (tun.clone(), routes.clone(), filter.clone());
        tasks.spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let n = tun.recv(&mut buf).await?;
                let packet = &buf[..n];
                let Some(info) = burrow_control::parse_packet(packet) else {
                    continue;
                };
                let Some(peer) = routes.lock().expect("routes").get(&info.dst).copied() else {
                    continue;
                };
                filter
                    .lock()
                    .expect("filter")
                    .outbound(now(), *peer.as_bytes(), packet);
                if outbound.send((peer, packet.to_vec())).await.is_err() {
                    return Ok(()); // the engine stopped
                }
            }
        });
    }
    // Engine events: packets through the filter into the TUN; endpoints to the control server.
    {
        let (tun, filter, control) = (tun.clone(), filter.clone(), control.clone());
        // Endpoints go to the server from their own task (a slow server must not hold up
        // packets), the latest set only, and only when it changed; failures are retried.
        let (endpoints_tx, mut endpoints_rx) =
            tokio::sync::watch::channel(Vec::<SocketAddr>::new());
        {
            let (control, secret) = (control.clone(), secret.clone());
            tasks.spawn(async move {
                let mut posted: Option<Vec<SocketAddr>> = None;
                while endpoints_rx.changed().await.is_ok() {
                    loop {
                        let endpoints = endpoints_rx.borrow_and_update().clone();
                        if posted.as_ref() == Some(&endpoints) {
                            break;
                        }
                        let request = EndpointsRequest {
                            endpoints: endpoints.clone(),
                            home_region: 1,
                        };
                        match control.post_endpoints(&secret, &request).await {
                            Ok(()) => posted = Some(endpoints),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot report endpoints; retrying");
                                tokio::time::sleep(Duration::from_secs(5)).await;
                            }
                        }
                    }
                }
                Ok(())
            });
        }
        tasks.spawn(async move {
            while let Some(e) = events.recv().await {
                match e {
                    Event::Packet { peer, data } => {
                        // The engine already dropped packets whose inner source is not one of
                        // this peer's addresses (cryptokey routing); the filter keys its flows
                        // by peer too.
                        let verdict =
                            filter
                                .lock()
                                .expect("filter")
                                .inbound(now(), *peer.as_bytes(), &data);
                        match verdict {
                            Verdict::Accept | Verdict::Reply => {
                                let _ = tun.send(&data).await;
                            }
                            Verdict::Drop(reason) => {
                                tracing::debug!(%peer, ?reason, "dropped by the packet filter");
                            }
                        }
                    }
                    Event::Endpoints { candidates, nat } => {
                        let endpoints: Vec<SocketAddr> =
                            candidates.iter().map(|c| c.addr).collect();
                        endpoints_tx.send_if_modified(|current| {
                            if *current == endpoints {
                                return false;
                            }
                            tracing::info!(?endpoints, ?nat, "endpoints");
                            *current = endpoints;
                            true
                        });
                    }
                    Event::PathChanged { peer, from, to } => {
                        tracing::info!(%peer, ?from, ?to, "path changed");
                    }
                    Event::PingResult { peer, via, latency } => {
                        let mut waiting = pings.lock().expect("pings");
                        if let Some(k) = waiting.iter().position(|(p, _)| *p == peer) {
                            let (_, tx) = waiting.remove(k);
                            let _ = tx.send((via, latency));
                        }
                    }
                    Event::BirthdayStarted { peer, probing } => {
                        tracing::info!(%peer, probing, "birthday search started");
                    }
                    Event::BirthdayExhausted { peer, probes, .. } => {
                        tracing::info!(%peer, probes, "birthday attempt spent its budget");
                    }
                    _ => {}
                }
            }
            Ok(())
        });
    }
    // Netmap deltas: peers and the filter. If the stream breaks (the control server restarted,
    // the network blinked), reopen it and take the fresh netmap; the tunnel keeps running.
    {
        let (routes, filter, known) = (routes.clone(), filter.clone(), known.clone());
        let (control, secret2) = (control.clone(), secret.clone());
        tasks.spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                if commands.is_closed() {
                    return Ok::<(), anyhow::Error>(()); // the engine is gone
                }
                let message = match stream.next().await {
                    Ok(m) => {
                        backoff = Duration::from_millis(500);
                        m
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "netmap stream lost; reconnecting");
                        loop {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                            match control.open_map(&secret2).await {
                                Ok((s, m)) => {
                                    tracing::info!(
                                        peers = m.peers.len(),
                                        "netmap stream reconnected"
                                    );
                                    stream = s;
                                    break MapMessage::NetMap(m);
                                }
                                Err(e) if e.is_unauthorized() => {
                                    bail!(
                                        "the control server no longer knows this node (it was \
                                         removed, or its key expired): run `burrow up \
                                         --auth-key KEY` to register again ({e})"
                                    );
                                }
                                Err(e) => tracing::warn!(error = %e, "control server unreachable"),
                            }
                        }
                    }
                };
                match message {
                    MapMessage::NetMap(m) => {
                        filter.lock().expect("filter").set_rules(m.filter.clone());
                        // Peers removed while the stream was down.
                        let gone: Vec<u64> = known
                            .lock()
                            .expect("peers")
                            .values()
                            .map(|p| p.node.id)
                            .filter(|id| !m.peers.iter().any(|p| p.node.id == *id))
                            .collect();
                        for id in gone {
                            remove_peer(id, &routes, &known, &commands);
                        }
                        for p in &m.peers {
                            apply_peer(p, &routes, &known, &commands);
                        }
                    }
                    MapMessage::Delta(Delta::PeerUpsert(p)) => {
                        apply_peer(&p, &routes, &known, &commands)
                    }
                    MapMessage::Delta(Delta::PeerRemove { id }) => {
                        remove_peer(id, &routes, &known, &commands)
                    }
                    MapMessage::Delta(Delta::Filter { rules }) => {
                        filter.lock().expect("filter").set_rules(rules);
                    }
                }
            }
        });
    }
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        _ = down_rx.recv() => {
            tracing::info!("down: asked over the local API");
            Ok(())
        }
        Some(r) = tasks.join_next() => {
            tasks.abort_all();
            match r {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("task failed: {e}")),
            }
        }
    };
    tasks.abort_all();
    let _ = std::fs::remove_file(&cfg.socket);
    result
}

fn apply_peer(
    p: &PeerInfo,
    routes: &Mutex<BTreeMap<IpAddr, PublicKey>>,
    known: &Mutex<BTreeMap<PublicKey, PeerInfo>>,
    commands: &tokio::sync::mpsc::UnboundedSender<NodeCommand>,
) {
    if let Some(pc) = peer_config(p) {
        known.lock().expect("peers").insert(pc.node_key, p.clone());
        let mut r = routes.lock().expect("routes");
        for a in &p.node.addresses {
            r.insert(*a, pc.node_key);
        }
        let _ = commands.send(NodeCommand::AddPeer(pc));
    }
}

/// Forgets the peer with this node id: no route to its addresses, no tunnel.
fn remove_peer(
    id: u64,
    routes: &Mutex<BTreeMap<IpAddr, PublicKey>>,
    known: &Mutex<BTreeMap<PublicKey, PeerInfo>>,
    commands: &tokio::sync::mpsc::UnboundedSender<NodeCommand>,
) {
    let mut known = known.lock().expect("peers");
    let Some(key) = known.iter().find(|(_, p)| p.node.id == id).map(|(k, _)| *k) else {
        return;
    };
    let p = known.remove(&key).expect("just found");
    routes.lock().expect("routes").retain(|_, k| *k != key);
    tracing::info!(peer = %p.node.name, "peer left the tailnet");
    let _ = commands.send(NodeCommand::RemovePeer(key));
}

/// Plain HTTP beyond loopback: whoever is on the path reads the node's secret and rewrites its
/// netmap (peers, filter, relay) or kicks it off its relay. Said loudly, once, at start.
fn warn_if_plain(what: &str, url: &str) {
    if is_plain_beyond_loopback(url) {
        tracing::warn!(url, "{what} over plain HTTP");
        eprintln!(
            "WARNING: the {what} {url} is plain HTTP: anyone on the path can read this node's \
             secret and rewrite what it is told. Use https:// (with --tls-ca for a private CA)."
        );
    }
}

/// Whether `url` is plain HTTP to anything but loopback.
fn is_plain_beyond_loopback(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

fn rand_seed() -> u64 {
    use rand_chacha::rand_core::RngCore;
    rand_chacha::ChaCha20Rng::from_os_rng().next_u64()
}

/// This host's interface addresses (not loopback, not the tailnet's) with the node's port.
fn local_addresses(port: u16, map: &NetMap) -> Vec<SocketAddr> {
    let ours: Vec<IpAddr> = map.node.addresses.clone();
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() && !ip.is_loopback() && !ours.contains(ip))
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Audit #18: a planted `node.tmp` symlink is not followed (its target is untouched), the
    /// state file is 0600, and a state file that is a symlink is refused.
    #[test]
    fn plain_http_beyond_loopback_is_flagged() {
        for url in [
            "http://192.0.2.1:8080",
            "http://control.example/x",
            "http://[2001:db8::1]:80",
        ] {
            assert!(is_plain_beyond_loopback(url), "{url}");
        }
        for url in [
            "https://192.0.2.1",
            "http://127.0.0.1:8080",
            "http://[::1]:9",
            "http://localhost/derp",
        ] {
            assert!(!is_plain_beyond_loopback(url), "{url}");
        }
    }

    #[test]
    fn the_auth_key_stays_out_of_debug() {
        let cfg = UpConfig {
            control: "https://c".into(),
            auth_key: Some("burrowkey-0123456789".into()),
            state_dir: "/tmp/x".into(),
            tun: "burrow0".into(),
            listen_port: 0,
            derp: None,
            stun: vec![],
            hostname: "h".into(),
            socket: "/tmp/x/s".into(),
            extra_roots: vec![],
        };
        let s = format!("{cfg:?}");
        assert!(
            !s.contains("burrowkey-0123456789") && s.contains("redacted"),
            "{s}"
        );
    }

    #[test]
    fn the_state_file_never_follows_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("burrow-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("node.tmp")).unwrap();
        let state = State {
            private_key: "k".into(),
            disco_key: "d".into(),
            secret: None,
        };
        save_state(&dir, &state).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let mode = std::fs::metadata(dir.join("node.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // node.json replaced by a symlink to attacker-chosen keys: refused.
        std::fs::remove_file(dir.join("node.json")).unwrap();
        std::fs::write(
            dir.join("planted"),
            r#"{"private_key":"x","disco_key":"y","secret":null}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink(dir.join("planted"), dir.join("node.json")).unwrap();
        assert!(load_or_create_state(&dir).is_err());
        // A regular node.json that others may write is refused too; our own 0600 one loads.
        std::fs::remove_file(dir.join("node.json")).unwrap();
        save_state(&dir, &state).unwrap();
        assert!(load_or_create_state(&dir).is_ok());
        std::fs::set_permissions(
            dir.join("node.json"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        assert!(load_or_create_state(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
