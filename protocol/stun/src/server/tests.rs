//! The binding server's unit tests: RFC 5780 answers, CHANGE-REQUEST, RFC 3489, rate limits.

use super::*;
use crate::attribute::ChangeRequest;
use crate::header::TransactionId;

fn request(attrs: &[Attribute<'_>]) -> Vec<u8> {
    let mut v = Vec::new();
    Encoder::new(MessageType::BINDING_REQUEST, TransactionId([9; 12]))
        .attributes(attrs)
        .encode(&mut v)
        .unwrap();
    v
}

fn rfc5780_server() -> BindingServer {
    BindingServer::new(ServerConfig {
        primary: "192.0.2.1:3478".parse().unwrap(),
        alternate: Some("192.0.2.2:3479".parse().unwrap()),
        software: None,
    })
}

fn rfc3489_request() -> Vec<u8> {
    // RFC 3489 header: no cookie, 128-bit transaction ID.
    let mut req = vec![0x00, 0x01, 0x00, 0x00];
    req.extend_from_slice(&[0xAB; 16]);
    req
}

#[test]
fn answers_with_xor_mapped_address_and_rfc5780_attributes() {
    let mut s = rfc5780_server();
    let client: SocketAddr = "203.0.113.5:50000".parse().unwrap();
    let mut out = [0u8; MAX_RESPONSE_LEN];
    let r = s
        .handle_packet(s.config().primary, client, &request(&[]), &mut out)
        .unwrap();
    assert_eq!(r.from, s.config().primary);
    assert_eq!(r.to, client);
    let m = Message::parse(&out[..r.len]).unwrap();
    assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
    assert_eq!(m.transaction_id(), TransactionId([9; 12]));
    assert!(m.verify_fingerprint().is_ok());
    assert_eq!(m.mapped_address(), Some(client));
    assert_eq!(
        m.attribute(types::OTHER_ADDRESS),
        Some(Ok(Attribute::OtherAddress(
            "192.0.2.2:3479".parse().unwrap()
        )))
    );
}

#[test]
fn honours_change_request_from_every_local_address() {
    let mut s = rfc5780_server();
    let client: SocketAddr = "203.0.113.5:50000".parse().unwrap();
    let mut out = [0u8; MAX_RESPONSE_LEN];
    let (both, port, ip) = (
        ChangeRequest::IP_AND_PORT,
        ChangeRequest::PORT,
        ChangeRequest::IP,
    );
    let cases = [
        ("192.0.2.1:3478", both, "192.0.2.2:3479"),
        ("192.0.2.1:3478", port, "192.0.2.1:3479"),
        ("192.0.2.1:3478", ip, "192.0.2.2:3478"),
        ("192.0.2.2:3479", both, "192.0.2.1:3478"),
        ("192.0.2.1:3479", ip, "192.0.2.2:3479"),
    ];
    for (local, cr, expect) in cases {
        let req = request(&[Attribute::ChangeRequest(cr)]);
        let r = s
            .handle_packet(local.parse().unwrap(), client, &req, &mut out)
            .unwrap();
        assert_eq!(r.from, expect.parse().unwrap(), "{local} {cr:?}");
        let m = Message::parse(&out[..r.len]).unwrap();
        assert_eq!(
            m.attribute(types::RESPONSE_ORIGIN),
            Some(Ok(Attribute::ResponseOrigin(expect.parse().unwrap())))
        );
        // OTHER-ADDRESS is the change-both source as seen from the receiving socket.
        let both_from = s
            .handle_packet(
                local.parse().unwrap(),
                client,
                &request(&[Attribute::ChangeRequest(both)]),
                &mut [0u8; MAX_RESPONSE_LEN],
            )
            .unwrap()
            .from;
        assert_eq!(
            m.attribute(types::OTHER_ADDRESS),
            Some(Ok(Attribute::OtherAddress(both_from)))
        );
        assert_ne!(both_from.ip(), local.parse::<SocketAddr>().unwrap().ip());
    }
}

#[test]
fn unknown_required_attribute_gets_420_listing_it() {
    let mut s = BindingServer::new(ServerConfig::new("192.0.2.1:3478".parse().unwrap()));
    let req = request(&[Attribute::Other {
        attr_type: 0x7abc,
        value: b"x",
    }]);
    let mut out = [0u8; MAX_RESPONSE_LEN];
    let r = s
        .handle_packet(
            s.config().primary,
            "203.0.113.5:1".parse().unwrap(),
            &req,
            &mut out,
        )
        .unwrap();
    let m = Message::parse(&out[..r.len]).unwrap();
    assert_eq!(m.message_type(), MessageType::BINDING_ERROR);
    match m.attribute(types::ERROR_CODE) {
        Some(Ok(Attribute::ErrorCode(e))) => assert_eq!(e.code, 420),
        other => panic!("{other:?}"),
    }
    match m.attribute(types::UNKNOWN_ATTRIBUTES) {
        Some(Ok(Attribute::UnknownAttributes(l))) => {
            assert_eq!(l.iter().collect::<Vec<_>>(), [0x7abc])
        }
        other => panic!("{other:?}"),
    }
    // An unknown optional attribute is ignored.
    let req = request(&[Attribute::Other {
        attr_type: 0xfabc,
        value: b"x",
    }]);
    let r = s
        .handle_packet(
            s.config().primary,
            "203.0.113.5:1".parse().unwrap(),
            &req,
            &mut out,
        )
        .unwrap();
    let m = Message::parse(&out[..r.len]).unwrap();
    assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
}

#[test]
fn change_request_without_alternate_is_refused_with_420() {
    let mut s = BindingServer::new(ServerConfig::new("192.0.2.1:3478".parse().unwrap()));
    let req = request(&[Attribute::ChangeRequest(ChangeRequest {
        change_ip: true,
        change_port: true,
    })]);
    let mut out = [0u8; MAX_RESPONSE_LEN];
    let r = s
        .handle_packet(
            s.config().primary,
            "203.0.113.5:1".parse().unwrap(),
            &req,
            &mut out,
        )
        .unwrap();
    let m = Message::parse(&out[..r.len]).unwrap();
    assert_eq!(m.message_type(), MessageType::BINDING_ERROR);
    assert_eq!(s.stats().errors, 1);
}

#[test]
fn rfc3489_request_gets_mapped_source_and_changed_address_when_enabled() {
    let mut s = rfc5780_server().answer_rfc3489(true);
    let req = rfc3489_request();
    let client: SocketAddr = "203.0.113.5:50000".parse().unwrap();
    let mut out = [0u8; MAX_RESPONSE_LEN];
    let r = s
        .handle_packet(s.config().primary, client, &req, &mut out)
        .unwrap();
    let m = Message::parse_rfc3489(&out[..r.len]).unwrap();
    assert_eq!(&out[4..20], &[0xAB; 16]);
    assert_eq!(
        m.attribute(types::MAPPED_ADDRESS),
        Some(Ok(Attribute::MappedAddress(client)))
    );
    assert_eq!(
        m.attribute(types::CHANGED_ADDRESS),
        Some(Ok(Attribute::ChangedAddress(
            "192.0.2.2:3479".parse().unwrap()
        )))
    );
    assert!(m.attribute(types::XOR_MAPPED_ADDRESS).is_none());
}

/// Audit #15: by default neither cookie-less (RFC 3489) requests nor other methods get
/// an answer: nothing to reflect at a spoofed source.
#[test]
fn rfc3489_and_non_binding_requests_get_no_answer_by_default() {
    let mut s = rfc5780_server();
    let client: SocketAddr = "203.0.113.5:50000".parse().unwrap();
    let mut out = [0u8; MAX_RESPONSE_LEN];
    let primary = s.config().primary;
    assert_eq!(
        s.handle_packet(primary, client, &rfc3489_request(), &mut out),
        Err(Ignored::Rfc3489)
    );
    // An Allocate-like request (method 0x003) with the cookie.
    let mut other = Vec::new();
    Encoder::new(
        MessageType::new(Method::new(0x003), Class::Request),
        TransactionId([9; 12]),
    )
    .encode(&mut other)
    .unwrap();
    assert_eq!(
        s.handle_packet(primary, client, &other, &mut out),
        Err(Ignored::NotBinding)
    );
    // Also in RFC 3489 mode.
    let mut s = rfc5780_server().answer_rfc3489(true);
    assert_eq!(
        s.handle_packet(primary, client, &other, &mut out),
        Err(Ignored::NotBinding)
    );
    assert_eq!(s.stats().ignored, 1);
    assert_eq!((s.stats().success, s.stats().errors), (0, 0));
}

/// Audit #15: with a per-source budget, a source gets its burst then its rate, other
/// sources are unaffected, and the limit follows the time passed in.
#[test]
fn per_source_token_bucket_limits_answers() {
    let mut s = rfc5780_server().rate_limit_per_source(2, 3, 7);
    let t0 = Instant::now();
    let (victim, other): (SocketAddr, SocketAddr) = (
        "203.0.113.5:1".parse().unwrap(),
        "198.51.100.9:1".parse().unwrap(),
    );
    let primary = s.config().primary;
    let mut out = [0u8; MAX_RESPONSE_LEN];
    let mut answered = |s: &mut BindingServer, at: Instant, from: SocketAddr| {
        s.handle_packet_at(Some(at), primary, from, &request(&[]), &mut out)
            .is_ok()
    };
    let burst = (0..10).filter(|_| answered(&mut s, t0, victim)).count();
    assert_eq!(burst, 3);
    assert!(answered(&mut s, t0, other));
    let t1 = t0 + std::time::Duration::from_secs(1);
    assert_eq!((0..10).filter(|_| answered(&mut s, t1, victim)).count(), 2);
    // Without a time, no limit (the sans-IO callers that do not pass one).
    assert!(s
        .handle_packet(primary, victim, &request(&[]), &mut out)
        .is_ok());
}

/// Audit #15 follow-up (attack `stun-drain`): a flood from 20,000 spoofed sources, each
/// draining its budget, used to empty all 1,024 hashed buckets and silence the server for
/// everyone. Now a client that asked within SOURCE_MEMORY keeps its own budget, a new
/// source still gets the overflow's share once it refills, a single target stays limited
/// to its burst, and the flood's answers stay bounded by the table and the overflow.
#[test]
fn a_spoofed_flood_cannot_drain_everyones_budget() {
    let (rate, burst) = (2u32, 3u32);
    let mut s = rfc5780_server().rate_limit_per_source(rate, burst, 7);
    let primary = s.config().primary;
    let mut out = [0u8; MAX_RESPONSE_LEN];
    let req = request(&[]);
    let mut answered = |s: &mut BindingServer, at: Instant, from: SocketAddr| {
        s.handle_packet_at(Some(at), primary, from, &req, &mut out)
            .is_ok()
    };
    let t0 = Instant::now();
    let client: SocketAddr = "203.0.113.5:41641".parse().unwrap();
    assert!(answered(&mut s, t0, client));
    // Twenty seconds later (a NAT keep-alive's interval), the flood.
    let t1 = t0 + Duration::from_secs(20);
    let mut flood_answers = 0usize;
    for i in 0..20_000u32 {
        let spoofed = SocketAddr::new(IpAddr::V4((0x0a00_0000 | i).into()), 9);
        for _ in 0..=burst {
            flood_answers += usize::from(answered(&mut s, t1, spoofed));
        }
    }
    assert!(
        flood_answers
            <= (TRACKED_SOURCES - 1) * burst as usize + (OVERFLOW_SHARES * burst) as usize,
        "{flood_answers}"
    );
    assert!(answered(&mut s, t1, client), "the known client is answered");
    // A source the table has no room for shares the overflow: once it refills, answered.
    let newcomer: SocketAddr = "198.51.100.9:3478".parse().unwrap();
    assert!(answered(&mut s, t1 + Duration::from_secs(1), newcomer));
    // One target still gets its burst only.
    let target: SocketAddr = "203.0.113.77:1".parse().unwrap();
    let t2 = t1 + Duration::from_secs(61);
    assert_eq!((0..10).filter(|_| answered(&mut s, t2, target)).count(), 3);
    // Sources of one IPv6 /64 are one source.
    let v6 = |h: u16| SocketAddr::new(IpAddr::V6([0x2001, 0xdb8, 0, 0, 0, 0, 0, h].into()), 1);
    assert_eq!((1..10).filter(|h| answered(&mut s, t2, v6(*h))).count(), 3);
}

#[test]
fn garbage_is_counted_and_ignored() {
    let mut s = rfc5780_server();
    let mut out = [0u8; MAX_RESPONSE_LEN];
    let r = s.handle_packet(
        s.config().primary,
        "203.0.113.5:1".parse().unwrap(),
        &[1, 2, 3],
        &mut out,
    );
    assert!(matches!(r, Err(Ignored::Malformed(_))));
    assert_eq!(s.stats().malformed, 1);
}
