//! UPnP IGD over HTTP: the description, the WAN service's external address, adding and
//! deleting the mapping, and the known faults.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use rand_core::RngCore;

use super::{
    idx, Ask, HttpPending, HttpRequestId, PortMapError, PortMapper, Step, Transmit, MAX_CONFLICTS,
};
use crate::upnp::{self, Action, ActionResponse, PortMappingRequest, UpnpError};
use crate::{Protocol, TransportProtocol};

impl PortMapper {
    pub(super) fn http(
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

    pub(super) fn soap(&mut self, now: Instant, step: Step, ask: Ask, action: Action) {
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

    pub(super) fn handle_http(
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

    pub(super) fn soap_answer(&mut self, now: Instant, h: HttpPending, answer: ActionResponse) {
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

    pub(super) fn upnp_mapped(&mut self, now: Instant, port: u16, ask: Ask) {
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

    pub(super) fn soap_fault(
        &mut self,
        now: Instant,
        h: HttpPending,
        code: u16,
        description: String,
    ) {
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

    pub(super) fn http_failed(
        &mut self,
        now: Instant,
        h: HttpPending,
        error: String,
        code: Option<u16>,
    ) {
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

    pub(super) fn upnp_add(&mut self, now: Instant, ask: Ask) {
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
}
