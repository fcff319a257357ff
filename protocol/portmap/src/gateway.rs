//! A home router's port-mapping service as a sans-IO model: it answers NAT-PMP, PCP and UPnP
//! IGD (v1 or v2) with a router's quirks, and keeps the mapping table its NAT applies. The
//! simulator's NAT boxes run it, and the client's tests talk to it; the real thing is
//! miniupnpd in the lab.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::upnp::soap::error_code;
use crate::upnp::{self, Action, ActionResponse, HttpUrl, ServiceKind};
use crate::{pcp, pmp, Protocol, TransportProtocol};

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

    fn epoch(&self, now: Instant) -> u32 {
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
        let epoch = self.epoch(now);
        let answer = |opcode, result, lifetime, map| {
            pcp::Response {
                opcode,
                result,
                lifetime,
                epoch,
                map,
                options: Vec::new(),
                other_body: Vec::new(),
            }
            .to_bytes()
        };
        let request = match pcp::Request::decode(data) {
            Ok(r) => r,
            Err(pcp::PcpError::TooShort { .. } | pcp::PcpError::Length(_)) => return None,
            Err(_) => {
                let op = pcp::Opcode::from_code(data.get(1).copied().unwrap_or(0));
                return Some(answer(op, pcp::ResultCode::MalformedRequest, 0, None));
            }
        };
        let refuse = |result, body| Some(answer(pcp::Opcode::Map, result, 0, body));
        if request.client_ip != IpAddr::V6(*from.ip()) {
            return Some(answer(
                request.opcode,
                pcp::ResultCode::AddressMismatch,
                0,
                request.map,
            ));
        }
        match request.opcode {
            pcp::Opcode::Announce => Some(answer(
                pcp::Opcode::Announce,
                pcp::ResultCode::Success,
                0,
                None,
            )),
            pcp::Opcode::Map => {
                let body = request.map?;
                let protocol = match body.protocol {
                    pcp::PROTOCOL_UDP => TransportProtocol::Udp,
                    pcp::PROTOCOL_TCP => TransportProtocol::Tcp,
                    _ => return refuse(pcp::ResultCode::UnsupportedProtocol, Some(body)),
                };
                let third_party = request
                    .options
                    .iter()
                    .any(|o| matches!(o, pcp::PcpOption::ThirdParty(_)));
                if self.config.deny || third_party {
                    return refuse(pcp::ResultCode::NotAuthorized, Some(body));
                }
                let internal = SocketAddrV6::new(*from.ip(), body.internal_port, 0, 0);
                let key = (protocol, internal);
                if self
                    .pinholes
                    .get(&key)
                    .is_some_and(|p| p.nonce != body.nonce)
                {
                    return refuse(pcp::ResultCode::NotAuthorized, Some(body));
                }
                if request.lifetime == 0 {
                    self.pinholes.remove(&key);
                    return Some(answer(
                        pcp::Opcode::Map,
                        pcp::ResultCode::Success,
                        0,
                        Some(body),
                    ));
                }
                if !self.pinholes.contains_key(&key)
                    && self.pinholes.len() >= self.config.max_mappings
                {
                    return Some(answer(
                        pcp::Opcode::Map,
                        pcp::ResultCode::NoResources,
                        30,
                        Some(body),
                    ));
                }
                let lifetime = request.lifetime.min(self.config.max_lease);
                self.pinholes.insert(
                    key,
                    GatewayPinhole {
                        protocol,
                        internal,
                        expires: now + Duration::from_secs(u64::from(lifetime)),
                        nonce: body.nonce,
                    },
                );
                // No NAT66: the pinhole's outside is the client's own address and port.
                Some(answer(
                    pcp::Opcode::Map,
                    pcp::ResultCode::Success,
                    lifetime,
                    Some(pcp::MapBody {
                        external_port: body.internal_port,
                        external_ip: IpAddr::V6(*from.ip()),
                        ..body
                    }),
                ))
            }
            other => Some(answer(other, pcp::ResultCode::UnsupportedOpcode, 0, None)),
        }
    }

    // ---- NAT-PMP ----

    fn handle_pmp(&mut self, now: Instant, from: SocketAddrV4, data: &[u8]) -> Option<Vec<u8>> {
        let epoch = self.epoch(now);
        if !self.config.pmp {
            // A PCP-only router: "unsupported version", in PCP's format.
            return self.config.pcp.then(|| {
                pcp::Response {
                    opcode: pcp::Opcode::from_code(data.get(1).copied().unwrap_or(0)),
                    result: pcp::ResultCode::UnsupportedVersion,
                    lifetime: 0,
                    epoch,
                    map: None,
                    options: Vec::new(),
                    other_body: Vec::new(),
                }
                .to_bytes()
            });
        }
        let request = pmp::Request::decode(data).ok()?;
        let response = match request {
            pmp::Request::ExternalAddress => pmp::Response::ExternalAddress {
                result: pmp::ResultCode::Success,
                epoch,
                external: self.config.external_ip,
            },
            pmp::Request::Map {
                protocol,
                internal_port,
                suggested_external_port,
                lifetime,
            } => {
                let internal = SocketAddrV4::new(*from.ip(), internal_port);
                let refused = |result| pmp::Response::Map {
                    protocol,
                    result,
                    epoch,
                    internal_port,
                    external_port: 0,
                    lifetime: 0,
                };
                if self.config.deny {
                    refused(pmp::ResultCode::NotAuthorized)
                } else if lifetime == 0 {
                    self.remove_for(protocol, internal);
                    refused(pmp::ResultCode::Success)
                } else {
                    let lifetime = lifetime.min(self.config.max_lease);
                    match self.add(
                        now,
                        protocol,
                        internal,
                        suggested_external_port,
                        Some(lifetime),
                        Protocol::Pmp,
                        None,
                        false,
                    ) {
                        Ok(port) => pmp::Response::Map {
                            protocol,
                            result: pmp::ResultCode::Success,
                            epoch,
                            internal_port,
                            external_port: port,
                            lifetime,
                        },
                        Err(_) => refused(pmp::ResultCode::OutOfResources),
                    }
                }
            }
        };
        Some(response.to_bytes())
    }

    // ---- PCP ----

    fn handle_pcp(&mut self, now: Instant, from: SocketAddrV4, data: &[u8]) -> Option<Vec<u8>> {
        let epoch = self.epoch(now);
        if !self.config.pcp {
            // A NAT-PMP-only router: "unsupported version", in NAT-PMP's format.
            return self.config.pmp.then(|| {
                let op = data.get(1).copied().unwrap_or(0) & 0x7f;
                let mut b = vec![pmp::VERSION, 0x80 | op];
                b.extend_from_slice(&pmp::ResultCode::UnsupportedVersion.code().to_be_bytes());
                b.extend_from_slice(&epoch.to_be_bytes());
                b
            });
        }
        let answer = |opcode, result, lifetime, map| {
            pcp::Response {
                opcode,
                result,
                lifetime,
                epoch,
                map,
                options: Vec::new(),
                other_body: Vec::new(),
            }
            .to_bytes()
        };
        let request = match pcp::Request::decode(data) {
            Ok(r) => r,
            Err(pcp::PcpError::TooShort { .. } | pcp::PcpError::Length(_)) => return None,
            Err(_) => {
                let op = pcp::Opcode::from_code(data.get(1).copied().unwrap_or(0));
                return Some(answer(op, pcp::ResultCode::MalformedRequest, 0, None));
            }
        };
        if request.client_ip != IpAddr::V4(*from.ip()) {
            return Some(answer(
                request.opcode,
                pcp::ResultCode::AddressMismatch,
                0,
                request.map,
            ));
        }
        match request.opcode {
            pcp::Opcode::Announce => Some(answer(
                pcp::Opcode::Announce,
                pcp::ResultCode::Success,
                0,
                None,
            )),
            pcp::Opcode::Map => {
                let body = request.map?;
                let protocol = match body.protocol {
                    pcp::PROTOCOL_UDP => TransportProtocol::Udp,
                    pcp::PROTOCOL_TCP => TransportProtocol::Tcp,
                    _ => {
                        return Some(answer(
                            pcp::Opcode::Map,
                            pcp::ResultCode::UnsupportedProtocol,
                            0,
                            Some(body),
                        ))
                    }
                };
                if request
                    .options
                    .iter()
                    .any(|o| matches!(o, pcp::PcpOption::ThirdParty(_)))
                {
                    return Some(answer(
                        pcp::Opcode::Map,
                        pcp::ResultCode::NotAuthorized,
                        0,
                        Some(body),
                    ));
                }
                if self.config.deny {
                    return Some(answer(
                        pcp::Opcode::Map,
                        pcp::ResultCode::NotAuthorized,
                        0,
                        Some(body),
                    ));
                }
                let internal = SocketAddrV4::new(*from.ip(), body.internal_port);
                // Only the nonce's owner may renew or delete a mapping.
                if let Some(m) = self
                    .mappings
                    .values()
                    .find(|m| m.protocol == protocol && m.internal == internal)
                {
                    if m.nonce.is_some_and(|n| n != body.nonce) {
                        return Some(answer(
                            pcp::Opcode::Map,
                            pcp::ResultCode::NotAuthorized,
                            0,
                            Some(body),
                        ));
                    }
                }
                if request.lifetime == 0 {
                    self.remove_for(protocol, internal);
                    return Some(answer(
                        pcp::Opcode::Map,
                        pcp::ResultCode::Success,
                        0,
                        Some(body),
                    ));
                }
                let prefer_failure = request.options.contains(&pcp::PcpOption::PreferFailure);
                let lifetime = request.lifetime.min(self.config.max_lease);
                match self.add(
                    now,
                    protocol,
                    internal,
                    body.external_port,
                    Some(lifetime),
                    Protocol::Pcp,
                    Some(body.nonce),
                    prefer_failure,
                ) {
                    Ok(port) => Some(answer(
                        pcp::Opcode::Map,
                        pcp::ResultCode::Success,
                        lifetime,
                        Some(pcp::MapBody {
                            external_port: port,
                            external_ip: IpAddr::V4(self.config.external_ip),
                            ..body
                        }),
                    )),
                    Err(AddError::Taken) => Some(answer(
                        pcp::Opcode::Map,
                        pcp::ResultCode::CannotProvideExternal,
                        30,
                        Some(body),
                    )),
                    Err(AddError::Full) => Some(answer(
                        pcp::Opcode::Map,
                        pcp::ResultCode::NoResources,
                        30,
                        Some(body),
                    )),
                }
            }
            other => Some(answer(other, pcp::ResultCode::UnsupportedOpcode, 0, None)),
        }
    }

    // ---- UPnP ----

    fn location(&self) -> HttpUrl {
        HttpUrl {
            addr: SocketAddr::V4(SocketAddrV4::new(self.config.lan_ip, self.config.http_port)),
            path: DESCRIPTION_PATH.into(),
        }
    }

    fn service_type(&self) -> &'static str {
        if self.config.upnp == Some(2) {
            "urn:schemas-upnp-org:service:WANIPConnection:2"
        } else {
            "urn:schemas-upnp-org:service:WANIPConnection:1"
        }
    }

    fn handle_ssdp(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        let version = self.config.upnp?;
        let target = upnp::ssdp::parse_m_search(data).ok()?;
        let device = format!("urn:schemas-upnp-org:device:InternetGatewayDevice:{version}");
        let answers = target == "ssdp:all"
            || target == "upnp:rootdevice"
            || target == device
            || target == "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
            || target == self.service_type()
            || target == "urn:schemas-upnp-org:service:WANIPConnection:1";
        if !answers {
            return None;
        }
        let st = if target == "ssdp:all" {
            device.as_str()
        } else {
            target.as_str()
        };
        let usn = format!("uuid:burrow-sim-igd::{st}");
        Some(upnp::ssdp::response(
            &self.location(),
            st,
            &usn,
            "burrow-sim/1 UPnP/1.1 IGD/1",
        ))
    }

    /// A complete HTTP request from `from` to the router's UPnP server; the response bytes.
    pub fn handle_http(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        request: &[u8],
    ) -> Option<Vec<u8>> {
        self.expire(now);
        let version = self.config.upnp?;
        let req = match upnp::http::parse_request(request) {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return Some(upnp::http::response(400, b"")),
        };
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", DESCRIPTION_PATH) => {
                let kind = if version == 2 {
                    ServiceKind::WanIpConnection2
                } else {
                    ServiceKind::WanIpConnection1
                };
                let body = upnp::description::render(
                    "burrow simulated IGD",
                    version,
                    &[(kind, CONTROL_PATH)],
                );
                Some(upnp::http::response(200, &body))
            }
            ("POST", CONTROL_PATH) => {
                let fault = |code: u16, text: &str| {
                    upnp::http::response(500, &upnp::soap::encode_fault(code, text))
                };
                let (service_type, action) =
                    match upnp::soap::decode_request(req.soap_action.as_deref(), &req.body) {
                        Ok(x) => x,
                        Err(_) => return Some(fault(error_code::INVALID_ACTION, "Invalid Action")),
                    };
                let answer = match self.soap(now, from, version, action) {
                    Ok(a) => a,
                    Err((code, text)) => return Some(fault(code, text)),
                };
                Some(upnp::http::response(
                    200,
                    &upnp::soap::encode_response(&service_type, &answer),
                ))
            }
            _ => Some(upnp::http::response(404, b"")),
        }
    }

    fn soap(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        version: u8,
        action: Action,
    ) -> Result<ActionResponse, (u16, &'static str)> {
        let any = matches!(action, Action::AddAnyPortMapping(_));
        match action {
            Action::GetExternalIpAddress => Ok(ActionResponse::ExternalIpAddress(Some(
                self.config.external_ip,
            ))),
            Action::GetStatusInfo => Ok(ActionResponse::StatusInfo {
                connection_status: "Connected".into(),
                last_error: Some("ERROR_NONE".into()),
                uptime: Some(self.epoch(now)),
            }),
            Action::AddPortMapping(r) | Action::AddAnyPortMapping(r) if self.config.deny => {
                let _ = r;
                Err((error_code::ACTION_NOT_AUTHORIZED, "Action not authorized"))
            }
            Action::AddPortMapping(r) | Action::AddAnyPortMapping(r)
                if r.internal_client != *from.ip() =>
            {
                let _ = r;
                Err((error_code::ACTION_NOT_AUTHORIZED, "Action not authorized"))
            }
            Action::AddPortMapping(_) | Action::AddAnyPortMapping(_)
                if self.config.fail_add.is_some() =>
            {
                Err((
                    self.config.fail_add.unwrap_or(error_code::ACTION_FAILED),
                    "Action Failed",
                ))
            }
            Action::AddPortMapping(r) | Action::AddAnyPortMapping(r)
                if self.config.permanent_leases_only && r.lease_seconds != 0 =>
            {
                Err((
                    error_code::ONLY_PERMANENT_LEASES_SUPPORTED,
                    "OnlyPermanentLeasesSupported",
                ))
            }
            Action::AddAnyPortMapping(_) if version < 2 => {
                Err((error_code::INVALID_ACTION, "Invalid Action"))
            }
            Action::AddPortMapping(r) | Action::AddAnyPortMapping(r) => {
                // AddPortMapping wants the port asked for; AddAnyPortMapping takes another.
                if !any && r.external_port == 0 {
                    return Err((716, "WildCardNotPermittedInExtPort"));
                }
                let internal = SocketAddrV4::new(r.internal_client, r.internal_port);
                let lease =
                    (r.lease_seconds != 0).then(|| r.lease_seconds.min(self.config.max_lease));
                let added = self.add(
                    now,
                    r.protocol,
                    internal,
                    r.external_port,
                    lease,
                    Protocol::Upnp,
                    None,
                    !any,
                );
                match (added, any) {
                    (Ok(port), true) => Ok(ActionResponse::AnyPortMappingAdded {
                        reserved_port: port,
                    }),
                    (Ok(_), false) => Ok(ActionResponse::PortMappingAdded),
                    (Err(AddError::Taken), false) => Err((
                        error_code::CONFLICT_IN_MAPPING_ENTRY,
                        "ConflictInMappingEntry",
                    )),
                    (Err(_), _) => Err((728, "NoPortMapsAvailable")),
                }
            }
            Action::DeletePortMapping {
                external_port,
                protocol,
            } => match self.mappings.get(&(protocol, external_port)) {
                Some(m) if m.internal.ip() == from.ip() => {
                    self.mappings.remove(&(protocol, external_port));
                    Ok(ActionResponse::PortMappingDeleted)
                }
                _ => Err((714, "NoSuchEntryInArray")),
            },
        }
    }

    // ---- the table ----

    fn remove_for(&mut self, protocol: TransportProtocol, internal: SocketAddrV4) {
        self.mappings
            .retain(|_, m| !(m.protocol == protocol && m.internal == internal));
    }

    /// Adds or refreshes `internal`'s mapping; its external port. `exact`: the suggested port
    /// or nothing.
    #[allow(clippy::too_many_arguments)]
    fn add(
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

enum AddError {
    Taken,
    Full,
}
