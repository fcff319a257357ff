//! Typed errors for decoding and encoding STUN messages.

use thiserror::Error;

/// Why a datagram could not be read as a STUN message or one of its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[allow(missing_docs)] // fields are named for what they hold
pub enum DecodeError {
    /// Fewer than 20 bytes: there is no room for a STUN header.
    #[error("datagram is {len} bytes, shorter than the 20-byte STUN header")]
    TooShort { len: usize },
    /// The two most significant bits of the message type are not zero.
    #[error("the top two bits of the message type are not zero: not a STUN message")]
    NotStun,
    /// The magic cookie is not 0x2112A442 (an RFC 3489 message or another protocol).
    #[error("magic cookie is {found:#010x}, expected 0x2112a442")]
    BadMagicCookie { found: u32 },
    /// The header length is not a multiple of four.
    #[error("header length {declared} is not a multiple of 4")]
    UnalignedLength { declared: usize },
    /// The header length disagrees with the datagram size.
    #[error("header declares {declared} body bytes but the datagram carries {available}")]
    LengthMismatch { declared: usize, available: usize },
    /// An attribute runs past the end of the message.
    #[error("attribute {attr_type:#06x} at offset {offset} declares {declared} bytes but only {available} remain")]
    TruncatedAttribute {
        attr_type: u16,
        offset: usize,
        declared: usize,
        available: usize,
    },
    /// An attribute header itself is cut short.
    #[error("attribute header at offset {offset} is cut short")]
    TruncatedAttributeHeader { offset: usize },
    /// Something other than padding follows FINGERPRINT, which must be last.
    #[error("attribute {attr_type:#06x} follows FINGERPRINT, which must be the last attribute")]
    AttributeAfterFingerprint { attr_type: u16 },
    /// An attribute's value has a length its type does not allow.
    #[error("attribute {attr_type:#06x} has invalid value length {len}")]
    InvalidAttributeLength { attr_type: u16, len: usize },
    /// An address attribute names a family other than IPv4 or IPv6.
    #[error("address family {family:#04x} is neither IPv4 (0x01) nor IPv6 (0x02)")]
    UnknownAddressFamily { family: u8 },
    /// A text attribute is not valid UTF-8.
    #[error("attribute {attr_type:#06x} is not valid UTF-8")]
    InvalidUtf8 { attr_type: u16 },
    /// ERROR-CODE holds a class outside 3..=6 or a number above 99.
    #[error("ERROR-CODE class {class} / number {number} is out of range")]
    InvalidErrorCode { class: u8, number: u8 },
    /// A text attribute exceeds the length the RFC allows receivers to accept.
    #[error("attribute {attr_type:#06x} is {len} bytes, longer than the {max}-byte limit")]
    AttributeTooLong {
        attr_type: u16,
        len: usize,
        max: usize,
    },
}

/// Why a message could not be written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[allow(missing_docs)] // fields are named for what they hold
pub enum EncodeError {
    /// The caller's buffer has less room than the message needs.
    #[error("buffer has room for {available} bytes but the message needs {needed}")]
    BufferTooSmall { needed: usize, available: usize },
    /// The message body would exceed the 16-bit length field.
    #[error("message body of {len} bytes does not fit the 16-bit length field")]
    MessageTooLong { len: usize },
    /// An attribute value is longer than its type allows.
    #[error("attribute {attr_type:#06x} value of {len} bytes exceeds the {max}-byte limit")]
    ValueTooLong {
        attr_type: u16,
        len: usize,
        max: usize,
    },
    /// ERROR-CODE outside 300..=699.
    #[error("error code {code} is outside 300..=699")]
    InvalidErrorCode { code: u16 },
    /// MESSAGE-INTEGRITY-SHA256 may be truncated only to 16..=32 bytes in steps of 4.
    #[error("MESSAGE-INTEGRITY-SHA256 length {len} is not a multiple of 4 in 16..=32")]
    InvalidSha256Length { len: usize },
}

/// Why MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 or FINGERPRINT did not check out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// The message carries no such attribute.
    #[error("message has no {0} attribute")]
    Missing(&'static str),
    /// The attribute is present but its value is wrong.
    #[error("{0} does not match the message")]
    Mismatch(&'static str),
}
