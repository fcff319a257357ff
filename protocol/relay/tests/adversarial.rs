//! The relay against hostile inputs: strangers binding, spoofed Answers, floods, forwarding to
//! addresses never bound, replayed Binds from spoofed sources, malformed datagrams.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use burrow_disco::{BindBody, Message};
use burrow_relay::{
    encap, Budget, DropReason, Forward, GeneveError, GeneveProtocol, Rate, RelayBinding,
    RelayConfig, RelayError, RelayLimits, GENEVE_HEADER_LEN,
};
use common::*;
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn control(vni: u32, disco: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0x80, 0x7a, 0x11];
    out.extend_from_slice(&vni.to_be_bytes()[1..]);
    out.push(0);
    out.extend_from_slice(disco);
    out
}

/// A's first Bind datagram for `ep` (as a client would send it).
fn captured_bind(lab: &Lab, ep: &burrow_disco::UdpRelayEndpoint, generation: u32) -> Vec<u8> {
    let mut c = RelayBinding::new(
        lab.t0,
        ep.clone(),
        &lab.a,
        lab.b.public_key(),
        generation,
        ChaCha20Rng::seed_from_u64(9),
    )
    .unwrap();
    c.poll_transmit().unwrap().payload
}

#[test]
fn a_stranger_cannot_bind_to_someone_elses_endpoint() {
    let mut lab = Lab::new();
    let now = lab.at(secs(0));
    let ep = lab.allocate(now);
    let mallory = key(66);
    let bind = Message::BindUdpRelayEndpoint(BindBody {
        vni: ep.vni,
        generation: 1,
        remote_key: lab.b.public_key(),
        challenge: [0; 32],
    });
    let evil = addr("192.0.2.66:666");
    // Sealed honestly with its own key: not a client of the endpoint.
    let sealed = bind
        .seal(
            &mallory,
            &ep.server_disco,
            &mut ChaCha20Rng::seed_from_u64(1),
        )
        .unwrap();
    assert_eq!(
        lab.send(now, evil, &control(ep.vni, &sealed)),
        Err(RelayError::NotAClient)
    );
    // Claiming a's key in the clear, sealed with its own: the box does not open.
    let mut forged = sealed.clone();
    forged[6..38].copy_from_slice(lab.a.public_key().as_bytes());
    assert!(matches!(
        lab.send(now, evil, &control(ep.vni, &forged)),
        Err(RelayError::Disco(_))
    ));
    // Its own RelayBinding refuses to start, for a pair it is not in.
    assert!(RelayBinding::new(
        now,
        ep.clone(),
        &mallory,
        lab.b.public_key(),
        1,
        ChaCha20Rng::seed_from_u64(1)
    )
    .is_err());
    assert!(lab.server_out().is_empty(), "no Challenge for a stranger");
    assert_eq!(lab.server.stats().challenges_sent, 0);
    assert_eq!(lab.server.stats().dropped(DropReason::NotAClient), 1);
    assert_eq!(lab.server.stats().dropped(DropReason::Disco), 1);
}

#[test]
fn a_bind_naming_the_wrong_peer_or_vni_gets_no_challenge() {
    let mut lab = Lab::new();
    let now = lab.at(secs(0));
    let ep = lab.allocate(now);
    let other = lab
        .server
        .allocate(
            now,
            lab.a.public_key(),
            [lab.a.public_key(), key(5).public_key()],
        )
        .unwrap();
    let a_addr = addr("192.0.2.10:1");
    for (hdr_vni, body) in [
        // remote key not the other client
        (
            ep.vni,
            BindBody {
                vni: ep.vni,
                generation: 1,
                remote_key: key(5).public_key(),
                challenge: [0; 32],
            },
        ),
        // body VNI differs from the header's
        (
            ep.vni,
            BindBody {
                vni: other.vni,
                generation: 1,
                remote_key: lab.b.public_key(),
                challenge: [0; 32],
            },
        ),
        // generation 0
        (
            ep.vni,
            BindBody {
                vni: ep.vni,
                generation: 0,
                remote_key: lab.b.public_key(),
                challenge: [0; 32],
            },
        ),
    ] {
        let sealed = Message::BindUdpRelayEndpoint(body)
            .seal(&lab.a, &ep.server_disco, &mut ChaCha20Rng::seed_from_u64(1))
            .unwrap();
        assert_eq!(
            lab.send(now, a_addr, &control(hdr_vni, &sealed)),
            Err(RelayError::BindMismatch)
        );
    }
    assert!(lab.server_out().is_empty());
}

