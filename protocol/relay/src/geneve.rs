//! The 8-byte Geneve header (RFC 8926, fixed part, no options) that frames every packet on a
//! relay path: the VNI names the relay endpoint, the protocol says disco or WireGuard, and the
//! control bit marks the bind handshake.

use thiserror::Error;

/// Length of the fixed Geneve header; a relay path adds this much to every packet.
pub const GENEVE_HEADER_LEN: usize = 8;
/// Largest VNI (24 bits). VNI 0 is never allocated.
pub const MAX_VNI: u32 = 0x00FF_FFFF;
/// Protocol type of a disco payload (Tailscale's value).
pub const PROTOCOL_DISCO: u16 = 0x7A11;
/// Protocol type of a WireGuard payload (Tailscale's value).
pub const PROTOCOL_WIREGUARD: u16 = 0x7A12;

const CONTROL_BIT: u8 = 0x80;

/// What a Geneve packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GeneveProtocol {
    /// A disco datagram (magic, sender key, nonce, box).
    Disco,
    /// A WireGuard message.
    WireGuard,
}

impl GeneveProtocol {
    /// The 16-bit protocol type on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            GeneveProtocol::Disco => PROTOCOL_DISCO,
            GeneveProtocol::WireGuard => PROTOCOL_WIREGUARD,
        }
    }
}

/// The fixed Geneve header burrow reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneveHeader {
    /// The O (control) bit: set on Bind, Challenge and Answer only.
    pub control: bool,
    /// Disco or WireGuard.
    pub protocol: GeneveProtocol,
    /// The relay endpoint's VNI (24 bits).
    pub vni: u32,
}

/// Why bytes are not a Geneve header burrow reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Error)]
pub enum GeneveError {
    /// Shorter than the 8-byte header.
    #[error("Geneve packet of {len} bytes is shorter than the 8-byte header")]
    Truncated {
        /// The datagram's length.
        len: usize,
    },
    /// Version bits other than 0.
    #[error("Geneve version {version} (only 0 exists)")]
    Version {
        /// The version bits.
        version: u8,
    },
    /// Options are present (burrow and Tailscale use none).
    #[error("Geneve options of {words} words (none are used on relay paths)")]
    Options {
        /// The option length in 4-byte words.
        words: u8,
    },
    /// The critical bit or a reserved bit or byte is set.
    #[error("Geneve reserved bits set")]
    Reserved,
    /// A protocol type other than disco (0x7A11) or WireGuard (0x7A12).
    #[error("Geneve protocol type {0:#06x} is neither disco nor WireGuard")]
    Protocol(u16),
    /// A VNI over 24 bits (encoding only).
    #[error("VNI {0:#x} does not fit in 24 bits")]
    VniTooLarge(u32),
    /// The caller's buffer is too small (encoding only).
    #[error("buffer of {have} bytes cannot hold {need}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

impl GeneveHeader {
    /// Writes the 8 header bytes at the start of `out`; returns 8.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, GeneveError> {
        if self.vni > MAX_VNI {
            return Err(GeneveError::VniTooLarge(self.vni));
        }
        let have = out.len();
        let out = out
            .get_mut(..GENEVE_HEADER_LEN)
            .ok_or(GeneveError::BufferTooSmall {
                need: GENEVE_HEADER_LEN,
                have,
            })?;
        let [p0, p1] = self.protocol.to_u16().to_be_bytes();
        let [_, v0, v1, v2] = self.vni.to_be_bytes();
        let flags = if self.control { CONTROL_BIT } else { 0 };
        out.copy_from_slice(&[0, flags, p0, p1, v0, v1, v2, 0]);
        Ok(GENEVE_HEADER_LEN)
    }

    /// Reads the header at the start of `datagram` and returns it with the payload after it.
    /// Strict: version 0, no options, no critical or reserved bits, disco or WireGuard.
    pub fn decode(datagram: &[u8]) -> Result<(GeneveHeader, &[u8]), GeneveError> {
        let h = datagram
            .get(..GENEVE_HEADER_LEN)
            .ok_or(GeneveError::Truncated {
                len: datagram.len(),
            })?;
        if h[0] >> 6 != 0 {
            return Err(GeneveError::Version { version: h[0] >> 6 });
        }
        if h[0] & 0x3F != 0 {
            return Err(GeneveError::Options { words: h[0] & 0x3F });
        }
        if h[1] & !CONTROL_BIT != 0 || h[7] != 0 {
            return Err(GeneveError::Reserved);
        }
        let protocol = match u16::from_be_bytes([h[2], h[3]]) {
            PROTOCOL_DISCO => GeneveProtocol::Disco,
            PROTOCOL_WIREGUARD => GeneveProtocol::WireGuard,
            other => return Err(GeneveError::Protocol(other)),
        };
        let header = GeneveHeader {
            control: h[1] & CONTROL_BIT != 0,
            protocol,
            vni: u32::from_be_bytes([0, h[4], h[5], h[6]]),
        };
        Ok((header, &datagram[GENEVE_HEADER_LEN..]))
    }
}

/// Whether a datagram on a node's socket is Geneve from a relay rather than STUN, disco or
/// WireGuard: at least 8 bytes, version 0, byte 1's low six bits and byte 7 zero, and protocol
/// WireGuard, or disco with the disco magic right after the header (magicsock's rule). Plain
/// disco has 0xF09F and WireGuard zeros in bytes 2–3; STUN needs 0x42 in byte 7.
pub fn looks_like_geneve(datagram: &[u8]) -> bool {
    let Some(h) = datagram.get(..GENEVE_HEADER_LEN) else {
        return false;
    };
    if h[0] >> 6 != 0 || h[1] & 0x3F != 0 || h[7] != 0 {
        return false;
    }
    match u16::from_be_bytes([h[2], h[3]]) {
        PROTOCOL_WIREGUARD => true,
        PROTOCOL_DISCO => datagram[GENEVE_HEADER_LEN..].starts_with(&burrow_disco::MAGIC),
        _ => false,
    }
}

/// Frames `payload` for a relay path: the Geneve header (control bit clear) then the payload,
/// written into `out`; returns the length written. No allocation.
pub fn encap(
    vni: u32,
    protocol: GeneveProtocol,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, GeneveError> {
    let need = GENEVE_HEADER_LEN + payload.len();
    if out.len() < need {
        return Err(GeneveError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    GeneveHeader {
        control: false,
        protocol,
        vni,
    }
    .encode(out)?;
    out[GENEVE_HEADER_LEN..need].copy_from_slice(payload);
    Ok(need)
}

/// Strips the Geneve header of a packet received on a relay path: the header (its VNI names
/// the path, with the relay's address) and the disco or WireGuard payload.
pub fn decap(datagram: &[u8]) -> Result<(GeneveHeader, &[u8]), GeneveError> {
    GeneveHeader::decode(datagram)
}

/// Frames a control (bind handshake) disco datagram: header with the control bit set.
pub(crate) fn control_frame(vni: u32, disco: &[u8]) -> Result<Vec<u8>, GeneveError> {
    let mut out = vec![0; GENEVE_HEADER_LEN + disco.len()];
    GeneveHeader {
        control: true,
        protocol: GeneveProtocol::Disco,
        vni,
    }
    .encode(&mut out)?;
    out[GENEVE_HEADER_LEN..].copy_from_slice(disco);
    Ok(out)
}
