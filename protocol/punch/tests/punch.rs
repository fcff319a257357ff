//! Candidate priority, path choice, port prediction and the birthday prober against theory.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_punch::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn path(addr: &str, ms: u64) -> Path {
    Path {
        candidate: Candidate::direct(addr.parse().unwrap(), CandidateSource::Stun),
        rtt: Duration::from_millis(ms),
    }
}

#[test]
fn kinds_follow_the_seeds_order() {
    let k = |a: &str| CandidateKind::of(a.parse::<SocketAddr>().unwrap());
    assert_eq!(k("[2001:db8::1]:1"), CandidateKind::Ipv6);
    assert_eq!(k("[fd00::1]:1"), CandidateKind::Lan);
    assert_eq!(k("192.168.1.2:1"), CandidateKind::Lan);
    assert_eq!(k("100.64.3.4:1"), CandidateKind::Lan);
    assert_eq!(k("203.0.113.7:1"), CandidateKind::PublicV4);
    assert_eq!(k("[::ffff:203.0.113.7]:1"), CandidateKind::PublicV4);
    let order = [
        CandidateKind::Ipv6,
        CandidateKind::Lan,
        CandidateKind::PublicV4,
        CandidateKind::Relay,
    ];
    assert!(order.windows(2).all(|w| w[0].priority() > w[1].priority()));
}

#[test]
fn choice_prefers_kind_then_latency_with_hysteresis() {
    let h = Hysteresis::default();
    let v6 = path("[2001:db8::1]:1", 80);
    let lan = path("192.168.1.2:1", 2);
    let wan_a = path("203.0.113.7:1", 40);
    let wan_b = path("198.51.100.9:1", 38);
    // IPv6 beats a faster LAN path; LAN beats public IPv4.
    assert_eq!(choose(&[lan, v6, wan_a], None, h).unwrap(), v6);
    assert_eq!(choose(&[wan_a, lan], None, h).unwrap(), lan);
    // Within a kind, 2 ms better is not worth a switch; 20 ms is.
    assert_eq!(choose(&[wan_a, wan_b], Some(&wan_a), h).unwrap(), wan_a);
    let wan_c = path("198.51.100.10:1", 20);
    assert_eq!(choose(&[wan_a, wan_c], Some(&wan_a), h).unwrap(), wan_c);
    // A current path that disappeared is replaced.
    assert_eq!(choose(&[wan_b], Some(&wan_a), h).unwrap(), wan_b);
    assert_eq!(choose(&[], Some(&wan_a), h), None);
}

#[test]
fn sequential_ports_are_predicted_with_wrap() {
    assert_eq!(
        predict_ports(50000, 1, 3, 1024, 65535),
        vec![50001, 50002, 50003]
    );
    assert_eq!(predict_ports(65534, 2, 2, 1024, 65535), vec![1024, 1026]);
    assert_eq!(predict_ports(2000, -1, 2, 1024, 65535), vec![1999, 1998]);
}

#[test]
fn prober_keeps_its_rate_and_budget_and_stops_at_success() {
    let t0 = Instant::now();
    let budget = ProbeBudget {
        rate: 100,
        max_destinations: 300,
        ports: (1024, 65535),
        backoff: Duration::from_secs(30),
        ..ProbeBudget::default()
    };
    let mut p = BirthdayProber::new(
        "203.0.113.9".parse().unwrap(),
        budget,
        ChaCha20Rng::seed_from_u64(1),
        t0,
    );
    let mut ports = BTreeSet::new();
    let mut now = t0;
    let mut times = Vec::new();
    while ports.len() < 300 {
        while let Some(probe) = p.poll_probe(now) {
            assert!(
                ports.insert(probe.dst.port()),
                "a port probed twice in one attempt"
            );
            times.push(now);
        }
        now = p.poll_timeout().unwrap();
    }
    // 300 probes at 100/s take 2.99 s.
    assert_eq!(
        times.last().unwrap().duration_since(t0),
        Duration::from_millis(2990)
    );
    // Budget spent: the next probe waits out the backoff, then a fresh attempt starts.
    assert!(p.poll_probe(now).is_none());
    let resume = p.poll_timeout().unwrap();
    assert!(resume - now >= Duration::from_secs(30));
    assert!(p.poll_probe(resume).is_some());
    assert_eq!(p.destinations_in_attempt(), 1);
    p.succeeded("203.0.113.9:4242".parse().unwrap());
    assert_eq!(p.poll_probe(resume + Duration::from_secs(1)), None);
    assert_eq!(p.poll_timeout(), None);
}

/// Monte Carlo of the whole easy–hard birthday attack: the hard side has 256 random ports open,
/// the prober guesses. The success curve must match theory (Tailscale, "How NAT traversal works"
/// (2020): ~50 % after 174 probes, ~98 % after 1,024).
#[test]
fn birthday_curve_matches_theory() {
    let space = 65535 - 1024 + 1;
    let trials = 400;
    let mut hits_174 = 0;
    let mut hits_1024 = 0;
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    for t in 0..trials {
        let mut open = BTreeSet::new();
        while open.len() < 256 {
            open.insert((1024 + rng.next_u32() % space) as u16);
        }
        let budget = ProbeBudget {
            rate: 1000,
            max_destinations: 1024,
            ports: (1024, 65535),
            backoff: Duration::from_secs(1),
            ..ProbeBudget::default()
        };
        let t0 = Instant::now();
        let mut p = BirthdayProber::new(
            "203.0.113.9".parse().unwrap(),
            budget,
            ChaCha20Rng::seed_from_u64(t),
            t0,
        );
        let mut now = t0;
        let mut n = 0;
        let found = loop {
            match p.poll_probe(now) {
                Some(probe) => {
                    n += 1;
                    if open.contains(&probe.dst.port()) {
                        break Some(n);
                    }
                }
                None => match p.poll_timeout() {
                    Some(next) if n < 1024 => now = next,
                    _ => break None,
                },
            }
        };
        if let Some(n) = found {
            hits_174 += u32::from(n <= 174);
            hits_1024 += u32::from(n <= 1024);
        }
    }
    let (p174, p1024) = (
        hits_174 as f64 / trials as f64,
        hits_1024 as f64 / trials as f64,
    );
    let (e174, e1024) = (
        success_probability(256, 174, space),
        success_probability(256, 1024, space),
    );
    assert!(
        (e174 - 0.5).abs() < 0.02 && e1024 > 0.98,
        "theory: {e174} {e1024}"
    );
    // Three standard errors of a 400-trial proportion.
    assert!(
        (p174 - e174).abs() < 0.075,
        "measured {p174} after 174 probes, theory {e174}"
    );
    assert!(
        (p1024 - e1024).abs() < 0.03,
        "measured {p1024} after 1,024 probes, theory {e1024}"
    );
}
