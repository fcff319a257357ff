#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod frame;
pub mod gate;
pub mod info;
pub mod map;
pub mod nacl;
mod recent;
pub mod server;

pub use client::{Client, ClientError, ClientEvent};
pub use frame::{Frame, FrameDecoder, FrameError, PeerGoneReason};
pub use gate::{GateRefusal, PreAuthGate, Ticket};
pub use map::{DerpMap, DerpNode, DerpRegion};
pub use server::{
    CloseReason, ConnId, DropReason, MeshKey, MeshKeyError, MeshLink, Server, ServerConfig, Stats,
    Verdict,
};
