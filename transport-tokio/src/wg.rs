//! `burrow wg`: burrow-wg over a TUN device and one UDP socket, configured like wg-quick.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use burrow_offload::{Coalescer, SlotLayout, VirtioNetHdr, VNET_HDR_LEN};
use burrow_wg::{Decapsulated, Device, Encapsulated, PeerId, Received};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use thiserror::Error;
use tun_rs::AsyncDevice;

use crate::transport::{now, BatchUdpSocket, RecvBatch, SocketFamilies, UdpTransport};
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

/// What the TUN device accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunOffload {
    /// Frames carry a virtio-net header; TCP segmentation offload is on.
    pub tcp: bool,
    /// UDP segmentation offload is on too (Linux 6.2+).
    pub udp: bool,
}

/// Opens the TUN `name` with offloads if asked and the kernel agrees, else without. An
/// offloading TUN also needs super-packets capped at 64 segments (what a frame's slots hold);
/// a kernel that does not take the cap gets a plain TUN, so no super-packet is ever dropped.
pub fn open_tun(name: &str, mtu: u16, offload: bool) -> io::Result<(AsyncDevice, TunOffload)> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(offload)
            .build_async()
    };
    if offload {
        match build(true) {
            Ok(dev) if dev.tcp_gso() && limit_gso_segments(name) => {
                let udp = dev.udp_gso();
                return Ok((dev, TunOffload { tcp: true, udp }));
            }
            Ok(dev) => drop(dev),
            Err(e) => tracing::info!(error = %e, "TUN offload refused; plain packets"),
        }
    }
    let dev = build(false)?;
    Ok((
        dev,
        TunOffload {
            tcp: false,
            udp: false,
        },
    ))
}

/// Caps super-packets on the TUN `ifname` at [`burrow_offload::MAX_SEGMENTS`] segments (the
/// kernel cuts larger ones itself before the TUN), and reads the cap back: an old kernel or
/// `ip` may accept the command and ignore it. False when the cap does not hold.
fn limit_gso_segments(ifname: &str) -> bool {
    let max = burrow_offload::MAX_SEGMENTS;
    if let Err(e) = ip_cmd(&[
        "link",
        "set",
        "dev",
        ifname,
        "gso_max_segs",
        &max.to_string(),
    ]) {
        tracing::info!(error = %e, "gso_max_segs not taken; plain TUN packets");
        return false;
    }
    // Read back through netlink (`ip -d link`): /sys may show another network namespace.
    let segs = std::process::Command::new("ip")
        .args(["-d", "link", "show", "dev", ifname])
        .output()
        .ok()
        .and_then(|out| gso_max_segs(&String::from_utf8_lossy(&out.stdout)));
    match segs {
        Some(segs) if segs <= max => true,
        other => {
            tracing::info!(?other, "gso_max_segs does not hold; plain TUN packets");
            false
        }
    }
}

