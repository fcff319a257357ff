//! SOAP 1.1 control of a WAN connection service: the actions we call, their answers and
//! UPnPError faults. Server side: decoding a call and encoding answers and faults.

use std::net::Ipv4Addr;

use super::http::HttpResponse;
use super::xml::{self, Element, XmlOut};
use super::UpnpError;
use crate::TransportProtocol;

const ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const ENCODING: &str = "http://schemas.xmlsoap.org/soap/encoding/";
const CONTROL_NS: &str = "urn:schemas-upnp-org:control-1-0";

/// UPnP error codes a WANIPConnection service answers with.
pub mod error_code {
    /// No action by that name at this service.
    pub const INVALID_ACTION: u16 = 401;
    /// Missing, extra or wrongly typed arguments.
    pub const INVALID_ARGS: u16 = 402;
    /// The action failed in the service's current state.
    pub const ACTION_FAILED: u16 = 501;
    /// The control point may not do this (IGD v2 secure mode: another client's address).
    pub const ACTION_NOT_AUTHORIZED: u16 = 606;
    /// No mapping at that index or with those keys.
    pub const NO_SUCH_ENTRY_IN_ARRAY: u16 = 714;
    /// A wildcard is not allowed in the source IP address.
    pub const WILDCARD_NOT_PERMITTED_IN_SRC_IP: u16 = 715;
    /// A wildcard is not allowed in the external port.
    pub const WILDCARD_NOT_PERMITTED_IN_EXT_PORT: u16 = 716;
    /// The port is mapped already to another client.
    pub const CONFLICT_IN_MAPPING_ENTRY: u16 = 718;
    /// Internal and external ports must be the same.
    pub const SAME_PORT_VALUES_REQUIRED: u16 = 724;
    /// Only a lease of 0 (permanent) is supported.
    pub const ONLY_PERMANENT_LEASES_SUPPORTED: u16 = 725;
    /// RemoteHost must be the wildcard (empty).
    pub const REMOTE_HOST_ONLY_SUPPORTS_WILDCARD: u16 = 726;
    /// ExternalPort must be the wildcard (0).
    pub const EXTERNAL_PORT_ONLY_SUPPORTS_WILDCARD: u16 = 727;
    /// No free port for AddAnyPortMapping (IGD v2).
    pub const NO_PORT_MAPS_AVAILABLE: u16 = 728;
    /// Another mechanism (e.g. PCP) holds the port (IGD v2).
    pub const CONFLICT_WITH_OTHER_MECHANISMS: u16 = 729;
    /// The wildcard is not allowed in the internal port (IGD v2).
    pub const WILDCARD_NOT_PERMITTED_IN_INT_PORT: u16 = 732;
}

/// The arguments of AddPortMapping and AddAnyPortMapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMappingRequest {
    /// The remote host the mapping is limited to; None: any (the wildcard).
    pub remote_host: Option<Ipv4Addr>,
    /// The external port asked for.
    pub external_port: u16,
    /// UDP or TCP.
    pub protocol: TransportProtocol,
    /// The internal port.
    pub internal_port: u16,
    /// The internal client (our LAN address).
    pub internal_client: Ipv4Addr,
    /// A human-readable description.
    pub description: String,
    /// The lease in seconds; 0 asks for a permanent mapping.
    pub lease_seconds: u32,
}

/// A SOAP action on a WAN connection service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// GetExternalIPAddress.
    GetExternalIpAddress,
    /// GetStatusInfo.
    GetStatusInfo,
    /// AddPortMapping: exactly the external port asked for.
    AddPortMapping(PortMappingRequest),
    /// AddAnyPortMapping (IGD v2): the gateway may pick another external port.
    AddAnyPortMapping(PortMappingRequest),
    /// DeletePortMapping (any remote host).
    DeletePortMapping {
        /// The external port.
        external_port: u16,
        /// UDP or TCP.
        protocol: TransportProtocol,
    },
}

impl Action {
    /// The action name as in SOAPAction.
    pub fn name(&self) -> &'static str {
        match self {
            Action::GetExternalIpAddress => "GetExternalIPAddress",
            Action::GetStatusInfo => "GetStatusInfo",
            Action::AddPortMapping(_) => "AddPortMapping",
            Action::AddAnyPortMapping(_) => "AddAnyPortMapping",
            Action::DeletePortMapping { .. } => "DeletePortMapping",
        }
    }
}

