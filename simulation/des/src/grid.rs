//! The NAT × NAT grid: two burrow node engines, DERP and two STUN servers over every ordered
//! pair of presets, many seeds each, on the discrete-event network ([`crate::fastnet`]). Each
//! cell's expected outcome comes from the presets' properties; the run fails when a cell
//! differs, loses a packet at a path switch, leaks a key or plaintext, or uses more than 10 %
//! of a 65,536-entry session table. Beside it, the birthday curves against theory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use burrow_punch::success_probability;
use serde::Serialize;

use crate::fastnet::{run, FastConfig, FastOutcome, RelaySite};
use crate::nat::{Dependence, NatConfig};
use crate::preset;

/// What a pair of presets must come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expectation {
    /// A direct path within the run.
    Direct,
    /// DERP only (UDP blocked on a side).
    Relay,
    /// Both mappings vary: the two-sided birthday search finds a path in the long run (see the
    /// hard–hard curve); within one grid run either outcome is right.
    LongRun,
    /// Both sides have IPv6 behind stateful firewalls: a direct IPv6 path within the run, and
    /// IPv6 still in use at its end (whatever IPv4 can do).
    DirectIpv6,
    /// A relay-capable node exists: the pair ends on a peer relay (or direct), never on DERP.
    PeerRelay,
}

/// Which of the grid's tables a cell belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Axis {
    /// IPv4 only.
    Ipv4,
    /// IPv6 added on both sides.
    Ipv6,
    /// A relay-capable open node beside the pair (peer relays).
    PeerRelay,
}

/// The largest share of a 65,536-entry session table any run may use.
pub const TABLE_BUDGET: usize = 65_536 / 10;

fn blocked(chain: &[NatConfig]) -> bool {
    chain.iter().any(|c| c.block_udp)
}

fn mapping_fixed(chain: &[NatConfig]) -> bool {
    chain
        .iter()
        .all(|c| c.mapping == Dependence::EndpointIndependent)
}

/// The node's gateway (a lone box) maps ports for it with some protocol it does not refuse:
/// its mapped endpoint takes packets from anyone. (Behind a second NAT the mapping's address
/// is private and helps no one outside.)
pub fn maps_publicly(chain: &[NatConfig]) -> bool {
    chain.len() == 1
        && chain[0].gateway.as_ref().is_some_and(|g| {
            !g.deny && (g.pmp || g.pcp || (g.upnp.is_some() && g.fail_add.is_none()))
        })
}

/// Every box of the chain maps per destination with sequential ports: the next port is
/// predictable (mutual port prediction).
pub fn sequential(chain: &[NatConfig]) -> bool {
    !mapping_fixed(chain)
        && chain
            .iter()
            .all(|x| matches!(x.allocation, crate::nat::PortAllocation::Sequential { .. }))
}

/// The expected outcome of a pair, from the presets' properties alone.
pub fn expected(a: &[NatConfig], b: &[NatConfig]) -> Expectation {
    if blocked(a) || blocked(b) {
        return Expectation::Relay;
    }
    // A port mapping on one side: the other side's pings reach it from any socket.
    if maps_publicly(a) || maps_publicly(b) {
        return Expectation::Direct;
    }
    // A fixed mapping on one side: that side's endpoint is known, so the other side reaches
    // it directly (any NAT), through predicted ports (sequential), or by birthday probing.
    if mapping_fixed(a) || mapping_fixed(b) {
        return Expectation::Direct;
    }
    // Both sequential: each predicts the other's next port (mutual port prediction).
    if sequential(a) && sequential(b) {
        return Expectation::Direct;
    }
    Expectation::LongRun
}

