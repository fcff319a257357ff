//! The receiver's filter under attack (security audit findings #1, #13 and #14): flows are
//! per peer, a peer's flows cannot push out another's, eviction stays cheap at the cap, and
//! fragments follow their first fragment's verdict instead of being judged as port 0.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use burrow_control::filter::{MAX_FLOWS, MAX_FLOWS_PER_PEER};
use burrow_control::policy::{FilterRule, PortRange};
use burrow_control::{parse_packet, DropReason, Filter, Fragment, PeerTag, Verdict};

const ALICE: PeerTag = [1; 32];
const MALLORY: PeerTag = [2; 32];
const ME: [u8; 4] = [100, 64, 0, 1];
const DB: [u8; 4] = [100, 64, 0, 3];

/// An IPv4 TCP/UDP packet; `frag` is (id, offset in 8-byte units, more fragments).
fn v4(proto: u8, src: [u8; 4], dst: [u8; 4], ports: (u16, u16), frag: (u16, u16, bool)) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0];
    p.extend_from_slice(&frag.0.to_be_bytes());
    let flags = frag.1 | if frag.2 { 0x2000 } else { 0 };
    p.extend_from_slice(&flags.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    if frag.1 == 0 {
        p.extend_from_slice(&ports.0.to_be_bytes());
        p.extend_from_slice(&ports.1.to_be_bytes());
    }
    p.extend_from_slice(&[0; 16]);
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p
}

fn whole(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    v4(proto, src, dst, (sport, dport), (0, 0, false))
}

/// Anyone may reach `ME` on the given ports (TCP and UDP).
fn open_ports(first: u16, last: u16) -> Vec<FilterRule> {
    vec![FilterRule {
        src: vec!["0.0.0.0/0".parse().unwrap()],
        dst: vec![(
            IpAddr::V4(Ipv4Addr::from(ME)).into(),
            PortRange { first, last },
        )],
        protos: vec![6, 17],
    }]
}

#[test]
fn a_reply_counts_only_from_the_peer_the_flow_went_to() {
    let t = Instant::now();
    let mut f = Filter::default();
    f.outbound(t, ALICE, &whole(17, ME, DB, 40000, 53));
    let answer = whole(17, DB, ME, 53, 40000);
    assert_eq!(f.inbound(t, ALICE, &answer), Verdict::Reply);
    assert_eq!(
        f.inbound(t, MALLORY, &answer),
        Verdict::Drop(DropReason::Denied),
        "another peer cannot answer alice's flow, even with her address"
    );
}

#[test]
fn one_peer_cannot_push_out_another_peers_flows() {
    let t = Instant::now();
    let mut f = Filter::default();
    f.outbound(t, ALICE, &whole(6, ME, DB, 40000, 5432));
    // Mallory makes the node answer from many ports (spoofed SYNs, echo requests).
    for i in 0..(MAX_FLOWS_PER_PEER as u32 * 3) {
        let dst = [100, 64, (i >> 8) as u8, i as u8];
        f.outbound(
            t,
            MALLORY,
            &whole(6, ME, dst, 1000 + (i % 60000) as u16, 80),
        );
    }
    assert!(f.flow_count() <= MAX_FLOWS_PER_PEER + 1);
    assert_eq!(
        f.inbound(t, ALICE, &whole(6, DB, ME, 5432, 40000)),
        Verdict::Reply,
        "alice's flow survived mallory's flood"
    );
}

#[test]
fn the_table_stays_at_its_cap_across_many_peers_and_evicts_the_oldest() {
    let t = Instant::now();
    let mut f = Filter::default();
    let peers = MAX_FLOWS / MAX_FLOWS_PER_PEER + 4;
    let mut n = 0u32;
    for p in 0..peers {
        let tag = [p as u8 + 10; 32];
        for i in 0..MAX_FLOWS_PER_PEER as u32 {
            n += 1;
            let dst = [10, p as u8, (i >> 8) as u8, i as u8];
            f.outbound(
                t + Duration::from_millis(u64::from(n) / 64),
                tag,
                &whole(17, ME, dst, 5000, 9),
            );
        }
    }
    assert_eq!(f.flow_count(), MAX_FLOWS);
    // The first peer's flows were the oldest: gone. The last peer's: there.
    let first = [10; 32];
    let last = [peers as u8 + 9; 32];
    let t_end = t + Duration::from_secs(60);
    assert_eq!(
        f.inbound(t_end, first, &whole(17, [10, 0, 0, 0], ME, 9, 5000)),
        Verdict::Drop(DropReason::Denied)
    );
    let p = peers as u8 - 1;
    assert_eq!(
        f.inbound(t_end, last, &whole(17, [10, p, 0, 5], ME, 9, 5000)),
        Verdict::Reply
    );
}

