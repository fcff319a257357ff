#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checksum;
pub mod coalesce;
pub mod split;
pub mod virtio;

pub use coalesce::{Coalescer, CoalescerFull, MAX_SEGMENTS};
pub use split::{complete_checksum, plan, split, Plan, SlotLayout};
pub use virtio::{GsoType, VirtioNetHdr, F_DATA_VALID, F_NEEDS_CSUM, VNET_HDR_LEN};

/// IP protocol numbers and TCP flags both directions need.
pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;
pub(crate) const TCP_PSH: u8 = 0x08;

/// Why a frame cannot be split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The frame ends before a header it needs.
    #[error("frame truncated")]
    Truncated,
    /// `gso_type` carries the ECN bit, which burrow never asks the TUN for.
    #[error("GSO with ECN (CWR) was not negotiated")]
    EcnGso,
    /// A `gso_type` burrow does not split (UFO and the like).
    #[error("unsupported GSO type {0}")]
    UnsupportedGso(u8),
    /// The GSO type does not match the packet's IP version.
    #[error("GSO type does not match the IP version")]
    GsoMismatch,
    /// `csum_start` or the transport header length is impossible.
    #[error("bad header length")]
    BadHeaderLength,
    /// The checksum field lies outside the packet, or at an odd distance from its start.
    #[error("bad checksum offset")]
    BadChecksumOffset,
    /// A slot layout whose head- and tailroom leave no room, or whose slots overflow.
    #[error("impossible slot layout")]
    BadLayout,
    /// A super-packet with `gso_size` 0.
    #[error("GSO size 0")]
    ZeroGsoSize,
    /// More segments than the caller has slots for.
    #[error("{segments} segments do not fit the slots given")]
    TooManySegments {
        /// Segments the frame makes.
        segments: usize,
    },
    /// A segment longer than a slot holds.
    #[error("a {need}-byte segment does not fit a {have}-byte slot")]
    SlotTooSmall {
        /// The longest segment.
        need: usize,
        /// What a slot holds.
        have: usize,
    },
}
