//! The translation and filtering logic of a NAT or stateful firewall, in RFC 4787 terms.
//! Pure: time and randomness come in, so its properties are tested directly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// What a mapping (or a filter) depends on besides the internal endpoint (RFC 4787 §4.1, §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dependence {
    /// The same for every remote endpoint.
    EndpointIndependent,
    /// Depends on the remote IP.
    AddressDependent,
    /// Depends on the remote IP and port.
    AddressAndPortDependent,
}

impl Dependence {
    /// The RFC 4787 words, as netcheck reports them: "endpoint-independent", ….
    pub const fn as_str(self) -> &'static str {
        match self {
            Dependence::EndpointIndependent => "endpoint-independent",
            Dependence::AddressDependent => "address-dependent",
            Dependence::AddressAndPortDependent => "address-and-port-dependent",
        }
    }
}

/// How external ports are chosen for new mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PortAllocation {
    /// Keep the internal port if it is free, else pick at random.
    PreserveIfFree,
    /// Each new mapping takes the previous port plus `stride`.
    Sequential {
        /// Step between consecutive mappings.
        stride: u16,
    },
    /// Uniformly at random among free ports of the range.
    Random,
}

/// Which traffic keeps a mapping alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refresh {
    /// Only packets from inside (RFC 4787 REQ-6 allows this).
    Outbound,
    /// Packets in either direction.
    Both,
}

/// A NAT's or firewall's behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatConfig {
    /// Translate addresses (a NAT); false = stateful firewall keeping addresses as they are.
    #[serde(default = "yes")]
    pub translate: bool,
    /// Mapping behaviour.
    pub mapping: Dependence,
    /// Filtering behaviour for inbound packets.
    pub filtering: Dependence,
    /// Port allocation for new mappings.
    pub allocation: PortAllocation,
    /// Lowest external port handed out.
    #[serde(default = "low_port")]
    pub port_low: u16,
    /// Highest external port handed out.
    #[serde(default = "high_port")]
    pub port_high: u16,
    /// Idle time before a UDP session is forgotten (~30 s: Tailscale, "How NAT traversal works").
    #[serde(default = "thirty_seconds", with = "secs")]
    pub timeout: Duration,
    /// Which traffic refreshes a session.
    #[serde(default = "outbound")]
    pub refresh: Refresh,
    /// Session table size; new flows beyond it are dropped and counted.
    #[serde(default)]
    pub capacity: Option<usize>,
    /// Deliver packets sent to the NAT's own public address back inside.
    #[serde(default)]
    pub hairpin: bool,
    /// Drop all UDP.
    #[serde(default)]
    pub block_udp: bool,
    /// New mappings per second made by other hosts behind this box: each takes the next port
    /// of a sequential allocator, so the counter moves between a node's own mappings (the
    /// office's other traffic). Zero by default.
    #[serde(default)]
    pub background: f64,
    /// The box's port-mapping service for the hosts behind it (the innermost box of a chain
    /// is their gateway); none by default.
    #[serde(default)]
    pub gateway: Option<GatewayModel>,
}

/// A box's port-mapping service: which protocols it answers, and its quirks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayModel {
    /// Answers NAT-PMP.
    #[serde(default)]
    pub pmp: bool,
    /// Answers PCP.
    #[serde(default)]
    pub pcp: bool,
    /// Answers UPnP IGD of this version (1 or 2).
    #[serde(default)]
    pub upnp: Option<u8>,
    /// UPnP takes permanent leases only (error 725 otherwise).
    #[serde(default)]
    pub permanent_leases_only: bool,
    /// Answers the probes but refuses every mapping.
    #[serde(default)]
    pub deny: bool,
    /// UPnP answers discovery but fails every AddPortMapping with this error code.
    #[serde(default)]
    pub fail_add: Option<u16>,
    /// At most this many mappings at once.
    #[serde(default = "max_mappings")]
    pub max_mappings: usize,
}

fn max_mappings() -> usize {
    128
}

