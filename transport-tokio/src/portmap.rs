//! Drives [`burrow_portmap::PortMapper`] with a real UDP socket and TCP connections to the
//! default gateway: `burrow up` keeps a mapping for the node's port, `burrow netcheck`
//! probes once and deletes what it made.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use burrow_portmap::upnp::http::MAX_RESPONSE;
use burrow_portmap::{
    Event, HttpRequestId, Input, Mapping, PortMapper, PortMapperConfig, Report, Transmit,
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
    Shutdown(oneshot::Sender<()>),
}

/// A running port mapper.
pub struct PortMapHandle {
    /// The live mapping.
    pub mapping: watch::Receiver<Option<Mapping>>,
    /// The latest report.
    pub report: watch::Receiver<Option<Report>>,
    commands: mpsc::Sender<Command>,
}

impl PortMapHandle {
    /// Looks again (the network changed, or a direct path died).
    pub fn recheck(&self) {
        let _ = self.commands.try_send(Command::Recheck);
    }

    /// Deletes the mapping and stops; waits at most `within`.
    pub async fn shutdown(self, within: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(within, rx).await;
        }
    }
}

/// Starts a port mapper for `config` in the background.
pub async fn spawn(config: PortMapperConfig) -> std::io::Result<PortMapHandle> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    let (mapping_tx, mapping) = watch::channel(None);
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
        drive(
            &mut mapper,
            &socket,
            announcements.as_ref(),
            rx,
            &mut on_event,
        )
        .await;
    });
    Ok(PortMapHandle {
        mapping,
        report,
        commands,
    })
}

/// One probe round: maps if the gateway lets it, reports, deletes the mapping again.
pub async fn probe(config: PortMapperConfig, within: Duration) -> std::io::Result<Report> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    let mut mapper = PortMapper::new(config);
    mapper.start(Instant::now().into_std());
    let (commands, rx) = mpsc::channel(1);
    let mut report = None;
    let mut shutdown = Some(commands);
    let deadline = Instant::now() + within;
    let mut on_event = |e: Event| {
        if let Event::Report(r) = e {
            report.get_or_insert(r);
            // Delete what the probe made.
            if let Some(c) = shutdown.take() {
                let (tx, _) = oneshot::channel();
                let _ = c.try_send(Command::Shutdown(tx));
            }
        }
    };
    let _ = tokio::time::timeout_at(
        deadline,
        drive(&mut mapper, &socket, None, rx, &mut on_event),
    )
    .await;
    Ok(report.unwrap_or_else(|| mapper.report()))
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
    announcements: Option<&UdpSocket>,
    mut commands: mpsc::Receiver<Command>,
    on_event: &mut impl FnMut(Event),
) {
    let (http_tx, mut http_rx) = mpsc::channel::<(HttpRequestId, Option<Vec<u8>>)>(8);
    let http_timeout = mapper.config().http_timeout;
    let mut closing: Option<oneshot::Sender<()>> = None;
    let mut buf = vec![0u8; 2048];
    let mut announcement = vec![0u8; 1100];
    let mut commands_open = true;
    loop {
        while let Some(t) = mapper.poll_transmit() {
            match t {
                Transmit::Udp { dst, payload } => {
                    if let Err(e) = socket.send_to(&payload, dst).await {
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
        while let Some(e) = mapper.poll_event() {
            on_event(e);
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
    let errors = r
        .protocols
        .iter()
        .filter(|p| p.enabled && !p.mapped)
        .filter_map(|p| Some((p.protocol.name().to_string(), p.error.clone()?)))
        .collect();
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
        "port mapping at {}: {}{mapping}",
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
}
