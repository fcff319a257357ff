//! Drives [`burrow_portmap::PortMapper`] with a real UDP socket and TCP connections to the
//! default gateway: `burrow up` keeps a mapping for the node's port, `burrow netcheck`
//! probes once and deletes what it made.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use burrow_portmap::upnp::http::MAX_RESPONSE;
use burrow_portmap::{
    Event, HttpRequestId, Input, Mapping, PinholeConfig, PinholeEvent, PortMapper,
    PortMapperConfig, Report, Transmit,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// The IPv4 default gateway, from the kernel's routing table (`/proc/net/route`).
pub fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_default_gateway(&table)
}

/// The default route's gateway in a `/proc/net/route` table (little-endian hex fields).
pub fn parse_default_gateway(table: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, gw, flags) = (f.get(1)?, f.get(2)?, f.get(3)?);
        let flags = u32::from_str_radix(flags, 16).ok()?;
        // RTF_UP | RTF_GATEWAY, destination 0.0.0.0.
        if *dest != "00000000" || flags & 0x3 != 0x3 {
            return None;
        }
        let gw = u32::from_str_radix(gw, 16).ok()?;
        Some(Ipv4Addr::from(gw.swap_bytes()))
    })
}

/// The IPv6 default route's next hop and its interface, from `/proc/net/ipv6_route`.
pub fn default_gateway_v6() -> Option<(Ipv6Addr, String)> {
    let table = std::fs::read_to_string("/proc/net/ipv6_route").ok()?;
    parse_default_gateway_v6(&table)
}

/// The default route (`::/0`, up, via a gateway) with the lowest metric in a
/// `/proc/net/ipv6_route` table: its next hop and interface name.
pub fn parse_default_gateway_v6(table: &str) -> Option<(Ipv6Addr, String)> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, plen, hop, metric, flags, dev) = (
                f.first()?,
                f.get(1)?,
                f.get(4)?,
                f.get(5)?,
                f.get(8)?,
                f.get(9)?,
            );
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let hop = Ipv6Addr::from(u128::from_str_radix(hop, 16).ok()?);
            // RTF_UP | RTF_GATEWAY, destination ::/0.
            let default = u128::from_str_radix(dest, 16).ok()? == 0 && *plen == "00";
            if !default || flags & 0x3 != 0x3 || hop.is_unspecified() {
                return None;
            }
            let metric = u32::from_str_radix(metric, 16).ok()?;
            Some((metric, hop, dev.to_string()))
        })
        .min_by_key(|(metric, _, _)| *metric)
        .map(|(_, hop, dev)| (hop, dev))
}

/// Where to ask for an IPv6 pinhole: the IPv6 default gateway (a link-local one through its
/// interface's index) and our first global IPv6 address among `local_addrs`; `None` without
/// either.
pub fn pinhole_for(local_addrs: &[SocketAddr]) -> Option<PinholeConfig> {
    let local_ip = local_addrs.iter().find_map(|a| match a.ip() {
        IpAddr::V6(v6) if v6.segments()[0] & 0xe000 == 0x2000 => Some(v6),
        _ => None,
    })?;
    let Some((gateway, dev)) = default_gateway_v6() else {
        tracing::debug!(target: "burrow::portmap", "no IPv6 default route: no pinhole");
        return None;
    };
    let link_local = gateway.segments()[0] & 0xffc0 == 0xfe80;
    let scope_id = if link_local {
        let index = std::fs::read_to_string(format!("/sys/class/net/{dev}/ifindex")).ok();
        match index.and_then(|i| i.trim().parse().ok()) {
            Some(i) => i,
            None => {
                tracing::debug!(target: "burrow::portmap", "no index for {dev}: no pinhole");
                return None;
            }
        }
    } else {
        0
    };
    Some(PinholeConfig {
        gateway,
        local_ip,
        scope_id,
    })
}

/// Our address on the way to `gateway` (a connected UDP socket sends nothing).
pub fn local_ip_toward(gateway: Ipv4Addr) -> Option<Ipv4Addr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect((gateway, burrow_portmap::pmp::SERVER_PORT))
        .ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
        _ => None,
    }
}

/// A config for mapping `local_port`, with the default gateway and our address toward it;
/// `None` without an IPv4 default route.
pub fn config_for(local_port: u16, seed: u64) -> Option<PortMapperConfig> {
    let gateway = default_gateway()?;
    let local_ip = local_ip_toward(gateway)?;
    Some(PortMapperConfig::new(gateway, local_ip, local_port, seed))
}

