//! How a host behind a box talks to it: each datagram travels to the box wrapped with its real
//! destination (outbound) or real source (inbound), since turmoil has no routers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The port every box listens on for its inside hosts (below any port it hands out).
pub const GATEWAY_PORT: u16 = 1;

/// A message between a host and its gateway box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// A datagram and its real peer (destination outbound, source inbound).
    Data(SocketAddr, &'a [u8]),
    /// "Forward this external port to me" (for boxes that give a host an extra public address).
    Bind(u16),
}

/// Wraps a datagram.
pub fn data(peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 20);
    v.push(0);
    match peer.ip() {
        IpAddr::V4(ip) => {
            v.push(4);
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(6);
            v.extend_from_slice(&ip.octets());
        }
    }
    v.extend_from_slice(&peer.port().to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A bind request.
pub fn bind(port: u16) -> Vec<u8> {
    let p = port.to_be_bytes();
    vec![1, p[0], p[1]]
}

/// Unwraps a message; `None` if it is malformed.
pub fn open(bytes: &[u8]) -> Option<Envelope<'_>> {
    match *bytes.first()? {
        0 => {
            let (ip, rest): (IpAddr, &[u8]) = match *bytes.get(1)? {
                4 => {
                    let o: [u8; 4] = bytes.get(2..6)?.try_into().ok()?;
                    (Ipv4Addr::from(o).into(), bytes.get(6..)?)
                }
                6 => {
                    let o: [u8; 16] = bytes.get(2..18)?.try_into().ok()?;
                    (Ipv6Addr::from(o).into(), bytes.get(18..)?)
                }
                _ => return None,
            };
            let port = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
            Some(Envelope::Data(SocketAddr::new(ip, port), &rest[2..]))
        }
        1 => Some(Envelope::Bind(u16::from_be_bytes(
            bytes.get(1..3)?.try_into().ok()?,
        ))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for peer in ["198.51.100.1:3478", "[2001:db8::1]:9"] {
            let peer: SocketAddr = peer.parse().unwrap();
            let w = data(peer, b"hello");
            assert_eq!(open(&w), Some(Envelope::Data(peer, b"hello")));
        }
        assert_eq!(open(&bind(4000)), Some(Envelope::Bind(4000)));
        assert_eq!(open(&[0, 4, 1]), None);
        assert_eq!(open(&[]), None);
    }
}
