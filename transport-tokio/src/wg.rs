//! `burrow wg`: burrow-wg over a TUN device and one UDP socket, configured like wg-quick.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use burrow_wg::{Decapsulated, Device, Encapsulated, PeerId, Received};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use thiserror::Error;
use tokio::net::UdpSocket;

use crate::transport::{now, SocketFamilies};
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

// Moved to `crate::transport`; re-exported so existing paths keep working.
pub use crate::transport::bind_udp_socket;

/// Runs the tunnel until `shutdown` completes. SIGUSR1 forces a new handshake with every peer.
pub async fn run(
    config: WgConfig,
    ifname: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WgRunError> {
    let iface = &config.interface;
    let socket = bind_udp_socket(iface.listen_port).map_err(|source| WgRunError::Bind {
        port: iface.listen_port,
        source,
    })?;
    let families = SocketFamilies::of(socket.local_addr()?);
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
                    .find(|a| families.ipv6() || a.is_ipv4())
                    .ok_or_else(|| WgRunError::Resolve {
                        endpoint: e.clone(),
                        source: io::Error::other("no IPv4 address (this host has no IPv6)"),
                    })?,
            ),
            None => None,
        };
        endpoints.push(endpoint);
    }
    tracing::info!(interface = ifname, public_key = %device.public_key(), port = socket.local_addr()?.port(), peers = config.peers.len(), "burrow wg up");

    let shared = Arc::new(Shared {
        device: Mutex::new(device),
        endpoints: Mutex::new(endpoints),
        routes,
    });
    let socket = Arc::new(socket);
    let tun = Arc::new(tun);
    // Three tasks: TUN → network (encrypt), network → TUN (decrypt), and timers. They share
    // the device behind a mutex held only for one seal or open, so both directions use a core.
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(outbound(shared.clone(), tun.clone(), socket.clone()));
    tasks.spawn(inbound(shared.clone(), tun.clone(), socket.clone()));
    tasks.spawn(timers(shared.clone(), socket.clone(), config.peers.len()));
    tokio::select! {
        _ = shutdown => {}
        Some(r) = tasks.join_next() => {
            tasks.abort_all();
            return match r {
                Ok(r) => r,
                Err(e) => Err(WgRunError::Io(io::Error::other(e))),
            };
        }
    }
    tasks.abort_all();
    Ok(())
}

/// State the three tasks share.
struct Shared {
    device: Mutex<Device>,
    endpoints: Mutex<Vec<Option<SocketAddr>>>,
    routes: Vec<(IpNet, PeerId)>,
}

impl Shared {
    /// Takes what the device wants sent, with each peer's current endpoint.
    fn drain(&self, device: &mut Device, out: &mut Vec<(SocketAddr, Vec<u8>)>) {
        let endpoints = self.endpoints.lock().expect("endpoints");
        while let Some((peer, datagram)) = device.poll_transmit() {
            if let Some(ep) = endpoints[peer.0] {
                out.push((ep, datagram));
            }
        }
        while let Some((peer, event)) = device.poll_event() {
            tracing::info!(peer = %device.tunnel(peer).peer(), ?event, "tunnel event");
        }
    }
}

async fn send_all(socket: &UdpSocket, pending: &mut Vec<(SocketAddr, Vec<u8>)>) {
    for (ep, d) in pending.drain(..) {
        if let Err(e) = socket.send_to(&d, ep).await {
            tracing::debug!(%ep, error = %e, "send failed");
        }
    }
}

async fn outbound(
    shared: Arc<Shared>,
    tun: Arc<tun::AsyncDevice>,
    socket: Arc<UdpSocket>,
) -> Result<(), WgRunError> {
    let mut from_tun = vec![0u8; 65_536];
    let mut out = vec![0u8; 65_536 + 64];
    let mut pending = Vec::new();
    loop {
        let n = tun.recv(&mut from_tun).await?;
        let packet = &from_tun[..n];
        let Some((_, dst)) = addresses(packet) else {
            continue;
        };
        let Some(&peer) = route(&shared.routes, dst) else {
            continue;
        };
        let sent = {
            let mut device = shared.device.lock().expect("device");
            let r = device.encapsulate(now(), peer, packet, &mut out);
            shared.drain(&mut device, &mut pending);
            r
        };
        match sent {
            Ok(Encapsulated::Sent(len)) => {
                let ep = shared.endpoints.lock().expect("endpoints")[peer.0];
                if let Some(ep) = ep {
                    let _ = socket.send_to(&out[..len], ep).await;
                }
            }
            Ok(Encapsulated::Queued) => {}
            Err(e) => tracing::debug!(error = %e, "packet not sent"),
        }
        send_all(&socket, &mut pending).await;
    }
}

async fn inbound(
    shared: Arc<Shared>,
    tun: Arc<tun::AsyncDevice>,
    socket: Arc<UdpSocket>,
) -> Result<(), WgRunError> {
    let mut from_net = vec![0u8; 65_536];
    let mut out = vec![0u8; 65_536 + 64];
    let mut pending = Vec::new();
    loop {
        let (n, src) = socket.recv_from(&mut from_net).await?;
        // IPv4 peers arrive as ::ffff:a.b.c.d on the dual-stack socket: keep them as IPv4.
        let src = burrow_punch::canonical_remote(src);
        let t = now();
        let result = {
            // The device counts handshakes and asks for cookies past its rate by itself.
            let mut device = shared.device.lock().expect("device");
            let r = device.decapsulate(t, src, &from_net[..n], &mut out);
            // Roam on authenticated packets only: a cookie reply is forgeable by anyone who
            // saw our mac1.
            if let Ok(Received::Peer(peer, result)) = r {
                if result != Decapsulated::CookieReply {
                    shared.endpoints.lock().expect("endpoints")[peer.0] = Some(src);
                }
            }
            shared.drain(&mut device, &mut pending);
            r
        };
        match result {
            Ok(Received::Peer(peer, Decapsulated::Data(len))) => {
                let packet = &out[..len];
                // Crypto-key routing: the inner source must be one of the peer's AllowedIPs.
                match addresses(packet) {
                    Some((inner_src, _)) if route(&shared.routes, inner_src) == Some(&peer) => {
                        tun.send(packet).await?;
                    }
                    _ => {
                        tracing::debug!(%src, "dropped a packet whose inner source the peer may not use")
                    }
                }
            }
            Ok(Received::Peer(..)) => {}
            Ok(Received::CookieReply(len)) => {
                let _ = socket.send_to(&out[..len], src).await;
            }
            Err(e) => tracing::debug!(%src, error = %e, "datagram refused"),
        }
        send_all(&socket, &mut pending).await;
    }
}

async fn timers(
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    peers: usize,
) -> Result<(), WgRunError> {
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let mut pending = Vec::new();
    loop {
        // Wake at the earliest timer, or within 100 ms to pick up timers the other tasks set.
        let wake = shared
            .device
            .lock()
            .expect("device")
            .poll_timeout()
            .map(tokio::time::Instant::from_std);
        let cap = tokio::time::Instant::now() + Duration::from_millis(100);
        let at = wake.map_or(cap, |w| w.min(cap));
        tokio::select! {
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: new handshake with every peer");
                let mut device = shared.device.lock().expect("device");
                for i in 0..peers {
                    device.force_handshake(now(), PeerId(i));
                }
                shared.drain(&mut device, &mut pending);
            }
            _ = tokio::time::sleep_until(at) => {
                let mut device = shared.device.lock().expect("device");
                device.handle_timeout(now());
                shared.drain(&mut device, &mut pending);
            }
        }
        send_all(&socket, &mut pending).await;
    }
}