/// The time-to-direct target class of a pair and its median target in seconds: 0.5 s when both
/// mappings are fixed, 3 s when one side is hard (sequential: port prediction; random: birthday
/// probing at 100 probes/s). Medians are judged over every seed of every cell in the class.
pub fn target(a: &[NatConfig], b: &[NatConfig]) -> Option<(&'static str, f64)> {
    match expected(a, b) {
        Expectation::Direct if mapping_fixed(a) && mapping_fixed(b) => {
            Some(("both mappings fixed", 0.5))
        }
        // NAT-PMP and PCP answer at once; UPnP after the others' 250 ms.
        Expectation::Direct if maps_publicly(a) || maps_publicly(b) => {
            Some(("a side's router maps its port (NAT-PMP, PCP, UPnP)", 1.0))
        }
        Expectation::Direct if sequential(a) && sequential(b) => Some((
            "both sides hard, sequential ports (mutual port prediction)",
            3.0,
        )),
        Expectation::Direct if sequential(a) || sequential(b) => {
            Some(("one side hard, sequential ports (port prediction)", 3.0))
        }
        Expectation::Direct => {
            // The fixed side's filter: if it admits the hard side's packets, no probing is needed.
            let fixed = if mapping_fixed(a) { a } else { b };
            if fixed
                .iter()
                .all(|c| c.filtering != Dependence::AddressAndPortDependent)
            {
                Some(("one side hard, the other's filter admits it", 3.0))
            } else {
                Some(("easy–hard, random ports (birthday probing)", 3.0))
            }
        }
        _ => None,
    }
}

/// The time-to-direct target of the IPv6 axis: simultaneous pings open both stateful
/// firewalls in one round trip.
pub const IPV6_TARGET: (&str, f64) = ("IPv6 on both sides, through stateful firewalls", 0.5);

/// The time-to-peer-relay target of the peer-relay axis: allocation and binding take a few
/// round trips over DERP and UDP once both NATs are known.
pub const RELAY_TARGET: (&str, f64) = ("both hard, no mapping: through a peer relay", 3.0);

/// A time-to-direct target judged over a class of cells.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// The class.
    pub class: String,
    /// Target for the median, seconds.
    pub target_s: f64,
    /// Measured median and 95th percentile over the class, seconds.
    pub median_s: f64,
    /// See `median_s`.
    pub p95_s: f64,
    /// Runs pooled.
    pub runs: usize,
    /// Whether the median is under the target (judged only with enough runs).
    pub met: bool,
}

/// Pools the cells' times to direct by target class.
pub fn target_checks(cells: &[Cell]) -> Vec<TargetCheck> {
    let mut classes: Vec<(String, f64, Vec<f64>)> = Vec::new();
    for c in cells {
        let Some((class, t)) = c.target else { continue };
        match classes.iter_mut().find(|x| x.0 == class) {
            Some(x) => x.2.extend(&c.ttd_s),
            None => classes.push((class.to_string(), t, c.ttd_s.clone())),
        }
    }
    classes
        .into_iter()
        .map(|(class, target_s, mut v)| {
            v.sort_by(f64::total_cmp);
            let median_s = percentile(&v, 0.5).unwrap_or(f64::INFINITY);
            TargetCheck {
                met: median_s < target_s || v.len() < MIN_SEEDS_FOR_TARGETS,
                p95_s: percentile(&v, 0.95).unwrap_or(f64::INFINITY),
                runs: v.len(),
                class,
                target_s,
                median_s,
            }
        })
        .collect()
}

/// One cell's figures over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Preset of node 0.
    pub a: String,
    /// Preset of node 1.
    pub b: String,
    /// Both sides have IPv6 too (the grid's IPv6 axis).
    pub ipv6: bool,
    /// A relay-capable node exists (the grid's peer-relay axis): times are to a peer relay.
    pub peer_relay: bool,
    /// The largest gap, over the seeds, between the chosen relay's round trip and the best
    /// possible relay's (milliseconds).
    pub relay_penalty_ms: Option<f64>,
    /// What the presets predict.
    pub expected: Expectation,
    /// The time-to-direct target class and median target, seconds.
    pub target: Option<(&'static str, f64)>,
    /// Every seed's time to direct, seconds (sorted).
    pub ttd_s: Vec<f64>,
    /// Seeds run.
    pub seeds: usize,
    /// Seeds that ended direct.
    pub direct: usize,
    /// Time to direct over the seeds that got there: median and 95th percentile, seconds.
    pub ttd_median_s: Option<f64>,
    /// See `ttd_median_s`.
    pub ttd_p95_s: Option<f64>,
    /// Birthday packets (median over seeds).
    pub probes_median: u64,
    /// Application packets lost (sum over seeds; links are lossless, so any loss is a switch's).
    pub lost: u64,
    /// Application packets sent (sum).
    pub sent: u64,
    /// Peak session-table occupancy of any box in any seed.
    pub peak_sessions: usize,
    /// Route changes (sum).
    pub switches: u64,
    /// Why the cell failed, if it did (with the seed that shows it).
    pub failures: Vec<String>,
}

