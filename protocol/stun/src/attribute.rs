//! STUN attributes: type registry, typed values, and their wire encoding.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::{DecodeError, EncodeError};

/// Attribute type numbers (RFC 8489 §18.3, RFC 5780 §9.1, RFC 3489).
#[allow(missing_docs)] // the constant names are the RFC names
pub mod types {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// RFC 3489 RESPONSE-ADDRESS; reserved since RFC 5389.
    pub const RESPONSE_ADDRESS: u16 = 0x0002;
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// RFC 3489 only.
    pub const SOURCE_ADDRESS: u16 = 0x0004;
    /// RFC 3489 only.
    pub const CHANGED_ADDRESS: u16 = 0x0005;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const PADDING: u16 = 0x0026;
    pub const RESPONSE_PORT: u16 = 0x0027;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const CACHE_TIMEOUT: u16 = 0x8027;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    pub const OTHER_ADDRESS: u16 = 0x802C;
}

/// Whether an attribute type is comprehension-required (0x0000–0x7FFF).
pub const fn is_comprehension_required(attr_type: u16) -> bool {
    attr_type < 0x8000
}

/// Longest text value (USERNAME, REALM, NONCE, SOFTWARE, reason phrase) a receiver accepts.
pub const MAX_TEXT_DECODE: usize = 763;
/// Longest text value burrow sends (128 characters of up to 4 UTF-8 bytes, less the slack RFC 8489 allows).
pub const MAX_TEXT_ENCODE: usize = 509;

/// An ERROR-CODE value: a code in 300..=699 and a reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    /// The numeric code, e.g. 420.
    pub code: u16,
    /// Human-readable reason.
    pub reason: &'a str,
}

impl<'a> ErrorCode<'a> {
    /// 300 Try Alternate.
    pub const TRY_ALTERNATE: u16 = 300;
    /// 400 Bad Request.
    pub const BAD_REQUEST: u16 = 400;
    /// 401 Unauthenticated.
    pub const UNAUTHENTICATED: u16 = 401;
    /// 420 Unknown Attribute.
    pub const UNKNOWN_ATTRIBUTE: u16 = 420;
    /// 438 Stale Nonce.
    pub const STALE_NONCE: u16 = 438;
    /// 500 Server Error.
    pub const SERVER_ERROR: u16 = 500;

    /// An error code with its reason phrase.
    pub const fn new(code: u16, reason: &'a str) -> Self {
        ErrorCode { code, reason }
    }
}

/// CHANGE-REQUEST flags (RFC 5780 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ChangeRequest {
    /// Answer from the alternate IP address.
    pub change_ip: bool,
    /// Answer from the alternate port.
    pub change_port: bool,
}

impl ChangeRequest {
    const IP_BIT: u32 = 0x4;
    const PORT_BIT: u32 = 0x2;

    /// Answer from the alternate IP and port (RFC 5780 filtering test II).
    pub const IP_AND_PORT: ChangeRequest = ChangeRequest {
        change_ip: true,
        change_port: true,
    };
    /// Answer from the alternate port only (RFC 5780 filtering test III).
    pub const PORT: ChangeRequest = ChangeRequest {
        change_ip: false,
        change_port: true,
    };
    /// Answer from the alternate IP only.
    pub const IP: ChangeRequest = ChangeRequest {
        change_ip: true,
        change_port: false,
    };

    fn to_u32(self) -> u32 {
        (if self.change_ip { Self::IP_BIT } else { 0 })
            | (if self.change_port { Self::PORT_BIT } else { 0 })
    }
}

