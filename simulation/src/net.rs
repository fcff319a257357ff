//! The simulated network on top of turmoil: links with latency, jitter, loss and duplication;
//! sockets that reach the Internet directly or through a gateway box; and the boxes (NATs,
//! and "alias" boxes that give a host a second public address).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow::transport::UdpTransport;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::capture::Recorder;
use crate::nat::{NatConfig, NatTable};
use crate::wire::{self, Envelope, GATEWAY_PORT};

/// Largest datagram carried.
const MAX_DATAGRAM: usize = 65_535;

/// Impairments of one link (an entity's connection to its upstream).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// One-way latency in milliseconds.
    #[serde(default = "default_latency")]
    pub latency_ms: f64,
    /// Extra random delay, uniform in 0..jitter_ms (reorders packets).
    #[serde(default)]
    pub jitter_ms: f64,
    /// Probability a datagram is lost.
    #[serde(default)]
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    #[serde(default)]
    pub duplicate: f64,
}

fn default_latency() -> f64 {
    5.0
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            latency_ms: default_latency(),
            jitter_ms: 0.0,
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

impl LinkConfig {
    /// A clean link with this latency.
    pub fn with_latency(ms: f64) -> Self {
        LinkConfig {
            latency_ms: ms,
            ..Default::default()
        }
    }
}

/// A link in use: its impairments and its own random source.
#[derive(Debug)]
pub struct Link {
    name: String,
    config: LinkConfig,
    rng: Mutex<ChaCha20Rng>,
    recorder: Arc<Recorder>,
}

/// Derives a component's seed from the simulation seed and the component's name.
pub use burrow_des::derive_seed;

fn unit(rng: &mut ChaCha20Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

impl Link {
    /// A link named `name`, seeded from the simulation seed.
    pub fn new(name: &str, config: LinkConfig, seed: u64, recorder: Arc<Recorder>) -> Arc<Self> {
        Arc::new(Link {
            name: name.to_owned(),
            config,
            rng: Mutex::new(ChaCha20Rng::seed_from_u64(derive_seed(seed, name))),
            recorder,
        })
    }

    /// Sends `bytes` to `dst` over turmoil after this link's latency, losing or duplicating
    /// it as configured. Never blocks the caller.
    fn transmit(
        self: &Arc<Self>,
        sock: &Arc<turmoil::net::UdpSocket>,
        dst: SocketAddr,
        bytes: Vec<u8>,
    ) {
        let delays: Vec<Duration> = {
            let mut rng = self.rng.lock().expect("link rng");
            if unit(&mut rng) < self.config.loss {
                drop(rng);
                self.recorder.event(format_args!(
                    "{} lost {} bytes to {dst}",
                    self.name,
                    bytes.len()
                ));
                return;
            }
            let copies = if unit(&mut rng) < self.config.duplicate {
                2
            } else {
                1
            };
            (0..copies)
                .map(|_| {
                    let ms = self.config.latency_ms.max(0.0)
                        + self.config.jitter_ms.max(0.0) * unit(&mut rng);
                    Duration::from_micros((ms * 1000.0) as u64)
                })
                .collect()
        };
        for delay in delays {
            let sock = sock.clone();
            let bytes = bytes.clone();
            tokio::spawn(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let _ = sock.send_to(&bytes, dst).await;
            });
        }
    }
}

/// How a socket reaches the Internet.
#[derive(Debug, Clone)]
pub enum Uplink {
    /// Directly: the host has a public address. Packets are captured on `capture`, and
    /// pass an optional stateful firewall in front of the host.
    Direct {
        /// The host's link.
        link: Arc<Link>,
        /// Capture name for this host's traffic.
        capture: String,
        /// A stateful firewall without translation, shared by the host's sockets.
        firewall: Option<Arc<Mutex<NatTable>>>,
    },
    /// Through a box listening on `gateway` (its inside address).
    Gateway {
        /// The box's inside address.
        gateway: SocketAddr,
        /// The link to the box.
        link: Arc<Link>,
    },
}

/// A UDP socket in the simulated network; implements burrow's [`UdpTransport`], so the real
/// drivers run on it.
#[derive(Debug)]
pub struct SimSocket {
    sock: Arc<turmoil::net::UdpSocket>,
    local: SocketAddr,
    uplink: Uplink,
    recorder: Arc<Recorder>,
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}

fn sim_now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl SimSocket {
    /// Binds `addr` (this host's IP, port 0 for any) reaching the Internet through `uplink`.
    pub async fn bind(
        addr: SocketAddr,
        uplink: Uplink,
        recorder: Arc<Recorder>,
    ) -> io::Result<Self> {
        // turmoil binds only the unspecified address; the host's address is what we claim.
        let any = SocketAddr::new(unspecified(addr.ip()), addr.port());
        let sock = turmoil::net::UdpSocket::bind(any).await?;
        let local = SocketAddr::new(addr.ip(), sock.local_addr()?.port());
        Ok(SimSocket {
            sock: Arc::new(sock),
            local,
            uplink,
            recorder,
        })
    }

    /// A socket that appears on `public` (an address of an alias box at `gateway`), for a
    /// host with a second public IP (an RFC 5780 STUN server).
    pub async fn bind_alias(
        host_ip: IpAddr,
        public: SocketAddr,
        gateway: SocketAddr,
        link: Arc<Link>,
        recorder: Arc<Recorder>,
    ) -> io::Result<Self> {
        let sock = turmoil::net::UdpSocket::bind(SocketAddr::new(unspecified(host_ip), 0)).await?;
        // Control traffic is not impaired: the box must learn the binding.
        sock.send_to(&wire::bind(public.port()), gateway).await?;
        Ok(SimSocket {
            sock: Arc::new(sock),
            local: public,
            uplink: Uplink::Gateway { gateway, link },
            recorder,
        })
    }
}

impl UdpTransport for SimSocket {
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        match &self.uplink {
            Uplink::Gateway { gateway, link } => {
                link.transmit(&self.sock, *gateway, wire::data(target, buf));
            }
            Uplink::Direct {
                link,
                capture,
                firewall,
            } => {
                if let Some(fw) = firewall {
                    if let Err(drop) =
                        fw.lock()
                            .expect("firewall")
                            .outbound(sim_now(), self.local, target)
                    {
                        self.recorder.event(format_args!(
                            "{capture} firewall drop {drop:?} {} > {target}",
                            self.local
                        ));
                        return Ok(buf.len());
                    }
                }
                self.recorder.packet(capture, self.local, target, buf);
                link.transmit(&self.sock, target, buf.to_vec());
            }
        }
        Ok(buf.len())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut tmp = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, src) = self.sock.recv_from(&mut tmp).await?;
            match &self.uplink {
                Uplink::Gateway { gateway, .. } => {
                    if src != *gateway {
                        continue; // only the gateway can reach a host behind it
                    }
                    if let Some(Envelope::Data(peer, payload)) = wire::open(&tmp[..n]) {
                        let len = payload.len().min(buf.len());
                        buf[..len].copy_from_slice(&payload[..len]);
                        return Ok((len, peer));
                    }
                }
                Uplink::Direct {
                    capture, firewall, ..
                } => {
                    self.recorder.packet(capture, src, self.local, &tmp[..n]);
                    if let Some(fw) = firewall {
                        if let Err(drop) =
                            fw.lock()
                                .expect("firewall")
                                .inbound(sim_now(), self.local.port(), src)
                        {
                            self.recorder.event(format_args!(
                                "{capture} firewall drop {drop:?} {src} > {}",
                                self.local
                            ));
                            continue;
                        }
                    }
                    let len = n.min(buf.len());
                    buf[..len].copy_from_slice(&tmp[..len]);
                    return Ok((len, src));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// What kind of box.
#[derive(Debug, Clone)]
pub enum BoxKind {
    /// A NAT (or, with `translate = false`, a firewall) for the hosts behind it.
    Nat(NatConfig),
    /// Gives the host behind it extra public ports on this box's IP, as it asks (Bind).
    Alias,
}

/// One box, ready to run as a turmoil host.
#[derive(Debug, Clone)]
pub struct BoxSpec {
    /// Name (captures are `NAME-inside` and `NAME-outside`).
    pub name: String,
    /// The box's own (outside) IP.
    pub ip: IpAddr,
    /// NAT or alias.
    pub kind: BoxKind,
    /// The box's own upstream: the Internet, or a parent box.
    pub uplink: BoxUplink,
    /// Seed for the NAT's port choices.
    pub seed: u64,
    /// The links of the hosts behind the box, by inside address: the box sends inwards over
    /// them, so a host's link impairs both directions.
    pub inside_links: Vec<(IpAddr, LinkConfig)>,
}

/// A box's connection to its upstream.
#[derive(Debug, Clone)]
pub enum BoxUplink {
    /// On the Internet.
    Internet(LinkConfig),
    /// Behind another box, at its inside address.
    Behind(SocketAddr, LinkConfig),
}

/// Runs a box forever: takes wrapped datagrams from inside hosts, translates and filters them,
/// and relays answers back in.
pub async fn run_box(spec: BoxSpec, recorder: Arc<Recorder>, sim_seed: u64) -> turmoil::Result {
    let inside = Arc::new(
        turmoil::net::UdpSocket::bind(SocketAddr::new(unspecified(spec.ip), GATEWAY_PORT)).await?,
    );
    let (config, alias) = match &spec.kind {
        BoxKind::Nat(c) => (c.clone(), false),
        BoxKind::Alias => (
            crate::preset::single("full-cone").expect("preset exists"),
            true,
        ),
    };
    let mut table = NatTable::new(config, ChaCha20Rng::seed_from_u64(spec.seed));
    let inside_name = format!("{}-inside", spec.name);
    let outside_name = format!("{}-outside", spec.name);
    let uplink = match &spec.uplink {
        BoxUplink::Internet(l) => Uplink::Direct {
            link: Link::new(&outside_name, *l, sim_seed, recorder.clone()),
            capture: outside_name.clone(),
            firewall: None,
        },
        BoxUplink::Behind(gw, l) => Uplink::Gateway {
            gateway: *gw,
            link: Link::new(&outside_name, *l, sim_seed, recorder.clone()),
        },
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<(u16, SocketAddr, Vec<u8>)>();
    let mut outer: BTreeMap<u16, (Arc<SimSocket>, tokio::task::JoinHandle<()>)> = BTreeMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let down: BTreeMap<IpAddr, Arc<Link>> = spec
        .inside_links
        .iter()
        .map(|(ip, l)| {
            (
                *ip,
                Link::new(
                    &format!("{}-down-{ip}", spec.name),
                    *l,
                    sim_seed,
                    recorder.clone(),
                ),
            )
        })
        .collect();
    let send_in = |target: SocketAddr, bytes: Vec<u8>| match down.get(&target.ip()) {
        Some(link) => link.transmit(&inside, target, bytes),
        None => {
            let sock = inside.clone();
            tokio::spawn(async move {
                let _ = sock.send_to(&bytes, target).await;
            });
        }
    };

    async fn open_port(
        port: u16,
        spec: &BoxSpec,
        uplink: &Uplink,
        recorder: &Arc<Recorder>,
        tx: &mpsc::UnboundedSender<(u16, SocketAddr, Vec<u8>)>,
    ) -> io::Result<(Arc<SimSocket>, tokio::task::JoinHandle<()>)> {
        let s = Arc::new(
            SimSocket::bind(
                SocketAddr::new(spec.ip, port),
                uplink.clone(),
                recorder.clone(),
            )
            .await?,
        );
        let (s2, tx) = (s.clone(), tx.clone());
        let task = tokio::spawn(async move {
            let mut b = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, src)) = s2.recv_from(&mut b).await {
                if tx.send((port, src, b[..n].to_vec())).is_err() {
                    break;
                }
            }
        });
        Ok((s, task))
    }

    loop {
        tokio::select! {
            biased;
            r = inside.recv_from(&mut buf) => {
                let (n, internal) = r?;
                match wire::open(&buf[..n]) {
                    Some(Envelope::Bind(port)) if alias => {
                        if table.add_static(internal, port) {
                            if let Entry::Vacant(slot) = outer.entry(port) {
                                slot.insert(open_port(port, &spec, &uplink, &recorder, &tx).await?);
                            }
                        }
                    }
                    Some(Envelope::Data(dst, payload)) => {
                        recorder.packet(&inside_name, internal, dst, payload);
                        let now = sim_now();
                        if dst.ip() == spec.ip {
                            // Hairpin: to our own public address.
                            let hairpin = table.config().hairpin;
                            let translated = table.outbound(now, internal, dst).ok();
                            match (hairpin, translated) {
                                (true, Some(p)) => {
                                    let from = SocketAddr::new(spec.ip, p);
                                    match table.inbound(now, dst.port(), from) {
                                        Ok(target) => {
                                            recorder.packet(&inside_name, from, target, payload);
                                            send_in(target, wire::data(from, payload));
                                        }
                                        Err(drop) => recorder.event(format_args!("{} drop {drop:?} hairpin {from} > {dst}", spec.name)),
                                    }
                                }
                                _ => recorder.event(format_args!("{} drop no-hairpin {internal} > {dst}", spec.name)),
                            }
                        } else {
                            match table.outbound(now, internal, dst) {
                                Ok(port) => {
                                    if let Entry::Vacant(slot) = outer.entry(port) {
                                        slot.insert(open_port(port, &spec, &uplink, &recorder, &tx).await?);
                                    }
                                    let (sock, _) = &outer[&port];
                                    sock.send_to(payload, dst).await?;
                                }
                                Err(drop) => recorder.event(format_args!("{} drop {drop:?} {internal} > {dst}", spec.name)),
                            }
                        }
                    }
                    _ => recorder.event(format_args!("{} drop malformed from {internal}", spec.name)),
                }
            }
            Some((port, src, payload)) = rx.recv() => {
                match table.inbound(sim_now(), port, src) {
                    Ok(internal) => {
                        recorder.packet(&inside_name, src, internal, &payload);
                        send_in(internal, wire::data(src, &payload));
                    }
                    Err(drop) => recorder.event(format_args!("{} drop {drop:?} {src} > {}:{port}", spec.name, spec.ip)),
                }
            }
        }
        for port in table.take_closed() {
            if let Some((_, task)) = outer.remove(&port) {
                task.abort();
            }
        }
        recorder.box_stats(&spec.name, table.stats());
    }
}
