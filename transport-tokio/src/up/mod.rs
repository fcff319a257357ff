//! `burrow up`: a node of the mesh. It keeps its keys in a 0600 state file (the private keys
//! never leave it), runs the node session ([`burrow_session::Session`]: registration, the
//! netmap, peers, routes, the filter, endpoint reports) against the coordination server, brings
//! up a TUN interface with its tailnet addresses, and runs the node engine (hole punching,
//! DERP, WireGuard) over one UDP socket. This module is the wiring; the logic is in the two
//! sans-IO machines.

mod config;
mod iface;
mod mapping;
mod paths;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use burrow_node::{Node, NodeConfig, RelayServerSettings};
use burrow_session::{Session, SessionConfig, SessionEvent};
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::control::client::ControlClient;
use crate::derp_client::DerpClient;
use crate::node::{channels, run_node_with_relay, NodeHandle, TokioBinder};
use crate::session::{apply_to_engine, SessionDriver};
use crate::transport::{now, SocketFamilies};
pub use config::UpConfig;

/// This host's interface addresses with `port` (IPv4 but loopback, global IPv6): the
/// candidates `burrow up` starts with, and where `burrow netcheck` asks for an IPv6 pinhole.
pub fn host_addresses(port: u16) -> Vec<SocketAddr> {
    iface::local_addresses(port, &[], true)
}

