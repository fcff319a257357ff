//! [`PortMapper`]: one local UDP port mapped on the gateway by whichever of NAT-PMP, PCP and
//! UPnP works, kept mapped, and unmapped at the end.
//!
//! A round starts with a probe of all three at once: a NAT-PMP external-address request and
//! a PCP ANNOUNCE to the gateway's port 5351, and SSDP searches whose answers lead to the
//! gateway's description and its WAN service's external address. When the probe deadline
//! passes (or at once, when NAT-PMP answers: nothing is preferred to it), the machine maps
//! with the first protocol that answered in the order NAT-PMP, PCP, UPnP, falling to the
//! next when one refuses. A mapping is renewed at half its lease and checked between
//! renewals; an epoch that went back (a gateway reboot) or a changed external address
//! re-maps at once; the gateway's unsolicited announcements (it restarted) bring the next
//! check forward. Datagrams from anyone but the gateway are ignored, and UPnP follows only
//! URLs on the gateway's own address.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::epoch::EpochTracker;
use crate::upnp::{self, Action, ActionResponse, HttpUrl, PortMappingRequest, UpnpError};
use crate::{is_private_v4, pcp, pmp, Protocol, TransportProtocol};

/// Settings of a [`PortMapper`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapperConfig {
    /// The default gateway (the router asked for mappings).
    pub gateway: Ipv4Addr,
    /// Our address on the gateway's network (PCP's client address, UPnP's internal client).
    pub local_ip: Ipv4Addr,
    /// The UDP port to map (the node's WireGuard socket).
    pub local_port: u16,
    /// The lease asked for (7,200 s, as RFC 6886 recommends and Tailscale asks).
    pub lease: Duration,
    /// How long the probe waits for answers (a gateway is one hop away).
    pub probe_timeout: Duration,
    /// How long an HTTP exchange with the gateway may take.
    pub http_timeout: Duration,
    /// How often a live mapping is checked between renewals: the external address and the
    /// epoch for NAT-PMP and PCP, the mapping itself (added again) for UPnP.
    pub check_interval: Duration,
    /// When no protocol works, probe again after this.
    pub retry_interval: Duration,
    /// Use NAT-PMP.
    pub pmp: bool,
    /// Use PCP.
    pub pcp: bool,
    /// Use UPnP IGD.
    pub upnp: bool,
    /// The mapping's description (UPnP shows it in the router's table).
    pub description: String,
    /// Seeds the PCP nonces and UPnP's choice of another port after a conflict.
    pub seed: u64,
}

impl PortMapperConfig {
    /// Defaults for mapping `local_ip:local_port` on `gateway`.
    pub fn new(gateway: Ipv4Addr, local_ip: Ipv4Addr, local_port: u16, seed: u64) -> Self {
        PortMapperConfig {
            gateway,
            local_ip,
            local_port,
            lease: Duration::from_secs(u64::from(pmp::RECOMMENDED_LIFETIME)),
            probe_timeout: Duration::from_millis(250),
            http_timeout: Duration::from_secs(3),
            check_interval: Duration::from_secs(30),
            retry_interval: Duration::from_secs(300),
            pmp: true,
            pcp: true,
            upnp: true,
            description: "burrow".into(),
            seed,
        }
    }

    fn enabled(&self, p: Protocol) -> bool {
        match p {
            Protocol::Pmp => self.pmp,
            Protocol::Pcp => self.pcp,
            Protocol::Upnp => self.upnp,
        }
    }
}

/// Names an HTTP exchange: the driver hands the answer back with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpRequestId(pub u64);

/// What the driver hands the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// A datagram that arrived on the port mapper's UDP socket.
    Udp {
        /// Its source.
        from: SocketAddr,
        /// Its bytes.
        data: &'a [u8],
    },
    /// The answer to an HTTP request: every byte read until the gateway closed the
    /// connection, or `None` when it could not be reached or took too long.
    Http {
        /// The request's id.
        id: HttpRequestId,
        /// The bytes read.
        response: Option<&'a [u8]>,
    },
}

/// What the driver sends for the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A datagram from the port mapper's UDP socket (to the gateway, or SSDP's multicast group).
    Udp {
        /// Where.
        dst: SocketAddr,
        /// What.
        payload: Vec<u8>,
    },
    /// An HTTP exchange: connect over TCP to `dst`, write `request`, read until the gateway
    /// closes (at most [`upnp::http::MAX_RESPONSE`] bytes), and hand back [`Input::Http`].
    Http {
        /// Hand the answer back with this.
        id: HttpRequestId,
        /// The gateway's HTTP address.
        dst: SocketAddr,
        /// The request's bytes.
        request: Vec<u8>,
    },
}

