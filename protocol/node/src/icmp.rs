//! Packets too big for a peer's path: an ICMP "fragmentation needed" (RFC 792, RFC 1191) or
//! ICMPv6 "packet too big" (RFC 4443) for the sender's stack, or IPv4 fragments (RFC 791)
//! for a packet that allows them, so TCP lowers its segment size instead of losing packets.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The most of an offending packet an ICMPv4 error quotes (the error stays within 576 bytes).
const QUOTE_V4: usize = 576 - 20 - 8;
/// The ICMPv6 error stays within the IPv6 minimum MTU.
const QUOTE_V6: usize = 1280 - 40 - 8;

/// What to do with a packet larger than the path's MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TooBig {
    /// Write this error back to the sender (into the TUN): the packet is dropped.
    Tell(Vec<u8>),
    /// Send these fragments instead (IPv4 without Don't Fragment).
    Fragments(Vec<Vec<u8>>),
    /// Drop silently (no error is owed: an ICMP error, a multicast source, malformed).
    Drop,
}

/// What to do with `packet`, which is larger than `mtu` (an IP packet size, at least 68).
pub fn too_big(packet: &[u8], mtu: usize) -> TooBig {
    match packet.first().map(|b| b >> 4) {
        Some(4) => too_big_v4(packet, mtu),
        Some(6) => too_big_v6(packet, mtu),
        _ => TooBig::Drop,
    }
}

