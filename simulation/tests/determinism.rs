//! Same seed ⇒ byte-identical trace; different seeds ⇒ different traces.

use burrow_sim::scenario::{self, RunOptions, Scenario};

fn lossy() -> Scenario {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/netcheck-lossy-wifi.toml"
    ))
    .unwrap();
    Scenario::from_toml(&text).unwrap()
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    for s in [
        lossy(),
        scenario::netcheck_for_preset("cgnat").unwrap(),
        scenario::netcheck_for_preset("hard").unwrap(),
    ] {
        let opts = RunOptions {
            capture: false,
            keep_trace: true,
        };
        let (a, ra) = scenario::run(&s, 11, &opts).unwrap();
        let (b, rb) = scenario::run(&s, 11, &opts).unwrap();
        let (c, _) = scenario::run(&s, 12, &opts).unwrap();
        assert_eq!(
            ra.trace_lines(),
            rb.trace_lines(),
            "{}: traces differ for one seed",
            s.name
        );
        assert_eq!(a.trace_hash, b.trace_hash);
        assert_eq!(a.result, b.result);
        assert!(a.events > 10, "{}: a trace worth comparing", s.name);
        assert_ne!(
            a.trace_hash, c.trace_hash,
            "{}: seeds 11 and 12 gave the same trace",
            s.name
        );
    }
}

#[test]
fn seeds_drive_nat_port_choices() {
    // A random-port NAT picks different external ports under different seeds.
    let s = scenario::netcheck_for_preset("hard").unwrap();
    let opts = RunOptions::default();
    let globals: std::collections::BTreeSet<String> = (1..=5)
        .map(|seed| {
            scenario::run(&s, seed, &opts).unwrap().0.result.unwrap()["global_v4"].to_string()
        })
        .collect();
    assert!(globals.len() >= 4, "{globals:?}");
}
