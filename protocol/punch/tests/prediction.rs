//! Mutual port prediction: the machine's rounds, pacing and arithmetic, and the flow ledger.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_punch::{
    advance, FlowLedger, MutualPrediction, PeerMapping, PeerPort, PredictionAction,
    PredictionConfig, PredictionRole,
};

fn seq(peer_fixed: bool) -> PredictionRole {
    PredictionRole::Sequential {
        delta: 1,
        peer: if peer_fixed {
            PeerMapping::Fixed
        } else {
            PeerMapping::Sequential
        },
    }
}

fn drain(m: &mut MutualPrediction) -> Vec<PredictionAction> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

#[test]
fn ports_advance_by_the_step_and_wrap_above_the_well_known_ports() {
    assert_eq!(advance(40000, 1, 8), 40008);
    assert_eq!(advance(65534, 1, 3), 1025);
    assert_eq!(advance(1025, -1, 2), 65535);
    assert_eq!(advance(2000, 4, 10), 2040);
}

#[test]
fn a_sequential_side_measures_announces_then_opens_toward_the_peers_port() {
    let t0 = Instant::now();
    let config = PredictionConfig::default();
    let mut m = MutualPrediction::new(config, seq(false), t0);
    assert_eq!(drain(&mut m), vec![PredictionAction::Measure]);
    // The fresh flow got 20000; two flows of ours left since: we announce margin + 3 ahead.
    m.handle_measured(t0, 20000, 2, 10);
    assert_eq!(
        drain(&mut m),
        vec![PredictionAction::Announce {
            round: 1,
            port: 20000 + 2 + 1 + config.margin
        }]
    );
    // Nothing opens before the peer's port is known.
    m.handle_timeout(t0 + Duration::from_millis(100));
    assert!(drain(&mut m).is_empty());
    // One more flow of ours since the announcement: one socket fewer.
    m.handle_announce(t0 + Duration::from_millis(100), 1, 31000, 11);
    assert_eq!(
        drain(&mut m),
        vec![PredictionAction::Open {
            sockets: config.margin,
            port: PeerPort::Announced(31000)
        }]
    );
    // The same announcement again (a replay) opens nothing more.
    m.handle_announce(t0 + Duration::from_millis(200), 1, 31000, 11);
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.report().our_port, Some(20000 + 3 + config.margin));
    assert_eq!(m.report().peer_port, Some(31000));
}

#[test]
fn toward_a_fixed_peer_the_flows_leave_at_once_for_its_endpoint() {
    let t0 = Instant::now();
    let config = PredictionConfig::default();
    let mut m = MutualPrediction::new(config, seq(true), t0);
    assert_eq!(drain(&mut m), vec![PredictionAction::Measure]);
    m.handle_measured(t0, 20000, 0, 0);
    assert_eq!(
        drain(&mut m),
        vec![
            PredictionAction::Announce {
                round: 1,
                port: 20001 + config.margin
            },
            PredictionAction::Open {
                sockets: config.margin + 1,
                port: PeerPort::Endpoint
            }
        ]
    );
}

#[test]
fn a_fixed_side_pings_each_new_announcement_from_its_main_socket_paced() {
    let t0 = Instant::now();
    let config = PredictionConfig::default();
    let mut m = MutualPrediction::new(config, PredictionRole::Fixed, t0);
    assert!(drain(&mut m).is_empty(), "a fixed side never measures");
    m.handle_announce(t0, 1, 30007, 0);
    assert_eq!(
        drain(&mut m),
        vec![PredictionAction::Open {
            sockets: 0,
            port: PeerPort::Announced(30007)
        }]
    );
    // A newer round right after waits for the pacing interval.
    m.handle_announce(t0 + Duration::from_millis(10), 2, 30020, 0);
    assert!(drain(&mut m).is_empty());
    let due = m.poll_timeout().expect("a paced ping is due");
    assert_eq!(due, t0 + config.min_round_interval);
    m.handle_timeout(due);
    assert_eq!(
        drain(&mut m),
        vec![PredictionAction::Open {
            sockets: 0,
            port: PeerPort::Announced(30020)
        }]
    );
    // Port 0 is nobody's announcement.
    m.handle_announce(due, 3, 0, 0);
    m.handle_timeout(due + Duration::from_secs(5));
    assert!(drain(&mut m).is_empty());
}

