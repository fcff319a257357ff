//! The degradation ladder: nine access links from a wired LAN to an absurd one (bursty loss,
//! bottleneck queues, latency spikes, reordering, duplicates), each in a scenario file under
//! `simulation/scenarios/ladder/`, run against every NAT class with a bulk transfer through the
//! tunnel. Each cell must reach the path its NATs allow, move data, and stay calm: routes that
//! change no more often than the path machine's hysteresis allows, timers that do not spin.
//!
//! The rung's link is node 0's access link (a phone, a laptop on the road); node 1 sits on a
//! clean wired link, so a rung's figures (round trip, loss) are the path's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fastnet::{run, BulkConfig, Episode, FastConfig, FastOutcome, LinkProfile};
use crate::grid::{expected, Expectation};
use crate::preset;

/// One rung, as its scenario file gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rung {
    /// Short name (`4g`, `satellite`).
    pub name: String,
    /// One line for reports.
    pub description: String,
    /// Which nodes sit behind the rung's link.
    #[serde(default)]
    pub sides: Sides,
    /// Simulated seconds per run (default [`DURATION`]).
    #[serde(default)]
    pub duration_s: Option<f64>,
    /// The access link.
    pub link: LinkProfile,
}

/// Which nodes a rung's link is in front of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sides {
    /// Node 0 only; node 1 is on a clean wired link.
    #[default]
    One,
    /// Both nodes.
    Both,
}

/// A rung's scenario file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("ladder rung {file}: {source}")]
pub struct RungError {
    /// The file.
    pub file: String,
    /// What was wrong.
    #[source]
    pub source: toml::de::Error,
}

/// The rungs' scenario files, in order (compiled in; `simulation/scenarios/ladder/`).
pub const RUNG_FILES: [(&str, &str); 9] = [
    (
        "1-lan.toml",
        include_str!("../../scenarios/ladder/1-lan.toml"),
    ),
    (
        "2-good-wifi.toml",
        include_str!("../../scenarios/ladder/2-good-wifi.toml"),
    ),
    (
        "3-busy-wifi.toml",
        include_str!("../../scenarios/ladder/3-busy-wifi.toml"),
    ),
    (
        "4-4g.toml",
        include_str!("../../scenarios/ladder/4-4g.toml"),
    ),
    (
        "5-3g.toml",
        include_str!("../../scenarios/ladder/5-3g.toml"),
    ),
    (
        "6-congested-cellular.toml",
        include_str!("../../scenarios/ladder/6-congested-cellular.toml"),
    ),
    (
        "7-satellite.toml",
        include_str!("../../scenarios/ladder/7-satellite.toml"),
    ),
    (
        "8-barely-usable.toml",
        include_str!("../../scenarios/ladder/8-barely-usable.toml"),
    ),
    (
        "9-absurd.toml",
        include_str!("../../scenarios/ladder/9-absurd.toml"),
    ),
];

/// Parses one rung's scenario file.
pub fn parse_rung(file: &str, text: &str) -> Result<Rung, RungError> {
    toml::from_str(text).map_err(|source| RungError {
        file: file.to_string(),
        source,
    })
}

/// Every rung, in order.
pub fn rungs() -> Result<Vec<Rung>, RungError> {
    RUNG_FILES.iter().map(|(f, t)| parse_rung(f, t)).collect()
}

/// The NAT classes each rung runs against: every preset facing itself, and an easy NAT facing
/// a hard one (birthday probing over the rung's link).
pub const CLASSES: [(&str, &str); 12] = [
    ("open", "open"),
    ("firewall", "firewall"),
    ("easy", "easy"),
    ("full-cone", "full-cone"),
    ("restricted-cone", "restricted-cone"),
    ("port-restricted-cone", "port-restricted-cone"),
    ("hard", "hard"),
    ("hard-sequential", "hard-sequential"),
    ("cgnat", "cgnat"),
    ("udp-blocked", "udp-blocked"),
    ("srx300", "srx300"),
    ("easy", "hard"),
];

/// Simulated time per run.
pub const DURATION: Duration = Duration::from_secs(60);

/// Route changes a node may make in one run: the first switch to direct, then at most one
/// demotion and one return per [`FLAP_PERIOD`]. A direct path is left only after three
/// missed pongs in a row and 5 s without an answer (`PathConfig::silence_before_dead`), and
/// retried on a triggered ping or every 30 s; a path that came and went faster would be
/// flapping.
pub fn max_switches(duration: Duration) -> u64 {
    1 + 2 * (duration.as_secs() / FLAP_PERIOD.as_secs())
}

