//! The relay's ordinary life: allocation, both clients binding, forwarding both ways, expiry,
//! rebinding.

mod common;

use std::time::Duration;

use burrow_disco::Message;
use burrow_relay::{
    decap, encap, AllocError, BindingEvent, CloseReason, DropReason, Forward, GeneveProtocol,
    RelayConfig, RelayError, RelayEvent, RelayLimits,
};
use common::*;

#[test]
fn two_clients_bind_and_ping_each_other_through_the_relay() {
    let mut lab = Lab::new();
    let (a_addr, b_addr) = (addr("192.0.2.10:41641"), addr("203.0.113.20:5555"));
    let now = lab.at(secs(1));
    let ep = lab.allocate(now);
    assert_eq!(ep.server_disco, lab.server.server_disco());
    assert_ne!(
        ep.server_disco,
        lab.a.public_key(),
        "the server has its own disco key"
    );
    assert_eq!(ep.vni, 1);
    assert_eq!(ep.lamport_id, 1);
    assert_eq!(ep.addrs, vec![addr(RELAY)]);
    assert_eq!(ep.bind_lifetime, secs(30));
    assert_eq!(ep.steady_state_lifetime, secs(300));

    let (a, b) = (lab.a.clone(), lab.b.clone());
    let ev = lab.bind(now, &ep, &a, b.public_key(), a_addr, 1);
    assert_eq!(
        ev,
        vec![BindingEvent::Bound {
            relay_addr: addr(RELAY),
            vni: 1
        }]
    );
    // One leg bound: nothing is forwarded yet.
    let ping = lab.relayed_ping(1, &a, b.public_key(), 1);
    assert_eq!(lab.send(now, a_addr, &ping), Err(RelayError::NotOpen));
    let ev = lab.bind(now, &ep, &b, a.public_key(), b_addr, 9);
    assert_eq!(ev.len(), 1);
    let info = lab.server.session(1).unwrap();
    let (ia, ib) = if info.client_disco[0] == a.public_key() {
        (0, 1)
    } else {
        (1, 0)
    };
    assert_eq!(info.bound[ia], Some(a_addr));
    assert_eq!(info.bound[ib], Some(b_addr));

    // a → b: forwarded to b's bound address; the driver sends the datagram as it came.
    assert_eq!(
        lab.send(now, a_addr, &ping),
        Ok(Some(Forward { dst: b_addr }))
    );
    assert!(
        lab.server.poll_transmit().is_none(),
        "forwarding queues nothing"
    );
    let (h, disco) = decap(&ping).unwrap();
    assert_eq!(
        (h.vni, h.control, h.protocol),
        (1, false, GeneveProtocol::Disco)
    );
    let (from, msg) = Message::open(&b, disco).unwrap();
    assert_eq!(from, a.public_key());
    assert!(matches!(msg, Message::Ping { tx_id, .. } if tx_id == [1; 12]));

    // b → a: a Pong and WireGuard, to a's bound address.
    let pong = Message::Pong {
        tx_id: [1; 12],
        src: addr(RELAY),
    }
    .seal(
        &b,
        &a.public_key(),
        &mut <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::seed_from_u64(3),
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let n = encap(1, GeneveProtocol::Disco, &pong, &mut buf).unwrap();
    assert_eq!(
        lab.send(now, b_addr, &buf[..n]),
        Ok(Some(Forward { dst: a_addr }))
    );
    let wg = [4u8, 0, 0, 0, 9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb];
    let n = encap(1, GeneveProtocol::WireGuard, &wg, &mut buf).unwrap();
    assert_eq!(&buf[..8], &[0, 0, 0x7a, 0x12, 0, 0, 1, 0]);
    assert_eq!(
        lab.send(now, b_addr, &buf[..n]),
        Ok(Some(Forward { dst: a_addr }))
    );
    let info = lab.server.session(1).unwrap();
    assert_eq!(info.packets[ia], 1);
    assert_eq!(info.packets[ib], 2);
    assert_eq!(info.bytes[ia], ping.len() as u64);
    let s = lab.server.stats();
    assert_eq!(s.forwarded_packets, 3);
    assert_eq!(s.challenges_sent, 2);
    assert_eq!(s.binds_completed, 2);
    assert_eq!(s.dropped(DropReason::NotOpen), 1);

    let events: Vec<_> = std::iter::from_fn(|| lab.server.poll_event()).collect();
    assert!(matches!(
        events[0],
        RelayEvent::Allocated {
            vni: 1,
            lamport_id: 1,
            ..
        }
    ));
    assert!(
        matches!(events[1], RelayEvent::Bound { vni: 1, rebind: false, addr, .. } if addr == a_addr)
    );
    assert!(
        matches!(events[2], RelayEvent::Bound { vni: 1, rebind: false, addr, .. } if addr == b_addr)
    );
    assert_eq!(events[3], RelayEvent::Open { vni: 1 });
    assert_eq!(events.len(), 4);
}

#[test]
fn allocation_is_idempotent_per_pair_and_refuses_bad_pairs() {
    let mut lab = Lab::new();
    let now = lab.at(secs(0));
    let (a, b, c) = (lab.a.public_key(), lab.b.public_key(), key(3).public_key());
    let first = lab.server.allocate(now, a, [a, b]).unwrap();
    let mut sorted = [a, b];
    sorted.sort();
    assert_eq!(first.client_disco, sorted);
    // Either client, either order: the same endpoint.
    for (req, pair) in [(b, [b, a]), (a, [b, a]), (b, [a, b])] {
        let again = lab.server.allocate(lab.at(secs(5)), req, pair).unwrap();
        assert_eq!(again, first);
    }
    // Another pair: the next VNI and Lamport ID.
    let second = lab.server.allocate(now, a, [a, c]).unwrap();
    assert_eq!((second.vni, second.lamport_id), (2, 2));
    assert_eq!(lab.server.stats().allocations, 2);

    let s = lab.server.server_disco();
    assert_eq!(
        lab.server.allocate(now, a, [a, s]),
        Err(AllocError::ServerKey)
    );
    assert_eq!(
        lab.server.allocate(now, c, [a, b]),
        Err(AllocError::RequesterNotInPair)
    );
    assert_eq!(
        lab.server.allocate(now, a, [a, a]),
        Err(AllocError::SameClient)
    );
    assert_eq!(lab.server.stats().allocations_refused, 3);

    // No address yet: retry later.
    let mut empty = Lab::with(RelayConfig::new(vec![]));
    assert_eq!(
        empty.server.allocate(now, a, [a, b]),
        Err(AllocError::NotReady)
    );
}

#[test]
fn allocation_limits_total_and_per_requester() {
    let mut config = RelayConfig::new(vec![addr(RELAY)]);
    config.limits = RelayLimits {
        max_sessions: 3,
        max_sessions_per_requester: 2,
        ..RelayLimits::default()
    };
    let mut lab = Lab::with(config);
    let now = lab.at(secs(0));
    let a = lab.a.public_key();
    let others: Vec<_> = (10..20).map(|i| key(i).public_key()).collect();
    lab.server.allocate(now, a, [a, others[0]]).unwrap();
    lab.server.allocate(now, a, [a, others[1]]).unwrap();
    assert_eq!(
        lab.server.allocate(now, a, [a, others[2]]),
        Err(AllocError::TooManyForRequester(2))
    );
    // The existing ones are still handed out.
    assert!(lab.server.allocate(now, a, [others[1], a]).is_ok());
    lab.server
        .allocate(now, others[3], [others[3], others[4]])
        .unwrap();
    assert_eq!(
        lab.server.allocate(now, others[5], [others[5], others[6]]),
        Err(AllocError::TooManySessions(3))
    );
    // After they expire unbound, the slots are free again.
    lab.server.handle_timeout(lab.at(secs(30)));
    assert_eq!(lab.server.sessions().count(), 0);
    assert!(lab
        .server
        .allocate(lab.at(secs(30)), a, [a, others[2]])
        .is_ok());
}

#[test]
fn unbound_endpoint_expires_at_the_bind_lifetime() {
    let mut lab = Lab::new();
    let ep = lab.allocate(lab.at(secs(0)));
    let (a, b) = (lab.a.clone(), lab.b.clone());
    let a_addr = addr("192.0.2.10:1");
    lab.bind(lab.at(secs(10)), &ep, &a, b.public_key(), a_addr, 1);
    assert_eq!(lab.server.poll_timeout(), Some(lab.at(secs(30))));
    lab.server
        .handle_timeout(lab.at(Duration::from_millis(29_999)));
    assert!(lab.server.session(ep.vni).is_some());
    lab.server.handle_timeout(lab.at(secs(30)));
    assert!(lab.server.session(ep.vni).is_none());
    let closed: Vec<_> = std::iter::from_fn(|| lab.server.poll_event())
        .filter(|e| matches!(e, RelayEvent::Closed { .. }))
        .collect();
    assert_eq!(
        closed,
        vec![RelayEvent::Closed {
            vni: ep.vni,
            reason: CloseReason::BindTimeout
        }]
    );
    assert_eq!(lab.server.stats().expired_unbound, 1);
    // Its VNI is unknown now; a new allocation for the pair is a new endpoint.
    let ping = lab.relayed_ping(ep.vni, &a, b.public_key(), 1);
    assert_eq!(
        lab.send(lab.at(secs(31)), a_addr, &ping),
        Err(RelayError::UnknownVni(ep.vni))
    );
    let again = lab.allocate(lab.at(secs(31)));
    assert_eq!(again.lamport_id, ep.lamport_id + 1);
}

fn open_session(lab: &mut Lab, at: Duration) -> (u32, std::net::SocketAddr, std::net::SocketAddr) {
    let now = lab.at(at);
    let ep = lab.allocate(now);
    let (a, b) = (lab.a.clone(), lab.b.clone());
    let (a_addr, b_addr) = (addr("192.0.2.10:41641"), addr("203.0.113.20:5555"));
    lab.bind(now, &ep, &a, b.public_key(), a_addr, 1);
    lab.bind(now, &ep, &b, a.public_key(), b_addr, 1);
    assert!(lab
        .server
        .session(ep.vni)
        .unwrap()
        .bound
        .iter()
        .all(Option::is_some));
    (ep.vni, a_addr, b_addr)
}

#[test]
fn bound_endpoint_closes_when_either_leg_is_idle_five_minutes() {
    let mut lab = Lab::new();
    let (vni, a_addr, _) = open_session(&mut lab, secs(0));
    let (a, b) = (lab.a.clone(), lab.b.clone());
    // a keeps talking; b says nothing after binding at 0 s.
    for m in 1..5 {
        let ping = lab.relayed_ping(vni, &a, b.public_key(), m as u8);
        assert!(lab
            .send(lab.at(secs(60 * m)), a_addr, &ping)
            .unwrap()
            .is_some());
    }
    lab.server.handle_timeout(lab.at(secs(299)));
    assert!(lab.server.session(vni).is_some());
    lab.server.handle_timeout(lab.at(secs(300)));
    assert!(lab.server.session(vni).is_none());
    assert_eq!(lab.server.stats().expired_idle, 1);
    assert!(std::iter::from_fn(|| lab.server.poll_event()).any(|e| e
        == RelayEvent::Closed {
            vni,
            reason: CloseReason::Idle
        }));
}

#[test]
fn traffic_both_ways_keeps_an_endpoint_open() {
    let mut lab = Lab::new();
    let (vni, a_addr, b_addr) = open_session(&mut lab, secs(0));
    let (a, b) = (lab.a.clone(), lab.b.clone());
    for m in 1..=20u64 {
        let now = lab.at(secs(60 * m));
        // The driver calls handle_timeout at every deadline that passed.
        while let Some(d) = lab.server.poll_timeout().filter(|d| *d <= now) {
            lab.server.handle_timeout(d);
        }
        let ping = lab.relayed_ping(vni, &a, b.public_key(), m as u8);
        assert_eq!(
            lab.send(now, a_addr, &ping),
            Ok(Some(Forward { dst: b_addr }))
        );
        let ping = lab.relayed_ping(vni, &b, a.public_key(), m as u8);
        assert_eq!(
            lab.send(now, b_addr, &ping),
            Ok(Some(Forward { dst: a_addr }))
        );
    }
    assert!(lab.server.session(vni).is_some());
    assert_eq!(lab.server.stats().expired_idle, 0);
}

#[test]
fn rebinding_moves_a_leg_only_once_the_answer_checks_out() {
    let mut lab = Lab::new();
    let (vni, a_addr, b_addr) = open_session(&mut lab, secs(0));
    let (a, b) = (lab.a.clone(), lab.b.clone());
    let ep = lab.allocate(lab.at(secs(1)));
    let moved = addr("192.0.2.99:60000");
    let now = lab.at(secs(2));
    let mut c = burrow_relay::RelayBinding::new(
        now,
        ep,
        &a,
        b.public_key(),
        2,
        rand_chacha::rand_core::SeedableRng::seed_from_u64(2),
    )
    .unwrap();
    // The new Bind gets its Challenge, but until the Answer, the old address still forwards
    // and the new one does not.
    let bind = c.poll_transmit().unwrap();
    assert_eq!(lab.send(now, moved, &bind.payload), Ok(None));
    let challenge = lab.server.poll_transmit().unwrap();
    assert_eq!(challenge.dst, moved);
    let ping = lab.relayed_ping(vni, &a, b.public_key(), 7);
    assert_eq!(
        lab.send(now, a_addr, &ping),
        Ok(Some(Forward { dst: b_addr }))
    );
    assert_eq!(lab.send(now, moved, &ping), Err(RelayError::UnboundSource));
    c.handle_input(now, addr(RELAY), &challenge.payload)
        .unwrap();
    let answer = c.poll_transmit().unwrap();
    assert_eq!(answer.dst, addr(RELAY));
    assert_eq!(lab.send(now, moved, &answer.payload), Ok(None));
    // Now only the new address counts, both ways.
    assert_eq!(
        lab.send(now, moved, &ping),
        Ok(Some(Forward { dst: b_addr }))
    );
    assert_eq!(lab.send(now, a_addr, &ping), Err(RelayError::UnboundSource));
    let back = lab.relayed_ping(vni, &b, a.public_key(), 8);
    assert_eq!(
        lab.send(now, b_addr, &back),
        Ok(Some(Forward { dst: moved }))
    );
    assert!(
        std::iter::from_fn(|| lab.server.poll_event()).any(|e| matches!(
            e,
            RelayEvent::Bound { rebind: true, addr, .. } if addr == moved
        ))
    );
    // The old generation's Answer, replayed, is refused (the generation moved on).
    assert_eq!(
        lab.send(now, moved, &answer.payload),
        Err(RelayError::AnswerRefused)
    );
}

#[test]
fn client_retries_each_second_and_gives_up_at_the_bind_lifetime() {
    let lab = Lab::new();
    let mut config_ep = {
        let mut l = Lab::with(RelayConfig::new(vec![
            addr(RELAY),
            addr("[2001:db8::1]:7000"),
        ]));
        l.allocate(lab.at(secs(0)))
    };
    config_ep.bind_lifetime = secs(5);
    let t0 = lab.at(secs(0));
    let mut c = burrow_relay::RelayBinding::new(
        t0,
        config_ep.clone(),
        &lab.a,
        lab.b.public_key(),
        1,
        rand_chacha::rand_core::SeedableRng::seed_from_u64(1),
    )
    .unwrap();
    let first: Vec<_> = std::iter::from_fn(|| c.poll_transmit()).collect();
    assert_eq!(
        first.iter().map(|t| t.dst).collect::<Vec<_>>(),
        config_ep.addrs
    );
    assert!(first.iter().all(|t| t.payload.len() == 160));
    assert_eq!(c.poll_timeout(), Some(t0 + secs(1)));
    let mut sent = first.len();
    let mut now = t0;
    while let Some(d) = c.poll_timeout() {
        now = d;
        c.handle_timeout(d);
        sent += std::iter::from_fn(|| c.poll_transmit()).count();
    }
    assert_eq!(now, t0 + secs(5));
    // At 0, 1, 2, 3 and 4 s, to both addresses.
    assert_eq!(sent, 5 * 2);
    assert_eq!(
        c.poll_event(),
        Some(BindingEvent::GaveUp { vni: config_ep.vni })
    );
}

#[test]
fn one_node_binding_many_endpoints_at_once_fits_the_default_budgets() {
    // Three relay addresses, 60 peers of one node behind one NAT IP: 180 Binds in a burst.
    let relays = vec![
        addr(RELAY),
        addr("198.51.100.1:7001"),
        addr("[2001:db8::1]:7000"),
    ];
    let mut lab = Lab::with(RelayConfig::new(relays.clone()));
    let now = lab.at(secs(0));
    let me = lab.a.clone();
    let mut answered = 0;
    for i in 0..60u8 {
        let peer = key(100 + i).public_key();
        let ep = lab
            .server
            .allocate(now, me.public_key(), [me.public_key(), peer])
            .unwrap();
        let mut c = burrow_relay::RelayBinding::new(
            now,
            ep,
            &me,
            peer,
            1,
            rand_chacha::rand_core::SeedableRng::seed_from_u64(1),
        )
        .unwrap();
        let from = addr(&format!("192.0.2.10:{}", 40000 + u16::from(i)));
        for bind in std::iter::from_fn(|| c.poll_transmit()) {
            assert_eq!(lab.send(now, from, &bind.payload), Ok(None));
        }
        answered += lab.server_out().len();
    }
    assert_eq!(answered, 180);
    assert_eq!(lab.server.stats().dropped_total(), 0);
}
