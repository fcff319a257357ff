#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod machine;
mod peers;

pub use machine::{
    Failure, Input, Request, RequestKind, Session, SessionConfig, SessionError, SessionEvent,
};
pub use peers::peer_config;

#[cfg(test)]
mod tests;
