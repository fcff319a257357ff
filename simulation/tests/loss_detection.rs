//! Fast loss detection on an active direct path: a path cut silently loses at most
//! 3 × RTT + 50 ms of traffic (50 ms RTT), and a path that keeps answering costs no relay
//! traffic at all.

use std::time::Duration;

use burrow_sim::fallback::{budget, run_seed};
use burrow_sim::fastnet::{run, Disruption, FastConfig};
use burrow_sim::preset;

/// Two easy NATs, 50 application packets/s each way, for `secs` simulated seconds.
fn easy_pair_with_data(seed: u64, secs: u64) -> FastConfig {
    let chain = |n: &str| preset::get(n).expect("preset").chain;
    let mut c = FastConfig::new([chain("easy"), chain("easy")], seed);
    c.data_interval = Some(Duration::from_millis(20));
    c.duration = Duration::from_secs(secs);
    c
}

#[test]
fn a_silently_cut_direct_path_loses_at_most_three_round_trips_and_50_ms() {
    for seed in 1..=5 {
        let r = run_seed(seed);
        assert!(r.fell_back, "seed {seed}: the cut path was left: {r:?}");
        assert!(
            r.direct_again,
            "seed {seed}: direct again after the cut: {r:?}"
        );
        for node in 0..2 {
            assert!(
                r.lost_time[node] <= budget(),
                "seed {seed}: node {node} lost {:?} of traffic (budget {:?}): {r:?}",
                r.lost_time[node],
                budget()
            );
            assert!(
                r.duplicated[node] > 0,
                "seed {seed}: the doubt sent copies: {r:?}"
            );
        }
    }
}

#[test]
fn a_path_that_keeps_answering_costs_no_relay_traffic() {
    for seed in 1..=3 {
        let c = easy_pair_with_data(seed, 40);
        let o = run(&c);
        assert!(o.direct, "seed {seed}");
        assert_eq!(o.data_sent, o.data_received, "seed {seed}");
        assert_eq!(
            o.doubt_duplicated,
            [0, 0],
            "seed {seed}: no copies over the relay"
        );
        assert!(
            o.explanation.iter().all(|l| !l.contains("doubt")),
            "seed {seed}: no doubt on a working path: {:#?}",
            o.explanation
        );
    }
}

#[test]
fn a_path_answered_only_over_the_relay_cannot_keep_us_sending_twice() {
    // A middlebox (or a hostile peer) eats WireGuard on the direct path and lets pings
    // through: answers come only over DERP, so the doubt never ends on its own. The data-stall
    // demotion (15 s) bounds the copies; after it DERP alone carries the traffic.
    let mut c = easy_pair_with_data(3, 60);
    c.disruptions = vec![(
        Duration::from_secs(10),
        Disruption::DropData(Duration::from_secs(45)),
    )];
    let o = run(&c);
    let demoted = o.timeline.iter().any(|l| l.contains("-> Relay"));
    assert!(demoted, "{:#?}", o.timeline);
    for node in 0..2 {
        // 50 packets/s for at most the 15 s stall, then none.
        assert!(
            o.doubt_duplicated[node] > 0 && o.doubt_duplicated[node] <= 15 * 50 + 10,
            "node {node}: {} copies",
            o.doubt_duplicated[node]
        );
    }
    // Two doubts' worth of loss each way: the first, and the one after its pong, which
    // recurs into the data stall.
    assert!(o.data_sent - o.data_received <= 2 * 2 * 10, "{:?}", o.lost);
}

#[test]
fn a_path_that_eats_data_one_way_is_left_by_the_side_it_starves_within_two_doubts() {
    // WireGuard toward node 1 is eaten on the direct path (disco passes); node 1's packets
    // reach node 0 directly. Node 1 hears nothing on the path: its doubt ends only on a pong
    // and comes back, and doubt that recurs is a data stall, so node 1
    // leaves the path within a second rather than after the 15 s stall, and nothing it sends
    // is lost. (Node 0 cannot tell from independent traffic that its packets vanish: with TCP
    // the acknowledgements would stop and its own doubt would follow.)
    for seed in 1..=3 {
        let mut c = easy_pair_with_data(seed, 30);
        c.disruptions = vec![(
            Duration::from_secs(10),
            Disruption::DropDataTo(1, Duration::from_secs(15)),
        )];
        let o = run(&c);
        let left = o
            .timeline
            .iter()
            .find(|l| l.contains("node1 path Direct") && l.contains("-> Relay"))
            .and_then(|l| {
                l.split_whitespace()
                    .next()?
                    .trim_end_matches('s')
                    .parse::<f64>()
                    .ok()
            });
        assert!(
            left.is_some_and(|t| (10.0..11.0).contains(&t)),
            "seed {seed}: node 1 left the path at {left:?}: {:#?}",
            o.timeline
        );
        assert_eq!(
            o.lost_by_node[1], 0,
            "seed {seed}: node 1's packets all arrive"
        );
    }
}