/// A successful answer to an [`Action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionResponse {
    /// The external address; None when the gateway has none (empty or 0.0.0.0).
    ExternalIpAddress(Option<Ipv4Addr>),
    /// The connection status ("Connected", ...), last error and uptime in seconds.
    StatusInfo {
        /// NewConnectionStatus.
        connection_status: String,
        /// NewLastConnectionError, None if empty or absent.
        last_error: Option<String>,
        /// NewUptime, None if absent or not a number.
        uptime: Option<u32>,
    },
    /// AddPortMapping succeeded.
    PortMappingAdded,
    /// AddAnyPortMapping succeeded on this external port.
    AnyPortMappingAdded {
        /// NewReservedPort.
        reserved_port: u16,
    },
    /// DeletePortMapping succeeded.
    PortMappingDeleted,
}

fn protocol_str(p: TransportProtocol) -> &'static str {
    match p {
        TransportProtocol::Udp => "UDP",
        TransportProtocol::Tcp => "TCP",
    }
}

/// Opens `<s:Envelope><s:Body><u:{name} xmlns:u="{service_type}">`.
fn envelope_open(out: &mut XmlOut, element: &str, service_type: &str) {
    out.start(
        "s:Envelope",
        &[("xmlns:s", ENVELOPE_NS), ("s:encodingStyle", ENCODING)],
    )
    .start("s:Body", &[])
    .start(element, &[("xmlns:u", service_type)]);
}

fn envelope_close(out: &mut XmlOut, element: &str) {
    out.end(element)
        .end("s:Body")
        .end("s:Envelope")
        .raw(b"\r\n");
}

fn mapping_args(out: &mut XmlOut, r: &PortMappingRequest) {
    let remote = r.remote_host.map(|h| h.to_string()).unwrap_or_default();
    out.leaf("NewRemoteHost", &remote)
        .leaf("NewExternalPort", &r.external_port.to_string())
        .leaf("NewProtocol", protocol_str(r.protocol))
        .leaf("NewInternalPort", &r.internal_port.to_string())
        .leaf("NewInternalClient", &r.internal_client.to_string())
        .leaf("NewEnabled", "1")
        .leaf("NewPortMappingDescription", &r.description)
        .leaf("NewLeaseDuration", &r.lease_seconds.to_string());
}

/// A SOAP 1.1 envelope calling `action` on a service of `service_type`.
pub fn encode_request(service_type: &str, action: &Action) -> Vec<u8> {
    let element = format!("u:{}", action.name());
    let mut out = XmlOut::new();
    out.decl();
    envelope_open(&mut out, &element, service_type);
    match action {
        Action::GetExternalIpAddress | Action::GetStatusInfo => {}
        Action::AddPortMapping(r) | Action::AddAnyPortMapping(r) => mapping_args(&mut out, r),
        Action::DeletePortMapping {
            external_port,
            protocol,
        } => {
            out.leaf("NewRemoteHost", "")
                .leaf("NewExternalPort", &external_port.to_string())
                .leaf("NewProtocol", protocol_str(*protocol));
        }
    }
    envelope_close(&mut out, &element);
    out.finish()
}

/// The first element inside the envelope's Body.
fn body_content(root: &Element) -> Result<&Element, UpnpError> {
    if !root.name.eq_ignore_ascii_case("Envelope") {
        return Err(UpnpError::Xml("not a SOAP envelope".into()));
    }
    let body = root.child("Body").ok_or(UpnpError::Missing("Body"))?;
    body.children
        .first()
        .ok_or(UpnpError::Missing("Body content"))
}