enum Command {
    Recheck,
    SetPinhole(Option<PinholeConfig>),
    Shutdown(oneshot::Sender<()>),
}

/// A running port mapper.
pub struct PortMapHandle {
    /// The live mapping.
    pub mapping: watch::Receiver<Option<Mapping>>,
    /// The latest report.
    pub report: watch::Receiver<Option<Report>>,
    /// The live IPv6 pinhole.
    pub pinhole: watch::Receiver<Option<SocketAddr>>,
    commands: mpsc::Sender<Command>,
}

impl PortMapHandle {
    /// Looks again (the network changed, or a direct path died).
    pub fn recheck(&self) {
        let _ = self.commands.try_send(Command::Recheck);
    }

    /// Our global IPv6 address or the IPv6 gateway changed: the pinhole moves.
    pub async fn set_pinhole(&self, pinhole: Option<PinholeConfig>) {
        let _ = self.commands.send(Command::SetPinhole(pinhole)).await;
    }

    /// Something that moves the pinhole without keeping the mapper alive (when every handle
    /// is gone, the mapper deletes its mappings and stops).
    pub fn pinhole_follower(&self) -> PinholeFollower {
        PinholeFollower(self.commands.downgrade())
    }

    /// Deletes the mapping and stops; waits at most `within`.
    pub async fn shutdown(self, within: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(within, rx).await;
        }
    }
}

/// Moves a running mapper's IPv6 pinhole: see [`PortMapHandle::pinhole_follower`].
pub struct PinholeFollower(mpsc::WeakSender<Command>);

impl PinholeFollower {
    /// Our global IPv6 address or the IPv6 gateway changed; false when the mapper is gone.
    pub async fn set_pinhole(&self, pinhole: Option<PinholeConfig>) -> bool {
        match self.0.upgrade() {
            Some(c) => c.send(Command::SetPinhole(pinhole)).await.is_ok(),
            None => false,
        }
    }
}

/// Starts a port mapper for `config` in the background.
pub async fn spawn(config: PortMapperConfig) -> std::io::Result<PortMapHandle> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    let mut socket6 = V6Socket::default();
    socket6.rebind(config.pinhole).await;
    let (mapping_tx, mapping) = watch::channel(None);
    let (pinhole_tx, pinhole) = watch::channel(None);
    let (report_tx, report) = watch::channel(None);
    let (commands, rx) = mpsc::channel(8);
    let announcements = announcement_socket(config.local_ip);
    let mut mapper = PortMapper::new(config);
    mapper.start(Instant::now().into_std());
    tokio::spawn(async move {
        let mut on_event = |e: Event| match e {
            Event::Report(r) => {
                tracing::info!(target: "burrow::portmap", "{}", summary(&r));
                report_tx.send_replace(Some(r));
            }
            Event::Mapped(m) => {
                tracing::info!(
                    target: "burrow::portmap",
                    "mapped with {}: {} (lease {:?})",
                    m.protocol.name(),
                    m.external,
                    m.lease
                );
                mapping_tx.send_replace(Some(m));
            }
            Event::Lost { protocol, reason } => {
                tracing::warn!(target: "burrow::portmap", "{} mapping lost: {reason}", protocol.name());
                mapping_tx.send_replace(None);
            }
            Event::GatewayRestarted(p) => {
                tracing::info!(target: "burrow::portmap", "the gateway restarted ({}): mapping again", p.name());
            }
            Event::Closed => {
                mapping_tx.send_replace(None);
            }
        };
        let mut on_pinhole = |e: PinholeEvent| {
            let (pinhole, error) = match e {
                PinholeEvent::Opened(a) => {
                    tracing::info!(target: "burrow::portmap", "IPv6 pinhole open: {a}");
                    (Some(a), None)
                }
                PinholeEvent::Lost { reason } => {
                    tracing::info!(target: "burrow::portmap", "IPv6 pinhole gone: {reason}");
                    (None, Some((None, reason)))
                }
                PinholeEvent::Refused { code, reason } => {
                    tracing::info!(target: "burrow::portmap", ?code, "no IPv6 pinhole: {reason}");
                    (None, Some((code, reason)))
                }
            };
            pinhole_tx.send_replace(pinhole);
            // The latest report (`burrow doctor`'s line) says so too.
            report_tx.send_modify(|r| {
                if let Some(r) = r.as_mut() {
                    r.pinhole = pinhole;
                    (r.pinhole_error_code, r.pinhole_error) = match error {
                        Some((code, reason)) => (code, Some(reason)),
                        None => (None, None),
                    };
                }
            });
        };
        drive(
            &mut mapper,
            &socket,
            &mut socket6,
            announcements.as_ref(),
            rx,
            &mut on_event,
            &mut on_pinhole,
        )
        .await;
    });
    Ok(PortMapHandle {
        mapping,
        report,
        pinhole,
        commands,
    })
}

