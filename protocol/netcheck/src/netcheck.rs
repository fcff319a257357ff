//! The netcheck state machine: plans STUN probes, collects answers, infers the report.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use burrow_stun::client::{Event as StunEvent, Transmit};
use burrow_stun::{
    BindingClient, BindingRequest, ChangeRequest, ClientConfig, RetransmitConfig, TransactionId,
};
use rand_chacha::ChaCha20Rng;
use thiserror::Error;

use crate::report::{
    FilteringBehavior, MappingBehavior, NatType, PortAllocation, RegionLatency, Report,
};

/// A group of STUN servers in one place; latency is reported per region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Numeric region ID.
    pub id: u32,
    /// Short code, e.g. "fra".
    pub code: String,
    /// The region's STUN servers, resolved.
    pub servers: Vec<SocketAddr>,
}

/// What netcheck needs to know about the node and the servers.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Regions to probe.
    pub regions: Vec<Region>,
    /// The bound address of the driver's IPv4 socket, or `None` for no IPv4.
    pub local_v4: Option<SocketAddr>,
    /// The bound address of the driver's IPv6 socket, or `None` for no IPv6.
    pub local_v6: Option<SocketAddr>,
    /// This host's interface addresses: a reflexive address among them means no NAT.
    pub local_ips: Vec<IpAddr>,
    /// Retransmission per probe; shorter than the RFC default so a check ends in seconds.
    pub retransmit: RetransmitConfig,
    /// Give up on whatever is still outstanding after this long.
    pub deadline: Duration,
    /// SOFTWARE for requests.
    pub software: Option<String>,
}

impl Config {
    /// Defaults for everything but the regions and sockets: probes resend at 250 and 750 ms
    /// and give up at 1.75 s; the whole check (three rounds of probes at most) ends within 6 s.
    pub fn new(
        regions: Vec<Region>,
        local_v4: Option<SocketAddr>,
        local_v6: Option<SocketAddr>,
    ) -> Self {
        Config {
            regions,
            local_v4,
            local_v6,
            local_ips: Vec::new(),
            retransmit: RetransmitConfig {
                rto: Duration::from_millis(250),
                max_requests: 3,
                last_wait_multiplier: 4,
            },
            deadline: Duration::from_secs(6),
            software: None,
        }
    }
}

/// Errors from [`Netcheck`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// `start` was called twice.
    #[error("netcheck already started")]
    AlreadyStarted,
    /// There is nothing to probe for the sockets given.
    #[error("no STUN server reachable with the configured address families")]
    NoServers,
    /// The datagram was not a response to one of our probes.
    #[error("not a netcheck response: {0}")]
    Stun(#[from] burrow_stun::client::ClientError),
}

/// Something netcheck reports to its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The check is over.
    Report(Report),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    /// Plain Binding request to a configured server.
    Basic { region: usize },
    /// RFC 5780 filtering test II: change IP and port.
    FilterChangeBoth,
    /// RFC 5780 filtering test III: change port.
    FilterChangePort,
    /// RFC 5780 mapping test II: alternate IP, primary port.
    MappingAltIp,
    /// RFC 5780 mapping test III: alternate IP and port.
    MappingAltIpPort,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    kind: ProbeKind,
    dst: SocketAddr,
    seq: u32,
}

#[derive(Debug, Clone, Copy)]
struct Answer {
    kind: ProbeKind,
    dst: SocketAddr,
    seq: u32,
    mapped: SocketAddr,
    rtt: Option<Duration>,
}

/// How one RFC 5780 filtering probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A success response, from this address.
    Answered(SocketAddr),
    /// Nothing within the retransmission schedule: the NAT filtered the answer.
    NoAnswer,
    /// An error response: the server refused the test, which proves nothing about filtering.
    Refused,
}

/// The RFC 5780 behaviour tests run against the first server that offers OTHER-ADDRESS.
#[derive(Debug, Clone, Copy)]
struct BehaviourTest {
    primary: SocketAddr,
    other: SocketAddr,
    first_mapped: SocketAddr,
    filter_both: Option<Outcome>,
    filter_port: Option<Outcome>,
    mapping_started: bool,
    alt_ip: Option<Option<SocketAddr>>,
    alt_ip_port: Option<Option<SocketAddr>>,
}