impl GatewayModel {
    /// Answers the given protocols, with no quirks.
    pub fn new(pmp: bool, pcp: bool, upnp: Option<u8>) -> Self {
        GatewayModel {
            pmp,
            pcp,
            upnp,
            permanent_leases_only: false,
            deny: false,
            fail_add: None,
            max_mappings: max_mappings(),
        }
    }

    /// The port-mapping gateway's settings for a box at `lan_ip` whose outside is `external_ip`.
    pub fn config(
        &self,
        lan_ip: std::net::Ipv4Addr,
        external_ip: std::net::Ipv4Addr,
    ) -> burrow_portmap::gateway::GatewayConfig {
        burrow_portmap::gateway::GatewayConfig {
            pmp: self.pmp,
            pcp: self.pcp,
            upnp: self.upnp,
            permanent_leases_only: self.permanent_leases_only,
            deny: self.deny,
            fail_add: self.fail_add,
            max_mappings: self.max_mappings,
            ..burrow_portmap::gateway::GatewayConfig::all(lan_ip, external_ip)
        }
    }
}

fn yes() -> bool {
    true
}
fn low_port() -> u16 {
    1024
}
fn high_port() -> u16 {
    65535
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn outbound() -> Refresh {
    Refresh::Outbound
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        if !(v.is_finite() && v > 0.0) {
            return Err(serde::de::Error::custom(
                "timeout must be a positive number of seconds",
            ));
        }
        Ok(Duration::from_secs_f64(v))
    }
}

/// Why a packet did not get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Drop {
    /// UDP is blocked outright.
    Blocked,
    /// The session table is full.
    TableFull,
    /// No external port is free.
    NoPorts,
    /// Inbound to a port with no live mapping.
    NoMapping,
    /// Inbound from an endpoint the filter does not admit.
    Filtered,
}

/// Counters a box reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NatStats {
    /// Live sessions now.
    pub sessions: usize,
    /// Most sessions alive at once.
    pub peak_sessions: usize,
    /// Mappings created.
    pub mappings_created: u64,
    /// Sessions that timed out.
    pub sessions_expired: u64,
    /// New flows dropped because the table was full.
    pub dropped_table_full: u64,
    /// Inbound packets dropped by the filter.
    pub dropped_filtered: u64,
    /// Inbound packets to no live mapping.
    pub dropped_no_mapping: u64,
    /// Packets dropped because UDP is blocked.
    pub dropped_blocked: u64,
    /// New mappings refused for lack of ports.
    pub dropped_no_ports: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Any,
    Ip(IpAddr),
    IpPort(SocketAddr),
}

#[derive(Debug, Clone)]
struct Mapping {
    internal: SocketAddr,
    key: Key,
    permanent: bool,
    /// Remote endpoint → last activity.
    sessions: BTreeMap<SocketAddr, Instant>,
    /// No session here expires before this (a lower bound: refreshes only push expiry later),
    /// so lookups skip the scan until then.
    due: Option<Instant>,
}

impl Mapping {
    /// Records activity with `remote` at `now`; true when the session is new.
    fn touch(&mut self, remote: SocketAddr, now: Instant, timeout: Duration) -> bool {
        // A refresh only moves expiry later, so an existing bound stays a bound.
        self.due.get_or_insert(now + timeout);
        self.sessions.insert(remote, now).is_none()
    }

    /// Drops sessions idle for `timeout`; returns how many went.
    fn expire_sessions(&mut self, now: Instant, timeout: Duration) -> usize {
        if self.due.is_some_and(|d| now < d) {
            return 0;
        }
        let before = self.sessions.len();
        self.sessions
            .retain(|_, last| now.saturating_duration_since(*last) < timeout);
        self.due = self.sessions.values().map(|&last| last + timeout).min();
        before - self.sessions.len()
    }
}