impl Cell {
    /// The table the cell belongs to.
    pub fn axis(&self) -> Axis {
        match (self.ipv6, self.peer_relay) {
            (_, true) => Axis::PeerRelay,
            (true, false) => Axis::Ipv6,
            (false, false) => Axis::Ipv4,
        }
    }

    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Time-to-direct targets are judged on medians over at least this many seeds.
pub const MIN_SEEDS_FOR_TARGETS: usize = 20;

/// The run configuration of one cell and seed (also what `--pair A:B --seed N` replays). The
/// seed is mixed with the pair's names, so cells do not share their randomness.
pub fn cell_config(a: &str, b: &str, seed: u64) -> Option<FastConfig> {
    let seed = crate::derive_seed(seed, &format!("{a}~{b}"));
    let mut c = FastConfig::new([preset::get(a)?.chain, preset::get(b)?.chain], seed);
    // Long enough for a second birthday attempt after the first one's 30 s back-off.
    c.duration = Duration::from_secs(60);
    c.data_interval = Some(Duration::from_millis(20));
    Some(c)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let k = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[k])
}

/// The run configuration of one cell of the IPv6 axis: the IPv4 cell's networks, with IPv6
/// added on both sides ([`preset::ipv6_access`]).
pub fn cell_config_v6(a: &str, b: &str, seed: u64) -> Option<FastConfig> {
    let mut c = cell_config(a, b, crate::derive_seed(seed, "ipv6"))?;
    c.ipv6 = [Some(preset::ipv6_access(a)?), Some(preset::ipv6_access(b)?)];
    Some(c)
}

/// The peer-relay axis's relay: an open node as far from the core as the two nodes are.
pub fn grid_relay() -> RelaySite {
    RelaySite {
        chain: Vec::new(),
        one_way: Duration::from_micros(12_500),
    }
}

/// The run configuration of one cell of the peer-relay axis: the IPv4 cell's networks, with
/// a relay-capable open node beside them.
pub fn cell_config_relay(a: &str, b: &str, seed: u64) -> Option<FastConfig> {
    let mut c = cell_config(a, b, crate::derive_seed(seed, "peer-relay"))?;
    c.relays = vec![grid_relay()];
    c.duration = Duration::from_secs(20);
    Some(c)
}

/// The grid's peer-relay axis: every cell where neither side's mapping is fixed or mapped
/// (left to the long run without relays).
pub fn relay_pairs() -> Vec<(String, String)> {
    grid_pairs()
        .into_iter()
        .filter(|(a, b)| {
            let (a, b) = (
                preset::get(a).expect("known"),
                preset::get(b).expect("known"),
            );
            expected(&a.chain, &b.chain) == Expectation::LongRun
        })
        .collect()
}

/// Runs one cell of the peer-relay axis over `seeds`: it must end on a peer relay (or direct).
pub fn run_cell_relay(a: &str, b: &str, seeds: &[u64]) -> Cell {
    let outcomes: Vec<(u64, FastOutcome)> = seeds
        .iter()
        .map(|&s| (s, run(&cell_config_relay(a, b, s).expect("known presets"))))
        .collect();
    let mut cell = summarise(
        a,
        b,
        false,
        Expectation::PeerRelay,
        Some(RELAY_TARGET),
        &outcomes,
    );
    cell.peer_relay = true;
    cell
}

/// Runs one cell over `seeds`.
pub fn run_cell(a: &str, b: &str, seeds: &[u64]) -> Cell {
    let chains = [
        preset::get(a).expect("known preset").chain,
        preset::get(b).expect("known preset").chain,
    ];
    let expected_ = expected(&chains[0], &chains[1]);
    let target = target(&chains[0], &chains[1]);
    let outcomes: Vec<(u64, FastOutcome)> = seeds
        .iter()
        .map(|&s| (s, run(&cell_config(a, b, s).expect("known presets"))))
        .collect();
    summarise(a, b, false, expected_, target, &outcomes)
}

