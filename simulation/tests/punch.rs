//! Hole punching through the scripted NATs: two nodes run burrow's real punch driver (disco
//! over their UDP sockets, CallMeMaybe over a relay link), relay first; the route each ends
//! on must be what the presets' properties predict.

use burrow_sim::scenario::{self, RunOptions};

fn check(a: &str, b: &str, seeds: std::ops::RangeInclusive<u64>) -> Vec<serde_json::Value> {
    let s = scenario::punch_for_pair(a, b).unwrap();
    seeds
        .map(|seed| {
            let (o, _) = scenario::run(&s, seed, &RunOptions::default()).unwrap();
            assert!(
                o.passed,
                "{} seed {seed}: error {:?}, mismatches {:?}, result {:?}",
                o.scenario, o.error, o.mismatches, o.result
            );
            o.result.unwrap()
        })
        .collect()
}

#[test]
fn easy_pairs_go_direct_fast() {
    for (a, b) in [
        ("easy", "easy"),
        ("open", "easy"),
        ("full-cone", "port-restricted-cone"),
        ("cgnat", "easy"),
        ("firewall", "easy"),
    ] {
        for r in check(a, b, 1..=2) {
            assert_eq!(r["route_a"], "direct", "{a}~{b}: {r}");
            let ms = r["time_to_direct_ms_a"].as_u64().unwrap();
            assert!(ms < 1000, "{a}~{b}: direct after {ms} ms");
        }
    }
}

#[test]
fn one_hard_side_needs_an_admitting_easy_side() {
    // The easy side's filter lets the hard side's new port in: direct.
    for r in check("full-cone", "hard", 1..=2)
        .into_iter()
        .chain(check("restricted-cone", "hard", 1..=1))
        .chain(check("open", "hard", 1..=1))
    {
        assert_eq!(r["route_a"], "direct", "{r}");
    }
    // Port-restricted on the easy side and a random-port hard NAT: relay (birthday probing is next).
    for r in check("easy", "hard", 1..=1)
        .into_iter()
        .chain(check("hard", "hard", 1..=1))
    {
        assert_eq!(r["route_a"], "relay", "{r}");
    }
}

#[test]
fn udp_blocked_stays_on_the_relay() {
    for r in check("udp-blocked", "easy", 1..=1) {
        assert_eq!(
            (r["route_a"].as_str(), r["route_b"].as_str()),
            (Some("relay"), Some("relay"))
        );
    }
}
