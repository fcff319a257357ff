//! Two burrow nodes in the turmoil simulator: the node engine under the same tokio driver as
//! the binary (`burrow::node::run_node`), a real derper over simulated TCP, three STUN servers,
//! and the scripted NAT boxes. Relay first; the route each ends on must be what the presets'
//! properties predict, and no application packet may be lost on these lossless links.

use burrow_sim::scenario::{self, RunOptions};

fn check(a: &str, b: &str, seeds: std::ops::RangeInclusive<u64>) -> Vec<serde_json::Value> {
    let s = scenario::mesh_for_pair(a, b).unwrap();
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
fn easy_pairs_go_direct_fast_without_losing_a_packet() {
    for (a, b) in [
        ("easy", "easy"),
        ("cgnat", "firewall"),
        ("hard-sequential", "easy"),
    ] {
        for r in check(a, b, 1..=1) {
            assert_eq!(r["route_a"], "direct", "{a}~{b}: {r}");
            let ms = r["time_to_direct_ms_a"].as_u64().unwrap();
            assert!(ms < 1000, "{a}~{b}: direct after {ms} ms");
            assert!(r["sent_a"].as_u64().unwrap() > 500, "{r}");
            assert_eq!(r["sent_a"], r["received_b"], "{r}");
        }
    }
}

#[test]
fn easy_hard_goes_direct_by_birthday_probing() {
    for r in check("easy", "hard", 1..=1) {
        assert_eq!(r["route_a"], "direct", "{r}");
        assert!(r["probes"].as_u64().unwrap() > 0, "{r}");
    }
}

#[test]
fn udp_blocked_stays_on_derp_and_delivers_everything() {
    for r in check("udp-blocked", "easy", 1..=1) {
        assert_eq!(
            (r["route_a"].as_str(), r["route_b"].as_str()),
            (Some("relay"), Some("relay"))
        );
        assert_eq!(r["sent_b"], r["received_a"], "{r}");
    }
}

#[test]
fn a_mesh_run_replays_exactly_from_its_seed() {
    let s = scenario::mesh_for_pair("easy", "hard").unwrap();
    let run = |seed| scenario::run(&s, seed, &RunOptions::default()).unwrap().0;
    let (a, b, c) = (run(3), run(3), run(4));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.result, b.result);
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn the_whole_story_nodes_learn_each_other_from_the_real_control_server() {
    let s = scenario::story_for_pair("easy", "hard").unwrap();
    let options = RunOptions {
        capture: false,
        keep_trace: true,
    };
    let (o, rec) = scenario::run(&s, 1, &options).unwrap();
    assert!(o.passed, "{:?} {:?} {:?}", o.error, o.mismatches, o.result);
    let r = o.result.clone().unwrap();
    assert_eq!(
        (r["route_a"].as_str(), r["route_b"].as_str()),
        (Some("direct"), Some("direct"))
    );
    assert_eq!(r["sent_a"], r["received_b"], "{r}");
    let trace = rec.trace_lines();
    let has = |needle: &str| trace.iter().any(|l| l.contains(needle));
    // Registered with the server, and learned the peer's endpoints from the netmap stream.
    assert!(has("control a registered as 100.64."), "{trace:#?}");
    assert!(has("control b heard of a: endpoints"), "{trace:#?}");
    // DERP first (pongs over the relay), then direct pongs.
    let first = |needle: &str| trace.iter().position(|l| l.contains(needle));
    let relay = first("mesh a pong via Relay").expect("a pong over DERP");
    let direct = first("mesh a pong via Direct").expect("a pong over the direct path");
    assert!(relay < direct);
    // And the run replays exactly.
    let (again, _) = scenario::run(&s, 1, &options).unwrap();
    assert_eq!(o.trace_hash, again.trace_hash);
}

#[test]
fn two_firewalled_ipv6_hosts_go_direct_over_ipv6_in_turmoil() {
    // turmoil runs one family per world: here IPv6, where there is no NAT, only stateful
    // firewalls, and simultaneous pings open both.
    for (a, b) in [("firewall", "firewall"), ("open", "firewall")] {
        let s = scenario::mesh_for_pair_in(a, b, scenario::Family::Ipv6).unwrap();
        let (o, rec) = scenario::run(
            &s,
            1,
            &RunOptions {
                capture: false,
                keep_trace: true,
            },
        )
        .unwrap();
        assert!(o.passed, "{a}~{b}: {:?} {:?}", o.error, o.mismatches);
        let r = o.result.unwrap();
        assert_eq!(r["route_a"], "direct", "{a}~{b}: {r}");
        assert_eq!(r["sent_a"], r["received_b"], "{r}");
        let trace = rec.trace_lines().join("\n");
        assert!(
            trace.contains("path Relay -> Direct([2001:db8:"),
            "{a}~{b}: not an IPv6 path:\n{trace}"
        );
    }
}
