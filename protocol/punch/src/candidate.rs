//! Candidates (ICE's word): the addresses a peer may be reached at, their kinds and priority —
//! IPv6 direct > LAN > public IPv4 > relay: ICE's host > server-reflexive > relayed order
//! (RFC 8445 §5.1.2.2), with IPv6 first as RFC 8421 advises.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Whether an address a peer offers (in a CallMeMaybe, through the control plane, or as the
/// source of its ping) may be pinged: never port 0, unspecified or "this network", multicast,
/// broadcast or class E, loopback or link-local (meaningless from another host, and a way to
/// aim us at our own machine or LAN). An IPv4-mapped IPv6 address is judged as the IPv4 address
/// inside; the deprecated IPv4-compatible block ::/96 (with :: and ::1) is refused. Private and
/// shared (CGNAT) addresses stay acceptable: they are how peers on one LAN find each other.
pub fn is_acceptable_remote(addr: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    match addr.ip() {
        IpAddr::V4(v4) => acceptable_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => acceptable_v4(v4),
            None => acceptable_v6(v6),
        },
    }
}

fn acceptable_v4(ip: Ipv4Addr) -> bool {
    let first = ip.octets()[0];
    // 0.0.0.0/8 ("this network"), 240.0.0.0/4 (reserved, with 255.255.255.255).
    !(first == 0 || first >= 240 || ip.is_loopback() || ip.is_link_local() || ip.is_multicast())
}

fn acceptable_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // ::/96 holds ::, ::1 and the deprecated IPv4-compatible form (::a.b.c.d).
    let v4_compatible = s[..6].iter().all(|&x| x == 0);
    let link_local = s[0] & 0xffc0 == 0xfe80;
    // Site-local (deprecated), and the discard-only prefix 100::/64.
    let site_local = s[0] & 0xffc0 == 0xfec0;
    let discard = s[0] == 0x0100 && s[1..4].iter().all(|&x| x == 0);
    if v4_compatible || link_local || site_local || discard || ip.is_multicast() {
        return false;
    }
    // Addresses that carry an IPv4 address (NAT64, IPv4-translated, 6to4) reach that IPv4
    // address through a translator or relay: judged as it is.
    embedded_v4(ip).is_none_or(acceptable_v4)
}

/// The IPv4 address inside a NAT64 (64:ff9b::/96, 64:ff9b:1::/48), IPv4-translated
/// (::ffff:0:a.b.c.d) or 6to4 (2002:AABB:CCDD::/48) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && (s[2..6].iter().all(|&x| x == 0) || s[2] == 1);
    let translated = s[..4].iter().all(|&x| x == 0) && s[4] == 0xffff && s[5] == 0;
    if nat64 || translated {
        return Some(tail);
    }
    (s[0] == 0x2002).then(|| Ipv4Addr::new(o[2], o[3], o[4], o[5]))
}

/// The form a remote address is kept in: an IPv4-mapped IPv6 address as the IPv4 address, as
/// an IPv4 socket reports the source of the peer's datagrams.
pub fn canonical_remote(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// An address family. A dual-stack peer has a path of each; they fail independently (an
/// IPv6 path can die while IPv4 still works, or the other way round).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (and IPv4-mapped IPv6 addresses).
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl Family {
    /// The family of `addr`, an IPv4-mapped IPv6 address counting as IPv4.
    pub fn of(addr: SocketAddr) -> Self {
        match canonical_remote(addr) {
            SocketAddr::V4(_) => Family::Ipv4,
            SocketAddr::V6(_) => Family::Ipv6,
        }
    }

    /// The other family.
    pub const fn other(self) -> Self {
        match self {
            Family::Ipv4 => Family::Ipv6,
            Family::Ipv6 => Family::Ipv4,
        }
    }

    /// "IPv4" or "IPv6".
    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }
}

