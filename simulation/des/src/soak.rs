//! The chaos soak: a simulated day per NAT class with disruptions at random times — NATs
//! flushed, gateways rebooted, addresses renumbered, the direct path cut, DERP and the
//! coordination server restarted, an access link's MTU lowered into a black hole — while a
//! user's traffic comes and goes. It checks what must hold however long a node runs:
//!
//! - every application packet sent while some path exists arrives, except in the bounded
//!   window after an event that silently kills the path it was on ([`PATH_DEATH_WINDOW`],
//!   [`BLACK_HOLE_WINDOW`]);
//! - no private key and no plaintext appears on any wire;
//! - the engine's state stays bounded ([`burrow_node::Node::footprint`] sampled every
//!   simulated minute: the peak of its lasting state in the day's last quarter is no higher than
//!   before it, and the whole stays below [`MAX_FOOTPRINT`]);
//! - its timers never spin ([`MAX_WAKEUPS_PER_SECOND`](crate::ladder::MAX_WAKEUPS_PER_SECOND)).

use std::collections::BTreeMap;
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::fastnet::{Disruption, FastConfig, FastNet, FastOutcome};
use crate::ladder::{CLASSES, MAX_WAKEUPS_PER_SECOND};
use crate::preset;

/// A full soak run's simulated time.
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// Mean time between disruptions (they come as a Poisson process): about 144 a day.
pub const MEAN_GAP: Duration = Duration::from_secs(600);

/// Application packets each way at this interval while the user is active.
pub const DATA_INTERVAL: Duration = Duration::from_millis(100);

/// Application packets are IP packets of this size (Don't Fragment), so a lowered link MTU
/// turns into a black hole the engine must find.
pub const DATA_SIZE: usize = 1400;

/// The nodes' TUN MTU: WireGuard's usual 1,420 (a 1,500-byte link less 80 bytes of
/// headers), so [`DATA_SIZE`] packets fit the tunnel and a lowered link MTU does not.
pub const TUNNEL_MTU: u16 = 1420;

/// After an event that silently kills the path a packet was on (a NAT flush, a gateway
/// reboot, a new address, a cut), packets sent from 100 ms before it (in flight) until this
/// long after the first packet sent after it may be lost. A side whose own data goes
/// unanswered doubts the path within 3 round trips (≤ 250 ms here, the usual case); but when
/// the other side doubts first, its copies over DERP answer our data, and our side finds the
/// old path dead by its heartbeat: 5 s without an answer (`PathConfig::silence_before_dead`)
/// and the next 1 s heartbeat. `SoakRun::worst_loss_ms` shows which it was.
pub const PATH_DEATH_WINDOW: Duration = Duration::from_secs(6);

/// As [`PATH_DEATH_WINDOW`], for a path that passes disco but eats data: a ping's pong ends
/// the first doubt, the second within 15 s is a data stall (two thresholds, a round trip and
/// the second doubt's threshold: about 0.6 s at 50 ms), plus what was in flight. While data is
/// eaten, each path taken again after the stall's back-off costs such a window; they are
/// excused for the whole time, and one past it.
pub const DATA_STALL_WINDOW: Duration = Duration::from_millis(1000);

/// A path that ate data ate WireGuard's handshakes too: once it passes again, a session that
/// lapsed meanwhile is back within one handshake retry (WireGuard's `REKEY_TIMEOUT`).
pub const HANDSHAKE_RETRY: Duration = Duration::from_secs(5);

/// As [`PATH_DEATH_WINDOW`], for a link MTU lowered into a black hole for large packets:
/// the engine takes a few seconds to find it (two probe timeouts per size, and a wait for a
/// heartbeat's answer when the path showed none: 4.5 s in `tests/pmtu.rs`) and fall back.
pub const BLACK_HOLE_WINDOW: Duration = Duration::from_secs(6);

/// What the engine may hold (entries in its tables and queues, a birthday search's included)
/// at any time, with one peer.
pub const MAX_FOOTPRINT: usize = 20_000;

