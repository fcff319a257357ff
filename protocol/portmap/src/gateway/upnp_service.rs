//! The model's UPnP IGD: SSDP answers, the device description and the SOAP control URL.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use super::{AddError, Gateway, CONTROL_PATH, DESCRIPTION_PATH};
use crate::upnp::soap::error_code;
use crate::upnp::{self, Action, ActionResponse, HttpUrl, ServiceKind};
use crate::Protocol;

impl Gateway {
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

    pub(super) fn handle_ssdp(&mut self, data: &[u8]) -> Option<Vec<u8>> {
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
}
