//! NAT-PMP (RFC 6886) messages: the external-address and mapping requests a client sends to
//! its gateway's UDP port 5351, and the gateway's responses. Both directions encode and
//! decode, so the simulator's gateways speak the same bytes as the client.

use std::net::Ipv4Addr;

use crate::wire::{be16, be32};
use crate::TransportProtocol;

/// The gateway's NAT-PMP (and PCP) port.
pub const SERVER_PORT: u16 = 5351;
/// Where a gateway multicasts its address-change announcements (224.0.0.1).
pub const CLIENT_PORT: u16 = 5350;
/// NAT-PMP's version number (PCP is 2 on the same port).
pub const VERSION: u8 = 0;
/// The lifetime RFC 6886 recommends asking for, in seconds.
pub const RECOMMENDED_LIFETIME: u32 = 7200;

const OP_EXTERNAL_ADDRESS: u8 = 0;
const OP_MAP_UDP: u8 = 1;
const OP_MAP_TCP: u8 = 2;
const RESPONSE_BIT: u8 = 0x80;

/// A NAT-PMP message that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PmpError {
    /// Shorter than its opcode needs.
    #[error("NAT-PMP message too short: {len} bytes, {need} needed")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Bytes the message type needs.
        need: usize,
    },
    /// The version byte is not 0 (a PCP message starts with 2).
    #[error("not NAT-PMP: version {0}")]
    Version(u8),
    /// An opcode this codec does not know.
    #[error("unknown NAT-PMP opcode {0}")]
    Opcode(u8),
    /// A request where a response was expected, or the other way round.
    #[error("NAT-PMP message in the wrong direction (opcode {0:#04x})")]
    Direction(u8),
}

/// A response's result code (RFC 6886 §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    /// 0: success.
    Success,
    /// 1: the gateway speaks another version (a NAT-PMP gateway's answer to PCP).
    UnsupportedVersion,
    /// 2: mapping is turned off, or refused for this client.
    NotAuthorized,
    /// 3: the gateway has no external address (its uplink is down, say).
    NetworkFailure,
    /// 4: the gateway's mapping table is full.
    OutOfResources,
    /// 5: the gateway does not support this opcode.
    UnsupportedOpcode,
    /// Anything else.
    Other(u16),
}

impl ResultCode {
    /// The code on the wire.
    pub fn code(self) -> u16 {
        match self {
            ResultCode::Success => 0,
            ResultCode::UnsupportedVersion => 1,
            ResultCode::NotAuthorized => 2,
            ResultCode::NetworkFailure => 3,
            ResultCode::OutOfResources => 4,
            ResultCode::UnsupportedOpcode => 5,
            ResultCode::Other(c) => c,
        }
    }

    /// The code from the wire.
    pub fn from_code(c: u16) -> Self {
        match c {
            0 => ResultCode::Success,
            1 => ResultCode::UnsupportedVersion,
            2 => ResultCode::NotAuthorized,
            3 => ResultCode::NetworkFailure,
            4 => ResultCode::OutOfResources,
            5 => ResultCode::UnsupportedOpcode,
            c => ResultCode::Other(c),
        }
    }
}

/// A client's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// "What is your external address?" (also the probe: any answer means NAT-PMP is there).
    ExternalAddress,
    /// Map `internal_port` for `lifetime` seconds; lifetime 0 deletes the mapping.
    Map {
        /// UDP or TCP.
        protocol: TransportProtocol,
        /// The client's port.
        internal_port: u16,
        /// The external port wanted (0: any); the gateway may give another.
        suggested_external_port: u16,
        /// Seconds.
        lifetime: u32,
    },
}

impl Request {
    /// The request's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match *self {
            Request::ExternalAddress => vec![VERSION, OP_EXTERNAL_ADDRESS],
            Request::Map {
                protocol,
                internal_port,
                suggested_external_port,
                lifetime,
            } => {
                let mut b = Vec::with_capacity(12);
                b.extend_from_slice(&[VERSION, map_opcode(protocol), 0, 0]);
                b.extend_from_slice(&internal_port.to_be_bytes());
                b.extend_from_slice(&suggested_external_port.to_be_bytes());
                b.extend_from_slice(&lifetime.to_be_bytes());
                b
            }
        }
    }

    /// Decodes a request (the gateway's side).
    pub fn decode(b: &[u8]) -> Result<Self, PmpError> {
        let (version, op) = head(b)?;
        if version != VERSION {
            return Err(PmpError::Version(version));
        }
        if op & RESPONSE_BIT != 0 {
            return Err(PmpError::Direction(op));
        }
        match op {
            OP_EXTERNAL_ADDRESS => Ok(Request::ExternalAddress),
            OP_MAP_UDP | OP_MAP_TCP => {
                need(b, 12)?;
                Ok(Request::Map {
                    protocol: map_protocol(op),
                    internal_port: be16(b, 4),
                    suggested_external_port: be16(b, 6),
                    lifetime: be32(b, 8),
                })
            }
            op => Err(PmpError::Opcode(op)),
        }
    }
}