/// The `gso_max_segs` value in `ip -d link show` output.
fn gso_max_segs(details: &str) -> Option<usize> {
    let mut words = details.split_whitespace();
    words.find(|w| *w == "gso_max_segs")?;
    words.next()?.parse().ok()
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
    tasks.spawn(outbound(
        shared.clone(),
        tun.clone(),
        socket.clone(),
        offload,
        mtu,
    ));
    tasks.spawn(inbound(
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

/// TUN frames read in one go before their datagrams are sent.
const TUN_BATCH: usize = 64;
/// Datagrams one GSO send carries at most, and its bytes.
const RUN_SEGMENTS: usize = 64;
const RUN_BYTES: usize = 60_000;
/// Room a WireGuard data message needs beyond its plaintext: header, padding, tag.
const WG_OVERHEAD: usize = 16 + 15 + 16;

/// Sealed datagrams packed back to back, with their endpoints, sent as GSO runs.
struct Outgoing {
    buf: Vec<u8>,
    used: usize,
    /// Per datagram: endpoint and length, in order.
    datagrams: Vec<(SocketAddr, usize)>,
}

impl Outgoing {
    fn new(bytes: usize) -> Self {
        Outgoing {
            buf: vec![0; bytes],
            used: 0,
            datagrams: Vec::with_capacity(RUN_SEGMENTS * 2),
        }
    }

    /// Whether `bytes` more (plaintexts with their overhead) still fit.
    fn room_for(&self, bytes: usize) -> bool {
        self.buf.len() - self.used >= bytes
    }

    /// Sends everything: consecutive datagrams to one endpoint, all as long as the first but
    /// a shorter last, go out in one system call.
    async fn flush(&mut self, socket: &BatchUdpSocket) {
        let max = socket.max_segments().min(RUN_SEGMENTS);
        let mut at = 0;
        let mut i = 0;
        while i < self.datagrams.len() {
            let (ep, seg) = self.datagrams[i];
            let mut end = at + seg;
            let mut j = i + 1;
            while j < self.datagrams.len() && j - i < max {
                let (e, len) = self.datagrams[j];
                if e != ep || len > seg || end + len > at + RUN_BYTES {
                    break;
                }
                end += len;
                j += 1;
                if len < seg {
                    break;
                }
            }
            if let Err(e) = socket.send_segments(&self.buf[at..end], seg, ep).await {
                tracing::debug!(%ep, error = %e, "send failed");
            }
            at = end;
            i = j;
        }
        self.used = 0;
        self.datagrams.clear();
    }
}

async fn outbound(
    shared: Arc<Shared>,
    tun: Arc<AsyncDevice>,
    socket: Arc<BatchUdpSocket>,
    offload: TunOffload,
    mtu: usize,
) -> Result<(), WgRunError> {
    let mut frame = vec![0u8; VNET_HDR_LEN + 65_535];
    // Segments of one super-packet, one per slot.
    let layout = SlotLayout {
        stride: mtu.max(1280) + 64,
        headroom: 0,
        tailroom: 0,
    };
    let mut segments = vec![0u8; burrow_offload::MAX_SEGMENTS * layout.stride];
    let mut lens = [0usize; burrow_offload::MAX_SEGMENTS];
    let mut out = Outgoing::new(TUN_BATCH * (layout.stride + WG_OVERHEAD) + 65_535);
    let mut pending = Vec::new();
    loop {
        let mut n = tun.recv(&mut frame).await?;
        let mut frames = 0;
        loop {
            // One frame: a packet (its partial checksum completed in place), or a
            // super-packet cut into segments.
            let (single, count) = if offload.tcp {
                match frame_segments(&mut frame[..n], &mut segments, layout, &mut lens) {
                    Ok(None) => (Some(VNET_HDR_LEN..n), 1),
                    Ok(Some(count)) => (None, count),
                    Err(e) => {
                        tracing::debug!(error = %e, "TUN frame dropped");
                        (None, 0)
                    }
                }
            } else {
                (Some(0..n), 1)
            };
            let read = &frame;
            let seg = |i: usize| -> &[u8] {
                match &single {
                    Some(range) => &read[range.clone()],
                    None => &segments[i * layout.stride..i * layout.stride + lens[i]],
                }
            };
            let need: usize = (0..count).map(|i| seg(i).len() + WG_OVERHEAD).sum();
            if !out.room_for(need) {
                out.flush(&socket).await;
            }
            if count > 0 {
                seal(&shared, &mut out, &mut pending, count, &seg);
            }
            frames += 1;
            if frames >= TUN_BATCH {
                break;
            }
            match tun.try_recv(&mut frame) {
                Ok(m) => n = m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        out.flush(&socket).await;
        send_all(&socket, &mut pending).await;
    }
}

/// Reads one offload frame: `None` for a single packet, which stays in `frame` with its
/// partial checksum completed (so any size the TUN's MTU allows passes); for a super-packet,
/// the number of segments it was cut into (in `segments`, lengths in `lens`).
pub(crate) fn frame_segments(
    frame: &mut [u8],
    segments: &mut [u8],
    layout: SlotLayout,
    lens: &mut [usize],
) -> Result<Option<usize>, burrow_offload::OffloadError> {
    let hdr = VirtioNetHdr::parse(frame)?;
    let packet = &mut frame[VNET_HDR_LEN..];
    if hdr.gso()? == burrow_offload::GsoType::None {
        burrow_offload::complete_checksum(&hdr, packet)?;
        return Ok(None);
    }
    burrow_offload::split(&hdr, packet, segments, layout, lens).map(Some)
}

/// Seals the `count` packets `seg(i)` (one frame's, all to one destination) into `out`: with
/// a usable keypair, counters for all of them are taken under the device's lock and the
/// sealing happens outside it, split over two cores for a large frame; without one, each
/// packet goes through `encapsulate` (queued for the handshake it starts).
fn seal<'a>(
    shared: &Shared,
    out: &mut Outgoing,
    pending: &mut Vec<(SocketAddr, Vec<u8>)>,
    count: usize,
    seg: &(dyn Fn(usize) -> &'a [u8] + Sync),
) {
    let Some((_, dst)) = addresses(seg(0)) else {
        return;
    };
    let Some(&peer) = route(&shared.routes, dst) else {
        return;
    };
    let ep = shared.endpoints.lock().expect("endpoints")[peer.0];
    let t = now();
    let run = {
        let mut device = shared.device.lock().expect("device");
        let run = device.reserve(t, peer, count);
        if run.is_none() {
            for i in 0..count {
                match device.encapsulate(t, peer, seg(i), &mut out.buf[out.used..]) {
                    Ok(Encapsulated::Sent(len)) => {
                        if let Some(ep) = ep {
                            out.used += len;
                            out.datagrams.push((ep, len));
                        }
                    }
                    Ok(Encapsulated::Queued) => {}
                    Err(e) => tracing::debug!(error = %e, "packet not sent"),
                }
            }
        }
        shared.drain(&mut device, pending);
        run
    };
    let (Some(mut run), Some(ep)) = (run, ep) else {
        return;
    };
    // Each sealed packet's place in `out`, in order: the run leaves in counter order.
    let lens: Vec<usize> = (0..count)
        .map(|i| burrow_wg::transport_len(seg(i).len()))
        .collect();
    let total: usize = lens.iter().sum();
    let Some(buf) = out.buf.get_mut(out.used..out.used + total) else {
        // `room_for` made space for any frame; were it short, the frame is lost, not the task.
        tracing::debug!(total, "no room for a frame's datagrams");
        return;
    };
    let seal_part =
        |run: &mut burrow_wg::SealRun, first: usize, lens: &[usize], mut buf: &mut [u8]| {
            for (k, &len) in lens.iter().enumerate() {
                let (this, rest) = std::mem::take(&mut buf).split_at_mut(len);
                if let Err(e) = run.seal(t, seg(first + k), this) {
                    // Cannot happen with the lengths above and a run just taken; the receiver
                    // drops what is left in the slot.
                    tracing::debug!(error = %e, "packet not sealed");
                }
                buf = rest;
            }
        };
    if count >= shared.parallel_from {
        let half = count / 2;
        let at: usize = lens[..half].iter().sum();
        let (a, b) = buf.split_at_mut(at);
        let (la, lb) = lens.split_at(half);
        let mut rest = run.split_off(half);
        // The second half on a pool thread while this one seals the first.
        rayon::in_place_scope(|scope| {
            scope.spawn(|_| seal_part(&mut rest, half, lb, b));
            seal_part(&mut run, 0, la, a);
        });
    } else {
        seal_part(&mut run, 0, &lens, buf);
    }
    out.used += total;
    out.datagrams.extend(lens.iter().map(|&len| (ep, len)));
}

async fn inbound(
    shared: Arc<Shared>,
    tun: Arc<AsyncDevice>,
    socket: Arc<BatchUdpSocket>,
    offload: TunOffload,
) -> Result<(), WgRunError> {
    let mut batch = RecvBatch::for_socket(&*socket, 65_535);
    // Outputs of `decapsulate` (cookie replies) back to back, and where each lies.
    let mut plain: Vec<u8> = Vec::new();
    let mut cookies: Vec<(SocketAddr, usize, usize)> = Vec::new();
    // Transport messages opened outside the lock: their plaintexts back to back.
    let mut jobs: Vec<OpenJob> = Vec::new();
    let mut opened: Vec<u8> = Vec::new();
    let mut delivered: Vec<(usize, usize)> = Vec::new();
    let mut gro = Coalescer::new(offload.udp, RECV_FRAMES);
    let mut pending = Vec::new();
    loop {
        socket.recv_batch(&mut batch).await?;
        let datagrams: Vec<(SocketAddr, &[u8])> = batch
            .datagrams()
            // IPv4 peers arrive as ::ffff:a.b.c.d on the dual-stack socket: keep them as IPv4.
            .map(|(src, d)| (burrow_punch::canonical_remote(src), d))
            .collect();
        let t = now();
        let mut used = 0;
        let mut room = 0;
        let mut next = 0;
        while next < datagrams.len() {
            {
                // Transport messages are matched to their keypairs (opened below); anything
                // else is handled here, once the transport messages before it were taken, so
                // the batch is handled in arrival order. The device counts handshakes and asks
                // for cookies past its rate by itself.
                let mut device = shared.device.lock().expect("device");
                while let Some(&(src, data)) = datagrams.get(next) {
                    if let Some((peer, opener)) = device.opener(t, data) {
                        jobs.push(OpenJob {
                            datagram: next,
                            peer,
                            opener: Some(opener),
                            at: room,
                            opened: Err(burrow_wg::WgError::DecryptFailed),
                        });
                        room += data.len();
                        next += 1;
                        continue;
                    }
                    if !jobs.is_empty() {
                        break;
                    }
                    next += 1;
                    if plain.len() < used + data.len() + 64 {
                        plain.resize(used + data.len() + 64, 0);
                    }
                    match device.decapsulate(t, src, data, &mut plain[used..]) {
                        Ok(Received::Peer(peer, result)) => {
                            // What `opener` refused cannot carry data here.
                            debug_assert!(!matches!(result, Decapsulated::Data(_)));
                            // Roam on authenticated packets only: a cookie reply is forgeable
                            // by anyone who saw our mac1.
                            if result != Decapsulated::CookieReply {
                                shared.endpoints.lock().expect("endpoints")[peer.0] = Some(src);
                            }
                        }
                        Ok(Received::CookieReply(len)) => {
                            cookies.push((src, used, len));
                            used += len;
                        }
                        Err(e) => tracing::debug!(%src, error = %e, "datagram refused"),
                    }
                }
                shared.drain(&mut device, &mut pending);
            }
            if jobs.is_empty() {
                continue;
            }
            let base = jobs[0].at;
            if opened.len() < room {
                opened.resize(room, 0);
            }
            open_all(
                &datagrams,
                &mut jobs,
                &mut opened[base..room],
                shared.parallel_from,
            );
            // Taken in arrival order: replay window, timers, roaming, crypto-key routing.
            let mut device = shared.device.lock().expect("device");
            for job in jobs.drain(..) {
                let src = datagrams[job.datagram].0;
                let r = job.opened.and_then(|o| {
                    let at = job.at;
                    device.accept_opened(t, job.peer, o, &opened[at..])
                });
                match r {
                    Ok(Received::Peer(peer, result)) => {
                        shared.endpoints.lock().expect("endpoints")[peer.0] = Some(src);
                        if let Decapsulated::Data(len) = result {
                            // The inner source must be one of the peer's AllowedIPs.
                            match addresses(&opened[job.at..job.at + len]) {
                                Some((inner, _)) if route(&shared.routes, inner) == Some(&peer) => {
                                    delivered.push((job.at, len));
                                }
                                _ => tracing::debug!(
                                    %src,
                                    "dropped a packet whose inner source the peer may not use"
                                ),
                            }
                        }
                    }
                    Ok(Received::CookieReply(_)) => {}
                    Err(e) => tracing::debug!(%src, error = %e, "datagram refused"),
                }
            }
            shared.drain(&mut device, &mut pending);
        }
        drop(datagrams);
        for (at, len) in delivered.drain(..) {
            let packet = &opened[at..at + len];
            if offload.tcp {
                if gro.push(packet).is_err() {
                    write_frames(&tun, &mut gro).await;
                    let _ = gro.push(packet);
                }
            } else if let Err(e) = tun.send(packet).await {
                // One packet the kernel refuses (or a device going down) costs only itself.
                tracing::debug!(error = %e, "TUN write failed");
            }
        }
        write_frames(&tun, &mut gro).await;
        for (src, at, len) in cookies.drain(..) {
            let _ = socket.send_to(&plain[at..at + len], src).await;
        }
        send_all(&socket, &mut pending).await;
    }
}

/// A transport message matched under the lock, opened outside it.
struct OpenJob {
    /// Its index in the batch.
    datagram: usize,
    peer: PeerId,
    /// Spent by opening.
    opener: Option<burrow_wg::Opener>,
    /// Where its plaintext goes (room for the whole datagram).
    at: usize,
    /// The proof it authenticated, or why it did not.
    opened: Result<burrow_wg::Opened, burrow_wg::WgError>,
}

/// Opens every job's datagram into its place in `out` (which starts at the first job's),
/// half of them on a pool thread when there are `parallel_from` or more.
fn open_all(
    datagrams: &[(SocketAddr, &[u8])],
    jobs: &mut [OpenJob],
    out: &mut [u8],
    parallel_from: usize,
) {
    let open_part = |jobs: &mut [OpenJob], out: &mut [u8]| {
        let base = jobs.first().map_or(0, |j| j.at);
        for job in jobs.iter_mut() {
            let data = datagrams[job.datagram].1;
            let at = job.at - base;
            if let Some(opener) = job.opener.take() {
                job.opened = opener.open(data, &mut out[at..at + data.len()]);
            }
        }
    };
    if jobs.len() >= parallel_from.max(2) {
        let half = jobs.len() / 2;
        let split = jobs[half].at - jobs[0].at;
        let (ja, jb) = jobs.split_at_mut(half);
        let (oa, ob) = out.split_at_mut(split);
        rayon::in_place_scope(|scope| {
            scope.spawn(|_| open_part(jb, ob));
            open_part(ja, oa);
        });
    } else {
        open_part(jobs, out);
    }
}

/// Frames one coalescer holds at most before they are written (a batch with more flows, or
/// coalesced runs, writes in several goes).
const RECV_FRAMES: usize = crate::transport::RECV_SLOTS;

/// Writes the coalesced frames to the TUN, then forgets them.
pub(crate) async fn write_frames(tun: &AsyncDevice, gro: &mut Coalescer) {
    for frame in gro.frames() {
        if let Err(e) = tun.send(frame).await {
            // A frame the kernel refuses (or a device going down) costs only itself.
            tracing::debug!(error = %e, "TUN write failed");
        }
    }
    gro.clear();
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

#[cfg(test)]
mod tests {
    use super::gso_max_segs;

    #[test]
    fn the_segment_cap_is_read_from_ip_link_details() {
        let details = "7: bw0: <POINTOPOINT,MULTICAST,NOARP> mtu 1420 qdisc noop state DOWN\n    \
            link/none  promiscuity 0 minmtu 68 maxmtu 65535\n    tun type tun pi off vnet_hdr on \
            multi_queue off numtxqueues 1 gso_max_size 65536 gso_max_segs 64 tso_max_size 65536";
        assert_eq!(gso_max_segs(details), Some(64));
        assert_eq!(
            gso_max_segs("gso_max_size 65536 gso_max_segs 65535"),
            Some(65_535)
        );
        // An `ip` too old to print it, or output cut short: no cap known.
        assert_eq!(gso_max_segs("link/none promiscuity 0"), None);
        assert_eq!(gso_max_segs("gso_max_segs"), None);
    }
}
