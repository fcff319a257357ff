#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aead;
mod crypto;
pub mod device;
pub mod keys;
pub mod messages;
pub mod noise;
pub mod replay;
mod session;
pub mod timers;
pub mod tunnel;

pub use device::{Device, PeerId, Received, UNDER_LOAD_HANDSHAKES_PER_SECOND};
pub use keys::{KeyFormatError, PresharedKey, PrivateKey, PublicKey};
pub use messages::{transport_len, Message, ParseError};
pub use noise::HandshakeError;
pub use session::{Opened, Opener, SealRun};
pub use tunnel::{Decapsulated, Encapsulated, Event, Tunnel, TunnelConfig};

/// Errors from the tunnel and device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WgError {
    /// Not a WireGuard message.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A handshake message was refused.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// Transport data failed authentication.
    #[error("transport data failed authentication")]
    DecryptFailed,
    /// A duplicate or too-old counter.
    #[error("replayed or too old transport counter")]
    Replay,
    /// No session with this receiver index.
    #[error("no session with receiver index {0:#010x}")]
    UnknownIndex(u32),
    /// The session is past its time or message limit.
    #[error("session expired")]
    NoSession,
    /// The caller's output buffer is too small.
    #[error("output buffer too small: {needed} bytes needed")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
}