#[test]
fn later_fragments_follow_the_first_fragments_verdict_not_port_zero() {
    let t = Instant::now();
    // A rule whose range includes 0: before the fix, every later fragment matched it.
    let mut f = Filter::new(open_ports(0, 1023));
    let src = [100, 64, 0, 9];
    // Datagram 7 to port 5432 (denied): its first fragment is dropped, and so are the rest.
    assert_eq!(
        f.inbound(t, ALICE, &v4(6, src, ME, (40000, 5432), (7, 0, true))),
        Verdict::Drop(DropReason::Denied)
    );
    assert_eq!(
        f.inbound(t, ALICE, &v4(6, src, ME, (0, 0), (7, 185, false))),
        Verdict::Drop(DropReason::Fragment),
        "a later fragment of a denied datagram"
    );
    // A later fragment with no first fragment seen at all.
    assert_eq!(
        f.inbound(t, ALICE, &v4(17, src, ME, (0, 0), (99, 3, true))),
        Verdict::Drop(DropReason::Fragment)
    );
    // Datagram 8 to port 22 (allowed): its later fragments follow.
    assert_eq!(
        f.inbound(t, ALICE, &v4(6, src, ME, (40000, 22), (8, 0, true))),
        Verdict::Accept
    );
    assert_eq!(
        f.inbound(t, ALICE, &v4(6, src, ME, (0, 0), (8, 185, false))),
        Verdict::Accept
    );
    // ...but not for another peer, nor after the fragment timeout.
    assert_eq!(
        f.inbound(t, MALLORY, &v4(6, src, ME, (0, 0), (8, 185, false))),
        Verdict::Drop(DropReason::Fragment)
    );
    assert_eq!(
        f.inbound(
            t + Duration::from_secs(31),
            ALICE,
            &v4(6, src, ME, (0, 0), (8, 185, false))
        ),
        Verdict::Drop(DropReason::Fragment)
    );
}

#[test]
fn a_first_fragment_too_short_for_its_ports_is_not_judged() {
    // The tiny-fragment attack: the ports are pushed into the second fragment.
    let mut p = v4(6, [100, 64, 0, 9], ME, (0, 0), (5, 0, true));
    p.truncate(22);
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(parse_packet(&p), None);
    let mut f = Filter::new(open_ports(0, 1023));
    assert_eq!(
        f.inbound(Instant::now(), ALICE, &p),
        Verdict::Drop(DropReason::NotIp)
    );
}

/// An IPv6 UDP packet behind a hop-by-hop header and, optionally, a fragment header.
fn v6_udp(dport: u16, frag: Option<(u32, u16, bool)>) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 0, 0, 64];
    p.extend_from_slice(&"fd7a::9".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&"fd7a::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    // Hop-by-hop (8 bytes), next: fragment or UDP.
    p.extend_from_slice(&[if frag.is_some() { 44 } else { 17 }, 0, 1, 4, 0, 0, 0, 0]);
    let mut later = false;
    if let Some((id, offset, more)) = frag {
        let off = (offset << 3) | u16::from(more);
        p.extend_from_slice(&[17, 0]);
        p.extend_from_slice(&off.to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        later = offset != 0;
    }
    if !later {
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
    }
    p.extend_from_slice(&[0; 12]);
    p[6] = 0; // next header: hop-by-hop
    p
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_transport_header() {
    let info = parse_packet(&v6_udp(53, None)).expect("parses");
    assert_eq!(
        (info.proto, info.dst_port, info.fragment),
        (17, 53, Fragment::Whole)
    );
    let first = parse_packet(&v6_udp(53, Some((77, 0, true)))).expect("parses");
    assert_eq!(
        (first.proto, first.dst_port, first.fragment),
        (17, 53, Fragment::First(77))
    );
    let later = parse_packet(&v6_udp(53, Some((77, 100, false)))).expect("parses");
    assert_eq!((later.proto, later.fragment), (17, Fragment::Later(77)));
    // The filter: a rule for UDP 53 on fd7a::1 admits the fragments of an accepted datagram.
    let rules = vec![FilterRule {
        src: vec!["::/0".parse().unwrap()],
        dst: vec![(
            "fd7a::1/128".parse().unwrap(),
            PortRange {
                first: 53,
                last: 53,
            },
        )],
        protos: vec![17],
    }];
    let mut f = Filter::new(rules);
    let t = Instant::now();
    assert_eq!(f.inbound(t, ALICE, &v6_udp(53, None)), Verdict::Accept);
    assert_eq!(
        f.inbound(t, ALICE, &v6_udp(53, Some((77, 0, true)))),
        Verdict::Accept
    );
    assert_eq!(
        f.inbound(t, ALICE, &v6_udp(53, Some((77, 100, false)))),
        Verdict::Accept
    );
    assert_eq!(
        f.inbound(t, ALICE, &v6_udp(54, Some((78, 0, true)))),
        Verdict::Drop(DropReason::Denied)
    );
    assert_eq!(
        f.inbound(t, ALICE, &v6_udp(0, Some((78, 100, false)))),
        Verdict::Drop(DropReason::Fragment)
    );
}

/// An IPv6 packet from `src` to `dst` with upper-layer `proto` and `body`.
fn v6(proto: u8, src: &str, dst: &str, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(body.len() as u16).to_be_bytes());
    p.extend_from_slice(&[proto, 64]);
    p.extend_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(body);
    p
}

fn tcp_ports(sport: u16, dport: u16) -> Vec<u8> {
    let mut b = sport.to_be_bytes().to_vec();
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&[0; 16]);
    b
}

