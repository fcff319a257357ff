//! Writing STUN messages into a caller's buffer, with MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT.

use bytes::BufMut;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::attribute::{padding, types, Attribute, Sink};
use crate::error::EncodeError;
use crate::header::{MessageType, TransactionId, HEADER_LEN, MAGIC_COOKIE};
use crate::message::FINGERPRINT_XOR;

/// Describes one message to write: type, transaction ID, attributes, and which of the
/// computed trailer attributes to append. Nothing is allocated; attributes are borrowed.
///
/// ```
/// use burrow_stun::{Attribute, Encoder, Message, MessageType, TransactionId};
/// let mut buf = Vec::new();
/// let tid = TransactionId([1; 12]);
/// let attrs = [Attribute::Software("burrow")];
/// Encoder::new(MessageType::BINDING_REQUEST, tid)
///     .attributes(&attrs)
///     .fingerprint()
///     .encode(&mut buf)
///     .unwrap();
/// let msg = Message::parse(&buf).unwrap();
/// assert!(msg.verify_fingerprint().is_ok());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Encoder<'a> {
    msg_type: MessageType,
    id: [u8; 16],
    attributes: &'a [Attribute<'a>],
    integrity: Option<&'a [u8]>,
    integrity_sha256: Option<&'a [u8]>,
    fingerprint: bool,
    padding_byte: u8,
}

impl<'a> Encoder<'a> {
    /// A message of `msg_type` with the magic cookie and transaction ID `id`.
    pub fn new(msg_type: MessageType, id: TransactionId) -> Self {
        let mut full = [0u8; 16];
        full[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        full[4..].copy_from_slice(&id.0);
        Self::with_raw_id(msg_type, full)
    }

    /// A message whose header bytes 4..20 are `id` verbatim: for answering RFC 3489 agents,
    /// whose 128-bit transaction ID takes the place of the magic cookie.
    pub fn with_raw_id(msg_type: MessageType, id: [u8; 16]) -> Self {
        Encoder {
            msg_type,
            id,
            attributes: &[],
            integrity: None,
            integrity_sha256: None,
            fingerprint: false,
            padding_byte: 0,
        }
    }

    /// The attributes to write, in order.
    pub fn attributes(mut self, attributes: &'a [Attribute<'a>]) -> Self {
        self.attributes = attributes;
        self
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1) keyed with `key`.
    pub fn message_integrity(mut self, key: &'a [u8]) -> Self {
        self.integrity = Some(key);
        self
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (full 32 bytes) keyed with `key`.
    pub fn message_integrity_sha256(mut self, key: &'a [u8]) -> Self {
        self.integrity_sha256 = Some(key);
        self
    }

    /// Pads attribute values with `byte` instead of zero. RFC 8489 requires zero; RFC 5389
    /// allowed any value, and the RFC 5769 test vectors pad with spaces (0x20).
    pub fn padding_byte(mut self, byte: u8) -> Self {
        self.padding_byte = byte;
        self
    }

    /// Appends FINGERPRINT.
    pub fn fingerprint(mut self) -> Self {
        self.fingerprint = true;
        self
    }

    fn body_lengths(&self) -> Result<(usize, usize), EncodeError> {
        let mut attrs = 0usize;
        for a in self.attributes {
            let len = a.value_len()?;
            attrs += 4 + len + padding(len);
        }
        let trailer = self.integrity.map_or(0, |_| 24)
            + self.integrity_sha256.map_or(0, |_| 36)
            + if self.fingerprint { 8 } else { 0 };
        let body = attrs + trailer;
        if body > u16::MAX as usize {
            return Err(EncodeError::MessageTooLong { len: body });
        }
        Ok((attrs, body))
    }

    /// Total size of the encoded message in bytes.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        Ok(HEADER_LEN + self.body_lengths()?.1)
    }

    /// Writes the message; returns its length. Fails without writing if `buf` is too small.
    pub fn encode<B: BufMut>(&self, buf: &mut B) -> Result<usize, EncodeError> {
        let (attrs_len, body) = self.body_lengths()?;
        let total = HEADER_LEN + body;
        if buf.remaining_mut() < total {
            return Err(EncodeError::BufferTooSmall {
                needed: total,
                available: buf.remaining_mut(),
            });
        }
        let type_bytes = self.msg_type.to_u16().to_be_bytes();
        let header_with = |len: usize| {
            let mut h = [0u8; HEADER_LEN];
            h[0..2].copy_from_slice(&type_bytes);
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            h[4..20].copy_from_slice(&self.id);
            h
        };
        let mut tee = Tee {
            buf,
            crc: self.fingerprint.then(crc32fast::Hasher::new),
            mi: self
                .integrity
                .map(|k| <Hmac<Sha1> as Mac>::new_from_slice(k).expect("any key length")),
            mi256: self
                .integrity_sha256
                .map(|k| <Hmac<Sha256> as Mac>::new_from_slice(k).expect("any key length")),
        };
        // Each MAC sees the header with the length ending at its own attribute.
        let final_header = header_with(body);
        tee.buf.put_slice(&final_header);
        if let Some(crc) = &mut tee.crc {
            crc.update(&final_header);
        }
        if let Some(mi) = &mut tee.mi {
            mi.update(&header_with(attrs_len + 24)[..]);
        }
        if let Some(mi256) = &mut tee.mi256 {
            let mi_len = self.integrity.map_or(0, |_| 24);
            mi256.update(&header_with(attrs_len + mi_len + 36)[..]);
        }
        for a in self.attributes {
            let len = a.value_len()?;
            a.write(len, &self.id, self.padding_byte, &mut tee);
        }
        if let Some(mi) = tee.mi.take() {
            let mac = mi.finalize().into_bytes();
            let mut v = [0u8; 20];
            v.copy_from_slice(&mac);
            Attribute::MessageIntegrity(v).write(20, &self.id, 0, &mut tee);
        }
        if let Some(mi256) = tee.mi256.take() {
            let mac = mi256.finalize().into_bytes();
            Attribute::MessageIntegritySha256(&mac).write(32, &self.id, 0, &mut tee);
        }
        if let Some(crc) = tee.crc.take() {
            let fp = crc.finalize() ^ FINGERPRINT_XOR;
            let mut a = [0u8; 8];
            a[0..2].copy_from_slice(&types::FINGERPRINT.to_be_bytes());
            a[2..4].copy_from_slice(&4u16.to_be_bytes());
            a[4..8].copy_from_slice(&fp.to_be_bytes());
            tee.buf.put_slice(&a);
        }
        Ok(total)
    }
}

/// Writes to the buffer and every running checksum at once.
struct Tee<'b, B: BufMut> {
    buf: &'b mut B,
    crc: Option<crc32fast::Hasher>,
    mi: Option<Hmac<Sha1>>,
    mi256: Option<Hmac<Sha256>>,
}

impl<B: BufMut> Sink for Tee<'_, B> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf.put_slice(bytes);
        if let Some(crc) = &mut self.crc {
            crc.update(bytes);
        }
        if let Some(mi) = &mut self.mi {
            mi.update(bytes);
        }
        if let Some(mi256) = &mut self.mi256 {
            mi256.update(bytes);
        }
    }
}
