//! The `burrow-sim` binary's NAT-pair commands (declared by main.rs, not part of the library):
//! the NAT × NAT grid of `--matrix`, `--pair` timelines on the discrete-event network, and
//! `--story` runs in turmoil.

use anyhow::{bail, Context, Result};
use burrow_sim::grid::{self, GridReport};
use burrow_sim::scenario::{self, RunOptions};

use crate::{parse_seeds, Cli};

pub(crate) fn run_grid(cli: &Cli, threads: usize) -> GridReport {
    let started = std::time::Instant::now();
    let pairs = grid::grid_pairs();
    let seeds: Vec<u64> = (1..=cli.grid_seeds.max(1)).collect();
    let bar = indicatif::ProgressBar::new(pairs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} NAT pairs, {elapsed} {msg}")
            .expect("template"),
    );
    // The IPv4 grid, then its IPv6 axis (the same pairs, IPv6 added on both sides).
    // …and the peer-relay axis (the long-run pairs with a relay-capable node).
    let jobs: Vec<(String, String, grid::Axis)> = pairs
        .iter()
        .map(|(a, b)| (a.clone(), b.clone(), grid::Axis::Ipv4))
        .chain(
            grid::ipv6_pairs()
                .into_iter()
                .map(|(a, b)| (a, b, grid::Axis::Ipv6)),
        )
        .chain(
            grid::relay_pairs()
                .into_iter()
                .map(|(a, b)| (a, b, grid::Axis::PeerRelay)),
        )
        .collect();
    bar.set_length(jobs.len() as u64);
    let cells = grid::parallel(&jobs, threads, |(a, b, axis)| {
        let c = match axis {
            grid::Axis::Ipv4 => grid::run_cell(a, b, &seeds),
            grid::Axis::Ipv6 => grid::run_cell_v6(a, b, &seeds),
            grid::Axis::PeerRelay => grid::run_cell_relay(a, b, &seeds),
        };
        bar.inc(1);
        c
    });
    bar.finish_and_clear();
    let mut curves = Vec::new();
    if cli.curve_seeds > 0 {
        let seeds: Vec<u64> = (1..=cli.curve_seeds).collect();
        curves.push(grid::easy_hard_curve(&seeds, threads));
    }
    if cli.search_seeds > 0 {
        let seeds: Vec<u64> = (1..=cli.search_seeds).collect();
        curves.push(grid::sequential_random_curve(
            &seeds,
            std::time::Duration::from_secs(3600),
            threads,
        ));
    }
    if cli.long_run_seeds > 0 {
        eprintln!(
            "hard–hard long run: {} seeds × up to {} simulated hours…",
            cli.long_run_seeds, cli.long_run_hours
        );
        let seeds: Vec<u64> = (1..=cli.long_run_seeds).collect();
        let horizon = std::time::Duration::from_secs_f64(cli.long_run_hours * 3600.0);
        curves.push(grid::hard_hard_curve(&seeds, horizon, threads));
    }
    let ladder = (cli.ladder_seeds > 0).then(|| {
        eprintln!(
            "degradation ladder: 9 rungs × {} NAT classes × {} seeds…",
            burrow_sim::ladder::CLASSES.len(),
            cli.ladder_seeds
        );
        run_ladder(cli.ladder_seeds, threads)
    });
    GridReport {
        targets: grid::target_checks(&cells),
        cells,
        curves,
        seeds: seeds.len(),
        wall_s: started.elapsed().as_secs_f64(),
        ladder,
    }
}

/// Every rung of the degradation ladder against every NAT class over seeds 1..=`seeds`.
pub(crate) fn run_ladder(seeds: u64, threads: usize) -> burrow_sim::ladder::LadderReport {
    let seeds: Vec<u64> = (1..=seeds.max(1)).collect();
    // The rung files are compiled in; a malformed one fails the build's own tests first.
    burrow_sim::ladder::run_ladder(&seeds, threads).expect("the ladder's rung files parse")
}

/// Prints the ladder's table and its per-rung summary.
pub(crate) fn print_ladder(l: &burrow_sim::ladder::LadderReport) {
    println!();
    println!(
        "Degradation ladder ({} seeds per cell, {} s each, a bulk transfer node 0 → node 1; rung = node 0's access link)",
        l.seeds,
        burrow_sim::ladder::DURATION.as_secs()
    );
    print!("{}", l.text());
    println!();
    println!("{:<20} {:>10} {:>12}  rung", "rung", "to direct", "goodput");
    for r in &l.rungs {
        let (ttd, goodput) = l.rung_summary(&r.name);
        let ok = l.rung_cells(&r.name).all(|c| c.passed());
        println!(
            "{:<20} {:>10} {:>12}  {}",
            r.name,
            ttd.map_or("-".into(), |t| format!("{t:.2} s")),
            if goodput >= 1000.0 {
                format!("{:.2} Mbit/s", goodput / 1000.0)
            } else {
                format!("{goodput:.0} kbit/s")
            },
            if ok { "pass" } else { "FAIL" }
        );
    }
    println!(
        "ladder cells passed: {}/{}",
        l.cells.iter().filter(|c| c.passed()).count(),
        l.cells.len()
    );
}

