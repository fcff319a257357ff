//! The model's NAT-PMP server (RFC 6886).

use std::net::SocketAddrV4;
use std::time::Instant;

use super::Gateway;
use crate::{pcp, pmp, Protocol};

impl Gateway {
    pub(super) fn handle_pmp(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        data: &[u8],
    ) -> Option<Vec<u8>> {
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
}
