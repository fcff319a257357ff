//! `burrow-sim` (run through `cargo xtask sim`): replays scenarios deterministically.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use burrow_sim::grid::{self, GridReport};
use burrow_sim::scenario::{self, Outcome, RunOptions, Scenario};
use clap::Parser;

mod pairs;

use pairs::{print_grid, run_grid, run_pair, run_story};

#[derive(Parser)]
#[command(
    name = "cargo xtask sim",
    about = "Run burrow's deterministic network scenarios"
)]
struct Cli {
    /// A scenario file name in simulation/scenarios (without .toml) or a path; repeatable.
    #[arg(long)]
    scenario: Vec<String>,
    /// The generated netcheck scenario for a NAT preset; repeatable.
    #[arg(long)]
    preset: Vec<String>,
    /// Every preset's netcheck scenario (with 20 seeds unless --seed/--seeds say otherwise),
    /// plus the IPv6 runs of the presets IPv6 networks use (open, firewall).
    #[arg(long)]
    matrix: bool,
    /// Run --preset scenarios over IPv6 (turmoil simulates one family per run); with --pair,
    /// give both sides IPv6 as well as their IPv4 (the grid's IPv6 axis).
    #[arg(long)]
    ipv6: bool,
    /// With --pair: add a relay-capable open node beside the pair (the grid's peer-relay axis).
    #[arg(long, conflicts_with = "ipv6")]
    relay: bool,
    /// One seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A seed range A..B (inclusive).
    #[arg(long)]
    seeds: Option<String>,
    /// Write one pcap per link and run into DIR.
    #[arg(long, value_name = "DIR")]
    pcap: Option<PathBuf>,
    /// Write report.json and report.html into DIR.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Print every outcome as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Print the event trace of each run (single runs only, for debugging).
    #[arg(long)]
    trace: bool,
    /// Parallel simulations (default: CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// List presets and scenario files, then exit.
    #[arg(long)]
    list: bool,
    /// With --matrix: seeds per cell of the NAT × NAT grid.
    #[arg(long, default_value_t = 20)]
    grid_seeds: u64,
    /// With --matrix: seeds of the easy–hard birthday curve.
    #[arg(long, default_value_t = 200)]
    curve_seeds: u64,
    /// With --matrix: seeds of the sequential–random search curve (0 skips it).
    #[arg(long, default_value_t = 40)]
    search_seeds: u64,
    /// With --matrix: seeds of the hard–hard long run (0 skips it).
    #[arg(long, default_value_t = 40)]
    long_run_seeds: u64,
    /// With --matrix: simulated hours each hard–hard run may take.
    #[arg(long, default_value_t = 2.0)]
    long_run_hours: f64,
    /// Two burrow nodes behind presets A and B in turmoil (real driver, derper, NAT boxes);
    /// repeatable. With --trace, prints what happened; with --pcap, writes the wire.
    #[arg(long, value_name = "A:B")]
    mesh: Vec<String>,
    /// With --matrix: seeds of each pair's turmoil mesh run.
    #[arg(long, default_value_t = 2)]
    mesh_seeds: u64,
    /// Run two node engines behind presets A and B (`--pair easy:hard`) and print the timeline
    /// of each seed: DERP at once, punching, the switch to direct.
    #[arg(long, value_name = "A:B")]
    pair: Option<String>,
    /// The whole story in turmoil: the real control server, DERP, STUN, and two nodes behind
    /// presets A and B that register, learn each other from their netmaps, and ping each other
    /// every second (DERP at once, then direct); prints the timeline of each seed.
    #[arg(long, value_name = "A:B", conflicts_with = "pair")]
    story: Option<String>,
    /// A hostile member attacks a node while an honest peer talks to it: spoofed-source,
    /// call-me-maybe-spray, ping-replay, handshake-flood, false-nat-info, or all. Prints what
    /// the victim sent where, and fails if an invariant broke (seeds: --seed/--seeds, default 1..3).
    #[arg(long, value_name = "ATTACK")]
    attack: Option<String>,
    /// A tailnet story: three nodes, the real control server and relay, and at 6 s an admin
    /// action: removal, expiry, policy, restart, or all. Prints what each node got from each
    /// other, per second (x: dropped by the receiver's filter), and the control plane's events.
    #[arg(long, value_name = "STORY")]
    tailnet: Option<String>,
    /// Fallback loss: a direct path cut silently at 20 s while data flows each way at 50
    /// packets/s over a 50 ms RTT; prints each seed's loss (seeds: --seed/--seeds, default
    /// 1..20) and fails past the budget of 3 RTT + 50 ms.
    #[arg(long)]
    fallback: bool,
    /// The degradation ladder: nine access links (simulation/scenarios/ladder/) against every
    /// NAT class, with a bulk transfer; prints the rung × class table (outcome, time to
    /// direct, goodput) and fails if a cell does (seeds: --ladder-seeds).
    #[arg(long)]
    ladder: bool,
    /// Seeds per ladder cell, with --ladder or --matrix (0 leaves the ladder out of --matrix).
    #[arg(long, default_value_t = 3)]
    ladder_seeds: u64,
    /// The chaos soak: every NAT class for a simulated day (--soak-hours) with disruptions at
    /// random (NAT flush, gateway reboot, new address, cut, DERP and control restarts, MTU
    /// black holes) while traffic comes and goes; fails if a packet is lost outside a
    /// disruption's bounded window, a key or plaintext leaks, state grows or a timer spins
    /// (seeds: --soak-seeds; writes soak.json into --report DIR).
    #[arg(long)]
    soak: bool,
    /// Seeds per class with --soak: N (seeds 1..=N) or a range A..B (inclusive), so a long
    /// run can be split across sittings.
    #[arg(long, default_value = "20")]
    soak_seeds: String,
    /// Simulated hours per --soak run.
    #[arg(long, default_value_t = 24.0)]
    soak_hours: f64,
    /// Only this class with --soak (`easy~hard`).
    #[arg(long, value_name = "A~B")]
    soak_class: Option<String>,
    /// Simulated seconds each --attack run lasts.
    #[arg(long, default_value_t = 30)]
    attack_seconds: u64,
}

fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn load(name: &str) -> Result<Scenario> {
    let path = if Path::new(name).exists() {
        PathBuf::from(name)
    } else {
        scenarios_dir().join(format!("{name}.toml"))
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading scenario {}", path.display()))?;
    Scenario::from_toml(&text).with_context(|| format!("in {}", path.display()))
}

fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    let (a, b) = s.split_once("..").context("--seeds takes A..B")?;
    let (a, b): (u64, u64) = (a.trim().parse()?, b.trim().trim_start_matches('=').parse()?);
    if b < a {
        bail!("--seeds {s}: empty range");
    }
    Ok((a..=b).collect())
}

/// A run to do: the scenario, how to name it for replay, and its own seeds (if not the run's).
struct Job {
    scenario: Scenario,
    replay: String,
    seeds: Option<Vec<u64>>,
}

/// `--soak`: the chaos soak; writes soak.json into `--report DIR` if asked.
fn run_soak(cli: &Cli) -> Result<bool> {
    use burrow_sim::soak;
    let threads = cli
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if !(cli.soak_hours > 0.0 && cli.soak_hours <= 24.0 * 365.0) {
        bail!("--soak-hours {}: between 0 and a year", cli.soak_hours);
    }
    let duration = std::time::Duration::from_secs_f64(cli.soak_hours * 3600.0);
    let seeds: Vec<u64> = match cli.soak_seeds.parse::<u64>() {
        Ok(n) => (1..=n.max(1)).collect(),
        Err(_) => parse_seeds(&cli.soak_seeds).context("--soak-seeds takes N or A..B")?,
    };
    let started = std::time::Instant::now();
    let report = match &cli.soak_class {
        None => soak::run_soak(&seeds, duration, threads),
        Some(c) => {
            let (a, b) = c.split_once('~').context("--soak-class takes A~B")?;
            for p in [a, b] {
                if burrow_sim::preset::get(p).is_none() {
                    bail!("--soak-class: no NAT preset {p}");
                }
            }
            soak::run_soak_classes(&[(a, b)], &seeds, duration, threads)
        }
    };
    print!("{}", report.text());
    println!("({:.1} s wall)", started.elapsed().as_secs_f64());
    if let Some(dir) = &cli.report {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("soak.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        println!("wrote {}", dir.join("soak.json").display());
    }
    Ok(report.passed())
}

/// `--ladder`: the degradation ladder alone; writes it into `--report DIR` if asked.
fn run_ladder_only(cli: &Cli) -> Result<bool> {
    let threads = cli
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = std::time::Instant::now();
    let l = pairs::run_ladder(cli.ladder_seeds, threads);
    pairs::print_ladder(&l);
    println!("({:.1} s wall)", started.elapsed().as_secs_f64());
    if let Some(dir) = &cli.report {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ladder.json"), serde_json::to_string_pretty(&l)?)?;
        let html = format!(
            "<!doctype html><meta charset=\"utf-8\"><title>burrow degradation ladder</title><style>{}</style>{}",
            burrow_sim::report::STYLE,
            l.html()
        );
        std::fs::write(dir.join("ladder.html"), html)?;
        println!("wrote {}", dir.join("ladder.html").display());
    }
    Ok(l.passed())
}

/// `--attack`: every named attack on every seed; false if any invariant broke.
fn run_fallback(cli: &Cli) -> Result<bool> {
    use burrow_sim::fallback::{budget, run_seed, RTT};
    let seeds = match (&cli.seed, &cli.seeds) {
        (Some(s), _) => vec![*s],
        (None, Some(r)) => parse_seeds(r)?,
        (None, None) => (1..=20).collect(),
    };
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let mut worst = std::time::Duration::ZERO;
    let mut ok = true;
    for seed in seeds {
        let r = run_seed(seed);
        let seed_worst = r.lost_time[0].max(r.lost_time[1]);
        worst = worst.max(seed_worst);
        let pass = seed_worst <= budget() && r.fell_back && r.direct_again;
        ok &= pass;
        println!(
            "seed {seed:>3}: lost {} + {} packets ({:.0} / {:.0} ms of traffic), {} + {} datagrams also over the relay, direct again {}{}",
            r.lost[0],
            r.lost[1],
            ms(r.lost_time[0]),
            ms(r.lost_time[1]),
            r.duplicated[0],
            r.duplicated[1],
            r.direct_again,
            if pass { "" } else { "  FAIL" }
        );
    }
    println!(
        "fallback loss at {:.0} ms RTT: at most {:.0} ms of traffic per direction (budget 3 RTT + 50 ms = {:.0} ms)",
        ms(RTT),
        ms(worst),
        ms(budget())
    );
    Ok(ok)
}

fn run_attacks(which: &str, cli: &Cli) -> Result<bool> {
    use burrow_sim::attack::{run, Attack};
    let attacks: Vec<Attack> = if which == "all" {
        Attack::ALL.to_vec()
    } else {
        which
            .split(',')
            .map(|n| {
                Attack::by_name(n).with_context(|| {
                    let names: Vec<&str> = Attack::ALL.iter().map(|a| a.name()).collect();
                    format!("unknown attack {n:?} (known: {}, all)", names.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    let seeds = match (&cli.seed, &cli.seeds) {
        (Some(s), _) => vec![*s],
        (None, Some(r)) => parse_seeds(r)?,
        (None, None) => vec![1, 2, 3],
    };
    let duration = std::time::Duration::from_secs(cli.attack_seconds);
    let mut ok = true;
    for a in &attacks {
        for &seed in &seeds {
            let out = run(*a, seed, duration);
            println!("{}", out.line());
            if !out.failures.is_empty() {
                ok = false;
                println!(
                    "  replay: cargo xtask sim --attack {} --seed {seed} --attack-seconds {}",
                    a.name(),
                    cli.attack_seconds
                );
            }
        }
    }
    println!(
        "attack runs: {}",
        if ok { "every invariant held" } else { "FAILED" }
    );
    Ok(ok)
}

/// `--tailnet`: each named story on each seed (default 1), its table and control events.
fn run_tailnet(which: &str, cli: &Cli) -> Result<bool> {
    use burrow_sim::tailnet;
    let names: Vec<&str> = match which {
        "all" => tailnet::PRESETS.to_vec(),
        n if tailnet::PRESETS.contains(&n) => vec![n],
        n => bail!(
            "unknown story {n:?} (known: {}, all)",
            tailnet::PRESETS.join(", ")
        ),
    };
    let seeds = match (&cli.seeds, cli.seed) {
        (Some(s), _) => parse_seeds(s)?,
        (None, Some(s)) => vec![s],
        (None, None) => vec![1],
    };
    let mut ok = true;
    for name in names {
        let story = tailnet::preset(name).expect("listed");
        for &seed in &seeds {
            let (o, rec) = tailnet::run(&story, seed);
            println!("tailnet story {name}, seed {seed}: trace {}", o.trace_hash);
            for l in rec.trace_lines() {
                if l.contains(" control ") || l.contains(" admin ") {
                    println!("  {}", l.trim());
                }
            }
            print!("{}", o.table(&story.nodes, story.duration_s as u64));
            if let Some(e) = &o.error {
                println!("  simulation failed: {e}");
                ok = false;
            }
            println!("  replay: cargo xtask sim --tailnet {name} --seed {seed}");
        }
    }
    Ok(ok)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("burrow-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool> {
    let cli = Cli::parse();
    if cli.list {
        println!("presets:");
        for p in burrow_sim::preset::NAMES {
            println!(
                "  {p:<22} {}",
                burrow_sim::preset::get(p).expect("listed").doc
            );
        }
        println!("scenarios ({}):", scenarios_dir().display());
        for f in scenario_files()? {
            println!("  {}", f.file_stem().unwrap_or_default().to_string_lossy());
        }
        return Ok(true);
    }
    let threads = cli
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    if let Some(pair) = &cli.pair {
        return run_pair(pair, &cli);
    }
    if let Some(pair) = &cli.story {
        return run_story(pair, &cli);
    }
    if let Some(which) = &cli.attack {
        return run_attacks(which, &cli);
    }
    if let Some(which) = &cli.tailnet {
        return run_tailnet(which, &cli);
    }
    if cli.ladder {
        return run_ladder_only(&cli);
    }
    if cli.soak {
        return run_soak(&cli);
    }
    if cli.fallback {
        return run_fallback(&cli);
    }
    let mut jobs: Vec<Job> = Vec::new();
    let mut presets = cli.preset.clone();
    if cli.matrix {
        presets.extend(burrow_sim::preset::NAMES.iter().map(|s| s.to_string()));
    }
    let family = if cli.ipv6 {
        scenario::Family::Ipv6
    } else {
        scenario::Family::Ipv4
    };
    for p in &presets {
        let s = scenario::netcheck_for_preset_in(p, family).with_context(|| {
            format!(
                "unknown preset {p:?} (known: {})",
                burrow_sim::preset::NAMES.join(", ")
            )
        })?;
        let replay = if cli.ipv6 {
            format!("--preset {p} --ipv6")
        } else {
            format!("--preset {p}")
        };
        jobs.push(Job {
            scenario: s,
            replay,
            seeds: None,
        });
    }
    if cli.matrix && !cli.ipv6 {
        for p in ["open", "firewall"] {
            let s =
                scenario::netcheck_for_preset_in(p, scenario::Family::Ipv6).expect("known preset");
            jobs.push(Job {
                scenario: s,
                replay: format!("--preset {p} --ipv6"),
                seeds: None,
            });
        }
    }
    // Two nodes with the real driver, derper and NAT boxes in turmoil: every pair with
    // --matrix (on --mesh-seeds seeds), or the pairs asked for.
    let mut meshes: Vec<(String, String)> = Vec::new();
    for m in &cli.mesh {
        let (a, b) = m
            .split_once(':')
            .context("--mesh takes A:B, e.g. easy:hard")?;
        meshes.push((a.into(), b.into()));
    }
    let mesh_seeds = cli
        .matrix
        .then(|| (1..=cli.mesh_seeds).collect::<Vec<u64>>());
    if cli.matrix {
        meshes.extend(grid::all_pairs());
    }
    if cli.matrix && !cli.ipv6 {
        // The IPv6 world's pairs: no NAT, stateful firewalls at most.
        for (a, b) in [("firewall", "firewall"), ("open", "firewall")] {
            let s = scenario::mesh_for_pair_in(a, b, scenario::Family::Ipv6).expect("presets");
            jobs.push(Job {
                scenario: s,
                replay: format!("--mesh {a}:{b} --ipv6"),
                seeds: mesh_seeds.clone(),
            });
        }
    }
    for (a, b) in &meshes {
        let s = scenario::mesh_for_pair_in(a, b, family).with_context(|| {
            format!(
                "unknown preset in {a}:{b} (known: {})",
                burrow_sim::preset::NAMES.join(", ")
            )
        })?;
        let v6 = if cli.ipv6 { " --ipv6" } else { "" };
        jobs.push(Job {
            scenario: s,
            replay: format!("--mesh {a}:{b}{v6}"),
            seeds: if cli.mesh.is_empty() {
                mesh_seeds.clone()
            } else {
                None
            },
        });
    }
    let mut names = cli.scenario.clone();
    if names.is_empty() && presets.is_empty() && meshes.is_empty() {
        names = scenario_files()?
            .iter()
            .map(|f| {
                f.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
    }
    for n in &names {
        jobs.push(Job {
            scenario: load(n)?,
            replay: format!("--scenario {n}"),
            seeds: None,
        });
    }
    let seeds = match (&cli.seed, &cli.seeds) {
        (Some(s), _) => vec![*s],
        (None, Some(r)) => parse_seeds(r)?,
        (None, None) if cli.matrix => (1..=20).collect(),
        (None, None) => vec![1],
    };
    let runs: Vec<(usize, u64)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| {
            job.seeds
                .clone()
                .unwrap_or_else(|| seeds.clone())
                .into_iter()
                .map(move |s| (j, s))
        })
        .collect();
    let options = RunOptions {
        capture: cli.pcap.is_some(),
        keep_trace: cli.trace,
    };

    let bar = indicatif::ProgressBar::new(runs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} runs, {elapsed} {msg}")
            .expect("template"),
    );
    if runs.len() < 2 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = std::time::Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; runs.len()]);
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.min(runs.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(j, seed)) = runs.get(i) else { break };
                let job = &jobs[j];
                match scenario::run(&job.scenario, seed, &options) {
                    Ok((outcome, recorder)) => {
                        if let Some(dir) = &cli.pcap {
                            let sub = dir.join(format!(
                                "{}-seed{seed}",
                                job.scenario.name.replace('/', "-")
                            ));
                            if let Err(e) = recorder.write_pcaps(&sub, "").map(|_| ()) {
                                failure.lock().expect("lock").get_or_insert(e.into());
                            }
                        }
                        if cli.trace {
                            for line in recorder.trace_lines() {
                                eprintln!("{line}");
                            }
                        }
                        if !outcome.passed {
                            bar.set_message(format!("{} FAILED", outcome.scenario));
                        }
                        results.lock().expect("lock")[i] = Some(outcome);
                    }
                    Err(e) => {
                        failure.lock().expect("lock").get_or_insert(e.into());
                    }
                }
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    if let Some(e) = failure.into_inner().expect("lock") {
        return Err(e);
    }
    let outcomes: Vec<Outcome> = results
        .into_inner()
        .expect("lock")
        .into_iter()
        .flatten()
        .collect();
    let wall = started.elapsed();

    if cli.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        print_summary(&outcomes, &jobs, wall);
    }
    let grid = cli.matrix.then(|| run_grid(&cli, threads));
    if let Some(g) = &grid {
        print_grid(g);
    }
    if let Some(dir) = &cli.report {
        burrow_sim::report::write(dir, &outcomes, wall, grid.as_ref())?;
        eprintln!("report: {}", dir.join("report.html").display());
    }
    if let Some(dir) = &cli.pcap {
        eprintln!("pcaps: {}", dir.display());
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.passed).collect();
    for o in &failed {
        let replay = jobs
            .iter()
            .find(|j| j.scenario.name == o.scenario)
            .map_or(String::new(), |j| j.replay.clone());
        eprintln!(
            "FAILED {} seed {}: replay with `cargo xtask sim {replay} --seed {}`",
            o.scenario, o.seed, o.seed
        );
        if let Some(e) = &o.error {
            eprintln!("  error: {e}");
        }
        for m in &o.mismatches {
            eprintln!("  {}: expected {}, got {}", m.field, m.expected, m.got);
        }
    }
    let grid_ok = grid.as_ref().is_none_or(GridReport::passed);
    if let Some(g) = &grid {
        for c in g.cells.iter().filter(|c| !c.passed()) {
            for f in &c.failures {
                let axis = match c.axis() {
                    burrow_sim::grid::Axis::Ipv4 => "",
                    burrow_sim::grid::Axis::Ipv6 => " --ipv6",
                    burrow_sim::grid::Axis::PeerRelay => " --relay",
                };
                eprintln!(
                    "FAILED {}~{} {f}: replay with `cargo xtask sim --pair {}:{}{axis} --seed N`",
                    c.a, c.b, c.a, c.b
                );
            }
        }
        for t in g.targets.iter().filter(|t| !t.met) {
            eprintln!(
                "FAILED time to direct, {}: median {:.3} s, target < {} s",
                t.class, t.median_s, t.target_s
            );
        }
        for c in g.curves.iter().filter(|c| !c.consistent) {
            eprintln!(
                "FAILED {} birthday curve differs from theory: {:?}",
                c.name, c.points
            );
        }
    }
    Ok(failed.is_empty() && grid_ok)
}

fn scenario_files() -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenarios_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

fn print_summary(outcomes: &[Outcome], jobs: &[Job], wall: std::time::Duration) {
    println!(
        "{:<32} {:>6} {:>7} {:>10} {:>10}  verdicts (netcheck: NAT / filtering; mesh: routes)",
        "scenario", "seeds", "passed", "sim s", "wall ms"
    );
    for job in jobs {
        let mine: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.scenario == job.scenario.name)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let passed = mine.iter().filter(|o| o.passed).count();
        let sim: f64 =
            mine.iter().map(|o| o.sim_ms as f64 / 1000.0).sum::<f64>() / mine.len() as f64;
        let wall_ms: u64 = mine.iter().map(|o| o.wall_ms).sum::<u64>() / mine.len() as u64;
        let mut verdicts: Vec<String> = mine
            .iter()
            .map(|o| match &o.result {
                Some(r) if r.get("route_a").is_some() => format!(
                    "{}/{}",
                    r["route_a"].as_str().unwrap_or("?"),
                    r["route_b"].as_str().unwrap_or("?")
                ),
                Some(r) => format!(
                    "{} / {}",
                    r["nat_type"].as_str().unwrap_or("?"),
                    r["filtering"].as_str().unwrap_or("?")
                ),
                None => "no answer".into(),
            })
            .collect();
        verdicts.sort();
        verdicts.dedup();
        println!(
            "{:<32} {:>6} {:>7} {:>10.2} {:>10}  {}",
            job.scenario.name,
            mine.len(),
            format!("{passed}/{}", mine.len()),
            sim,
            wall_ms,
            verdicts.join(", ")
        );
    }
    if outcomes.len() == 1 {
        println!(
            "trace hash: {} ({} events)",
            outcomes[0].trace_hash, outcomes[0].events
        );
    }
    let passed = outcomes.iter().filter(|o| o.passed).count();
    println!(
        "{} runs: {} passed, {} failed in {:.1} s",
        outcomes.len(),
        passed,
        outcomes.len() - passed,
        wall.as_secs_f64()
    );
}