/// One network check. Create, [`start`](Self::start), then drive like any burrow state machine
/// until [`poll_event`](Self::poll_event) yields [`Event::Report`].
#[derive(Debug)]
pub struct Netcheck {
    config: Config,
    client: BindingClient,
    probes: BTreeMap<TransactionId, Probe>,
    answers: Vec<Answer>,
    behaviour: Option<BehaviourTest>,
    first_round: Vec<SocketAddr>,
    next_seq: u32,
    deadline: Option<Instant>,
    done: bool,
    events: VecDeque<Event>,
}

impl Netcheck {
    /// A check with its own seeded random source (transaction IDs).
    pub fn new(config: Config, rng: ChaCha20Rng) -> Self {
        let client = BindingClient::new(
            ClientConfig {
                retransmit: config.retransmit,
                software: config.software.clone(),
                fingerprint: true,
            },
            rng,
        );
        Netcheck {
            config,
            client,
            probes: BTreeMap::new(),
            answers: Vec::new(),
            behaviour: None,
            first_round: Vec::new(),
            next_seq: 0,
            deadline: None,
            done: false,
            events: VecDeque::new(),
        }
    }

    /// Sends the first probe to every server of every region, over each family with a socket.
    pub fn start(&mut self, now: Instant) -> Result<(), Error> {
        if self.deadline.is_some() {
            return Err(Error::AlreadyStarted);
        }
        self.deadline = Some(now + self.config.deadline);
        let mut planned = Vec::new();
        for (i, region) in self.config.regions.iter().enumerate() {
            for &server in &region.servers {
                let usable = match server {
                    SocketAddr::V4(_) => self.config.local_v4.is_some(),
                    SocketAddr::V6(_) => self.config.local_v6.is_some(),
                };
                if usable && !planned.iter().any(|&(_, s)| s == server) {
                    planned.push((i, server));
                }
            }
        }
        if planned.is_empty() {
            return Err(Error::NoServers);
        }
        self.first_round = planned.iter().map(|&(_, s)| s).collect();
        for (region, server) in planned {
            self.probe(now, ProbeKind::Basic { region }, server, None);
        }
        Ok(())
    }

    fn probe(
        &mut self,
        now: Instant,
        kind: ProbeKind,
        dst: SocketAddr,
        change: Option<ChangeRequest>,
    ) {
        let id = self.client.start(
            now,
            BindingRequest {
                server: dst,
                change_request: change,
            },
        );
        self.probes.insert(
            id,
            Probe {
                kind,
                dst,
                seq: self.next_seq,
            },
        );
        self.next_seq += 1;
    }

    /// Offers a datagram received on one of the driver's sockets.
    pub fn handle_input(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), Error> {
        let r = self.client.handle_input(now, from, datagram);
        self.process(now);
        Ok(r?)
    }

