//! Property tests of the node engine under a hostile network: loss, reordering (jitter),
//! duplication, NAT rebinding, mapping expiry (long silences with no data) and DERP restarts.
//! Whatever happens, the engine never panics, never puts a private key or a plaintext packet on
//! any wire, and once the network settles it ends on a working path — direct or relay.

use std::time::Duration;

use burrow_sim::fastnet::{run, Disruption, FastConfig};
use burrow_sim::grid::{expected, target, Expectation};
use burrow_sim::preset;
use proptest::prelude::*;

fn presets() -> impl Strategy<Value = &'static str> {
    prop::sample::select(preset::NAMES.to_vec())
}

fn disruption() -> impl Strategy<Value = (u64, Disruption)> {
    (
        1u64..40,
        prop_oneof![
            (0usize..2).prop_map(Disruption::FlushNat),
            (1u64..8).prop_map(|s| Disruption::DerpRestart(Duration::from_secs(s))),
            (1u64..15).prop_map(|s| Disruption::CutDirect(Duration::from_secs(s))),
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn engine_survives_a_hostile_network(
        a in presets(),
        b in presets(),
        seed in any::<u64>(),
        loss in 0.0f64..0.05,
        duplicate in 0.0f64..0.05,
        jitter_ms in 0u64..30,
        data in prop::bool::ANY,
        disruptions in prop::collection::vec(disruption(), 0..4),
    ) {
        let chains = [preset::get(a).unwrap().chain, preset::get(b).unwrap().chain];
        let expectation = expected(&chains[0], &chains[1]);
        let mut c = FastConfig::new(chains, seed);
        c.loss = loss;
        c.duplicate = duplicate;
        c.jitter = Duration::from_millis(jitter_ms);
        // Without data the NAT mappings live on disco heartbeats alone (expiry is tested).
        c.data_interval = data.then_some(Duration::from_millis(50));
        c.disruptions = disruptions
            .iter()
            .map(|(t, d)| (Duration::from_secs(*t), *d))
            .collect();
        // Disruptions end by 55 s; then 45 s to settle, and the last 15 s are measured.
        c.duration = Duration::from_secs(100);
        c.measure_from = Duration::from_secs(83);
        let o = run(&c);
        prop_assert!(!o.key_leaked, "a private key went on a wire");
        prop_assert!(!o.plaintext_leaked, "plaintext went on a wire");
        if data {
            // A working path: the measured tail arrives, up to the links' own loss.
            let floor = (o.tail_sent as f64 * (1.0 - loss).powi(2) * 0.8) as u64;
            prop_assert!(
                o.tail_received >= floor,
                "{a}~{b}: {} of {} delivered at the end; {:#?}",
                o.tail_received, o.tail_sent, o.timeline
            );
        }
        if expectation == Expectation::Relay {
            prop_assert!(!o.direct);
        }
        let quick = target(&preset::get(a).unwrap().chain, &preset::get(b).unwrap().chain)
            .is_some_and(|(class, _)| class == "both mappings fixed");
        if quick {
            // An idle path lives on heartbeats alone: on links that keep losing packets to the
            // end, three lost in a row can still demote it in the last seconds, with no upgrade
            // round (10 s) left to win it back (found in CI: full-cone~open, 4.3 % loss, no
            // data, demoted at 97.6 s). That is the path machine's evidence rule, not a stuck
            // engine; a demotion earlier than that must have been won back.
            let late_demotion = !data
                && o.timeline.iter().any(|l| {
                    l.contains("-> Relay")
                        && l.trim_start()
                            .split('s')
                            .next()
                            .and_then(|t| t.parse::<f64>().ok())
                            .is_some_and(|t| t >= 90.0)
                });
            prop_assert!(
                o.direct || late_demotion,
                "{a}~{b} should be direct again: {:#?}",
                o.timeline
            );
        }
    }
}

/// Found by the property above in CI: on a link losing about 9 % each way, three heartbeats in
/// a row went unanswered 5 s before the end; the path was declared dead at once and not won
/// back in time. A path now dies only after 5 s without any answer as well.
#[test]
fn a_lossy_link_is_not_given_up_for_a_few_missed_pongs() {
    let open = || preset::get("open").unwrap().chain;
    let mut c = FastConfig::new([open(), open()], 13759738004304746010);
    c.loss = 0.046343987435215894;
    c.duplicate = 0.004776795140263494;
    c.jitter = Duration::from_millis(13);
    c.data_interval = Some(Duration::from_millis(50));
    c.disruptions = vec![(
        Duration::from_secs(36),
        Disruption::CutDirect(Duration::from_secs(1)),
    )];
    c.duration = Duration::from_secs(100);
    c.measure_from = Duration::from_secs(83);
    let o = run(&c);
    assert!(o.direct, "{:#?}", o.timeline);
    // Neither the loss nor the one-second cut at 36 s costs a path death: while pongs are
    // missing, data goes over the relay as well, and the path stays chosen.
    let deaths = o.timeline.iter().filter(|l| l.contains("-> Relay")).count();
    assert_eq!(deaths, 0, "{:#?}", o.timeline);
}