/// Runs one cell of the IPv6 axis over `seeds`: it must end direct over IPv6.
pub fn run_cell_v6(a: &str, b: &str, seeds: &[u64]) -> Cell {
    let outcomes: Vec<(u64, FastOutcome)> = seeds
        .iter()
        .map(|&s| (s, run(&cell_config_v6(a, b, s).expect("known presets"))))
        .collect();
    summarise(
        a,
        b,
        true,
        Expectation::DirectIpv6,
        Some(IPV6_TARGET),
        &outcomes,
    )
}

fn summarise(
    a: &str,
    b: &str,
    ipv6: bool,
    expected: Expectation,
    target: Option<(&'static str, f64)>,
    outcomes: &[(u64, FastOutcome)],
) -> Cell {
    let mut failures = Vec::new();
    let mut ttd: Vec<f64> = Vec::new();
    let mut probes: Vec<u64> = Vec::new();
    let mut cell = Cell {
        a: a.into(),
        b: b.into(),
        ipv6,
        peer_relay: false,
        relay_penalty_ms: None,
        expected,
        target,
        ttd_s: Vec::new(),
        seeds: outcomes.len(),
        direct: 0,
        ttd_median_s: None,
        ttd_p95_s: None,
        probes_median: 0,
        lost: 0,
        sent: 0,
        peak_sessions: 0,
        switches: 0,
        failures: Vec::new(),
    };
    for (seed, o) in outcomes {
        if o.direct {
            cell.direct += 1;
        }
        let reached = match expected {
            Expectation::DirectIpv6 => o.time_to_direct_v6,
            Expectation::PeerRelay => o.time_to_peer_relay,
            _ => o.time_to_direct,
        };
        if let (Expectation::PeerRelay, Some(k)) = (expected, o.peer_relay) {
            // The best possible relay's round trip: both legs, both ways, through the core.
            let c = grid_relay();
            let best = (Duration::from_micros(12_500) + c.one_way) * 4;
            if let Some(rtt) = o.relay_rtts.get(k).copied().flatten() {
                let gap = rtt.saturating_sub(best).as_secs_f64() * 1000.0;
                cell.relay_penalty_ms = Some(cell.relay_penalty_ms.map_or(gap, |g| g.max(gap)));
            }
        }
        if let Some(t) = reached {
            ttd.push(t.as_secs_f64());
        }
        probes.push(o.probes);
        let lost = o.data_sent - o.data_received;
        cell.lost += lost;
        cell.sent += o.data_sent;
        cell.switches += o.switches;
        cell.peak_sessions = cell.peak_sessions.max(o.peak_sessions);
        let mut fail = |what: String| failures.push(format!("seed {seed}: {what}"));
        match expected {
            Expectation::Direct if !o.direct => {
                fail(format!("expected direct, ended {:?}", o.routes))
            }
            Expectation::Relay if o.direct || o.time_to_direct.is_some() => {
                fail(format!("expected relay only, got {:?}", o.routes))
            }
            Expectation::DirectIpv6 if !o.direct_v6 || o.time_to_direct_v6.is_none() => {
                fail(format!("expected direct over IPv6, ended {:?}", o.routes))
            }
            Expectation::PeerRelay if !o.direct && o.peer_relay.is_none() => fail(format!(
                "expected a peer relay (or direct), ended {:?}",
                o.routes
            )),
            _ => {}
        }
        if lost > 0 {
            fail(format!(
                "{lost} of {} packets lost on lossless links",
                o.data_sent
            ));
        }
        for leak in o.leaks() {
            fail(leak.into());
        }
        if o.peak_sessions > TABLE_BUDGET {
            fail(format!(
                "{} sessions in one box (more than 10 % of 65,536)",
                o.peak_sessions
            ));
        }
    }
    ttd.sort_by(f64::total_cmp);
    probes.sort();
    cell.ttd_median_s = percentile(&ttd, 0.5);
    cell.ttd_p95_s = percentile(&ttd, 0.95);
    cell.probes_median = probes.get(probes.len() / 2).copied().unwrap_or(0);
    cell.ttd_s = ttd;
    cell.failures = failures;
    cell
}

/// Runs `f` over `items` on `threads` threads, keeping the order.
pub fn parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1).min(items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                out.lock().expect("lock")[i] = Some(r);
            });
        }
    });
    out.into_inner()
        .expect("lock")
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

