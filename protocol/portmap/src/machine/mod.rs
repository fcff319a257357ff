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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::epoch::EpochTracker;
use crate::upnp::{self, Action, HttpUrl};
use crate::{is_private_v4, pcp, pmp, Protocol, TransportProtocol};

mod api;
mod pinhole;
mod udp;
mod upnp_flow;

pub use api::{
    Event, HttpRequestId, Input, Mapping, PinholeConfig, PinholeEvent, PortMapError,
    PortMapperConfig, ProtocolReport, Report, Transmit,
};

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
    /// The IPv6 pinhole's state.
    pinhole: pinhole::Pinhole,
    /// Shutdown finished with the IPv4 mapping; the pinhole's deletion may still be pending.
    v4_closed: bool,
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
        let pinhole = pinhole::Pinhole::new(config.seed);
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
            pinhole,
            v4_closed: false,
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
        let (pinhole_error_code, pinhole_error) = match &self.pinhole.error {
            Some((code, e)) => (*code, Some(e.clone())),
            None => (None, None),
        };
        Report {
            gateway: self.config.gateway,
            protocols,
            mapping: self.mapping,
            pinhole: self.pinhole.addr,
            pinhole_error_code,
            pinhole_error,
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
        self.pinhole_start(now);
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
        self.pinhole_shutdown(now);
        self.phase = Phase::Closing {
            until: now + CLOSE_TIMEOUT,
        };
        let Some(m) = self.mapping.take() else {
            self.close();
            return;
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
        self.pinhole_timeout(now);
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
            Phase::Closing { until } if now >= until => {
                // The pinhole's deletion is not waited for any longer either.
                self.pinhole.pending = None;
                self.close();
            }
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
            self.pinhole_timeout_at(),
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

    /// The next event of the IPv6 pinhole.
    pub fn poll_pinhole_event(&mut self) -> Option<PinholeEvent> {
        self.pinhole.events.pop_front()
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

    /// The IPv4 side is done closing; closed once the pinhole's deletion is answered too.
    fn close(&mut self) {
        self.pmp = None;
        self.pcp = None;
        self.upnp.http = None;
        self.mapping = None;
        self.v4_closed = true;
        if self.pinhole.pending.is_some() && matches!(self.phase, Phase::Closing { .. }) {
            return;
        }
        self.phase = Phase::Closed;
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
