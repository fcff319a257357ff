//! The turmoil network of a scenario: the simulation itself, its NAT boxes, and its STUN and
//! DERP servers (control servers start with the mesh workload).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use burrow::stun_server::StunServer;
use burrow_stun::ServerConfig;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::layout::Layout;
use super::{Family, Scenario, ScenarioError};
use crate::capture::Recorder;
use crate::net::{
    derive_seed, run_box, BoxKind, BoxSpec, BoxUplink, Link, LinkConfig, SimSocket, Uplink,
};
use crate::wire::GATEWAY_PORT;

/// A turmoil simulation holding the scenario's boxes and servers.
pub(super) fn build(
    scenario: &Scenario,
    layout: &Layout,
    seed: u64,
    recorder: &Arc<Recorder>,
) -> Result<turmoil::Sim<'static>, ScenarioError> {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs_f64(scenario.duration_s))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::ZERO)
        .max_message_latency(Duration::ZERO)
        .udp_capacity(4096)
        .rng_seed(seed)
        .ip_version(match scenario.family {
            Family::Ipv4 => turmoil::IpVersion::V4,
            Family::Ipv6 => turmoil::IpVersion::V6,
        })
        .build();

    // Boxes.
    for b in &scenario.boxes {
        let ip = layout.boxes[&b.name];
        let uplink = match &b.behind {
            None => BoxUplink::Internet(b.link),
            Some(p) => BoxUplink::Behind(SocketAddr::new(layout.boxes[p], GATEWAY_PORT), b.link),
        };
        let spec = BoxSpec {
            name: b.name.clone(),
            ip,
            kind: BoxKind::Nat(scenario.box_config(b)?),
            uplink,
            seed: derive_seed(seed, &format!("box:{}", b.name)),
            inside_links: scenario
                .nodes
                .iter()
                .filter(|n| n.behind.as_deref() == Some(b.name.as_str()))
                .map(|n| (layout.nodes[&n.name], n.link))
                .chain(
                    scenario
                        .boxes
                        .iter()
                        .filter(|c| c.behind.as_deref() == Some(b.name.as_str()))
                        .map(|c| (layout.boxes[&c.name], c.link)),
                )
                .collect(),
        };
        let rec = recorder.clone();
        sim.host(ip, move || run_box(spec.clone(), rec.clone(), seed));
    }

    // Servers (an alias box holds an RFC 5780 server's second IP).
    for s in &scenario.servers {
        let (ip, alt_ip) = layout.servers[&s.name];
        if s.kind == "control" {
            continue; // started with the mesh workload, which knows its DERP map
        }
        if s.kind == "derp" {
            let port = s.port;
            let relay_seed = derive_seed(seed, &format!("derp:{}", s.name));
            sim.host(ip, move || async move {
                let config = burrow::derper::DerperConfig {
                    private_key: burrow_wg::PrivateKey::from_bytes(seed_bytes(relay_seed)),
                    mesh_key: None,
                    mesh_with: Vec::new(),
                    tls: None,
                    rate_limit: None,
                    admission: Default::default(),
                };
                let relay = burrow::derper::Relay::with_rng(
                    &config,
                    ChaCha20Rng::seed_from_u64(relay_seed),
                );
                burrow::derper::spawn_timers(relay.clone());
                let any = if ip.is_ipv4() {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                };
                let listener = turmoil::net::TcpListener::bind((any, port)).await?;
                loop {
                    let (stream, peer) = listener.accept().await?;
                    let relay = relay.clone();
                    tokio::spawn(async move {
                        let _ = burrow::derper::serve_stream(relay, Box::new(stream), peer).await;
                    });
                }
            });
            continue;
        }
        if let Some(alt_ip) = alt_ip {
            let spec = BoxSpec {
                name: format!("{}-alt", s.name),
                ip: alt_ip,
                kind: BoxKind::Alias,
                uplink: BoxUplink::Internet(s.link),
                seed: 0,
                inside_links: Vec::new(),
            };
            let rec = recorder.clone();
            sim.host(alt_ip, move || run_box(spec.clone(), rec.clone(), seed));
        }
        let (s, rec) = (s.clone(), recorder.clone());
        sim.host(ip, move || {
            let (s, rec) = (s.clone(), rec.clone());
            async move {
                let primary = SocketAddr::new(ip, s.port);
                let alternate = alt_ip.map(|a| SocketAddr::new(a, s.alt_port));
                let config = ServerConfig {
                    primary,
                    alternate,
                    software: Some("burrow-sim".into()),
                };
                let link = Link::new(&s.name, s.link, seed, rec.clone());
                let direct = Uplink::Direct {
                    link,
                    capture: s.name.clone(),
                    firewall: None,
                };
                let mut sockets = Vec::new();
                for addr in config.listen_addresses() {
                    if addr.ip() == ip {
                        sockets.push(SimSocket::bind(addr, direct.clone(), rec.clone()).await?);
                    } else {
                        let lan = Link::new(
                            &format!("{}-alt-lan", s.name),
                            LinkConfig::with_latency(0.0),
                            seed,
                            rec.clone(),
                        );
                        sockets.push(
                            SimSocket::bind_alias(
                                ip,
                                addr,
                                SocketAddr::new(addr.ip(), GATEWAY_PORT),
                                lan,
                                rec.clone(),
                            )
                            .await?,
                        );
                    }
                }
                StunServer::from_sockets(config, sockets)
                    .run(1, std::future::pending())
                    .await;
                Ok(())
            }
        });
    }

    Ok(sim)
}

pub(super) fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&derive_seed(seed, &i.to_string()).to_le_bytes());
    }
    b
}
