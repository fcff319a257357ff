//! Segmentation: one frame read from an offloading TUN (a TSO/USO super-packet, or a single
//! packet whose checksum may be partial) becomes ordinary packets in caller-owned slots.

use crate::checksum;
use crate::virtio::{GsoType, VirtioNetHdr};
use crate::{OffloadError, TCP, TCP_PSH, UDP};

const TCP_FIN: u8 = 0x01;
const TCP_CWR: u8 = 0x80;

/// Where segments go: segment `i` starts at `i * stride + headroom` of the output buffer and
/// may take at most `stride - headroom - tailroom` bytes (room for the tunnel's own header in
/// front and its padding and tag behind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotLayout {
    /// Distance between two slots' starts.
    pub stride: usize,
    /// Bytes kept free in front of each segment.
    pub headroom: usize,
    /// Bytes kept free behind the longest segment.
    pub tailroom: usize,
}

impl SlotLayout {
    /// The longest segment a slot holds.
    pub fn capacity(&self) -> usize {
        self.stride
            .saturating_sub(self.headroom.saturating_add(self.tailroom))
    }
}

/// What a frame becomes, known before anything is copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Number of packets.
    pub segments: usize,
    /// Length of each packet but the last.
    pub segment_len: usize,
    /// Length of the last packet.
    pub last_len: usize,
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Copied as it is, the partial checksum completed if asked.
    Single { complete: Option<(usize, usize)> },
    /// Cut into segments.
    Gso {
        v6: bool,
        udp: bool,
        l4_start: usize,
        header_len: usize,
        gso_size: usize,
    },
}

/// Works out what `packet` (the bytes after the virtio header) becomes under `hdr`, checking
/// the headers it depends on. The header length is derived from the packet (the IP header as
/// `csum_start` says, then the TCP data offset or UDP's 8 bytes); the kernel's `hdr_len` is
/// never trusted.
pub fn plan(hdr: &VirtioNetHdr, packet: &[u8]) -> Result<Plan, OffloadError> {
    let gso = hdr.gso()?;
    if gso == GsoType::None {
        let complete = if hdr.needs_csum() {
            let start = usize::from(hdr.csum_start);
            let field = start + usize::from(hdr.csum_offset);
            if field + 2 > packet.len() || field % 2 != start % 2 {
                return Err(OffloadError::BadChecksumOffset);
            }
            Some((start, field))
        } else {
            None
        };
        return Ok(Plan {
            segments: 1,
            segment_len: packet.len(),
            last_len: packet.len(),
            kind: Kind::Single { complete },
        });
    }
    let version = packet.first().ok_or(OffloadError::Truncated)? >> 4;
    let l4_start = usize::from(hdr.csum_start);
    let (v6, udp) = match (gso, version) {
        (GsoType::TcpV4, 4) => (false, false),
        (GsoType::TcpV6, 6) => (true, false),
        (GsoType::UdpL4, 4) => (false, true),
        (GsoType::UdpL4, 6) => (true, true),
        _ => return Err(OffloadError::GsoMismatch),
    };
    let proto = if udp { UDP } else { TCP };
    if v6 {
        if l4_start < 40 || l4_start % 8 != 0 {
            return Err(OffloadError::BadHeaderLength);
        }
    } else if l4_start != usize::from(packet[0] & 0x0f) * 4 || l4_start < 20 {
        return Err(OffloadError::BadHeaderLength);
    }
    // The transport protocol must be the one the GSO type names (behind IPv6 extension
    // headers, the kernel's csum_start is taken as it comes).
    let named = match (v6, packet.get(if v6 { 6 } else { 9 })) {
        (_, None) => return Err(OffloadError::Truncated),
        (true, Some(_)) if l4_start > 40 => proto,
        (_, Some(&p)) => p,
    };
    if named != proto {
        return Err(OffloadError::GsoMismatch);
    }
    let l4_len = if udp {
        8
    } else {
        let off = *packet.get(l4_start + 12).ok_or(OffloadError::Truncated)?;
        usize::from(off >> 4) * 4
    };
    if l4_len < 8 || (!udp && l4_len < 20) {
        return Err(OffloadError::BadHeaderLength);
    }
    let header_len = l4_start + l4_len;
    if header_len > packet.len() {
        return Err(OffloadError::Truncated);
    }
    let gso_size = usize::from(hdr.gso_size);
    if gso_size == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    let payload = packet.len() - header_len;
    let segments = payload.div_ceil(gso_size).max(1);
    let last_payload = payload - (segments - 1) * gso_size;
    Ok(Plan {
        segments,
        segment_len: header_len + gso_size.min(payload),
        last_len: header_len + last_payload,
        kind: Kind::Gso {
            v6,
            udp,
            l4_start,
            header_len,
            gso_size,
        },
    })
}

