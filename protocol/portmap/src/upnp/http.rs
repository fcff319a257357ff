//! HTTP/1.1 framing for the description fetch and SOAP calls. Every request says
//! `Connection: close`: the driver writes it on a fresh TCP connection and reads until
//! [`parse_response`] says complete or the peer closes ([`parse_response_at_eof`]).

use super::url::{host_header, HttpUrl};
use super::UpnpError;

/// Largest response (head and body) accepted, and largest request body a server takes.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// Most header lines accepted in one message.
const MAX_HEADERS: usize = 64;

/// A complete HTTP response: its status and its de-chunked body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// A complete HTTP request, as a gateway model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method, as sent ("GET", "POST").
    pub method: String,
    /// The request target.
    pub path: String,
    /// The SOAPAction header, surrounding quotes removed.
    pub soap_action: Option<String>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Removes CR and LF so that a value cannot end a header line early.
pub(crate) fn header_value(v: &str) -> String {
    v.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

/// A GET for a URL (the device description).
pub fn get(url: &HttpUrl) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        header_value(&url.path),
        host_header(url)
    )
    .into_bytes()
}

/// A SOAP POST: `SOAPAction: "service_type#action"`, an XML body.
pub fn post_soap(url: &HttpUrl, service_type: &str, action: &str, envelope: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nSOAPAction: \"{}#{}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        header_value(&url.path),
        host_header(url),
        header_value(service_type),
        header_value(action),
        envelope.len()
    )
    .into_bytes();
    out.extend_from_slice(envelope);
    out
}

fn http_err(e: impl std::fmt::Display) -> UpnpError {
    UpnpError::Http(e.to_string())
}

/// How a message's body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    UntilEof,
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, UpnpError> {
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = std::str::from_utf8(h.value).map_err(http_err)?;
            if v.to_ascii_lowercase().contains("chunked") {
                return Ok(Framing::Chunked);
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(http_err)?.trim();
            let n: u64 = v
                .parse()
                .map_err(|_| UpnpError::Http(format!("bad Content-Length {v:?}")))?;
            if n > MAX_RESPONSE as u64 {
                return Err(UpnpError::TooLarge);
            }
            if length.is_some_and(|l| l != n) {
                return Err(UpnpError::Http("conflicting Content-Length".into()));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => Framing::Length(usize::try_from(n).map_err(|_| UpnpError::TooLarge)?),
        None => Framing::UntilEof,
    })
}

/// Decodes a chunked body. Ok(None): more bytes needed. At EOF a body whose last chunk
/// arrived but whose trailer did not end is accepted.
fn dechunk(mut buf: &[u8], at_eof: bool) -> Result<Option<Vec<u8>>, UpnpError> {
    let mut body = Vec::new();
    loop {
        let (consumed, size) = match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete(x)) => x,
            Ok(httparse::Status::Partial) => return truncated(at_eof),
            Err(_) => return Err(UpnpError::Http("bad chunk size".into())),
        };
        buf = buf.get(consumed..).unwrap_or(&[]);
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        let line = buf.get(..i).unwrap_or(&[]);
                        buf = buf.get(i + 1..).unwrap_or(&[]);
                        if line.is_empty() || line == b"\r" {
                            return Ok(Some(body));
                        }
                    }
                    None if at_eof => return Ok(Some(body)),
                    None => return Ok(None),
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| UpnpError::TooLarge)?;
        if size > MAX_RESPONSE || body.len() + size > MAX_RESPONSE {
            return Err(UpnpError::TooLarge);
        }
        let Some(data) = buf.get(..size) else {
            return truncated(at_eof);
        };
        body.extend_from_slice(data);
        buf = buf.get(size..).unwrap_or(&[]);
        if buf.starts_with(b"\r\n") {
            buf = buf.get(2..).unwrap_or(&[]);
        } else if buf.starts_with(b"\n") {
            buf = buf.get(1..).unwrap_or(&[]);
        } else if buf.is_empty() || buf == b"\r" {
            return truncated(at_eof);
        } else {
            return Err(UpnpError::Http("no CRLF after chunk data".into()));
        }
    }
}

fn truncated<T>(at_eof: bool) -> Result<Option<T>, UpnpError> {
    if at_eof {
        Err(UpnpError::Http("truncated message".into()))
    } else {
        Ok(None)
    }
}