/// Entries the lasting state's late peak may exceed its early one by (a queue caught fuller).
pub const FOOTPRINT_SLACK: usize = 64;

/// One run: NAT class `a` × `b`, `seed`, this long.
pub fn soak_config(a: &str, b: &str, seed: u64, duration: Duration) -> Option<FastConfig> {
    let seed = crate::derive_seed(seed, &format!("soak:{a}~{b}"));
    let mut c = FastConfig::new([preset::get(a)?.chain, preset::get(b)?.chain], seed);
    c.duration = duration;
    c.data_interval = Some(DATA_INTERVAL);
    c.data_size = Some(DATA_SIZE);
    c.mtu = Some(burrow_node::MtuConfig {
        tunnel_mtu: TUNNEL_MTU,
        ..burrow_node::MtuConfig::default()
    });
    c.data_quiet_tail = Duration::from_secs(5);
    let mut rng = ChaCha20Rng::seed_from_u64(crate::derive_seed(seed, "plan"));
    c.data_active = activity(&mut rng, duration);
    c.disruptions = disruptions(&mut rng, duration);
    Some(c)
}

/// A user's traffic: active for 1–10 minutes, idle for 1–20 (long enough for every NAT
/// mapping to lapse without keep-alives), from the start.
fn activity(rng: &mut ChaCha20Rng, duration: Duration) -> Vec<(Duration, Duration)> {
    let mut out = Vec::new();
    let mut t = Duration::ZERO;
    while t < duration {
        let on = secs(rng, 60, 600);
        out.push((t, (t + on).min(duration)));
        t += on + secs(rng, 60, 1200);
    }
    out
}

/// Disruptions at exponentially spaced times, of every kind.
fn disruptions(rng: &mut ChaCha20Rng, duration: Duration) -> Vec<(Duration, Disruption)> {
    let mut out = Vec::new();
    // Give the pair a minute to find its path first.
    let mut t = Duration::from_secs(60);
    loop {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        t += MEAN_GAP.mul_f64(-(1.0 - u).ln());
        if t + Duration::from_secs(60) >= duration {
            return out;
        }
        let side = (rng.next_u32() % 2) as usize;
        let d = match rng.next_u32() % 9 {
            0 => Disruption::FlushNat(side),
            1 => Disruption::RebootGateway(side),
            2 => Disruption::NewAddress(side),
            3 => Disruption::CutDirect(secs(rng, 5, 300)),
            4 => Disruption::DerpRestart(secs(rng, 1, 60)),
            5 => Disruption::ControlRestart,
            6 => {
                // Into a black hole for the tunnel's larger packets; back later.
                let mtu = 1280 + (rng.next_u32() % 160) as usize;
                out.push((t, Disruption::LinkMtu(side, Some(mtu))));
                let back = t + secs(rng, 60, 3600);
                if back < duration {
                    out.push((back, Disruption::LinkMtu(side, None)));
                }
                continue;
            }
            7 => Disruption::DropData(secs(rng, 2, 30)),
            _ => Disruption::FlushNat(1 - side),
        };
        out.push((t, d));
    }
}

fn secs(rng: &mut ChaCha20Rng, low: u64, high: u64) -> Duration {
    Duration::from_secs(low + rng.next_u64() % (high - low + 1))
}

/// The name a disruption is reported under.
pub fn kind(d: &Disruption) -> &'static str {
    match d {
        Disruption::FlushNat(_) => "NAT flush",
        Disruption::DerpRestart(_) => "DERP restart",
        Disruption::RelayDown(..) => "peer relay down",
        Disruption::CutDirect(_) => "direct path cut",
        Disruption::DropData(_) | Disruption::DropDataTo(..) => "data dropped, disco passes",
        Disruption::RebootGateway(_) => "gateway reboot",
        Disruption::WithdrawIpv6(..) => "IPv6 withdrawn",
        Disruption::LinkMtu(_, Some(_)) => "link MTU lowered",
        Disruption::LinkMtu(_, None) => "link MTU restored",
        Disruption::NewAddress(_) => "new public address",
        Disruption::ControlRestart => "control restart",
    }
}

