//! The node engine across every pair of NAT presets, on the discrete-event network: the grid on
//! a reduced seed count (the full one, the hard–hard long run and the time-to-direct targets run
//! with `cargo xtask sim --matrix`, which `cargo xtask test` also runs on fewer seeds), the
//! easy–hard birthday curve against theory, fallback and recovery after disruptions.

use std::time::Duration;

use burrow_sim::fastnet::{run, Disruption, FastConfig};
use burrow_sim::grid::{all_pairs, easy_hard_curve, parallel, run_cell, Expectation};
use burrow_sim::preset;

fn chain(name: &str) -> Vec<burrow_sim::nat::NatConfig> {
    preset::get(name).expect("preset").chain
}

#[test]
fn every_pair_of_presets_reaches_its_expected_path() {
    let pairs = all_pairs();
    let seeds: Vec<u64> = (1..=2).collect();
    let cells = parallel(&pairs, 2, |(a, b)| run_cell(a, b, &seeds));
    let mut failed = Vec::new();
    for c in &cells {
        for f in &c.failures {
            failed.push(format!(
                "{}~{} {f}: replay with `cargo xtask sim --pair {}:{} --seed N`",
                c.a, c.b, c.a, c.b
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // The grid is not vacuous: each kind of outcome occurs, and direct cells really are direct.
    let kinds = |e| cells.iter().filter(|c| c.expected == e).count();
    assert_eq!(
        kinds(Expectation::Relay),
        21,
        "udp-blocked's row and column"
    );
    assert!(kinds(Expectation::LongRun) >= 8);
    let easy = cells
        .iter()
        .find(|c| c.a == "easy" && c.b == "easy")
        .unwrap();
    assert_eq!(easy.direct, seeds.len());
    assert!(easy.ttd_median_s.unwrap() < 0.5);
    let hard = cells
        .iter()
        .find(|c| c.a == "easy" && c.b == "hard")
        .unwrap();
    assert_eq!(hard.direct, seeds.len());
    assert!(hard.probes_median > 0, "easy~hard needs birthday probes");
    let seq = cells
        .iter()
        .find(|c| c.a == "hard-sequential" && c.b == "easy")
        .unwrap();
    assert_eq!(
        (seq.direct, seq.probes_median),
        (seeds.len(), 0),
        "port prediction, no probes"
    );
    let both = cells
        .iter()
        .find(|c| c.a == "hard-sequential" && c.b == "hard-sequential")
        .unwrap();
    assert_eq!(
        (both.expected, both.direct, both.probes_median),
        (Expectation::Direct, seeds.len(), 0),
        "mutual port prediction, no probes"
    );
}

#[test]
fn easy_hard_birthday_curve_matches_the_seed() {
    let seeds: Vec<u64> = (1..=200).collect();
    let c = easy_hard_curve(&seeds, 2);
    let at = |x: f64| c.points.iter().find(|p| p.x == x).unwrap();
    // Tailscale, "How NAT traversal works" (2020): ~50 % after 174 probes, ~98 % after 1,024.
    assert!(
        (at(174.0).measured - 0.5).abs() <= at(174.0).tolerance,
        "{c:?}"
    );
    assert!(at(1024.0).measured >= 0.98 - at(1024.0).tolerance, "{c:?}");
    assert!(c.consistent, "{c:?}");
    assert!(c.median_s.unwrap() < 3.0, "{c:?}");
    assert!(c.peak_sessions <= burrow_sim::grid::TABLE_BUDGET);
}

fn with_data(a: &str, b: &str, seed: u64, secs: u64) -> FastConfig {
    let mut c = FastConfig::new([chain(a), chain(b)], seed);
    c.data_interval = Some(Duration::from_millis(20));
    c.duration = Duration::from_secs(secs);
    c
}

#[test]
fn nat_rebinding_is_re_punched() {
    for seed in 1..=3 {
        let mut c = with_data("easy", "port-restricted-cone", seed, 60);
        c.disruptions = vec![(Duration::from_secs(10), Disruption::FlushNat(1))];
        c.measure_from = Duration::from_secs(30);
        let o = run(&c);
        assert!(o.direct, "seed {seed}: {o:?}");
        assert!(o.switches > 2, "seed {seed}: the path moved: {o:?}");
        assert_eq!(
            o.tail_sent, o.tail_received,
            "seed {seed}: data flows after"
        );
    }
}

#[test]
fn a_dead_direct_path_falls_back_to_derp_and_comes_back() {
    for seed in 1..=3 {
        let mut c = with_data("easy", "easy", seed, 60);
        c.disruptions = vec![(
            Duration::from_secs(10),
            Disruption::CutDirect(Duration::from_secs(20)),
        )];
        c.measure_from = Duration::from_secs(45);
        let o = run(&c);
        let fell_back = o.timeline.iter().any(|l| l.contains("-> Relay"));
        assert!(fell_back, "seed {seed}: {:#?}", o.timeline);
        assert!(
            o.direct,
            "seed {seed}: upgraded again after the cut: {:#?}",
            o.timeline
        );
        assert_eq!(o.tail_sent, o.tail_received, "seed {seed}");
        // Until the cut path is in doubt (data unanswered for 3 round trips), packets go into
        // the void; from then on DERP carries a copy: 9 packets each way at 50/s.
        let lost = o.data_sent - o.data_received;
        assert!(lost <= 2 * 10, "seed {seed}: {lost} lost");
    }
}

#[test]
fn derp_restart_loses_nothing_on_a_direct_path_and_relay_recovers() {
    // Direct: a DERP restart does not touch the data path.
    let mut c = with_data("easy", "easy", 7, 30);
    c.disruptions = vec![(
        Duration::from_secs(10),
        Disruption::DerpRestart(Duration::from_secs(5)),
    )];
    let o = run(&c);
    assert!(o.direct);
    assert_eq!(o.data_sent, o.data_received);
    // Relay only: packets during the restart are lost (DERP is down), then traffic resumes.
    let mut c = with_data("udp-blocked", "easy", 7, 30);
    c.disruptions = vec![(
        Duration::from_secs(10),
        Disruption::DerpRestart(Duration::from_secs(5)),
    )];
    c.measure_from = Duration::from_secs(16);
    let o = run(&c);
    assert!(!o.direct);
    assert!(o.data_received < o.data_sent);
    assert_eq!(o.tail_sent, o.tail_received);
}

#[test]
fn same_seed_same_run_different_seed_different_run() {
    let a = run(&with_data("easy", "hard", 11, 10));
    let b = run(&with_data("easy", "hard", 11, 10));
    let c = run(&with_data("easy", "hard", 12, 10));
    assert_eq!(a.timeline, b.timeline);
    assert_ne!(a.timeline, c.timeline);
}

#[test]
fn a_path_that_eats_data_is_demoted_and_retried_on_probation() {
    let mut c = with_data("easy", "easy", 5, 120);
    c.disruptions = vec![(
        Duration::from_secs(10),
        Disruption::DropData(Duration::from_secs(40)),
    )];
    c.measure_from = Duration::from_secs(30);
    c.duration = Duration::from_secs(120);
    let o = run(&c);
    let demoted = o
        .timeline
        .iter()
        .position(|l| l.contains("node0 path Direct") && l.contains("-> Relay"));
    assert!(
        demoted.is_some(),
        "the stalled path is left: {:#?}",
        o.timeline
    );
    assert!(
        o.direct,
        "back on the direct path once it carries data: {:#?}",
        o.timeline
    );
    // Data unanswered for 3 round trips puts the path in doubt: DERP carries a copy of
    // everything until the probe's pong (disco passes); data then gets 3 round trips again,
    // goes unanswered again, and the doubt recurs: a data stall, the path is left. Two doubts'
    // worth is lost (9 packets each way each at 50/s and 50 ms RTT), nothing after.
    let lost = o.data_sent - o.data_received;
    assert!(lost <= 2 * 2 * 10, "{lost} lost: {:?}", o.lost);
    assert!(
        o.lost.iter().all(|(_, _, at)| at.as_secs_f64() < 10.5),
        "only at the start of the eating: {:?}",
        o.lost
    );
    let stalled = o
        .explanation
        .iter()
        .any(|l| l.contains("DataStalled") || l.contains("Validated"));
    assert!(stalled, "{:?}", o.explanation);
}
