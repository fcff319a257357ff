#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod pcp;
pub mod pmp;

pub mod upnp;

pub mod gateway;

mod epoch;
mod wire {
    //! Big-endian fields of NAT-PMP and PCP messages (callers check the length first).

    pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
}
mod machine;

pub use epoch::EpochTracker;
pub use machine::{
    Event, HttpRequestId, Input, Mapping, PinholeConfig, PinholeEvent, PortMapError, PortMapper,
    PortMapperConfig, ProtocolReport, Report, Transmit,
};

/// One of the three port-mapping protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// NAT-PMP (RFC 6886).
    Pmp,
    /// PCP (RFC 6887).
    Pcp,
    /// UPnP Internet Gateway Device, v1 or v2.
    Upnp,
}

impl Protocol {
    /// All three, in order of preference.
    pub const ALL: [Protocol; 3] = [Protocol::Pmp, Protocol::Pcp, Protocol::Upnp];

    /// Short lower-case name, as in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pmp => "nat-pmp",
            Protocol::Pcp => "pcp",
            Protocol::Upnp => "upnp",
        }
    }
}

/// The transport protocol a mapping is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TransportProtocol {
    /// UDP (what burrow maps).
    Udp,
    /// TCP.
    Tcp,
}

/// Whether a gateway's external IPv4 address is one that the internet cannot route to: RFC
/// 1918, shared address space (CGNAT, RFC 6598), loopback, link-local or unspecified. Such a
/// gateway sits behind another NAT (a double NAT): its mappings reach only the network above
/// it. (Benchmarking and documentation ranges count as public: labs and simulators use them
/// as their internet.)
pub fn is_private_v4(ip: std::net::Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
}