/// When packets may be lost because of one disruption.
#[derive(Debug, Clone)]
struct Excuse {
    kind: &'static str,
    at: Duration,
    /// When it first mattered: the first packet sent from its time on (traffic may be idle
    /// when it happens); losses are timed from here.
    effective: Duration,
    from: Duration,
    until: Duration,
    /// Only packets sent while the sender was on the relay (DERP down: no path for them).
    relayed_only: bool,
}

/// Every disruption's excuse window, given when application packets were sent (sorted).
fn excuses(plan: &[(Duration, Disruption)], sends: &[Duration]) -> Vec<Excuse> {
    let first_send_from = |t: Duration| {
        let i = sends.partition_point(|s| *s < t);
        sends.get(i).copied().unwrap_or(t).max(t)
    };
    let in_flight = Duration::from_millis(100);
    let mut out = Vec::new();
    for &(at, d) in plan {
        let window = |effective: Duration, until: Duration, relayed_only: bool| Excuse {
            kind: kind(&d),
            at,
            effective,
            from: at.saturating_sub(in_flight),
            until,
            relayed_only,
        };
        let death =
            |bound: Duration| window(first_send_from(at), first_send_from(at) + bound, false);
        let e = match d {
            Disruption::FlushNat(_)
            | Disruption::RebootGateway(_)
            | Disruption::NewAddress(_)
            | Disruption::CutDirect(_) => death(PATH_DEATH_WINDOW),
            // Data vanishes between the two while disco passes: every path that comes back
            // (after the data stall's back-off) stalls again, each a data stall rule's window.
            Disruption::DropData(x) | Disruption::DropDataTo(_, x) => window(
                first_send_from(at),
                first_send_from(at + x) + DATA_STALL_WINDOW + HANDSHAKE_RETRY,
                false,
            ),
            Disruption::LinkMtu(_, Some(_)) => death(BLACK_HOLE_WINDOW),
            Disruption::DerpRestart(x) | Disruption::RelayDown(_, x) => {
                window(at, at + x + in_flight, true)
            }
            Disruption::WithdrawIpv6(_, x) => window(at, at + x, false),
            Disruption::LinkMtu(_, None) | Disruption::ControlRestart => continue,
        };
        out.push(e);
    }
    out
}

/// One class × seed.
#[derive(Debug, Clone, Serialize)]
pub struct SoakRun {
    /// NAT classes of node 0 and node 1.
    pub class: (String, String),
    /// The seed.
    pub seed: u64,
    /// Simulated time.
    pub simulated_s: f64,
    /// Disruptions by kind.
    pub disruptions: BTreeMap<String, u32>,
    /// Application packets sent (both ways).
    pub sent: u64,
    /// …lost inside a disruption's window.
    pub excused: u64,
    /// …lost outside every window: each fails the run (the first few kept).
    pub unexcused: u64,
    /// The first unexcused losses: node, when sent (s), on a direct path then, the latest
    /// disruption before it.
    pub unexcused_examples: Vec<String>,
    /// The run's timeline from a minute before the first unexcused loss to 5 s after it (what
    /// the nodes did around it), and the disruptions in that span.
    pub unexcused_context: Vec<String>,
    /// Per kind, the longest a loss lasted after the disruption (last lost packet's send time
    /// minus the disruption's time, or the first send after it when traffic was idle; ms).
    pub worst_loss_ms: BTreeMap<String, f64>,
    /// Per node, the engine's footprint as sampled.
    pub footprint: Footprints,
    /// The most timer wake-ups of either node in one simulated second.
    pub max_wakeups_per_s: u32,
    /// Timer wake-ups per simulated second, both nodes, on average.
    pub mean_wakeups_per_s: f64,
    /// Route changes of node 0 and node 1.
    pub switches: [u64; 2],
    /// Share of the day both nodes spent on a direct path (the lower of the two).
    pub direct_share: f64,
    /// Peak sessions of any NAT box.
    pub peak_sessions: usize,
    /// What failed (empty: the run passed).
    pub failures: Vec<String>,
}

