#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod frame;
pub mod nacl;

pub use frame::{Frame, FrameDecoder, FrameError, PeerGoneReason};
