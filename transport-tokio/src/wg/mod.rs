//! `burrow wg`: burrow-wg over a TUN device and one UDP socket, configured like wg-quick.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use burrow_wg::{Device, PeerId};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use thiserror::Error;

use crate::transport::{now, BatchUdpSocket, SocketFamilies, UdpTransport};
use crate::wg_config::{IpNet, WgConfig};

mod inbound;
mod outbound;

// The TUN's offloads live in `crate::tun`; re-exported so existing paths keep working.
pub use crate::tun::{open_tun, TunOffload};

/// Why `burrow wg` could not run.
#[derive(Debug, Error)]
pub enum WgRunError {
    /// The TUN device could not be created (needs root / CAP_NET_ADMIN).
    #[error("cannot create TUN device {name}: {source}")]
    Tun {
        /// Interface name.
        name: String,
        /// The OS error.
        source: io::Error,
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

pub(crate) fn ip_cmd(args: &[&str]) -> Result<(), WgRunError> {
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

/// How `burrow wg` runs its data path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WgOptions {
    /// Open the TUN with `IFF_VNET_HDR` and TSO/USO (`TUNSETOFFLOAD`): the kernel hands over
    /// TCP super-packets of up to 64 KiB and takes coalesced ones back. Falls back to plain
    /// packets when the kernel refuses.
    pub offload: bool,
    /// Split the sealing and opening of a large batch over two threads (the batch's packets
    /// still leave and arrive in order). Off by default: measured on two cores that also run
    /// the traffic's TCP stacks, the hand-over cost more than it saved (`BENCHMARKS.md`).
    pub parallel_crypto: bool,
}

impl Default for WgOptions {
    fn default() -> Self {
        WgOptions {
            offload: true,
            parallel_crypto: false,
        }
    }
}

/// Runs the tunnel until `shutdown` completes. SIGUSR1 forces a new handshake with every peer.
pub async fn run(
    config: WgConfig,
    ifname: &str,
    options: WgOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WgRunError> {
    let iface = &config.interface;
    let socket = bind_udp_socket(iface.listen_port).map_err(|source| WgRunError::Bind {
        port: iface.listen_port,
        source,
    })?;
    let families = SocketFamilies::of(socket.local_addr()?);
    let socket = BatchUdpSocket::with_gro(socket);
    let (tun, offload) =
        open_tun(ifname, iface.mtu, options.offload).map_err(|source| WgRunError::Tun {
            name: ifname.to_owned(),
            source,
        })?;
    for a in &iface.addresses {
        ip_cmd(&["address", "replace", &a.to_string(), "dev", ifname])?;
    }
    ip_cmd(&["link", "set", "dev", ifname, "up"])?;

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
    tracing::info!(
        interface = ifname,
        public_key = %device.public_key(),
        port = socket.local_addr()?.port(),
        peers = config.peers.len(),
        tso = offload.tcp,
        uso = offload.udp,
        gso = socket.max_segments() > 1,
        gro = socket.gro(),
        parallel_crypto = options.parallel_crypto,
        "burrow wg up"
    );

    let shared = Arc::new(Shared {
        device: Mutex::new(device),
        endpoints: Mutex::new(endpoints),
        routes,
        parallel_from: if options.parallel_crypto {
            PARALLEL_FROM
        } else {
            usize::MAX
        },
    });
    let socket = Arc::new(socket);
    let tun = Arc::new(tun);
    // Three tasks: TUN → network (encrypt), network → TUN (decrypt), and timers. They share
    // the device behind a mutex held for one batch's seals or opens, never across a system
    // call, so both directions use a core.
    let mut tasks = tokio::task::JoinSet::new();
    let mtu = usize::from(iface.mtu);
    tasks.spawn(outbound::outbound(
        shared.clone(),
        tun.clone(),
        socket.clone(),
        offload,
        mtu,
    ));
    tasks.spawn(inbound::inbound(
        shared.clone(),
        tun.clone(),
        socket.clone(),
        offload,
    ));
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
    /// Packets of a batch from which sealing or opening is split over two threads.
    parallel_from: usize,
}

/// Packets of one batch from which its sealing or opening is split over two threads: below,
/// handing half to another thread costs about what it saves.
const PARALLEL_FROM: usize = 8;

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

async fn send_all(socket: &BatchUdpSocket, pending: &mut Vec<(SocketAddr, Vec<u8>)>) {
    for (ep, d) in pending.drain(..) {
        if let Err(e) = socket.send_to(&d, ep).await {
            tracing::debug!(%ep, error = %e, "send failed");
        }
    }
}

async fn timers(
    shared: Arc<Shared>,
    socket: Arc<BatchUdpSocket>,
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