impl SoakRun {
    /// Every invariant held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs class `a` × `b` for `duration` with `seed` and checks the invariants.
pub fn run_one(a: &str, b: &str, seed: u64, duration: Duration) -> SoakRun {
    let class = (a.to_string(), b.to_string());
    let Some(config) = soak_config(a, b, seed, duration) else {
        return SoakRun {
            class,
            seed,
            simulated_s: 0.0,
            disruptions: BTreeMap::new(),
            sent: 0,
            excused: 0,
            unexcused: 0,
            unexcused_examples: Vec::new(),
            unexcused_context: Vec::new(),
            worst_loss_ms: BTreeMap::new(),
            footprint: Footprints::default(),
            max_wakeups_per_s: 0,
            mean_wakeups_per_s: 0.0,
            switches: [0; 2],
            direct_share: 0.0,
            peak_sessions: 0,
            failures: vec![format!("unknown NAT class {a} or {b}")],
        };
    };
    let mut net = FastNet::new(&config);
    let late_from = duration.mul_f64(0.75);
    let mut f = Footprints::default();
    let mut t = Duration::ZERO;
    loop {
        t += Duration::from_secs(60);
        let running = net.drive_until(t);
        for s in 0..2 {
            f.sample(s, t > late_from, net.node(s).footprint());
        }
        if !running {
            break;
        }
    }
    let o = net.finish();
    judge(class, seed, &config, &o, f)
}

/// Each node's footprint as a run sampled it: the peak of its lasting state over the first three
/// quarters and over the last, and the peak of the whole. Lasting is everything but the
/// traversal searches, the flow ledger and the packets waiting for a handshake, which come and
/// go with each attempt (bounded by the search budgets, by the flows of the last minute up to
/// the ledger's cap, and by WireGuard's queue of 256 while a relay outage holds a handshake).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Footprints {
    /// Lasting state's peak, first three quarters.
    pub early: [usize; 2],
    /// Lasting state's peak, last quarter.
    pub late: [usize; 2],
    /// The whole footprint's peak.
    pub peak: [usize; 2],
}

impl Footprints {
    /// Takes node `s`'s sample.
    pub fn sample(&mut self, s: usize, late: bool, f: burrow_node::Footprint) {
        let lasting = f.total() - f.traversal - f.flows - f.queued;
        let p = if late {
            &mut self.late[s]
        } else {
            &mut self.early[s]
        };
        *p = (*p).max(lasting);
        self.peak[s] = self.peak[s].max(f.total());
    }
}