/// The UPnPError in a Fault, if any.
fn fault(fault: &Element) -> Result<Option<UpnpError>, UpnpError> {
    let Some(err) = fault.find("UPnPError") else {
        return Ok(None);
    };
    let code = err
        .child_text("errorCode")
        .ok_or(UpnpError::Missing("errorCode"))?;
    let code: u16 = code
        .parse()
        .map_err(|_| UpnpError::Xml(format!("bad errorCode {:?}", short(code))))?;
    let description = err.child_text("errorDescription").unwrap_or("").to_owned();
    Ok(Some(UpnpError::Fault { code, description }))
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

fn arg<'a>(el: &'a Element, name: &'static str) -> Result<&'a str, UpnpError> {
    el.child_text(name).ok_or(UpnpError::Missing(name))
}

/// Decodes the HTTP answer to `action`. A SOAP Fault carrying a UPnPError (whatever the
/// status) is [`UpnpError::Fault`]; another non-2xx answer is [`UpnpError::Status`].
/// Namespace prefixes, whitespace and extra elements are tolerated.
pub fn decode_response(
    action: &Action,
    response: &HttpResponse,
) -> Result<ActionResponse, UpnpError> {
    let ok = (200..300).contains(&response.status);
    let blank = response.body.iter().all(u8::is_ascii_whitespace);
    if ok && blank {
        // Some gateways answer a bare 200 to actions that return nothing.
        match action {
            Action::AddPortMapping(_) => return Ok(ActionResponse::PortMappingAdded),
            Action::DeletePortMapping { .. } => return Ok(ActionResponse::PortMappingDeleted),
            _ => return Err(UpnpError::Missing("SOAP envelope")),
        }
    }
    let root = match xml::parse(&response.body) {
        Ok(root) => root,
        Err(e) if ok => return Err(e),
        Err(_) => return Err(UpnpError::Status(response.status)),
    };
    let content = match body_content(&root) {
        Ok(c) => c,
        Err(e) if ok => return Err(e),
        Err(_) => return Err(UpnpError::Status(response.status)),
    };
    if content.name.eq_ignore_ascii_case("Fault") {
        return match fault(content) {
            Ok(Some(f)) => Err(f),
            Ok(None) | Err(_) if !ok => Err(UpnpError::Status(response.status)),
            Ok(None) => Err(UpnpError::Xml("SOAP fault without UPnPError".into())),
            Err(e) => Err(e),
        };
    }
    if !ok {
        return Err(UpnpError::Status(response.status));
    }
    let expected = format!("{}Response", action.name());
    if !content.name.eq_ignore_ascii_case(&expected) {
        return Err(UpnpError::Xml(format!(
            "expected <{expected}>, got <{}>",
            short(&content.name)
        )));
    }
    Ok(match action {
        Action::GetExternalIpAddress => {
            let ip = arg(content, "NewExternalIPAddress")?;
            if ip.is_empty() {
                ActionResponse::ExternalIpAddress(None)
            } else {
                let ip: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| UpnpError::Xml(format!("bad external address {:?}", short(ip))))?;
                ActionResponse::ExternalIpAddress(Some(ip).filter(|ip| !ip.is_unspecified()))
            }
        }
        Action::GetStatusInfo => ActionResponse::StatusInfo {
            connection_status: arg(content, "NewConnectionStatus")?.to_owned(),
            last_error: content
                .child_text("NewLastConnectionError")
                .filter(|e| !e.is_empty())
                .map(str::to_owned),
            uptime: content.child_text("NewUptime").and_then(|u| u.parse().ok()),
        },
        Action::AddPortMapping(_) => ActionResponse::PortMappingAdded,
        Action::AddAnyPortMapping(_) => {
            let port = arg(content, "NewReservedPort")?;
            let reserved_port: u16 = port
                .parse()
                .map_err(|_| UpnpError::Xml(format!("bad reserved port {:?}", short(port))))?;
            ActionResponse::AnyPortMappingAdded { reserved_port }
        }
        Action::DeletePortMapping { .. } => ActionResponse::PortMappingDeleted,
    })
}

fn invalid_args() -> UpnpError {
    UpnpError::Fault {
        code: error_code::INVALID_ARGS,
        description: "Invalid Args".into(),
    }
}

fn req_arg<'a>(el: &'a Element, name: &str) -> Result<&'a str, UpnpError> {
    el.child_text(name).ok_or_else(invalid_args)
}

fn parse_protocol(s: &str) -> Result<TransportProtocol, UpnpError> {
    if s.eq_ignore_ascii_case("UDP") {
        Ok(TransportProtocol::Udp)
    } else if s.eq_ignore_ascii_case("TCP") {
        Ok(TransportProtocol::Tcp)
    } else {
        Err(invalid_args())
    }
}

fn parse_mapping(el: &Element) -> Result<PortMappingRequest, UpnpError> {
    let remote = el.child_text("NewRemoteHost").unwrap_or("");
    let remote_host = if remote.is_empty() || remote == "*" {
        None
    } else {
        Some(remote.parse().map_err(|_| invalid_args())?)
    };
    Ok(PortMappingRequest {
        remote_host,
        external_port: req_arg(el, "NewExternalPort")?
            .parse()
            .map_err(|_| invalid_args())?,
        protocol: parse_protocol(req_arg(el, "NewProtocol")?)?,
        internal_port: req_arg(el, "NewInternalPort")?
            .parse()
            .map_err(|_| invalid_args())?,
        internal_client: req_arg(el, "NewInternalClient")?
            .parse()
            .map_err(|_| invalid_args())?,
        description: el
            .child_text("NewPortMappingDescription")
            .unwrap_or("")
            .to_owned(),
        lease_seconds: match el.child_text("NewLeaseDuration") {
            None | Some("") => 0,
            Some(l) => l.parse().map_err(|_| invalid_args())?,
        },
    })
}