/// The state of one NAT or firewall.
#[derive(Debug)]
pub struct NatTable {
    config: NatConfig,
    rng: ChaCha20Rng,
    mappings: BTreeMap<u16, Mapping>,
    by_key: BTreeMap<(SocketAddr, Key), u16>,
    next_sequential: Option<u16>,
    /// When the sequential counter last moved (other hosts' mappings are drawn since then).
    last_allocation: Option<Instant>,
    sessions: usize,
    stats: NatStats,
    closed: Vec<u16>,
    /// Ports forwarded by the box's port-mapping service (see [`NatTable::set_forwards`]).
    forwards: BTreeMap<u16, SocketAddr>,
    /// Mappings by the time their earliest session may expire (each mapping's current `due`
    /// has an entry; entries left behind by a rescan or a closed mapping are skipped), so a
    /// sweep visits only mappings with something to expire.
    expiry: BinaryHeap<Reverse<(Instant, u16)>>,
}

impl NatTable {
    /// An empty table.
    pub fn new(config: NatConfig, rng: ChaCha20Rng) -> Self {
        NatTable {
            config,
            rng,
            mappings: BTreeMap::new(),
            by_key: BTreeMap::new(),
            next_sequential: None,
            last_allocation: None,
            sessions: 0,
            stats: NatStats::default(),
            closed: Vec::new(),
            forwards: BTreeMap::new(),
            expiry: BinaryHeap::new(),
        }
    }

