#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod changelog;
pub mod filter;
pub mod hujson;
pub mod netmap;
pub mod policy;

pub use api::{
    ChallengeResponse, EndpointsRequest, MapMessage, RegisterBody, RegisterRequest,
    RegisterResponse,
};
pub use changelog::{Change, ChangeId, Follower};
pub use filter::{
    parse_packet, source_address, DropReason, Filter, Fragment, PacketInfo, PeerTag, Verdict,
};
pub use netmap::{Delta, DerpRegion, NetMap, PeerInfo, RelayGrants, Tailnet};
pub use policy::{
    AclRule, CompiledPolicy, FilterRule, NodeInfo, Policy, PolicyError, PortRange, RelayCapability,
    RelayRule,
};
