//! The chaos soak's checks (the full soak is `cargo xtask sim --soak`; CI runs a reduced one in
//! release with the matrix): a short run passes, and the checker catches what it must.

use std::time::Duration;

use burrow_sim::fastnet::{Disruption, FastNet};
use burrow_sim::fastnet::{FastConfig, FastOutcome};
use burrow_sim::soak::{self, judge, soak_config, Footprints};

/// Runs a soak config to its end with footprints sampled each simulated minute (all counted as
/// the early part).
fn run(a: &str, b: &str, seed: u64, minutes: u64) -> (FastConfig, FastOutcome, Footprints) {
    let c = soak_config(a, b, seed, Duration::from_secs(60 * minutes)).expect("presets exist");
    let mut net = FastNet::new(&c);
    let mut f = Footprints::default();
    let mut t = Duration::ZERO;
    while net.drive_until(t) {
        for s in 0..2 {
            f.sample(s, false, net.node(s).footprint());
        }
        t += Duration::from_secs(60);
    }
    (c, net.finish(), f)
}

#[test]
fn a_short_soak_with_every_kind_of_disruption_keeps_the_invariants() {
    // An hour, disruptions every 10 minutes on average; the plan is seeded, so it is the same
    // every run, and it must hold disruptions of several kinds for the test to mean something.
    let r = soak::run_one("easy", "easy", 3, Duration::from_secs(3600));
    assert!(r.passed(), "{:#?}", r.failures);
    assert!(r.sent > 10_000, "traffic flowed: {}", r.sent);
    assert!(r.disruptions.len() >= 3, "{:?}", r.disruptions);
    assert!(r.direct_share > 0.8, "{}", r.direct_share);
}

#[test]
fn the_checker_flags_loss_outside_every_window_and_excuses_it_inside() {
    let (c, mut o, f) = run("easy", "easy", 5, 20);
    let clean = judge(("easy".into(), "easy".into()), 5, &c, &o, f);
    assert!(clean.passed(), "{:#?}", clean.failures);
    // A packet lost at a time no disruption explains is a failure: a time traffic flows, no
    // disruption comes within a second after, and every one before it met traffic (its window
    // starts at the first packet after it) more than 20 s earlier.
    let first_send_from = |d: Duration| {
        c.data_active
            .iter()
            .find(|w| d < w.1)
            .map_or(Duration::MAX, |w| d.max(w.0))
    };
    let quiet = (1..)
        .map(|k| Duration::from_secs(60 + 7 * k))
        .take_while(|t| *t < c.duration)
        .find(|&t| {
            let active = c.data_active.iter().any(|w| w.0 <= t && t < w.1);
            active
                && c.disruptions.iter().all(|&(d, _)| {
                    d > t + Duration::from_secs(1)
                        || first_send_from(d) + Duration::from_secs(20) < t
                })
        })
        .expect("a quiet second");
    o.lost_sends[0].push((quiet, true));
    let r = judge(("easy".into(), "easy".into()), 5, &c, &o, f);
    assert_eq!(r.unexcused, 1, "{r:#?}");
    assert!(!r.passed());
    o.lost_sends[0].pop();
    // One lost right after a NAT flush (within the detection window) is excused.
    let mut c2 = c.clone();
    c2.disruptions.push((quiet, Disruption::FlushNat(1)));
    c2.disruptions.sort_by_key(|d| d.0);
    o.lost_sends[0].push((quiet + Duration::from_millis(50), true));
    let r = judge(("easy".into(), "easy".into()), 5, &c2, &o, f);
    assert_eq!((r.unexcused, r.excused), (0, clean.excused + 1), "{r:#?}");
    // A DERP restart excuses relayed packets only: one sent on the direct path is not.
    let mut c3 = c.clone();
    c3.disruptions
        .push((quiet, Disruption::DerpRestart(Duration::from_secs(10))));
    c3.disruptions.sort_by_key(|d| d.0);
    o.lost_sends[0].pop();
    o.lost_sends[0].push((quiet + Duration::from_secs(5), false));
    o.lost_sends[0].push((quiet + Duration::from_secs(5), true));
    let r = judge(("easy".into(), "easy".into()), 5, &c3, &o, f);
    assert_eq!((r.unexcused, r.excused), (1, clean.excused + 1), "{r:#?}");
}

#[test]
fn the_checker_flags_state_that_grows_and_a_leak() {
    let (c, mut o, f) = run("easy", "easy", 6, 10);
    assert!(f.early[0] > 0 && f.peak[0] >= f.early[0], "{f:?}");
    let grown = Footprints {
        late: [f.early[0] + soak::FOOTPRINT_SLACK + 1, f.early[1]],
        ..f
    };
    let r = judge(("easy".into(), "easy".into()), 6, &c, &o, grown);
    assert!(
        r.failures.iter().any(|f| f.contains("node0's state grew")),
        "{r:#?}"
    );
    let huge = Footprints {
        peak: [f.peak[0], soak::MAX_FOOTPRINT + 1],
        ..f
    };
    let r = judge(("easy".into(), "easy".into()), 6, &c, &o, huge);
    assert!(
        r.failures.iter().any(|f| f.contains("node1 held")),
        "{r:#?}"
    );
    o.key_leaked = true;
    let r = judge(("easy".into(), "easy".into()), 6, &c, &o, f);
    assert!(
        r.failures.iter().any(|f| f.contains("private key")),
        "{r:#?}"
    );
}
