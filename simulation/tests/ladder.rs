//! The degradation ladder's checks on a few cells (the whole ladder runs in `cargo xtask sim
//! --ladder`, and in CI's reduced matrix): the worst rungs still reach a direct path and move
//! data, and a link that carries nothing fails the cell.

use burrow_sim::fastnet::GilbertElliott;
use burrow_sim::grid::Expectation;
use burrow_sim::ladder::{run_cell, rungs, Rung, CLASSES};

fn rung(name: &str) -> Rung {
    rungs()
        .expect("rung files parse")
        .into_iter()
        .find(|r| r.name == name)
        .expect("a rung of that name")
}

#[test]
fn the_absurd_rung_still_punches_through_and_moves_data() {
    let c = run_cell(&rung("absurd"), "easy", "easy", &[1]);
    assert!(c.passed(), "{:?}", c.failures);
    let r = &c.runs[0];
    assert!(r.direct && r.goodput_kbit > 0.0, "{r:?}");
    // The link really was absurd: about 40 % of node 0's datagrams lost each way.
    assert!(r.link_loss[0] > 0.25 && r.link_loss[1] > 0.25, "{r:?}");
}

#[test]
fn congested_cellular_against_a_hard_nat_probes_its_way_direct() {
    let c = run_cell(&rung("congested-cellular"), "easy", "hard", &[2]);
    assert!(c.passed(), "{:?}", c.failures);
    assert_eq!(c.direct, 1);
    // The bottleneck's queue showed up in the transfer's round trip (300 ms of buffer).
    let srtt = c.runs[0].srtt_ms.expect("a round trip");
    assert!(srtt > 150.0, "{srtt} ms");
}

#[test]
fn udp_blocked_on_a_satellite_link_stays_on_derp_and_moves_data() {
    let c = run_cell(&rung("satellite"), "udp-blocked", "udp-blocked", &[1]);
    assert_eq!(c.expected, Expectation::Relay);
    assert!(c.passed(), "{:?}", c.failures);
    assert!(c.runs[0].goodput_kbit > 1.0);
}

#[test]
fn a_link_that_carries_nothing_fails_its_cell() {
    let mut dead = rung("lan");
    dead.duration_s = Some(5.0);
    dead.link.loss = Some(GilbertElliott {
        good_to_bad: 1.0,
        bad_to_good: 0.0,
        loss_good: 1.0,
        loss_bad: 1.0,
    });
    let c = run_cell(&dead, "easy", "easy", &[1]);
    assert!(!c.passed());
    assert!(
        c.failures.iter().any(|f| f.contains("never got there")),
        "{:?}",
        c.failures
    );
    assert!(CLASSES.iter().any(|(a, b)| *a == "easy" && *b == "easy"));
}
