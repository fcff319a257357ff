//! The device description (rootDesc.xml): which WAN connection services the gateway offers
//! and where their control URLs are. Server side: a plausible description to serve.

use super::url::HttpUrl;
use super::xml::{self, Element, XmlOut};
use super::UpnpError;

/// A WAN connection service kind we can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKind {
    /// `urn:schemas-upnp-org:service:WANIPConnection:1`
    WanIpConnection1,
    /// `urn:schemas-upnp-org:service:WANIPConnection:2` (has AddAnyPortMapping)
    WanIpConnection2,
    /// `urn:schemas-upnp-org:service:WANPPPConnection:1`
    WanPppConnection1,
}

impl ServiceKind {
    /// Every kind, best first.
    pub const ALL: [ServiceKind; 3] = [
        ServiceKind::WanIpConnection2,
        ServiceKind::WanIpConnection1,
        ServiceKind::WanPppConnection1,
    ];

    /// The service type URN.
    pub fn service_type(self) -> &'static str {
        match self {
            ServiceKind::WanIpConnection1 => "urn:schemas-upnp-org:service:WANIPConnection:1",
            ServiceKind::WanIpConnection2 => "urn:schemas-upnp-org:service:WANIPConnection:2",
            ServiceKind::WanPppConnection1 => "urn:schemas-upnp-org:service:WANPPPConnection:1",
        }
    }

    /// The kind a service type URN names, if one we drive.
    pub fn from_service_type(s: &str) -> Option<Self> {
        let s = s.trim();
        ServiceKind::ALL
            .into_iter()
            .find(|k| k.service_type().eq_ignore_ascii_case(s))
    }

    /// Preference: higher is better (IP:2 > IP:1 > PPP:1).
    fn rank(self) -> u8 {
        match self {
            ServiceKind::WanIpConnection2 => 3,
            ServiceKind::WanIpConnection1 => 2,
            ServiceKind::WanPppConnection1 => 1,
        }
    }
}

/// One WAN connection service found in a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WanService {
    /// Its kind.
    pub kind: ServiceKind,
    /// Its service type exactly as the description spells it (for SOAPAction).
    pub service_type: String,
    /// Its control URL, resolved to an absolute URL.
    pub control_url: HttpUrl,
}

/// What we take from a device description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDescription {
    /// The root device's friendly name.
    pub friendly_name: Option<String>,
    /// N of the first `InternetGatewayDevice:N` device type in the tree; 0 if none.
    pub igd_version: u8,
    /// Every WAN connection service found, in document order.
    pub services: Vec<WanService>,
}

impl DeviceDescription {
    /// The service to use: WANIPConnection:2, else :1, else WANPPPConnection:1 (the first
    /// of a kind in document order).
    pub fn best_service(&self) -> Option<&WanService> {
        let mut best: Option<&WanService> = None;
        for s in &self.services {
            if best.is_none_or(|b| s.kind.rank() > b.kind.rank()) {
                best = Some(s);
            }
        }
        best
    }
}

const IGD_PREFIX: &str = "urn:schemas-upnp-org:device:InternetGatewayDevice:";

fn igd_version(device: &Element) -> Option<u8> {
    let own = device.child_text("deviceType").and_then(|t| {
        let head = t.get(..IGD_PREFIX.len())?;
        if !head.eq_ignore_ascii_case(IGD_PREFIX) {
            return None;
        }
        t.get(IGD_PREFIX.len()..)?.parse::<u8>().ok()
    });
    if own.is_some() {
        return own;
    }
    device
        .child("deviceList")
        .into_iter()
        .flat_map(|l| l.children.iter())
        .filter(|c| c.name.eq_ignore_ascii_case("device"))
        .find_map(igd_version)
}

/// Collects (service type, control URL text) of every WAN service under a device.
fn collect<'a>(device: &'a Element, out: &mut Vec<(ServiceKind, &'a str, Option<&'a str>)>) {
    if let Some(list) = device.child("serviceList") {
        for s in list
            .children
            .iter()
            .filter(|c| c.name.eq_ignore_ascii_case("service"))
        {
            let Some(st) = s.child_text("serviceType") else {
                continue;
            };
            if let Some(kind) = ServiceKind::from_service_type(st) {
                out.push((kind, st, s.child_text("controlURL")));
            }
        }
    }
    if let Some(list) = device.child("deviceList") {
        for d in list
            .children
            .iter()
            .filter(|c| c.name.eq_ignore_ascii_case("device"))
        {
            collect(d, out);
        }
    }
}