pub(crate) fn print_grid(g: &GridReport) {
    println!();
    println!(
        "NAT × NAT grid ({} seeds per cell, 50 ms RTT): median time to direct in ms, DERP = relay only, ~ = long run",
        g.seeds
    );
    print_table(g, grid::Axis::Ipv4);
    println!();
    println!("The IPv6 axis: the same pairs with IPv6 on both sides; median time to direct over IPv6 in ms");
    print_table(g, grid::Axis::Ipv6);
    println!();
    println!("The peer-relay axis: the long-run pairs with a relay-capable open node; median time to the peer relay in ms (R = on the relay in every seed)");
    print_table(g, grid::Axis::PeerRelay);
    let penalty = g
        .cells
        .iter()
        .filter_map(|c| c.relay_penalty_ms)
        .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))));
    if let Some(p) = penalty {
        println!("round trip through the chosen relay above the best possible relay's: at most {p:.1} ms");
    }
    print_totals(g);
    if let Some(l) = &g.ladder {
        print_ladder(l);
    }
}

fn print_table(g: &GridReport, axis: grid::Axis) {
    let names = burrow_sim::preset::NAMES;
    let short = |n: &str| n.chars().take(9).collect::<String>();
    print!("{:<22}", "");
    for b in names {
        print!("{:>10}", short(b));
    }
    println!();
    for a in names.iter().chain(burrow_sim::preset::MAPPING_NAMES) {
        print!("{a:<22}");
        for b in names {
            let c = g
                .cells
                .iter()
                .find(|c| c.a == *a && c.b == *b && c.axis() == axis);
            let text = match c {
                None => String::new(),
                Some(c) if !c.passed() => "FAIL".into(),
                Some(c) if c.expected == grid::Expectation::Relay => "DERP".into(),
                Some(c) if c.expected == grid::Expectation::PeerRelay => {
                    format!("R{:.0}", c.ttd_median_s.unwrap_or(0.0) * 1000.0)
                }
                Some(c) => match c.ttd_median_s {
                    Some(m) if c.direct == c.seeds => format!("{:.0}", m * 1000.0),
                    Some(m) => format!("~{:.0}", m * 1000.0),
                    None => "~".into(),
                },
            };
            print!("{text:>10}");
        }
        println!();
    }
}

fn print_totals(g: &GridReport) {
    let worst = g.cells.iter().map(|c| c.peak_sessions).max().unwrap_or(0);
    let lost: u64 = g.cells.iter().map(|c| c.lost).sum();
    let sent: u64 = g.cells.iter().map(|c| c.sent).sum();
    println!(
        "cells passed: {}/{}; packets lost at switches: {lost} of {sent}; peak session-table use: {worst} ({:.2} % of 65,536)",
        g.cells.iter().filter(|c| c.passed()).count(),
        g.cells.len(),
        worst as f64 * 100.0 / 65536.0
    );
    for t in &g.targets {
        println!(
            "time to direct, {}: median {:.3} s (target < {} s), p95 {:.3} s over {} runs: {}",
            t.class,
            t.median_s,
            t.target_s,
            t.p95_s,
            t.runs,
            if t.met { "met" } else { "MISSED" }
        );
    }
    for c in &g.curves {
        println!(
            "{} birthday curve: {} seeds, {} succeeded, median {}; {}",
            c.name,
            c.seeds,
            c.succeeded,
            c.median_s.map_or("–".into(), |m| format!("{m:.2} s")),
            if c.consistent {
                "consistent with theory"
            } else {
                "DIFFERS from theory"
            }
        );
        for p in &c.points {
            println!(
                "  {:>8} → measured {:.3}, theory {:.3} (±{:.3})",
                p.x, p.measured, p.theory, p.tolerance
            );
        }
    }
    println!("grid wall time {:.1} s", g.wall_s);
}

