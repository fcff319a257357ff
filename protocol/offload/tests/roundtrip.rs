//! Round trips, both ways: packets → coalesce → split gives every packet back byte for byte in
//! its flow's order; a kernel-style super-packet → split → coalesce gives the super-packet back.

mod common;

use burrow_offload::{split, Coalescer, SlotLayout, VirtioNetHdr, MAX_SEGMENTS, VNET_HDR_LEN};
use common::*;
use proptest::prelude::*;

const LAYOUT: SlotLayout = SlotLayout {
    stride: 1600,
    headroom: 16,
    tailroom: 32,
};

/// Splits one frame the way the receiving kernel would see its segments.
fn split_frame(frame: &[u8]) -> Vec<Vec<u8>> {
    let hdr = VirtioNetHdr::parse(frame).unwrap();
    let mut out = vec![0u8; MAX_SEGMENTS * LAYOUT.stride];
    let mut lens = [0usize; MAX_SEGMENTS];
    let n = split(&hdr, &frame[VNET_HDR_LEN..], &mut out, LAYOUT, &mut lens).unwrap();
    (0..n)
        .map(|i| {
            let at = i * LAYOUT.stride + LAYOUT.headroom;
            out[at..at + lens[i]].to_vec()
        })
        .collect()
}

#[derive(Clone, Debug)]
struct FlowGen {
    v6: bool,
    udp: bool,
    options: Vec<u8>,
    tos: u8,
    lens: Vec<usize>,
    psh: Vec<bool>,
}

fn flow_gen() -> impl Strategy<Value = FlowGen> {
    (
        any::<bool>(),
        any::<bool>(),
        1usize..1400,
        prop_oneof![
            Just(vec![]),
            Just(vec![1, 1, 8, 10, 0, 0, 1, 0, 0, 0, 2, 0])
        ],
        prop_oneof![Just(0u8), Just(0x02u8)],
        proptest::collection::vec((0usize..4, any::<bool>()), 1..12),
    )
        .prop_map(|(v6, udp, mss, options, tos, shape)| FlowGen {
            v6,
            udp,
            options: if udp { vec![] } else { options },
            tos,
            // Mostly full segments, sometimes a shorter one.
            lens: shape
                .iter()
                .map(|(k, _)| if *k == 0 { 1 + mss / 3 } else { mss })
                .collect(),
            psh: shape.iter().map(|(_, p)| *p && mss % 2 == 0).collect(),
        })
}

fn packets_of(index: usize, f: &FlowGen, salt: u8) -> Vec<Vec<u8>> {
    let mut seq = 0x1000_0000u32.wrapping_mul(index as u32 + 1);
    let mut id = 0xfff0u16.wrapping_add(index as u16 * 7);
    f.lens
        .iter()
        .zip(&f.psh)
        .enumerate()
        .map(|(i, (&len, &psh))| {
            let payload: Vec<u8> = (0..len).map(|j| (j as u8) ^ salt ^ (i as u8)).collect();
            let mut s = if f.v6 {
                Spec::tcp6(30000 + index as u16, seq, payload)
            } else {
                Spec::tcp4(30000 + index as u16, seq, id, payload)
            };
            s.udp = f.udp;
            s.options = f.options.clone();
            s.tos = f.tos;
            s.flow_label = 0x12345 * index as u32;
            if psh {
                s.flags |= 0x08;
            }
            seq = seq.wrapping_add(len as u32);
            id = id.wrapping_add(1);
            build(&s)
        })
        .collect()
}

