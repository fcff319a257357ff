//! PCP (RFC 6887) messages: ANNOUNCE and MAP requests and responses, with the THIRD_PARTY,
//! PREFER_FAILURE and FILTER options, over IPv4 (as IPv4-mapped IPv6) and IPv6. Both
//! directions encode and decode. PEER is not used by burrow; its body decodes as opaque.

use std::net::{IpAddr, Ipv6Addr};

use crate::wire::{be16, be32};

/// PCP's version number.
pub const VERSION: u8 = 2;
/// The largest PCP message (RFC 6887 §7).
pub const MAX_MESSAGE: usize = 1100;
/// A request or response header's length.
pub const HEADER_LEN: usize = 24;
/// A MAP body's length.
pub const MAP_LEN: usize = 36;
/// The MAP protocol number for UDP.
pub const PROTOCOL_UDP: u8 = 17;
/// The MAP protocol number for TCP.
pub const PROTOCOL_TCP: u8 = 6;

const RESPONSE_BIT: u8 = 0x80;

/// A PCP message that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcpError {
    /// Shorter than its header and body need.
    #[error("PCP message too short: {len} bytes, {need} needed")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Longer than 1,100 bytes, or not a multiple of 4.
    #[error("PCP message of {0} bytes (at most 1,100, a multiple of 4)")]
    Length(usize),
    /// Not version 2 (a NAT-PMP answer starts with 0).
    #[error("not PCP: version {0}")]
    Version(u8),
    /// A request where a response was expected, or the other way round.
    #[error("PCP message in the wrong direction")]
    Direction,
    /// An option runs past the end of the message, or has the wrong length for its code.
    #[error("malformed PCP option {code}")]
    Option {
        /// The option's code.
        code: u8,
    },
}

/// A PCP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Opcode {
    /// 0: learn the server's epoch (and, unsolicited, hear of its reboot).
    Announce,
    /// 1: create, renew or delete a mapping.
    Map,
    /// 2: a mapping toward one peer (not used by burrow).
    Peer,
    /// Anything else.
    Other(u8),
}

impl Opcode {
    /// The opcode on the wire.
    pub fn code(self) -> u8 {
        match self {
            Opcode::Announce => 0,
            Opcode::Map => 1,
            Opcode::Peer => 2,
            Opcode::Other(c) => c & 0x7f,
        }
    }

    /// The opcode from the wire (without the R bit).
    pub fn from_code(c: u8) -> Self {
        match c & 0x7f {
            0 => Opcode::Announce,
            1 => Opcode::Map,
            2 => Opcode::Peer,
            c => Opcode::Other(c),
        }
    }
}

/// A response's result code (RFC 6887 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    /// 0.
    Success,
    /// 1: the server speaks another version.
    UnsupportedVersion,
    /// 2: refused by policy.
    NotAuthorized,
    /// 3: the server could not parse the request.
    MalformedRequest,
    /// 4.
    UnsupportedOpcode,
    /// 5: a mandatory option the server does not know.
    UnsupportedOption,
    /// 6.
    MalformedOption,
    /// 7: the server has no external address just now.
    NetworkFailure,
    /// 8: out of mappings (or of the port asked for, with PREFER_FAILURE).
    NoResources,
    /// 9.
    UnsupportedProtocol,
    /// 10: this client's quota is spent.
    UserExceededQuota,
    /// 11: the suggested external address or port cannot be given (PREFER_FAILURE).
    CannotProvideExternal,
    /// 12: the client's address in the request is not the packet's source (a NAT between).
    AddressMismatch,
    /// 13.
    ExcessiveRemotePeers,
    /// Anything else.
    Other(u8),
}

