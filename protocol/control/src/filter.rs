//! The receiver's packet filter: after decryption, an inbound packet must match one of this
//! node's rules or answer a flow this node started *with the same peer*, else it is dropped, so
//! a peer that ignores the policy on its own side still cannot reach a port it is not allowed to.
//!
//! The inner source address is trusted here because the node engine already dropped every
//! packet whose source is not one of the sending peer's addresses (cryptokey routing).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::policy::{FilterRule, Proto, ICMP, ICMPV6, TCP, UDP};

/// How long a flow this node started lets answers in after its last outbound packet.
pub const FLOW_IDLE: Duration = Duration::from_secs(120);
/// Flows remembered at most (the least recently used is forgotten first).
pub const MAX_FLOWS: usize = 65_536;
/// Flows remembered at most per peer, so no peer can push the others' flows out.
pub const MAX_FLOWS_PER_PEER: usize = 4_096;
/// How long the verdict on a first fragment covers the fragments that follow it.
pub const FRAGMENT_IDLE: Duration = Duration::from_secs(30);
/// Fragmented datagrams tracked at most (per peer: an eighth of it).
pub const MAX_FRAGMENTS: usize = 4_096;
/// Age order is refreshed at most this often per entry.
const REFRESH_GRANULARITY: Duration = Duration::from_secs(1);
/// IPv6 extension headers walked at most before the packet is judged unparseable.
const MAX_EXTENSION_HEADERS: usize = 8;

/// Which peer a packet came from or goes to: its node key's bytes.
pub type PeerTag = [u8; 32];

/// Where a packet stands among the fragments of its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fragment {
    /// Not fragmented.
    Whole,
    /// The first fragment (it carries the ports) of datagram `id`.
    First(u32),
    /// A later fragment of datagram `id`: no ports, judged by its first fragment's verdict.
    Later(u32),
}

/// The fields of an IP packet the filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// IP protocol number (for IPv6, the upper-layer protocol after the extension headers).
    pub proto: Proto,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (TCP/UDP), or 0.
    pub src_port: u16,
    /// Destination port (TCP/UDP), ICMP type for ICMP.
    pub dst_port: u16,
    /// Fragmentation.
    pub fragment: Fragment,
}

/// The source address of an IPv4 or IPv6 packet, read with as few checks as the engine's
/// cryptokey routing needs; `None` if too short or not IP.
pub fn source_address(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(p.get(12..16)?).ok()?,
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(p.get(8..24)?).ok()?,
        ))),
        _ => None,
    }
}

/// Reads the header of an IPv4 or IPv6 packet (walking IPv6 extension headers); `None` if it is
/// not one, or if a first fragment is too short to hold the transport ports it must carry.
pub fn parse_packet(p: &[u8]) -> Option<PacketInfo> {
    parse_with_payload(p).map(|(info, _)| info)
}

/// [`parse_packet`], with the transport payload (empty for a later fragment).
fn parse_with_payload(p: &[u8]) -> Option<(PacketInfo, &[u8])> {
    let version = p.first()? >> 4;
    let (proto, src, dst, l4, fragment) = match version {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p.len() < ihl {
                return None;
            }
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&p[12..16]).ok()?);
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&p[16..20]).ok()?);
            let flags_offset = u16::from_be_bytes([p[6], p[7]]);
            let offset = flags_offset & 0x1fff;
            let more = flags_offset & 0x2000 != 0;
            let id = u32::from(u16::from_be_bytes([p[4], p[5]]));
            let fragment = match (offset, more) {
                (0, false) => Fragment::Whole,
                (0, true) => Fragment::First(id),
                _ => Fragment::Later(id),
            };
            let l4 = if offset == 0 { &p[ihl..] } else { &[][..] };
            (p[9], IpAddr::V4(src), IpAddr::V4(dst), l4, fragment)
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?);
            let (proto, l4, fragment) = walk_ipv6_extensions(p[6], &p[40..])?;
            (proto, IpAddr::V6(src), IpAddr::V6(dst), l4, fragment)
        }
        _ => return None,
    };
    let first = !matches!(fragment, Fragment::Later(_));
    let (src_port, dst_port) = match proto {
        TCP | UDP if first => {
            // A first fragment (or a whole packet) that cannot hold its ports is the
            // tiny-fragment attack or garbage: refuse to judge it.
            let ports = l4.get(..4)?;
            (
                u16::from_be_bytes([ports[0], ports[1]]),
                u16::from_be_bytes([ports[2], ports[3]]),
            )
        }
        ICMP | ICMPV6 if first => (0, u16::from(*l4.first()?)),
        _ => (0, 0),
    };
    Some((
        PacketInfo {
            proto,
            src,
            dst,
            src_port,
            dst_port,
            fragment,
        },
        l4,
    ))
}

/// Whether an ICMP or ICMPv6 packet is an error about another packet (which it quotes after
/// its 8-byte header): destination unreachable (IPv4's "fragmentation needed" among them),
/// packet too big, time exceeded, parameter problem.
fn is_icmp_error(p: &PacketInfo) -> bool {
    let kind = p.dst_port;
    match p.proto {
        ICMP => matches!(kind, 3 | 11 | 12),
        ICMPV6 => matches!(kind, 1..=4),
        _ => false,
    }
}