/// A live mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Made with.
    pub protocol: Protocol,
    /// Where the internet reaches the local port.
    pub external: SocketAddr,
    /// The local port mapped.
    pub internal_port: u16,
    /// The lease granted; `None` for a permanent one (UPnP gateways that take no other).
    pub lease: Option<Duration>,
    /// The external address is itself private: the gateway sits behind another NAT, and the
    /// mapping reaches only the network above it.
    pub private_external: bool,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A probe round settled: each protocol's outcome, and the mapping if one was made.
    Report(Report),
    /// A new mapping, or the live one changed (another external address or port).
    Mapped(Mapping),
    /// The gateway lost its mappings (its epoch went back): mapping again.
    GatewayRestarted(Protocol),
    /// The mapping is gone and none replaces it yet (the gateway stopped answering, or
    /// refused to renew).
    Lost {
        /// It was made with.
        protocol: Protocol,
        /// Why it is gone.
        reason: String,
    },
    /// After [`PortMapper::shutdown`]: the mapping is deleted (or the gateway did not answer
    /// in time); nothing more will be sent.
    Closed,
}

/// One protocol's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolReport {
    /// Which.
    pub protocol: Protocol,
    /// Turned on in the configuration.
    pub enabled: bool,
    /// The gateway answered it.
    pub answered: bool,
    /// The external address it gave.
    pub external_ip: Option<IpAddr>,
    /// That address is private (a double NAT).
    pub private_external: bool,
    /// The live mapping was made with it.
    pub mapped: bool,
    /// Its latest error code (NAT-PMP or PCP result code, UPnP error code).
    pub error_code: Option<u16>,
    /// Its latest error, in words.
    pub error: Option<String>,
}

/// Every protocol's outcome, and the live mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The gateway asked.
    pub gateway: Ipv4Addr,
    /// NAT-PMP, PCP and UPnP, in that order.
    pub protocols: Vec<ProtocolReport>,
    /// The live mapping.
    pub mapping: Option<Mapping>,
}