/// The grid's rows of port-mapping routers: each mapping preset against every preset.
pub fn mapping_pairs() -> Vec<(String, String)> {
    preset::MAPPING_NAMES
        .iter()
        .flat_map(|a| {
            preset::NAMES
                .iter()
                .map(move |b| (a.to_string(), b.to_string()))
        })
        .collect()
}

/// Every cell of the grid: every ordered pair of presets, then the port-mapping rows.
pub fn grid_pairs() -> Vec<(String, String)> {
    let mut v = all_pairs();
    v.extend(mapping_pairs());
    v
}

/// The grid's IPv6 axis: every cell of [`grid_pairs`] again, with IPv6 on both sides.
pub fn ipv6_pairs() -> Vec<(String, String)> {
    grid_pairs()
}

/// Every ordered pair of presets.
pub fn all_pairs() -> Vec<(String, String)> {
    preset::NAMES
        .iter()
        .flat_map(|a| {
            preset::NAMES
                .iter()
                .map(move |b| (a.to_string(), b.to_string()))
        })
        .collect()
}

/// One point of a success curve: measured fraction vs theory.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CurvePoint {
    /// Probes (easy–hard) or seconds (hard–hard).
    pub x: f64,
    /// Fraction of seeds that had succeeded by `x`.
    pub measured: f64,
    /// What birthday theory predicts.
    pub theory: f64,
    /// Three standard errors of the measured fraction (binomial, at the theoretical value).
    pub tolerance: f64,
}

/// A birthday curve.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    /// Which pair.
    pub name: String,
    /// Seeds run.
    pub seeds: usize,
    /// Seeds that succeeded within the run.
    pub succeeded: usize,
    /// The checked points.
    pub points: Vec<CurvePoint>,
    /// The same, densely from 0 to the last checked point, for drawing (not checked: with this
    /// many points some would stray past 3σ by chance).
    pub series: Vec<CurvePoint>,
    /// Median time to direct, seconds.
    pub median_s: Option<f64>,
    /// Peak session-table use of any box.
    pub peak_sessions: usize,
    /// Whether every point lies within its tolerance.
    pub consistent: bool,
}

/// Intervals of a curve's drawn series.
const SERIES_POINTS: u64 = 64;

fn tolerance(p: f64, n: usize) -> f64 {
    // Three binomial standard errors, with a floor for the extremes (p near 0 or 1).
    3.0 * (p * (1.0 - p) / n as f64).sqrt().max(0.5 / n as f64)
}

/// Runs a pair (no application data) over `seeds` until both nodes are direct or `horizon`.
fn until_direct(
    a: &str,
    b: &str,
    seeds: &[u64],
    horizon: Duration,
    threads: usize,
) -> Vec<FastOutcome> {
    parallel(seeds, threads, |&s| {
        let chain = |n: &str| preset::get(n).expect("preset").chain;
        let mut c = FastConfig::new([chain(a), chain(b)], s);
        c.duration = horizon;
        c.stop_when_direct = true;
        run(&c)
    })
}

/// Easy–hard: the easy side's random probes until the first success, over `seeds`, against
/// P(hit within n probes) with the hard side's 256 sockets among the preset's 64,512 ports.
pub fn easy_hard_curve(seeds: &[u64], threads: usize) -> Curve {
    let outcomes = until_direct("easy", "hard", seeds, Duration::from_secs(30), threads);
    let space = 65535 - 1024 + 1;
    let needed: Vec<Option<u64>> = outcomes
        .iter()
        .map(|o| o.time_to_direct.map(|_| o.probes_before_direct[0]))
        .collect();
    let points = [25u64, 50, 100, 174, 250, 400, 600, 1024];
    count_curve("easy–hard", &outcomes, &needed, &points, |k| {
        success_probability(256, k as u32, space)
    })
}