impl ResultCode {
    /// The code on the wire.
    pub fn code(self) -> u8 {
        match self {
            ResultCode::Success => 0,
            ResultCode::UnsupportedVersion => 1,
            ResultCode::NotAuthorized => 2,
            ResultCode::MalformedRequest => 3,
            ResultCode::UnsupportedOpcode => 4,
            ResultCode::UnsupportedOption => 5,
            ResultCode::MalformedOption => 6,
            ResultCode::NetworkFailure => 7,
            ResultCode::NoResources => 8,
            ResultCode::UnsupportedProtocol => 9,
            ResultCode::UserExceededQuota => 10,
            ResultCode::CannotProvideExternal => 11,
            ResultCode::AddressMismatch => 12,
            ResultCode::ExcessiveRemotePeers => 13,
            ResultCode::Other(c) => c,
        }
    }

    /// The code from the wire.
    pub fn from_code(c: u8) -> Self {
        match c {
            0 => ResultCode::Success,
            1 => ResultCode::UnsupportedVersion,
            2 => ResultCode::NotAuthorized,
            3 => ResultCode::MalformedRequest,
            4 => ResultCode::UnsupportedOpcode,
            5 => ResultCode::UnsupportedOption,
            6 => ResultCode::MalformedOption,
            7 => ResultCode::NetworkFailure,
            8 => ResultCode::NoResources,
            9 => ResultCode::UnsupportedProtocol,
            10 => ResultCode::UserExceededQuota,
            11 => ResultCode::CannotProvideExternal,
            12 => ResultCode::AddressMismatch,
            13 => ResultCode::ExcessiveRemotePeers,
            c => ResultCode::Other(c),
        }
    }

    /// Whether retrying later may succeed (RFC 6887 §7.4: short-lifetime errors).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ResultCode::NetworkFailure | ResultCode::NoResources | ResultCode::UserExceededQuota
        )
    }
}

/// A MAP body: the same fields in a request and its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapBody {
    /// Random per mapping; the response echoes it, and a renewal reuses it.
    pub nonce: [u8; 12],
    /// [`PROTOCOL_UDP`], [`PROTOCOL_TCP`], or 0 for all.
    pub protocol: u8,
    /// The client's port.
    pub internal_port: u16,
    /// Suggested (request) or assigned (response) external port.
    pub external_port: u16,
    /// Suggested (request; unspecified for any) or assigned (response) external address.
    pub external_ip: IpAddr,
}

/// A PCP option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcpOption {
    /// 1: map for another host (burrow never sends it, and a server may refuse it).
    ThirdParty(IpAddr),
    /// 2: fail rather than give another port or address than suggested.
    PreferFailure,
    /// 3: only this remote prefix and port may use the mapping.
    Filter {
        /// Prefix length over the IPv6 form of the address (IPv4: 96 + the v4 prefix).
        prefix_length: u8,
        /// Remote port (0: any).
        remote_port: u16,
        /// Remote address.
        remote_ip: IpAddr,
    },
    /// Any other option, kept as it came.
    Unknown {
        /// Its code.
        code: u8,
        /// Its data, unpadded.
        data: Vec<u8>,
    },
}

const OPTION_THIRD_PARTY: u8 = 1;
const OPTION_PREFER_FAILURE: u8 = 2;
const OPTION_FILTER: u8 = 3;

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub opcode: Opcode,
    /// Seconds wanted (0 deletes a mapping; ANNOUNCE sends 0).
    pub lifetime: u32,
    /// The client's own address, as it sends from (the server checks it: ADDRESS_MISMATCH).
    pub client_ip: IpAddr,
    /// MAP's body.
    pub map: Option<MapBody>,
    /// Options, in order.
    pub options: Vec<PcpOption>,
    /// Any other opcode's body, as it came.
    pub other_body: Vec<u8>,
}

impl Request {
    /// An ANNOUNCE: learns whether PCP is there, and the server's epoch.
    pub fn announce(client_ip: IpAddr) -> Self {
        Request {
            opcode: Opcode::Announce,
            lifetime: 0,
            client_ip,
            map: None,
            options: Vec::new(),
            other_body: Vec::new(),
        }
    }

