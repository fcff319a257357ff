//! Hand-made frames: what a split must produce and what the coalescer must refuse.

mod common;

use burrow_offload::{
    complete_checksum, plan, split, Coalescer, CoalescerFull, OffloadError, SlotLayout,
    VirtioNetHdr, F_NEEDS_CSUM, MAX_SEGMENTS, VNET_HDR_LEN,
};
use common::*;

const LAYOUT: SlotLayout = SlotLayout {
    stride: 2048,
    headroom: 16,
    tailroom: 32,
};

fn payload(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ salt)
        .collect()
}

fn tso_header(s: &Spec, gso_size: u16) -> VirtioNetHdr {
    VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: match (s.udp, s.v6) {
            (true, _) => 5,
            (false, false) => 1,
            (false, true) => 4,
        },
        hdr_len: 0, // never trusted
        gso_size,
        csum_start: s.ip_len() as u16,
        csum_offset: if s.udp { 6 } else { 16 },
    }
}

fn run_split(hdr: &VirtioNetHdr, packet: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
    let mut out = vec![0u8; 64 * LAYOUT.stride];
    let mut lens = [0usize; 64];
    let n = split(hdr, packet, &mut out, LAYOUT, &mut lens)?;
    Ok((0..n)
        .map(|i| {
            let at = i * LAYOUT.stride + LAYOUT.headroom;
            out[at..at + lens[i]].to_vec()
        })
        .collect())
}

#[test]
fn a_tso_v4_frame_splits_into_valid_segments_with_ids_sequence_numbers_and_flags_stepped() {
    let mut s = Spec::tcp4(40000, 0xffff_f000, 0xfffe, payload(4000, 7));
    s.flags = 0x10 | 0x08 | 0x01; // ACK PSH FIN
    s.options = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]; // NOP NOP timestamps
    let sp = super_packet(&s);
    let segs = run_split(&tso_header(&s, 1448), &sp).unwrap();
    assert_eq!(segs.len(), 3); // 1448 + 1448 + 1104
    let mut joined = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        assert!(checksums_valid(seg), "segment {i} checksums");
        let body = &seg[52..];
        assert_eq!(body.len(), if i < 2 { 1448 } else { 1104 });
        joined.extend_from_slice(body);
        assert_eq!(u16::from_be_bytes([seg[2], seg[3]]) as usize, seg.len());
        // IDs wrap: 0xfffe, 0xffff, 0x0000; sequence numbers wrap past 2^32.
        assert_eq!(
            u16::from_be_bytes([seg[4], seg[5]]),
            0xfffeu16.wrapping_add(i as u16)
        );
        let seq = u32::from_be_bytes([seg[24], seg[25], seg[26], seg[27]]);
        assert_eq!(seq, 0xffff_f000u32.wrapping_add(1448 * i as u32));
        let flags = seg[33];
        assert_eq!(flags, if i == 2 { 0x19 } else { 0x10 });
        assert_eq!(&seg[40..52], &s.options[..]);
    }
    assert_eq!(joined, s.payload);
}

#[test]
fn a_tso_v6_frame_splits_with_payload_lengths_and_cwr_on_the_first_segment_only() {
    let mut s = Spec::tcp6(40001, 1, payload(3000, 3));
    s.flags = 0x10 | 0x80; // ACK CWR
    s.flow_label = 0xabcde;
    let sp = super_packet(&s);
    let segs = run_split(&tso_header(&s, 1000), &sp).unwrap();
    assert_eq!(segs.len(), 3);
    for (i, seg) in segs.iter().enumerate() {
        assert!(checksums_valid(seg));
        assert_eq!(
            u16::from_be_bytes([seg[4], seg[5]]) as usize,
            seg.len() - 40
        );
        assert_eq!(seg[53], if i == 0 { 0x90 } else { 0x10 });
        assert_eq!(&seg[..4], &sp[..4], "flow label kept");
    }
}

#[test]
fn a_uso_frame_splits_into_datagrams_with_their_own_lengths_and_checksums() {
    let s = Spec::udp4(7000, 100, payload(2500, 9));
    let sp = super_packet(&s);
    let segs = run_split(&tso_header(&s, 1200), &sp).unwrap();
    assert_eq!(segs.len(), 3);
    let mut joined = Vec::new();
    for seg in &segs {
        assert!(checksums_valid(seg));
        assert_ne!(&seg[26..28], &[0, 0], "a checksum is sent");
        assert_eq!(
            u16::from_be_bytes([seg[24], seg[25]]) as usize,
            seg.len() - 20
        );
        joined.extend_from_slice(&seg[28..]);
    }
    assert_eq!(joined, s.payload);
}

#[test]
fn a_single_packet_with_a_partial_checksum_is_completed() {
    let s = Spec::tcp4(1, 1, 1, payload(333, 1)); // odd length
    let mut p = super_packet(&s);
    assert!(!checksums_valid(&p));
    let hdr = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..VirtioNetHdr::default()
    };
    let segs = run_split(&hdr, &p).unwrap();
    assert_eq!(segs.len(), 1);
    assert!(checksums_valid(&segs[0]));
    complete_checksum(&hdr, &mut p).unwrap();
    assert_eq!(p, segs[0]);
    // Without F_NEEDS_CSUM the packet is copied untouched.
    let plain = build(&s);
    assert_eq!(
        run_split(&VirtioNetHdr::default(), &plain).unwrap(),
        vec![plain]
    );
}

