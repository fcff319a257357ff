//! Property tests: any message burrow can encode decodes to the same attributes, with valid
//! integrity and fingerprint; and decoding arbitrary bytes never panics.

use std::net::{IpAddr, SocketAddr};

use burrow_stun::attribute::types;
use burrow_stun::{
    Attribute, AttributeTypes, ChangeRequest, Class, Encoder, ErrorCode, Message, MessageType,
    Method, TransactionId,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Owned {
    Mapped(SocketAddr),
    XorMapped(SocketAddr),
    Username(String),
    Realm(String),
    Nonce(String),
    Software(String),
    Error(u16, String),
    Unknown(Vec<u16>),
    Alternate(SocketAddr),
    Change(bool, bool),
    Origin(SocketAddr),
    Other(SocketAddr),
    ResponsePort(u16),
    Padding(Vec<u8>),
    Opaque(u16, Vec<u8>),
}

impl Owned {
    fn borrow(&self) -> Attribute<'_> {
        match self {
            Owned::Mapped(a) => Attribute::MappedAddress(*a),
            Owned::XorMapped(a) => Attribute::XorMappedAddress(*a),
            Owned::Username(s) => Attribute::Username(s),
            Owned::Realm(s) => Attribute::Realm(s),
            Owned::Nonce(s) => Attribute::Nonce(s),
            Owned::Software(s) => Attribute::Software(s),
            Owned::Error(c, r) => Attribute::ErrorCode(ErrorCode::new(*c, r)),
            Owned::Unknown(l) => Attribute::UnknownAttributes(AttributeTypes::List(l)),
            Owned::Alternate(a) => Attribute::AlternateServer(*a),
            Owned::Change(ip, port) => Attribute::ChangeRequest(ChangeRequest {
                change_ip: *ip,
                change_port: *port,
            }),
            Owned::Origin(a) => Attribute::ResponseOrigin(*a),
            Owned::Other(a) => Attribute::OtherAddress(*a),
            Owned::ResponsePort(p) => Attribute::ResponsePort(*p),
            Owned::Padding(v) => Attribute::Padding(v),
            Owned::Opaque(t, v) => Attribute::Other {
                attr_type: *t,
                value: v,
            },
        }
    }
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
    ]
}

fn text() -> impl Strategy<Value = String> {
    // Up to 127 characters, any Unicode: at most 508 bytes, inside the 509-byte limit.
    proptest::collection::vec(any::<char>(), 0..127).prop_map(|c| c.into_iter().collect())
}

/// Types the codec decodes as something other than `Attribute::Other`.
fn known(t: u16) -> bool {
    matches!(
        t,
        types::MAPPED_ADDRESS
            | types::XOR_MAPPED_ADDRESS
            | types::USERNAME
            | types::REALM
            | types::NONCE
            | types::SOFTWARE
            | types::ERROR_CODE
            | types::UNKNOWN_ATTRIBUTES
            | types::ALTERNATE_SERVER
            | types::CHANGE_REQUEST
            | types::RESPONSE_ORIGIN
            | types::OTHER_ADDRESS
            | types::RESPONSE_PORT
            | types::PADDING
            | types::SOURCE_ADDRESS
            | types::CHANGED_ADDRESS
            | types::MESSAGE_INTEGRITY
            | types::MESSAGE_INTEGRITY_SHA256
            | types::FINGERPRINT
    )
}

