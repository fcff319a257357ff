//! Tailnet stories under seeds: a node removed, a node expired, a policy change and a
//! control-server restart, each reaching every node through the same session machine and
//! driver `burrow up` runs.

use burrow_sim::tailnet::{self, Action, Story, StoryOutcome, NARROW_POLICY};

/// The presets' three nodes and length, with `script`.
fn story(script: Vec<(f64, Action)>) -> Story {
    Story {
        script,
        ..tailnet::preset("removal").unwrap()
    }
}

fn run(script: Vec<(f64, Action)>, seed: u64) -> (StoryOutcome, Vec<String>) {
    let (o, rec) = tailnet::run(&story(script), seed);
    assert_eq!(o.error, None);
    (o, rec.trace_lines())
}

/// Packets node `to` took from node `from` in [start, end) ms: accepted by its filter, or
/// dropped by it.
fn between(o: &StoryOutcome, from: usize, to: usize, window: (u64, u64), accepted: bool) -> usize {
    let (ok, dropped) = o.between(from, to, window);
    if accepted {
        ok
    } else {
        dropped
    }
}

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const BEFORE: (u64, u64) = (1_000, 6_000);
const AFTER: (u64, u64) = (7_000, 16_000);

fn has(trace: &[String], needle: &str) -> bool {
    trace.iter().any(|l| l.contains(needle))
}

/// Every pair talks before the action; afterwards a and b keep talking and nothing of c's
/// gets in; the server's word reached everyone within a second.
fn assert_c_is_out(o: &StoryOutcome, trace: &[String]) {
    for (from, to) in [(A, B), (B, A), (A, C), (C, A), (B, C), (C, B)] {
        assert!(
            between(o, from, to, BEFORE, true) > 30,
            "{from} → {to} before"
        );
    }
    for (from, to) in [(A, B), (B, A)] {
        assert!(
            between(o, from, to, AFTER, true) > 60,
            "{from} → {to} after"
        );
    }
    for to in [A, B] {
        assert_eq!(between(o, C, to, AFTER, true), 0, "c → {to} after");
    }
    assert!(
        has(trace, "control a forgot c") && has(trace, "control b forgot c"),
        "{trace:#?}"
    );
    assert!(has(
        trace,
        "control c session stopped: the control server no longer knows this node"
    ));
    assert_eq!(o.peers_at_end[A], ["b"]);
    assert_eq!(o.peers_at_end[B], ["a"]);
}

#[test]
fn a_removed_node_is_dropped_by_its_peers_and_stops() {
    let (o, trace) = run(vec![(6.0, Action::Remove("c".into()))], 1);
    assert!(has(&trace, "admin remove c: Ok(200)"), "{trace:#?}");
    assert_c_is_out(&o, &trace);
}

#[test]
fn an_expired_node_is_dropped_and_does_not_come_back_by_itself() {
    // c has a reusable auth key, yet it stays out: expiry is the admin's decision.
    let (o, trace) = run(vec![(6.0, Action::Expire("c".into()))], 2);
    assert!(has(&trace, "admin expire c: Ok(200)"), "{trace:#?}");
    assert_c_is_out(&o, &trace);
}

#[test]
fn a_policy_change_reaches_every_node_and_the_receivers_enforce_it() {
    // From 6 s only a may reach b: b lets a in, a drops what b starts, and c is out of sight.
    let (o, trace) = run(vec![(6.0, Action::Policy(NARROW_POLICY.into()))], 3);
    assert!(
        has(&trace, "admin policy change (Ok(3) nodes told)"),
        "{trace:#?}"
    );
    for (from, to) in [(A, B), (B, A), (C, A)] {
        assert!(
            between(&o, from, to, BEFORE, true) > 30,
            "{from} → {to} before"
        );
    }
    assert!(between(&o, A, B, AFTER, true) > 60, "a → b is allowed");
    assert_eq!(between(&o, B, A, AFTER, true), 0, "b → a is not");
    assert!(
        between(&o, B, A, AFTER, false) > 60,
        "a's filter drops b's packets (the engine still delivers them)"
    );
    for to in [A, B] {
        assert_eq!(
            between(&o, C, to, AFTER, true) + between(&o, C, to, AFTER, false),
            0
        );
    }
    assert!(has(&trace, "control a forgot c") && has(&trace, "control c forgot a"));
    assert!(has(&trace, "control b filter changed"));
    assert_eq!(o.peers_at_end[C], Vec::<String>::new());
}

#[test]
fn the_tunnels_outlive_a_control_server_restart_and_the_nodes_resync() {
    let (o, trace) = run(vec![(6.0, Action::RestartControl)], 4);
    assert!(
        has(&trace, "admin restarts the control server"),
        "{trace:#?}"
    );
    // A restarted server cannot tell what its configuration was before, so it resumes no
    // stream from before its start: each node gets a whole netmap.
    for n in ["a", "b", "c"] {
        assert!(
            has(&trace, &format!("control {n} netmap resync: 2 peer(s)")),
            "{n} resynced: {trace:#?}"
        );
        assert!(!has(&trace, &format!("control {n} session stopped")));
    }
    // Every pair, every second: no gap while the server was down or after.
    for second in 1..15 {
        let w = (second * 1_000, (second + 1) * 1_000);
        for (from, to) in [(A, B), (B, A), (A, C), (C, A), (B, C), (C, B)] {
            assert!(
                between(&o, from, to, w, true) >= 5,
                "{from} → {to} in second {second}"
            );
        }
    }
    // And the server still works: a policy change after the restart reaches the nodes.
    let narrow = r#"{ "acls": [ { "action": "accept", "src": ["a"], "dst": ["b:*"] } ] }"#;
    let (o, trace) = run(
        vec![
            (6.0, Action::RestartControl),
            (9.0, Action::Policy(narrow.into())),
        ],
        5,
    );
    assert!(has(&trace, "control c forgot a"), "{trace:#?}");
    assert_eq!(between(&o, B, A, (10_000, 16_000), true), 0);
}

#[test]
fn a_story_replays_exactly_from_its_seed() {
    let script = || vec![(6.0, Action::Remove("c".into()))];
    let (a, _) = run(script(), 7);
    let (b, _) = run(script(), 7);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.arrivals, b.arrivals);
}