    /// Retransmits, times out probes, and ends the check at its deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.client.handle_timeout(now);
        self.process(now);
        if !self.done && self.deadline.is_some_and(|d| now >= d) {
            self.finish();
        }
    }

    /// The next datagram to send; send it from the socket of `dst`'s family.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.client.poll_transmit()
    }

    /// The report, once.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run; `None` once done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        match (self.client.poll_timeout(), self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the report has been produced.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn process(&mut self, now: Instant) {
        while let Some(ev) = self.client.poll_event() {
            let (id, answer, outcome) = match ev {
                StunEvent::Success(r) => (r.id, Some(r), Outcome::Answered(r.received_from)),
                StunEvent::ErrorResponse { id, .. } => (id, None, Outcome::Refused),
                StunEvent::TimedOut { id, .. } => (id, None, Outcome::NoAnswer),
            };
            let Some(probe) = self.probes.remove(&id) else {
                continue;
            };
            if let Some(r) = &answer {
                self.answers.push(Answer {
                    kind: probe.kind,
                    dst: probe.dst,
                    seq: probe.seq,
                    mapped: r.mapped,
                    rtt: r.rtt,
                });
            }
            let mapped = answer.as_ref().map(|r| r.mapped);
            match probe.kind {
                ProbeKind::Basic { .. } => {
                    if let (None, Some(r)) = (&self.behaviour, &answer) {
                        // A usable server has a distinct alternate IP and port, and the first
                        // round sent nothing to the addresses its answers would come from
                        // (that would have opened the NAT's filter ahead of the test).
                        let first_round = &self.first_round;
                        if let Some(other) = r.other_address.filter(|o| {
                            o.is_ipv4() == probe.dst.is_ipv4()
                                && o.ip() != probe.dst.ip()
                                && o.port() != probe.dst.port()
                                && !first_round.iter().any(|d| {
                                    d.ip() == o.ip()
                                        || (d.ip() == probe.dst.ip() && d.port() == o.port())
                                })
                        }) {
                            self.behaviour = Some(BehaviourTest {
                                primary: probe.dst,
                                other,
                                first_mapped: r.mapped,
                                filter_both: None,
                                filter_port: None,
                                mapping_started: false,
                                alt_ip: None,
                                alt_ip_port: None,
                            });
                            // Filtering first, before any packet goes to the alternate address.
                            self.probe(
                                now,
                                ProbeKind::FilterChangeBoth,
                                probe.dst,
                                Some(ChangeRequest::IP_AND_PORT),
                            );
                            self.probe(
                                now,
                                ProbeKind::FilterChangePort,
                                probe.dst,
                                Some(ChangeRequest::PORT),
                            );
                        }
                    }
                }
                ProbeKind::FilterChangeBoth => {
                    if let Some(b) = &mut self.behaviour {
                        b.filter_both = Some(outcome);
                    }
                }
                ProbeKind::FilterChangePort => {
                    if let Some(b) = &mut self.behaviour {
                        b.filter_port = Some(outcome);
                    }
                }
                ProbeKind::MappingAltIp => {
                    if let Some(b) = &mut self.behaviour {
                        b.alt_ip = Some(mapped);
                    }
                }
                ProbeKind::MappingAltIpPort => {
                    if let Some(b) = &mut self.behaviour {
                        b.alt_ip_port = Some(mapped);
                    }
                }
            }
            if let Some(b) = self.behaviour {
                // Packets to the alternate IP would open the filter for the change-both answer,
                // so the mapping test waits for it; the change-port answer is unaffected.
                if !b.mapping_started && b.filter_both.is_some() {
                    if let Some(b) = &mut self.behaviour {
                        b.mapping_started = true;
                    }
                    let alt_ip = SocketAddr::new(b.other.ip(), b.primary.port());
                    self.probe(now, ProbeKind::MappingAltIp, alt_ip, None);
                    self.probe(now, ProbeKind::MappingAltIpPort, b.other, None);
                }
            }
        }
        if !self.done && self.deadline.is_some() && self.probes.is_empty() {
            self.finish();
        }
    }

    fn finish(&mut self) {
        for id in core::mem::take(&mut self.probes).into_keys() {
            self.client.cancel(id);
        }
        self.done = true;
        let report = self.build_report();
        self.events.push_back(Event::Report(report));
    }

    fn build_report(&self) -> Report {
        let mut answers = self.answers.clone();
        answers.sort_by_key(|a| a.seq);
        let v4: Vec<&Answer> = answers.iter().filter(|a| a.dst.is_ipv4()).collect();
        let v6: Vec<&Answer> = answers.iter().filter(|a| a.dst.is_ipv6()).collect();
        let global_v4 = most_common(&v4);
        let global_v6 = most_common(&v6);

        let varies = |set: &[&Answer]| -> Option<bool> {
            let mut per_ip: BTreeMap<IpAddr, SocketAddr> = BTreeMap::new();
            for a in set {
                per_ip.entry(a.dst.ip()).or_insert(a.mapped);
            }
            if per_ip.len() < 2 {
                return None;
            }
            let first = *per_ip.values().next().expect("two entries");
            Some(per_ip.values().any(|m| *m != first))
        };
        let mapping_varies_by_dest_ip = varies(&v4).or_else(|| varies(&v6));

        let (mapping, filtering) = match &self.behaviour {
            None => (MappingBehavior::Unknown, FilteringBehavior::Unknown),
            Some(b) => {
                // An answer counts only if it came from where the CHANGE-REQUEST asked;
                // a server that ignores CHANGE-REQUEST proves nothing.
                let from_port_change = SocketAddr::new(b.primary.ip(), b.other.port());
                let filtering = match (b.filter_both, b.filter_port) {
                    (Some(Outcome::Answered(f)), _) if f == b.other => {
                        FilteringBehavior::EndpointIndependent
                    }
                    (Some(Outcome::NoAnswer), Some(Outcome::Answered(f)))
                        if f == from_port_change =>
                    {
                        FilteringBehavior::AddressDependent
                    }
                    (Some(Outcome::NoAnswer), Some(Outcome::NoAnswer)) => {
                        FilteringBehavior::AddressAndPortDependent
                    }
                    _ => FilteringBehavior::Unknown,
                };
                let mapping = match (b.alt_ip, b.alt_ip_port) {
                    (Some(Some(m2)), _) if m2 == b.first_mapped => {
                        MappingBehavior::EndpointIndependent
                    }
                    (Some(Some(m2)), Some(Some(m3))) if m2 == m3 => {
                        MappingBehavior::AddressDependent
                    }
                    (Some(Some(_)), Some(Some(_))) => MappingBehavior::AddressAndPortDependent,
                    _ => MappingBehavior::Unknown,
                };
                (mapping, filtering)
            }
        };
        let mapping_varies_by_dest_ip = mapping_varies_by_dest_ip.or(match mapping {
            MappingBehavior::EndpointIndependent => Some(false),
            MappingBehavior::AddressDependent | MappingBehavior::AddressAndPortDependent => {
                Some(true)
            }
            MappingBehavior::Unknown => None,
        });

        let port_allocation = if v4.is_empty() {
            port_allocation(&v6, self.config.local_v6)
        } else {
            port_allocation(&v4, self.config.local_v4)
        };

        let mut region_latency = Vec::new();
        for (i, region) in self.config.regions.iter().enumerate() {
            let best = |v6: bool| {
                answers
                    .iter()
                    .filter(|a| a.kind == ProbeKind::Basic { region: i } && a.dst.is_ipv6() == v6)
                    .filter_map(|a| a.rtt)
                    .min()
                    .map(|d| d.as_secs_f64() * 1000.0)
            };
            let (v4_ms, v6_ms) = (best(false), best(true));
            let latency_ms = match (v4_ms, v6_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            region_latency.push(RegionLatency {
                id: region.id,
                code: region.code.clone(),
                v4_ms,
                v6_ms,
                latency_ms,
            });
        }
        let preferred_region = region_latency
            .iter()
            .filter_map(|r| r.latency_ms.map(|l| (l, r.id)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, id)| id);

        let udp = !answers.is_empty();
        let is_local =
            |a: Option<SocketAddr>| a.is_some_and(|a| self.config.local_ips.contains(&a.ip()));
        let nat_type = if !udp {
            NatType::UdpBlocked
        } else if (global_v4.is_some() && is_local(global_v4))
            || (global_v4.is_none() && is_local(global_v6))
        {
            NatType::None
        } else {
            match mapping_varies_by_dest_ip {
                Some(false) => NatType::Easy,
                Some(true) => NatType::Hard,
                None => NatType::Unknown,
            }
        };

        Report {
            udp,
            ipv4: !v4.is_empty(),
            ipv6: !v6.is_empty(),
            global_v4,
            global_v6,
            mapping_varies_by_dest_ip,
            mapping,
            filtering,
            port_allocation,
            region_latency,
            preferred_region,
            port_mapping: None,
            nat_type,
        }
    }
}