pub(crate) fn run_pair(pair: &str, cli: &Cli) -> Result<bool> {
    let (a, b) = pair
        .split_once(':')
        .context("--pair takes A:B, e.g. easy:hard")?;
    for p in [a, b] {
        if burrow_sim::preset::get(p).is_none() {
            bail!(
                "unknown preset {p:?} (known: {}, {})",
                burrow_sim::preset::NAMES.join(", "),
                burrow_sim::preset::MAPPING_NAMES.join(", ")
            );
        }
    }
    let seeds = match (&cli.seed, &cli.seeds) {
        (Some(s), _) => vec![*s],
        (None, Some(r)) => parse_seeds(r)?,
        (None, None) => vec![1],
    };
    let chains = [
        burrow_sim::preset::get(a).expect("checked").chain,
        burrow_sim::preset::get(b).expect("checked").chain,
    ];
    let expected = if cli.ipv6 {
        grid::Expectation::DirectIpv6
    } else if cli.relay {
        grid::Expectation::PeerRelay
    } else {
        grid::expected(&chains[0], &chains[1])
    };
    let mut all_ok = true;
    for seed in seeds {
        let config = if cli.ipv6 {
            grid::cell_config_v6(a, b, seed)
        } else if cli.relay {
            grid::cell_config_relay(a, b, seed)
        } else {
            grid::cell_config(a, b, seed)
        }
        .expect("checked");
        let o = burrow_sim::fastnet::run(&config);
        println!("{a} ~ {b}, seed {seed} (expected: {expected:?})");
        for line in &o.timeline {
            println!("  {line}");
        }
        println!(
            "  end: node0 {}, node1 {}; birthday packets {}; data {}/{} delivered; peak sessions {}",
            o.routes[0], o.routes[1], o.probes, o.data_received, o.data_sent, o.peak_sessions
        );
        if !o.explanation.is_empty() {
            println!("  why node0 is on its path (its peer's candidates):");
            for e in &o.explanation {
                println!("    {e}");
            }
        }
        let cell = if cli.ipv6 {
            grid::run_cell_v6(a, b, &[seed])
        } else if cli.relay {
            grid::run_cell_relay(a, b, &[seed])
        } else {
            grid::run_cell(a, b, &[seed])
        };
        all_ok &= cell.passed();
        for f in &cell.failures {
            println!("  FAILED {f}");
        }
    }
    Ok(all_ok)
}

pub(crate) fn run_story(pair: &str, cli: &Cli) -> Result<bool> {
    let (a, b) = pair
        .split_once(':')
        .context("--story takes A:B, e.g. easy:hard")?;
    let s = scenario::story_for_pair(a, b).with_context(|| {
        format!(
            "unknown preset in {a}:{b} (known: {})",
            burrow_sim::preset::NAMES.join(", ")
        )
    })?;
    let seeds = match (&cli.seed, &cli.seeds) {
        (Some(s), _) => vec![*s],
        (None, Some(r)) => parse_seeds(r)?,
        (None, None) => vec![1],
    };
    let options = RunOptions {
        capture: false,
        keep_trace: true,
    };
    let mut all_ok = true;
    for seed in seeds {
        let (outcome, recorder) = scenario::run(&s, seed, &options)?;
        println!(
            "{} (node a behind {a}, node b behind {b}), seed {seed}",
            s.name
        );
        for line in story_lines(&recorder.trace_lines()) {
            println!("  {line}");
        }
        if let Some(r) = &outcome.result {
            let ms = |k: &str| {
                r[k].as_u64()
                    .map_or("never".into(), |v| format!("{:.2} s", v as f64 / 1000.0))
            };
            println!(
                "  end: a {} (direct after {}), b {} (direct after {}); data {}/{} and {}/{} delivered",
                r["route_a"].as_str().unwrap_or("?"),
                ms("time_to_direct_ms_a"),
                r["route_b"].as_str().unwrap_or("?"),
                ms("time_to_direct_ms_b"),
                r["received_b"],
                r["sent_a"],
                r["received_a"],
                r["sent_b"],
            );
        }
        for m in &outcome.mismatches {
            println!("  FAILED {m:?}");
        }
        all_ok &= outcome.passed;
    }
    Ok(all_ok)
}

/// The story's lines of a trace ("control …" and "mesh …" events, seconds first), with runs of
/// pongs on an unchanged path shown once.
fn story_lines(trace: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut last_pong: std::collections::BTreeMap<String, String> = Default::default();
    for line in trace {
        let line = line.trim_start();
        let Some((us, text)) = line.split_once(' ') else {
            continue;
        };
        let Ok(us) = us.parse::<u64>() else { continue };
        if !(text.starts_with("control ") || text.starts_with("mesh ")) {
            continue;
        }
        if let Some((head, _)) = text
            .split_once(" in ")
            .filter(|_| text.contains(" pong via "))
        {
            let node = text.split(' ').nth(1).unwrap_or_default().to_string();
            let path = head.split(" via ").nth(1).unwrap_or_default().to_string();
            if last_pong.get(&node) == Some(&path) {
                continue;
            }
            last_pong.insert(node, path);
        }
        out.push(format!("{:>8.3} s  {text}", us as f64 / 1e6));
    }
    out
}