#[test]
fn an_answer_from_another_source_than_the_challenge_went_to_is_refused() {
    let mut lab = Lab::new();
    let now = lab.at(secs(0));
    let ep = lab.allocate(now);
    let (a_addr, spoofed) = (addr("192.0.2.10:41641"), addr("192.0.2.66:41641"));
    let mut c = RelayBinding::new(
        now,
        ep.clone(),
        &lab.a,
        lab.b.public_key(),
        1,
        ChaCha20Rng::seed_from_u64(1),
    )
    .unwrap();
    let bind = c.poll_transmit().unwrap();
    lab.send(now, a_addr, &bind.payload).unwrap();
    let challenge = lab.server.poll_transmit().unwrap();
    assert_eq!(challenge.dst, a_addr);
    c.handle_input(now, addr(RELAY), &challenge.payload)
        .unwrap();
    let answer = c.poll_transmit().unwrap();
    // Same IP other port, other IP same port: refused, nothing bound.
    for src in [spoofed, addr("192.0.2.10:41642")] {
        assert_eq!(
            lab.send(now, src, &answer.payload),
            Err(RelayError::AnswerRefused)
        );
    }
    assert!(lab
        .server
        .session(ep.vni)
        .unwrap()
        .bound
        .iter()
        .all(Option::is_none));
    // An Answer echoing a MAC the attacker made up is refused too.
    let forged = Message::BindUdpRelayEndpointAnswer(BindBody {
        vni: ep.vni,
        generation: 1,
        remote_key: lab.b.public_key(),
        challenge: [7; 32],
    })
    .seal(&lab.a, &ep.server_disco, &mut ChaCha20Rng::seed_from_u64(2))
    .unwrap();
    assert_eq!(
        lab.send(now, a_addr, &control(ep.vni, &forged)),
        Err(RelayError::AnswerRefused)
    );
    // The real one from the real source binds.
    assert_eq!(lab.send(now, a_addr, &answer.payload), Ok(None));
    assert!(lab
        .server
        .session(ep.vni)
        .unwrap()
        .bound
        .contains(&Some(a_addr)));
    assert_eq!(lab.server.stats().dropped(DropReason::AnswerRefused), 3);
}

#[test]
fn challenges_stay_valid_one_rotation_and_no_longer() {
    let a_addr = addr("192.0.2.10:41641");
    // An unbound endpoint closes at 30 s: give this one an hour to bind.
    let mut config = RelayConfig::new(vec![addr(RELAY)]);
    config.bind_lifetime = Duration::from_secs(3600);
    let mut lab2 = Lab::with(config);
    let ep2 = lab2.allocate(lab2.at(secs(0)));
    let run = |lab: &mut Lab, bind_at: u64, answer_at: u64| {
        while let Some(d) = lab
            .server
            .poll_timeout()
            .filter(|d| *d <= lab.at(secs(bind_at)))
        {
            lab.server.handle_timeout(d);
        }
        let mut c = RelayBinding::new(
            lab.at(secs(bind_at)),
            ep2.clone(),
            &lab.a,
            lab.b.public_key(),
            3,
            ChaCha20Rng::seed_from_u64(1),
        )
        .unwrap();
        let bind = c.poll_transmit().unwrap();
        lab.send(lab.at(secs(bind_at)), a_addr, &bind.payload)
            .unwrap();
        let ch = lab.server.poll_transmit().unwrap();
        c.handle_input(lab.at(secs(bind_at)), addr(RELAY), &ch.payload)
            .unwrap();
        let answer = c.poll_transmit().unwrap();
        while let Some(d) = lab
            .server
            .poll_timeout()
            .filter(|d| *d <= lab.at(secs(answer_at)))
        {
            lab.server.handle_timeout(d);
        }
        lab.send(lab.at(secs(answer_at)), a_addr, &answer.payload)
    };
    // Rotation every 120 s: a Challenge made at 100 s is good at 200 s (previous secret),
    // one made at 250 s is good at 370 s, one made at 370 s is not good at 610 s (two
    // rotations later).
    assert_eq!(run(&mut lab2, 100, 200), Ok(None));
    assert_eq!(run(&mut lab2, 250, 370), Ok(None));
    assert_eq!(run(&mut lab2, 370, 610), Err(RelayError::AnswerRefused));
}

