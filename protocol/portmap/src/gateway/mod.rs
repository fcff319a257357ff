//! A home router's port-mapping service as a sans-IO model: it answers NAT-PMP, PCP and UPnP
//! IGD (v1 or v2) with a router's quirks, and keeps the mapping table its NAT applies. The
//! simulator's NAT boxes run it, and the client's tests talk to it; the real thing is
//! miniupnpd in the lab.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::{pcp, pmp, Protocol, TransportProtocol};

mod pcp_service;
mod pmp_service;
mod upnp_service;

/// The port the model's UPnP HTTP server listens on (miniupnpd's usual choice).
pub const DEFAULT_HTTP_PORT: u16 = 5000;
/// The control path of the model's WAN service.
const CONTROL_PATH: &str = "/ctl/IPConn";
const DESCRIPTION_PATH: &str = "/rootDesc.xml";

/// What the modelled router offers, and how it misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The router's address on the LAN (where clients send).
    pub lan_ip: Ipv4Addr,
    /// Its external address (private for a double NAT).
    pub external_ip: Ipv4Addr,
    /// Answers NAT-PMP.
    pub pmp: bool,
    /// Answers PCP.
    pub pcp: bool,
    /// Answers UPnP IGD of this version (1 or 2).
    pub upnp: Option<u8>,
    /// UPnP: refuses any lease but 0 (error 725), as many older IGDs do.
    pub permanent_leases_only: bool,
    /// Refuses every mapping (NAT-PMP NOT_AUTHORIZED, PCP NOT_AUTHORIZED, UPnP 606), while
    /// still answering the probes: a router whose owner turned mapping off.
    pub deny: bool,
    /// UPnP: answers discovery and queries but fails every AddPortMapping with this code.
    pub fail_add: Option<u16>,
    /// At most this many mappings at once.
    pub max_mappings: usize,
    /// The longest lease granted, in seconds.
    pub max_lease: u32,
    /// The UPnP HTTP server's port.
    pub http_port: u16,
    /// The router's IPv6 address on the LAN: when set (and PCP is on), it answers PCP over
    /// IPv6 and opens pinholes in its IPv6 firewall (RFC 6887 §11).
    pub lan_ip6: Option<Ipv6Addr>,
}

impl GatewayConfig {
    /// A router offering all three protocols (UPnP IGD v2), with no quirks.
    pub fn all(lan_ip: Ipv4Addr, external_ip: Ipv4Addr) -> Self {
        GatewayConfig {
            lan_ip,
            external_ip,
            pmp: true,
            pcp: true,
            upnp: Some(2),
            permanent_leases_only: false,
            deny: false,
            fail_add: None,
            max_mappings: 128,
            max_lease: 86_400,
            http_port: DEFAULT_HTTP_PORT,
            lan_ip6: None,
        }
    }

    /// A router offering none of them.
    pub fn none(lan_ip: Ipv4Addr, external_ip: Ipv4Addr) -> Self {
        GatewayConfig {
            pmp: false,
            pcp: false,
            upnp: None,
            ..GatewayConfig::all(lan_ip, external_ip)
        }
    }
}

/// One entry of the router's mapping table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayMapping {
    /// UDP or TCP.
    pub protocol: TransportProtocol,
    /// The client and its port.
    pub internal: SocketAddrV4,
    /// The external port.
    pub external_port: u16,
    /// When it lapses (`None`: permanent).
    pub expires: Option<Instant>,
    /// Made with.
    pub via: Protocol,
    /// PCP's nonce (only its owner may renew or delete it).
    pub nonce: Option<[u8; 12]>,
}

/// One pinhole in the router's IPv6 firewall: inbound packets to `internal` pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayPinhole {
    /// UDP or TCP.
    pub protocol: TransportProtocol,
    /// The client's address and port (also the external ones: no NAT66).
    pub internal: SocketAddrV6,
    /// When it lapses.
    pub expires: Instant,
    /// PCP's nonce (only its owner may renew or delete it).
    pub nonce: [u8; 12],
}

/// The modelled router: see the module's documentation.
#[derive(Debug)]
pub struct Gateway {
    config: GatewayConfig,
    epoch_start: Instant,
    mappings: BTreeMap<(TransportProtocol, u16), GatewayMapping>,
    pinholes: BTreeMap<(TransportProtocol, SocketAddrV6), GatewayPinhole>,
    rng: ChaCha20Rng,
}

