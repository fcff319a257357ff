#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
mod buffers;
pub mod engine;
pub mod icmp;
pub mod nat;
mod routing;

pub use batch::{BatchOutcome, Dest, PacketBatch, TransmitBatch, UdpRun};
pub use buffers::Buffers;
pub use engine::{
    Event, Explanation, Footprint, Input, MtuConfig, Node, NodeConfig, NodeError, PeerConfig,
    PeerRelayPolicy, PeerStats, RelayReport, RelayServerSettings, RelayState, Transmit,
    MAX_RELAY_TRIES, MIN_TUNNEL_MTU, RELAY_AFTER, RELAY_SOCKET,
};
pub use nat::{classify, NatView};
pub use routing::AllowedIps;