fn too_big_v4(p: &[u8], mtu: usize) -> TooBig {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = p
        .get(2..4)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    if ihl < 20 || p.len() < ihl || total != p.len() || mtu < 68 {
        return TooBig::Drop;
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let flags_offset = u16::from_be_bytes([p[6], p[7]]);
    let dont_fragment = flags_offset & 0x4000 != 0;
    if !dont_fragment {
        // A fragment whose offset would overflow the field is malformed already.
        if usize::from(flags_offset & 0x1fff) * 8 + p.len() > 0xffff {
            return TooBig::Drop;
        }
        return TooBig::Fragments(fragment_v4(p, ihl, mtu));
    }
    let later_fragment = flags_offset & 0x1fff != 0;
    let icmp_error = p[9] == 1 && p.get(ihl).is_some_and(|t| matches!(t, 3 | 4 | 5 | 11 | 12));
    if later_fragment || icmp_error || !unicast_v4(src) || !unicast_v4(dst) {
        return TooBig::Drop;
    }
    let quote = &p[..p.len().min(QUOTE_V4)];
    let mut icmp = Vec::with_capacity(8 + quote.len());
    icmp.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
    icmp.extend_from_slice(&(mtu.min(0xffff) as u16).to_be_bytes());
    icmp.extend_from_slice(quote);
    let sum = checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    TooBig::Tell(ipv4_packet(dst, src, 1, &icmp))
}

fn too_big_v6(p: &[u8], mtu: usize) -> TooBig {
    if p.len() < 40 || usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 != p.len() {
        return TooBig::Drop;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).expect("16 bytes"));
    // ICMPv6 errors (types below 128) are never answered with errors; the next header is
    // checked only when it comes first.
    let icmp_error = p[6] == 58 && p.get(40).is_some_and(|t| *t < 128);
    // Never about a packet to a multicast group (RFC 4443 §2.4 e: the error's source would be
    // the group).
    if icmp_error
        || src.is_unspecified()
        || src.is_multicast()
        || src.is_loopback()
        || dst.is_multicast()
    {
        return TooBig::Drop;
    }
    let quote = &p[..p.len().min(QUOTE_V6)];
    let mut icmp = Vec::with_capacity(8 + quote.len());
    icmp.extend_from_slice(&[2, 0, 0, 0]);
    icmp.extend_from_slice(&(mtu.max(1280) as u32).to_be_bytes());
    icmp.extend_from_slice(quote);
    let len = (icmp.len() as u32).to_be_bytes();
    let sum = checksum(&[&dst.octets(), &src.octets(), &len, &[0, 0, 0, 58], &icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut out = Vec::with_capacity(40 + icmp.len());
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    out.extend_from_slice(&[58, 64]);
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&icmp);
    TooBig::Tell(out)
}

/// Splits an IPv4 packet (header length `ihl`) into fragments of at most `mtu` bytes. The
/// first keeps the header's options; later ones carry the 20-byte header only.
fn fragment_v4(p: &[u8], ihl: usize, mtu: usize) -> Vec<Vec<u8>> {
    let flags_offset = u16::from_be_bytes([p[6], p[7]]);
    let more_after = flags_offset & 0x2000 != 0;
    let base = usize::from(flags_offset & 0x1fff) * 8;
    let payload = &p[ihl..];
    let mut out = Vec::new();
    let mut at = 0;
    while at < payload.len() || out.is_empty() {
        let hlen = if at == 0 { ihl } else { 20 };
        let room = (mtu - hlen) / 8 * 8;
        let take = room.min(payload.len() - at);
        let last = at + take == payload.len();
        let mut f = Vec::with_capacity(hlen + take);
        f.extend_from_slice(&p[..hlen]);
        f[0] = 0x40 | (hlen / 4) as u8;
        f[2..4].copy_from_slice(&((hlen + take) as u16).to_be_bytes());
        let mf = if last && !more_after { 0 } else { 0x2000 };
        let offset = ((base + at) / 8) as u16;
        f[6..8].copy_from_slice(&(mf | offset).to_be_bytes());
        f[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&[&f[..hlen]]);
        f[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&payload[at..at + take]);
        out.push(f);
        at += take;
    }
    out
}

fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0, 64, protocol, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let sum = checksum(&[&h]);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn unicast_v4(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback())
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts` (each even-length
/// except possibly the last).
pub(crate) fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [b] = chunks.remainder() {
            sum += u32::from(*b) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(len: usize, df: bool, ihl: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x40 | (ihl / 4) as u8;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        if df {
            p[6] = 0x40;
        }
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[100, 64, 0, 1]);
        p[16..20].copy_from_slice(&[100, 64, 0, 2]);
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let sum = checksum(&[&p[..ihl]]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
    }

    fn v6(len: usize, next: u8) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        p[6] = next;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd7a:115c:a1e0::1".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd7a:115c:a1e0::2".parse::<Ipv6Addr>().unwrap().octets());
        p
    }

    #[test]
    fn ipv4_with_dont_fragment_gets_fragmentation_needed_from_its_destination() {
        let p = v4(1440, true, 20);
        let TooBig::Tell(e) = too_big(&p, 1328) else {
            panic!("expected an error")
        };
        assert_eq!(checksum(&[&e[..20]]), 0, "header checksum");
        assert_eq!(
            &e[12..16],
            &[100, 64, 0, 2],
            "from the packet's destination"
        );
        assert_eq!(&e[16..20], &[100, 64, 0, 1], "to its source");
        assert_eq!(e[9], 1);
        assert_eq!(&e[20..22], &[3, 4]);
        assert_eq!(u16::from_be_bytes([e[26], e[27]]), 1328);
        assert_eq!(checksum(&[&e[20..]]), 0, "ICMP checksum");
        assert_eq!(&e[28..], &p[..548], "quotes the packet's start");
        assert!(e.len() <= 576);
    }

    #[test]
    fn ipv6_gets_packet_too_big_with_a_valid_checksum() {
        let p = v6(1440, 6);
        let TooBig::Tell(e) = too_big(&p, 1392) else {
            panic!("expected an error")
        };
        assert_eq!(e.len(), 1280);
        assert_eq!(&e[8..24], &p[24..40]);
        assert_eq!(&e[24..40], &p[8..24]);
        assert_eq!(e[6], 58);
        assert_eq!(e[40], 2);
        assert_eq!(u32::from_be_bytes([e[44], e[45], e[46], e[47]]), 1392);
        let len = ((e.len() - 40) as u32).to_be_bytes();
        assert_eq!(
            checksum(&[&e[8..24], &e[24..40], &len, &[0, 0, 0, 58], &e[40..]]),
            0
        );
    }

    #[test]
    fn errors_are_not_answered_with_errors() {
        let mut p = v4(1440, true, 20);
        p[9] = 1;
        p[20] = 3;
        assert_eq!(too_big(&p, 1328), TooBig::Drop);
        let mut q = v6(1440, 58);
        q[40] = 1;
        assert_eq!(too_big(&q, 1328), TooBig::Drop);
        // An echo request is answered.
        q[40] = 128;
        assert!(matches!(too_big(&q, 1328), TooBig::Tell(_)));
    }

    #[test]
    fn malformed_packets_are_dropped_not_panicked_on() {
        for p in [
            vec![],
            vec![0x45],
            vec![0x60; 39],
            vec![0x4f; 30],
            vec![0x12; 100],
        ] {
            assert_eq!(too_big(&p, 1280), TooBig::Drop);
        }
    }

    proptest! {
        /// Fragments fit the MTU, carry valid headers, and put back together by offset give
        /// the original payload, header fields kept.
        #[test]
        fn fragments_reassemble_to_the_packet(
            len in 21usize..4000,
            mtu in 68usize..1500,
            options in 0usize..4,
        ) {
            let ihl = 20 + options * 4;
            prop_assume!(len > ihl);
            let p = v4(len, false, ihl);
            let TooBig::Fragments(fs) = too_big(&p, mtu) else {
                panic!("expected fragments")
            };
            let mut payload = vec![None; len - ihl];
            for (k, f) in fs.iter().enumerate() {
                prop_assert!(f.len() <= mtu);
                let h = usize::from(f[0] & 0x0f) * 4;
                prop_assert_eq!(checksum(&[&f[..h]]), 0);
                prop_assert_eq!(usize::from(u16::from_be_bytes([f[2], f[3]])), f.len());
                prop_assert_eq!(&f[4..6], &p[4..6]);
                prop_assert_eq!(&f[12..20], &p[12..20]);
                let fo = u16::from_be_bytes([f[6], f[7]]);
                prop_assert_eq!(fo & 0x2000 != 0, k + 1 < fs.len());
                let off = usize::from(fo & 0x1fff) * 8;
                for (j, b) in f[h..].iter().enumerate() {
                    prop_assert!(payload[off + j].is_none());
                    payload[off + j] = Some(*b);
                }
            }
            let back: Vec<u8> = payload.into_iter().map(|b| b.expect("covered")).collect();
            prop_assert_eq!(&back[..], &p[ihl..]);
        }

        /// Arbitrary bytes never panic.
        #[test]
        fn arbitrary_bytes_never_panic(p in proptest::collection::vec(any::<u8>(), 0..2000), mtu in 68usize..1500) {
            let _ = too_big(&p, mtu);
        }
    }
}
