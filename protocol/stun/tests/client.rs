//! The Binding client's retransmission schedule and response matching.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_stun::client::{ClientError, Event};
use burrow_stun::{
    Attribute, BindingClient, BindingRequest, ClientConfig, Encoder, Message, MessageType,
    RetransmitConfig, TransactionId,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn client() -> BindingClient {
    BindingClient::new(ClientConfig::default(), ChaCha20Rng::seed_from_u64(7))
}

#[test]
fn retransmits_on_rfc_schedule_then_times_out() {
    let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let mut c = client();
    let t0 = Instant::now();
    let id = c.start(t0, BindingRequest::to(server));
    let mut sends = vec![];
    let mut now = t0;
    while c.poll_transmit().is_some() {
        sends.push(now - t0);
    }
    let event = loop {
        now = c.poll_timeout().expect("transaction pending");
        c.handle_timeout(now);
        while c.poll_transmit().is_some() {
            sends.push(now - t0);
        }
        if let Some(e) = c.poll_event() {
            break (e, now - t0);
        }
    };
    let ms: Vec<u128> = sends.iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(event.0, Event::TimedOut { id, server });
    assert_eq!(event.1, Duration::from_millis(39_500));
    assert_eq!(
        RetransmitConfig::default().transaction_timeout(),
        Duration::from_millis(39_500)
    );
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn matches_response_by_transaction_id_and_reports_rtt() {
    let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let mapped: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let mut c = client();
    let t0 = Instant::now();
    let id = c.start(t0, BindingRequest::to(server));
    let req = c.poll_transmit().unwrap();
    let req = Message::parse(&req.payload).unwrap();
    assert_eq!(req.transaction_id(), id);
    assert!(req.verify_fingerprint().is_ok());

    let mut other = [0u8; 12];
    other[0] = 1;
    let wrong = encode_success(TransactionId(other), mapped);
    assert_eq!(
        c.handle_input(t0, server, &wrong),
        Err(ClientError::UnknownTransaction(TransactionId(other)))
    );
    let ok = encode_success(id, mapped);
    c.handle_input(t0 + Duration::from_millis(20), server, &ok)
        .unwrap();
    match c.poll_event().unwrap() {
        Event::Success(r) => {
            assert_eq!(r.mapped, mapped);
            assert_eq!(r.rtt, Some(Duration::from_millis(20)));
        }
        e => panic!("unexpected {e:?}"),
    }
    // A duplicate response finds no transaction.
    assert!(matches!(
        c.handle_input(t0, server, &ok),
        Err(ClientError::UnknownTransaction(_))
    ));
}

#[test]
fn no_rtt_after_retransmission() {
    let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let mut c = client();
    let t0 = Instant::now();
    let id = c.start(t0, BindingRequest::to(server));
    c.handle_timeout(t0 + Duration::from_millis(500));
    let ok = encode_success(id, server);
    c.handle_input(t0 + Duration::from_millis(600), server, &ok)
        .unwrap();
    match c.poll_event().unwrap() {
        Event::Success(r) => assert_eq!(r.rtt, None),
        e => panic!("unexpected {e:?}"),
    }
}

fn encode_success(id: TransactionId, mapped: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    let attrs = [Attribute::XorMappedAddress(mapped)];
    Encoder::new(MessageType::BINDING_SUCCESS, id)
        .attributes(&attrs)
        .fingerprint()
        .encode(&mut out)
        .unwrap();
    out
}