/// See [`max_switches`].
pub const FLAP_PERIOD: Duration = Duration::from_secs(10);

/// Once direct, the least share of the rest of the run both nodes must spend on it: a path
/// lost to a burst is demoted (and won back) now and then, but it carries the traffic.
pub const MIN_DIRECT_SHARE: f64 = 0.5;

/// Timer wake-ups a node may take in any one simulated second. A heartbeat, a few probes and
/// retransmissions need tens; a timer that spins would take thousands.
pub const MAX_WAKEUPS_PER_SECOND: u32 = 1000;

/// The run of `rung` for NAT class `a` × `b` and `seed` (also what a replay runs).
pub fn rung_config(rung: &Rung, a: &str, b: &str, seed: u64) -> Option<FastConfig> {
    let seed = crate::derive_seed(seed, &format!("ladder:{}:{a}~{b}", rung.name));
    let mut c = FastConfig::new([preset::get(a)?.chain, preset::get(b)?.chain], seed);
    c.duration = rung.duration_s.map_or(DURATION, |s| {
        Duration::from_secs_f64(s.clamp(1.0, 86_400.0))
    });
    c.links = match rung.sides {
        Sides::One => [Some(rung.link.clone()), None],
        Sides::Both => [Some(rung.link.clone()), Some(rung.link.clone())],
    };
    // Node 1's wired link: 5 ms to the core.
    c.one_way = Duration::from_millis(5);
    c.bulk = Some(BulkConfig::default());
    Some(c)
}

/// One seed's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LadderRun {
    /// The seed.
    pub seed: u64,
    /// Both nodes reached a direct path.
    pub direct: bool,
    /// Ended on it.
    pub direct_at_end: bool,
    /// From the first direct path to the end, the share of the time both nodes sent on a
    /// direct path (the lower of the two).
    pub direct_share: f64,
    /// Seconds until both were first direct.
    pub time_to_direct_s: Option<f64>,
    /// The bulk transfer's goodput, kbit/s.
    pub goodput_kbit: f64,
    /// Route changes of node 0 and node 1.
    pub switches: [u64; 2],
    /// The most timer wake-ups of either node in one simulated second.
    pub max_wakeups_per_s: u32,
    /// Share of the transfer's packets sent again.
    pub retransmit_share: f64,
    /// The transfer's smoothed round trip at the end, milliseconds.
    pub srtt_ms: Option<f64>,
    /// Loss on node 0's link up and down (on the air and in the queue).
    pub link_loss: [f64; 2],
    /// Node 0's and node 1's route stretches and doubts (the cell's first seed only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub episodes: Option<[Vec<Episode>; 2]>,
}

/// One rung × NAT class over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct LadderCell {
    /// The rung's name.
    pub rung: String,
    /// Node 0's preset.
    pub a: String,
    /// Node 1's preset.
    pub b: String,
    /// What the NATs allow.
    pub expected: Expectation,
    /// Each seed.
    pub runs: Vec<LadderRun>,
    /// Seeds that ended direct.
    pub direct: usize,
    /// Median time to direct over the seeds that got there, seconds.
    pub ttd_median_s: Option<f64>,
    /// Median goodput over the seeds, kbit/s.
    pub goodput_median_kbit: f64,
    /// Why the cell failed (with the seed that shows it).
    pub failures: Vec<String>,
}

