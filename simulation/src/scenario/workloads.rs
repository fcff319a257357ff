//! The workloads a scenario runs on its nodes: two mesh nodes (burrow's node driver, with or
//! without the control server), or one netcheck.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_netcheck::{Region, Report};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::layout::{Attachment, Layout};
use super::world::seed_bytes;
use super::{Scenario, ScenarioError, Workload};
use crate::capture::Recorder;
use crate::net::{derive_seed, SimSocket};

/// What the simulation collected besides the recorder.
pub(super) type Slot = Arc<Mutex<Option<NetcheckResult>>>;

/// What netcheck reported, or why it did not.
pub(super) type NetcheckResult = Result<Report, String>;

/// What each mesh node saw, by node name.
pub(super) type MeshSlot = Arc<Mutex<BTreeMap<String, MeshNode>>>;

/// One mesh node's view at the end of a run.
#[derive(Debug, Clone, Default)]
pub(super) struct MeshNode {
    pub(super) route: Option<burrow_punch::Route>,
    pub(super) time_to_direct: Option<Duration>,
    pub(super) sent: u64,
    pub(super) received: u64,
    pub(super) probes: u64,
    pub(super) switches: u64,
}

/// Starts the mesh workload's control server and its two nodes, if the workload is a mesh.
pub(super) fn mesh(
    sim: &mut turmoil::Sim<'static>,
    scenario: &Scenario,
    layout: &Layout,
    seed: u64,
    recorder: &Arc<Recorder>,
    mesh_slot: &MeshSlot,
) -> Result<(), ScenarioError> {
    if let Workload::Mesh {
        a,
        b,
        stun,
        derp,
        duration_s,
        data_interval_ms,
        control,
    } = &scenario.workload
    {
        let server_addr = |name: &String| {
            let def = scenario
                .servers
                .iter()
                .find(|s| &s.name == name)
                .expect("validated");
            SocketAddr::new(layout.servers[name].0, def.port)
        };
        let stun_addrs: Vec<SocketAddr> = stun.iter().map(server_addr).collect();
        let derp_addr = server_addr(derp);
        // The coordination server, whose DERP map names the workload's relay and STUN servers.
        let control = match control {
            None => None,
            Some(name) => {
                let addr = server_addr(name);
                let sim_control = Arc::new(
                    crate::control::SimControl::new(vec![burrow_control::DerpRegion {
                        id: 1,
                        code: "sim".into(),
                        url: format!("http://{derp_addr}/derp"),
                        stun: stun_addrs.clone(),
                        ipv4: None,
                        ipv6: None,
                    }])
                    .map_err(|e| scenario.invalid(format!("control server: {e}")))?,
                );
                let key = sim_control.auth_key.clone();
                sim.host(addr.ip(), move || {
                    let c = sim_control.clone();
                    async move { c.serve(addr.port()).await }
                });
                Some((addr, key))
            }
        };
        let key = |what: &str, name: &str| {
            burrow_wg::PrivateKey::from_bytes(seed_bytes(derive_seed(
                seed,
                &format!("{what}:{name}"),
            )))
        };
        let duration = Duration::from_secs_f64(*duration_s);
        let interval =
            (*data_interval_ms > 0.0).then(|| Duration::from_secs_f64(data_interval_ms / 1000.0));
        for (side, (me, peer)) in [(a.clone(), b.clone()), (b.clone(), a.clone())]
            .into_iter()
            .enumerate()
        {
            // Tailnet addresses without a control server: a is 100.64.0.1, b 100.64.0.2.
            let tailnet_ip = |s: usize| std::net::Ipv4Addr::new(100, 64, 0, 1 + s as u8);
            let n = scenario
                .nodes
                .iter()
                .find(|x| x.name == me)
                .expect("validated")
                .clone();
            let attachment = Attachment::of(scenario, layout, &n)?;
            let ip = attachment.ip;
            let (wg_key, disco_key) = (key("wg", &me), key("disco", &me));
            let peer_config = burrow_node::PeerConfig {
                node_key: key("wg", &peer).public_key(),
                disco_key: key("disco", &peer).public_key(),
                home_region: 1,
                endpoints: Vec::new(),
                allowed_ips: vec![std::net::IpAddr::V4(tailnet_ip(1 - side)).into()],
            };
            let mut my_ip = tailnet_ip(side);
            let (rec, out, stun_addrs) = (recorder.clone(), mesh_slot.clone(), stun_addrs.clone());
            let control = control.clone();
            sim.client(ip, async move {
                // With a control server: the node session registers and opens the netmap.
                let joined = match &control {
                    None => None,
                    Some((addr, key)) => {
                        let client = crate::control::client(*addr);
                        Some(crate::control::join(client, &me, &wg_key, &disco_key, key, &rec).await?)
                    }
                };
                let uplink = attachment.uplink(&n, seed, rec.clone());
                let sock = SimSocket::bind(SocketAddr::new(ip, 0), uplink.clone(), rec.clone()).await?;
                let local = burrow::transport::UdpTransport::local_addr(&sock)?;
                let binder = crate::node_io::SimBinder { ip, uplink, rec: rec.clone() };
                let derp = crate::node_io::derp_client(derp_addr, &wg_key, seed, &me);
                let mut config = burrow_node::NodeConfig::new(
                    wg_key,
                    disco_key,
                    derive_seed(seed, &format!("node:{me}")),
                );
                config.stun_servers = stun_addrs;
                config.local_addrs = vec![local];
                // Without a control server nothing vouches for a peer's public IP: the two
                // scripted nodes trust each other's advertisements.
                config.birthday_needs_control_ip = joined.is_some();
                let start = tokio::time::Instant::now();
                let mut engine = burrow_node::Node::new(config, start.into_std());
                let (channels, handle) = burrow::node::channels();
                let burrow::node::NodeHandle { outbound: app_tx, commands, events: mut ev_rx, delivered: mut del_rx, batches } = handle;
                // Whether the peer is known yet (without a control server: from the start).
                let (known_tx, mut known_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                let mut peer_known = joined.is_none();
                let mut endpoints_to = None;
                match joined {
                    None => {
                        let _ = engine.add_peer(start.into_std(), peer_config.clone());
                    }
                    Some((driver, node)) => {
                        if let Some(std::net::IpAddr::V4(a)) = node.addresses.iter().find(|a| a.is_ipv4()) {
                            my_ip = *a;
                        }
                        endpoints_to = Some(driver.inputs());
                        let watch = peer_config.node_key;
                        crate::control::follow(driver, commands.clone(), rec.clone(), me.clone(), Some((watch, known_tx)));
                    }
                }
                let pinging = endpoints_to.is_some();
                let mut next_ping = start;
                let until = start + duration;
                let driver = tokio::spawn(burrow::node::run_node(
                    engine, sock, binder, derp, channels, Some(until),
                ));
                let mut view = MeshNode::default();
                let mut next_data = interval.map(|_| start);
                let peer_key = peer_config.node_key;
                loop {
                    let mut wake = next_data.map_or(until, |t| t.min(until));
                    if pinging && peer_known {
                        wake = wake.min(next_ping);
                    }
                    tokio::select! {
                        Some(()) = known_rx.recv() => peer_known = true,
                        b = del_rx.recv() => match b {
                            Some(batch) => {
                                for _ in batch.iter() {
                                    if view.received == 0 {
                                        let via = view.route.unwrap_or(burrow_punch::Route::Relay);
                                        rec.event(format_args!("mesh {me} first packet from the peer, via {via:?}"));
                                    }
                                    view.received += 1;
                                }
                                batches.give(batch);
                            }
                            None => break,
                        },
                        e = ev_rx.recv() => match e {
                            Some(burrow_node::Event::PingResult { via, latency, .. }) => {
                                rec.event(format_args!("mesh {me} pong via {via:?} in {:.1} ms", latency.as_secs_f64() * 1000.0));
                            }
                            Some(burrow_node::Event::PathChanged { from, to, .. }) => {
                                view.switches += 1;
                                rec.event(format_args!("mesh {me} path {from:?} -> {to:?}"));
                                if matches!(to, burrow_punch::Route::Direct(_)) && view.time_to_direct.is_none() {
                                    view.time_to_direct = Some(start.elapsed());
                                }
                                view.route = Some(to);
                            }
                            Some(burrow_node::Event::BirthdayStarted { probing, .. }) => {
                                rec.event(format_args!("mesh {me} birthday (probing: {probing})"));
                            }
                            Some(burrow_node::Event::Endpoints { nat, candidates }) => {
                                let kind = match nat {
                                    None => "unknown".to_owned(),
                                    Some(n) if !n.mapping_varies => format!("easy, reflexive {}", n.reflexive),
                                    Some(n) if n.delta.is_some() => format!("hard (sequential), reflexive {}", n.reflexive),
                                    Some(n) => format!("hard (random ports), reflexive {}", n.reflexive),
                                };
                                rec.event(format_args!("mesh {me} NAT {kind}; {} candidates", candidates.len()));
                                if let Some(inputs) = &endpoints_to {
                                    let endpoints = candidates.iter().map(|c| c.addr).collect();
                                    let _ = inputs.try_send(burrow_session::Input::LocalEndpoints(endpoints));
                                }
                            }
                            Some(_) => {}
                            None => break,
                        },
                        _ = tokio::time::sleep_until(wake) => {
                            let now = tokio::time::Instant::now();
                            if now >= until {
                                break;
                            }
                            if pinging && peer_known && now >= next_ping {
                                let _ = commands.send(burrow::node::NodeCommand::Ping(peer_key));
                                next_ping = now + Duration::from_secs(1);
                            }
                            if let (Some(t), Some(iv)) = (next_data, interval) {
                                if now >= t && peer_known {
                                    // Quiet for the last 2 s, so nothing is in flight at the end.
                                    if now + Duration::from_secs(2) < until {
                                        // From this node's own tailnet address (the peer drops any other).
                                        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
                                        p.extend_from_slice(&my_ip.octets());
                                        p.extend_from_slice(&tailnet_ip(1 - side).octets());
                                        p.extend_from_slice(&view.sent.to_be_bytes());
                                        let mut batch = batches.take();
                                        batch.push(peer_key, &p);
                                        let _ = app_tx.try_send(batch);
                                        view.sent += 1;
                                    }
                                    next_data = Some(t + iv);
                                }
                            }
                        }
                    }
                }
                view.route.get_or_insert(burrow_punch::Route::Relay);
                drop(app_tx);
                if let Ok(Ok(engine)) = driver.await {
                    view.probes = engine.stats(&peer_key).map_or(0, |s| s.probes);
                }
                out.lock().expect("mesh slot").insert(me.clone(), view);
                Ok(())
            });
        }
        for n in [a, b] {
            sim.set_link_latency(layout.nodes[n], derp_addr.ip(), Duration::from_millis(15));
        }
    }
    Ok(())
}

/// Starts the netcheck workload's node, if the workload is a netcheck.
pub(super) fn netcheck(
    sim: &mut turmoil::Sim<'static>,
    scenario: &Scenario,
    layout: &Layout,
    seed: u64,
    recorder: &Arc<Recorder>,
    slot: &Slot,
) -> Result<(), ScenarioError> {
    match &scenario.workload {
        Workload::Mesh { .. } => {}
        Workload::Netcheck {
            node,
            servers,
            deadline_s,
        } => {
            let n = scenario
                .nodes
                .iter()
                .find(|x| &x.name == node)
                .expect("validated")
                .clone();
            let attachment = Attachment::of(scenario, layout, &n)?;
            let ip = attachment.ip;
            let mut regions: Vec<Region> = Vec::new();
            for name in servers {
                let def = scenario
                    .servers
                    .iter()
                    .find(|x| &x.name == name)
                    .expect("validated");
                let code = def.region.clone().unwrap_or_else(|| def.name.clone());
                let addr = SocketAddr::new(layout.servers[name].0, def.port);
                match regions.iter_mut().find(|r| r.code == code) {
                    Some(r) => r.servers.push(addr),
                    None => regions.push(Region {
                        id: regions.len() as u32 + 1,
                        code,
                        servers: vec![addr],
                    }),
                }
            }
            let deadline = Duration::from_secs_f64(*deadline_s);
            let (rec, slot2) = (recorder.clone(), slot.clone());
            sim.client(ip, async move {
                let sock = attachment.bind(&n, seed, rec.clone()).await?;
                let rng =
                    ChaCha20Rng::seed_from_u64(derive_seed(seed, &format!("node:{}", n.name)));
                let (v4, v6) = if ip.is_ipv4() {
                    (Some(sock), None)
                } else {
                    (None, Some(sock))
                };
                let r = burrow::netcheck::run_on(regions, v4, v6, vec![ip], deadline, rng).await;
                let r = match r {
                    Ok(report) => Ok(report),
                    Err(burrow::netcheck::NetcheckError::NoAnswer { .. }) => {
                        Err("no STUN server answered".to_owned())
                    }
                    Err(e) => Err(e.to_string()),
                };
                match &r {
                    Ok(report) => rec.event(format_args!(
                        "netcheck report {}",
                        serde_json::to_string(report).unwrap_or_default()
                    )),
                    Err(e) => rec.event(format_args!("netcheck error {e}")),
                }
                *slot2.lock().expect("slot") = Some(r);
                Ok(())
            });
        }
    }
    Ok(())
}
