//! `burrow netcheck`: a tokio UDP driver for [`burrow_netcheck::Netcheck`].

use std::collections::BTreeMap;
use std::future::pending;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use burrow_netcheck::{Config, Event, Netcheck, Region, Report};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use thiserror::Error;
use tokio::net::UdpSocket;

use crate::transport::{now, UdpTransport};

/// A STUN server as given on the command line: `[REGION=]HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Region code; servers sharing it form one region.
    pub region: String,
    /// `host:port` to resolve.
    pub host: String,
}

impl std::str::FromStr for ServerSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (region, host) = match s.split_once('=') {
            Some((r, h)) => (r.to_owned(), h.to_owned()),
            None => (s.to_owned(), s.to_owned()),
        };
        if host
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!("expected [REGION=]HOST:PORT, got {s:?}"));
        }
        Ok(ServerSpec { region, host })
    }
}

/// Why netcheck could not produce a report.
#[derive(Debug, Error)]
pub enum NetcheckError {
    /// No server was given.
    #[error("no STUN servers given (pass --stun HOST:PORT)")]
    NoServers,
    /// A host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// No local socket could be bound.
    #[error("cannot bind a UDP socket: {0}")]
    Bind(io::Error),
    /// Every server stayed silent.
    #[error("no STUN server answered within {timeout:?} (tried {tried})")]
    NoAnswer {
        /// The overall deadline.
        timeout: Duration,
        /// The servers tried.
        tried: String,
    },
    /// The state machine refused to start.
    #[error(transparent)]
    Netcheck(#[from] burrow_netcheck::Error),
}

/// Resolves the servers into regions, in the order they were given.
pub async fn resolve_regions(servers: &[ServerSpec]) -> Result<Vec<Region>, NetcheckError> {
    let mut regions: Vec<Region> = Vec::new();
    for spec in servers {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&spec.host)
            .await
            .map_err(|source| NetcheckError::Resolve {
                host: spec.host.clone(),
                source,
            })?
            .collect();
        let region = match regions.iter_mut().find(|r| r.code == spec.region) {
            Some(r) => r,
            None => {
                let id = regions.len() as u32 + 1;
                regions.push(Region {
                    id,
                    code: spec.region.clone(),
                    servers: Vec::new(),
                });
                regions.last_mut().expect("just pushed")
            }
        };
        // One address per family per host is enough to measure both.
        let mut seen = BTreeMap::new();
        for a in addrs {
            seen.entry(a.is_ipv4()).or_insert(a);
        }
        region.servers.extend(seen.into_values());
    }
    Ok(regions)
}

/// The STUN servers of a DERP map's regions, resolved (fixed IPs first, then the host name).
pub async fn resolve_derp_map(map: &burrow_derp::DerpMap) -> Result<Vec<Region>, NetcheckError> {
    let mut regions = Vec::new();
    for r in map.regions() {
        let mut servers = Vec::new();
        for node in &r.nodes {
            let Some(port) = node.stun_port() else {
                continue;
            };
            let fixed: Vec<SocketAddr> = node
                .ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(node.ipv6.map(IpAddr::V6))
                .map(|ip| SocketAddr::new(ip, port))
                .collect();
            if fixed.is_empty() {
                let host = format!("{}:{port}", node.host_name);
                let found = tokio::net::lookup_host(host.as_str())
                    .await
                    .map_err(|source| NetcheckError::Resolve {
                        host: host.clone(),
                        source,
                    })?;
                let mut by_family = BTreeMap::new();
                for a in found {
                    by_family.entry(a.is_ipv4()).or_insert(a);
                }
                servers.extend(by_family.into_values());
            } else {
                servers.extend(fixed);
            }
        }
        if !servers.is_empty() {
            regions.push(Region {
                id: r.id,
                code: r.code.clone(),
                servers,
            });
        }
    }
    Ok(regions)
}

/// Runs one network check against `servers` over real UDP sockets.
pub async fn run(servers: &[ServerSpec], deadline: Duration) -> Result<Report, NetcheckError> {
    if servers.is_empty() {
        return Err(NetcheckError::NoServers);
    }
    let regions = resolve_regions(servers).await?;
    run_regions(regions, deadline).await
}

/// Runs one network check against resolved regions (from `--stun` or a DERP map).
pub async fn run_regions(
    regions: Vec<Region>,
    deadline: Duration,
) -> Result<Report, NetcheckError> {
    if regions.is_empty() {
        return Err(NetcheckError::NoServers);
    }
    let want_v4 = regions.iter().flat_map(|r| &r.servers).any(|a| a.is_ipv4());
    let want_v6 = regions.iter().flat_map(|r| &r.servers).any(|a| a.is_ipv6());
    let v4 = if want_v4 {
        Some(
            UdpSocket::bind("0.0.0.0:0")
                .await
                .map_err(NetcheckError::Bind)?,
        )
    } else {
        None
    };
    // IPv6 may be absent on this host; that is a finding, not an error.
    let v6 = if want_v6 {
        UdpSocket::bind("[::]:0").await.ok()
    } else {
        None
    };
    run_on(
        regions,
        v4,
        v6,
        local_ips(),
        deadline,
        ChaCha20Rng::from_os_rng(),
    )
    .await
}

