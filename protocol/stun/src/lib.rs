#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attribute;
pub mod client;
mod encode;
pub mod error;
pub mod header;
pub mod key;
mod message;
pub mod server;

pub use attribute::{Attribute, AttributeTypes, ChangeRequest, ErrorCode};
pub use client::{BindingClient, BindingRequest, BindingResponse, ClientConfig, RetransmitConfig};
pub use encode::Encoder;
pub use error::{DecodeError, EncodeError, VerifyError};
pub use header::{Class, MessageType, Method, TransactionId, MAGIC_COOKIE};
pub use message::{is_stun, Attributes, Message, RawAttributes, FINGERPRINT_XOR};
pub use server::{BindingServer, Reply, ServerConfig};