/// Takes a body off `rest` as framed. Ok(None): more bytes needed.
fn body(framing: Framing, rest: &[u8], at_eof: bool) -> Result<Option<Vec<u8>>, UpnpError> {
    match framing {
        Framing::Length(n) => match rest.get(..n) {
            Some(b) => Ok(Some(b.to_vec())),
            None => truncated(at_eof),
        },
        Framing::Chunked => dechunk(rest, at_eof),
        Framing::UntilEof if at_eof => {
            if rest.len() > MAX_RESPONSE {
                return Err(UpnpError::TooLarge);
            }
            Ok(Some(rest.to_vec()))
        }
        Framing::UntilEof => Ok(None),
    }
}

fn response_config() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_multiple_spaces_in_response_status_delimiters(true);
    config
}

fn parse_response_inner(bytes: &[u8], at_eof: bool) -> Result<Option<HttpResponse>, UpnpError> {
    let mut bytes = bytes;
    // Skip interim 1xx answers (at most a few).
    for _ in 0..4 {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match response_config().parse_response(&mut resp, bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if bytes.len() > MAX_RESPONSE {
                    return Err(UpnpError::TooLarge);
                }
                return truncated(at_eof);
            }
            Err(e) => return Err(http_err(e)),
        };
        let status = resp.code.ok_or(UpnpError::Http("no status code".into()))?;
        let rest = bytes.get(head_len..).unwrap_or(&[]);
        if (100..200).contains(&status) {
            bytes = rest;
            continue;
        }
        let framing = if status == 204 || status == 304 {
            Framing::Length(0)
        } else {
            framing(resp.headers)?
        };
        return match body(framing, rest, at_eof)? {
            Some(body) => Ok(Some(HttpResponse { status, body })),
            None if bytes.len() > MAX_RESPONSE => Err(UpnpError::TooLarge),
            None => Ok(None),
        };
    }
    Err(UpnpError::Http("too many interim responses".into()))
}

/// Parses a response read so far. Ok(None): not complete yet. A response delimited by
/// neither Content-Length nor chunking completes only at EOF: see [`parse_response_at_eof`].
pub fn parse_response(bytes: &[u8]) -> Result<Option<HttpResponse>, UpnpError> {
    parse_response_inner(bytes, false)
}

/// Parses a response once the peer has closed: the body runs to the end of the bytes when
/// no length was given; a shorter message than announced is an error.
pub fn parse_response_at_eof(bytes: &[u8]) -> Result<HttpResponse, UpnpError> {
    parse_response_inner(bytes, true)?.ok_or(UpnpError::Http("truncated message".into()))
}

/// Parses a request (server side). Ok(None): not complete yet. A body needs Content-Length
/// or chunking; without either the request has none.
pub fn parse_request(bytes: &[u8]) -> Result<Option<HttpRequest>, UpnpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if bytes.len() > MAX_RESPONSE {
                return Err(UpnpError::TooLarge);
            }
            return Ok(None);
        }
        Err(e) => return Err(http_err(e)),
    };
    let method = req.method.ok_or(UpnpError::Http("no method".into()))?;
    let path = req.path.ok_or(UpnpError::Http("no path".into()))?;
    let mut soap_action = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("soapaction") {
            let v = std::str::from_utf8(h.value).map_err(http_err)?.trim();
            let v = v.strip_prefix('"').unwrap_or(v);
            let v = v.strip_suffix('"').unwrap_or(v);
            soap_action = Some(v.to_owned());
        }
    }
    let framing = match framing(req.headers)? {
        Framing::UntilEof => Framing::Length(0),
        f => f,
    };
    let rest = bytes.get(head_len..).unwrap_or(&[]);
    match body(framing, rest, false)? {
        Some(body) => Ok(Some(HttpRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            soap_action,
            body,
        })),
        None if bytes.len() > MAX_RESPONSE + 8 * 1024 => Err(UpnpError::TooLarge),
        None => Ok(None),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        412 => "Precondition Failed",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A response (server side): text/xml, Content-Length, `Connection: close`.
pub fn response(status: u16, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nConnection: close\r\nContent-Length: {}\r\nServer: burrow UPnP/1.1 burrow-igd/0.1\r\nExt:\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}
