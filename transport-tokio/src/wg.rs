//! `burrow wg`: burrow-wg over a TUN device and one UDP socket, configured like wg-quick.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use burrow_wg::{Decapsulated, Device, Encapsulated, PeerId, Received};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use thiserror::Error;
use tokio::net::UdpSocket;

use crate::transport::now;
use crate::wg_config::{route, IpNet, WgConfig};

/// Why `burrow wg` could not run.
#[derive(Debug, Error)]
pub enum WgRunError {
    /// The TUN device could not be created (needs root / CAP_NET_ADMIN).
    #[error("cannot create TUN device {name}: {source}")]
    Tun {
        /// Interface name.
        name: String,
        /// The OS error.
        source: tun::Error,
    },
    /// The UDP socket could not be bound.
    #[error("cannot listen on UDP port {port}: {source}")]
    Bind {
        /// Port.
        port: u16,
        /// The OS error.
        source: io::Error,
    },
    /// A peer's endpoint did not resolve.
    #[error("cannot resolve endpoint {endpoint}: {source}")]
    Resolve {
        /// The endpoint.
        endpoint: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {message}")]
    Ip {
        /// Its arguments.
        args: String,
        /// What it said.
        message: String,
    },
    /// The TUN device or socket failed while running.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

fn ip_cmd(args: &[&str]) -> Result<(), WgRunError> {
    let out = std::process::Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(WgRunError::Ip {
            args: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn netmask(prefix: u8) -> std::net::Ipv4Addr {
    let bits = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    };
    bits.into()
}

/// Source and destination of an IP packet, if it is one.
fn addresses(p: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some((
            IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).ok()?),
            IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).ok()?),
        )),
        6 if p.len() >= 40 => Some((
            IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?),
            IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?),
        )),
        _ => None,
    }
}

/// Handshake messages per second above which the device asks for cookies.
const UNDER_LOAD_HANDSHAKES_PER_SECOND: u32 = 64;

