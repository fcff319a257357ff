//! WireGuard message framing: type byte + 3 zero bytes, little-endian indices and counters.

use thiserror::Error;

/// Handshake initiation length.
pub const INITIATION_LEN: usize = 148;
/// Handshake response length.
pub const RESPONSE_LEN: usize = 92;
/// Cookie reply length.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Transport header length (type, receiver index, counter).
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// A keep-alive: a transport message with an empty plaintext.
pub const KEEPALIVE_LEN: usize = TRANSPORT_HEADER_LEN + TAG_LEN;
/// Transport plaintexts are zero-padded to a multiple of this.
pub const PADDING_MULTIPLE: usize = 16;

pub(crate) const TYPE_INITIATION: u8 = 1;
pub(crate) const TYPE_RESPONSE: u8 = 2;
pub(crate) const TYPE_COOKIE_REPLY: u8 = 3;
pub(crate) const TYPE_TRANSPORT: u8 = 4;

/// Offsets of mac1 / mac2 in the two handshake messages.
pub(crate) const INITIATION_MAC1: usize = 116;
pub(crate) const RESPONSE_MAC1: usize = 60;

/// Why a datagram is not a WireGuard message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Empty, or too short for its type.
    #[error("message of type {kind} is {len} bytes, expected {expected}")]
    BadLength {
        /// The message type byte.
        kind: u8,
        /// Bytes received.
        len: usize,
        /// Bytes required.
        expected: usize,
    },
    /// The type byte is not 1–4, or the reserved bytes are not zero.
    #[error("not a WireGuard message")]
    NotWireGuard,
}

/// A datagram classified by type, borrowing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Type 1.
    Initiation(&'a [u8; INITIATION_LEN]),
    /// Type 2.
    Response(&'a [u8; RESPONSE_LEN]),
    /// Type 3.
    CookieReply(&'a [u8; COOKIE_REPLY_LEN]),
    /// Type 4.
    Transport {
        /// Our index for the session.
        receiver: u32,
        /// The sender's counter (the AEAD nonce).
        counter: u64,
        /// Ciphertext and tag.
        ciphertext: &'a [u8],
    },
}

pub(crate) fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl<'a> Message<'a> {
    /// Classifies a datagram. Never panics.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, ParseError> {
        if datagram.len() < 4 || datagram[1..4] != [0, 0, 0] {
            return Err(ParseError::NotWireGuard);
        }
        let kind = datagram[0];
        let exact = |expected: usize| -> Result<(), ParseError> {
            if datagram.len() == expected {
                Ok(())
            } else {
                Err(ParseError::BadLength {
                    kind,
                    len: datagram.len(),
                    expected,
                })
            }
        };
        Ok(match kind {
            TYPE_INITIATION => {
                exact(INITIATION_LEN)?;
                Message::Initiation(datagram.try_into().expect("length checked"))
            }
            TYPE_RESPONSE => {
                exact(RESPONSE_LEN)?;
                Message::Response(datagram.try_into().expect("length checked"))
            }
            TYPE_COOKIE_REPLY => {
                exact(COOKIE_REPLY_LEN)?;
                Message::CookieReply(datagram.try_into().expect("length checked"))
            }
            TYPE_TRANSPORT => {
                if datagram.len() < KEEPALIVE_LEN {
                    return Err(ParseError::BadLength {
                        kind,
                        len: datagram.len(),
                        expected: KEEPALIVE_LEN,
                    });
                }
                Message::Transport {
                    receiver: le32(&datagram[4..8]),
                    counter: u64::from_le_bytes(datagram[8..16].try_into().expect("8 bytes")),
                    ciphertext: &datagram[16..],
                }
            }
            _ => return Err(ParseError::NotWireGuard),
        })
    }

    /// The receiver index a response, cookie reply or transport message is addressed to.
    pub fn receiver_index(&self) -> Option<u32> {
        match self {
            Message::Initiation(_) => None,
            Message::Response(m) => Some(le32(&m[8..12])),
            Message::CookieReply(m) => Some(le32(&m[4..8])),
            Message::Transport { receiver, .. } => Some(*receiver),
        }
    }
}

/// Bytes a transport message needs for a plaintext of `len` bytes.
pub const fn transport_len(len: usize) -> usize {
    TRANSPORT_HEADER_LEN + padded(len) + TAG_LEN
}

/// A plaintext length rounded up to the padding multiple.
pub const fn padded(len: usize) -> usize {
    len.div_ceil(PADDING_MULTIPLE) * PADDING_MULTIPLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_and_rejects() {
        assert_eq!(Message::parse(&[]), Err(ParseError::NotWireGuard));
        assert_eq!(Message::parse(&[1, 0, 0, 1]), Err(ParseError::NotWireGuard));
        assert_eq!(Message::parse(&[9, 0, 0, 0]), Err(ParseError::NotWireGuard));
        assert!(matches!(
            Message::parse(&[1, 0, 0, 0, 5]),
            Err(ParseError::BadLength { kind: 1, .. })
        ));
        let mut t = vec![4, 0, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        t.extend_from_slice(&[0; 16]);
        assert_eq!(
            Message::parse(&t).unwrap(),
            Message::Transport {
                receiver: 7,
                counter: 2,
                ciphertext: &[0; 16]
            }
        );
        assert_eq!(transport_len(0), 32);
        assert_eq!(transport_len(1), 48);
        assert_eq!(transport_len(1420), 16 + 1424 + 16);
    }
}