#[test]
fn impossible_frames_are_typed_errors() {
    let s = Spec::tcp4(1, 1, 1, payload(3000, 1));
    let sp = super_packet(&s);
    let good = tso_header(&s, 1000);
    let mut h = good;
    h.gso_type = 4; // TCPV6 on an IPv4 packet
    assert_eq!(run_split(&h, &sp), Err(OffloadError::GsoMismatch));
    h = good;
    h.gso_size = 0;
    assert_eq!(run_split(&h, &sp), Err(OffloadError::ZeroGsoSize));
    h = good;
    h.csum_start = 24;
    assert_eq!(run_split(&h, &sp), Err(OffloadError::BadHeaderLength));
    assert_eq!(run_split(&good, &sp[..30]), Err(OffloadError::Truncated));
    h = good;
    h.gso_size = 1;
    assert_eq!(
        run_split(&h, &sp),
        Err(OffloadError::TooManySegments { segments: 3000 })
    );
    let small = SlotLayout {
        stride: 1000,
        headroom: 16,
        tailroom: 32,
    };
    let mut out = vec![0u8; 64 * small.stride];
    assert_eq!(
        split(&good, &sp, &mut out, small, &mut [0; 64]),
        Err(OffloadError::SlotTooSmall {
            need: 1040,
            have: 952
        })
    );
    h = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 4000,
        ..VirtioNetHdr::default()
    };
    assert_eq!(run_split(&h, &sp), Err(OffloadError::BadChecksumOffset));
    let mut udp_byte = sp.clone();
    udp_byte[9] = 17; // a TCPV4 frame whose protocol says UDP
    assert_eq!(run_split(&good, &udp_byte), Err(OffloadError::GsoMismatch));
    let upside_down = SlotLayout {
        stride: 100,
        headroom: 80,
        tailroom: 80,
    };
    assert_eq!(
        split(
            &VirtioNetHdr::default(),
            &[],
            &mut out,
            upside_down,
            &mut [0; 1]
        ),
        Err(OffloadError::BadLayout)
    );
    assert_eq!(
        plan(&good, &sp).map(|p| (p.segments, p.segment_len, p.last_len)),
        Ok((3, 1040, 1040))
    );
}

fn coalesce(udp: bool, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut c = Coalescer::new(udp, 64);
    for p in packets {
        c.push(p).unwrap();
    }
    c.frames().map(<[u8]>::to_vec).collect()
}

fn flow(n: usize, len: usize) -> Vec<Spec> {
    (0..n)
        .map(|i| {
            Spec::tcp4(
                40000,
                1000 + (i * len) as u32,
                10 + i as u16,
                payload(len, i as u8),
            )
        })
        .collect()
}

#[test]
fn back_to_back_segments_merge_into_one_frame_whose_partial_checksum_completes() {
    let specs = flow(5, 1000);
    let packets: Vec<_> = specs.iter().map(build).collect();
    let frames = coalesce(false, &packets);
    assert_eq!(frames.len(), 1);
    let hdr = VirtioNetHdr::parse(&frames[0]).unwrap();
    assert_eq!(
        (
            hdr.flags,
            hdr.gso_type,
            hdr.gso_size,
            hdr.csum_start,
            hdr.csum_offset,
            hdr.hdr_len
        ),
        (F_NEEDS_CSUM, 1, 1000, 20, 16, 40)
    );
    let pkt = &frames[0][VNET_HDR_LEN..];
    assert_eq!(pkt.len(), 40 + 5000);
    assert_eq!(u16::from_be_bytes([pkt[2], pkt[3]]), 5040);
    assert_eq!(naive_sum(&pkt[..20]), 0xffff, "IPv4 header checksum");
    assert!(partial_completes(pkt, 20, 16));
    let joined: Vec<u8> = specs.iter().flat_map(|s| s.payload.clone()).collect();
    assert_eq!(&pkt[40..], &joined[..]);
}