fn attribute() -> impl Strategy<Value = Owned> {
    prop_oneof![
        addr().prop_map(Owned::Mapped),
        addr().prop_map(Owned::XorMapped),
        text().prop_map(Owned::Username),
        text().prop_map(Owned::Realm),
        text().prop_map(Owned::Nonce),
        text().prop_map(Owned::Software),
        (300u16..700, text()).prop_map(|(c, r)| Owned::Error(c, r)),
        proptest::collection::vec(any::<u16>(), 0..8).prop_map(Owned::Unknown),
        addr().prop_map(Owned::Alternate),
        (any::<bool>(), any::<bool>()).prop_map(|(a, b)| Owned::Change(a, b)),
        addr().prop_map(Owned::Origin),
        addr().prop_map(Owned::Other),
        any::<u16>().prop_map(Owned::ResponsePort),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Owned::Padding),
        (
            any::<u16>().prop_filter("unknown type", |t| !known(*t)),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(t, v)| Owned::Opaque(t, v)),
    ]
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::Success),
        Just(Class::Error)
    ]
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(
        method in 0u16..0x1000,
        class in class(),
        id in any::<[u8; 12]>(),
        attrs in proptest::collection::vec(attribute(), 0..12),
        key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        key256 in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        fingerprint in any::<bool>(),
    ) {
        let borrowed: Vec<Attribute<'_>> = attrs.iter().map(Owned::borrow).collect();
        let ty = MessageType::new(Method::new(method), class);
        let mut enc = Encoder::new(ty, TransactionId(id)).attributes(&borrowed);
        if let Some(k) = &key { enc = enc.message_integrity(k); }
        if let Some(k) = &key256 { enc = enc.message_integrity_sha256(k); }
        if fingerprint { enc = enc.fingerprint(); }
        let mut buf = Vec::new();
        let n = enc.encode(&mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        prop_assert_eq!(enc.encoded_len().unwrap(), n);

        let m = Message::parse(&buf).unwrap();
        prop_assert_eq!(m.message_type(), ty);
        prop_assert_eq!(m.transaction_id(), TransactionId(id));
        let decoded: Vec<Attribute<'_>> = m.attributes().map(|a| a.unwrap())
            .filter(|a| !matches!(a.attr_type(), types::MESSAGE_INTEGRITY | types::MESSAGE_INTEGRITY_SHA256 | types::FINGERPRINT))
            .collect();
        prop_assert_eq!(&decoded, &borrowed);
        if let Some(k) = &key {
            prop_assert!(m.verify_integrity(k).is_ok());
            let mut wrong = k.clone();
            wrong.push(1);
            prop_assert!(m.verify_integrity(&wrong).is_err());
        }
        if let Some(k) = &key256 { prop_assert!(m.verify_integrity_sha256(k).is_ok()); }
        prop_assert_eq!(m.verify_fingerprint().is_ok(), fingerprint);
        prop_assert!(burrow_stun::is_stun(&buf));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        for m in [Message::parse(&data), Message::parse_rfc3489(&data)].into_iter().flatten() {
            for a in m.attributes() { let _ = a; }
            let _ = m.verify_fingerprint();
            let _ = m.verify_integrity(b"k");
            let _ = m.mapped_address();
        }
    }

    #[test]
    fn a_valid_header_with_arbitrary_body_never_panics(body in proptest::collection::vec(any::<u8>(), 0..150).prop_map(|mut b| { b.truncate(b.len() / 4 * 4); b })) {
        let mut data = vec![0x00, 0x01];
        data.extend_from_slice(&(body.len() as u16).to_be_bytes());
        data.extend_from_slice(&burrow_stun::MAGIC_COOKIE.to_be_bytes());
        data.extend_from_slice(&[3; 12]);
        data.extend_from_slice(&body);
        if let Ok(m) = Message::parse(&data) {
            for a in m.attributes() { let _ = a; }
        }
    }

    #[test]
    fn too_small_buffer_is_an_error_not_a_panic(attrs in proptest::collection::vec(attribute(), 1..6), room in 0usize..64) {
        let borrowed: Vec<Attribute<'_>> = attrs.iter().map(Owned::borrow).collect();
        let enc = Encoder::new(MessageType::BINDING_REQUEST, TransactionId([0; 12])).attributes(&borrowed).fingerprint();
        let mut storage = vec![0u8; room];
        let mut slice = &mut storage[..];
        let need = enc.encoded_len().unwrap();
        let r = enc.encode(&mut slice);
        prop_assert_eq!(r.is_ok(), room >= need);
    }
}
