//! Borrowing, zero-copy STUN message parser and integrity / fingerprint verification.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::attribute::{self, is_comprehension_required, padding, types, Attribute};
use crate::error::{DecodeError, VerifyError};
use crate::header::{MessageType, TransactionId, HEADER_LEN, MAGIC_COOKIE};

/// XOR value that FINGERPRINT applies to the CRC-32 ("STUN").
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// A parsed STUN message borrowing the datagram. Parsing validates the header and every
/// attribute's framing; attribute values are decoded lazily by [`Message::attributes`].
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    raw: &'a [u8],
    msg_type: MessageType,
    integrity: Option<usize>,
    integrity_sha256: Option<usize>,
    fingerprint: Option<usize>,
}

/// Quick check used to demultiplex a shared socket: does this look like RFC 5389+ STUN?
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN
        && datagram[0] & 0xC0 == 0
        && datagram[4..8] == MAGIC_COOKIE.to_be_bytes()
        && (u16::from_be_bytes([datagram[2], datagram[3]]) as usize) % 4 == 0
}

impl<'a> Message<'a> {
    /// Parses an RFC 5389/8489 message (the magic cookie is required).
    pub fn parse(datagram: &'a [u8]) -> Result<Self, DecodeError> {
        Self::parse_inner(datagram, true)
    }

    /// Parses a message that may come from an RFC 3489 agent (no magic cookie):
    /// bytes 4..20 are then a 128-bit transaction ID.
    pub fn parse_rfc3489(datagram: &'a [u8]) -> Result<Self, DecodeError> {
        Self::parse_inner(datagram, false)
    }

    fn parse_inner(datagram: &'a [u8], require_cookie: bool) -> Result<Self, DecodeError> {
        if datagram.len() < HEADER_LEN {
            return Err(DecodeError::TooShort {
                len: datagram.len(),
            });
        }
        if datagram[0] & 0xC0 != 0 {
            return Err(DecodeError::NotStun);
        }
        let cookie = u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
        if require_cookie && cookie != MAGIC_COOKIE {
            return Err(DecodeError::BadMagicCookie { found: cookie });
        }
        let declared = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
        if declared % 4 != 0 {
            return Err(DecodeError::UnalignedLength { declared });
        }
        let available = datagram.len() - HEADER_LEN;
        if declared != available {
            return Err(DecodeError::LengthMismatch {
                declared,
                available,
            });
        }
        let msg_type = MessageType::from_u16(u16::from_be_bytes([datagram[0], datagram[1]]));
        let mut msg = Message {
            raw: datagram,
            msg_type,
            integrity: None,
            integrity_sha256: None,
            fingerprint: None,
        };
        let mut offset = HEADER_LEN;
        while offset < datagram.len() {
            // offset and the end are both multiples of 4, so a 4-byte header always fits.
            let attr_type = u16::from_be_bytes([datagram[offset], datagram[offset + 1]]);
            let len = u16::from_be_bytes([datagram[offset + 2], datagram[offset + 3]]) as usize;
            let padded = len + padding(len);
            let remaining = datagram.len() - offset - 4;
            if padded > remaining {
                return Err(DecodeError::TruncatedAttribute {
                    attr_type,
                    offset,
                    declared: len,
                    available: remaining,
                });
            }
            if msg.fingerprint.is_some() {
                return Err(DecodeError::AttributeAfterFingerprint { attr_type });
            }
            match attr_type {
                types::MESSAGE_INTEGRITY if msg.integrity.is_none() => {
                    if len != 20 {
                        return Err(DecodeError::InvalidAttributeLength { attr_type, len });
                    }
                    msg.integrity = Some(offset);
                }
                types::MESSAGE_INTEGRITY_SHA256 if msg.integrity_sha256.is_none() => {
                    if !(16..=32).contains(&len) || len % 4 != 0 {
                        return Err(DecodeError::InvalidAttributeLength { attr_type, len });
                    }
                    msg.integrity_sha256 = Some(offset);
                }
                types::FINGERPRINT => {
                    if len != 4 {
                        return Err(DecodeError::InvalidAttributeLength { attr_type, len });
                    }
                    msg.fingerprint = Some(offset);
                }
                _ => {}
            }
            offset += 4 + padded;
        }
        Ok(msg)
    }

    /// The whole message as received.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// Method and class.
    pub fn message_type(&self) -> MessageType {
        self.msg_type
    }

    /// Whether the magic cookie is present (false for RFC 3489 agents).
    pub fn has_magic_cookie(&self) -> bool {
        self.raw[4..8] == MAGIC_COOKIE.to_be_bytes()
    }

