//! TUN offload: splitting arbitrary frames and coalescing arbitrary packets.

use burrow_offload::{
    checksum, split, Coalescer, GsoType, SlotLayout, VirtioNetHdr, MAX_SEGMENTS, VNET_HDR_LEN,
};

const LAYOUT: SlotLayout = SlotLayout {
    stride: 2048,
    headroom: 16,
    tailroom: 32,
};

/// First byte: bit 0 picks splitting (0) or coalescing (1); for coalescing, bit 1 says the TUN
/// took USO and bit 2 fixes each packet's lengths and checksums first, so merges happen.
pub fn offload(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        split_one(rest);
    } else {
        coalesce(rest, mode & 2 != 0, mode & 4 != 0);
    }
}

/// Splits one frame; whatever splits must be sane: segments no longer than the slots, and for
/// a super-packet every segment's checksums verify.
fn split_one(frame: &[u8]) -> Vec<Vec<u8>> {
    let Ok(hdr) = VirtioNetHdr::parse(frame) else {
        return Vec::new();
    };
    let mut out = vec![0u8; MAX_SEGMENTS * LAYOUT.stride];
    let mut lens = [0usize; MAX_SEGMENTS];
    let Ok(n) = split(&hdr, &frame[VNET_HDR_LEN..], &mut out, LAYOUT, &mut lens) else {
        return Vec::new();
    };
    let segments: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let at = i * LAYOUT.stride + LAYOUT.headroom;
            assert!(lens[i] <= LAYOUT.capacity());
            out[at..at + lens[i]].to_vec()
        })
        .collect();
    if let Ok(gso @ (GsoType::TcpV4 | GsoType::TcpV6 | GsoType::UdpL4)) = hdr.gso() {
        let proto = if gso == GsoType::UdpL4 { 17 } else { 6 };
        for s in &segments {
            assert!(
                transport_verifies(s, usize::from(hdr.csum_start), proto),
                "a split segment's checksum verifies"
            );
        }
    }
    segments
}

/// Pushes length-prefixed packets; every frame splits back, and the packets that come out are
/// the packets that went in.
fn coalesce(data: &[u8], udp: bool, fix: bool) {
    let mut packets = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && packets.len() < 256 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])) % 1900; // every packet fits a slot
        rest = &rest[2..];
        let take = len.min(rest.len());
        let mut p = rest[..take].to_vec();
        rest = &rest[take..];
        if fix {
            fix_up(&mut p);
        }
        packets.push(p);
    }
    let mut gro = Coalescer::new(udp, 64);
    let mut out = Vec::new();
    for p in &packets {
        if gro.push(p).is_err() {
            flush(&mut gro, &mut out);
            gro.push(p).expect("an empty coalescer takes a packet");
        }
    }
    flush(&mut gro, &mut out);
    let mut want = packets;
    want.sort();
    out.sort();
    assert_eq!(
        out, want,
        "coalescing then splitting loses or changes nothing"
    );
}

fn flush(gro: &mut Coalescer, out: &mut Vec<Vec<u8>>) {
    for frame in gro.frames() {
        let hdr = VirtioNetHdr::parse(frame).expect("a frame starts with a header");
        if hdr.gso_type == 0 {
            assert_eq!(hdr, VirtioNetHdr::default());
            out.push(frame[VNET_HDR_LEN..].to_vec());
        } else {
            let segs = split_one(frame);
            assert!(segs.len() >= 2, "a merged frame splits");
            out.extend(segs);
        }
    }
    gro.clear();
}

/// Sets an IPv4/IPv6 packet's lengths and checksums as a sender would.
fn fix_up(p: &mut [u8]) {
    let (ip, proto) = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            p[0] = 0x45;
            let len = p.len() as u16;
            p[2..4].copy_from_slice(&len.to_be_bytes());
            p[6] &= 0x40; // no fragments
            p[7] = 0;
            let c = checksum::ipv4_header(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            (20, p[9])
        }
        Some(6) if p.len() >= 40 => {
            let len = (p.len() - 40) as u16;
            p[4..6].copy_from_slice(&len.to_be_bytes());
            (40, p[6])
        }
        _ => return,
    };
    let (field, udp) = match proto {
        6 if p.len() >= ip + 20 => (16, false),
        17 if p.len() >= ip + 8 => {
            let len = (p.len() - ip) as u16;
            p[ip + 4..ip + 6].copy_from_slice(&len.to_be_bytes());
            (6, true)
        }
        _ => return,
    };
    let (src, dst) = if ip == 40 {
        (8..24, 24..40)
    } else {
        (12..16, 16..20)
    };
    let pseudo = checksum::pseudo_header(&p[src], &p[dst], proto, p.len() - ip);
    let c = checksum::transport(pseudo, &p[ip..], field, udp);
    p[ip + field..ip + field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Whether a segment's transport checksum verifies over its pseudo-header.
fn transport_verifies(s: &[u8], l4: usize, proto: u8) -> bool {
    let (src, dst) = if s[0] >> 4 == 6 {
        (&s[8..24], &s[24..40])
    } else {
        (&s[12..16], &s[16..20])
    };
    let pseudo = checksum::pseudo_header(src, dst, proto, s.len() - l4);
    checksum::fold(checksum::add(pseudo, &s[l4..])) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed corpus reaches the merge path, not only the refusals.
    #[test]
    fn the_corpus_coalescing_inputs_merge() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/offload");
        for name in ["coalesce_tcp", "coalesce_udp6"] {
            let data = std::fs::read(dir.join(name)).unwrap();
            let mut rest = &data[1..];
            let mut gro = Coalescer::new(true, 64);
            while rest.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let mut p = rest[2..2 + len].to_vec();
                fix_up(&mut p);
                gro.push(&p).unwrap();
                rest = &rest[2 + len..];
            }
            assert_eq!(gro.len(), 1, "{name}: three packets, one frame");
        }
    }
}