/// Follows IPv6's next-header chain to the upper-layer protocol.
fn walk_ipv6_extensions(mut next: u8, mut rest: &[u8]) -> Option<(Proto, &[u8], Fragment)> {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const AUTH: u8 = 51;
    const DEST_OPTS: u8 = 60;
    let mut fragment = Fragment::Whole;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                let len = (usize::from(*rest.get(1)?) + 1) * 8;
                next = rest[0];
                rest = rest.get(len..)?;
            }
            AUTH => {
                let len = (usize::from(*rest.get(1)?) + 2) * 4;
                next = rest[0];
                rest = rest.get(len..)?;
            }
            FRAGMENT => {
                let h = rest.get(..8)?;
                let offset = u16::from_be_bytes([h[2], h[3]]) >> 3;
                let more = h[3] & 1 != 0;
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                fragment = match (offset, more) {
                    (0, false) => Fragment::Whole,
                    (0, true) => Fragment::First(id),
                    _ => Fragment::Later(id),
                };
                next = h[0];
                rest = if offset == 0 { &rest[8..] } else { &[] };
                if offset != 0 {
                    return Some((next, rest, fragment));
                }
            }
            _ => return Some((next, rest, fragment)),
        }
    }
    None
}

/// What the filter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A rule accepts it.
    Accept,
    /// It answers a flow this node started.
    Reply,
    /// Nothing accepts it.
    Drop(DropReason),
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not an IPv4/IPv6 packet, or too short to judge.
    NotIp,
    /// No rule accepts it and it answers nothing.
    Denied,
    /// A later fragment whose first fragment was not accepted (or not seen).
    Fragment,
    /// The sender is no longer a peer (removed from the netmap, the engine not told yet).
    NotAPeer,
}

type FlowKey = (PeerTag, Proto, IpAddr, u16, IpAddr, u16);
type FragmentKey = (PeerTag, Proto, IpAddr, IpAddr, u32);

/// A remembered entry: its owner, when it was last used, and its place in the age order.
#[derive(Debug, Clone, Copy)]
struct Entry {
    peer: PeerTag,
    last: Instant,
    seq: u64,
}

/// A bounded table ordered by last use: O(log n) insert, refresh and eviction, with a per-peer
/// quota so one peer can only push out its own entries.
#[derive(Debug, Clone)]
struct AgedTable<K: Ord + Copy> {
    entries: BTreeMap<K, Entry>,
    by_age: BTreeMap<u64, K>,
    by_peer: BTreeSet<(PeerTag, u64)>,
    per_peer_count: BTreeMap<PeerTag, usize>,
    next_seq: u64,
    cap: usize,
    per_peer: usize,
    idle: Duration,
}

impl<K: Ord + Copy> AgedTable<K> {
    fn new(cap: usize, per_peer: usize, idle: Duration) -> Self {
        AgedTable {
            entries: BTreeMap::new(),
            by_age: BTreeMap::new(),
            by_peer: BTreeSet::new(),
            per_peer_count: BTreeMap::new(),
            next_seq: 0,
            cap,
            per_peer,
            idle,
        }
    }

    fn remove(&mut self, key: &K) {
        let Some(e) = self.entries.remove(key) else {
            return;
        };
        self.by_age.remove(&e.seq);
        self.by_peer.remove(&(e.peer, e.seq));
        if let Some(n) = self.per_peer_count.get_mut(&e.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer_count.remove(&e.peer);
            }
        }
    }

    /// Records (or refreshes) `key`, owned by `peer`, as used at `now`.
    fn touch(&mut self, now: Instant, peer: PeerTag, key: K) {
        // The hot path: a flow refreshed within the last second keeps its place (the age order
        // is exact to a second, far finer than the idle timeouts).
        if self
            .entries
            .get(&key)
            .is_some_and(|e| now.saturating_duration_since(e.last) < REFRESH_GRANULARITY)
        {
            return;
        }
        self.remove(&key);
        // Expired entries first (the oldest are at the front), then the peer's own oldest if
        // it is at its quota, then the globally oldest if the table is full.
        while let Some((_, &k)) = self.by_age.first_key_value() {
            let expired = self
                .entries
                .get(&k)
                .is_none_or(|e| now.saturating_duration_since(e.last) >= self.idle);
            if !expired {
                break;
            }
            self.remove(&k);
        }
        if self.per_peer_count.get(&peer).copied().unwrap_or(0) >= self.per_peer {
            let oldest = self.by_peer.range((peer, 0)..=(peer, u64::MAX)).next();
            if let Some(k) = oldest.and_then(|(_, seq)| self.by_age.get(seq)).copied() {
                self.remove(&k);
            }
        }
        if self.entries.len() >= self.cap {
            if let Some((_, &k)) = self.by_age.first_key_value() {
                self.remove(&k);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(
            key,
            Entry {
                peer,
                last: now,
                seq,
            },
        );
        self.by_age.insert(seq, key);
        self.by_peer.insert((peer, seq));
        *self.per_peer_count.entry(peer).or_insert(0) += 1;
    }

    fn fresh(&self, now: Instant, key: &K) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| now.saturating_duration_since(e.last) < self.idle)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// One node's filter: its rules, the flows it started (per peer), and the verdicts on first
/// fragments that the rest of their datagrams follow.
#[derive(Debug, Clone)]
pub struct Filter {
    rules: Vec<FilterRule>,
    flows: AgedTable<FlowKey>,
    fragments: AgedTable<FragmentKey>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter::new(Vec::new())
    }
}

