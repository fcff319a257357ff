//! The receiver's packet filter: after decryption, an inbound packet must match one of this
//! node's rules or answer a flow this node started, else it is dropped, so a peer that ignores
//! the policy on its own side still cannot reach a port it is not allowed to.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::policy::{FilterRule, Proto, ICMP, ICMPV6, TCP, UDP};

/// How long a flow this node started lets answers in after its last outbound packet.
pub const FLOW_IDLE: Duration = Duration::from_secs(120);
/// Flows remembered at most (oldest forgotten first).
pub const MAX_FLOWS: usize = 65_536;

/// The fields of an IP packet the filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// IP protocol number.
    pub proto: Proto,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (TCP/UDP), or 0.
    pub src_port: u16,
    /// Destination port (TCP/UDP), ICMP type for ICMP.
    pub dst_port: u16,
}

/// Reads the header of an IPv4 or IPv6 packet; `None` if it is not one.
pub fn parse_packet(p: &[u8]) -> Option<PacketInfo> {
    let version = p.first()? >> 4;
    let (proto, src, dst, l4) = match version {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p.len() < ihl {
                return None;
            }
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&p[12..16]).ok()?);
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&p[16..20]).ok()?);
            // Fragments after the first carry no ports: judge them by addresses alone.
            let offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            let l4 = if offset == 0 { &p[ihl..] } else { &[][..] };
            (p[9], IpAddr::V4(src), IpAddr::V4(dst), l4)
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?);
            (p[6], IpAddr::V6(src), IpAddr::V6(dst), &p[40..])
        }
        _ => return None,
    };
    let (src_port, dst_port) = match proto {
        TCP | UDP if l4.len() >= 4 => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        ICMP | ICMPV6 if !l4.is_empty() => (0, u16::from(l4[0])),
        _ => (0, 0),
    };
    Some(PacketInfo {
        proto,
        src,
        dst,
        src_port,
        dst_port,
    })
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
    /// Not an IPv4/IPv6 packet.
    NotIp,
    /// No rule accepts it and it answers nothing.
    Denied,
}

type FlowKey = (Proto, IpAddr, u16, IpAddr, u16);

/// One node's filter: its rules and the flows it started.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    rules: Vec<FilterRule>,
    flows: BTreeMap<FlowKey, Instant>,
}

impl Filter {
    /// A filter with these rules (from the netmap); no rules: deny everything inbound.
    pub fn new(rules: Vec<FilterRule>) -> Self {
        Filter {
            rules,
            flows: BTreeMap::new(),
        }
    }

    /// Replaces the rules (a new netmap), keeping the flows.
    pub fn set_rules(&mut self, rules: Vec<FilterRule>) {
        self.rules = rules;
    }

    /// A packet this node sends: its answers will be let in.
    pub fn outbound(&mut self, now: Instant, packet: &[u8]) {
        let Some(p) = parse_packet(packet) else {
            return;
        };
        if self.flows.len() >= MAX_FLOWS {
            self.flows
                .retain(|_, t| now.saturating_duration_since(*t) < FLOW_IDLE);
            if self.flows.len() >= MAX_FLOWS {
                if let Some(oldest) = self.flows.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                    self.flows.remove(&oldest);
                }
            }
        }
        // ICMP echo: the answer's type differs, so key on the protocol and addresses only.
        let (sp, dp) = if is_icmp(p.proto) {
            (0, 0)
        } else {
            (p.src_port, p.dst_port)
        };
        self.flows.insert((p.proto, p.src, sp, p.dst, dp), now);
    }

    /// A packet this node received (decrypted): accept, or drop.
    pub fn inbound(&self, now: Instant, packet: &[u8]) -> Verdict {
        let Some(p) = parse_packet(packet) else {
            return Verdict::Drop(DropReason::NotIp);
        };
        if self.accepts(&p) {
            return Verdict::Accept;
        }
        let (sp, dp) = if is_icmp(p.proto) {
            (0, 0)
        } else {
            (p.dst_port, p.src_port)
        };
        let reply = self
            .flows
            .get(&(p.proto, p.dst, sp, p.src, dp))
            .is_some_and(|t| now.saturating_duration_since(*t) < FLOW_IDLE);
        if reply {
            Verdict::Reply
        } else {
            Verdict::Drop(DropReason::Denied)
        }
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
