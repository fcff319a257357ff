//! The model's PCP server (RFC 6887): MAP and ANNOUNCE over IPv4 (port mappings) and over
//! IPv6 (firewall pinholes), sharing every check a request passes before either.

use std::net::{IpAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use super::{AddError, Gateway, GatewayPinhole};
use crate::{pcp, pmp, Protocol, TransportProtocol};

/// A PCP answer with no options.
fn answer(
    epoch: u32,
    opcode: pcp::Opcode,
    result: pcp::ResultCode,
    lifetime: u32,
    map: Option<pcp::MapBody>,
) -> Vec<u8> {
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
}

/// A MAP request that passed the checks every family shares.
struct MapAsk {
    request: pcp::Request,
    body: pcp::MapBody,
    protocol: TransportProtocol,
}

impl Gateway {
    /// Decodes a PCP request from `client` and runs the checks both families share:
    /// malformed, address mismatch, ANNOUNCE, unsupported opcode or protocol, third party or
    /// a denying router. `Err` carries the answer (or silence) for everything but a MAP to
    /// carry out.
    fn pcp_map_ask(
        &self,
        epoch: u32,
        client: IpAddr,
        data: &[u8],
    ) -> Result<MapAsk, Option<Vec<u8>>> {
        let request = match pcp::Request::decode(data) {
            Ok(r) => r,
            Err(pcp::PcpError::TooShort { .. } | pcp::PcpError::Length(_)) => return Err(None),
            Err(_) => {
                let op = pcp::Opcode::from_code(data.get(1).copied().unwrap_or(0));
                let a = answer(epoch, op, pcp::ResultCode::MalformedRequest, 0, None);
                return Err(Some(a));
            }
        };
        if request.client_ip != client {
            let a = answer(
                epoch,
                request.opcode,
                pcp::ResultCode::AddressMismatch,
                0,
                request.map,
            );
            return Err(Some(a));
        }
        let body = match request.opcode {
            pcp::Opcode::Announce => {
                let a = answer(
                    epoch,
                    pcp::Opcode::Announce,
                    pcp::ResultCode::Success,
                    0,
                    None,
                );
                return Err(Some(a));
            }
            pcp::Opcode::Map => request.map.ok_or(None)?,
            other => {
                let a = answer(epoch, other, pcp::ResultCode::UnsupportedOpcode, 0, None);
                return Err(Some(a));
            }
        };
        let refuse = |result| Err(Some(answer(epoch, pcp::Opcode::Map, result, 0, Some(body))));
        let protocol = match body.protocol {
            pcp::PROTOCOL_UDP => TransportProtocol::Udp,
            pcp::PROTOCOL_TCP => TransportProtocol::Tcp,
            _ => return refuse(pcp::ResultCode::UnsupportedProtocol),
        };
        let third_party = request
            .options
            .iter()
            .any(|o| matches!(o, pcp::PcpOption::ThirdParty(_)));
        if third_party || self.config.deny {
            return refuse(pcp::ResultCode::NotAuthorized);
        }
        Ok(MapAsk {
            request,
            body,
            protocol,
        })
    }

    /// PCP over IPv4: MAP makes a port mapping on the router's external address.
    pub(super) fn handle_pcp(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        data: &[u8],
    ) -> Option<Vec<u8>> {
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
        let MapAsk {
            request,
            body,
            protocol,
        } = match self.pcp_map_ask(epoch, IpAddr::V4(*from.ip()), data) {
            Ok(ask) => ask,
            Err(reply) => return reply,
        };
        let map =
            |result, lifetime, map| Some(answer(epoch, pcp::Opcode::Map, result, lifetime, map));
        let internal = SocketAddrV4::new(*from.ip(), body.internal_port);
        // Only the nonce's owner may renew or delete a mapping.
        let foreign = self
            .mappings
            .values()
            .find(|m| m.protocol == protocol && m.internal == internal)
            .is_some_and(|m| m.nonce.is_some_and(|n| n != body.nonce));
        if foreign {
            return map(pcp::ResultCode::NotAuthorized, 0, Some(body));
        }
        if request.lifetime == 0 {
            self.remove_for(protocol, internal);
            return map(pcp::ResultCode::Success, 0, Some(body));
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
            Ok(port) => map(
                pcp::ResultCode::Success,
                lifetime,
                Some(pcp::MapBody {
                    external_port: port,
                    external_ip: IpAddr::V4(self.config.external_ip),
                    ..body
                }),
            ),
            Err(AddError::Taken) => map(pcp::ResultCode::CannotProvideExternal, 30, Some(body)),
            Err(AddError::Full) => map(pcp::ResultCode::NoResources, 30, Some(body)),
        }
    }

    /// PCP over IPv6: MAP opens a pinhole in the router's IPv6 firewall (no NAT66: the
    /// pinhole's outside is the client's own address and port).
    pub(super) fn handle_pcp6(
        &mut self,
        now: Instant,
        from: SocketAddrV6,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        let epoch = self.epoch(now);
        let MapAsk {
            request,
            body,
            protocol,
        } = match self.pcp_map_ask(epoch, IpAddr::V6(*from.ip()), data) {
            Ok(ask) => ask,
            Err(reply) => return reply,
        };
        let map =
            |result, lifetime, map| Some(answer(epoch, pcp::Opcode::Map, result, lifetime, map));
        let internal = SocketAddrV6::new(*from.ip(), body.internal_port, 0, 0);
        let key = (protocol, internal);
        if self
            .pinholes
            .get(&key)
            .is_some_and(|p| p.nonce != body.nonce)
        {
            return map(pcp::ResultCode::NotAuthorized, 0, Some(body));
        }
        if request.lifetime == 0 {
            self.pinholes.remove(&key);
            return map(pcp::ResultCode::Success, 0, Some(body));
        }
        if !self.pinholes.contains_key(&key) && self.pinholes.len() >= self.config.max_mappings {
            return map(pcp::ResultCode::NoResources, 30, Some(body));
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
        map(
            pcp::ResultCode::Success,
            lifetime,
            Some(pcp::MapBody {
                external_port: body.internal_port,
                external_ip: IpAddr::V6(*from.ip()),
                ..body
            }),
        )
    }
}
