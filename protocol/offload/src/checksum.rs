//! The Internet checksum (RFC 1071) as used by IPv4, TCP and UDP, and the pseudo-headers of
//! RFC 793 / RFC 768 / RFC 8200 §8.1.

/// Adds `data` to a running one's-complement sum, as big-endian 16-bit words (an odd last byte
/// is padded with zero). Pieces added one after another must each start at an even offset of
/// the checksummed span; only the last may have an odd length.
pub fn add(mut acc: u64, data: &[u8]) -> u64 {
    // 32-bit words: 2^16 ≡ 1 (mod 2^16 − 1), so folding the wider sum gives the same result.
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    if rest.len() >= 2 {
        acc += u64::from(u16::from_be_bytes([rest[0], rest[1]]));
    }
    if rest.len() % 2 == 1 {
        acc += u64::from(rest[rest.len() - 1]) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits (end-around carry), without complementing it.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field's value for a span whose sum (the field counted as zero) is `acc`.
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// The pseudo-header sum for a transport segment of `len` bytes with protocol `proto`, between
/// the addresses `src` and `dst` (4 bytes each for IPv4, 16 for IPv6).
pub fn pseudo_header(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    let acc = add(add(0, src), dst);
    acc + u64::from(proto) + len as u64
}

/// The IPv4 header checksum of `header` (its checksum field, bytes 10–11, counted as zero).
pub fn ipv4_header(header: &[u8]) -> u16 {
    let acc = add(add(0, &header[..10]), &header[12..]);
    finish(acc)
}

/// The transport checksum of `l4` (a TCP or UDP header and payload) whose checksum field sits
/// at `field` (even, inside `l4`), with the pseudo-header sum `pseudo`. UDP maps a computed 0
/// to 0xffff (0 means "no checksum" there); TCP never computes 0xffff's twin, so this is the
/// one canonical value either way.
pub fn transport(pseudo: u64, l4: &[u8], field: usize, udp: bool) -> u16 {
    let acc = add(add(pseudo, &l4[..field]), &l4[field + 2..]);
    let sum = finish(acc);
    if udp && sum == 0 {
        0xffff
    } else {
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classic worked example: 45 00 00 73 00 00 40 00 40 11 [b8 61] c0 a8 00 01 c0 a8 00 c7.
    #[test]
    fn the_textbook_ipv4_header_checksums_to_b861() {
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
    }

    /// RFC 1071 §3's example words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
    #[test]
    fn the_rfc_1071_example_folds_to_ddf2() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), 0xddf2);
        // Split at an even offset, in pieces of odd total length at the end.
        assert_eq!(fold(add(add(0, &data[..2]), &data[2..])), 0xddf2);
        assert_eq!(fold(add(0, &[0xab])), 0xab00);
        assert_eq!(fold(add(0, &[0x01, 0x02, 0x03])), 0x0402);
    }
}