/// One probe round: maps if the gateway lets it, reports, deletes the mapping again.
///
/// With [`PortMapperConfig::pinhole`] set it also waits for the IPv6 pinhole's outcome.
pub async fn probe(config: PortMapperConfig, within: Duration) -> std::io::Result<Report> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    let mut socket6 = V6Socket::default();
    socket6.rebind(config.pinhole).await;
    let wants_pinhole = config.pinhole.is_some() && config.pcp && socket6.socket.is_some();
    let mut mapper = PortMapper::new(config);
    mapper.start(Instant::now().into_std());
    let (commands, rx) = mpsc::channel(1);
    let deadline = Instant::now() + within;
    // Both outcomes, IPv4's report and the pinhole's, before deleting what the probe made.
    let outcome = std::cell::RefCell::new(ProbeOutcome {
        pinhole_settled: !wants_pinhole,
        ..ProbeOutcome::default()
    });
    let shutdown = std::cell::RefCell::new(Some(commands));
    let settle = |o: &ProbeOutcome| {
        if o.report.is_some() && o.pinhole_settled {
            if let Some(c) = shutdown.borrow_mut().take() {
                let (tx, _) = oneshot::channel();
                let _ = c.try_send(Command::Shutdown(tx));
            }
        }
    };
    let mut on_event = |e: Event| {
        if let Event::Report(r) = e {
            let mut o = outcome.borrow_mut();
            o.report.get_or_insert(r);
            settle(&o);
        }
    };
    let mut on_pinhole = |e: PinholeEvent| {
        let mut o = outcome.borrow_mut();
        match e {
            PinholeEvent::Opened(a) if !o.pinhole_settled => o.pinhole = Some(a),
            PinholeEvent::Refused { code, reason } if !o.pinhole_settled => {
                o.pinhole_error = Some((code, reason));
            }
            _ => return,
        }
        o.pinhole_settled = true;
        settle(&o);
    };
    let _ = tokio::time::timeout_at(
        deadline,
        drive(
            &mut mapper,
            &socket,
            &mut socket6,
            None,
            rx,
            &mut on_event,
            &mut on_pinhole,
        ),
    )
    .await;
    let o = outcome.into_inner();
    let mut report = o.report.unwrap_or_else(|| mapper.report());
    report.pinhole = o.pinhole;
    if let Some((code, reason)) = o.pinhole_error {
        report.pinhole_error_code = code;
        report.pinhole_error = Some(reason);
    } else if wants_pinhole && !o.pinhole_settled {
        report.pinhole_error = Some("no answer over IPv6".into());
    }
    Ok(report)
}

#[derive(Default)]
struct ProbeOutcome {
    report: Option<Report>,
    pinhole: Option<SocketAddr>,
    pinhole_error: Option<(Option<u16>, String)>,
    pinhole_settled: bool,
}

/// The socket the pinhole's PCP goes over: bound to our global IPv6 address, which PCP's
/// client address must match (the server checks it: ADDRESS_MISMATCH).
#[derive(Default)]
struct V6Socket {
    socket: Option<UdpSocket>,
}

impl V6Socket {
    async fn rebind(&mut self, pinhole: Option<PinholeConfig>) {
        self.socket = None;
        let Some(c) = pinhole else {
            return;
        };
        match UdpSocket::bind((c.local_ip, 0)).await {
            Ok(s) => self.socket = Some(s),
            Err(e) => {
                tracing::debug!(target: "burrow::portmap", "no IPv6 socket on {}: {e}", c.local_ip);
            }
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        match &self.socket {
            Some(s) => s.recv_from(buf).await,
            None => std::future::pending().await,
        }
    }
}

/// A socket on 0.0.0.0:5350 for the gateway's multicast announcements (224.0.0.1), which a
/// restarted NAT-PMP/PCP gateway sends: the mapper then checks its mapping at once. Shared
/// with other clients on the host (SO_REUSEADDR); none when the port cannot be had.
fn announcement_socket(local_ip: Ipv4Addr) -> Option<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let open = || -> std::io::Result<UdpSocket> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.bind(
            &SocketAddr::from((Ipv4Addr::UNSPECIFIED, burrow_portmap::pmp::CLIENT_PORT)).into(),
        )?;
        // Every host is in 224.0.0.1 already; joining on the LAN's interface costs nothing.
        let _ = s.join_multicast_v4(&Ipv4Addr::new(224, 0, 0, 1), &local_ip);
        s.set_nonblocking(true)?;
        UdpSocket::from_std(s.into())
    };
    match open() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(target: "burrow::portmap", "no socket for the gateway's announcements: {e}");
            None
        }
    }
}