/// A curve over a count (probes, rounds) each seed needed before its first direct path,
/// measured at `points` against `theory`, with the seeds' times to direct.
fn count_curve(
    name: &str,
    outcomes: &[FastOutcome],
    needed: &[Option<u64>],
    points: &[u64],
    theory: impl Fn(u64) -> f64,
) -> Curve {
    let n = outcomes.len();
    let at = |x: u64| {
        let measured =
            needed.iter().filter(|v| v.is_some_and(|v| v <= x)).count() as f64 / n as f64;
        let theory = theory(x);
        CurvePoint {
            x: x as f64,
            measured,
            theory,
            tolerance: tolerance(theory, n),
        }
    };
    let last = points.iter().copied().max().unwrap_or(0);
    let series = (0..=SERIES_POINTS)
        .map(|i| last * i / SERIES_POINTS)
        .map(at)
        .collect();
    let points: Vec<CurvePoint> = points.iter().map(|&x| at(x)).collect();
    let mut ttd: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| o.time_to_direct.map(|t| t.as_secs_f64()))
        .collect();
    ttd.sort_by(f64::total_cmp);
    Curve {
        name: name.into(),
        seeds: n,
        succeeded: ttd.len(),
        consistent: points
            .iter()
            .all(|p| (p.measured - p.theory).abs() <= p.tolerance),
        points,
        series,
        median_s: percentile(&ttd, 0.5),
        peak_sessions: outcomes.iter().map(|o| o.peak_sessions).max().unwrap_or(0),
    }
}

/// The two-sided search's success rate per second: both sides probe `rate` random ports per
/// second from new mappings that live `timeout`; a pair of probes (one each way, within the
/// timeout of each other) meets when both guessed ports match: 1 / space² per pair.
pub fn hard_hard_rate(rate: f64, timeout_s: f64, duty: f64, space: f64) -> f64 {
    2.0 * (rate * duty) * (rate * duty) * timeout_s / (space * space)
}

/// Hard–hard: time to direct over `seeds` (each run up to `horizon`), against
/// 1 − exp(−λ t) with λ from [`hard_hard_rate`].
pub fn hard_hard_curve(seeds: &[u64], horizon: Duration, threads: usize) -> Curve {
    let outcomes = until_direct("hard", "hard", seeds, horizon, threads);
    let n = seeds.len();
    let space = (65535 - 1024 + 1) as f64;
    // Attempts of rate × 30 s destinations, 5 s apart: probing 30 of every 35 s.
    let lambda = hard_hard_rate(100.0, 30.0, 30.0 / 35.0, space);
    let times: Vec<Option<f64>> = outcomes
        .iter()
        .map(|o| o.time_to_direct.map(|t| t.as_secs_f64()))
        .collect();
    let h = horizon.as_secs_f64();
    let at = |t: f64| {
        let measured = times.iter().filter(|x| x.is_some_and(|v| v <= t)).count() as f64 / n as f64;
        let theory = 1.0 - (-lambda * t).exp();
        CurvePoint {
            x: t,
            measured,
            theory,
            tolerance: tolerance(theory, n),
        }
    };
    let points: Vec<CurvePoint> = [0.125, 0.25, 0.5, 0.75, 1.0]
        .iter()
        .map(|f| at(h * f))
        .collect();
    let series = (0..=SERIES_POINTS)
        .map(|i| at(h * i as f64 / SERIES_POINTS as f64))
        .collect();
    let mut ttd: Vec<f64> = times.iter().flatten().copied().collect();
    ttd.sort_by(f64::total_cmp);
    Curve {
        name: "hard–hard".into(),
        seeds: n,
        succeeded: ttd.len(),
        consistent: points
            .iter()
            .all(|p| (p.measured - p.theory).abs() <= p.tolerance),
        points,
        series,
        median_s: percentile(&ttd, 0.5),
        peak_sessions: outcomes.iter().map(|o| o.peak_sessions).max().unwrap_or(0),
    }
}

/// Sequential–random: the search rounds until the first success, over `seeds` (within
/// `horizon`), against P(hit within n rounds) = 1 − (1 − K / 64,512)ⁿ with the random side's
/// K sockets per round toward the sequential side's announced port.
pub fn sequential_random_curve(seeds: &[u64], horizon: Duration, threads: usize) -> Curve {
    let outcomes = until_direct("hard-sequential", "hard", seeds, horizon, threads);
    let k = burrow_punch::PredictionConfig::default().search_sockets as f64;
    let space = (65535 - 1024 + 1) as f64;
    let needed: Vec<Option<u64>> = outcomes
        .iter()
        .map(|o| o.time_to_direct.map(|_| o.rounds_before_direct[0]))
        .collect();
    count_curve(
        "sequential–random",
        &outcomes,
        &needed,
        &[50, 100, 250, 500, 1000],
        |r| 1.0 - (1.0 - k / space).powf(r as f64),
    )
}