    /// The 96-bit transaction ID (header bytes 8..20).
    pub fn transaction_id(&self) -> TransactionId {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.raw[8..20]);
        TransactionId(id)
    }

    /// Header bytes 4..20: cookie ‖ transaction ID, or an RFC 3489 128-bit transaction ID.
    pub fn xor_key(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k.copy_from_slice(&self.raw[4..20]);
        k
    }

    /// Iterates over the attributes in order, decoding each value. Attributes after
    /// MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are skipped,
    /// as RFC 8489 §14.5 requires.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            raw: self.raw,
            offset: HEADER_LEN,
            xor_key: self.xor_key(),
            after_integrity: false,
        }
    }

    /// The first attribute of the given type, decoded.
    pub fn attribute(&self, attr_type: u16) -> Option<Result<Attribute<'a>, DecodeError>> {
        let xor_key = self.xor_key();
        let mut after_integrity = false;
        for (t, value) in self.raw_attributes() {
            if after_integrity && !matches!(t, types::MESSAGE_INTEGRITY_SHA256 | types::FINGERPRINT)
            {
                continue;
            }
            if t == attr_type {
                return Some(Attribute::decode(t, value, &xor_key));
            }
            after_integrity |= t == types::MESSAGE_INTEGRITY;
        }
        None
    }

    /// The raw (type, value) pairs, without decoding.
    pub fn raw_attributes(&self) -> RawAttributes<'a> {
        RawAttributes {
            raw: self.raw,
            offset: HEADER_LEN,
        }
    }

    /// XOR-MAPPED-ADDRESS, falling back to MAPPED-ADDRESS (what RFC 3489 servers send).
    pub fn mapped_address(&self) -> Option<core::net::SocketAddr> {
        let mut fallback = None;
        for attr in self.attributes().flatten() {
            match attr {
                Attribute::XorMappedAddress(a) => return Some(a),
                Attribute::MappedAddress(a) if fallback.is_none() => fallback = Some(a),
                _ => {}
            }
        }
        fallback
    }

    /// Comprehension-required attribute types in this message that burrow does not understand
    /// (the contents of a 420 response's UNKNOWN-ATTRIBUTES).
    pub fn unknown_comprehension_required(&self) -> impl Iterator<Item = u16> + 'a {
        self.raw_attributes().map(|(t, _)| t).filter(|&t| {
            is_comprehension_required(t)
                && !matches!(
                    t,
                    types::MAPPED_ADDRESS
                        | types::CHANGE_REQUEST
                        | types::SOURCE_ADDRESS
                        | types::CHANGED_ADDRESS
                        | types::USERNAME
                        | types::MESSAGE_INTEGRITY
                        | types::ERROR_CODE
                        | types::UNKNOWN_ATTRIBUTES
                        | types::REALM
                        | types::NONCE
                        | types::MESSAGE_INTEGRITY_SHA256
                        | types::XOR_MAPPED_ADDRESS
                        | types::PADDING
                        | types::RESPONSE_PORT
                )
        })
    }

    /// Whether the message carries MESSAGE-INTEGRITY.
    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some()
    }

    /// Whether the message carries FINGERPRINT.
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1) with `key` over the bytes as received.
    pub fn verify_integrity(&self, key: &[u8]) -> Result<(), VerifyError> {
        const NAME: &str = "MESSAGE-INTEGRITY";
        let at = self.integrity.ok_or(VerifyError::Missing(NAME))?;
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        self.feed_prefix(&mut mac, at, 24);
        mac.verify_slice(&self.raw[at + 4..at + 24])
            .map_err(|_| VerifyError::Mismatch(NAME))
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 with `key`; truncated values are compared by prefix.
    pub fn verify_integrity_sha256(&self, key: &[u8]) -> Result<(), VerifyError> {
        const NAME: &str = "MESSAGE-INTEGRITY-SHA256";
        let at = self.integrity_sha256.ok_or(VerifyError::Missing(NAME))?;
        let len = u16::from_be_bytes([self.raw[at + 2], self.raw[at + 3]]) as usize;
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        self.feed_prefix(&mut mac, at, 4 + len);
        mac.verify_truncated_left(&self.raw[at + 4..at + 4 + len])
            .map_err(|_| VerifyError::Mismatch(NAME))
    }

    /// Checks FINGERPRINT.
    pub fn verify_fingerprint(&self) -> Result<(), VerifyError> {
        const NAME: &str = "FINGERPRINT";
        let at = self.fingerprint.ok_or(VerifyError::Missing(NAME))?;
        let expected = crc32fast::hash(&self.raw[..at]) ^ FINGERPRINT_XOR;
        let found = u32::from_be_bytes([
            self.raw[at + 4],
            self.raw[at + 5],
            self.raw[at + 6],
            self.raw[at + 7],
        ]);
        if expected == found {
            Ok(())
        } else {
            Err(VerifyError::Mismatch(NAME))
        }
    }

    /// Feeds the header (with the length patched to end after an attribute of `attr_total`
    /// bytes at `at`) and the body up to `at` into a MAC.
    fn feed_prefix<M: Mac>(&self, mac: &mut M, at: usize, attr_total: usize) {
        let patched = (at - HEADER_LEN + attr_total) as u16;
        mac.update(&self.raw[0..2]);
        mac.update(&patched.to_be_bytes());
        mac.update(&self.raw[4..at]);
    }
}