impl LadderCell {
    /// Every check held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// "direct", "relay", or "direct 2/3" when the seeds differ.
    pub fn outcome(&self) -> String {
        match self.direct {
            0 => "relay".into(),
            n if n == self.runs.len() => "direct".into(),
            n => format!("direct {n}/{}", self.runs.len()),
        }
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// Mean loss from which mutual port prediction between two sequential NATs is left to the
/// long run: most rounds lose a measurement, an announcement or a flow, and other hosts' new
/// flows move the counter past the margin while a round crawls (direct within 60 s in about
/// half the seeds on the absurd rung).
pub const PREDICTION_LOSS_LIMIT: f64 = 0.3;

/// What the NATs allow on this rung: as on a clean link (`grid::expected`), except that two
/// sequential NATs behind a link losing [`PREDICTION_LOSS_LIMIT`] or more are left to the long
/// run.
pub fn expected_on(
    rung: &Rung,
    a: &[crate::nat::NatConfig],
    b: &[crate::nat::NatConfig],
) -> Expectation {
    let e = expected(a, b);
    let loss = rung.link.loss.map_or(0.0, |l| l.mean_loss());
    let mutual = crate::grid::sequential(a) && crate::grid::sequential(b);
    if e == Expectation::Direct && mutual && loss >= PREDICTION_LOSS_LIMIT {
        return Expectation::LongRun;
    }
    e
}

/// Runs one cell over `seeds`.
pub fn run_cell(rung: &Rung, a: &str, b: &str, seeds: &[u64]) -> LadderCell {
    let chains = [
        preset::get(a).expect("known preset").chain,
        preset::get(b).expect("known preset").chain,
    ];
    let expected = expected_on(rung, &chains[0], &chains[1]);
    let mut failures = Vec::new();
    let mut runs = Vec::new();
    for &seed in seeds {
        let mut config = rung_config(rung, a, b, seed).expect("known presets");
        config.record_episodes = seeds.first() == Some(&seed);
        let o = run(&config);
        let r = judge(seed, expected, &o, &mut failures);
        runs.push(r);
    }
    let direct = runs.iter().filter(|r| r.direct).count();
    LadderCell {
        rung: rung.name.clone(),
        a: a.into(),
        b: b.into(),
        expected,
        direct,
        ttd_median_s: median(runs.iter().filter_map(|r| r.time_to_direct_s).collect()),
        goodput_median_kbit: median(runs.iter().map(|r| r.goodput_kbit).collect()).unwrap_or(0.0),
        runs,
        failures,
    }
}

/// One seed's figures, and what broke.
fn judge(
    seed: u64,
    expected: Expectation,
    o: &FastOutcome,
    failures: &mut Vec<String>,
) -> LadderRun {
    let bulk = o.bulk.clone().unwrap_or_default();
    let switches = o.switches_by_node;
    let share = |s: Option<crate::fastnet::LinkStats>| {
        s.map_or(0.0, |s| {
            (s.lost + s.queue_drops) as f64 / (s.offered.max(1)) as f64
        })
    };
    let link = o.link_stats[0];
    let direct_share = o.time_to_direct.map_or(0.0, |t| {
        let after = o.elapsed.saturating_sub(t).as_secs_f64();
        let least = o.direct_time[0].min(o.direct_time[1]).as_secs_f64();
        if after > 0.0 {
            (least / after).min(1.0)
        } else {
            1.0
        }
    });
    let r = LadderRun {
        seed,
        direct: o.time_to_direct.is_some(),
        direct_at_end: o.direct,
        direct_share,
        time_to_direct_s: o.time_to_direct.map(|t| t.as_secs_f64()),
        goodput_kbit: bulk.goodput_kbit,
        switches,
        max_wakeups_per_s: o.max_wakeups_per_s[0].max(o.max_wakeups_per_s[1]),
        retransmit_share: bulk.retransmits as f64 / bulk.sent.max(1) as f64,
        srtt_ms: bulk.srtt_ms,
        link_loss: [share(link.map(|l| l[0])), share(link.map(|l| l[1]))],
        episodes: o
            .episodes
            .iter()
            .any(|e| !e.is_empty())
            .then(|| o.episodes.clone()),
    };
    let mut fail = |what: String| failures.push(format!("seed {seed}: {what}"));
    match expected {
        Expectation::Direct if o.time_to_direct.is_none() => {
            fail(format!("expected direct, never got there ({:?})", o.routes));
        }
        Expectation::Direct if direct_share < MIN_DIRECT_SHARE => {
            fail(format!(
                "direct only {:.0} % of the time after reaching it",
                direct_share * 100.0
            ));
        }
        Expectation::Relay if o.time_to_direct.is_some() => {
            fail(format!("expected relay only, got {:?}", o.routes));
        }
        _ => {}
    }
    if bulk.delivered_bytes == 0 {
        fail("no application data got through".into());
    }
    let limit = max_switches(o.elapsed);
    for (node, n) in switches.iter().enumerate() {
        if *n > limit {
            fail(format!(
                "node{node} changed route {n} times (hysteresis allows {limit})"
            ));
        }
    }
    if r.max_wakeups_per_s > MAX_WAKEUPS_PER_SECOND {
        fail(format!(
            "{} timer wake-ups in one second (bound {MAX_WAKEUPS_PER_SECOND})",
            r.max_wakeups_per_s
        ));
    }
    for leak in o.leaks() {
        fail(leak.into());
    }
    r
}

/// The whole ladder: every rung against every class.
#[derive(Debug, Clone, Serialize)]
pub struct LadderReport {
    /// The rungs, in order.
    pub rungs: Vec<Rung>,
    /// Seeds per cell.
    pub seeds: usize,
    /// Every cell, rung by rung.
    pub cells: Vec<LadderCell>,
}

impl LadderReport {
    /// Every cell passed.
    pub fn passed(&self) -> bool {
        self.cells.iter().all(LadderCell::passed)
    }

    /// The cells of one rung.
    pub fn rung_cells<'a>(&'a self, rung: &'a str) -> impl Iterator<Item = &'a LadderCell> + 'a {
        self.cells.iter().filter(move |c| c.rung == rung)
    }

    /// Per rung: the median over its cells' medians of time to direct (cells that went direct)
    /// and of goodput.
    pub fn rung_summary(&self, rung: &str) -> (Option<f64>, f64) {
        let ttd = median(
            self.rung_cells(rung)
                .filter_map(|c| c.ttd_median_s)
                .collect(),
        );
        let goodput = median(
            self.rung_cells(rung)
                .map(|c| c.goodput_median_kbit)
                .collect(),
        );
        (ttd, goodput.unwrap_or(0.0))
    }

    /// A plain-text table: one row per rung × class.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{:<20} {:<42} {:<10} {:>9} {:>11} {:>8}  result\n",
            "rung", "NAT class", "outcome", "to direct", "goodput", "switches"
        );
        for c in &self.cells {
            let switches = c
                .runs
                .iter()
                .map(|r| r.switches[0].max(r.switches[1]))
                .max();
            out.push_str(&format!(
                "{:<20} {:<42} {:<10} {:>9} {:>11} {:>8}  {}\n",
                c.rung,
                format!("{} × {}", c.a, c.b),
                c.outcome(),
                c.ttd_median_s.map_or("-".into(), |t| format!("{t:.2} s")),
                kbit(c.goodput_median_kbit),
                switches.unwrap_or(0),
                if c.passed() {
                    "ok".to_string()
                } else {
                    format!("FAIL: {}", c.failures.join("; "))
                }
            ));
        }
        out
    }

    /// The report's HTML section: the rungs' links, then a rung × class table.
    pub fn html(&self) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut rows = String::new();
        for r in &self.rungs {
            let (ttd, goodput) = self.rung_summary(&r.name);
            let loss = r.link.loss.map_or(0.0, |l| l.mean_loss());
            let ok = self.rung_cells(&r.name).all(LadderCell::passed);
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{:.0} ms</td><td>{:.1} %</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                esc(&r.name),
                esc(&r.description),
                r.link.latency_ms * 2.0,
                loss * 100.0,
                r.link.rate_kbit.map_or("-".into(), kbit),
                ttd.map_or("-".into(), |t| format!("{t:.2} s")),
                kbit(goodput),
                if ok { "direct" } else { "fail" },
                if ok { "pass" } else { "FAIL" },
            ));
        }
        let mut head = String::from("<tr><th>rung</th>");
        for (a, b) in CLASSES {
            head.push_str(&format!("<th>{} × {}</th>", esc(a), esc(b)));
        }
        head.push_str("</tr>");
        let mut grid = String::new();
        for r in &self.rungs {
            grid.push_str(&format!("<tr><th>{}</th>", esc(&r.name)));
            for (a, b) in CLASSES {
                let Some(c) = self.rung_cells(&r.name).find(|c| c.a == a && c.b == b) else {
                    grid.push_str("<td>-</td>");
                    continue;
                };
                let class = match (c.passed(), c.direct) {
                    (false, _) => "fail",
                    (true, 0) => "relay",
                    (true, _) => "direct",
                };
                let title = if c.passed() {
                    String::new()
                } else {
                    format!(
                        " title=\"{}\"",
                        esc(&c.failures.join("; ")).replace('"', "'")
                    )
                };
                grid.push_str(&format!(
                    "<td class=\"{class}\"{title}>{}<br>{}<br>{}</td>",
                    c.outcome(),
                    c.ttd_median_s.map_or("–".into(), |t| format!("{t:.2} s")),
                    kbit(c.goodput_median_kbit)
                ));
            }
            grid.push_str("</tr>");
        }
        let bars: Vec<crate::svg::Bar> = self
            .rungs
            .iter()
            .map(|r| {
                let all: Vec<f64> = self
                    .rung_cells(&r.name)
                    .flat_map(|c| c.runs.iter().map(|x| x.goodput_kbit))
                    .collect();
                crate::svg::Bar {
                    label: r.name.clone(),
                    value: self.rung_summary(&r.name).1,
                    low: all.iter().copied().fold(f64::INFINITY, f64::min),
                    high: all.iter().copied().fold(0.0, f64::max),
                }
            })
            .collect();
        let goodput = crate::svg::bar_chart(&bars, "goodput, kbit/s", kbit);
        let mut timelines = String::new();
        for r in &self.rungs {
            let rows: Vec<crate::svg::TimelineRow> = self
                .rung_cells(&r.name)
                .filter_map(|c| {
                    let run = c.runs.first()?;
                    Some(crate::svg::TimelineRow {
                        label: format!("{} × {}", c.a, c.b),
                        episodes: run.episodes.as_ref()?,
                    })
                })
                .collect();
            if rows.is_empty() {
                continue;
            }
            let secs = r.duration_s.unwrap_or(DURATION.as_secs_f64());
            timelines.push_str(&format!(
                "<details open><summary>{}</summary>{}</details>",
                esc(&r.name),
                crate::svg::timelines(&rows, secs)
            ));
        }
        format!(
            "<h2>Degradation ladder</h2>\n<p>Each rung is node 0's access link (scenario files in <code>simulation/scenarios/ladder/</code>); node 1 is on a clean wired link. A bulk transfer with TCP-like congestion control runs node 0 → node 1 for {} s; {} seeds per cell. Goodput is the median over seeds; time to direct the median over seeds that got there. A cell passes when the pair reaches what its NATs allow, data gets through, no node changes route more than {} times in the run, no timer wakes more than {} times in a second, and nothing secret shows on a wire.</p>\n<table><tr><th>rung</th><th>link</th><th>RTT added</th><th>mean loss</th><th>rate</th><th>to direct</th><th>goodput</th><th>result</th></tr>{rows}</table>\n<h3>Goodput per rung</h3>\n<p>Bars: the median over the rung's cells; whiskers: the slowest and the fastest run (log scale).</p>\n{goodput}\n<p>Rung × NAT class: outcome, median time to direct, median goodput.</p>\n<table>{head}{grid}</table>\n<h3>Routes over time</h3>\n<p>Per rung, each NAT class's first seed (seed {first}): node 0's stripe above node 1's, grey on DERP, blue on a peer relay, green direct, orange while the direct path was in doubt (its traffic also went over DERP). Hover a stretch for its times.</p>\n{timelines}",
            DURATION.as_secs(),
            self.seeds,
            max_switches(DURATION),
            MAX_WAKEUPS_PER_SECOND,
            first = self.cells.first().and_then(|c| c.runs.first()).map_or(1, |r| r.seed),
        )
    }
}