/// A list of attribute types, as carried by UNKNOWN-ATTRIBUTES.
#[derive(Debug, Clone, Copy)]
pub enum AttributeTypes<'a> {
    /// Borrowed from a received message: big-endian u16s.
    Wire(&'a [u8]),
    /// Supplied by the caller for encoding.
    List(&'a [u16]),
}

impl<'a> AttributeTypes<'a> {
    /// Iterates over the attribute types.
    pub fn iter(&self) -> impl Iterator<Item = u16> + 'a {
        let (wire, list): (&'a [u8], &'a [u16]) = match *self {
            AttributeTypes::Wire(w) => (w, &[]),
            AttributeTypes::List(l) => (&[], l),
        };
        wire.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .chain(list.iter().copied())
    }

    /// Number of attribute types in the list.
    pub fn len(&self) -> usize {
        match self {
            AttributeTypes::Wire(w) => w.len() / 2,
            AttributeTypes::List(l) => l.len(),
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for AttributeTypes<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}
impl Eq for AttributeTypes<'_> {}

/// One decoded attribute. Text and opaque values borrow from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute<'a> {
    /// MAPPED-ADDRESS: the reflexive address, unobfuscated (RFC 3489 clients).
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS: the reflexive address as the server saw it.
    XorMappedAddress(SocketAddr),
    /// USERNAME.
    Username(&'a str),
    /// MESSAGE-INTEGRITY: HMAC-SHA1 (as received; verify with `Message::verify_integrity`).
    MessageIntegrity([u8; 20]),
    /// MESSAGE-INTEGRITY-SHA256: HMAC-SHA256, 16..=32 bytes.
    MessageIntegritySha256(&'a [u8]),
    /// FINGERPRINT: CRC-32 of the message XOR 0x5354554E.
    Fingerprint(u32),
    /// ERROR-CODE.
    ErrorCode(ErrorCode<'a>),
    /// UNKNOWN-ATTRIBUTES, sent with a 420 error.
    UnknownAttributes(AttributeTypes<'a>),
    /// REALM.
    Realm(&'a str),
    /// NONCE.
    Nonce(&'a str),
    /// SOFTWARE: the agent's name and version.
    Software(&'a str),
    /// ALTERNATE-SERVER, with a 300 error.
    AlternateServer(SocketAddr),
    /// CHANGE-REQUEST (RFC 5780).
    ChangeRequest(ChangeRequest),
    /// RESPONSE-ORIGIN (RFC 5780): where the response was sent from.
    ResponseOrigin(SocketAddr),
    /// OTHER-ADDRESS (RFC 5780): the server's alternate IP and port.
    OtherAddress(SocketAddr),
    /// RESPONSE-PORT (RFC 5780): send the response to this port.
    ResponsePort(u16),
    /// PADDING (RFC 5780).
    Padding(&'a [u8]),
    /// SOURCE-ADDRESS (RFC 3489): where the response was sent from.
    SourceAddress(SocketAddr),
    /// CHANGED-ADDRESS (RFC 3489): the server's alternate IP and port.
    ChangedAddress(SocketAddr),
    /// Any other attribute, kept raw.
    Other {
        /// The attribute type number.
        attr_type: u16,
        /// The value without padding.
        value: &'a [u8],
    },
}

/// Writes bytes somewhere (a buffer, a hasher, or several at once).
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

fn decode_text(attr_type: u16, value: &[u8]) -> Result<&str, DecodeError> {
    if value.len() > MAX_TEXT_DECODE {
        return Err(DecodeError::AttributeTooLong {
            attr_type,
            len: value.len(),
            max: MAX_TEXT_DECODE,
        });
    }
    core::str::from_utf8(value).map_err(|_| DecodeError::InvalidUtf8 { attr_type })
}

fn decode_address(attr_type: u16, value: &[u8]) -> Result<SocketAddr, DecodeError> {
    if value.len() < 4 {
        return Err(DecodeError::InvalidAttributeLength {
            attr_type,
            len: value.len(),
        });
    }
    let family = value[1];
    let port = u16::from_be_bytes([value[2], value[3]]);
    let ip = match (family, value.len()) {
        (0x01, 8) => IpAddr::V4(Ipv4Addr::new(value[4], value[5], value[6], value[7])),
        (0x02, 20) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&value[4..20]);
            IpAddr::V6(Ipv6Addr::from(b))
        }
        (0x01, len) | (0x02, len) => {
            return Err(DecodeError::InvalidAttributeLength { attr_type, len })
        }
        (family, _) => return Err(DecodeError::UnknownAddressFamily { family }),
    };
    Ok(SocketAddr::new(ip, port))
}

/// XORs an address with the magic cookie and transaction ID (`xor_key` = header bytes 4..20).
fn xor_address(addr: SocketAddr, xor_key: &[u8; 16]) -> SocketAddr {
    let port = addr.port() ^ u16::from_be_bytes([xor_key[0], xor_key[1]]);
    let ip = match addr.ip() {
        IpAddr::V4(v4) => {
            let mut o = v4.octets();
            for (b, k) in o.iter_mut().zip(xor_key) {
                *b ^= k;
            }
            IpAddr::V4(o.into())
        }
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            for (b, k) in o.iter_mut().zip(xor_key) {
                *b ^= k;
            }
            IpAddr::V6(o.into())
        }
    };
    SocketAddr::new(ip, port)
}

fn fixed_len(attr_type: u16, value: &[u8], len: usize) -> Result<(), DecodeError> {
    if value.len() == len {
        Ok(())
    } else {
        Err(DecodeError::InvalidAttributeLength {
            attr_type,
            len: value.len(),
        })
    }
}

impl<'a> Attribute<'a> {
    /// Decodes one attribute value. `xor_key` is header bytes 4..20 (cookie ‖ transaction ID).
    pub fn decode(
        attr_type: u16,
        value: &'a [u8],
        xor_key: &[u8; 16],
    ) -> Result<Attribute<'a>, DecodeError> {
        use types::*;
        Ok(match attr_type {
            MAPPED_ADDRESS => Attribute::MappedAddress(decode_address(attr_type, value)?),
            XOR_MAPPED_ADDRESS => {
                Attribute::XorMappedAddress(xor_address(decode_address(attr_type, value)?, xor_key))
            }
            ALTERNATE_SERVER => Attribute::AlternateServer(decode_address(attr_type, value)?),
            RESPONSE_ORIGIN => Attribute::ResponseOrigin(decode_address(attr_type, value)?),
            OTHER_ADDRESS => Attribute::OtherAddress(decode_address(attr_type, value)?),
            SOURCE_ADDRESS => Attribute::SourceAddress(decode_address(attr_type, value)?),
            CHANGED_ADDRESS => Attribute::ChangedAddress(decode_address(attr_type, value)?),
            USERNAME => Attribute::Username(decode_text(attr_type, value)?),
            REALM => Attribute::Realm(decode_text(attr_type, value)?),
            NONCE => Attribute::Nonce(decode_text(attr_type, value)?),
            SOFTWARE => Attribute::Software(decode_text(attr_type, value)?),
            MESSAGE_INTEGRITY => {
                fixed_len(attr_type, value, 20)?;
                let mut mac = [0u8; 20];
                mac.copy_from_slice(value);
                Attribute::MessageIntegrity(mac)
            }
            MESSAGE_INTEGRITY_SHA256 => {
                if !(16..=32).contains(&value.len()) || value.len() % 4 != 0 {
                    return Err(DecodeError::InvalidAttributeLength {
                        attr_type,
                        len: value.len(),
                    });
                }
                Attribute::MessageIntegritySha256(value)
            }
            FINGERPRINT => {
                fixed_len(attr_type, value, 4)?;
                Attribute::Fingerprint(u32::from_be_bytes([value[0], value[1], value[2], value[3]]))
            }
            ERROR_CODE => {
                if value.len() < 4 {
                    return Err(DecodeError::InvalidAttributeLength {
                        attr_type,
                        len: value.len(),
                    });
                }
                let class = value[2] & 0x07;
                let number = value[3];
                if !(3..=6).contains(&class) || number > 99 {
                    return Err(DecodeError::InvalidErrorCode { class, number });
                }
                Attribute::ErrorCode(ErrorCode {
                    code: class as u16 * 100 + number as u16,
                    reason: decode_text(attr_type, &value[4..])?,
                })
            }
            UNKNOWN_ATTRIBUTES => {
                if value.len() % 2 != 0 {
                    return Err(DecodeError::InvalidAttributeLength {
                        attr_type,
                        len: value.len(),
                    });
                }
                Attribute::UnknownAttributes(AttributeTypes::Wire(value))
            }
            CHANGE_REQUEST => {
                fixed_len(attr_type, value, 4)?;
                let bits = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                Attribute::ChangeRequest(ChangeRequest {
                    change_ip: bits & ChangeRequest::IP_BIT != 0,
                    change_port: bits & ChangeRequest::PORT_BIT != 0,
                })
            }
            RESPONSE_PORT => {
                fixed_len(attr_type, value, 4)?;
                Attribute::ResponsePort(u16::from_be_bytes([value[0], value[1]]))
            }
            PADDING => Attribute::Padding(value),
            other => Attribute::Other {
                attr_type: other,
                value,
            },
        })
    }

    /// The attribute's type number.
    pub fn attr_type(&self) -> u16 {
        use types::*;
        match self {
            Attribute::MappedAddress(_) => MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => XOR_MAPPED_ADDRESS,
            Attribute::Username(_) => USERNAME,
            Attribute::MessageIntegrity(_) => MESSAGE_INTEGRITY,
            Attribute::MessageIntegritySha256(_) => MESSAGE_INTEGRITY_SHA256,
            Attribute::Fingerprint(_) => FINGERPRINT,
            Attribute::ErrorCode(_) => ERROR_CODE,
            Attribute::UnknownAttributes(_) => UNKNOWN_ATTRIBUTES,
            Attribute::Realm(_) => REALM,
            Attribute::Nonce(_) => NONCE,
            Attribute::Software(_) => SOFTWARE,
            Attribute::AlternateServer(_) => ALTERNATE_SERVER,
            Attribute::ChangeRequest(_) => CHANGE_REQUEST,
            Attribute::ResponseOrigin(_) => RESPONSE_ORIGIN,
            Attribute::OtherAddress(_) => OTHER_ADDRESS,
            Attribute::ResponsePort(_) => RESPONSE_PORT,
            Attribute::Padding(_) => PADDING,
            Attribute::SourceAddress(_) => SOURCE_ADDRESS,
            Attribute::ChangedAddress(_) => CHANGED_ADDRESS,
            Attribute::Other { attr_type, .. } => *attr_type,
        }
    }

    /// Checks limits and returns the unpadded value length.
    pub(crate) fn value_len(&self) -> Result<usize, EncodeError> {
        let text = |s: &str, attr_type: u16| {
            if s.len() > MAX_TEXT_ENCODE {
                Err(EncodeError::ValueTooLong {
                    attr_type,
                    len: s.len(),
                    max: MAX_TEXT_ENCODE,
                })
            } else {
                Ok(s.len())
            }
        };
        let addr = |a: &SocketAddr| if a.is_ipv4() { 8 } else { 20 };
        Ok(match self {
            Attribute::MappedAddress(a)
            | Attribute::XorMappedAddress(a)
            | Attribute::AlternateServer(a)
            | Attribute::ResponseOrigin(a)
            | Attribute::OtherAddress(a)
            | Attribute::SourceAddress(a)
            | Attribute::ChangedAddress(a) => addr(a),
            Attribute::Username(s)
            | Attribute::Realm(s)
            | Attribute::Nonce(s)
            | Attribute::Software(s) => text(s, self.attr_type())?,
            Attribute::MessageIntegrity(_) => 20,
            Attribute::MessageIntegritySha256(v) => {
                if !(16..=32).contains(&v.len()) || v.len() % 4 != 0 {
                    return Err(EncodeError::InvalidSha256Length { len: v.len() });
                }
                v.len()
            }
            Attribute::Fingerprint(_)
            | Attribute::ChangeRequest(_)
            | Attribute::ResponsePort(_) => 4,
            Attribute::ErrorCode(e) => {
                if !(300..=699).contains(&e.code) {
                    return Err(EncodeError::InvalidErrorCode { code: e.code });
                }
                4 + text(e.reason, types::ERROR_CODE)?
            }
            Attribute::UnknownAttributes(list) => 2 * list.len(),
            Attribute::Padding(v) | Attribute::Other { value: v, .. } => {
                if v.len() > u16::MAX as usize {
                    return Err(EncodeError::ValueTooLong {
                        attr_type: self.attr_type(),
                        len: v.len(),
                        max: u16::MAX as usize,
                    });
                }
                v.len()
            }
        })
    }

    /// Writes type, length, value and padding. `value_len` comes from [`Self::value_len`].
    pub(crate) fn write(
        &self,
        value_len: usize,
        xor_key: &[u8; 16],
        pad_byte: u8,
        out: &mut impl Sink,
    ) {
        out.put(&self.attr_type().to_be_bytes());
        out.put(&(value_len as u16).to_be_bytes());
        let write_addr = |a: SocketAddr, out: &mut dyn FnMut(&[u8])| {
            let mut b = [0u8; 20];
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            let len = match a.ip() {
                IpAddr::V4(v4) => {
                    b[1] = 0x01;
                    b[4..8].copy_from_slice(&v4.octets());
                    8
                }
                IpAddr::V6(v6) => {
                    b[1] = 0x02;
                    b[4..20].copy_from_slice(&v6.octets());
                    20
                }
            };
            out(&b[..len]);
        };
        let mut put = |b: &[u8]| out.put(b);
        match *self {
            Attribute::MappedAddress(a)
            | Attribute::AlternateServer(a)
            | Attribute::ResponseOrigin(a)
            | Attribute::OtherAddress(a)
            | Attribute::SourceAddress(a)
            | Attribute::ChangedAddress(a) => write_addr(a, &mut put),
            Attribute::XorMappedAddress(a) => write_addr(xor_address(a, xor_key), &mut put),
            Attribute::Username(s)
            | Attribute::Realm(s)
            | Attribute::Nonce(s)
            | Attribute::Software(s) => put(s.as_bytes()),
            Attribute::MessageIntegrity(mac) => put(&mac),
            Attribute::MessageIntegritySha256(v)
            | Attribute::Padding(v)
            | Attribute::Other { value: v, .. } => put(v),
            Attribute::Fingerprint(v) => put(&v.to_be_bytes()),
            Attribute::ChangeRequest(c) => put(&c.to_u32().to_be_bytes()),
            Attribute::ResponsePort(p) => {
                put(&p.to_be_bytes());
                put(&[0, 0]);
            }
            Attribute::ErrorCode(e) => {
                put(&[0, 0, (e.code / 100) as u8, (e.code % 100) as u8]);
                put(e.reason.as_bytes());
            }
            Attribute::UnknownAttributes(list) => {
                for t in list.iter() {
                    put(&t.to_be_bytes());
                }
            }
        }
        let pad = padding(value_len);
        if pad > 0 {
            put(&[pad_byte; 3][..pad]);
        }
    }
}

/// Bytes of padding after a value of `len` bytes.
pub(crate) const fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 16] = [
        0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf,
        0xae,
    ];

    #[test]
    fn xor_mapped_v4_matches_rfc5769_example() {
        let v = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        let a = Attribute::decode(types::XOR_MAPPED_ADDRESS, &v, &KEY).unwrap();
        assert_eq!(
            a,
            Attribute::XorMappedAddress("192.0.2.1:32853".parse().unwrap())
        );
    }

    #[test]
    fn bad_lengths_and_families_are_typed_errors() {
        assert_eq!(
            Attribute::decode(types::MAPPED_ADDRESS, &[0, 3, 0, 1, 1, 2, 3, 4], &KEY),
            Err(DecodeError::UnknownAddressFamily { family: 3 })
        );
        assert!(matches!(
            Attribute::decode(types::MAPPED_ADDRESS, &[0, 1, 0, 1, 1, 2, 3], &KEY),
            Err(DecodeError::InvalidAttributeLength { .. })
        ));
        assert!(matches!(
            Attribute::decode(types::ERROR_CODE, &[0, 0, 7, 0], &KEY),
            Err(DecodeError::InvalidErrorCode {
                class: 7,
                number: 0
            })
        ));
        assert!(matches!(
            Attribute::decode(types::USERNAME, &[0xff, 0xfe], &KEY),
            Err(DecodeError::InvalidUtf8 { .. })
        ));
        assert!(matches!(
            Attribute::decode(types::UNKNOWN_ATTRIBUTES, &[0, 1, 2], &KEY),
            Err(DecodeError::InvalidAttributeLength { .. })
        ));
    }

    #[test]
    fn change_request_bits() {
        let a = Attribute::decode(types::CHANGE_REQUEST, &[0, 0, 0, 6], &KEY).unwrap();
        assert_eq!(
            a,
            Attribute::ChangeRequest(ChangeRequest {
                change_ip: true,
                change_port: true
            })
        );
        let a = Attribute::decode(types::CHANGE_REQUEST, &[0, 0, 0, 2], &KEY).unwrap();
        assert_eq!(
            a,
            Attribute::ChangeRequest(ChangeRequest {
                change_ip: false,
                change_port: true
            })
        );
    }
}