    /// A MAP request.
    pub fn map(client_ip: IpAddr, lifetime: u32, body: MapBody) -> Self {
        Request {
            opcode: Opcode::Map,
            lifetime,
            client_ip,
            map: Some(body),
            options: Vec::new(),
            other_body: Vec::new(),
        }
    }

    /// The request's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + MAP_LEN);
        b.extend_from_slice(&[VERSION, self.opcode.code(), 0, 0]);
        b.extend_from_slice(&self.lifetime.to_be_bytes());
        b.extend_from_slice(&ip16(self.client_ip));
        encode_body(&mut b, self.map.as_ref(), &self.other_body);
        encode_options(&mut b, &self.options);
        b
    }

    /// Decodes a request (the server's side).
    pub fn decode(b: &[u8]) -> Result<Self, PcpError> {
        check_length(b)?;
        if b[1] & RESPONSE_BIT != 0 {
            return Err(PcpError::Direction);
        }
        let opcode = Opcode::from_code(b[1]);
        let (map, other_body, rest) = decode_body(opcode, &b[HEADER_LEN..])?;
        Ok(Request {
            opcode,
            lifetime: be32(b, 4),
            client_ip: ip_from16(&b[8..24]),
            map,
            options: decode_options(rest)?,
            other_body,
        })
    }
}

/// A server's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// What it answers.
    pub opcode: Opcode,
    /// Success or why not.
    pub result: ResultCode,
    /// Seconds granted (on an error: how long before retrying makes sense).
    pub lifetime: u32,
    /// Seconds since the server's mapping state began (it goes back on a reboot).
    pub epoch: u32,
    /// MAP's body (the nonce echoed; the external port and address given).
    pub map: Option<MapBody>,
    /// Options, in order.
    pub options: Vec<PcpOption>,
    /// Any other opcode's body, as it came.
    pub other_body: Vec<u8>,
}

impl Response {
    /// The response's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + MAP_LEN);
        b.extend_from_slice(&[
            VERSION,
            RESPONSE_BIT | self.opcode.code(),
            0,
            self.result.code(),
        ]);
        b.extend_from_slice(&self.lifetime.to_be_bytes());
        b.extend_from_slice(&self.epoch.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        encode_body(&mut b, self.map.as_ref(), &self.other_body);
        encode_options(&mut b, &self.options);
        b
    }

    /// Decodes a response. An error response may carry no body: the server could not parse
    /// the request it answers.
    pub fn decode(b: &[u8]) -> Result<Self, PcpError> {
        check_length(b)?;
        if b[1] & RESPONSE_BIT == 0 {
            return Err(PcpError::Direction);
        }
        let opcode = Opcode::from_code(b[1]);
        let result = ResultCode::from_code(b[3]);
        let body = &b[HEADER_LEN..];
        let (map, other_body, rest) = if result != ResultCode::Success && body.is_empty() {
            (None, Vec::new(), body)
        } else {
            decode_body(opcode, body)?
        };
        Ok(Response {
            opcode,
            result,
            lifetime: be32(b, 4),
            epoch: be32(b, 8),
            map,
            options: decode_options(rest)?,
            other_body,
        })
    }
}

/// The 16-byte form of an address: IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
pub fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// An address from its 16-byte form (IPv4-mapped back to IPv4).
pub fn ip_from16(b: &[u8]) -> IpAddr {
    let mut o = [0u8; 16];
    let n = b.len().min(16);
    o[..n].copy_from_slice(&b[..n]);
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn check_length(b: &[u8]) -> Result<(), PcpError> {
    if b.len() < HEADER_LEN {
        return Err(PcpError::TooShort {
            len: b.len(),
            need: HEADER_LEN,
        });
    }
    if b.len() > MAX_MESSAGE || b.len() % 4 != 0 {
        return Err(PcpError::Length(b.len()));
    }
    if b[0] != VERSION {
        return Err(PcpError::Version(b[0]));
    }
    Ok(())
}

fn encode_body(b: &mut Vec<u8>, map: Option<&MapBody>, other: &[u8]) {
    if let Some(m) = map {
        b.extend_from_slice(&m.nonce);
        b.extend_from_slice(&[m.protocol, 0, 0, 0]);
        b.extend_from_slice(&m.internal_port.to_be_bytes());
        b.extend_from_slice(&m.external_port.to_be_bytes());
        b.extend_from_slice(&ip16(m.external_ip));
    } else {
        b.extend_from_slice(other);
    }
}

type Body<'a> = (Option<MapBody>, Vec<u8>, &'a [u8]);