/// Decodes a SOAP call (server side) into its service type and action. The service type
/// comes from the SOAPAction header when it has one, else from the action element's
/// namespace. An unknown action is a 401 [`UpnpError::Fault`], bad or missing arguments a
/// 402 one, so a server can answer them with [`encode_fault`] as they are.
pub fn decode_request(
    soap_action: Option<&str>,
    body: &[u8],
) -> Result<(String, Action), UpnpError> {
    let root = xml::parse(body)?;
    let el = body_content(&root)?;
    let header = soap_action
        .map(|h| h.trim().trim_matches('"'))
        .and_then(|h| h.split_once('#'));
    if let Some((_, name)) = header {
        if name != el.name {
            return Err(UpnpError::Xml(format!(
                "SOAPAction names {:?}, body calls {:?}",
                short(name),
                short(&el.name)
            )));
        }
    }
    let service_type = match header {
        Some((st, _)) if !st.is_empty() => st.to_owned(),
        _ => el
            .own_namespace()
            .ok_or(UpnpError::Missing("service type"))?
            .to_owned(),
    };
    let action = match el.name.as_str() {
        "GetExternalIPAddress" => Action::GetExternalIpAddress,
        "GetStatusInfo" => Action::GetStatusInfo,
        "AddPortMapping" => Action::AddPortMapping(parse_mapping(el)?),
        "AddAnyPortMapping" => Action::AddAnyPortMapping(parse_mapping(el)?),
        "DeletePortMapping" => Action::DeletePortMapping {
            external_port: req_arg(el, "NewExternalPort")?
                .parse()
                .map_err(|_| invalid_args())?,
            protocol: parse_protocol(req_arg(el, "NewProtocol")?)?,
        },
        _ => {
            return Err(UpnpError::Fault {
                code: error_code::INVALID_ACTION,
                description: "Invalid Action".into(),
            })
        }
    };
    Ok((service_type, action))
}

/// A successful answer (server side), laid out as miniupnpd lays out its own.
pub fn encode_response(service_type: &str, response: &ActionResponse) -> Vec<u8> {
    let name = match response {
        ActionResponse::ExternalIpAddress(_) => "GetExternalIPAddress",
        ActionResponse::StatusInfo { .. } => "GetStatusInfo",
        ActionResponse::PortMappingAdded => "AddPortMapping",
        ActionResponse::AnyPortMappingAdded { .. } => "AddAnyPortMapping",
        ActionResponse::PortMappingDeleted => "DeletePortMapping",
    };
    let element = format!("u:{name}Response");
    let mut out = XmlOut::new();
    out.decl();
    envelope_open(&mut out, &element, service_type);
    match response {
        ActionResponse::ExternalIpAddress(ip) => {
            let ip = ip.map(|ip| ip.to_string()).unwrap_or_default();
            out.leaf("NewExternalIPAddress", &ip);
        }
        ActionResponse::StatusInfo {
            connection_status,
            last_error,
            uptime,
        } => {
            out.leaf("NewConnectionStatus", connection_status).leaf(
                "NewLastConnectionError",
                last_error.as_deref().unwrap_or(""),
            );
            if let Some(u) = uptime {
                out.leaf("NewUptime", &u.to_string());
            }
        }
        ActionResponse::AnyPortMappingAdded { reserved_port } => {
            out.leaf("NewReservedPort", &reserved_port.to_string());
        }
        ActionResponse::PortMappingAdded | ActionResponse::PortMappingDeleted => {}
    }
    envelope_close(&mut out, &element);
    out.finish()
}

/// A SOAP Fault carrying a UPnPError (server side; sent with HTTP status 500), laid out as
/// miniupnpd lays out its own.
pub fn encode_fault(code: u16, description: &str) -> Vec<u8> {
    let mut out = XmlOut::new();
    out.start(
        "s:Envelope",
        &[("xmlns:s", ENVELOPE_NS), ("s:encodingStyle", ENCODING)],
    )
    .start("s:Body", &[])
    .start("s:Fault", &[])
    .leaf("faultcode", "s:Client")
    .leaf("faultstring", "UPnPError")
    .start("detail", &[])
    .start("UPnPError", &[("xmlns", CONTROL_NS)])
    .leaf("errorCode", &code.to_string())
    .leaf("errorDescription", description)
    .end("UPnPError")
    .end("detail")
    .end("s:Fault")
    .end("s:Body")
    .end("s:Envelope");
    out.finish()
}