/// The grid and the curves of one `--matrix` run.
#[derive(Debug, Clone, Serialize)]
pub struct GridReport {
    /// Every ordered pair.
    pub cells: Vec<Cell>,
    /// Birthday curves.
    pub curves: Vec<Curve>,
    /// Seeds per cell.
    pub seeds: usize,
    /// Time-to-direct targets by class.
    pub targets: Vec<TargetCheck>,
    /// Wall time of the grid and curves, seconds.
    pub wall_s: f64,
    /// The degradation ladder, when it ran.
    pub ladder: Option<crate::ladder::LadderReport>,
}

impl GridReport {
    /// Whether every cell and every curve held.
    pub fn passed(&self) -> bool {
        self.cells.iter().all(Cell::passed)
            && self.curves.iter().all(|c| c.consistent)
            && self.targets.iter().all(|t| t.met)
            && self.ladder.as_ref().is_none_or(|l| l.passed())
    }

    /// One grid table: the IPv4 grid, or its IPv6 or peer-relay axis.
    fn table(&self, axis: Axis, esc: &dyn Fn(&str) -> String) -> String {
        let names = preset::NAMES;
        let mut rows = String::new();
        for a in names.iter().chain(preset::MAPPING_NAMES) {
            rows.push_str(&format!("<tr><th class=\"name\">{a}</th>"));
            for b in names {
                let Some(c) = self
                    .cells
                    .iter()
                    .find(|c| c.a == *a && c.b == *b && c.axis() == axis)
                else {
                    rows.push_str("<td></td>");
                    continue;
                };
                let class = match (c.passed(), c.expected) {
                    (false, _) => "fail",
                    (true, Expectation::Direct) => "direct",
                    (true, Expectation::Relay) => "relay",
                    (true, Expectation::LongRun) => "longrun",
                    (true, Expectation::DirectIpv6) => "direct",
                    (true, Expectation::PeerRelay) => "direct",
                };
                let ms =
                    |x: Option<f64>| x.map_or("–".into(), |v| format!("{:.0} ms", v * 1000.0));
                let mut title = format!(
                    "{a} ~ {b}\nexpected {:?}; direct in {}/{} seeds\ntime to direct: median {}, p95 {}\nbirthday packets (median): {}\npackets lost at switches: {} of {}\npeak session-table use: {} ({:.2} % of 65,536)\nroute changes: {}",
                    c.expected,
                    c.direct,
                    c.seeds,
                    ms(c.ttd_median_s),
                    ms(c.ttd_p95_s),
                    c.probes_median,
                    c.lost,
                    c.sent,
                    c.peak_sessions,
                    c.peak_sessions as f64 * 100.0 / 65536.0,
                    c.switches
                );
                if let Some((class, t)) = c.target {
                    title.push_str(&format!(
                        "\ntarget ({class}): median < {t} s over the class"
                    ));
                }
                for f in &c.failures {
                    title.push_str(&format!("\nFAILED {f}"));
                }
                if let Some(p) = c.relay_penalty_ms {
                    title.push_str(&format!(
                        "\nround trip through the relay above the best possible: {p:.1} ms"
                    ));
                }
                let text = match c.expected {
                    Expectation::Relay => "DERP".to_string(),
                    Expectation::PeerRelay => format!(
                        "relay {}/{}<br><small>{}</small>",
                        c.seeds - c.failures.len().min(c.seeds),
                        c.seeds,
                        ms(c.ttd_median_s)
                    ),
                    _ if c.direct == 0 => {
                        format!("DERP<br><small>{} probes</small>", c.probes_median)
                    }
                    _ => format!(
                        "{}/{}<br><small>{}</small>",
                        c.direct,
                        c.seeds,
                        ms(c.ttd_median_s)
                    ),
                };
                rows.push_str(&format!(
                    "<td class=\"{class}\" title=\"{}\">{text}</td>",
                    esc(&title)
                ));
            }
            rows.push_str("</tr>\n");
        }
        let head: String = names
            .iter()
            .map(|n| format!("<th class=\"col\">{n}</th>"))
            .collect();
        format!("<table class=\"grid\"><thead><tr><th></th>{head}</tr></thead><tbody>{rows}</tbody></table>")
    }