#[test]
fn rounds_repeat_paced_then_back_off_however_often_the_peer_announces() {
    let t0 = Instant::now();
    let config = PredictionConfig::default();
    let mut m = MutualPrediction::new(config, seq(false), t0);
    let mut now = t0;
    let mut measures = 0;
    let mut sockets = 0u64;
    let mut round = 0;
    // A hostile peer announces a new round every 10 ms for two minutes.
    for _ in 0..12_000 {
        now += Duration::from_millis(10);
        round += 1;
        m.handle_timeout(now);
        m.handle_announce(now, round, 40000, 0);
        for a in drain(&mut m) {
            match a {
                PredictionAction::Measure => {
                    measures += 1;
                    m.handle_measured(now, 20000, 0, 0);
                }
                PredictionAction::Open { sockets: n, .. } => sockets += u64::from(n),
                PredictionAction::Announce { .. } | PredictionAction::Search { .. } => {}
            }
        }
    }
    // Rounds at most one per second, eight in a row, then 20 s, 40 s, 80 s pauses: a few
    // dozen rounds in two minutes, each at most margin + 1 sockets.
    assert!(measures <= 32, "{measures} measurements");
    assert!(sockets <= measures * u64::from(config.max_sockets()));
    assert!(measures >= 4, "prediction kept going: {measures}");
}

#[test]
fn an_unanswered_measurement_or_a_silent_peer_ends_the_round() {
    let t0 = Instant::now();
    let config = PredictionConfig::default();
    let mut m = MutualPrediction::new(config, seq(false), t0);
    assert_eq!(drain(&mut m), vec![PredictionAction::Measure]);
    let t = m.poll_timeout().unwrap();
    assert_eq!(t, t0 + config.measure_timeout);
    m.handle_timeout(t);
    assert_eq!(m.report().measure_failures, 1);
    // The pacing interval (from the first round's start) has passed: the next round measures
    // at once.
    assert_eq!(drain(&mut m), vec![PredictionAction::Measure]);
    let next = t;
    m.handle_measured(next, 20000, 0, 0);
    assert!(matches!(
        drain(&mut m)[..],
        [PredictionAction::Announce { round: 2, .. }]
    ));
    // The peer never answers: the round ends after round_timeout and a third one measures.
    let end = m.poll_timeout().unwrap();
    assert_eq!(end, next + config.round_timeout);
    m.handle_timeout(end);
    assert_eq!(drain(&mut m), vec![PredictionAction::Measure]);
    assert_eq!(m.report().rounds, 3);
}

#[test]
fn too_many_flows_of_our_own_since_the_announcement_spend_the_round() {
    let t0 = Instant::now();
    let config = PredictionConfig::default();
    let mut m = MutualPrediction::new(config, seq(false), t0);
    drain(&mut m);
    m.handle_measured(t0, 20000, 0, 100);
    drain(&mut m);
    // margin + 1 flows of ours already passed the announced port.
    m.handle_announce(t0, 1, 30000, 100 + u64::from(config.max_sockets()));
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.poll_timeout(), Some(t0 + config.min_round_interval));
}

#[test]
fn the_ledger_counts_new_flows_once_and_again_after_the_nat_timeout() {
    let t0 = Instant::now();
    let a: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let b: SocketAddr = "198.51.100.2:3478".parse().unwrap();
    let mut l = FlowLedger::new(Duration::from_secs(30), 3);
    assert_eq!(l.note(t0, 0, a), Some(0));
    assert_eq!(l.note(t0 + Duration::from_secs(20), 0, a), None);
    assert_eq!(l.note(t0, 1, a), Some(1), "another socket is another flow");
    assert_eq!(l.note(t0, 0, b), Some(2));
    // Idle past the timeout: the NAT forgot it, a new mapping.
    assert_eq!(l.note(t0 + Duration::from_secs(51), 0, a), Some(3));
    // Bounded: a full ledger still counts new flows.
    for port in 1..100u16 {
        let dst = SocketAddr::new(a.ip(), port);
        assert!(l.note(t0 + Duration::from_secs(52), 0, dst).is_some());
    }
    assert!(l.len() <= 3);
    assert_eq!(l.created(), 4 + 99);
}