/// Parses a device description fetched from `location`. Control URLs resolve against
/// URLBase when present (and usable), else against `location`. Services that have no
/// control URL are skipped; if none is left, the error says why.
pub fn parse_description(xml: &[u8], location: &HttpUrl) -> Result<DeviceDescription, UpnpError> {
    let root = xml::parse(xml)?;
    if !root.name.eq_ignore_ascii_case("root") {
        return Err(UpnpError::Xml(format!(
            "root element is <{}>, not <root>",
            root.name.chars().take(40).collect::<String>()
        )));
    }
    let device = root.child("device").ok_or(UpnpError::Missing("device"))?;
    let base = root
        .child_text("URLBase")
        .filter(|b| !b.is_empty())
        .and_then(|b| HttpUrl::parse(b).ok())
        .unwrap_or_else(|| location.clone());
    let mut found = Vec::new();
    collect(device, &mut found);
    let mut services = Vec::new();
    let mut last_error = None;
    for (kind, st, control) in found {
        let Some(control) = control.filter(|c| !c.is_empty()) else {
            last_error = Some(UpnpError::Missing("controlURL"));
            continue;
        };
        match base.join(control) {
            Ok(control_url) => services.push(WanService {
                kind,
                service_type: st.to_owned(),
                control_url,
            }),
            Err(e) => last_error = Some(e),
        }
    }
    if services.is_empty() {
        return Err(last_error.unwrap_or(UpnpError::NoWanService));
    }
    Ok(DeviceDescription {
        friendly_name: device
            .child_text("friendlyName")
            .filter(|n| !n.is_empty())
            .map(str::to_owned),
        igd_version: igd_version(device).unwrap_or(0),
        services,
    })
}

fn service(out: &mut XmlOut, service_type: &str, id: &str, scpd: &str, control: &str, event: &str) {
    out.start("service", &[])
        .leaf("serviceType", service_type)
        .leaf("serviceId", id)
        .leaf("SCPDURL", scpd)
        .leaf("controlURL", control)
        .leaf("eventSubURL", event)
        .end("service");
}

fn device_head(out: &mut XmlOut, device_type: &str, name: &str, udn: &str) {
    out.start("device", &[])
        .leaf("deviceType", device_type)
        .leaf("friendlyName", name)
        .leaf("manufacturer", "burrow")
        .leaf("manufacturerURL", "http://example.invalid/")
        .leaf("modelDescription", name)
        .leaf("modelName", "burrow simulated gateway")
        .leaf("modelNumber", "1")
        .leaf("modelURL", "http://example.invalid/")
        .leaf("serialNumber", "00000000")
        .leaf("UDN", udn);
}

/// A plausible rootDesc.xml, laid out like miniupnpd's: InternetGatewayDevice:N (with
/// Layer3Forwarding) > WANDevice:N (with WANCommonInterfaceConfig) > WANConnectionDevice:N
/// holding the given services at the given control paths.
pub fn render(friendly_name: &str, igd_version: u8, services: &[(ServiceKind, &str)]) -> Vec<u8> {
    let v = igd_version.max(1).to_string();
    let mut out = XmlOut::new();
    out.decl().start(
        "root",
        &[
            ("xmlns", "urn:schemas-upnp-org:device-1-0"),
            ("configId", "1337"),
        ],
    );
    out.start("specVersion", &[])
        .leaf("major", "1")
        .leaf("minor", "1")
        .end("specVersion");
    device_head(
        &mut out,
        &format!("{IGD_PREFIX}{v}"),
        friendly_name,
        "uuid:00000000-0000-0000-0000-000000000000",
    );
    out.start("serviceList", &[]);
    service(
        &mut out,
        "urn:schemas-upnp-org:service:Layer3Forwarding:1",
        "urn:upnp-org:serviceId:L3Forwarding1",
        "/L3F.xml",
        "/ctl/L3F",
        "/evt/L3F",
    );
    out.end("serviceList").start("deviceList", &[]);
    device_head(
        &mut out,
        &format!("urn:schemas-upnp-org:device:WANDevice:{v}"),
        "WANDevice",
        "uuid:00000000-0000-0000-0000-000000000001",
    );
    out.start("serviceList", &[]);
    service(
        &mut out,
        "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1",
        "urn:upnp-org:serviceId:WANCommonIFC1",
        "/WANCfg.xml",
        "/ctl/CmnIfCfg",
        "/evt/CmnIfCfg",
    );
    out.end("serviceList").start("deviceList", &[]);
    device_head(
        &mut out,
        &format!("urn:schemas-upnp-org:device:WANConnectionDevice:{v}"),
        "WANConnectionDevice",
        "uuid:00000000-0000-0000-0000-000000000002",
    );
    out.start("serviceList", &[]);
    for (kind, control) in services {
        let (id, scpd, event) = match kind {
            ServiceKind::WanPppConnection1 => (
                "urn:upnp-org:serviceId:WANPPPConn1",
                "/WANPPPCn.xml",
                "/evt/PPPConn",
            ),
            _ => (
                "urn:upnp-org:serviceId:WANIPConn1",
                "/WANIPCn.xml",
                "/evt/IPConn",
            ),
        };
        service(&mut out, kind.service_type(), id, scpd, control, event);
    }
    out.end("serviceList")
        .end("device")
        .end("deviceList")
        .end("device")
        .end("deviceList")
        .leaf("presentationURL", "/")
        .end("device")
        .end("root");
    out.raw(b"\r\n");
    out.finish()
}
