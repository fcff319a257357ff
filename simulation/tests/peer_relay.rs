//! Peer relays on the discrete-event network: two hard NATs that cannot meet directly reach
//! each other through a relay-capable node, pick the relay with the lowest round trip, fall
//! back to DERP when it dies and move to the next, without losing packets at the switches.

use std::time::Duration;

use burrow_sim::fastnet::{run, Disruption, FastConfig, RelaySite};
use burrow_sim::preset;

fn chain(name: &str) -> Vec<burrow_sim::nat::NatConfig> {
    preset::get(name).expect("preset").chain
}

fn open_relay(one_way_ms: u64) -> RelaySite {
    RelaySite {
        chain: Vec::new(),
        one_way: Duration::from_millis(one_way_ms),
    }
}

fn hard_hard(seed: u64, relays: Vec<RelaySite>) -> FastConfig {
    let mut c = FastConfig::new([chain("hard"), chain("hard")], seed);
    c.relays = relays;
    c.duration = Duration::from_secs(20);
    c
}

#[test]
fn hard_and_hard_reach_each_other_through_a_peer_relay() {
    for seed in 1..=10 {
        let out = run(&hard_hard(seed, vec![open_relay(10)]));
        assert_eq!(
            out.peer_relay,
            Some(0),
            "seed {seed}: {:?}\n{}",
            out.routes,
            out.timeline.join("\n")
        );
        let t = out.time_to_peer_relay.expect("reached the relay");
        assert!(t < Duration::from_secs(3), "seed {seed}: {t:?}");
        assert!(!out.key_leaked && !out.plaintext_leaked);
    }
}

/// The round trip through relay `r` between the two nodes: both legs, both ways.
fn through(c: &FastConfig, r: &RelaySite) -> Duration {
    (c.one_way + r.one_way) * 4
}

#[test]
fn of_three_relays_the_one_with_the_lowest_rtt_sum_carries_the_traffic() {
    for seed in 1..=12 {
        // Near, far and middling, in an order that changes with the seed.
        let mut distances = [40u64, 3, 15];
        distances.rotate_left(seed as usize % 3);
        let c = hard_hard(seed, distances.iter().map(|d| open_relay(*d)).collect());
        let best = (0..3).min_by_key(|&k| distances[k]).unwrap();
        let out = run(&c);
        assert_eq!(
            out.peer_relay,
            Some(best),
            "seed {seed}: distances {distances:?}, RTTs {:?}\n{}",
            out.relay_rtts,
            out.timeline.join("\n")
        );
        // Every relay answered, and the chosen one's round trip is the RTT-optimal sum.
        assert!(
            out.relay_rtts.iter().all(Option::is_some),
            "{:?}",
            out.relay_rtts
        );
        let chosen = out.relay_rtts[best].unwrap();
        let optimal = through(&c, &c.relays[best]);
        assert!(
            chosen.abs_diff(optimal) < Duration::from_millis(2),
            "{chosen:?} vs {optimal:?}"
        );
    }
}

#[test]
fn no_packet_is_lost_moving_from_derp_to_a_peer_relay() {
    for seed in 1..=6 {
        let mut c = hard_hard(seed, vec![open_relay(5)]);
        c.data_interval = Some(Duration::from_millis(20));
        let out = run(&c);
        assert_eq!(out.peer_relay, Some(0), "seed {seed}");
        assert!(out.lost.is_empty(), "seed {seed}: lost {:?}", out.lost);
        assert_eq!(out.tail_sent, out.tail_received, "seed {seed}");
    }
}

#[test]
fn a_dead_relay_falls_back_to_derp_then_to_the_next_relay() {
    for seed in 1..=6 {
        // The near relay dies at 5 s for good; the far one takes over.
        let mut c = hard_hard(seed, vec![open_relay(3), open_relay(30)]);
        c.duration = Duration::from_secs(30);
        c.data_interval = Some(Duration::from_millis(20));
        c.disruptions = vec![(
            Duration::from_secs(5),
            Disruption::RelayDown(0, Duration::from_secs(600)),
        )];
        let out = run(&c);
        assert_eq!(
            out.peer_relay,
            Some(1),
            "seed {seed}: {:?}\n{}",
            out.routes,
            out.timeline.join("\n")
        );
        assert!(
            out.timeline
                .iter()
                .any(|l| l.contains("peer relay via relay1")),
            "seed {seed}"
        );
        // Packets sent while the dead relay was still trusted are lost: no more than the
        // detection time's worth (a heartbeat of 1 s while data flows, a missed pong after 1 s;
        // from then on DERP carries everything too), 50 packets a second each way.
        assert!(
            out.data_sent - out.data_received <= 2 * 50 * 5 / 2,
            "seed {seed}: {} of {} lost",
            out.data_sent - out.data_received,
            out.data_sent
        );
    }
}

#[test]
fn a_relay_that_comes_back_is_used_again() {
    for seed in 1..=4 {
        let mut c = hard_hard(seed, vec![open_relay(5)]);
        c.duration = Duration::from_secs(40);
        c.disruptions = vec![(
            Duration::from_secs(5),
            Disruption::RelayDown(0, Duration::from_secs(8)),
        )];
        let out = run(&c);
        let lines = |what: &str| out.timeline.iter().filter(|l| l.contains(what)).count();
        assert!(
            lines("node0 peer relay none (DERP)") >= 1,
            "seed {seed}: never fell back"
        );
        assert!(
            lines("node0 peer relay via relay0") >= 2,
            "seed {seed}: not back"
        );
        assert_eq!(
            out.peer_relay,
            Some(0),
            "seed {seed}\n{}",
            out.timeline.join("\n")
        );
    }
}

#[test]
fn a_relay_behind_a_full_cone_nat_that_moves_its_port_is_found_through_stun() {
    use burrow_sim::nat::{Dependence, PortAllocation};
    // Endpoint-independent mapping and filtering, but random ports: the relay port is not
    // kept, so only the relay socket's own STUN answer says where it is.
    let mut cone = preset::single("full-cone").expect("preset");
    cone.allocation = PortAllocation::Random;
    cone.mapping = Dependence::EndpointIndependent;
    for seed in 1..=4 {
        let relay = RelaySite {
            chain: vec![cone.clone()],
            one_way: Duration::from_millis(10),
        };
        let out = run(&hard_hard(seed, vec![relay]));
        assert_eq!(
            out.peer_relay,
            Some(0),
            "seed {seed}: {:?}\n{}",
            out.routes,
            out.timeline.join("\n")
        );
    }
}
