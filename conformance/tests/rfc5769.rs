//! RFC 5769 STUN test vectors (and the RFC 8489 B.1 vector, erratum 6268 form), byte-exact:
//! parse, verify MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT, and re-encode to the same bytes.

use burrow_stun::attribute::types;
use burrow_stun::{key, Attribute, Encoder, Message, MessageType, TransactionId, VerifyError};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
const TID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

const SAMPLE_REQUEST: &str = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf";
const SAMPLE_IPV4_RESPONSE: &str = "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96";
const SAMPLE_IPV6_RESPONSE: &str = "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c";
const SAMPLE_LONG_TERM: &str = "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe382b900000015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b6578616d706c652e6f72670000080014f67024656dd64a3e02b8e0712e85c9a28ca89666";
const RFC8489_B1: &str = "000100902112a44278ad3433c6ad72c029da412e001e00204a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704001500296f624d61744a6f733241414143662f2f3439396b39353464364f4c33346f4c394653547679363473410000000014000b6578616d706c652e6f726700001d000400020000001c0020b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278cc6518e65";

/// The attributes before MESSAGE-INTEGRITY, as decoded.
fn plain_attributes<'a>(m: &Message<'a>) -> Vec<Attribute<'a>> {
    m.attributes()
        .map(|a| a.unwrap())
        .filter(|a| {
            !matches!(
                a.attr_type(),
                types::MESSAGE_INTEGRITY | types::MESSAGE_INTEGRITY_SHA256 | types::FINGERPRINT
            )
        })
        .collect()
}

fn tampered_fails(bytes: &[u8], verify: impl Fn(&Message<'_>) -> Result<(), VerifyError>) {
    // Flip one bit inside the first attribute's value: both checks must notice.
    let mut bad = bytes.to_vec();
    bad[25] ^= 0x01;
    let m = Message::parse(&bad).unwrap();
    assert!(matches!(verify(&m), Err(VerifyError::Mismatch(_))));
}

#[test]
fn rfc5769_2_1_sample_request() {
    let bytes = hex(SAMPLE_REQUEST);
    assert_eq!(bytes.len(), 108);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.message_type(), MessageType::BINDING_REQUEST);
    assert_eq!(m.transaction_id(), TransactionId(TID));
    m.verify_integrity(key::short_term(PASSWORD)).unwrap();
    m.verify_fingerprint().unwrap();
    assert_eq!(
        m.verify_integrity(b"wrong password"),
        Err(VerifyError::Mismatch("MESSAGE-INTEGRITY"))
    );
    let attrs = plain_attributes(&m);
    assert_eq!(
        attrs,
        [
            Attribute::Software("STUN test client"),
            Attribute::Other {
                attr_type: types::PRIORITY,
                value: &[0x6e, 0x00, 0x01, 0xff]
            },
            Attribute::Other {
                attr_type: types::ICE_CONTROLLED,
                value: &[0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36]
            },
            Attribute::Username("evtj:h6vY"),
        ]
    );
    // PRIORITY and ICE-CONTROLLED are comprehension-required/optional ICE attributes.
    assert_eq!(
        m.unknown_comprehension_required().collect::<Vec<_>>(),
        [types::PRIORITY]
    );

    let mut out = Vec::new();
    Encoder::new(MessageType::BINDING_REQUEST, TransactionId(TID))
        .attributes(&attrs)
        .padding_byte(0x20)
        .message_integrity(key::short_term(PASSWORD))
        .fingerprint()
        .encode(&mut out)
        .unwrap();
    assert_eq!(out, bytes);
    tampered_fails(&bytes, |m| m.verify_integrity(key::short_term(PASSWORD)));
    tampered_fails(&bytes, |m| m.verify_fingerprint());
}

fn check_response(vector: &str, expected: &str, len: usize) {
    let bytes = hex(vector);
    assert_eq!(bytes.len(), len);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
    m.verify_integrity(key::short_term(PASSWORD)).unwrap();
    m.verify_fingerprint().unwrap();
    let attrs = plain_attributes(&m);
    assert_eq!(
        attrs,
        [
            Attribute::Software("test vector"),
            Attribute::XorMappedAddress(expected.parse().unwrap())
        ]
    );
    assert_eq!(m.mapped_address(), Some(expected.parse().unwrap()));
    let mut out = Vec::new();
    Encoder::new(MessageType::BINDING_SUCCESS, TransactionId(TID))
        .attributes(&attrs)
        .padding_byte(0x20)
        .message_integrity(key::short_term(PASSWORD))
        .fingerprint()
        .encode(&mut out)
        .unwrap();
    assert_eq!(out, bytes);
    tampered_fails(&bytes, |m| m.verify_integrity(key::short_term(PASSWORD)));
}

#[test]
fn rfc5769_2_2_sample_ipv4_response() {
    check_response(SAMPLE_IPV4_RESPONSE, "192.0.2.1:32853", 80);
}

#[test]
fn rfc5769_2_3_sample_ipv6_response() {
    check_response(
        SAMPLE_IPV6_RESPONSE,
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        92,
    );
}

const USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
const NONCE: &str = "f//499k954d6OL34oL9FSTvy64sA";
const REALM: &str = "example.org";

#[test]
fn rfc5769_2_4_long_term_request() {
    let bytes = hex(SAMPLE_LONG_TERM);
    assert_eq!(bytes.len(), 116);
    let m = Message::parse(&bytes).unwrap();
    assert!(!m.has_fingerprint());
    let k = key::long_term_md5(USERNAME, REALM, "TheMatrIX");
    assert_eq!(
        k.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "e8ca7ad59d5eb0518e312911d2dab2a9"
    );
    m.verify_integrity(&k).unwrap();
    let attrs = plain_attributes(&m);
    assert_eq!(
        attrs,
        [
            Attribute::Username(USERNAME),
            Attribute::Nonce(NONCE),
            Attribute::Realm(REALM)
        ]
    );
    let mut out = Vec::new();
    Encoder::new(MessageType::BINDING_REQUEST, m.transaction_id())
        .attributes(&attrs)
        .message_integrity(&k)
        .encode(&mut out)
        .unwrap();
    assert_eq!(out, bytes);
    assert_eq!(
        m.verify_fingerprint(),
        Err(VerifyError::Missing("FINGERPRINT"))
    );
}

#[test]
fn rfc8489_b1_message_integrity_sha256() {
    let bytes = hex(RFC8489_B1);
    assert_eq!(bytes.len(), 164);
    let m = Message::parse(&bytes).unwrap();
    let k = key::long_term_sha256(USERNAME, REALM, "TheMatrIX");
    m.verify_integrity_sha256(&k).unwrap();
    assert!(m
        .verify_integrity_sha256(&key::long_term_md5(USERNAME, REALM, "TheMatrIX"))
        .is_err());
    let attrs = plain_attributes(&m);
    assert_eq!(attrs.len(), 4);
    assert_eq!(
        attrs[1],
        Attribute::Nonce("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA")
    );
    assert_eq!(attrs[2], Attribute::Realm(REALM));
    let mut out = Vec::new();
    Encoder::new(MessageType::BINDING_REQUEST, m.transaction_id())
        .attributes(&attrs)
        .message_integrity_sha256(&k)
        .encode(&mut out)
        .unwrap();
    assert_eq!(out, bytes);
}
