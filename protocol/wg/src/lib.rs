#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aead;
mod crypto;
pub mod keys;
pub mod messages;
pub mod noise;
