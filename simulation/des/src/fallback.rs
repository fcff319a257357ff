//! Fallback loss: a direct path between two easy NATs is cut silently while data flows each
//! way at 50 packets/s over a 50 ms round trip; what each direction loses before the relay
//! carries it (fast loss detection), and what the duplicates cost.

use std::time::Duration;

use crate::fastnet::{run, Disruption, FastConfig};
use crate::preset;

/// The interval between application packets, each way.
pub const INTERVAL: Duration = Duration::from_millis(20);
/// The round trip between the two nodes.
pub const RTT: Duration = Duration::from_millis(50);
/// When the path is cut, and for how long.
pub const CUT_AT: Duration = Duration::from_secs(20);
/// See [`CUT_AT`].
pub const CUT_FOR: Duration = Duration::from_secs(20);

/// One seed's run.
#[derive(Debug, Clone)]
pub struct FallbackRun {
    /// The seed.
    pub seed: u64,
    /// Application packets node 0 → 1 and node 1 → 0 lost.
    pub lost: [u64; 2],
    /// The traffic they stand for: packets lost × [`INTERVAL`].
    pub lost_time: [Duration; 2],
    /// Datagrams each node also sent over the relay while the path was in doubt.
    pub duplicated: [u64; 2],
    /// The path was left for the relay during the cut.
    pub fell_back: bool,
    /// Direct again at the end.
    pub direct_again: bool,
}

/// Runs one seed.
pub fn run_seed(seed: u64) -> FallbackRun {
    let chain = |n: &str| preset::get(n).expect("preset").chain;
    let mut c = FastConfig::new([chain("easy"), chain("easy")], seed);
    c.one_way = RTT / 4;
    c.data_interval = Some(INTERVAL);
    c.duration = CUT_AT + CUT_FOR + Duration::from_secs(20);
    c.disruptions = vec![(CUT_AT, Disruption::CutDirect(CUT_FOR))];
    let o = run(&c);
    let lost = o.lost_by_node;
    let time = |n: u64| INTERVAL * u32::try_from(n).unwrap_or(u32::MAX);
    FallbackRun {
        seed,
        lost,
        lost_time: [time(lost[0]), time(lost[1])],
        duplicated: o.doubt_duplicated,
        fell_back: o.timeline.iter().any(|l| l.contains("-> Relay")),
        direct_again: o.direct,
    }
}

/// The budget the issue sets: 3 round trips and 50 ms of traffic.
pub fn budget() -> Duration {
    3 * RTT + Duration::from_millis(50)
}