/// The invariants, checked on a finished run with its footprints.
pub fn judge(
    class: (String, String),
    seed: u64,
    config: &FastConfig,
    o: &FastOutcome,
    footprints: Footprints,
) -> SoakRun {
    let Footprints { early, late, peak } = footprints;
    let mut failures = Vec::new();
    for leak in o.leaks() {
        failures.push(leak.to_string());
    }
    for s in 0..2 {
        if late[s] > early[s] + FOOTPRINT_SLACK {
            failures.push(format!(
                "node{s}'s state grew: peak {} entries in the first three quarters, {} in the last",
                early[s], late[s]
            ));
        }
        if peak[s] > MAX_FOOTPRINT {
            failures.push(format!("node{s} held {} entries at once", peak[s]));
        }
    }
    let wake = o.max_wakeups_per_s[0].max(o.max_wakeups_per_s[1]);
    if wake > MAX_WAKEUPS_PER_SECOND {
        failures.push(format!("{wake} timer wake-ups in one simulated second"));
    }
    let mut disruptions = BTreeMap::new();
    for (_, d) in &config.disruptions {
        *disruptions.entry(kind(d).to_string()).or_insert(0) += 1;
    }
    // Both nodes send at the same instants: one list of send times serves both.
    let sends = sent_times(config);
    let windows = excuses(&config.disruptions, &sends);
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    let (mut excused, mut unexcused) = (0u64, 0u64);
    let mut examples = Vec::new();
    for s in 0..2 {
        for &(at, direct) in &o.lost_sends[s] {
            let hit = windows
                .iter()
                .filter(|w| w.from <= at && at <= w.until && (!w.relayed_only || !direct))
                .max_by_key(|w| w.at);
            match hit {
                Some(w) => {
                    excused += 1;
                    let ms = at.saturating_sub(w.effective).as_secs_f64() * 1000.0;
                    let e = worst.entry(w.kind.to_string()).or_insert(0.0);
                    *e = e.max(ms);
                }
                None => {
                    unexcused += 1;
                    examples.push((at, s, direct));
                }
            }
        }
    }
    examples.sort();
    let first_unexcused = examples.first().map(|e| e.0);
    let examples: Vec<String> = examples
        .iter()
        .take(8)
        .map(|&(at, s, direct)| {
            let before = config
                .disruptions
                .iter()
                .rev()
                .find(|(t, _)| *t <= at)
                .map_or("none".to_string(), |(t, d)| {
                    format!("{} at {:.3}s", kind(d), t.as_secs_f64())
                });
            format!(
                "node{s} packet sent at {:.3}s ({}) lost; latest disruption: {before}",
                at.as_secs_f64(),
                if direct { "direct" } else { "relayed" }
            )
        })
        .collect();
    let mut context = Vec::new();
    if let Some(first) = first_unexcused {
        let (from, until) = (
            first.saturating_sub(Duration::from_secs(60)),
            first + Duration::from_secs(5),
        );
        for (t, d) in &config.disruptions {
            if from <= *t && *t <= until {
                context.push(format!("{:>8.3}s disruption: {d:?}", t.as_secs_f64()));
            }
        }
        for line in &o.timeline {
            let t = line
                .trim_start()
                .split('s')
                .next()
                .and_then(|x| x.parse::<f64>().ok());
            if t.is_some_and(|t| from.as_secs_f64() <= t && t <= until.as_secs_f64()) {
                context.push(line.clone());
            }
        }
        context.sort_by(|a, b| {
            let t = |l: &str| {
                l.trim_start()
                    .split('s')
                    .next()
                    .and_then(|x| x.parse::<f64>().ok())
            };
            t(a).partial_cmp(&t(b)).unwrap_or(std::cmp::Ordering::Equal)
        });
        context.truncate(80);
    }
    if unexcused > 0 {
        failures.push(format!(
            "{unexcused} packets lost outside any disruption's window, first: {}",
            examples.first().map_or("", String::as_str)
        ));
    }
    let elapsed = o.elapsed.as_secs_f64().max(1e-9);
    SoakRun {
        class,
        seed,
        simulated_s: o.elapsed.as_secs_f64(),
        disruptions,
        sent: o.data_sent,
        excused,
        unexcused,
        unexcused_examples: examples,
        unexcused_context: context,
        worst_loss_ms: worst,
        footprint: footprints,
        max_wakeups_per_s: wake,
        mean_wakeups_per_s: (o.wakeups[0] + o.wakeups[1]) as f64 / elapsed,
        switches: o.switches_by_node,
        direct_share: o.direct_time[0].min(o.direct_time[1]).as_secs_f64() / elapsed,
        peak_sessions: o.peak_sessions,
        failures,
    }
}

/// When the application sends (both nodes at once), from the run's schedule.
fn sent_times(c: &FastConfig) -> Vec<Duration> {
    let Some(iv) = c.data_interval else {
        return Vec::new();
    };
    let stop = c.duration.saturating_sub(c.data_quiet_tail);
    let mut out = Vec::new();
    let mut t = Duration::ZERO;
    for &(from, until) in &c.data_active {
        t = t.max(from);
        while t < until && t < stop {
            out.push(t);
            t += iv;
        }
    }
    out
}

/// The whole soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Simulated time per run.
    pub duration_s: f64,
    /// Every class × seed.
    pub runs: Vec<SoakRun>,
}