impl Gateway {
    /// A router that booted at `now`.
    pub fn new(config: GatewayConfig, now: Instant, seed: u64) -> Self {
        Gateway {
            config,
            epoch_start: now,
            mappings: BTreeMap::new(),
            pinholes: BTreeMap::new(),
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The uplink got another external address (mappings keep their ports).
    pub fn set_external_ip(&mut self, ip: Ipv4Addr) {
        self.config.external_ip = ip;
    }

    /// Reboots: every mapping is forgotten and the epoch starts again.
    pub fn reboot(&mut self, now: Instant) {
        self.mappings.clear();
        self.pinholes.clear();
        self.epoch_start = now;
    }

    /// The live mappings.
    pub fn mappings(&self, now: Instant) -> impl Iterator<Item = &GatewayMapping> {
        self.mappings
            .values()
            .filter(move |m| m.expires.is_none_or(|t| now < t))
    }

    /// Where an inbound packet to `external_port` goes, if a live mapping takes it.
    pub fn inbound(
        &self,
        now: Instant,
        protocol: TransportProtocol,
        external_port: u16,
    ) -> Option<SocketAddrV4> {
        self.mappings
            .get(&(protocol, external_port))
            .filter(|m| m.expires.is_none_or(|t| now < t))
            .map(|m| m.internal)
    }

    /// The external port of a live mapping for `internal` (the NAT sends its outbound
    /// packets from there, so the mapping works both ways).
    pub fn outbound(
        &self,
        now: Instant,
        protocol: TransportProtocol,
        internal: SocketAddrV4,
    ) -> Option<u16> {
        self.mappings(now)
            .find(|m| m.protocol == protocol && m.internal == internal)
            .map(|m| m.external_port)
    }

    /// The live IPv6 pinholes.
    pub fn pinholes(&self, now: Instant) -> impl Iterator<Item = &GatewayPinhole> {
        self.pinholes.values().filter(move |p| now < p.expires)
    }

    /// Whether the IPv6 firewall lets an inbound packet to `dst` through (a live pinhole).
    pub fn inbound6(&self, now: Instant, protocol: TransportProtocol, dst: SocketAddrV6) -> bool {
        self.pinholes
            .get(&(protocol, dst))
            .is_some_and(|p| now < p.expires)
    }

    pub(super) fn epoch(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch_start).as_secs()).unwrap_or(u32::MAX)
    }

    fn expire(&mut self, now: Instant) {
        self.mappings
            .retain(|_, m| m.expires.is_none_or(|t| now < t));
    }

    /// A datagram from `from` to the router's `port` (5351: NAT-PMP and PCP; 1900: SSDP);
    /// the answer to send back to `from`, if any.
    pub fn handle_udp(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        port: u16,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        self.expire(now);
        match port {
            pmp::SERVER_PORT => match data.first() {
                Some(&pmp::VERSION) => self.handle_pmp(now, from, data),
                Some(&pcp::VERSION) => self.handle_pcp(now, from, data),
                _ => None,
            },
            1900 => self.handle_ssdp(data),
            _ => None,
        }
    }

    /// A datagram over IPv6 from `from` to the router's `port`: PCP on 5351 when
    /// [`GatewayConfig::lan_ip6`] is set, MAP opening pinholes; the answer to send back.
    pub fn handle_udp6(
        &mut self,
        now: Instant,
        from: SocketAddrV6,
        port: u16,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        self.config.lan_ip6?;
        if port != pmp::SERVER_PORT || !self.config.pcp || data.first() != Some(&pcp::VERSION) {
            return None;
        }
        self.pinholes.retain(|_, p| now < p.expires);
        self.handle_pcp6(now, from, data)
    }

    // ---- the table ----

    pub(super) fn remove_for(&mut self, protocol: TransportProtocol, internal: SocketAddrV4) {
        self.mappings
            .retain(|_, m| !(m.protocol == protocol && m.internal == internal));
    }

    /// Adds or refreshes `internal`'s mapping; its external port. `exact`: the suggested port
    /// or nothing.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add(
        &mut self,
        now: Instant,
        protocol: TransportProtocol,
        internal: SocketAddrV4,
        suggested: u16,
        lease: Option<u32>,
        via: Protocol,
        nonce: Option<[u8; 12]>,
        exact: bool,
    ) -> Result<u16, AddError> {
        let expires = lease.map(|s| now + Duration::from_secs(u64::from(s)));
        // A refresh of the client's own mapping keeps its port.
        let own = self
            .mappings
            .values()
            .find(|m| m.protocol == protocol && m.internal == internal)
            .map(|m| m.external_port);
        let port = match own {
            Some(p) if !exact || p == suggested || suggested == 0 => p,
            _ => {
                let free = |g: &Self, p: u16| p != 0 && !g.mappings.contains_key(&(protocol, p));
                if own.is_none() && self.mappings.len() >= self.config.max_mappings {
                    return Err(AddError::Full);
                }
                if free(self, suggested) {
                    suggested
                } else if exact {
                    return Err(AddError::Taken);
                } else {
                    let mut p = 0;
                    for _ in 0..64 {
                        let c = 1024 + (self.rng.next_u32() % (65535 - 1024)) as u16;
                        if free(self, c) {
                            p = c;
                            break;
                        }
                    }
                    if p == 0 {
                        return Err(AddError::Full);
                    }
                    p
                }
            }
        };
        if let Some(old) = own.filter(|&o| o != port) {
            self.mappings.remove(&(protocol, old));
        }
        self.mappings.insert(
            (protocol, port),
            GatewayMapping {
                protocol,
                internal,
                external_port: port,
                expires,
                via,
                nonce,
            },
        );
        Ok(port)
    }
}

/// Why the table took no mapping.
pub(super) enum AddError {
    Taken,
    Full,
}