/// Splits `packet` (the bytes after the virtio header `hdr`) into `out` laid out as `layout`,
/// writing each segment's length into `lens`; returns the number of segments.
///
/// Each segment gets its own IP header (IPv4: total length, ID + i, header checksum; IPv6:
/// payload length), its own transport header (TCP: sequence number + i × gso_size, FIN and PSH
/// only on the last, CWR only on the first; UDP: length) and a full transport checksum. A
/// single packet is copied, its partial checksum completed when `F_NEEDS_CSUM` says so.
pub fn split(
    hdr: &VirtioNetHdr,
    packet: &[u8],
    out: &mut [u8],
    layout: SlotLayout,
    lens: &mut [usize],
) -> Result<usize, OffloadError> {
    let plan = plan(hdr, packet)?;
    if layout.headroom.saturating_add(layout.tailroom) > layout.stride {
        return Err(OffloadError::BadLayout);
    }
    let need = plan
        .segments
        .checked_mul(layout.stride)
        .ok_or(OffloadError::BadLayout)?;
    if plan.segments > lens.len() || out.len() < need {
        return Err(OffloadError::TooManySegments {
            segments: plan.segments,
        });
    }
    if plan.segment_len.max(plan.last_len) > layout.capacity() {
        return Err(OffloadError::SlotTooSmall {
            need: plan.segment_len.max(plan.last_len),
            have: layout.capacity(),
        });
    }
    match plan.kind {
        Kind::Single { complete } => {
            let dst = &mut out[layout.headroom..layout.headroom + packet.len()];
            dst.copy_from_slice(packet);
            if let Some((start, field)) = complete {
                complete_at(dst, start, field);
            }
            lens[0] = packet.len();
        }
        Kind::Gso {
            v6,
            udp,
            l4_start,
            header_len,
            gso_size,
        } => {
            let payload = &packet[header_len..];
            let (src, dst_addr) = if v6 {
                (&packet[8..24], &packet[24..40])
            } else {
                (&packet[12..16], &packet[16..20])
            };
            let id0 = u16::from_be_bytes([packet[4], packet[5]]);
            let seq0 = u32::from_be_bytes([
                packet[l4_start + 4],
                packet[l4_start + 5],
                packet[l4_start + 6],
                packet[l4_start + 7],
            ]);
            let proto = if udp { UDP } else { TCP };
            for i in 0..plan.segments {
                let chunk = &payload
                    [(i * gso_size).min(payload.len())..((i + 1) * gso_size).min(payload.len())];
                let len = header_len + chunk.len();
                let at = i * layout.stride + layout.headroom;
                let seg = &mut out[at..at + len];
                seg[..header_len].copy_from_slice(&packet[..header_len]);
                seg[header_len..].copy_from_slice(chunk);
                if v6 {
                    seg[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
                } else {
                    seg[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                    seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
                    let c = checksum::ipv4_header(&seg[..l4_start]);
                    seg[10..12].copy_from_slice(&c.to_be_bytes());
                }
                let l4_len = len - l4_start;
                let field = if udp {
                    seg[l4_start + 4..l4_start + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                    6
                } else {
                    let seq = seq0.wrapping_add((i * gso_size) as u32);
                    seg[l4_start + 4..l4_start + 8].copy_from_slice(&seq.to_be_bytes());
                    let flags = &mut seg[l4_start + 13];
                    if i + 1 < plan.segments {
                        *flags &= !(TCP_FIN | TCP_PSH);
                    }
                    if i > 0 {
                        *flags &= !TCP_CWR;
                    }
                    16
                };
                let pseudo = checksum::pseudo_header(src, dst_addr, proto, l4_len);
                let c = checksum::transport(pseudo, &seg[l4_start..], field, udp);
                seg[l4_start + field..l4_start + field + 2].copy_from_slice(&c.to_be_bytes());
                lens[i] = len;
            }
        }
    }
    Ok(plan.segments)
}

/// Completes a partial checksum in place (a single packet with `F_NEEDS_CSUM`): the field holds
/// the pseudo-header sum; the result is the checksum over everything from `csum_start`.
pub fn complete_checksum(hdr: &VirtioNetHdr, packet: &mut [u8]) -> Result<(), OffloadError> {
    match plan(hdr, packet)?.kind {
        Kind::Single {
            complete: Some((start, field)),
        } => {
            complete_at(packet, start, field);
            Ok(())
        }
        Kind::Single { complete: None } => Ok(()),
        Kind::Gso { .. } => Err(OffloadError::GsoMismatch),
    }
}

/// As the kernel's `skb_checksum_help`: a computed 0 is sent as 0xffff, its one's-complement
/// twin, which UDP needs (0 means "none" there) and TCP accepts.
fn complete_at(packet: &mut [u8], start: usize, field: usize) {
    let c = match checksum::finish(checksum::add(0, &packet[start..])) {
        0 => 0xffff,
        c => c,
    };
    packet[field..field + 2].copy_from_slice(&c.to_be_bytes());
}