impl core::fmt::Display for Family {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a candidate came from, which decides its priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CandidateKind {
    /// A global IPv6 address: no NAT, at most a firewall.
    Ipv6,
    /// A LAN address (RFC 1918, CGNAT shared space, link-local): same network as the peer.
    Lan,
    /// A public IPv4 address: STUN-reflexive, port-mapped (NAT-PMP/PCP/UPnP) or peer-reflexive.
    PublicV4,
    /// A DERP relay: always works, used first and as the fallback.
    Relay,
}

impl CandidateKind {
    /// Higher is better.
    pub const fn priority(self) -> u32 {
        match self {
            CandidateKind::Ipv6 => 400,
            CandidateKind::Lan => 300,
            CandidateKind::PublicV4 => 200,
            CandidateKind::Relay => 100,
        }
    }

    /// The kind of a direct address, from the address itself.
    pub fn of(addr: SocketAddr) -> Self {
        match addr.ip() {
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return Self::of(SocketAddr::new(IpAddr::V4(v4), addr.port()));
                }
                let s = v6.segments();
                let unique_local = s[0] & 0xfe00 == 0xfc00;
                let link_local = s[0] & 0xffc0 == 0xfe80;
                if unique_local || link_local || v6.is_loopback() {
                    CandidateKind::Lan
                } else {
                    CandidateKind::Ipv6
                }
            }
            IpAddr::V4(v4) => {
                let o = v4.octets();
                let shared = o[0] == 100 && (o[1] & 0xc0) == 64; // 100.64.0.0/10
                if v4.is_private() || v4.is_link_local() || v4.is_loopback() || shared {
                    CandidateKind::Lan
                } else {
                    CandidateKind::PublicV4
                }
            }
        }
    }
}

/// How a candidate was learned (kept for explanations; priority comes from [`CandidateKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CandidateSource {
    /// A local interface address.
    Interface,
    /// A reflexive address from STUN.
    Stun,
    /// A port mapping from the gateway (NAT-PMP, PCP, UPnP).
    PortMapping,
    /// Learned from a Pong: the address the peer saw us at.
    PeerReflexive,
    /// Predicted for a sequential NAT.
    Predicted,
    /// The home DERP region.
    Derp,
}

/// A place a peer may be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Candidate {
    /// The address (for relays, the relay's region is kept by the caller).
    pub addr: SocketAddr,
    /// Its kind.
    pub kind: CandidateKind,
    /// How it was learned.
    pub source: CandidateSource,
}

impl Candidate {
    /// A direct candidate, its kind taken from the address.
    pub fn direct(addr: SocketAddr, source: CandidateSource) -> Self {
        Candidate {
            addr,
            kind: CandidateKind::of(addr),
            source,
        }
    }
}

/// A validated path: a candidate that answered a disco ping, with its round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    /// The candidate.
    pub candidate: Candidate,
    /// The latest measured round trip.
    pub rtt: Duration,
}

/// How much better (in round trip) a path of the same kind must be before traffic moves to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hysteresis {
    /// Absolute improvement required.
    pub min_gain: Duration,
    /// Relative improvement required (0.1 = 10 % faster).
    pub min_ratio: f64,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis {
            min_gain: Duration::from_millis(5),
            min_ratio: 0.1,
        }
    }
}

/// Chooses the path to use: the highest kind wins; within a kind the lowest round trip wins,
/// but the current path is kept unless a rival beats it by the hysteresis margin.
pub fn choose(paths: &[Path], current: Option<&Path>, h: Hysteresis) -> Option<Path> {
    let best = paths.iter().copied().max_by(|a, b| {
        a.candidate
            .kind
            .priority()
            .cmp(&b.candidate.kind.priority())
            .then(b.rtt.cmp(&a.rtt))
    })?;
    let Some(cur) = current.and_then(|c| paths.iter().find(|p| p.candidate == c.candidate)) else {
        return Some(best);
    };
    if best.candidate.kind.priority() != cur.candidate.kind.priority() {
        return Some(
            if best.candidate.kind.priority() > cur.candidate.kind.priority() {
                best
            } else {
                *cur
            },
        );
    }
    let gain = cur.rtt.saturating_sub(best.rtt);
    let enough = gain >= h.min_gain && gain.as_secs_f64() >= cur.rtt.as_secs_f64() * h.min_ratio;
    Some(if enough { best } else { *cur })
}
