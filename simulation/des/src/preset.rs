//! Named NAT and firewall presets, and which real devices behave like each.

use std::time::Duration;

use serde::Serialize;

use crate::nat::{Dependence::*, GatewayModel, NatConfig, PortAllocation, Refresh};

/// How a node reaches the Internet in a preset: what boxes sit in front of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preset {
    /// Preset name.
    pub name: &'static str,
    /// Which real devices behave like it.
    pub doc: &'static str,
    /// Boxes from the node outwards (empty: a host directly on the Internet).
    pub chain: Vec<NatConfig>,
}

fn nat(
    mapping: crate::nat::Dependence,
    filtering: crate::nat::Dependence,
    allocation: PortAllocation,
) -> NatConfig {
    NatConfig {
        translate: true,
        mapping,
        filtering,
        allocation,
        port_low: 1024,
        port_high: 65535,
        timeout: Duration::from_secs(30),
        refresh: Refresh::Outbound,
        capacity: None,
        hairpin: false,
        block_udp: false,
        gateway: None,
        background: 0.0,
    }
}

/// Every preset name, in the order reports show them.
pub const NAMES: &[&str] = &[
    "open",
    "firewall",
    "easy",
    "full-cone",
    "restricted-cone",
    "port-restricted-cone",
    "hard",
    "hard-sequential",
    "cgnat",
    "udp-blocked",
    "srx300",
];

/// Hard NATs whose router offers port mapping (NAT-PMP, PCP, UPnP IGD), and their quirks:
/// the grid's extra rows. `double-pmp` is an easy home router offering NAT-PMP behind a hard
/// carrier NAT: its mappings reach only the carrier's network.
pub const MAPPING_NAMES: &[&str] = &[
    "hard-pmp",
    "hard-pcp",
    "hard-upnp1",
    "hard-upnp2",
    "hard-all",
    "hard-upnp-permanent",
    "hard-deny",
    "double-pmp",
];

/// A hard NAT whose router runs `gateway`.
fn hard_with(gateway: GatewayModel) -> NatConfig {
    NatConfig {
        gateway: Some(gateway),
        ..single("hard").expect("a preset")
    }
}

/// The chain of a mapping preset (see [`MAPPING_NAMES`]).
fn mapping_chain(name: &str) -> Option<Vec<NatConfig>> {
    let g = GatewayModel::new;
    Some(match name {
        "hard-pmp" => vec![hard_with(g(true, false, None))],
        "hard-pcp" => vec![hard_with(g(false, true, None))],
        "hard-upnp1" => vec![hard_with(g(false, false, Some(1)))],
        "hard-upnp2" => vec![hard_with(g(false, false, Some(2)))],
        "hard-all" => vec![hard_with(g(true, true, Some(2)))],
        "hard-upnp-permanent" => vec![hard_with(GatewayModel {
            permanent_leases_only: true,
            ..g(false, false, Some(1))
        })],
        "hard-deny" => vec![hard_with(GatewayModel {
            deny: true,
            ..g(true, true, Some(2))
        })],
        "double-pmp" => vec![
            NatConfig {
                gateway: Some(g(true, false, None)),
                ..single("easy")?
            },
            single("hard")?,
        ],
        _ => return None,
    })
}

/// The box configuration of a single-box preset (`open` has none; `cgnat` is the carrier box alone).
pub fn single(name: &str) -> Option<NatConfig> {
    Some(match name {
        "firewall" => NatConfig {
            translate: false,
            ..nat(
                EndpointIndependent,
                AddressAndPortDependent,
                PortAllocation::PreserveIfFree,
            )
        },
        "easy" => nat(
            EndpointIndependent,
            AddressAndPortDependent,
            PortAllocation::PreserveIfFree,
        ),
        "full-cone" => NatConfig {
            refresh: Refresh::Both,
            ..nat(
                EndpointIndependent,
                EndpointIndependent,
                PortAllocation::PreserveIfFree,
            )
        },
        "restricted-cone" => nat(
            EndpointIndependent,
            AddressDependent,
            PortAllocation::PreserveIfFree,
        ),
        "port-restricted-cone" => nat(
            EndpointIndependent,
            AddressAndPortDependent,
            PortAllocation::Sequential { stride: 1 },
        ),
        "hard" => nat(
            AddressAndPortDependent,
            AddressAndPortDependent,
            PortAllocation::Random,
        ),
        // Shared by an office: other hosts' new flows move the counter, two a second.
        "hard-sequential" => NatConfig {
            background: 2.0,
            ..nat(
                AddressAndPortDependent,
                AddressAndPortDependent,
                PortAllocation::Sequential { stride: 1 },
            )
        },
        "cgnat" => NatConfig {
            port_low: 10_000,
            port_high: 60_000,
            ..nat(
                EndpointIndependent,
                AddressDependent,
                PortAllocation::Random,
            )
        },
        "udp-blocked" => NatConfig {
            block_udp: true,
            ..nat(
                EndpointIndependent,
                AddressAndPortDependent,
                PortAllocation::PreserveIfFree,
            )
        },
        "srx300" => NatConfig {
            capacity: Some(65_536),
            ..nat(
                AddressAndPortDependent,
                AddressAndPortDependent,
                PortAllocation::Random,
            )
        },
        _ => return None,
    })
}