/// Runs the tunnel until `shutdown` completes. SIGUSR1 forces a new handshake with every peer.
pub async fn run(
    config: WgConfig,
    ifname: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WgRunError> {
    let iface = &config.interface;
    let socket = UdpSocket::bind(("0.0.0.0", iface.listen_port))
        .await
        .map_err(|source| WgRunError::Bind {
            port: iface.listen_port,
            source,
        })?;
    let mut tun_config = tun::Configuration::default();
    tun_config.tun_name(ifname).mtu(iface.mtu).up();
    let first_v4 = iface.addresses.iter().find(|a| a.addr.is_ipv4()).copied();
    if let Some(IpNet {
        addr: IpAddr::V4(v4),
        prefix,
    }) = first_v4
    {
        tun_config.address(v4).netmask(netmask(prefix));
    }
    let tun = tun::create_as_async(&tun_config).map_err(|source| WgRunError::Tun {
        name: ifname.to_owned(),
        source,
    })?;
    for a in iface.addresses.iter().filter(|a| Some(**a) != first_v4) {
        ip_cmd(&["address", "add", &a.to_string(), "dev", ifname])?;
    }

    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut device = Device::new(
        iface.private_key.clone(),
        ChaCha20Rng::from_os_rng(),
        now(),
        unix,
    );
    let mut routes: Vec<(IpNet, PeerId)> = Vec::new();
    let mut endpoints: Vec<Option<SocketAddr>> = Vec::new();
    for p in &config.peers {
        let id = device.add_peer(
            now(),
            p.public_key,
            p.preshared_key.clone(),
            p.persistent_keepalive,
        );
        for net in &p.allowed_ips {
            routes.push((*net, id));
            // The interface's own subnet is routed already; other prefixes need a route.
            if !iface
                .addresses
                .iter()
                .any(|a| a.prefix == net.prefix && a.contains(net.addr))
            {
                if let Err(e) = ip_cmd(&["route", "replace", &net.to_string(), "dev", ifname]) {
                    tracing::warn!(error = %e, "route not added");
                }
            }
        }
        let endpoint = match &p.endpoint {
            Some(e) => Some(
                tokio::net::lookup_host(e.as_str())
                    .await
                    .map_err(|source| WgRunError::Resolve {
                        endpoint: e.clone(),
                        source,
                    })?
                    .find(|a| a.is_ipv4())
                    .ok_or_else(|| WgRunError::Resolve {
                        endpoint: e.clone(),
                        source: io::Error::other("no IPv4 address"),
                    })?,
            ),
            None => None,
        };
        endpoints.push(endpoint);
    }
    tracing::info!(interface = ifname, public_key = %device.public_key(), port = socket.local_addr()?.port(), peers = config.peers.len(), "burrow wg up");

    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    tokio::pin!(shutdown);
    let mut from_tun = vec![0u8; 65_536];
    let mut from_net = vec![0u8; 65_536];
    let mut out = vec![0u8; 65_536 + 64];
    let mut handshakes_this_second = 0u32;
    let mut second_started = now();
    loop {
        while let Some((peer, datagram)) = device.poll_transmit() {
            if let Some(ep) = endpoints[peer.0] {
                if let Err(e) = socket.send_to(&datagram, ep).await {
                    tracing::debug!(%ep, error = %e, "send failed");
                }
            }
        }
        while let Some((peer, event)) = device.poll_event() {
            tracing::info!(peer = %device.tunnel(peer).peer(), ?event, "tunnel event");
        }
        let wake = device.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: new handshake with every peer");
                for i in 0..config.peers.len() {
                    device.force_handshake(now(), PeerId(i));
                }
            }
            r = socket.recv_from(&mut from_net) => {
                let (n, src) = r?;
                let t = now();
                if t.saturating_duration_since(second_started) >= Duration::from_secs(1) {
                    second_started = t;
                    handshakes_this_second = 0;
                    device.set_under_load(false);
                }
                if matches!(from_net.first(), Some(1) | Some(2)) {
                    handshakes_this_second += 1;
                    if handshakes_this_second > UNDER_LOAD_HANDSHAKES_PER_SECOND {
                        device.set_under_load(true);
                    }
                }
                match device.decapsulate(t, src, &from_net[..n], &mut out) {
                    Ok(Received::Peer(peer, result)) => {
                        endpoints[peer.0] = Some(src); // roaming: answer where the peer is now
                        if let Decapsulated::Data(len) = result {
                            let packet = &out[..len];
                            // Crypto-key routing: the inner source must be one of the peer's AllowedIPs.
                            match addresses(packet) {
                                Some((inner_src, _)) if route(&routes, inner_src) == Some(&peer) => {
                                    tun.send(packet).await?;
                                }
                                _ => tracing::debug!(%src, "dropped a packet whose inner source the peer may not use"),
                            }
                        }
                    }
                    Ok(Received::CookieReply(len)) => {
                        let _ = socket.send_to(&out[..len], src).await;
                    }
                    Err(e) => tracing::debug!(%src, error = %e, "datagram refused"),
                }
            }
            r = tun.recv(&mut from_tun) => {
                let n = r?;
                let packet = &from_tun[..n];
                let Some((_, dst)) = addresses(packet) else { continue };
                let Some(&peer) = route(&routes, dst) else { continue };
                match device.encapsulate(now(), peer, packet, &mut out) {
                    Ok(Encapsulated::Sent(len)) => {
                        if let Some(ep) = endpoints[peer.0] {
                            let _ = socket.send_to(&out[..len], ep).await;
                        }
                    }
                    Ok(Encapsulated::Queued) => {}
                    Err(e) => tracing::debug!(error = %e, "packet not sent"),
                }
            }
            _ = sleep_until(wake) => device.handle_timeout(now()),
        }
    }
    Ok(())
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