async fn recv_announcement(
    socket: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// The machine's loop: datagrams (its own socket's and the gateway's announcements), HTTP
/// answers, commands and its deadline.
async fn drive(
    mapper: &mut PortMapper,
    socket: &UdpSocket,
    socket6: &mut V6Socket,
    announcements: Option<&UdpSocket>,
    mut commands: mpsc::Receiver<Command>,
    on_event: &mut impl FnMut(Event),
    on_pinhole: &mut impl FnMut(PinholeEvent),
) {
    let (http_tx, mut http_rx) = mpsc::channel::<(HttpRequestId, Option<Vec<u8>>)>(8);
    let http_timeout = mapper.config().http_timeout;
    let mut closing: Option<oneshot::Sender<()>> = None;
    let mut buf = vec![0u8; 2048];
    let mut buf6 = vec![0u8; 2048];
    let mut announcement = vec![0u8; 1100];
    let mut commands_open = true;
    loop {
        flush(mapper, socket, socket6, &http_tx, http_timeout).await;
        while let Some(e) = mapper.poll_event() {
            on_event(e);
        }
        while let Some(e) = mapper.poll_pinhole_event() {
            on_pinhole(e);
        }
        if mapper.is_closed() {
            if let Some(tx) = closing.take() {
                let _ = tx.send(());
            }
            return;
        }
        let deadline = mapper.poll_timeout().map(Instant::from_std);
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    let now = Instant::now().into_std();
                    if let Err(e) = mapper.handle_input(now, Input::Udp { from, data: &buf[..n] }) {
                        tracing::debug!(target: "burrow::portmap", "from {from}: {e}");
                    }
                }
            }
            r = socket6.recv_from(&mut buf6) => {
                if let Ok((n, from)) = r {
                    let now = Instant::now().into_std();
                    if let Err(e) = mapper.handle_input(now, Input::Udp { from, data: &buf6[..n] }) {
                        tracing::debug!(target: "burrow::portmap", "from {from}: {e}");
                    }
                }
            }

            r = recv_announcement(announcements, &mut announcement) => {
                if let Ok((n, from)) = r {
                    let now = Instant::now().into_std();
                    match mapper.handle_input(now, Input::Udp { from, data: &announcement[..n] }) {
                        Ok(()) => tracing::debug!(target: "burrow::portmap", "announcement from {from}"),
                        Err(e) => tracing::debug!(target: "burrow::portmap", "announcement from {from}: {e}"),
                    }
                }
            }
            Some((id, answer)) = http_rx.recv() => {
                let now = Instant::now().into_std();
                if let Err(e) = mapper.handle_input(now, Input::Http { id, response: answer.as_deref() }) {
                    tracing::debug!(target: "burrow::portmap", "HTTP: {e}");
                }
            }
            c = commands.recv(), if commands_open => {
                let now = Instant::now().into_std();
                match c {
                    Some(Command::Recheck) => mapper.start(now),
                    Some(Command::SetPinhole(p)) => {
                        // The old pinhole's deletion goes from the old address, before the
                        // socket moves to the new one.
                        mapper.set_pinhole(now, None);
                        flush(mapper, socket, socket6, &http_tx, http_timeout).await;
                        socket6.rebind(p).await;
                        mapper.set_pinhole(now, p.filter(|_| socket6.socket.is_some()));
                    }
                    Some(Command::Shutdown(tx)) => {
                        closing = Some(tx);
                        mapper.shutdown(now);
                    }
                    // Every handle is gone: delete the mapping and stop.
                    None => {
                        commands_open = false;
                        mapper.shutdown(now);
                    }
                }
            }
            _ = sleep_until(deadline) => mapper.handle_timeout(Instant::now().into_std()),
        }
    }
}