/// Iterator over decoded attributes; see [`Message::attributes`].
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    raw: &'a [u8],
    offset: usize,
    xor_key: [u8; 16],
    after_integrity: bool,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<Attribute<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (attr_type, value, next) = next_raw(self.raw, self.offset)?;
            self.offset = next;
            if self.after_integrity
                && !matches!(
                    attr_type,
                    types::MESSAGE_INTEGRITY_SHA256 | types::FINGERPRINT
                )
            {
                continue;
            }
            if attr_type == types::MESSAGE_INTEGRITY {
                self.after_integrity = true;
            }
            return Some(Attribute::decode(attr_type, value, &self.xor_key));
        }
    }
}

/// Iterator over raw (type, value) pairs; see [`Message::raw_attributes`].
#[derive(Debug, Clone)]
pub struct RawAttributes<'a> {
    raw: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for RawAttributes<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (t, v, next) = next_raw(self.raw, self.offset)?;
        self.offset = next;
        Some((t, v))
    }
}

/// Reads the attribute at `offset` of an already validated message.
fn next_raw(raw: &[u8], offset: usize) -> Option<(u16, &[u8], usize)> {
    let hdr = raw.get(offset..offset + 4)?;
    let attr_type = u16::from_be_bytes([hdr[0], hdr[1]]);
    let len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
    let value = raw.get(offset + 4..offset + 4 + len)?;
    Some((attr_type, value, offset + 4 + len + attribute::padding(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u16) -> Vec<u8> {
        let mut v = vec![0x00, 0x01];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        v.extend_from_slice(&[7; 12]);
        v
    }

    #[test]
    fn rejects_malformed_headers_with_typed_errors() {
        assert_eq!(
            Message::parse(&[0; 5]).unwrap_err(),
            DecodeError::TooShort { len: 5 }
        );
        let mut h = header(0);
        h[0] = 0x80;
        assert_eq!(Message::parse(&h).unwrap_err(), DecodeError::NotStun);
        let mut h = header(0);
        h[4] = 0;
        assert!(matches!(
            Message::parse(&h).unwrap_err(),
            DecodeError::BadMagicCookie { .. }
        ));
        assert!(Message::parse_rfc3489(&h).is_ok());
        assert_eq!(
            Message::parse(&header(2)).unwrap_err(),
            DecodeError::UnalignedLength { declared: 2 }
        );
        assert_eq!(
            Message::parse(&header(4)).unwrap_err(),
            DecodeError::LengthMismatch {
                declared: 4,
                available: 0
            }
        );
    }

    #[test]
    fn rejects_attribute_overrunning_message() {
        let mut m = header(8);
        m.extend_from_slice(&[0x80, 0x22, 0x00, 0x09, b'a', b'b', b'c', b'd']);
        assert!(matches!(
            Message::parse(&m).unwrap_err(),
            DecodeError::TruncatedAttribute {
                attr_type: 0x8022,
                ..
            }
        ));
    }

    #[test]
    fn rejects_attribute_after_fingerprint() {
        let mut m = header(16);
        m.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 1, 2, 3, 4]);
        m.extend_from_slice(&[0x80, 0x22, 0x00, 0x04, b'a', b'b', b'c', b'd']);
        assert_eq!(
            Message::parse(&m).unwrap_err(),
            DecodeError::AttributeAfterFingerprint { attr_type: 0x8022 }
        );
    }

    #[test]
    fn lists_unknown_comprehension_required_attributes() {
        let mut m = header(16);
        m.extend_from_slice(&[0x7f, 0x01, 0x00, 0x00]); // unknown, required
        m.extend_from_slice(&[0xff, 0x01, 0x00, 0x00]); // unknown, optional
        m.extend_from_slice(&[0x00, 0x20, 0x00, 0x00]); // XOR-MAPPED (known; bad length)
        m.extend_from_slice(&[0x7f, 0x02, 0x00, 0x00]);
        let msg = Message::parse(&m).unwrap();
        assert_eq!(
            msg.unknown_comprehension_required().collect::<Vec<_>>(),
            [0x7f01, 0x7f02]
        );
        assert!(msg.attributes().any(|a| a.is_err()));
    }

    #[test]
    fn is_stun_demultiplexes() {
        assert!(is_stun(&header(0)));
        assert!(!is_stun(&[1, 0, 0, 0]));
        let mut wg = header(0);
        wg[0] = 1; // a WireGuard initiation starts 01 00 00 00
        wg[4] = 0;
        assert!(!is_stun(&wg));
    }
}