/// Runs one network check over sockets the caller bound (tokio's, or the simulator's).
pub async fn run_on<S: UdpTransport>(
    regions: Vec<Region>,
    v4: Option<S>,
    v6: Option<S>,
    local_ips: Vec<IpAddr>,
    deadline: Duration,
    rng: ChaCha20Rng,
) -> Result<Report, NetcheckError> {
    let tried = regions
        .iter()
        .flat_map(|r| &r.servers)
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut config = Config::new(
        regions,
        v4.as_ref().and_then(|s| s.local_addr().ok()),
        v6.as_ref().and_then(|s| s.local_addr().ok()),
    );
    config.deadline = deadline;
    config.local_ips = local_ips;
    config.software = Some(concat!("burrow ", env!("CARGO_PKG_VERSION")).to_owned());
    let mut check = Netcheck::new(config, rng);
    check.start(now())?;

    let mut buf4 = [0u8; 2048];
    let mut buf6 = [0u8; 2048];
    loop {
        while let Some(t) = check.poll_transmit() {
            let socket = if t.dst.is_ipv4() { &v4 } else { &v6 };
            if let Some(s) = socket {
                if let Err(e) = s.send_to(&t.payload, t.dst).await {
                    tracing::debug!(dst = %t.dst, error = %e, "probe not sent");
                }
            }
        }
        if let Some(Event::Report(report)) = check.poll_event() {
            if !report.udp {
                return Err(NetcheckError::NoAnswer {
                    timeout: deadline,
                    tried,
                });
            }
            return Ok(report);
        }
        let wake = check.poll_timeout().map(tokio::time::Instant::from_std);
        // `biased`: a fixed polling order keeps simulated runs reproducible.
        tokio::select! {
            biased;
            r = recv(&v4, &mut buf4) => {
                if let Ok((n, from)) = r {
                    if let Err(e) = check.handle_input(now(), from, &buf4[..n]) {
                        tracing::debug!(%from, error = %e, "ignored datagram");
                    }
                }
            }
            r = recv(&v6, &mut buf6) => {
                if let Ok((n, from)) = r {
                    if let Err(e) = check.handle_input(now(), from, &buf6[..n]) {
                        tracing::debug!(%from, error = %e, "ignored datagram");
                    }
                }
            }
            _ = sleep_until(wake) => check.handle_timeout(now()),
        }
    }
}

async fn recv<S: UdpTransport>(
    socket: &Option<S>,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => pending().await,
    }
}

/// This host's interface addresses, for telling "no NAT" from a NAT.
pub fn local_ips() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|ifs| ifs.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}

/// The human-readable summary `burrow netcheck` prints.
pub fn format_report(r: &Report) -> String {
    use std::fmt::Write;
    let yn = |b: bool| if b { "yes" } else { "no" };
    let mut s = String::new();
    let _ = writeln!(s, "Report:");
    let _ = writeln!(s, "  * UDP: {}", yn(r.udp));
    match r.global_v4 {
        Some(a) => {
            let _ = writeln!(s, "  * IPv4: yes, {a}");
        }
        None => {
            let _ = writeln!(s, "  * IPv4: {}", yn(r.ipv4));
        }
    }
    match r.global_v6 {
        Some(a) => {
            let _ = writeln!(s, "  * IPv6: yes, {a}");
        }
        None => {
            let _ = writeln!(s, "  * IPv6: {}", yn(r.ipv6));
        }
    }
    let _ = writeln!(s, "  * NAT type: {}", r.nat_type);
    let _ = writeln!(
        s,
        "  * Mapping varies by destination IP: {}",
        r.mapping_varies_by_dest_ip.map_or("unknown", yn)
    );
    let _ = writeln!(s, "  * Mapping: {}", r.mapping);
    let _ = writeln!(s, "  * Filtering: {}", r.filtering);
    let alloc = match r.port_allocation {
        burrow_netcheck::PortAllocation::Sequential { delta } => {
            format!("sequential (delta {delta:+})")
        }
        other => other.kind().to_owned(),
    };
    let _ = writeln!(s, "  * Port allocation: {alloc}");
    match &r.port_mapping {
        None => {
            let _ = writeln!(s, "  * Port mapping: not probed");
        }
        Some(pm) => {
            let mut answered: Vec<&str> = Vec::new();
            for (on, name) in [(pm.pmp, "NAT-PMP"), (pm.pcp, "PCP"), (pm.upnp, "UPnP")] {
                if on {
                    answered.push(name);
                }
            }
            let answered = if answered.is_empty() {
                "none answered".to_string()
            } else {
                answered.join(", ")
            };
            let mapped = match (&pm.mapped_with, pm.external) {
                (Some(p), Some(ext)) => format!(
                    "; mapped {ext} with {p}{}",
                    if pm.private_external {
                        " (private: a double NAT)"
                    } else {
                        ""
                    }
                ),
                _ => String::new(),
            };
            let _ = writeln!(s, "  * Port mapping: {answered}{mapped}");
            if let Some(p) = pm.pinhole_v6 {
                let _ = writeln!(s, "  * IPv6 pinhole: {p}");
            }
            for (p, e) in &pm.errors {
                let _ = writeln!(s, "    - {p}: {e}");
            }
        }
    }
    if let Some(id) = r.preferred_region {
        if let Some(region) = r.region_latency.iter().find(|l| l.id == id) {
            let _ = writeln!(
                s,
                "  * Nearest region: {} ({:.1} ms)",
                region.code,
                region.latency_ms.unwrap_or_default()
            );
        }
    }
    let _ = writeln!(s, "  * Region latency:");
    for l in &r.region_latency {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
        let _ = writeln!(
            s,
            "    - {}: v4 {}, v6 {}",
            l.code,
            ms(l.v4_ms),
            ms(l.v6_ms)
        );
    }
    s
}
