//! The netcheck report: what kind of network a node sits behind.

use core::net::SocketAddr;

use serde::Serialize;

/// One-word summary of the NAT in front of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatType {
    /// The reflexive address is a local address: no translation (maybe a firewall).
    None,
    /// Endpoint-independent mapping: one public ip:port for every destination.
    Easy,
    /// Mapping varies by destination: STUN's answer is no good for peers.
    Hard,
    /// No STUN server answered over UDP.
    UdpBlocked,
    /// Not enough evidence (e.g. only one server IP answered).
    Unknown,
}

/// RFC 4787 mapping behaviour, from the RFC 5780 §4.3 test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingBehavior {
    /// Same mapping for every destination ("easy").
    EndpointIndependent,
    /// New mapping per destination IP.
    AddressDependent,
    /// New mapping per destination ip:port.
    AddressAndPortDependent,
    /// No RFC 5780 server answered the test.
    Unknown,
}

/// RFC 4787 filtering behaviour, from the RFC 5780 §4.4 test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilteringBehavior {
    /// Anyone may send to a mapping once it exists.
    EndpointIndependent,
    /// Only IPs this node has sent to may answer.
    AddressDependent,
    /// Only ip:ports this node has sent to may answer.
    AddressAndPortDependent,
    /// No RFC 5780 server answered the test.
    Unknown,
}

/// How the NAT picks external ports, inferred from several destinations seen from one socket.
/// The hole-punching scheduler uses it to predict the port a peer's NAT will use next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PortAllocation {
    /// The external port equals the local port.
    Preserving,
    /// Each new mapping takes the previous port plus `delta`.
    Sequential {
        /// The step between consecutive mappings.
        delta: i32,
    },
    /// New mappings land on unpredictable ports.
    Random,
    /// Too few distinct mappings to tell (one mapping for every destination, say).
    Unknown,
}

/// What the default gateway's port-mapping services said (UPnP IGD, NAT-PMP, PCP): which
/// answered, the mapping a probe could make (deleted again at once), and each one's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    /// The gateway asked.
    pub gateway: Option<std::net::IpAddr>,
    /// UPnP IGD answered.
    pub upnp: bool,
    /// NAT-PMP answered.
    pub pmp: bool,
    /// PCP answered.
    pub pcp: bool,
    /// The protocol the probe's mapping was made with ("nat-pmp", "pcp", "upnp").
    pub mapped_with: Option<String>,
    /// The probe mapping's external address.
    pub external: Option<SocketAddr>,
    /// Its lease in seconds (`null` with a mapping: permanent).
    pub lease_secs: Option<u64>,
    /// The gateway's external address is private: it sits behind another NAT.
    pub private_external: bool,
    /// The IPv6 pinhole the router's firewall opened for the probe's port (PCP; `null`: none).
    pub pinhole_v6: Option<SocketAddr>,
    /// Each protocol's error, by name.
    pub errors: std::collections::BTreeMap<String, String>,
}

/// Latency to one region: the best round trip of any of its servers, per address family.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionLatency {
    /// Region ID.
    pub id: u32,
    /// Region code (short name).
    pub code: String,
    /// Best IPv4 round trip, in milliseconds.
    pub v4_ms: Option<f64>,
    /// Best IPv6 round trip, in milliseconds.
    pub v6_ms: Option<f64>,
    /// Best of both families, in milliseconds.
    pub latency_ms: Option<f64>,
}

/// What netcheck learned. Field names are stable: `burrow netcheck --json` prints this.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Any STUN server answered over UDP.
    pub udp: bool,
    /// A server answered over IPv4.
    pub ipv4: bool,
    /// A server answered over IPv6.
    pub ipv6: bool,
    /// This node's reflexive IPv4 ip:port.
    pub global_v4: Option<SocketAddr>,
    /// This node's reflexive IPv6 ip:port.
    pub global_v6: Option<SocketAddr>,
    /// true = hard NAT, false = easy; null unless two server IPs answered.
    pub mapping_varies_by_dest_ip: Option<bool>,
    /// RFC 4787 mapping behaviour (needs an RFC 5780 server).
    pub mapping: MappingBehavior,
    /// RFC 4787 filtering behaviour (needs an RFC 5780 server).
    pub filtering: FilteringBehavior,
    /// How external ports are chosen.
    pub port_allocation: PortAllocation,
    /// Per-region latency, in the configured region order.
    pub region_latency: Vec<RegionLatency>,
    /// The region with the lowest latency.
    pub preferred_region: Option<u32>,
    /// The gateway's port-mapping services; null when not probed.
    pub port_mapping: Option<PortMapping>,
    /// One-word summary.
    pub nat_type: NatType,
}

impl NatType {
    /// The word `--json` uses: "none", "easy", "hard", "udp-blocked" or "unknown".
    pub const fn as_str(self) -> &'static str {
        match self {
            NatType::None => "none",
            NatType::Easy => "easy",
            NatType::Hard => "hard",
            NatType::UdpBlocked => "udp-blocked",
            NatType::Unknown => "unknown",
        }
    }
}

impl MappingBehavior {
    /// The word `--json` uses, e.g. "endpoint-independent".
    pub const fn as_str(self) -> &'static str {
        match self {
            MappingBehavior::EndpointIndependent => "endpoint-independent",
            MappingBehavior::AddressDependent => "address-dependent",
            MappingBehavior::AddressAndPortDependent => "address-and-port-dependent",
            MappingBehavior::Unknown => "unknown",
        }
    }
}

impl FilteringBehavior {
    /// The word `--json` uses, e.g. "address-and-port-dependent".
    pub const fn as_str(self) -> &'static str {
        match self {
            FilteringBehavior::EndpointIndependent => "endpoint-independent",
            FilteringBehavior::AddressDependent => "address-dependent",
            FilteringBehavior::AddressAndPortDependent => "address-and-port-dependent",
            FilteringBehavior::Unknown => "unknown",
        }
    }
}

impl PortAllocation {
    /// The `kind` word `--json` uses: "preserving", "sequential", "random" or "unknown".
    pub const fn kind(self) -> &'static str {
        match self {
            PortAllocation::Preserving => "preserving",
            PortAllocation::Sequential { .. } => "sequential",
            PortAllocation::Random => "random",
            PortAllocation::Unknown => "unknown",
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty => $f:ident),*) => {$(
        impl core::fmt::Display for $t {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.$f())
            }
        }
    )*};
}
display_as_str!(NatType => as_str, MappingBehavior => as_str, FilteringBehavior => as_str, PortAllocation => kind);