#[test]
fn a_flood_is_dropped_and_counted_and_other_sessions_are_unaffected() {
    let mut config = RelayConfig::new(vec![addr(RELAY)]);
    config.limits = RelayLimits {
        leg_packets: Rate::new(100, 100),
        leg_bytes: Rate::new(100_000, 100_000),
        session_packets: Rate::new(150, 150),
        session_bytes: Rate::new(200_000, 200_000),
        ..RelayLimits::default()
    };
    let mut lab = Lab::with(config);
    let now = lab.at(secs(0));
    let (a, b, c, d) = (lab.a.clone(), lab.b.clone(), key(3), key(4));
    let (a_addr, b_addr, c_addr, d_addr) = (
        addr("192.0.2.1:1"),
        addr("192.0.2.2:2"),
        addr("192.0.2.3:3"),
        addr("192.0.2.4:4"),
    );
    let ep1 = lab.allocate(now);
    lab.bind(now, &ep1, &a, b.public_key(), a_addr, 1);
    lab.bind(now, &ep1, &b, a.public_key(), b_addr, 1);
    let ep2 = lab
        .server
        .allocate(now, c.public_key(), [c.public_key(), d.public_key()])
        .unwrap();
    lab.bind(now, &ep2, &c, d.public_key(), c_addr, 1);
    lab.bind(now, &ep2, &d, c.public_key(), d_addr, 1);

    // a floods 10,000 packets in one instant: 100 go (its leg's burst), the rest are counted.
    let flood = lab.relayed_ping(ep1.vni, &a, b.public_key(), 1);
    let mut forwarded = 0;
    for _ in 0..10_000 {
        match lab.send(now, a_addr, &flood) {
            Ok(Some(Forward { dst })) => {
                assert_eq!(dst, b_addr);
                forwarded += 1;
            }
            Err(RelayError::OverBudget(Budget::LegPackets)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(forwarded, 100);
    assert_eq!(
        lab.server
            .stats()
            .dropped(DropReason::OverBudget(Budget::LegPackets)),
        9_900
    );
    // b still has 50 of the session's 150 packets.
    let back = lab.relayed_ping(ep1.vni, &b, a.public_key(), 2);
    let got = (0..100)
        .filter(|_| lab.send(now, b_addr, &back).is_ok())
        .count();
    assert_eq!(got, 50);
    assert_eq!(
        lab.server
            .stats()
            .dropped(DropReason::OverBudget(Budget::SessionPackets)),
        50
    );
    // The other session is untouched by all this.
    let cd = lab.relayed_ping(ep2.vni, &c, d.public_key(), 3);
    for _ in 0..100 {
        assert_eq!(
            lab.send(now, c_addr, &cd),
            Ok(Some(Forward { dst: d_addr }))
        );
    }
    // A second later a's budget has refilled by its rate.
    let later = now + secs(1);
    let got = (0..1000)
        .filter(|_| lab.send(later, a_addr, &flood).is_ok())
        .count();
    assert_eq!(got, 100);

    // Bytes: 1,400-byte packets against a 100 kB/s leg budget.
    let big = {
        let mut out = vec![0u8; 1400];
        let wg = vec![4u8; 1400 - GENEVE_HEADER_LEN];
        encap(ep2.vni, GeneveProtocol::WireGuard, &wg, &mut out).unwrap();
        out
    };
    let t = now + secs(10);
    let got = (0..10_000)
        .filter(|_| lab.send(t, d_addr, &big).is_ok())
        .count();
    assert_eq!(got, 100_000 / 1400);
    assert!(
        lab.server
            .stats()
            .dropped(DropReason::OverBudget(Budget::LegBytes))
            > 0
    );
}

/// Binds answered per endpoint: 4/s, burst 8; Challenges per source IP: 8/s, burst 16.
fn small_bind_budgets() -> Lab {
    let mut config = RelayConfig::new(vec![addr(RELAY)]);
    config.limits = RelayLimits {
        binds_per_session: Rate::new(4, 8),
        challenges_per_source_ip: Rate::new(8, 16),
        ..RelayLimits::default()
    };
    Lab::with(config)
}

#[test]
fn a_bind_flood_is_answered_at_the_budgeted_rate() {
    let mut lab = small_bind_budgets();
    let now = lab.at(secs(0));
    let ep = lab.allocate(now);
    let bind = captured_bind(&lab, &ep, 1);
    let a_addr = addr("192.0.2.10:41641");
    let answered = (0..1000)
        .filter(|_| lab.send(now, a_addr, &bind) == Ok(None))
        .count();
    assert_eq!(answered, 8);
    assert_eq!(lab.server_out().len(), 8);
    assert_eq!(
        lab.server
            .stats()
            .dropped(DropReason::OverBudget(Budget::SessionBinds)),
        992
    );
}

#[test]
fn a_replayed_bind_from_spoofed_sources_is_answered_at_most_at_the_budget_and_never_larger() {
    let mut lab = small_bind_budgets();
    let ep = lab.allocate(lab.at(secs(0)));
    let bind = captured_bind(&lab, &ep, 1);
    // 10 s of replays from 1,000 spoofed addresses, 100 per second.
    let mut challenges = Vec::new();
    for i in 0..1000u32 {
        let now = lab.at(Duration::from_millis(10 * u64::from(i)));
        let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 4000);
        let _ = lab.send(now, src, &bind);
        challenges.extend(lab.server_out());
    }
    // 8 at once, then 4 per second for ~10 s.
    assert!(
        challenges.len() <= 8 + 4 * 10,
        "{} challenges",
        challenges.len()
    );
    assert!(challenges.len() >= 8 + 4 * 9);
    assert!(
        challenges.iter().all(|t| t.payload.len() == bind.len()),
        "same size as the Bind"
    );

    // One victim address replayed at through many endpoints: the per-source budget (8/s, burst
    // 16) caps what it receives however many endpoints there are.
    let victim = addr("203.0.113.99:53");
    let now = lab.at(secs(20));
    let mut total = 0;
    for i in 0..20u8 {
        let (x, y) = (key(100 + i), key(200 - i));
        let ep = lab
            .server
            .allocate(now, x.public_key(), [x.public_key(), y.public_key()])
            .unwrap();
        let mut c = RelayBinding::new(
            now,
            ep,
            &x,
            y.public_key(),
            1,
            ChaCha20Rng::seed_from_u64(1),
        )
        .unwrap();
        let bind = c.poll_transmit().unwrap().payload;
        for _ in 0..10 {
            let _ = lab.send(now, victim, &bind);
        }
        total += lab.server_out().len();
    }
    assert_eq!(total, 16);
    assert!(
        lab.server
            .stats()
            .dropped(DropReason::OverBudget(Budget::SourceChallenges))
            > 0
    );
}

#[test]
fn the_source_table_is_bounded() {
    let mut config = RelayConfig::new(vec![addr(RELAY)]);
    config.limits = RelayLimits {
        max_tracked_sources: 4,
        binds_per_session: Rate::new(1000, 1000),
        ..RelayLimits::default()
    };
    let mut lab = Lab::with(config);
    let now = lab.at(secs(0));
    let ep = lab.allocate(now);
    let bind = captured_bind(&lab, &ep, 1);
    let results: Vec<_> = (0..6u8)
        .map(|i| lab.send(now, addr(&format!("192.0.2.{i}:1")), &bind))
        .collect();
    assert_eq!(&results[..4], &[Ok(None); 4]);
    assert_eq!(results[4], Err(RelayError::OverBudget(Budget::SourceTable)));
    // Once the sources' budgets have refilled they are forgotten and new ones are answered.
    assert_eq!(
        lab.send(now + secs(10), addr("192.0.2.200:1"), &bind),
        Ok(None)
    );
}

#[test]
fn nothing_is_ever_sent_toward_an_address_never_bound() {
    let mut lab = Lab::new();
    let now = lab.at(secs(0));
    let ep = lab.allocate(now);
    let (a, b) = (lab.a.clone(), lab.b.clone());
    let a_addr = addr("192.0.2.10:41641");
    lab.bind(now, &ep, &a, b.public_key(), a_addr, 1);
    // Half bound: a's data goes nowhere (there is no b address).
    let ping = lab.relayed_ping(ep.vni, &a, b.public_key(), 1);
    assert_eq!(lab.send(now, a_addr, &ping), Err(RelayError::NotOpen));
    let b_addr = addr("203.0.113.20:5555");
    lab.bind(now, &ep, &b, a.public_key(), b_addr, 1);
    // From anyone else: dropped, even claiming to be a (its disco key in the payload).
    for src in [
        "192.0.2.10:41642",
        "192.0.2.11:41641",
        "[::ffff:192.0.2.99]:1",
        "[2001:db8::1]:41641",
    ] {
        assert_eq!(
            lab.send(now, addr(src), &ping),
            Err(RelayError::UnboundSource)
        );
    }
    assert!(lab.server_out().is_empty());
}

#[test]
fn malformed_datagrams_are_typed_errors() {
    let mut lab = Lab::new();
    let now = lab.at(secs(0));
    let ep = lab.allocate(now);
    let src = addr("192.0.2.1:1");
    let v = ep.vni.to_be_bytes();
    let cases: Vec<(Vec<u8>, RelayError)> = vec![
        (vec![], GeneveError::Truncated { len: 0 }.into()),
        (
            vec![0, 0, 0x7a, 0x12, 0, 0, 1],
            GeneveError::Truncated { len: 7 }.into(),
        ),
        (
            vec![0x40, 0, 0x7a, 0x12, v[1], v[2], v[3], 0],
            GeneveError::Version { version: 1 }.into(),
        ),
        (
            vec![0x01, 0, 0x7a, 0x12, v[1], v[2], v[3], 0, 0, 0, 0, 0],
            GeneveError::Options { words: 1 }.into(),
        ),
        (
            vec![0, 0x40, 0x7a, 0x12, v[1], v[2], v[3], 0],
            GeneveError::Reserved.into(),
        ),
        (
            vec![0, 0, 0x7a, 0x12, v[1], v[2], v[3], 1],
            GeneveError::Reserved.into(),
        ),
        (
            vec![0, 0, 0x08, 0x00, v[1], v[2], v[3], 0],
            GeneveError::Protocol(0x0800).into(),
        ),
        (
            vec![0, 0, 0x7a, 0x12, 0, 0, 99, 0],
            RelayError::UnknownVni(99),
        ),
        (
            vec![0, 0x80, 0x7a, 0x12, v[1], v[2], v[3], 0],
            RelayError::ControlNotDisco,
        ),
        (
            vec![0, 0x80, 0x7a, 0x11, v[1], v[2], v[3], 0, 1, 2, 3],
            RelayError::Disco(burrow_disco::DiscoError::NotDisco),
        ),
        // STUN Binding request
        (
            vec![
                0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ],
            GeneveError::Reserved.into(),
        ),
        // WireGuard handshake initiation: byte 0 reads as an option length
        (
            vec![1, 0, 0, 0, 1, 2, 3, 4],
            GeneveError::Options { words: 1 }.into(),
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(lab.send(now, src, &bytes), Err(want), "{bytes:02x?}");
    }
    // A Challenge or Ping in a control packet: only Bind and Answer belong there.
    let ping = Message::Ping {
        tx_id: [1; 12],
        node_key: None,
        padding: 0,
    }
    .seal(&lab.a, &ep.server_disco, &mut ChaCha20Rng::seed_from_u64(1))
    .unwrap();
    assert_eq!(
        lab.send(now, src, &control(ep.vni, &ping)),
        Err(RelayError::UnexpectedMessage)
    );
    assert!(lab.server_out().is_empty());
    assert_eq!(lab.server.stats().dropped_total(), 13);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random bytes (with a valid-looking header half the time) from random sources never
    /// panic, never produce a transmit and never forward anywhere but the other bound leg.
    #[test]
    fn random_datagrams_never_panic_or_leak(
        packets in proptest::collection::vec(
            (0u8..3, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), any::<[u8; 4]>(), any::<u16>()),
            1..40,
        )
    ) {
        let mut lab = Lab::new();
        let now = lab.at(secs(0));
        let ep = lab.allocate(now);
        let (a, b) = (lab.a.clone(), lab.b.clone());
        let (a_addr, b_addr) = (addr("192.0.2.10:41641"), addr("203.0.113.20:5555"));
        lab.bind(now, &ep, &a, b.public_key(), a_addr, 1);
        lab.bind(now, &ep, &b, a.public_key(), b_addr, 1);
        let before = lab.server.stats().challenges_sent;
        for (mode, from_bound, body, ip, port) in packets {
            let datagram = match mode {
                // Data for the endpoint.
                0 => {
                    let mut d = vec![0, 0, 0x7a, 0x12];
                    d.extend_from_slice(&ep.vni.to_be_bytes()[1..]);
                    d.push(0);
                    d.extend_from_slice(&body);
                    d
                }
                // Control, naming client a as the sender: reaches the box, which does not open.
                1 => {
                    let mut disco = burrow_disco::MAGIC.to_vec();
                    disco.extend_from_slice(a.public_key().as_bytes());
                    disco.extend_from_slice(&body);
                    control(ep.vni, &disco)
                }
                _ => body,
            };
            let src = if from_bound { a_addr } else { SocketAddr::from((ip, port)) };
            match lab.send(now, src, &datagram) {
                Ok(Some(Forward { dst })) => {
                    prop_assert_eq!(src, a_addr);
                    prop_assert_eq!(dst, b_addr);
                }
                Ok(None) => prop_assert!(false, "random bytes completed a handshake step"),
                Err(_) => {}
            }
        }
        prop_assert!(lab.server_out().is_empty());
        prop_assert_eq!(lab.server.stats().challenges_sent, before);
    }
}

/// Not fixed (a trade-off, see the report of the issue-17 review): the Challenge budget per
/// source IP is shared by every client key. A member that may use the relay allocates
/// endpoints with partners of its own and sends Binds for them, sealed with its own disco key,
/// from the victim's spoofed IP; 64 endpoints × 10 Binds/s drain the victim IP's 50/s, and the
/// victim's own Binds from that IP go unanswered: it cannot bind to this relay. Keying the
/// budget by (IP, client key) would stop this but let colluding members (or replays of many
/// captured keys) reflect k × 50 Challenges/s at one IP instead of 50.
#[test]
#[ignore = "known: a spoofing member can spend a victim IP's challenge budget"]
fn a_spoofing_member_cannot_spend_a_victims_challenge_budget() {
    let mut lab = Lab::new();
    let now = lab.at(secs(0));
    let victim_ip = "203.0.113.7";
    let ep = lab.allocate(now);
    // Mallory: endpoints with partners of its own, Binds from the victim's IP.
    let m = key(50);
    for i in 0..64u8 {
        let partner = key(100 + i);
        let ep = lab
            .server
            .allocate(now, m.public_key(), [m.public_key(), partner.public_key()])
            .unwrap();
        let mut c = RelayBinding::new(
            now,
            ep,
            &m,
            partner.public_key(),
            1,
            ChaCha20Rng::seed_from_u64(u64::from(i)),
        )
        .unwrap();
        let bind = c.poll_transmit().unwrap().payload;
        for port in 0..20u16 {
            let _ = lab.send(
                now,
                SocketAddr::new(victim_ip.parse().unwrap(), 1000 + port),
                &bind,
            );
        }
    }
    lab.server_out();
    // The victim (A) binds from its own address at that IP: its Bind gets a Challenge.
    let victim_bind = captured_bind(&lab, &ep, 7);
    let from = SocketAddr::new(victim_ip.parse().unwrap(), 41641);
    assert_eq!(
        lab.send(now, from, &victim_bind),
        Ok(None),
        "the victim's Bind is refused"
    );
    assert_eq!(lab.server_out().len(), 1, "one Challenge to the victim");
}