/// The reflexive address seen most often (the first seen among equals).
fn most_common(set: &[&Answer]) -> Option<SocketAddr> {
    let mut best: Option<(SocketAddr, usize)> = None;
    for a in set {
        let n = set.iter().filter(|b| b.mapped == a.mapped).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((a.mapped, n));
        }
    }
    best.map(|(a, _)| a)
}

/// Largest step between consecutive mappings still taken as sequential allocation
/// (other flows on the same NAT take ports in between).
const MAX_SEQUENTIAL_STEP: i32 = 64;

/// Infers port allocation from mappings to distinct destinations, in the order probes were sent.
fn port_allocation(set: &[&Answer], local: Option<SocketAddr>) -> PortAllocation {
    // One sample per destination, in send order.
    let mut ports: Vec<u16> = Vec::new();
    let mut seen: Vec<SocketAddr> = Vec::new();
    for a in set {
        if !seen.contains(&a.dst) {
            seen.push(a.dst);
            ports.push(a.mapped.port());
        }
    }
    let Some(&first) = ports.first() else {
        return PortAllocation::Unknown;
    };
    let local_port = local.map(|l| l.port()).filter(|&p| p != 0);
    if ports.iter().all(|&p| p == first) {
        return if local_port == Some(first) {
            PortAllocation::Preserving
        } else {
            PortAllocation::Unknown
        };
    }
    let mut distinct = ports.clone();
    distinct.dedup();
    let deltas: Vec<i32> = distinct
        .windows(2)
        .map(|w| w[1] as i32 - w[0] as i32)
        .collect();
    let same_sign = deltas.iter().all(|d| d.signum() == deltas[0].signum());
    let small = deltas.iter().all(|d| d.abs() <= MAX_SEQUENTIAL_STEP);
    if same_sign && small {
        let delta = *deltas
            .iter()
            .min_by_key(|d| d.abs())
            .expect("at least one delta");
        PortAllocation::Sequential { delta }
    } else {
        PortAllocation::Random
    }
}