/// An ICMPv6 message of `kind` quoting `quoted` (errors quote the packet they are about).
fn icmp6(kind: u8, src: &str, dst: &str, quoted: &[u8]) -> Vec<u8> {
    let mut body = vec![kind, 0, 0, 0, 0, 0, 5, 0x00]; // "packet too big": MTU in bytes 4..8
    body.extend_from_slice(quoted);
    v6(58, src, dst, &body)
}

#[test]
fn icmpv6_errors_about_our_own_flows_pass_and_others_do_not() {
    // No rule admits ICMPv6 at all: only what conntrack would call "related".
    let mut f = Filter::new(open_ports(443, 443));
    let t = Instant::now();
    let ours = v6(6, "fd7a::1", "fd7a::9", &tcp_ports(40000, 8080));
    f.outbound(t, ALICE, &ours);
    // Packet too big (path MTU discovery), unreachable, time exceeded about that flow: in.
    for kind in [2, 1, 3] {
        let err = icmp6(kind, "fd7a::9", "fd7a::1", &ours);
        assert_eq!(f.inbound(t, ALICE, &err), Verdict::Reply, "type {kind}");
    }
    // The same error from another peer, or quoting a flow we never opened, or a packet that
    // was not ours: dropped.
    let err = icmp6(2, "fd7a::9", "fd7a::1", &ours);
    assert_eq!(
        f.inbound(t, MALLORY, &err),
        Verdict::Drop(DropReason::Denied)
    );
    let never = v6(6, "fd7a::1", "fd7a::9", &tcp_ports(40001, 22));
    let err = icmp6(2, "fd7a::9", "fd7a::1", &never);
    assert_eq!(f.inbound(t, ALICE, &err), Verdict::Drop(DropReason::Denied));
    let theirs = v6(6, "fd7a::7", "fd7a::9", &tcp_ports(40000, 8080));
    let err = icmp6(2, "fd7a::9", "fd7a::1", &theirs);
    assert_eq!(f.inbound(t, ALICE, &err), Verdict::Drop(DropReason::Denied));
    // An informational message (an echo request quoting our packet) is no error: dropped.
    let echo = icmp6(128, "fd7a::9", "fd7a::1", &ours);
    assert_eq!(
        f.inbound(t, ALICE, &echo),
        Verdict::Drop(DropReason::Denied)
    );
    // A flow long gone: its errors are dropped too.
    let later = t + Duration::from_secs(600);
    let err = icmp6(2, "fd7a::9", "fd7a::1", &ours);
    assert_eq!(
        f.inbound(later, ALICE, &err),
        Verdict::Drop(DropReason::Denied)
    );
}

#[test]
fn neighbour_discovery_from_a_peer_is_not_let_in() {
    // A neighbour solicitation or router advertisement over the tunnel means nothing on a
    // point-to-point TUN; without a rule for ICMPv6 the filter drops it (and a link-local
    // source never passes cryptokey routing in the first place).
    let mut f = Filter::new(open_ports(443, 443));
    let t = Instant::now();
    for kind in [133, 134, 135, 136, 137] {
        let nd = v6(58, "fd7a::9", "fd7a::1", &[kind, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            f.inbound(t, ALICE, &nd),
            Verdict::Drop(DropReason::Denied),
            "type {kind}"
        );
    }
}
