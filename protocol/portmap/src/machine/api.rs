//! What the port mapper takes and gives: its settings, inputs, transmits, mappings, events
//! and reports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::upnp::UpnpError;
use crate::{pcp, pmp, Protocol};

/// Settings of a [`PortMapper`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapperConfig {
    /// The default gateway (the router asked for mappings).
    pub gateway: Ipv4Addr,
    /// Our address on the gateway's network (PCP's client address, UPnP's internal client).
    pub local_ip: Ipv4Addr,
    /// The UDP port to map (the node's WireGuard socket).
    pub local_port: u16,
    /// The lease asked for (7,200 s, as RFC 6886 recommends and Tailscale asks).
    pub lease: Duration,
    /// How long the probe waits for answers (a gateway is one hop away).
    pub probe_timeout: Duration,
    /// How long an HTTP exchange with the gateway may take.
    pub http_timeout: Duration,
    /// How often a live mapping is checked between renewals: the external address and the
    /// epoch for NAT-PMP and PCP, the mapping itself (added again) for UPnP.
    pub check_interval: Duration,
    /// When no protocol works, probe again after this.
    pub retry_interval: Duration,
    /// Use NAT-PMP.
    pub pmp: bool,
    /// Use PCP.
    pub pcp: bool,
    /// Use UPnP IGD.
    pub upnp: bool,
    /// The mapping's description (UPnP shows it in the router's table).
    pub description: String,
    /// Seeds the PCP nonces and UPnP's choice of another port after a conflict.
    pub seed: u64,
    /// Also open an IPv6 pinhole for the same port with PCP (RFC 6887 §11), when set and
    /// PCP is on: the node's global IPv6 address becomes reachable through the router's
    /// IPv6 firewall.
    pub pinhole: Option<PinholeConfig>,
}

/// Where to ask for an IPv6 pinhole: the router's LAN address and our global address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PinholeConfig {
    /// The router's IPv6 address on the LAN (its PCP server, port 5351).
    pub gateway: Ipv6Addr,
    /// The node's global IPv6 address (PCP's client address and the pinhole's internal one).
    pub local_ip: Ipv6Addr,
    /// The interface index to reach a link-local gateway through (0 for a global one).
    pub scope_id: u32,
}

impl PortMapperConfig {
    /// Defaults for mapping `local_ip:local_port` on `gateway`.
    pub fn new(gateway: Ipv4Addr, local_ip: Ipv4Addr, local_port: u16, seed: u64) -> Self {
        PortMapperConfig {
            gateway,
            local_ip,
            local_port,
            lease: Duration::from_secs(u64::from(pmp::RECOMMENDED_LIFETIME)),
            probe_timeout: Duration::from_millis(250),
            http_timeout: Duration::from_secs(3),
            check_interval: Duration::from_secs(30),
            retry_interval: Duration::from_secs(300),
            pmp: true,
            pcp: true,
            upnp: true,
            description: "burrow".into(),
            seed,
            pinhole: None,
        }
    }

    /// Whether `p` is turned on.
    pub fn enabled(&self, p: Protocol) -> bool {
        match p {
            Protocol::Pmp => self.pmp,
            Protocol::Pcp => self.pcp,
            Protocol::Upnp => self.upnp,
        }
    }
}

/// Names an HTTP exchange: the driver hands the answer back with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpRequestId(pub u64);

/// What the driver hands the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// A datagram that arrived on the port mapper's UDP socket.
    Udp {
        /// Its source.
        from: SocketAddr,
        /// Its bytes.
        data: &'a [u8],
    },
    /// The answer to an HTTP request: every byte read until the gateway closed the
    /// connection, or `None` when it could not be reached or took too long.
    Http {
        /// The request's id.
        id: HttpRequestId,
        /// The bytes read.
        response: Option<&'a [u8]>,
    },
}