/// A named preset.
pub fn get(name: &str) -> Option<Preset> {
    let (name, doc, chain) = match name {
        "open" => ("open", "A host with a public address and no firewall: a cloud VM with an open security group, a university lab machine.", vec![]),
        "firewall" => ("firewall", "A public address behind a stateful firewall that does not translate: IPv6 home routers, Windows Defender Firewall, cloud security groups.", vec![single("firewall")?]),
        "easy" => ("easy", "Endpoint-independent mapping, address-and-port-dependent filtering, port kept when free: Linux MASQUERADE (iptables/nftables), most OpenWrt and consumer routers.", vec![single("easy")?]),
        "full-cone" => ("full-cone", "Endpoint-independent mapping and filtering: routers with full-cone NAT enabled, many game-console-friendly home gateways, UPnP-forwarded ports.", vec![single("full-cone")?]),
        "restricted-cone" => ("restricted-cone", "Endpoint-independent mapping, address-dependent filtering: older consumer routers (RFC 3489 'restricted cone').", vec![single("restricted-cone")?]),
        "port-restricted-cone" => ("port-restricted-cone", "Endpoint-independent mapping, address-and-port-dependent filtering, sequential ports: many small-office routers (RFC 3489 'port restricted cone').", vec![single("port-restricted-cone")?]),
        "hard" => ("hard", "Mapping and filtering depend on the remote ip:port, random ports: enterprise firewalls with PAT (Cisco ASA, Fortinet, pfSense's default outbound NAT).", vec![single("hard")?]),
        "hard-sequential" => ("hard-sequential", "Address-and-port-dependent mapping with sequential ports: older enterprise NATs and some carrier gear; predictable, so port prediction works (other hosts behind it open two new flows a second, moving the counter).", vec![single("hard-sequential")?]),
        "cgnat" => ("cgnat", "A home router (easy) behind a carrier-grade NAT (endpoint-independent mapping, address-dependent filtering, random ports from a pool): mobile networks and fibre ISPs short of IPv4.", vec![single("easy")?, single("cgnat")?]),
        "udp-blocked" => ("udp-blocked", "UDP dropped outright: guest Wi-Fi and corporate networks that allow only TCP 80/443.", vec![single("udp-blocked")?]),
        "srx300" => ("srx300", "Hard NAT with a 65,536-session table: a Juniper SRX300 branch firewall doing source NAT with PAT.", vec![single("srx300")?]),
        "hard-pmp" => ("hard-pmp", "A hard NAT whose router maps ports over NAT-PMP (RFC 6886): Apple AirPort, many consumer routers with NAT-PMP on.", mapping_chain("hard-pmp")?),
        "hard-pcp" => ("hard-pcp", "A hard NAT whose router maps ports over PCP (RFC 6887) only.", mapping_chain("hard-pcp")?),
        "hard-upnp1" => ("hard-upnp1", "A hard NAT whose router is a UPnP IGD v1 (WANIPConnection:1): most consumer routers with UPnP on.", mapping_chain("hard-upnp1")?),
        "hard-upnp2" => ("hard-upnp2", "A hard NAT whose router is a UPnP IGD v2 (WANIPConnection:2, AddAnyPortMapping).", mapping_chain("hard-upnp2")?),
        "hard-all" => ("hard-all", "A hard NAT whose router offers NAT-PMP, PCP and UPnP IGD v2 at once: miniupnpd with everything on.", mapping_chain("hard-all")?),
        "hard-upnp-permanent" => ("hard-upnp-permanent", "A hard NAT whose UPnP IGD takes permanent leases only (error 725): older IGD v1 firmware.", mapping_chain("hard-upnp-permanent")?),
        "hard-deny" => ("hard-deny", "A hard NAT whose router answers every port-mapping protocol but refuses every mapping: mapping turned off by policy.", mapping_chain("hard-deny")?),
        "double-pmp" => ("double-pmp", "A home router offering NAT-PMP behind a hard carrier NAT: the mapping's external address is private, so it helps only inside the carrier.", mapping_chain("double-pmp")?),
        _ => return None,
    };
    Some(Preset { name, doc, chain })
}

/// The IPv6 side of a preset in the grid's IPv6 axis: the same network with a global IPv6
/// address behind the router's stateful firewall (no NAT66). The firewall filters as the
/// router's NAT does (endpoint-independent for a full cone, address-and-port-dependent
/// otherwise, the usual home-router default); an `open` host has no firewall; a network that
/// blocks UDP on IPv4 passes it on IPv6 (the case of IPv6 rescuing a blocked IPv4).
pub fn ipv6_access(name: &str) -> Option<crate::fastnet::Ipv6Access> {
    let chain = get(name)?.chain;
    let Some(first) = chain.first() else {
        return Some(crate::fastnet::Ipv6Access {
            firewall: None,
            only: false,
        });
    };
    Some(crate::fastnet::Ipv6Access::firewall(
        first.filtering == EndpointIndependent,
    ))
}