/// Sends what the machine has queued: IPv6 datagrams on the pinhole's socket, the rest on
/// the IPv4 one, HTTP exchanges on their own tasks.
async fn flush(
    mapper: &mut PortMapper,
    socket: &UdpSocket,
    socket6: &V6Socket,
    http_tx: &mpsc::Sender<(HttpRequestId, Option<Vec<u8>>)>,
    http_timeout: Duration,
) {
    while let Some(t) = mapper.poll_transmit() {
        match t {
            Transmit::Udp { dst, payload } => {
                let sent = match (dst, &socket6.socket) {
                    (SocketAddr::V6(_), Some(s6)) => s6.send_to(&payload, dst).await,
                    (SocketAddr::V6(_), None) => continue,
                    (SocketAddr::V4(_), _) => socket.send_to(&payload, dst).await,
                };
                if let Err(e) = sent {
                    tracing::debug!(target: "burrow::portmap", "send to {dst}: {e}");
                }
            }
            Transmit::Http { id, dst, request } => {
                let tx = http_tx.clone();
                tokio::spawn(async move {
                    let answer = tokio::time::timeout(http_timeout, exchange(dst, &request))
                        .await
                        .ok()
                        .flatten();
                    let _ = tx.send((id, answer)).await;
                });
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// One HTTP exchange: connect, write, read until the server closes (capped).
async fn exchange(dst: SocketAddr, request: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(dst).await.ok()?;
    s.write_all(request).await.ok()?;
    let mut out = Vec::new();
    let mut limited = (&mut s).take(MAX_RESPONSE as u64 + 1);
    limited.read_to_end(&mut out).await.ok()?;
    Some(out)
}

/// The netcheck report's form of a port-mapping report.
pub fn to_netcheck(r: &Report) -> burrow_netcheck::PortMapping {
    let answered =
        |p: burrow_portmap::Protocol| r.protocols.iter().any(|x| x.protocol == p && x.answered);
    let mut errors: std::collections::BTreeMap<String, String> = r
        .protocols
        .iter()
        .filter(|p| p.enabled && !p.mapped)
        .filter_map(|p| Some((p.protocol.name().to_string(), p.error.clone()?)))
        .collect();
    if let (None, Some(e)) = (r.pinhole, &r.pinhole_error) {
        errors.insert("pcp-ipv6".into(), e.clone());
    }
    burrow_netcheck::PortMapping {
        gateway: Some(r.gateway.into()),
        upnp: answered(burrow_portmap::Protocol::Upnp),
        pmp: answered(burrow_portmap::Protocol::Pmp),
        pcp: answered(burrow_portmap::Protocol::Pcp),
        mapped_with: r.mapping.map(|m| m.protocol.name().to_string()),
        external: r.mapping.map(|m| m.external),
        lease_secs: r.mapping.and_then(|m| m.lease).map(|l| l.as_secs()),
        private_external: r.mapping.is_some_and(|m| m.private_external)
            || r.protocols.iter().any(|p| p.private_external),
        pinhole_v6: r.pinhole,
        errors,
    }
}

/// One line per report: who answered, what was mapped.
pub fn summary(r: &Report) -> String {
    let parts: Vec<String> = r
        .protocols
        .iter()
        .map(|p| {
            let state = if !p.enabled {
                "off".to_string()
            } else if p.mapped {
                "mapped".to_string()
            } else if p.answered {
                match &p.error {
                    Some(e) => format!("answered, {e}"),
                    None => "answered".to_string(),
                }
            } else {
                "no answer".to_string()
            };
            format!("{} {state}", p.protocol.name())
        })
        .collect();
    let pinhole = match (r.pinhole, &r.pinhole_error) {
        (Some(p), _) => format!("; IPv6 pinhole {p}"),
        (None, Some(e)) => format!("; no IPv6 pinhole ({e})"),
        (None, None) => String::new(),
    };
    let mapping = match r.mapping {
        Some(m) => format!(
            "; mapping {} via {}{}",
            m.external,
            m.protocol.name(),
            if m.private_external {
                " (the external address is private: a double NAT)"
            } else {
                ""
            }
        ),
        None => String::new(),
    };
    format!(
        "port mapping at {}: {}{mapping}{pinhole}",
        r.gateway,
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gateway_from_the_route_table() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            parse_default_gateway(table),
            Some(Ipv4Addr::new(192, 168, 1, 1))
        );
        assert_eq!(parse_default_gateway("Iface\tDestination\n"), None);
        assert_eq!(parse_default_gateway("x\neth0 00000000 zz 0003\n"), None);
    }

    #[test]
    fn ipv6_default_gateway_from_the_route_table() {
        // A link-local next hop on eth0 (metric 1024) and a global one on wlan0 (metric 600,
        // preferred); an on-link route and a route without RTF_GATEWAY are not defaults.
        let table = "\
20010db8000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000200000000000000000001 00000258 00000001 00000000 00000003    wlan0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
        assert_eq!(
            parse_default_gateway_v6(table),
            Some(("2001:db8:2::1".parse().unwrap(), "wlan0".to_string()))
        );
        let only_link_local: String = table
            .lines()
            .filter(|l| !l.contains("wlan0"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            parse_default_gateway_v6(&only_link_local),
            Some(("fe80::1".parse().unwrap(), "eth0".to_string()))
        );
        assert_eq!(parse_default_gateway_v6(""), None);
        assert_eq!(
            parse_default_gateway_v6("zz 00 x x zz 0 0 0 3 eth0\n"),
            None
        );
    }

    /// `probe` against the modelled gateway on loopback (IPv4 127.0.0.1:5351 and IPv6
    /// [::1]:5351, the model answering): the IPv4 mapping and the IPv6 pinhole are both
    /// reported, and both are deleted when the probe ends.
    #[tokio::test]
    async fn probe_reports_the_pinhole_and_deletes_it() {
        use burrow_portmap::gateway::{Gateway, GatewayConfig};
        use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};
        use std::sync::{Arc, Mutex};
        let (Ok(v4), Ok(v6)) = (
            UdpSocket::bind((Ipv4Addr::LOCALHOST, 5351)).await,
            UdpSocket::bind((Ipv6Addr::LOCALHOST, 5351)).await,
        ) else {
            eprintln!("skipped: port 5351 on loopback is taken (or no IPv6 loopback)");
            return;
        };
        let mut gc = GatewayConfig::all(Ipv4Addr::LOCALHOST, Ipv4Addr::new(203, 0, 113, 9));
        gc.upnp = None;
        gc.lan_ip6 = Some(Ipv6Addr::LOCALHOST);
        let gw = Arc::new(Mutex::new(Gateway::new(gc, Instant::now().into_std(), 1)));
        for (socket, g) in [(v4, gw.clone()), (v6, gw.clone())] {
            tokio::spawn(async move {
                let mut buf = [0u8; 1100];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let now = Instant::now().into_std();
                    let answer = match from {
                        SocketAddr::V4(f) => g.lock().unwrap().handle_udp(
                            now,
                            SocketAddrV4::new(*f.ip(), f.port()),
                            5351,
                            &buf[..n],
                        ),
                        SocketAddr::V6(f) => g.lock().unwrap().handle_udp6(
                            now,
                            SocketAddrV6::new(*f.ip(), f.port(), 0, 0),
                            5351,
                            &buf[..n],
                        ),
                    };
                    if let Some(a) = answer {
                        let _ = socket.send_to(&a, from).await;
                    }
                }
            });
        }
        let port = 45_123;
        let mut config = PortMapperConfig::new(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, port, 9);
        config.upnp = false;
        config.pinhole = Some(PinholeConfig {
            gateway: Ipv6Addr::LOCALHOST,
            local_ip: Ipv6Addr::LOCALHOST,
            scope_id: 0,
        });
        let report = probe(config, Duration::from_secs(5)).await.expect("probe");
        let want = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        assert_eq!(report.pinhole, Some(want), "{report:?}");
        assert!(report.mapping.is_some(), "{report:?}");
        let nc = to_netcheck(&report);
        assert_eq!(nc.pinhole_v6, Some(want));
        assert!(summary(&report).contains("IPv6 pinhole [::1]:45123"));
        // Deleted at the probe's end.
        let g = gw.lock().unwrap();
        let now = Instant::now().into_std();
        assert_eq!(g.pinholes(now).count(), 0);
        assert_eq!(g.mappings(now).count(), 0);
    }

    #[test]
    fn a_refused_pinhole_is_a_netcheck_error() {
        let report = Report {
            gateway: Ipv4Addr::new(192, 168, 1, 1),
            protocols: Vec::new(),
            mapping: None,
            pinhole: None,
            pinhole_error_code: Some(2),
            pinhole_error: Some("PCP result NotAuthorized for the IPv6 pinhole".into()),
        };
        let nc = to_netcheck(&report);
        assert_eq!(nc.pinhole_v6, None);
        assert_eq!(
            nc.errors.get("pcp-ipv6").map(String::as_str),
            Some("PCP result NotAuthorized for the IPv6 pinhole")
        );
        let json = serde_json::to_value(&nc).unwrap();
        assert!(json["pinhole_v6"].is_null(), "{json}");
    }
}