impl SoakReport {
    /// Every run passed.
    pub fn passed(&self) -> bool {
        self.runs.iter().all(SoakRun::passed)
    }

    /// A table per class, then the failures.
    pub fn text(&self) -> String {
        let mut out = format!(
            "chaos soak: {:.1} simulated hours per run, {} runs\n{:<42} {:>5} {:>6} {:>10} {:>8} {:>6} {:>9} {:>7} {:>7}\n",
            self.duration_s / 3600.0,
            self.runs.len(),
            "class",
            "pass",
            "disr.",
            "sent",
            "excused",
            "unexc.",
            "footprint",
            "wake/s",
            "direct"
        );
        let mut classes: Vec<&(String, String)> = Vec::new();
        for r in &self.runs {
            if !classes.contains(&&r.class) {
                classes.push(&r.class);
            }
        }
        for (a, b) in classes {
            let runs: Vec<&SoakRun> = self
                .runs
                .iter()
                .filter(|r| &r.class.0 == a && &r.class.1 == b)
                .collect();
            if runs.is_empty() {
                continue;
            }
            let passed = runs.iter().filter(|r| r.passed()).count();
            let sum = |f: &dyn Fn(&SoakRun) -> u64| runs.iter().map(|r| f(r)).sum::<u64>();
            let foot = runs
                .iter()
                .map(|r| r.footprint.peak[0].max(r.footprint.peak[1]))
                .max()
                .unwrap_or(0);
            let wake = runs.iter().map(|r| r.max_wakeups_per_s).max().unwrap_or(0);
            let direct = runs.iter().map(|r| r.direct_share).sum::<f64>() / runs.len() as f64;
            out.push_str(&format!(
                "{:<42} {:>2}/{:<2} {:>6} {:>10} {:>8} {:>6} {:>9} {:>7} {:>6.0}%\n",
                format!("{a} × {b}"),
                passed,
                runs.len(),
                sum(&|r| r.disruptions.values().map(|&n| u64::from(n)).sum()),
                sum(&|r| r.sent),
                sum(&|r| r.excused),
                sum(&|r| r.unexcused),
                foot,
                wake,
                direct * 100.0
            ));
        }
        out.push_str("longest loss after a disruption (ms), over every run:\n");
        let mut worst: BTreeMap<&str, f64> = BTreeMap::new();
        for r in &self.runs {
            for (k, v) in &r.worst_loss_ms {
                let e = worst.entry(k).or_insert(0.0);
                *e = e.max(*v);
            }
        }
        for (k, v) in worst {
            out.push_str(&format!("  {k:<28} {v:>9.0}\n"));
        }
        for r in self.runs.iter().filter(|r| !r.passed()) {
            out.push_str(&format!(
                "FAIL {} × {} seed {}: {}\n",
                r.class.0,
                r.class.1,
                r.seed,
                r.failures.join("; ")
            ));
            for e in r.unexcused_examples.iter().skip(1) {
                out.push_str(&format!("     {e}\n"));
            }
            if !r.unexcused_context.is_empty() {
                out.push_str("     around the first:\n");
                for l in &r.unexcused_context {
                    out.push_str(&format!("       {l}\n"));
                }
            }
        }
        out
    }
}

/// Runs every class over `seeds` for `duration` each, on `threads` threads.
pub fn run_soak(seeds: &[u64], duration: Duration, threads: usize) -> SoakReport {
    run_soak_classes(&CLASSES, seeds, duration, threads)
}

/// As [`run_soak`], for these classes only.
pub fn run_soak_classes(
    classes: &[(&str, &str)],
    seeds: &[u64],
    duration: Duration,
    threads: usize,
) -> SoakReport {
    let jobs: Vec<(&str, &str, u64)> = classes
        .iter()
        .flat_map(|&(a, b)| seeds.iter().map(move |&s| (a, b, s)))
        .collect();
    let runs = crate::grid::parallel(&jobs, threads, |&(a, b, s)| run_one(a, b, s, duration));
    SoakReport {
        duration_s: duration.as_secs_f64(),
        runs,
    }
}