    /// Makes the box's forwarded ports exactly `forwards` (external port → internal endpoint),
    /// as its port-mapping service's table says: each a permanent, endpoint-independent,
    /// unfiltered mapping, which the internal endpoint's own packets leave from too (RFC 6886
    /// and RFC 6887 mappings). (miniupnpd on nftables forwards inbound only; the lab runs the
    /// real one.)
    pub fn set_forwards(&mut self, forwards: &BTreeMap<u16, SocketAddr>) {
        if *forwards == self.forwards {
            return;
        }
        for (port, internal) in std::mem::take(&mut self.forwards) {
            if forwards.get(&port) != Some(&internal) {
                if let Some(m) = self.mappings.remove(&port) {
                    self.sessions -= m.sessions.len();
                    self.by_key.retain(|_, p| *p != port);
                    self.closed.push(port);
                }
            }
        }
        for (&port, &internal) in forwards {
            let ours = self
                .mappings
                .get(&port)
                .is_some_and(|m| m.permanent && m.internal == internal);
            if ours || self.add_static(internal, port) {
                self.forwards.insert(port, internal);
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> NatStats {
        NatStats {
            sessions: self.sessions,
            ..self.stats
        }
    }

    /// External ports whose mappings have gone since the last call (their sockets can close).
    pub fn take_closed(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.closed)
    }

    /// External ports with a mapping right now.
    pub fn external_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.mappings.keys().copied()
    }

    fn key(&self, remote: SocketAddr) -> Key {
        match self.config.mapping {
            Dependence::EndpointIndependent => Key::Any,
            Dependence::AddressDependent => Key::Ip(remote.ip()),
            Dependence::AddressAndPortDependent => Key::IpPort(remote),
        }
    }

    /// A permanent, unfiltered mapping (a static port forward / an extra public address).
    pub fn add_static(&mut self, internal: SocketAddr, external_port: u16) -> bool {
        if self.mappings.contains_key(&external_port) {
            return false;
        }
        self.mappings.insert(
            external_port,
            Mapping {
                internal,
                key: Key::Any,
                permanent: true,
                sessions: BTreeMap::new(),
                due: None,
            },
        );
        self.by_key.insert((internal, Key::Any), external_port);
        true
    }

    /// Drops sessions idle for the timeout, and mappings left without sessions.
    fn expire(&mut self, now: Instant, port: u16) -> bool {
        let timeout = self.config.timeout;
        let Some(m) = self.mappings.get_mut(&port) else {
            return false;
        };
        if m.permanent {
            return true;
        }
        let before = m.due;
        let gone = m.expire_sessions(now, timeout);
        let empty = m.sessions.is_empty();
        if let Some(due) = m.due.filter(|_| m.due != before) {
            self.expiry.push(Reverse((due, port)));
        }
        self.sessions -= gone;
        self.stats.sessions_expired += gone as u64;
        if empty {
            self.close(port);
            return false;
        }
        true
    }

    /// Removes a mapping whose last session has gone.
    fn close(&mut self, port: u16) {
        let m = self.mappings.remove(&port).expect("present");
        // The key may point at a forwarded port by now (a port mapping took it over).
        if self.by_key.get(&(m.internal, m.key)) == Some(&port) {
            self.by_key.remove(&(m.internal, m.key));
        }
        self.closed.push(port);
    }

    /// Forgets every session idle past the timeout (a NAT's periodic sweep; lookups also
    /// expire lazily, so this only matters for counting live sessions).
    pub fn expire_all(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(&Reverse((at, port))) = self.expiry.peek().filter(|e| e.0 .0 <= now) {
            self.expiry.pop();
            if self.mappings.get(&port).is_some_and(|m| m.due == Some(at)) {
                due.push(port);
            }
        }
        // In port order, as a full scan would close them.
        due.sort_unstable();
        due.dedup();
        for port in due {
            self.expire(now, port);
        }
    }

    fn allocate(&mut self, now: Instant, internal: SocketAddr) -> Option<u16> {
        let (low, high) = (
            self.config.port_low,
            self.config.port_high.max(self.config.port_low),
        );
        if !self.config.translate {
            return (!self.mappings.contains_key(&internal.port())).then_some(internal.port());
        }
        let span = (high - low) as u32 + 1;
        let free = |p: u16, m: &BTreeMap<u16, Mapping>| !m.contains_key(&p);
        match self.config.allocation {
            PortAllocation::PreserveIfFree
                if (low..=high).contains(&internal.port())
                    && free(internal.port(), &self.mappings) =>
            {
                return Some(internal.port());
            }
            PortAllocation::Sequential { stride } => {
                let stride = stride.max(1) as u32;
                let mut next = match self.next_sequential {
                    Some(n) => n as u32,
                    None => low as u32 + self.rng.next_u32() % span,
                };
                // Other hosts' mappings since the last one took the ports in between.
                let since = self
                    .last_allocation
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                self.last_allocation = Some(now);
                let others = poisson(&mut self.rng, self.config.background * since.as_secs_f64());
                next = low as u32
                    + (next - low as u32 + (others % span as u64) as u32 * stride) % span;
                for _ in 0..span {
                    let p = low as u32 + (next - low as u32) % span;
                    next = p + stride;
                    if free(p as u16, &self.mappings) {
                        self.next_sequential =
                            Some((low as u32 + (next - low as u32) % span) as u16);
                        return Some(p as u16);
                    }
                }
                return None;
            }
            _ => {}
        }
        // Random: rejection sampling, then a scan from a random start.
        for _ in 0..64 {
            let p = (low as u32 + self.rng.next_u32() % span) as u16;
            if free(p, &self.mappings) {
                return Some(p);
            }
        }
        let start = self.rng.next_u32() % span;
        (0..span)
            .map(|i| (low as u32 + (start + i) % span) as u16)
            .find(|&p| free(p, &self.mappings))
    }

    /// An outbound packet from `internal` to `remote`: returns the external port it leaves from.
    pub fn outbound(
        &mut self,
        now: Instant,
        internal: SocketAddr,
        remote: SocketAddr,
    ) -> Result<u16, Drop> {
        if self.config.block_udp {
            self.stats.dropped_blocked += 1;
            return Err(Drop::Blocked);
        }
        // A forwarded port (a port mapping) carries everything its internal endpoint sends.
        let forwarded = self
            .by_key
            .get(&(internal, Key::Any))
            .is_some_and(|p| self.forwards.contains_key(p));
        let key = if forwarded {
            Key::Any
        } else {
            self.key(remote)
        };
        let existing = self
            .by_key
            .get(&(internal, key))
            .copied()
            .filter(|&p| self.expire(now, p));
        let has_session = existing
            .and_then(|p| self.mappings.get(&p))
            .is_some_and(|m| m.sessions.contains_key(&remote));
        if !has_session && self.config.capacity.is_some_and(|cap| self.sessions >= cap) {
            self.expire_all(now);
            if self.config.capacity.is_some_and(|cap| self.sessions >= cap) {
                self.stats.dropped_table_full += 1;
                return Err(Drop::TableFull);
            }
        }
        let port = match existing.filter(|p| self.mappings.contains_key(p)) {
            Some(p) => p,
            None => {
                let Some(p) = self.allocate(now, internal) else {
                    self.stats.dropped_no_ports += 1;
                    return Err(Drop::NoPorts);
                };
                self.mappings.insert(
                    p,
                    Mapping {
                        internal,
                        key,
                        permanent: false,
                        sessions: BTreeMap::new(),
                        due: None,
                    },
                );
                self.by_key.insert((internal, key), p);
                self.stats.mappings_created += 1;
                p
            }
        };
        let timeout = self.config.timeout;
        let m = self.mappings.get_mut(&port).expect("just ensured");
        if m.due.is_none() {
            self.expiry.push(Reverse((now + timeout, port)));
        }
        if m.touch(remote, now, timeout) {
            self.sessions += 1;
            self.stats.peak_sessions = self.stats.peak_sessions.max(self.sessions);
        }
        Ok(port)
    }

    /// An inbound packet from `remote` to external port `port`: returns the internal endpoint.
    pub fn inbound(
        &mut self,
        now: Instant,
        port: u16,
        remote: SocketAddr,
    ) -> Result<SocketAddr, Drop> {
        if self.config.block_udp {
            self.stats.dropped_blocked += 1;
            return Err(Drop::Blocked);
        }
        if !self.expire(now, port) {
            self.stats.dropped_no_mapping += 1;
            return Err(Drop::NoMapping);
        }
        let timeout = self.config.timeout;
        let m = self.mappings.get_mut(&port).expect("live after expire()");
        if m.permanent {
            return Ok(m.internal);
        }
        let live = |last: &Instant| now.saturating_duration_since(*last) < timeout;
        let admitted = match self.config.filtering {
            Dependence::EndpointIndependent => true,
            Dependence::AddressDependent => m
                .sessions
                .iter()
                .any(|(r, last)| r.ip() == remote.ip() && live(last)),
            Dependence::AddressAndPortDependent => m.sessions.get(&remote).is_some_and(live),
        };
        if !admitted {
            self.stats.dropped_filtered += 1;
            return Err(Drop::Filtered);
        }
        if self.config.refresh == Refresh::Both {
            // Refresh what the packet was admitted by: its own session, or under looser
            // filtering the sessions that admitted it.
            let filtering = self.config.filtering;
            for (r, last) in m.sessions.iter_mut() {
                let matches = match filtering {
                    Dependence::EndpointIndependent => true,
                    Dependence::AddressDependent => r.ip() == remote.ip(),
                    Dependence::AddressAndPortDependent => *r == remote,
                };
                if matches && live(last) {
                    *last = now;
                }
            }
        }
        Ok(m.internal)
    }
}

/// A Poisson-distributed count with mean `mean` (Knuth's method for small means, a normal
/// approximation above 30).
fn poisson(rng: &mut ChaCha20Rng, mean: f64) -> u64 {
    if mean <= 0.0 || !mean.is_finite() {
        return 0;
    }
    let uniform = |rng: &mut ChaCha20Rng| (rng.next_u32() as f64 + 0.5) / 4_294_967_296.0;
    if mean > 30.0 {
        let (u, v) = (uniform(rng), uniform(rng));
        let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
        return (mean + mean.sqrt() * z).round().max(0.0) as u64;
    }
    let limit = (-mean).exp();
    let (mut k, mut p) = (0u64, 1.0f64);
    loop {
        p *= uniform(rng);
        if p <= limit {
            return k;
        }
        k += 1;
    }
}
