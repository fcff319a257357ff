//! SSDP discovery: the M-SEARCH we multicast and the unicast 200 answers gateways send back,
//! and the server side of both for gateway models.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::http::header_value;
use super::url::HttpUrl;
use super::UpnpError;

/// The SSDP multicast group and port.
pub const SSDP_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);

/// What we search for, one M-SEARCH each: some devices answer only for their first
/// descriptor, so the device types, the service type and `ssdp:all` are all asked.
pub const SEARCH_TARGETS: &[&str] = &[
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "ssdp:all",
];

/// Largest SSDP datagram accepted.
const MAX_DATAGRAM: usize = 8 * 1024;
/// Most header lines accepted in one datagram.
const MAX_HEADERS: usize = 48;

/// An M-SEARCH for one search target (MX 2).
pub fn m_search(search_target: &str) -> Vec<u8> {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 2\r\nST: {}\r\n\r\n",
        header_value(search_target)
    )
    .into_bytes()
}

/// A gateway's answer to an M-SEARCH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsdpResponse {
    /// Where the device description is.
    pub location: HttpUrl,
    /// The ST it answered for (NT if it sent no ST).
    pub search_target: String,
    /// Its unique service name.
    pub usn: Option<String>,
    /// Its SERVER header (OS, UPnP version, product).
    pub server: Option<String>,
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.trim().eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

/// Parses a head, adding the final empty line a datagram may lack.
fn with_end(datagram: &[u8]) -> Result<Vec<u8>, UpnpError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(UpnpError::TooLarge);
    }
    let mut owned = datagram.to_vec();
    if !owned.ends_with(b"\r\n\r\n") && !owned.ends_with(b"\n\n") {
        if !owned.ends_with(b"\n") {
            owned.extend_from_slice(b"\r\n");
        }
        owned.extend_from_slice(b"\r\n");
    }
    Ok(owned)
}

/// Parses a unicast answer to an M-SEARCH ("HTTP/1.1 200 OK"); NOTIFY announcements and
/// other statuses are refused. Header names are case-insensitive.
pub fn parse_response(datagram: &[u8]) -> Result<SsdpResponse, UpnpError> {
    let owned = with_end(datagram)?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let mut config = httparse::ParserConfig::default();
    config
        .allow_spaces_after_header_name_in_responses(true)
        .allow_multiple_spaces_in_response_status_delimiters(true);
    match config.parse_response(&mut resp, &owned) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(UpnpError::Ssdp("truncated head")),
        Err(_) => return Err(UpnpError::Ssdp("not an HTTP response")),
    }
    if resp.code != Some(200) {
        return Err(UpnpError::Ssdp("not a 200 answer"));
    }
    let location = header(resp.headers, "location").ok_or(UpnpError::Missing("LOCATION"))?;
    let location = HttpUrl::parse(location)?;
    let search_target = header(resp.headers, "st")
        .or_else(|| header(resp.headers, "nt"))
        .ok_or(UpnpError::Missing("ST"))?
        .to_owned();
    Ok(SsdpResponse {
        location,
        search_target,
        usn: header(resp.headers, "usn").map(str::to_owned),
        server: header(resp.headers, "server").map(str::to_owned),
    })
}

/// Parses an M-SEARCH (server side) and returns its ST.
pub fn parse_m_search(datagram: &[u8]) -> Result<String, UpnpError> {
    let owned = with_end(datagram)?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&owned) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(UpnpError::Ssdp("truncated head")),
        Err(_) => return Err(UpnpError::Ssdp("not an HTTP request")),
    }
    if req.method != Some("M-SEARCH") {
        return Err(UpnpError::Ssdp("not an M-SEARCH"));
    }
    let man = header(req.headers, "man").ok_or(UpnpError::Missing("MAN"))?;
    if man.trim_matches('"') != "ssdp:discover" {
        return Err(UpnpError::Ssdp("MAN is not \"ssdp:discover\""));
    }
    let st = header(req.headers, "st").ok_or(UpnpError::Missing("ST"))?;
    if st.is_empty() {
        return Err(UpnpError::Missing("ST"));
    }
    Ok(st.to_owned())
}

/// An answer to an M-SEARCH (server side), laid out as miniupnpd lays out its own.
pub fn response(location: &HttpUrl, search_target: &str, usn: &str, server: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: {}\r\nUSN: {}\r\nEXT:\r\nSERVER: {}\r\nLOCATION: {}\r\nOPT: \"http://schemas.upnp.org/upnp/1/0/\"; ns=01\r\n01-NLS: 1\r\nBOOTID.UPNP.ORG: 1\r\nCONFIGID.UPNP.ORG: 1337\r\n\r\n",
        header_value(search_target),
        header_value(usn),
        header_value(server),
        header_value(&location.to_string()),
    )
    .into_bytes()
}