impl Filter {
    /// A filter with these rules (from the netmap); no rules: deny everything inbound.
    pub fn new(rules: Vec<FilterRule>) -> Self {
        Filter {
            rules,
            flows: AgedTable::new(MAX_FLOWS, MAX_FLOWS_PER_PEER, FLOW_IDLE),
            fragments: AgedTable::new(MAX_FRAGMENTS, MAX_FRAGMENTS / 8, FRAGMENT_IDLE),
        }
    }

    /// Replaces the rules (a new netmap), keeping the flows.
    pub fn set_rules(&mut self, rules: Vec<FilterRule>) {
        self.rules = rules;
    }

    /// The rules in force.
    pub fn rules(&self) -> &[FilterRule] {
        &self.rules
    }

    /// Flows remembered now.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// A packet this node sends to `peer`: that peer's answers to it will be let in.
    pub fn outbound(&mut self, now: Instant, peer: PeerTag, packet: &[u8]) {
        let Some(p) = parse_packet(packet) else {
            return;
        };
        if matches!(p.fragment, Fragment::Later(_)) {
            return; // the first fragment made the flow
        }
        // ICMP echo: the answer's type differs, so key on the protocol and addresses only.
        let (sp, dp) = if is_icmp(p.proto) {
            (0, 0)
        } else {
            (p.src_port, p.dst_port)
        };
        self.flows
            .touch(now, peer, (peer, p.proto, p.src, sp, p.dst, dp));
    }

    /// A packet this node received (decrypted) from `peer`: accept, or drop.
    pub fn inbound(&mut self, now: Instant, peer: PeerTag, packet: &[u8]) -> Verdict {
        let Some(p) = parse_packet(packet) else {
            return Verdict::Drop(DropReason::NotIp);
        };
        if let Fragment::Later(id) = p.fragment {
            let key = (peer, p.proto, p.src, p.dst, id);
            return if self.fragments.fresh(now, &key) {
                Verdict::Accept
            } else {
                Verdict::Drop(DropReason::Fragment)
            };
        }
        let mut verdict = self.judge(now, peer, &p);
        if verdict == Verdict::Drop(DropReason::Denied) && self.related_error(now, peer, packet) {
            verdict = Verdict::Reply;
        }
        if let (Fragment::First(id), Verdict::Accept | Verdict::Reply) = (p.fragment, verdict) {
            self.fragments
                .touch(now, peer, (peer, p.proto, p.src, p.dst, id));
        }
        verdict
    }

    fn judge(&self, now: Instant, peer: PeerTag, p: &PacketInfo) -> Verdict {
        if self.accepts(p) {
            return Verdict::Accept;
        }
        let (sp, dp) = if is_icmp(p.proto) {
            (0, 0)
        } else {
            (p.dst_port, p.src_port)
        };
        if self
            .flows
            .fresh(now, &(peer, p.proto, p.dst, sp, p.src, dp))
        {
            Verdict::Reply
        } else {
            Verdict::Drop(DropReason::Denied)
        }
    }

    /// An ICMP error about a packet this node sent to `peer` on a live flow (IPv6's "packet
    /// too big" for path MTU discovery, unreachables): let in as conntrack's "related", whatever
    /// the rules say about ICMP. The quoted packet must be ours (its source is the error's
    /// destination) and its flow one we opened toward this peer, so no peer opens anything
    /// with a made-up quote.
    fn related_error(&self, now: Instant, peer: PeerTag, packet: &[u8]) -> bool {
        let Some((p, l4)) = parse_with_payload(packet) else {
            return false;
        };
        if p.fragment != Fragment::Whole || !is_icmp_error(&p) {
            return false;
        }
        let Some(quoted) = l4.get(8..).and_then(parse_packet) else {
            return false;
        };
        if quoted.src != p.dst || matches!(quoted.fragment, Fragment::Later(_)) {
            return false;
        }
        let (sp, dp) = if is_icmp(quoted.proto) {
            (0, 0)
        } else {
            (quoted.src_port, quoted.dst_port)
        };
        self.flows
            .fresh(now, &(peer, quoted.proto, quoted.src, sp, quoted.dst, dp))
    }

    fn accepts(&self, p: &PacketInfo) -> bool {
        self.rules.iter().any(|r| {
            r.protos.contains(&p.proto)
                && r.src.iter().any(|n| n.contains(&p.src))
                && r.dst.iter().any(|(n, ports)| {
                    n.contains(&p.dst) && (is_icmp(p.proto) || ports.contains(p.dst_port))
                })
        })
    }
}

fn is_icmp(p: Proto) -> bool {
    p == ICMP || p == ICMPV6
}