fn kbit(k: f64) -> String {
    if k >= 1000.0 {
        format!("{:.2} Mbit/s", k / 1000.0)
    } else {
        format!("{k:.0} kbit/s")
    }
}

/// Runs the whole ladder over `seeds` on `threads` threads.
pub fn run_ladder(seeds: &[u64], threads: usize) -> Result<LadderReport, RungError> {
    let rungs = rungs()?;
    let jobs: Vec<(usize, &str, &str)> = (0..rungs.len())
        .flat_map(|r| CLASSES.iter().map(move |(a, b)| (r, *a, *b)))
        .collect();
    let cells = crate::grid::parallel(&jobs, threads, |(r, a, b)| {
        run_cell(&rungs[*r], a, b, seeds)
    });
    Ok(LadderReport {
        rungs,
        seeds: seeds.len(),
        cells,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rung_file_parses_and_the_ladder_gets_worse() {
        let rungs = rungs().expect("rung files parse");
        assert_eq!(rungs.len(), 9);
        let loss = |r: &Rung| r.link.loss.map_or(0.0, |l| l.mean_loss());
        assert_eq!(loss(&rungs[0]), 0.0);
        let congested = &rungs[5];
        assert!(
            (0.05..=0.10).contains(&loss(congested)),
            "{}",
            loss(congested)
        );
        assert_eq!(congested.link.buffer_ms, 300.0);
        assert_eq!(
            rungs[6].link.latency_ms * 2.0,
            600.0,
            "satellite: 600 ms RTT"
        );
        assert!((0.18..=0.25).contains(&loss(&rungs[7])));
        assert!((0.38..=0.42).contains(&loss(&rungs[8])));
    }

    #[test]
    fn a_malformed_rung_is_a_typed_error() {
        let e = parse_rung("x.toml", "name = \"x\"\nlink = { latency = 3 }").unwrap_err();
        assert_eq!(e.file, "x.toml");
        assert!(e.to_string().contains("x.toml"));
    }
}