fn decode_body(opcode: Opcode, b: &[u8]) -> Result<Body<'_>, PcpError> {
    match opcode {
        Opcode::Announce => Ok((None, Vec::new(), b)),
        Opcode::Map => {
            if b.len() < MAP_LEN {
                return Err(PcpError::TooShort {
                    len: HEADER_LEN + b.len(),
                    need: HEADER_LEN + MAP_LEN,
                });
            }
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&b[..12]);
            let body = MapBody {
                nonce,
                protocol: b[12],
                internal_port: be16(b, 16),
                external_port: be16(b, 18),
                external_ip: ip_from16(&b[20..36]),
            };
            Ok((Some(body), Vec::new(), &b[MAP_LEN..]))
        }
        // PEER's body is MAP's plus the remote peer: 56 bytes; others are unknown to us and
        // kept whole (no options can be told apart from them).
        Opcode::Peer if b.len() >= 56 => Ok((None, b[..56].to_vec(), &b[56..])),
        _ => Ok((None, b.to_vec(), &[])),
    }
}

fn encode_options(b: &mut Vec<u8>, options: &[PcpOption]) {
    for o in options {
        let (code, data): (u8, Vec<u8>) = match o {
            PcpOption::ThirdParty(ip) => (OPTION_THIRD_PARTY, ip16(*ip).to_vec()),
            PcpOption::PreferFailure => (OPTION_PREFER_FAILURE, Vec::new()),
            PcpOption::Filter {
                prefix_length,
                remote_port,
                remote_ip,
            } => {
                let mut d = vec![0, *prefix_length];
                d.extend_from_slice(&remote_port.to_be_bytes());
                d.extend_from_slice(&ip16(*remote_ip));
                (OPTION_FILTER, d)
            }
            PcpOption::Unknown { code, data } => (*code, data.clone()),
        };
        let len = data.len().min(usize::from(u16::MAX));
        b.extend_from_slice(&[code, 0]);
        b.extend_from_slice(&(len as u16).to_be_bytes());
        b.extend_from_slice(&data[..len]);
        b.resize(b.len() + (4 - len % 4) % 4, 0);
    }
}

fn decode_options(mut b: &[u8]) -> Result<Vec<PcpOption>, PcpError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 4 {
            return Err(PcpError::Option { code: b[0] });
        }
        let code = b[0];
        let len = usize::from(be16(b, 2));
        let padded = len + (4 - len % 4) % 4;
        let Some(data) = b.get(4..4 + len) else {
            return Err(PcpError::Option { code });
        };
        let option = match code {
            OPTION_THIRD_PARTY if len == 16 => PcpOption::ThirdParty(ip_from16(data)),
            OPTION_PREFER_FAILURE if len == 0 => PcpOption::PreferFailure,
            OPTION_FILTER if len == 20 => PcpOption::Filter {
                prefix_length: data[1],
                remote_port: be16(data, 2),
                remote_ip: ip_from16(&data[4..20]),
            },
            OPTION_THIRD_PARTY | OPTION_PREFER_FAILURE | OPTION_FILTER => {
                return Err(PcpError::Option { code })
            }
            _ => PcpOption::Unknown {
                code,
                data: data.to_vec(),
            },
        };
        out.push(option);
        b = b.get(4 + padded..).unwrap_or(&[]);
    }
    Ok(out)
}