/// Runs the node until `shutdown`.
pub async fn run(cfg: UpConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let mut state = state::load_or_create_state(&cfg.state_dir)?;
    let (private, disco) = state.keys()?;
    // The relay socket first: its port goes to the control server with the endpoints.
    let relay_socket = match cfg.relay_port {
        Some(p) => Some(
            crate::transport::bind_udp_socket(p)
                .map(crate::transport::BatchUdpSocket::with_gro)
                .with_context(|| format!("binding the relay's UDP port {p} (--relay-port)"))?,
        ),
        None => None,
    };
    let relay_port = match &relay_socket {
        Some(s) => Some(s.get_ref().local_addr()?.port()),
        None => None,
    };
    // Several replicas of one control plane: comma-separated, failed over in turn.
    let urls: Vec<&str> = cfg
        .control
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let control = ControlClient::replicas(&urls, cfg.extra_roots.clone())
        .with_context(|| format!("--control {:?}", cfg.control))?;
    for url in &urls {
        iface::warn_if_plain("control server", url);
    }
    let mut session = SessionConfig::new(cfg.hostname.clone(), disco.public_key());
    session.auth_key = cfg.auth_key.clone();
    session.secret = state.secret.clone();
    session.seed = rand_seed();
    session.relay_port = relay_port;
    let mut driver = SessionDriver::new(Session::new(session, now()), control, private.clone());
    // The first netmap gives the node's addresses and the DERP map.
    let (node, derp_map) = loop {
        match driver.next_event().await {
            SessionEvent::SecretChanged(s) => state::save_secret(&cfg.state_dir, &mut state, s)?,
            SessionEvent::NetMap { node, derp } => break (node, derp),
            SessionEvent::Failed(e) => bail!("{e}"),
            _ => {}
        }
    };
    let derp_url = iface::derp_url(cfg.derp.as_ref(), &derp_map)?;
    let derp_dial = iface::derp_dial(cfg.derp.as_ref(), &derp_map, &derp_url);
    iface::warn_if_plain("DERP relay", &derp_url.to_string());
    let socket = crate::wg::bind_udp_socket(cfg.listen_port)
        .with_context(|| format!("binding UDP port {}", cfg.listen_port))?;
    // Datagrams leave at the size discovery chose, never fragmented by this host; a kernel or
    // sandbox that refuses the option gets the node without discovery, not no node.
    let path_mtu = cfg.path_mtu
        && match crate::transport::set_path_mtu_probe(&socket) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "IP_MTU_DISCOVER refused: path MTU discovery off, TUN MTU 1280");
                false
            }
        };
    let interface_mtu = iface::interface_mtu();
    let tun_mtu = iface::tun_mtu(cfg.mtu, interface_mtu, path_mtu);
    let (tun, offload) = iface::create_tun(&cfg.tun, &node.addresses, tun_mtu, cfg.offload)?;
    tracing::info!(tso = offload.tcp, uso = offload.udp, "TUN offloads");
    let local = socket.local_addr()?;
    let port = local.port();
    let families = SocketFamilies::of(local);
    let mut config = NodeConfig::new(private.clone(), disco, rand_seed());
    config.stun_servers = match cfg.stun.is_empty() {
        true => derp_map.iter().flat_map(|r| r.stun.clone()).collect(),
        false => cfg.stun.clone(),
    };
    // An IPv4-only socket cannot reach IPv6 STUN servers; a dual-stack one reaches both.
    config
        .stun_servers
        .retain(|s| families.ipv6() || s.is_ipv4());
    let local_addrs = iface::local_addresses(port, &node.addresses, families.ipv6());
    config.local_addrs = local_addrs.clone();
    config.tunnel_prefixes = iface::tunnel_prefixes(&node.addresses);
    config.mtu = burrow_node::MtuConfig {
        discovery: path_mtu,
        tunnel_mtu: tun_mtu,
        interface_mtu,
    };
    tracing::info!(tun_mtu, interface_mtu, discovery = path_mtu, "MTU");
    if let Some(port) = relay_port {
        let mut relay = RelayServerSettings::on_port(port);
        relay.static_endpoints = cfg.relay_endpoints.clone();
        relay.limits = relay.limits.with_leg_rate(cfg.relay_max_mbit);
        config.relay_server = Some(relay);
        tracing::info!(port, static_endpoints = ?cfg.relay_endpoints, max_mbit_per_client = cfg.relay_max_mbit, "relaying for peers");
    }
    config.unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let engine = Node::new(config, now());
    let derp = DerpClient::spawn_to(derp_url, derp_dial, private, cfg.extra_roots.clone());
    let (
        chans,
        NodeHandle {
            outbound,
            commands,
            events,
            delivered,
            batches,
        },
    ) = channels();
    let peers = crate::session::lock(&driver.session()).peer_count();
    tracing::info!(addresses = ?node.addresses, port, ?families, peers, "burrow up");
    // One line: scripts read it and may close the pipe after it.
    let relaying = relay_port.map_or(String::new(), |r| format!(", relay port {r}"));
    println!(
        "up: {} on {}, UDP port {port}, {peers} peers{relaying}",
        node.addresses[0], cfg.tun
    );

    let pings: crate::local_api::PingWaiters = Arc::new(Mutex::new(Vec::new()));
    let port_mapping = Arc::new(Mutex::new(
        (!cfg.port_mapping).then(|| "off (--no-port-mapping)".to_string()),
    ));
    let (down_tx, mut down_rx) = tokio::sync::mpsc::unbounded_channel();
    let api = crate::local_api::ApiContext {
        commands: commands.clone(),
        session: driver.session(),
        name: node.name.clone(),
        addresses: node.addresses.clone(),
        pings: pings.clone(),
        down: down_tx,
        port_mapping: port_mapping.clone(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    let socket_path = cfg.socket.clone();
    tasks.spawn(async move { crate::local_api::serve(&socket_path, api).await });
    // Birthday sockets: IPv4 (they only ever aim at IPv4 hard NATs), even beside a
    // dual-stack main socket.
    let any = TokioBinder(SocketAddr::from(([0, 0, 0, 0], 0)));
    tasks.spawn(async move {
        Ok(run_node_with_relay(
            engine,
            crate::transport::BatchUdpSocket::with_gro(socket),
            relay_socket,
            any,
            derp,
            chans,
            None,
        )
        .await
        .map(|_| ())?)
    });
    let (session, pool) = (driver.session(), batches.clone());
    tasks.spawn(paths::tun_to_peers(
        tun.clone(),
        offload,
        tun_mtu,
        session,
        outbound,
        pool,
    ));
    let (session, inputs) = (driver.session(), driver.inputs());
    let relay_forwarded = !cfg.relay_endpoints.is_empty();
    tasks.spawn(paths::engine_events(
        events,
        delivered,
        batches,
        tun,
        offload,
        session,
        inputs,
        pings,
        relay_forwarded,
    ));
    let portmap = match cfg.port_mapping {
        true => {
            let v6 = mapping::Ipv6Addrs {
                ours: node.addresses.clone(),
                enabled: families.ipv6(),
                current: local_addrs.clone(),
            };
            mapping::start(
                port,
                rand_seed(),
                v6,
                commands.clone(),
                port_mapping,
                &mut tasks,
            )
            .await
        }
        false => None,
    };
    // Addresses added or withdrawn while the node runs (IPv6 coming and going) reach the engine.
    tasks.spawn(iface::watch_addresses(
        port,
        node.addresses.clone(),
        families.ipv6(),
        local_addrs,
        commands.clone(),
    ));
    tasks.spawn(follow(driver, cfg.state_dir.clone(), state, commands));
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        _ = down_rx.recv() => {
            tracing::info!("down: asked over the local API");
            Ok(())
        }
        Some(r) = tasks.join_next() => r.unwrap_or_else(|e| Err(anyhow::anyhow!("task failed: {e}"))),
    };
    tasks.abort_all();
    if let Some(handle) = portmap {
        // Delete the mapping on the gateway rather than leave it to its lease.
        handle.shutdown(std::time::Duration::from_secs(1)).await;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    result
}

/// The session for as long as the node runs: peers to the engine, a new secret to the state
/// file; a lost netmap stream is reopened inside it while the tunnel keeps running.
async fn follow(
    mut driver: SessionDriver,
    dir: PathBuf,
    mut state: state::State,
    commands: tokio::sync::mpsc::UnboundedSender<crate::node::NodeCommand>,
) -> Result<()> {
    loop {
        match driver.next_event().await {
            SessionEvent::SecretChanged(s) => state::save_secret(&dir, &mut state, s)?,
            SessionEvent::Failed(e) => bail!("{e}"),
            e => {
                tracing::info!(event = ?e, "session");
                if !apply_to_engine(&e, &commands) {
                    return Ok(()); // the engine stopped
                }
            }
        }
    }
}

fn rand_seed() -> u64 {
    rand_chacha::ChaCha20Rng::from_os_rng().next_u64()
}
