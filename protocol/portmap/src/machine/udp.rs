//! NAT-PMP and PCP over UDP to the gateway's port 5351, and SSDP discovery.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::{idx, secs, Ask, Pending, Phase, PortMapError, PortMapper, Step, Transmit};
use crate::upnp::{self, UpnpError};
use crate::{pcp, pmp, Protocol};

impl PortMapper {
    pub(super) fn gateway_port(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.config.gateway, pmp::SERVER_PORT))
    }

    pub(super) fn send_udp(
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

    pub(super) fn send_ssdp(&mut self) {
        for target in upnp::ssdp::SEARCH_TARGETS {
            self.transmits.push_back(Transmit::Udp {
                dst: SocketAddr::V4(upnp::ssdp::SSDP_ADDR),
                payload: upnp::ssdp::m_search(target),
            });
        }
    }

    pub(super) fn handle_udp(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<(), PortMapError> {
        if from.is_ipv6() {
            return self.handle_pinhole_udp(now, from, data);
        }
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

    pub(super) fn handle_pmp(
        &mut self,
        now: Instant,
        r: pmp::Response,
    ) -> Result<(), PortMapError> {
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

    pub(super) fn handle_pcp(
        &mut self,
        now: Instant,
        r: pcp::Response,
    ) -> Result<(), PortMapError> {
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

    pub(super) fn pcp_map_request(
        &self,
        lifetime: u32,
        previous: Option<SocketAddr>,
    ) -> pcp::Request {
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

    pub(super) fn udp_unanswered(&mut self, now: Instant, p: Protocol, ask: Ask) {
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
}