#[test]
fn the_flow_ledger_forgets_idle_flows_without_filling_up_first() {
    // A long-running node opens flows now and then: the ledger holds what the last two idle
    // periods opened, not everything up to its cap.
    let t0 = Instant::now();
    let a: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let mut l = FlowLedger::new(Duration::from_secs(30), 4096);
    for k in 0..2000u64 {
        let dst = SocketAddr::new(a.ip(), 1024 + k as u16);
        l.note(t0 + Duration::from_secs(k), 0, dst);
    }
    assert!(l.len() <= 60, "{} flows held", l.len());
    assert_eq!(l.created(), 2000);
}

#[test]
fn the_random_side_of_a_search_opens_its_sockets_toward_each_announced_port_paced() {
    let t0 = Instant::now();
    let config = PredictionConfig {
        search_rounds: 3,
        ..PredictionConfig::default()
    };
    let mut m = MutualPrediction::new(config, PredictionRole::Random, t0);
    assert!(
        drain(&mut m).is_empty(),
        "the random side waits for announcements"
    );
    let search = |port| PredictionAction::Search {
        sockets: config.search_sockets,
        port,
    };
    m.handle_announce(t0, 1, 30007, 0);
    assert_eq!(drain(&mut m), vec![search(30007)]);
    // A flood of announcements gets one search a second at most…
    let mut now = t0;
    let mut searches = 1;
    for round in 2..2000u32 {
        now += Duration::from_millis(10);
        m.handle_announce(now, round, 30000 + (round % 1000) as u16, 0);
        m.handle_timeout(now);
        searches += drain(&mut m)
            .iter()
            .filter(|a| matches!(a, PredictionAction::Search { .. }))
            .count();
    }
    // …and, three in a row, a pause of 20 s: within 20 s, 3 searches, then a few more later.
    assert!(searches <= 3 + 1, "{searches} searches in 20 s");
    assert!(m.report().sessions <= searches as u64 * u64::from(config.search_sockets));
}

#[test]
fn the_sequential_side_of_a_search_guesses_without_waiting_for_the_peer() {
    let t0 = Instant::now();
    let config = PredictionConfig::default();
    let role = PredictionRole::Sequential {
        delta: 1,
        peer: PeerMapping::Random,
    };
    let mut m = MutualPrediction::new(config, role, t0);
    assert_eq!(drain(&mut m), vec![PredictionAction::Measure]);
    m.handle_measured(t0, 20000, 0, 0);
    assert_eq!(
        drain(&mut m),
        vec![
            PredictionAction::Announce {
                round: 1,
                port: 20001 + config.margin
            },
            PredictionAction::Open {
                sockets: config.max_sockets(),
                port: PeerPort::Guess
            }
        ]
    );
    // Search rounds are short: the next measures after the search round timeout.
    let next = m.poll_timeout().unwrap();
    assert_eq!(next, t0 + config.search_round_timeout);
    m.handle_timeout(next);
    assert_eq!(drain(&mut m), vec![PredictionAction::Measure]);
}

#[test]
fn a_role_change_keeps_the_pacing_and_back_off() {
    let t0 = Instant::now();
    let config = PredictionConfig::default();
    let mut m = MutualPrediction::new(config, seq(false), t0);
    let mut now = t0;
    let mut measures = 0;
    let mut round = 0;
    // A hostile peer flips its NatInfo (sequential / fixed) and announces every 10 ms.
    for k in 0..12_000 {
        now += Duration::from_millis(10);
        round += 1;
        m.set_role(now, seq(k % 2 == 0));
        m.handle_timeout(now);
        m.handle_announce(now, round, 40000, 0);
        for a in drain(&mut m) {
            if a == PredictionAction::Measure {
                measures += 1;
                m.handle_measured(now, 20000, 0, 0);
            }
        }
    }
    // As without flips: a few dozen rounds in two minutes.
    assert!(measures <= 32, "{measures} measurements");
    assert!(measures >= 4, "prediction kept going: {measures}");
    // The same role again changes nothing.
    let before = m.report();
    m.set_role(now, m.role());
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.report(), before);
}
