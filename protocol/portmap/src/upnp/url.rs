//! `http://` URLs with an IP literal host: what a LAN gateway hands out. A host name would
//! need DNS, so it is refused.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::UpnpError;

/// Longest URL accepted.
const MAX_URL: usize = 2048;

/// An `http://` URL: the socket address to connect to and the request target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpUrl {
    /// The gateway's address and port (80 when the URL names none).
    pub addr: SocketAddr,
    /// The request target: starts with '/', includes any query, never a fragment.
    pub path: String,
}

fn url_err(what: &str, s: &str) -> UpnpError {
    let shown: String = s.chars().take(80).collect();
    UpnpError::Url(format!("{what}: {shown:?}"))
}

fn strip_scheme<'a>(s: &'a str, scheme: &str) -> Option<&'a str> {
    let head = s.get(..scheme.len())?;
    if head.eq_ignore_ascii_case(scheme) {
        s.get(scheme.len()..)
    } else {
        None
    }
}

impl HttpUrl {
    /// Parses an absolute `http://IP[:port][/path]` URL.
    pub fn parse(s: &str) -> Result<Self, UpnpError> {
        let s = s.trim();
        if s.len() > MAX_URL {
            return Err(url_err("too long", s));
        }
        if s.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(url_err("control character or space", s));
        }
        let rest = strip_scheme(s, "http://").ok_or_else(|| url_err("not an http:// URL", s))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(url_err("user info in URL", s));
        }
        let (ip, port): (IpAddr, &str) = if let Some(v6) = authority.strip_prefix('[') {
            let close = v6.find(']').ok_or_else(|| url_err("unclosed '['", s))?;
            let (host, after) = v6.split_at(close);
            let ip: Ipv6Addr = host.parse().map_err(|_| url_err("bad IPv6 literal", s))?;
            let after = after.get(1..).unwrap_or("");
            let port = match after.strip_prefix(':') {
                Some(p) => p,
                None if after.is_empty() => "",
                None => return Err(url_err("junk after IPv6 literal", s)),
            };
            (IpAddr::V6(ip), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, p),
                None => (authority, ""),
            };
            if host.is_empty() {
                return Err(url_err("no host", s));
            }
            let ip: Ipv4Addr = host
                .parse()
                .map_err(|_| url_err("host is not an IP literal", s))?;
            (IpAddr::V4(ip), port)
        };
        let port = if port.is_empty() {
            80
        } else if port.bytes().all(|b| b.is_ascii_digit()) {
            port.parse::<u16>().map_err(|_| url_err("bad port", s))?
        } else {
            return Err(url_err("bad port", s));
        };
        let tail = tail.split('#').next().unwrap_or("");
        let path = if tail.starts_with('/') {
            tail.to_owned()
        } else {
            format!("/{tail}")
        };
        Ok(HttpUrl {
            addr: SocketAddr::new(ip, port),
            path,
        })
    }

    /// Resolves a reference against this URL: an absolute `http://` URL, a network path
    /// (`//host/..`), an absolute path, a query or a relative path (with `.` and `..`).
    pub fn join(&self, reference: &str) -> Result<Self, UpnpError> {
        let r = reference.trim();
        if r.len() > MAX_URL {
            return Err(url_err("too long", r));
        }
        if r.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(url_err("control character or space", r));
        }
        let r = r.split('#').next().unwrap_or("");
        if r.is_empty() {
            return Ok(self.clone());
        }
        if strip_scheme(r, "http://").is_some() {
            return HttpUrl::parse(r);
        }
        if let Some(rest) = r.strip_prefix("//") {
            return HttpUrl::parse(&format!("http://{rest}"));
        }
        let scheme_end = r.find(['/', '?']).unwrap_or(r.len());
        if r.get(..scheme_end).is_some_and(|head| head.contains(':')) {
            return Err(url_err("not an http:// URL", r));
        }
        let (base_path, _) = split_query(&self.path);
        let joined = if r.starts_with('/') {
            r.to_owned()
        } else if r.starts_with('?') {
            format!("{base_path}{r}")
        } else {
            let dir = match base_path.rfind('/') {
                Some(i) => base_path.get(..=i).unwrap_or("/"),
                None => "/",
            };
            format!("{dir}{r}")
        };
        let (path, query) = split_query(&joined);
        Ok(HttpUrl {
            addr: self.addr,
            path: format!("{}{}", remove_dots(path), query),
        })
    }
}

/// Splits "/a/b?q" into ("/a/b", "?q").
fn split_query(p: &str) -> (&str, &str) {
    match p.find('?') {
        Some(i) => p.split_at(i),
        None => (p, ""),
    }
}

/// Removes `.` and `..` segments (RFC 3986 section 5.2.4, for an absolute path).
fn remove_dots(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.addr.port()) {
            (SocketAddr::V4(a), 80) => write!(f, "http://{}{}", a.ip(), self.path),
            (SocketAddr::V6(a), 80) => write!(f, "http://[{}]{}", a.ip(), self.path),
            (a, _) => write!(f, "http://{a}{}", self.path),
        }
    }
}

/// The `Host` header value for a URL: always with the port.
pub(crate) fn host_header(url: &HttpUrl) -> String {
    url.addr.to_string()
}