/// A flow is told apart by the source port; everything else is shared.
fn flow_of(p: &[u8]) -> (u8, u16) {
    let ip = if p[0] >> 4 == 6 { 40 } else { 20 };
    (p[0] >> 4, u16::from_be_bytes([p[ip], p[ip + 1]]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn coalesced_frames_split_back_into_the_same_packets_in_each_flows_order(
        flows in proptest::collection::vec(flow_gen(), 1..5),
        order in proptest::collection::vec(0usize..5, 0..60),
        corrupt in proptest::collection::vec(any::<u16>(), 0..4),
        uso in any::<bool>(),
        salt in any::<u8>(),
    ) {
        // Interleave the flows: `order` names which flow goes next, then the rest in turn.
        let mut queues: Vec<std::collections::VecDeque<Vec<u8>>> = flows
            .iter()
            .enumerate()
            .map(|(i, f)| packets_of(i, f, salt).into())
            .collect();
        let mut input = Vec::new();
        for k in order {
            if let Some(p) = queues[k % flows.len()].pop_front() {
                input.push(p);
            }
        }
        for q in &mut queues {
            input.extend(q.drain(..));
        }
        // Damage a few: a flipped bit past the ports makes a checksum fail (a flip in the
        // addresses or ports would make it another flow, free to be reordered).
        for c in corrupt {
            let n = input.len();
            let p = &mut input[usize::from(c) % n];
            let from = if p[0] >> 4 == 6 { 44 } else { 24 };
            let at = from + usize::from(c) % (p.len() - from);
            p[at] ^= 0x10;
        }
        let mut gro = Coalescer::new(uso, 64);
        for p in &input {
            gro.push(p).unwrap();
        }
        let mut output = Vec::new();
        for frame in gro.frames() {
            let hdr = VirtioNetHdr::parse(frame).unwrap();
            if hdr.gso_type != 0 {
                let pkt = &frame[VNET_HDR_LEN..];
                prop_assert!(
                    partial_completes(pkt, usize::from(hdr.csum_start), usize::from(hdr.csum_offset)),
                    "a merged frame's partial checksum completes to a valid one"
                );
                prop_assert!(pkt.len() <= 65_535);
            }
            output.extend(split_frame(frame));
        }
        prop_assert_eq!(output.len(), input.len());
        for (f, spec) in flows.iter().enumerate() {
            let key = flow_of(&packets_of(f, spec, salt)[0]);
            let want: Vec<&Vec<u8>> = input.iter().filter(|p| flow_of(p) == key).collect();
            let got: Vec<&Vec<u8>> = output.iter().filter(|p| flow_of(p) == key).collect();
            prop_assert_eq!(got, want, "flow {} byte for byte, in order", f);
        }
    }

    #[test]
    fn a_kernel_super_packet_splits_into_valid_segments_that_coalesce_back_into_it(
        v6 in any::<bool>(),
        udp in any::<bool>(),
        gso in 1usize..1460,
        segments in 2usize..=MAX_SEGMENTS,
        last_short in 0usize..1460,
        psh in any::<bool>(),
        timestamps in any::<bool>(),
        seq in any::<u32>(),
        id in any::<u16>(),
    ) {
        let header = if v6 { 40 } else { 20 } + if udp { 8 } else if timestamps { 32 } else { 20 };
        let last = 1 + last_short % gso;
        let mut len = gso * (segments - 1) + last;
        while header + len > 65_535 {
            len -= gso;
        }
        prop_assume!(len > gso);
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + seq as usize) as u8).collect();
        let mut s = if v6 { Spec::tcp6(1, seq, payload.clone()) } else { Spec::tcp4(1, seq, id, payload.clone()) };
        s.udp = udp;
        if timestamps && !udp {
            s.options = vec![1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8];
        }
        if psh && !udp {
            s.flags |= 0x08;
        }
        let sp = super_packet(&s);
        let hdr = VirtioNetHdr {
            flags: burrow_offload::F_NEEDS_CSUM,
            gso_type: if udp { 5 } else if v6 { 4 } else { 1 },
            hdr_len: 0,
            gso_size: gso as u16,
            csum_start: s.ip_len() as u16,
            csum_offset: if udp { 6 } else { 16 },
        };
        let mut frame = vec![0u8; VNET_HDR_LEN];
        hdr.write(&mut frame).unwrap();
        frame.extend_from_slice(&sp);
        let segs = split_frame(&frame);
        prop_assert_eq!(segs.len(), len.div_ceil(gso));
        let mut joined = Vec::new();
        for seg in &segs {
            prop_assert!(checksums_valid(seg));
            joined.extend_from_slice(&seg[header..]);
        }
        prop_assert_eq!(&joined, &payload);
        let mut gro = Coalescer::new(true, 4);
        for seg in &segs {
            gro.push(seg).unwrap();
        }
        prop_assert_eq!(gro.len(), 1);
        let back = gro.frames().next().unwrap();
        let back_hdr = VirtioNetHdr::parse(back).unwrap();
        prop_assert_eq!(back_hdr, VirtioNetHdr { hdr_len: header as u16, ..hdr });
        prop_assert_eq!(&back[VNET_HDR_LEN..], &sp[..]);
    }
}
