//! WireGuard rekeys under traffic lose nothing: both sides rekey at once (REKEY_AFTER_TIME on
//! both initiator keypairs), over a direct path and over DERP, with jitter reordering packets.

use std::time::Duration;

use burrow_sim::fastnet::{run, FastConfig};
use burrow_sim::preset;

fn config(a: &str, b: &str, seed: u64) -> FastConfig {
    let chain = |n: &str| preset::get(n).expect("preset").chain;
    let mut c = FastConfig::new([chain(a), chain(b)], seed);
    c.data_interval = Some(Duration::from_millis(20));
    c.duration = Duration::from_secs(400);
    c
}

#[test]
fn simultaneous_rekeys_lose_no_packet() {
    for (a, b) in [("easy", "easy"), ("udp-blocked", "easy")] {
        for seed in 1..=3 {
            let mut c = config(a, b, seed);
            c.jitter = Duration::from_millis(5);
            let o = run(&c);
            let handshakes = o
                .timeline
                .iter()
                .filter(|l| l.contains("handshake done"))
                .count();
            eprintln!(
                "{a}~{b} seed {seed}: {} handshakes, lost {:?}",
                handshakes, o.lost_by_node
            );
            assert!(
                handshakes >= 6,
                "{a}~{b} seed {seed}: rekeys happened: {handshakes}"
            );
            assert_eq!(
                o.data_sent, o.data_received,
                "{a}~{b} seed {seed}: lost {:?}",
                o.lost
            );
        }
    }
}
