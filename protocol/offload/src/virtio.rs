//! The virtio-net header a TUN device opened with `IFF_VNET_HDR` puts in front of every frame
//! (`struct virtio_net_hdr`, 10 bytes; little-endian, as on every host burrow runs on).

use crate::OffloadError;

/// Length of the header in front of each frame.
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the transport checksum is partial and must be completed from `csum_start`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was already verified (the kernel may set it on frames it hands over).
pub const F_DATA_VALID: u8 = 2;

/// What segmentation a frame asks for (`gso_type`, without the ECN bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoType {
    /// One packet, no segmentation.
    None,
    /// A TCP-over-IPv4 super-packet (TSO).
    TcpV4,
    /// A TCP-over-IPv6 super-packet (TSO).
    TcpV6,
    /// A UDP super-packet cut into datagrams of `gso_size` (USO, Linux 6.2+).
    UdpL4,
}

impl GsoType {
    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            GsoType::None => 0,
            GsoType::TcpV4 => 1,
            GsoType::TcpV6 => 4,
            GsoType::UdpL4 => 5,
        }
    }
}

/// The ECN bit of `gso_type`: the super-packet carries CWR. burrow never asks for
/// `TUN_F_TSO_ECN`, so a frame with it is refused rather than split wrongly.
const GSO_ECN: u8 = 0x80;

/// One parsed virtio-net header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// `F_NEEDS_CSUM`, `F_DATA_VALID`.
    pub flags: u8,
    /// The raw `gso_type` byte; see [`VirtioNetHdr::gso`].
    pub gso_type: u8,
    /// The kernel's idea of the headers' length; advisory only (never trusted when splitting).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the transport header (and the checksummed span) starts.
    pub csum_start: u16,
    /// Where the checksum field sits, from `csum_start`.
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Reads the header at the start of `frame`.
    pub fn parse(frame: &[u8]) -> Result<Self, OffloadError> {
        let h = frame.get(..VNET_HDR_LEN).ok_or(OffloadError::Truncated)?;
        let u16le = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        Ok(VirtioNetHdr {
            flags: h[0],
            gso_type: h[1],
            hdr_len: u16le(2),
            gso_size: u16le(4),
            csum_start: u16le(6),
            csum_offset: u16le(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) -> Result<(), OffloadError> {
        let h = out.get_mut(..VNET_HDR_LEN).ok_or(OffloadError::Truncated)?;
        h[0] = self.flags;
        h[1] = self.gso_type;
        h[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        h[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        Ok(())
    }

    /// The segmentation asked for, or why it cannot be done.
    pub fn gso(&self) -> Result<GsoType, OffloadError> {
        match self.gso_type {
            0 => Ok(GsoType::None),
            1 => Ok(GsoType::TcpV4),
            4 => Ok(GsoType::TcpV6),
            5 => Ok(GsoType::UdpL4),
            t if t & GSO_ECN != 0 => Err(OffloadError::EcnGso),
            t => Err(OffloadError::UnsupportedGso(t)),
        }
    }

    /// Whether the transport checksum is partial.
    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_what_was_written() {
        let h = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: 1,
            hdr_len: 52,
            gso_size: 1388,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write(&mut b).unwrap();
        // Little-endian on the wire: gso_size 1388 = 0x056c.
        assert_eq!(b, [1, 1, 52, 0, 0x6c, 0x05, 20, 0, 16, 0]);
        assert_eq!(VirtioNetHdr::parse(&b).unwrap(), h);
        assert_eq!(h.gso().unwrap(), GsoType::TcpV4);
    }

    #[test]
    fn short_or_unknown_headers_are_typed_errors() {
        assert_eq!(VirtioNetHdr::parse(&[0; 9]), Err(OffloadError::Truncated));
        let mut h = VirtioNetHdr {
            gso_type: 3, // VIRTIO_NET_HDR_GSO_UDP (UFO), never asked for
            ..VirtioNetHdr::default()
        };
        assert_eq!(h.gso(), Err(OffloadError::UnsupportedGso(3)));
        h.gso_type = 0x81;
        assert_eq!(h.gso(), Err(OffloadError::EcnGso));
    }
}