/// What the driver sends for the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A datagram from the port mapper's UDP socket (to the gateway, or SSDP's multicast group).
    Udp {
        /// Where.
        dst: SocketAddr,
        /// What.
        payload: Vec<u8>,
    },
    /// An HTTP exchange: connect over TCP to `dst`, write `request`, read until the gateway
    /// closes (at most [`crate::upnp::http::MAX_RESPONSE`] bytes), and hand back [`Input::Http`].
    Http {
        /// Hand the answer back with this.
        id: HttpRequestId,
        /// The gateway's HTTP address.
        dst: SocketAddr,
        /// The request's bytes.
        request: Vec<u8>,
    },
}

/// A live mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Made with.
    pub protocol: Protocol,
    /// Where the internet reaches the local port.
    pub external: SocketAddr,
    /// The local port mapped.
    pub internal_port: u16,
    /// The lease granted; `None` for a permanent one (UPnP gateways that take no other).
    pub lease: Option<Duration>,
    /// The external address is itself private: the gateway sits behind another NAT, and the
    /// mapping reaches only the network above it.
    pub private_external: bool,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A probe round settled: each protocol's outcome, and the mapping if one was made.
    Report(Report),
    /// A new mapping, or the live one changed (another external address or port).
    Mapped(Mapping),
    /// The gateway lost its mappings (its epoch went back): mapping again.
    GatewayRestarted(Protocol),
    /// The mapping is gone and none replaces it yet (the gateway stopped answering, or
    /// refused to renew).
    Lost {
        /// It was made with.
        protocol: Protocol,
        /// Why it is gone.
        reason: String,
    },
    /// After [`PortMapper::shutdown`]: the mapping is deleted (or the gateway did not answer
    /// in time); nothing more will be sent.
    Closed,
}

/// One protocol's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolReport {
    /// Which.
    pub protocol: Protocol,
    /// Turned on in the configuration.
    pub enabled: bool,
    /// The gateway answered it.
    pub answered: bool,
    /// The external address it gave.
    pub external_ip: Option<IpAddr>,
    /// That address is private (a double NAT).
    pub private_external: bool,
    /// The live mapping was made with it.
    pub mapped: bool,
    /// Its latest error code (NAT-PMP or PCP result code, UPnP error code).
    pub error_code: Option<u16>,
    /// Its latest error, in words.
    pub error: Option<String>,
}

/// Every protocol's outcome, and the live mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The gateway asked.
    pub gateway: Ipv4Addr,
    /// NAT-PMP, PCP and UPnP, in that order.
    pub protocols: Vec<ProtocolReport>,
    /// The live mapping.
    pub mapping: Option<Mapping>,
    /// The live IPv6 pinhole (where the internet reaches our IPv6 address and port).
    pub pinhole: Option<SocketAddr>,
    /// Why no pinhole: the PCP result code of the latest refusal (`None`: no answer).
    pub pinhole_error_code: Option<u16>,
    /// Why no pinhole, in words.
    pub pinhole_error: Option<String>,
}

/// What happened to the IPv6 pinhole (its own queue, [`PortMapper::poll_pinhole_event`], so
/// that drivers that map IPv4 only see no new [`Event`]).
///
/// [`PortMapper::poll_pinhole_event`]: crate::PortMapper::poll_pinhole_event
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinholeEvent {
    /// A new pinhole, or the live one changed: the internet reaches us here.
    Opened(SocketAddr),
    /// The live pinhole is gone (refused at renewal, the gateway stopped answering, our
    /// address changed, or it was deleted at shutdown).
    Lost {
        /// Why.
        reason: String,
    },
    /// The gateway did not open one (no pinhole was live).
    Refused {
        /// The PCP result code (`None`: no answer).
        code: Option<u16>,
        /// Why, in words.
        reason: String,
    },
}

/// A datagram that could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortMapError {
    /// From someone other than the gateway.
    #[error("datagram from {0}, not the gateway")]
    NotGateway(SocketAddr),
    /// A malformed NAT-PMP message.
    #[error(transparent)]
    Pmp(#[from] pmp::PmpError),
    /// A malformed PCP message.
    #[error(transparent)]
    Pcp(#[from] pcp::PcpError),
    /// A malformed SSDP or HTTP answer, or one pointing away from the gateway.
    #[error(transparent)]
    Upnp(#[from] UpnpError),
    /// An answer to nothing we asked.
    #[error("unsolicited answer")]
    Unsolicited,
}