/// A datagram that could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortMapError {
    /// From someone other than the gateway.
    #[error("datagram from {0}, not the gateway")]
    NotGateway(SocketAddr),
    /// A malformed NAT-PMP message.
    #[error(transparent)]
    Pmp(#[from] pmp::PmpError),
    /// A malformed PCP message.
    #[error(transparent)]
    Pcp(#[from] pcp::PcpError),
    /// A malformed SSDP or HTTP answer, or one pointing away from the gateway.
    #[error(transparent)]
    Upnp(#[from] UpnpError),
    /// An answer to nothing we asked.
    #[error("unsolicited answer")]
    Unsolicited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Probing { until: Instant },
    Mapping(Protocol),
    Mapped,
    Waiting { until: Instant },
    Closing { until: Instant },
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Probe,
    Map,
    Renew,
    Check,
    Unmap,
}

/// A request over UDP awaiting its answer, resent with a doubling interval.
#[derive(Debug, Clone)]
struct Pending {
    ask: Ask,
    payload: Vec<u8>,
    next: Instant,
    interval: Duration,
    tries: u32,
    max_tries: u32,
}

#[derive(Debug, Clone, Default)]
struct Status {
    answered: bool,
    external: Option<Ipv4Addr>,
    error: Option<String>,
    code: Option<u16>,
    /// Mapping with it failed this round.
    failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Description,
    ExternalIp,
    Add { any: bool },
    Delete,
}

#[derive(Debug, Clone)]
struct HttpPending {
    id: HttpRequestId,
    step: Step,
    ask: Ask,
    action: Option<Action>,
    deadline: Instant,
}

#[derive(Debug, Clone, Default)]
struct Upnp {
    location: Option<HttpUrl>,
    service: Option<upnp::WanService>,
    http: Option<HttpPending>,
    /// The external port asked for (another after a conflict).
    external_port: u16,
    /// The gateway takes permanent leases only.
    permanent: bool,
    conflicts: u32,
    /// AddAnyPortMapping was refused: use AddPortMapping.
    no_any: bool,
}

/// How many UPnP conflicts (error 718) to step around before giving up.
const MAX_CONFLICTS: u32 = 4;
/// Mapping requests over UDP: tries and the first interval (250 ms, doubling).
const MAP_TRIES: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// How long shutdown waits for the gateway to confirm a deletion.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The least time between checks that a gateway's announcements bring forward (a restarted
/// gateway repeats its announcement; a stranger spoofing the gateway gains little).
const ANNOUNCE_GAP: Duration = Duration::from_secs(2);

/// The port-mapping client: see the module's documentation.
#[derive(Debug)]
pub struct PortMapper {
    config: PortMapperConfig,
    rng: ChaCha20Rng,
    phase: Phase,
    status: [Status; 3],
    pmp: Option<Pending>,
    pmp_epoch: EpochTracker,
    pcp: Option<Pending>,
    pcp_epoch: EpochTracker,
    pcp_nonce: [u8; 12],
    upnp: Upnp,
    ssdp_resend: Option<Instant>,
    mapping: Option<Mapping>,
    renew_at: Option<Instant>,
    check_at: Option<Instant>,
    /// When an announcement last brought a check forward.
    announced_at: Option<Instant>,
    /// A report is owed when the round settles.
    report_due: bool,
    next_id: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl PortMapper {
    /// A machine that has not started.
    pub fn new(config: PortMapperConfig) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
        let mut pcp_nonce = [0u8; 12];
        rng.fill_bytes(&mut pcp_nonce);
        let upnp = Upnp {
            external_port: config.local_port,
            ..Upnp::default()
        };
        PortMapper {
            config,
            rng,
            phase: Phase::Idle,
            status: Default::default(),
            pmp: None,
            pmp_epoch: EpochTracker::new(),
            pcp: None,
            pcp_epoch: EpochTracker::new(),
            pcp_nonce,
            upnp,
            ssdp_resend: None,
            mapping: None,
            renew_at: None,
            check_at: None,
            announced_at: None,
            report_due: false,
            next_id: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &PortMapperConfig {
        &self.config
    }

    /// The live mapping.
    pub fn mapping(&self) -> Option<Mapping> {
        self.mapping
    }

    /// Whether [`shutdown`](Self::shutdown) has finished.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Each protocol's outcome so far, and the live mapping.
    pub fn report(&self) -> Report {
        let protocols = Protocol::ALL
            .iter()
            .map(|&p| {
                let s = &self.status[idx(p)];
                ProtocolReport {
                    protocol: p,
                    enabled: self.config.enabled(p),
                    answered: s.answered,
                    external_ip: s.external.map(IpAddr::V4),
                    private_external: s.external.is_some_and(is_private_v4),
                    mapped: self.mapping.is_some_and(|m| m.protocol == p),
                    error_code: s.code,
                    error: s.error.clone(),
                }
            })
            .collect();
        Report {
            gateway: self.config.gateway,
            protocols,
            mapping: self.mapping,
        }
    }

    /// Starts a probe round (also: something changed on the network, look again). A live
    /// mapping stays until the round replaces or loses it.
    pub fn start(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Closing { .. } | Phase::Closed) {
            return;
        }
        for s in &mut self.status {
            *s = Status::default();
        }
        self.pmp_epoch.reset();
        self.pcp_epoch.reset();
        self.report_due = true;
        self.phase = Phase::Probing {
            until: now + self.config.probe_timeout,
        };
        let half = self.config.probe_timeout / 2;
        if self.config.pmp {
            let payload = pmp::Request::ExternalAddress.to_bytes();
            self.pmp = Some(self.send_udp(now, Ask::Probe, payload, half, 2));
        }
        if self.config.pcp {
            let payload = pcp::Request::announce(IpAddr::V4(self.config.local_ip)).to_bytes();
            self.pcp = Some(self.send_udp(now, Ask::Probe, payload, half, 2));
        }
        if self.config.upnp {
            self.upnp.location = None;
            self.upnp.service = None;
            self.upnp.http = None;
            self.send_ssdp();
            self.ssdp_resend = Some(now + half);
        }
    }

    /// Deletes the mapping (if any) and stops; [`Event::Closed`] follows.
    pub fn shutdown(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Closing { .. } | Phase::Closed) {
            return;
        }
        self.pmp = None;
        self.pcp = None;
        self.upnp.http = None;
        self.ssdp_resend = None;
        self.renew_at = None;
        self.check_at = None;
        let Some(m) = self.mapping.take() else {
            self.close();
            return;
        };
        self.phase = Phase::Closing {
            until: now + CLOSE_TIMEOUT,
        };
        match m.protocol {
            Protocol::Pmp => {
                // RFC 6886 §3.4: lifetime 0 and suggested external port 0 delete it.
                let payload = pmp::Request::Map {
                    protocol: TransportProtocol::Udp,
                    internal_port: self.config.local_port,
                    suggested_external_port: 0,
                    lifetime: 0,
                }
                .to_bytes();
                self.pmp = Some(self.send_udp(now, Ask::Unmap, payload, FIRST_RETRY, 3));
            }
            Protocol::Pcp => {
                let payload = self.pcp_map_request(0, Some(m.external)).to_bytes();
                self.pcp = Some(self.send_udp(now, Ask::Unmap, payload, FIRST_RETRY, 3));
            }
            Protocol::Upnp => {
                let action = Action::DeletePortMapping {
                    external_port: m.external.port(),
                    protocol: TransportProtocol::Udp,
                };
                self.soap(now, Step::Delete, Ask::Unmap, action);
            }
        }
    }

    /// Takes a datagram or an HTTP answer.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) -> Result<(), PortMapError> {
        match input {
            Input::Udp { from, data } => self.handle_udp(now, from, data),
            Input::Http { id, response } => self.handle_http(now, id, response),
        }
    }

    /// Resends, gives up on, renews and checks what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for p in [Protocol::Pmp, Protocol::Pcp] {
            let slot = if p == Protocol::Pmp {
                &mut self.pmp
            } else {
                &mut self.pcp
            };
            let Some(pending) = slot.as_mut() else {
                continue;
            };
            if now < pending.next {
                continue;
            }
            if pending.tries < pending.max_tries {
                pending.tries += 1;
                pending.interval *= 2;
                pending.next = now + pending.interval;
                let payload = pending.payload.clone();
                self.transmits.push_back(Transmit::Udp {
                    dst: self.gateway_port(),
                    payload,
                });
            } else {
                let ask = pending.ask;
                *slot = None;
                self.udp_unanswered(now, p, ask);
            }
        }
        if let Some(h) = &self.upnp.http {
            if now >= h.deadline {
                let h = self.upnp.http.take().expect("checked above");
                self.http_failed(
                    now,
                    h,
                    "no answer from the gateway's HTTP server".into(),
                    None,
                );
            }
        }
        if self.ssdp_resend.is_some_and(|t| now >= t) {
            self.ssdp_resend = None;
            if self.upnp.location.is_none() {
                self.send_ssdp();
            }
        }
        match self.phase {
            Phase::Probing { until } if now >= until => self.choose(now),
            Phase::Waiting { until } if now >= until => self.start(now),
            Phase::Closing { until } if now >= until => self.close(),
            _ => {}
        }
        if self.phase == Phase::Mapped {
            if self.renew_at.is_some_and(|t| now >= t) {
                self.renew_at = None;
                self.map(now, Ask::Renew);
            } else if self.check_at.is_some_and(|t| now >= t) {
                self.check_at = Some(now + self.config.check_interval);
                self.check(now);
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Probing { until } | Phase::Waiting { until } | Phase::Closing { until } => {
                Some(until)
            }
            Phase::Mapped => match (self.renew_at, self.check_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            _ => None,
        };
        [
            phase,
            self.pmp.as_ref().map(|p| p.next),
            self.pcp.as_ref().map(|p| p.next),
            self.upnp.http.as_ref().map(|h| h.deadline),
            self.ssdp_resend,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next datagram or HTTP exchange.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- UDP: NAT-PMP, PCP, SSDP ----

    fn gateway_port(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.config.gateway, pmp::SERVER_PORT))
    }

    fn send_udp(
        &mut self,
        now: Instant,
        ask: Ask,
        payload: Vec<u8>,
        interval: Duration,
        max_tries: u32,
    ) -> Pending {
        self.transmits.push_back(Transmit::Udp {
            dst: self.gateway_port(),
            payload: payload.clone(),
        });
        Pending {
            ask,
            payload,
            next: now + interval,
            interval,
            tries: 1,
            max_tries,
        }
    }

    fn send_ssdp(&mut self) {
        for target in upnp::ssdp::SEARCH_TARGETS {
            self.transmits.push_back(Transmit::Udp {
                dst: SocketAddr::V4(upnp::ssdp::SSDP_ADDR),
                payload: upnp::ssdp::m_search(target),
            });
        }
    }

    fn handle_udp(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<(), PortMapError> {
        if from.ip() != IpAddr::V4(self.config.gateway) {
            return Err(PortMapError::NotGateway(from));
        }
        if from.port() == pmp::SERVER_PORT {
            return match data.first() {
                Some(&pmp::VERSION) => self.handle_pmp(now, pmp::Response::decode(data)?),
                Some(&pcp::VERSION) => self.handle_pcp(now, pcp::Response::decode(data)?),
                _ => Err(pmp::Response::decode(data)
                    .err()
                    .map_or(PortMapError::Unsolicited, PortMapError::Pmp)),
            };
        }
        let answer = upnp::ssdp::parse_response(data)?;
        if answer.location.addr.ip() != IpAddr::V4(self.config.gateway) {
            return Err(PortMapError::Upnp(UpnpError::Url(format!(
                "{} is not on the gateway",
                answer.location
            ))));
        }
        if self.upnp.location.is_some() || !self.config.upnp || self.phase == Phase::Closed {
            return Ok(());
        }
        self.status[idx(Protocol::Upnp)].answered = true;
        let request = upnp::http::get(&answer.location);
        let dst = answer.location.addr;
        self.upnp.location = Some(answer.location);
        self.http(now, dst, request, Step::Description, Ask::Probe, None);
        Ok(())
    }

    fn handle_pmp(&mut self, now: Instant, r: pmp::Response) -> Result<(), PortMapError> {
        let result = r.result();
        // A NAT-PMP gateway answers PCP in NAT-PMP's format: "unsupported version".
        if result == pmp::ResultCode::UnsupportedVersion
            && self.pcp.take_if(|p| p.ask == Ask::Probe).is_some()
        {
            let s = &mut self.status[idx(Protocol::Pcp)];
            s.error = Some("the gateway speaks NAT-PMP only".into());
            s.code = Some(u16::from(pcp::ResultCode::UnsupportedVersion.code()));
            self.settle_probe(now);
            return Ok(());
        }
        let Some(pending) = self.pmp.take() else {
            return match r {
                pmp::Response::ExternalAddress { .. } => self.announced(now),
                _ => Err(PortMapError::Unsolicited),
            };
        };
        let restarted = self.pmp_epoch.observe(now, r.epoch());
        let s = &mut self.status[idx(Protocol::Pmp)];
        s.answered = true;
        if result != pmp::ResultCode::Success {
            s.code = Some(result.code());
            s.error = Some(format!("NAT-PMP result {result:?}"));
        }
        match (pending.ask, r) {
            (Ask::Probe | Ask::Check, pmp::Response::ExternalAddress { external, .. }) => {
                if result == pmp::ResultCode::Success {
                    s.external = Some(external);
                    s.code = None;
                    s.error = None;
                }
                if pending.ask == Ask::Probe {
                    self.settle_probe(now);
                } else {
                    self.checked(now, Protocol::Pmp, restarted, Some(external));
                }
            }
            (
                Ask::Map | Ask::Renew,
                pmp::Response::Map {
                    external_port,
                    lifetime,
                    ..
                },
            ) => {
                let ip = s.external;
                if result != pmp::ResultCode::Success || lifetime == 0 {
                    self.map_failed(now, Protocol::Pmp, pending.ask);
                } else if let Some(ip) = ip {
                    let external = SocketAddr::V4(SocketAddrV4::new(ip, external_port));
                    self.mapped(now, Protocol::Pmp, external, Some(secs(lifetime)));
                } else {
                    // Mapped, but the external address is unknown: ask for it, then report.
                    self.status[idx(Protocol::Pmp)].error = Some("no external address".into());
                    self.map_failed(now, Protocol::Pmp, pending.ask);
                }
            }
            (Ask::Unmap, pmp::Response::Map { .. }) => self.close(),
            (_, _) => {
                // An answer to another question: keep waiting for ours.
                self.pmp = Some(pending);
                return Err(PortMapError::Unsolicited);
            }
        }
        Ok(())
    }

    fn handle_pcp(&mut self, now: Instant, r: pcp::Response) -> Result<(), PortMapError> {
        // A PCP-only gateway answers NAT-PMP in PCP's format: "unsupported version".
        if r.result == pcp::ResultCode::UnsupportedVersion
            && self.pmp.take_if(|p| p.ask == Ask::Probe).is_some()
        {
            let s = &mut self.status[idx(Protocol::Pmp)];
            s.error = Some("the gateway speaks PCP only".into());
            s.code = Some(pmp::ResultCode::UnsupportedVersion.code());
            self.settle_probe(now);
            return Ok(());
        }
        let Some(pending) = self.pcp.take() else {
            return if r.opcode == pcp::Opcode::Announce {
                self.announced(now)
            } else {
                Err(PortMapError::Unsolicited)
            };
        };
        let matches = match r.opcode {
            pcp::Opcode::Announce => matches!(pending.ask, Ask::Probe | Ask::Check),
            pcp::Opcode::Map => {
                matches!(pending.ask, Ask::Map | Ask::Renew | Ask::Unmap)
                    && r.map.is_none_or(|m| m.nonce == self.pcp_nonce)
            }
            _ => false,
        };
        if !matches {
            self.pcp = Some(pending);
            return Err(PortMapError::Unsolicited);
        }
        let restarted = self.pcp_epoch.observe(now, r.epoch);
        let s = &mut self.status[idx(Protocol::Pcp)];
        s.answered = true;
        if r.result != pcp::ResultCode::Success {
            s.code = Some(u16::from(r.result.code()));
            s.error = Some(format!("PCP result {:?}", r.result));
        } else {
            s.code = None;
            s.error = None;
        }
        match pending.ask {
            Ask::Probe => self.settle_probe(now),
            Ask::Check => self.checked(now, Protocol::Pcp, restarted, None),
            Ask::Map | Ask::Renew => match r.map {
                Some(m) if r.result == pcp::ResultCode::Success && r.lifetime > 0 => {
                    if let IpAddr::V4(v4) = m.external_ip {
                        self.status[idx(Protocol::Pcp)].external = Some(v4);
                    }
                    let external = SocketAddr::new(m.external_ip, m.external_port);
                    self.mapped(now, Protocol::Pcp, external, Some(secs(r.lifetime)));
                }
                _ => self.map_failed(now, Protocol::Pcp, pending.ask),
            },
            Ask::Unmap => self.close(),
        }
        Ok(())
    }

    fn pcp_map_request(&self, lifetime: u32, previous: Option<SocketAddr>) -> pcp::Request {
        // A first request suggests our own port (kept by many gateways: the same number
        // outside and in) and any address.
        let (port, ip) = match previous {
            Some(a) => (a.port(), a.ip()),
            None => (self.config.local_port, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        };
        pcp::Request::map(
            IpAddr::V4(self.config.local_ip),
            lifetime,
            pcp::MapBody {
                nonce: self.pcp_nonce,
                protocol: pcp::PROTOCOL_UDP,
                internal_port: self.config.local_port,
                external_port: port,
                external_ip: ip,
            },
        )
    }

    fn udp_unanswered(&mut self, now: Instant, p: Protocol, ask: Ask) {
        match ask {
            Ask::Probe => {
                let s = &mut self.status[idx(p)];
                if !s.answered {
                    s.error = Some("no answer".into());
                }
                self.settle_probe(now);
            }
            Ask::Map | Ask::Renew => {
                self.status[idx(p)].error = Some("no answer to the mapping request".into());
                self.map_failed(now, p, ask);
            }
            Ask::Check => self.lost(now, p, "the gateway stopped answering".into()),
            Ask::Unmap => self.close(),
        }
    }

    // ---- UPnP over HTTP ----

    fn http(
        &mut self,
        now: Instant,
        dst: SocketAddr,
        request: Vec<u8>,
        step: Step,
        ask: Ask,
        action: Option<Action>,
    ) {
        self.next_id += 1;
        let id = HttpRequestId(self.next_id);
        self.upnp.http = Some(HttpPending {
            id,
            step,
            ask,
            action,
            deadline: now + self.config.http_timeout,
        });
        self.transmits
            .push_back(Transmit::Http { id, dst, request });
    }

    fn soap(&mut self, now: Instant, step: Step, ask: Ask, action: Action) {
        let Some(service) = self.upnp.service.clone() else {
            return;
        };
        let envelope = upnp::soap::encode_request(&service.service_type, &action);
        let request = upnp::http::post_soap(
            &service.control_url,
            &service.service_type,
            action.name(),
            &envelope,
        );
        self.http(
            now,
            service.control_url.addr,
            request,
            step,
            ask,
            Some(action),
        );
    }

    fn handle_http(
        &mut self,
        now: Instant,
        id: HttpRequestId,
        response: Option<&[u8]>,
    ) -> Result<(), PortMapError> {
        let Some(h) = self.upnp.http.take_if(|h| h.id == id) else {
            return Err(PortMapError::Unsolicited);
        };
        let Some(bytes) = response else {
            self.http_failed(
                now,
                h,
                "the gateway's HTTP server did not answer".into(),
                None,
            );
            return Ok(());
        };
        let parsed = upnp::http::parse_response_at_eof(bytes);
        let http = match parsed {
            Ok(r) => r,
            Err(e) => {
                self.http_failed(now, h, e.to_string(), None);
                return Err(e.into());
            }
        };
        match h.step {
            Step::Description => {
                let Some(location) = self.upnp.location.clone() else {
                    return Ok(());
                };
                if http.status != 200 {
                    let e = UpnpError::Status(http.status);
                    self.http_failed(now, h, e.to_string(), Some(http.status));
                    return Err(e.into());
                }
                let desc = match upnp::description::parse_description(&http.body, &location) {
                    Ok(d) => d,
                    Err(e) => {
                        self.http_failed(now, h, e.to_string(), None);
                        return Err(e.into());
                    }
                };
                let Some(service) = desc.best_service().cloned() else {
                    let e = UpnpError::NoWanService;
                    self.http_failed(now, h, e.to_string(), None);
                    return Err(e.into());
                };
                if service.control_url.addr.ip() != IpAddr::V4(self.config.gateway) {
                    let e =
                        UpnpError::Url(format!("{} is not on the gateway", service.control_url));
                    self.http_failed(now, h, e.to_string(), None);
                    return Err(e.into());
                }
                self.upnp.service = Some(service);
                self.soap(now, Step::ExternalIp, h.ask, Action::GetExternalIpAddress);
            }
            Step::ExternalIp | Step::Add { .. } | Step::Delete => {
                let action = h.action.clone().unwrap_or(Action::GetExternalIpAddress);
                match upnp::soap::decode_response(&action, &http) {
                    Ok(answer) => self.soap_answer(now, h, answer),
                    Err(UpnpError::Fault { code, description }) => {
                        self.soap_fault(now, h, code, description)
                    }
                    Err(e) => {
                        self.http_failed(now, h, e.to_string(), None);
                        return Err(e.into());
                    }
                }
            }
        }
        Ok(())
    }

    fn soap_answer(&mut self, now: Instant, h: HttpPending, answer: ActionResponse) {
        let s = &mut self.status[idx(Protocol::Upnp)];
        match (h.step, answer) {
            (Step::ExternalIp, ActionResponse::ExternalIpAddress(ip)) => {
                s.external = ip;
                s.error = None;
                s.code = None;
                if h.ask == Ask::Probe {
                    self.settle_probe(now);
                }
            }
            (Step::Add { .. }, ActionResponse::PortMappingAdded) => {
                let port = self.upnp.external_port;
                self.upnp_mapped(now, port, h.ask);
            }
            (Step::Add { .. }, ActionResponse::AnyPortMappingAdded { reserved_port }) => {
                self.upnp.external_port = reserved_port;
                self.upnp_mapped(now, reserved_port, h.ask);
            }
            (Step::Delete, _) => self.close(),
            (_, _) => self.http_failed(now, h, "an unexpected SOAP answer".into(), None),
        }
    }

    fn upnp_mapped(&mut self, now: Instant, port: u16, ask: Ask) {
        let Some(ip) = self.status[idx(Protocol::Upnp)].external else {
            self.status[idx(Protocol::Upnp)].error = Some("no external address".into());
            self.map_failed(now, Protocol::Upnp, ask);
            return;
        };
        let lease = (!self.upnp.permanent).then_some(self.config.lease);
        self.mapped(
            now,
            Protocol::Upnp,
            SocketAddr::V4(SocketAddrV4::new(ip, port)),
            lease,
        );
    }

    fn soap_fault(&mut self, now: Instant, h: HttpPending, code: u16, description: String) {
        use upnp::soap::error_code as e;
        {
            let s = &mut self.status[idx(Protocol::Upnp)];
            s.answered = true;
            s.code = Some(code);
            s.error = Some(format!("UPnP error {code}: {description}"));
        }
        let Step::Add { any } = h.step else {
            let detail = format!("UPnP error {code}: {description}");
            self.http_failed(now, h, detail, Some(code));
            return;
        };
        match code {
            // Only permanent leases: ask again with lease 0.
            e::ONLY_PERMANENT_LEASES_SUPPORTED | e::INVALID_ARGS if !self.upnp.permanent => {
                self.upnp.permanent = true;
                self.upnp_add(now, h.ask);
            }
            // The port is someone else's: pick another.
            e::CONFLICT_IN_MAPPING_ENTRY if self.upnp.conflicts < MAX_CONFLICTS => {
                self.upnp.conflicts += 1;
                self.upnp.external_port = 1024 + (self.rng.next_u32() % (65535 - 1024)) as u16;
                self.upnp_add(now, h.ask);
            }
            // AddAnyPortMapping not understood: the v1 call instead.
            e::INVALID_ACTION | e::ACTION_FAILED if any => {
                self.upnp.no_any = true;
                self.upnp_add(now, h.ask);
            }
            _ => self.map_failed(now, Protocol::Upnp, h.ask),
        }
    }

    fn http_failed(&mut self, now: Instant, h: HttpPending, error: String, code: Option<u16>) {
        let s = &mut self.status[idx(Protocol::Upnp)];
        s.error = Some(error.clone());
        if code.is_some() {
            s.code = code;
        }
        match h.ask {
            Ask::Probe => {
                // The probe's UPnP leg is over, unanswered in effect.
                self.upnp.service = None;
                self.settle_probe(now);
            }
            Ask::Map | Ask::Renew => self.map_failed(now, Protocol::Upnp, h.ask),
            Ask::Check => self.lost(now, Protocol::Upnp, error),
            Ask::Unmap => self.close(),
        }
    }

    fn upnp_add(&mut self, now: Instant, ask: Ask) {
        let any = !self.upnp.no_any
            && self
                .upnp
                .service
                .as_ref()
                .is_some_and(|s| s.kind == upnp::ServiceKind::WanIpConnection2);
        let request = PortMappingRequest {
            remote_host: None,
            external_port: self.upnp.external_port,
            protocol: TransportProtocol::Udp,
            internal_port: self.config.local_port,
            internal_client: self.config.local_ip,
            description: self.config.description.clone(),
            lease_seconds: if self.upnp.permanent {
                0
            } else {
                u32::try_from(self.config.lease.as_secs()).unwrap_or(u32::MAX)
            },
        };
        let action = if any {
            Action::AddAnyPortMapping(request)
        } else {
            Action::AddPortMapping(request)
        };
        self.soap(now, Step::Add { any }, ask, action);
    }

    // ---- the round ----

    /// The probe learned something: map now with the most preferred protocol that is ready,
    /// unless a more preferred one may still answer.
    fn settle_probe(&mut self, now: Instant) {
        let Phase::Probing { until } = self.phase else {
            return;
        };
        for p in Protocol::ALL {
            if !self.config.enabled(p) || self.status[idx(p)].failed {
                continue;
            }
            if self.ready(p) {
                self.choose(now);
                return;
            }
            let waiting = match p {
                Protocol::Pmp => self.pmp.is_some(),
                Protocol::Pcp => self.pcp.is_some(),
                Protocol::Upnp => {
                    self.upnp.http.as_ref().is_some_and(|h| h.ask == Ask::Probe)
                        || (self.upnp.location.is_none() && now < until)
                }
            };
            if waiting {
                return;
            }
        }
        self.choose(now);
    }

    /// Whether `p` answered and can be tried.
    fn ready(&self, p: Protocol) -> bool {
        let s = &self.status[idx(p)];
        if !self.config.enabled(p) || s.failed || !s.answered {
            return false;
        }
        match p {
            Protocol::Pmp => s.external.is_some(),
            Protocol::Pcp => s.code.is_none(),
            Protocol::Upnp => self.upnp.service.is_some() && s.external.is_some(),
        }
    }

    /// Maps with the most preferred protocol that answered, or ends the round.
    fn choose(&mut self, now: Instant) {
        if let Some(p) = Protocol::ALL.into_iter().find(|&p| self.ready(p)) {
            self.phase = Phase::Mapping(p);
            self.map(now, Ask::Map);
            return;
        }
        // UPnP is still on its way through HTTP: wait for it.
        if self.upnp.http.as_ref().is_some_and(|h| h.ask == Ask::Probe) {
            self.phase = Phase::Probing {
                until: self.upnp.http.as_ref().map_or(now, |h| h.deadline),
            };
            return;
        }
        for p in [Protocol::Pmp, Protocol::Pcp, Protocol::Upnp] {
            let s = &mut self.status[idx(p)];
            if self.config.enabled(p) && !s.answered && s.error.is_none() {
                s.error = Some("no answer".into());
            }
        }
        self.pmp = None;
        self.pcp = None;
        self.phase = Phase::Waiting {
            until: now + self.config.retry_interval,
        };
        self.emit_report();
    }

    fn current_protocol(&self) -> Option<Protocol> {
        match self.phase {
            Phase::Mapping(p) => Some(p),
            Phase::Mapped => self.mapping.map(|m| m.protocol),
            _ => None,
        }
    }

    /// Sends the mapping request (a first one, or a renewal) with the round's protocol.
    fn map(&mut self, now: Instant, ask: Ask) {
        let Some(p) = self.current_protocol() else {
            return;
        };
        let lifetime = u32::try_from(self.config.lease.as_secs()).unwrap_or(u32::MAX);
        let previous = self.mapping.filter(|m| m.protocol == p).map(|m| m.external);
        match p {
            Protocol::Pmp => {
                let payload = pmp::Request::Map {
                    protocol: TransportProtocol::Udp,
                    internal_port: self.config.local_port,
                    suggested_external_port: previous.map_or(self.config.local_port, |a| a.port()),
                    lifetime,
                }
                .to_bytes();
                self.pmp = Some(self.send_udp(now, ask, payload, FIRST_RETRY, MAP_TRIES));
            }
            Protocol::Pcp => {
                let payload = self.pcp_map_request(lifetime, previous).to_bytes();
                self.pcp = Some(self.send_udp(now, ask, payload, FIRST_RETRY, MAP_TRIES));
            }
            Protocol::Upnp => self.upnp_add(now, ask),
        }
    }

    fn mapped(&mut self, now: Instant, p: Protocol, external: SocketAddr, lease: Option<Duration>) {
        let private_external = match external.ip() {
            IpAddr::V4(v4) => is_private_v4(v4),
            IpAddr::V6(_) => false,
        };
        let m = Mapping {
            protocol: p,
            external,
            internal_port: self.config.local_port,
            lease,
            private_external,
        };
        let changed = self.mapping.is_none_or(|old| {
            old.protocol != m.protocol || old.external != m.external || old.lease != m.lease
        });
        self.mapping = Some(m);
        self.phase = Phase::Mapped;
        self.status[idx(p)].failed = false;
        // Renew at half the lease; a permanent UPnP mapping is re-added at each check.
        self.renew_at = match lease {
            Some(l) => Some(now + (l / 2).max(Duration::from_secs(1))),
            None => Some(now + self.config.check_interval),
        };
        self.check_at = Some(now + self.config.check_interval);
        if changed {
            self.events.push_back(Event::Mapped(m));
        }
        self.emit_report();
    }

    fn map_failed(&mut self, now: Instant, p: Protocol, ask: Ask) {
        self.status[idx(p)].failed = true;
        if ask == Ask::Renew {
            self.lost(now, p, "the gateway refused to renew the mapping".into());
            return;
        }
        self.choose(now);
    }

    /// A check's answer: re-map after a gateway restart; note a changed external address.
    fn checked(&mut self, now: Instant, p: Protocol, restarted: bool, external: Option<Ipv4Addr>) {
        let Some(m) = self.mapping.filter(|m| m.protocol == p) else {
            return;
        };
        if restarted {
            self.events.push_back(Event::GatewayRestarted(p));
            self.map(now, Ask::Renew);
            return;
        }
        if let Some(ip) = external {
            if m.external.ip() != IpAddr::V4(ip) && !ip.is_unspecified() {
                // The gateway's external address changed: the mapping moved with it.
                self.map(now, Ask::Renew);
            }
        }
    }

    /// An unsolicited NAT-PMP address announcement or PCP ANNOUNCE from the gateway (RFC 6886
    /// 3.2.1, RFC 6887 14.1.3: sent to 224.0.0.1:5350 when it restarts or its address
    /// changes): with a live mapping, check it now instead of at the next interval. The
    /// announcement itself is not trusted; the check's answer decides.
    fn announced(&mut self, now: Instant) -> Result<(), PortMapError> {
        if self.phase != Phase::Mapped {
            return Err(PortMapError::Unsolicited);
        }
        if self
            .announced_at
            .is_none_or(|t| now.saturating_duration_since(t) >= ANNOUNCE_GAP)
        {
            self.announced_at = Some(now);
            self.check_at = Some(now);
        }
        Ok(())
    }

    /// Checks a live mapping between renewals.
    fn check(&mut self, now: Instant) {
        let Some(m) = self.mapping else {
            return;
        };
        match m.protocol {
            Protocol::Pmp if self.pmp.is_none() => {
                let payload = pmp::Request::ExternalAddress.to_bytes();
                self.pmp = Some(self.send_udp(now, Ask::Check, payload, FIRST_RETRY, MAP_TRIES));
            }
            Protocol::Pcp if self.pcp.is_none() => {
                let payload = pcp::Request::announce(IpAddr::V4(self.config.local_ip)).to_bytes();
                self.pcp = Some(self.send_udp(now, Ask::Check, payload, FIRST_RETRY, MAP_TRIES));
            }
            // A UPnP gateway has no epoch: adding the mapping again restores it if the
            // gateway forgot it, and changes nothing if not.
            Protocol::Upnp if self.upnp.http.is_none() => self.upnp_add(now, Ask::Renew),
            _ => {}
        }
    }

    fn lost(&mut self, now: Instant, p: Protocol, reason: String) {
        if self.mapping.is_some_and(|m| m.protocol == p) {
            self.mapping = None;
            self.renew_at = None;
            self.check_at = None;
            self.events.push_back(Event::Lost {
                protocol: p,
                reason,
            });
            // Look again from the start: another protocol may work now.
            self.start(now);
        }
    }

    fn emit_report(&mut self) {
        if self.report_due {
            self.report_due = false;
            self.events.push_back(Event::Report(self.report()));
        }
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.pmp = None;
        self.pcp = None;
        self.upnp.http = None;
        self.mapping = None;
        self.events.push_back(Event::Closed);
    }
}

fn idx(p: Protocol) -> usize {
    match p {
        Protocol::Pmp => 0,
        Protocol::Pcp => 1,
        Protocol::Upnp => 2,
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}