    /// The HTML section: the NAT × NAT grid and the curves.
    pub fn html(&self) -> String {
        let esc = crate::svg::esc;
        let grid = self.table(Axis::Ipv4, &esc);
        let grid_v6 = self.table(Axis::Ipv6, &esc);
        let grid_relay = self.table(Axis::PeerRelay, &esc);
        let mut curves = String::new();
        for c in &self.curves {
            let unit = if c.name.starts_with("easy") {
                "probes"
            } else if c.name.starts_with("sequential") {
                "search rounds"
            } else {
                "seconds"
            };
            let pts: String = c
                .points
                .iter()
                .map(|p| {
                    format!(
                        "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>±{:.3}</td><td class=\"{}\">{}</td></tr>",
                        p.x,
                        p.measured,
                        p.theory,
                        p.tolerance,
                        if (p.measured - p.theory).abs() <= p.tolerance { "direct" } else { "fail" },
                        if (p.measured - p.theory).abs() <= p.tolerance { "within" } else { "outside" }
                    )
                })
                .collect();
            curves.push_str(&format!(
                "<h3>{} — {} seeds, {} succeeded, median time to direct {}, peak session-table use {}</h3>\
                 <div class=\"figure\">{}<table><thead><tr><th>{unit}</th><th>measured success</th><th>theory</th><th>3σ</th><th></th></tr></thead><tbody>{pts}</tbody></table></div>",
                c.name,
                c.seeds,
                c.succeeded,
                c.median_s.map_or("–".into(), |m| format!("{m:.2} s")),
                c.peak_sessions,
                crate::svg::curve_chart(c, unit),
            ));
        }
        let passed = self.cells.iter().filter(|c| c.passed()).count();
        let targets: String = self
            .targets
            .iter()
            .map(|t| {
                format!(
                    "<tr><td class=\"name\">{}</td><td>&lt; {} s</td><td>{:.3} s</td><td>{:.3} s</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                    t.class,
                    t.target_s,
                    t.median_s,
                    t.p95_s,
                    t.runs,
                    if t.met { "direct" } else { "fail" },
                    if t.met { "met" } else { "missed" }
                )
            })
            .collect();
        format!(
            "<h2>NAT × NAT: two nodes, DERP and three STUN servers, 50 ms RTT</h2>\
             <p><b>{passed}/{}</b> cells held their expectation over {} seeds each ({:.1} s wall). Rows: node 0's preset; \
             columns: node 1's. Green: direct (seeds direct / seeds, median time to direct); grey: DERP only, as expected; \
             blue: both mappings vary, left to the two-sided birthday search (direct in the long run, see the curve); red: failed. \
             Hover for time to direct (median, p95), birthday packets, packets lost at switches and peak session-table use.</p>\
             {grid}\
             <h2>The IPv6 axis: the same pairs with IPv6 on both sides</h2>\
             <p>Each side also has a global IPv6 address behind its router's stateful firewall (no NAT66; full cones filter \
             endpoint-independently, the rest address-and-port-dependently; an open host has none). Every cell must end \
             direct over IPv6, whatever IPv4 does (time to a direct IPv6 path, median).</p>\
             {grid_v6}\
             <h2>The peer-relay axis: the pairs left to the long run, with a relay-capable node</h2>\
             <p>An open tailnet node, as far from the Internet core as the two nodes, offers to relay for both \
             (Tailscale's peer relays: allocation over DERP, a bind handshake, Geneve framing). Every cell must end on the \
             peer relay (or direct) instead of DERP (seeds on a peer relay / seeds, median time to the peer relay; hover for \
             the round trip above the best possible relay's).</p>\
             {grid_relay}\
             <h2>Time to direct by class</h2><table><thead><tr><th>class</th><th>target (median)</th><th>median</th><th>p95</th><th>runs</th><th></th></tr></thead><tbody>{targets}</tbody></table>\
             <h2>Birthday curves against theory</h2>\
             <p>Each chart: the share of seeds direct by then (black), what birthday theory predicts (dashed) and its \
             3σ band for this many seeds (shaded); the dots are the checked points (green inside the band, red outside).</p>\
             {curves}{ladder}",
            self.cells.len(),
            self.seeds,
            self.wall_s,
            ladder = self.ladder.as_ref().map_or(String::new(), |l| l.html()),
        )
    }
}