#[test]
fn a_corrupt_segment_is_never_merged() {
    let mut packets: Vec<_> = flow(3, 500).iter().map(build).collect();
    packets[1][100] ^= 0x40; // payload byte flipped: the TCP checksum no longer verifies
    let frames = coalesce(false, &packets);
    assert_eq!(frames.len(), 3);
    for (f, p) in frames.iter().zip(&packets) {
        assert_eq!(&f[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&f[VNET_HDR_LEN..], &p[..]);
    }
    // The same with a bad IPv4 header checksum on the second.
    let mut packets: Vec<_> = flow(3, 500).iter().map(build).collect();
    packets[1][10] ^= 1;
    assert_eq!(coalesce(false, &packets).len(), 3);
}

#[test]
fn psh_a_short_segment_or_a_gap_ends_a_frame() {
    let mut specs = flow(6, 800);
    specs[1].flags = 0x18; // PSH: merges, then ends the frame
    specs[3].payload.truncate(300); // shorter: merges, ends
    specs[4].seq = specs[3].seq + 300; // continues after the short one, in a new frame
    specs[5].seq = specs[4].seq + 800;
    let packets: Vec<_> = specs.iter().map(build).collect();
    let frames = coalesce(false, &packets);
    let counts: Vec<usize> = frames
        .iter()
        .map(|f| (f.len() - VNET_HDR_LEN - 40).div_ceil(800))
        .collect();
    assert_eq!(counts, vec![2, 2, 2]);
    assert_eq!(
        frames[0][VNET_HDR_LEN + 33],
        0x18,
        "PSH carried on the merged frame"
    );
    // A sequence gap does not merge.
    let mut specs = flow(2, 800);
    specs[1].seq += 1;
    assert_eq!(
        coalesce(false, &specs.iter().map(build).collect::<Vec<_>>()).len(),
        2
    );
    // Nor does an IPv4 ID that is not the next one, nor a FIN, nor another window.
    for change in 0..3 {
        let mut specs = flow(2, 800);
        match change {
            0 => specs[1].id += 5,
            1 => specs[1].flags = 0x11,
            _ => specs[1].window += 1,
        }
        let frames = coalesce(false, &specs.iter().map(build).collect::<Vec<_>>());
        assert_eq!(frames.len(), 2, "change {change}");
    }
}

#[test]
fn interleaved_flows_each_keep_their_order_and_a_fragment_between_hosts_closes_their_frames() {
    let a = flow(3, 600);
    let b: Vec<_> = (0..3)
        .map(|i| Spec::tcp4(40001, 9000 + 600 * i as u32, 50 + i as u16, payload(600, 9)))
        .collect();
    let packets = vec![
        build(&a[0]),
        build(&b[0]),
        build(&a[1]),
        build(&b[1]),
        build(&a[2]),
        build(&b[2]),
    ];
    let frames = coalesce(false, &packets);
    assert_eq!(frames.len(), 2, "one frame per flow");
    // A fragment between the same hosts after a[1]: a[2] must not jump ahead of it.
    let mut frag = build(&Spec::udp4(1, 99, payload(100, 1)));
    frag[6] = 0x20; // MF
    frag[10] = 0;
    frag[11] = 0;
    let c = !naive_sum(&frag[..20]);
    frag[10..12].copy_from_slice(&c.to_be_bytes());
    let packets = vec![build(&a[0]), build(&a[1]), frag.clone(), build(&a[2])];
    let frames = coalesce(false, &packets);
    assert_eq!(frames.len(), 3);
    assert_eq!(&frames[1][VNET_HDR_LEN..], &frag[..]);
}

#[test]
fn udp_merges_only_when_the_tun_took_uso_and_never_without_a_checksum() {
    let specs: Vec<_> = (0..4)
        .map(|i| Spec::udp4(7000, 20 + i, payload(1200, 2)))
        .collect();
    let packets: Vec<_> = specs.iter().map(build).collect();
    assert_eq!(coalesce(false, &packets).len(), 4);
    let frames = coalesce(true, &packets);
    assert_eq!(frames.len(), 1);
    let hdr = VirtioNetHdr::parse(&frames[0]).unwrap();
    assert_eq!((hdr.gso_type, hdr.gso_size, hdr.csum_offset), (5, 1200, 6));
    let pkt = &frames[0][VNET_HDR_LEN..];
    assert_eq!(
        u16::from_be_bytes([pkt[24], pkt[25]]) as usize,
        pkt.len() - 20
    );
    assert!(partial_completes(pkt, 20, 6));
    let mut packets = packets;
    for p in &mut packets {
        p[26] = 0; // "no checksum"
        p[27] = 0;
    }
    assert_eq!(coalesce(true, &packets).len(), 4);
}

#[test]
fn a_frame_stops_at_64_segments_and_the_coalescer_reports_full() {
    let packets: Vec<_> = flow(MAX_SEGMENTS + 1, 100).iter().map(build).collect();
    let frames = coalesce(false, &packets);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].len(), VNET_HDR_LEN + 40 + 100 * MAX_SEGMENTS);
    // 64 KiB of IP packet at most: 1,460-byte segments stop at 44.
    let packets: Vec<_> = flow(50, 1460).iter().map(build).collect();
    let frames = coalesce(false, &packets);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].len(), VNET_HDR_LEN + 40 + 1460 * 44);
    let mut c = Coalescer::new(false, 1);
    c.push(&build(&Spec::udp4(1, 1, payload(10, 1)))).unwrap();
    assert_eq!(
        c.push(&build(&Spec::udp4(2, 1, payload(10, 1)))),
        Err(CoalescerFull)
    );
    c.clear();
    assert!(c.is_empty());
    c.push(&[0x99]).unwrap();
    assert_eq!(
        c.frames().next().unwrap(),
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99]
    );
}