/// A gateway's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// The answer to [`Request::ExternalAddress`].
    ExternalAddress {
        /// Success or why not.
        result: ResultCode,
        /// Seconds since the gateway's mapping state began (it goes back on a reboot).
        epoch: u32,
        /// The external address (unspecified on an error).
        external: Ipv4Addr,
    },
    /// The answer to [`Request::Map`].
    Map {
        /// UDP or TCP.
        protocol: TransportProtocol,
        /// Success or why not.
        result: ResultCode,
        /// Seconds since the gateway's mapping state began.
        epoch: u32,
        /// The client's port, echoed.
        internal_port: u16,
        /// The external port given.
        external_port: u16,
        /// The lifetime granted, in seconds (may be shorter than asked).
        lifetime: u32,
    },
}

impl Response {
    /// The result code.
    pub fn result(&self) -> ResultCode {
        match *self {
            Response::ExternalAddress { result, .. } | Response::Map { result, .. } => result,
        }
    }

    /// The gateway's seconds since its epoch began.
    pub fn epoch(&self) -> u32 {
        match *self {
            Response::ExternalAddress { epoch, .. } | Response::Map { epoch, .. } => epoch,
        }
    }

    /// The response's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16);
        match *self {
            Response::ExternalAddress {
                result,
                epoch,
                external,
            } => {
                b.extend_from_slice(&[VERSION, RESPONSE_BIT | OP_EXTERNAL_ADDRESS]);
                b.extend_from_slice(&result.code().to_be_bytes());
                b.extend_from_slice(&epoch.to_be_bytes());
                b.extend_from_slice(&external.octets());
            }
            Response::Map {
                protocol,
                result,
                epoch,
                internal_port,
                external_port,
                lifetime,
            } => {
                b.extend_from_slice(&[VERSION, RESPONSE_BIT | map_opcode(protocol)]);
                b.extend_from_slice(&result.code().to_be_bytes());
                b.extend_from_slice(&epoch.to_be_bytes());
                b.extend_from_slice(&internal_port.to_be_bytes());
                b.extend_from_slice(&external_port.to_be_bytes());
                b.extend_from_slice(&lifetime.to_be_bytes());
            }
        }
        b
    }

    /// Decodes a response. An error response may stop after its epoch (8 bytes): some
    /// gateways send it short, and its other fields mean nothing anyway.
    pub fn decode(b: &[u8]) -> Result<Self, PmpError> {
        let (version, op) = head(b)?;
        if version != VERSION {
            return Err(PmpError::Version(version));
        }
        if op & RESPONSE_BIT == 0 {
            return Err(PmpError::Direction(op));
        }
        need(b, 8)?;
        let result = ResultCode::from_code(be16(b, 2));
        let epoch = be32(b, 4);
        let failed = result != ResultCode::Success;
        match op & !RESPONSE_BIT {
            OP_EXTERNAL_ADDRESS => {
                if failed && b.len() < 12 {
                    return Ok(Response::ExternalAddress {
                        result,
                        epoch,
                        external: Ipv4Addr::UNSPECIFIED,
                    });
                }
                need(b, 12)?;
                Ok(Response::ExternalAddress {
                    result,
                    epoch,
                    external: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
                })
            }
            o @ (OP_MAP_UDP | OP_MAP_TCP) => {
                let protocol = map_protocol(o);
                if failed && b.len() < 16 {
                    return Ok(Response::Map {
                        protocol,
                        result,
                        epoch,
                        internal_port: 0,
                        external_port: 0,
                        lifetime: 0,
                    });
                }
                need(b, 16)?;
                Ok(Response::Map {
                    protocol,
                    result,
                    epoch,
                    internal_port: be16(b, 8),
                    external_port: be16(b, 10),
                    lifetime: be32(b, 12),
                })
            }
            _ => Err(PmpError::Opcode(op)),
        }
    }
}

fn map_opcode(p: TransportProtocol) -> u8 {
    match p {
        TransportProtocol::Udp => OP_MAP_UDP,
        TransportProtocol::Tcp => OP_MAP_TCP,
    }
}

fn map_protocol(op: u8) -> TransportProtocol {
    if op == OP_MAP_TCP {
        TransportProtocol::Tcp
    } else {
        TransportProtocol::Udp
    }
}

fn head(b: &[u8]) -> Result<(u8, u8), PmpError> {
    need(b, 2)?;
    Ok((b[0], b[1]))
}

fn need(b: &[u8], n: usize) -> Result<(), PmpError> {
    if b.len() < n {
        return Err(PmpError::TooShort {
            len: b.len(),
            need: n,
        });
    }
    Ok(())
}
