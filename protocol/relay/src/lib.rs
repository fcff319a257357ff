#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::SocketAddr;

mod budget;
pub mod client;
pub mod geneve;
pub mod server;

pub use budget::Rate;
pub use client::{BindingError, BindingEvent, RelayBinding};
pub use geneve::{
    decap, encap, looks_like_geneve, GeneveError, GeneveHeader, GeneveProtocol, GENEVE_HEADER_LEN,
    MAX_VNI,
};
pub use server::{
    AllocError, Budget, CloseReason, DropReason, Forward, RelayConfig, RelayError, RelayEvent,
    RelayLimits, RelayServer, RelayStats, SessionInfo,
};

/// A datagram to send from the relay socket (server) or the node's socket (client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub dst: SocketAddr,
    /// The whole UDP payload, Geneve header included.
    pub payload: Vec<u8>,
}
