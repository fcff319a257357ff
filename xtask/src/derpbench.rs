//! `cargo xtask bench derp`: relay throughput against a plain TCP forwarder (the ceiling),
//! memory per idle client with 5,000 connected, and added latency per relayed packet.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{release_binaries, root, Guard};

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

/// One `burrow-loadgen derp` run; its last stdout line is the JSON result.
fn load(loadgen: &std::path::Path, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(loadgen)
        .arg("derp")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "burrow-loadgen derp {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    Ok(serde_json::from_str(&line)?)
}

pub fn run(seconds: f64, rounds: usize, idle: u32, no_write: bool) -> Result<()> {
    let (burrow, loadgen) = release_binaries()?;
    let mut child = Command::new(&burrow)
        .args(["derper", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let pid = child.id();
    let _derper = Guard(child);
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .context("derper did not start")?
        .to_owned();
    let url = format!("http://{addr}/derp");

    // Throughput, alternating with the ceiling inside each `burrow-loadgen derp` run.
    let mut ratios = Vec::new();
    let mut last = serde_json::Value::Null;
    for r in 0..rounds {
        let v = load(
            &loadgen,
            &[
                "throughput",
                "--url",
                &url,
                "--seconds",
                &seconds.to_string(),
                "--pairs",
                "4",
                "--size",
                "1024",
            ],
        )?;
        let ratio = v["relay_bytes_per_s"].as_f64().unwrap_or(0.0)
            / v["ceiling_bytes_per_s"].as_f64().unwrap_or(1.0);
        println!(
            "round {}: relay {:.0} MB/s ({:.0} packets/s), forwarder {:.0} MB/s: {ratio:.2}x",
            r + 1,
            v["relay_bytes_per_s"].as_f64().unwrap_or(0.0) / 1e6,
            v["relay_packets_per_s"].as_f64().unwrap_or(0.0),
            v["ceiling_bytes_per_s"].as_f64().unwrap_or(0.0) / 1e6
        );
        ratios.push((ratio, v.clone()));
        last = v;
    }
    ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, tp) = ratios[ratios.len() / 2].clone();
    let _ = last;

    // Latency at a moderate load.
    let lat = load(
        &loadgen,
        &[
            "latency",
            "--url",
            &url,
            "--rate",
            "1000",
            "--seconds",
            &seconds.to_string(),
        ],
    )?;
    let f = |k: &str| lat[k].as_f64().unwrap_or(0.0);
    let (added50, added99) = (
        f("relay_p50_ms") - f("tcp_p50_ms"),
        f("relay_p99_ms") - f("tcp_p99_ms"),
    );
    println!("latency at 1,000 packets/s: relay p50 {:.3} ms p99 {:.3} ms; bare TCP p50 {:.3} ms p99 {:.3} ms", f("relay_p50_ms"), f("relay_p99_ms"), f("tcp_p50_ms"), f("tcp_p99_ms"));

    // Idle clients.
    let before = rss_kib(pid)?;
    let mut idle_child = Command::new(&loadgen)
        .args([
            "derp",
            "idle",
            "--url",
            &url,
            "--count",
            &idle.to_string(),
            "--seconds",
            "60",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = String::new();
    BufReader::new(idle_child.stdout.take().context("stdout")?).read_line(&mut ready)?;
    let _idle = Guard(idle_child);
    if !ready.starts_with("ready") {
        bail!("idle clients did not connect: {ready:?}");
    }
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = rss_kib(pid)?;
    let per_client = (after.saturating_sub(before)) as f64 * 1024.0 / idle as f64;
    println!(
        "{idle} idle clients: derper RSS {before} KiB → {after} KiB, {:.1} KiB per client",
        per_client / 1024.0
    );

    if !no_write {
        let section = format!(
            "## DERP relay\n\nCommand: `cargo xtask bench derp --seconds {seconds} --rounds {rounds} --idle {idle}`\n\n\
             Loopback, `burrow derper` (release) over plain TCP, on the same 2-core machine as the load \
             generator. Throughput: 4 sender→receiver pairs of 1,024-byte packets, each sender keeping 32 \
             packets in flight; the ceiling is a plain TCP forwarder (tokio's copy through a 256 KiB buffer) carrying the same \
             bytes, measured in the same run; median of {rounds}.\n\n\
             | measure | burrow derper | reference | ratio / target |\n|---|---:|---:|---|\n\
             | relay throughput | {:.0} MB/s, {:.0} packets/s | forwarder {:.0} MB/s | **{ratio:.2}×** (target ≥ 0.8×) |\n\
             | resident memory per idle client ({idle} authenticated clients) | {:.1} KiB | — | target ≤ 16 KiB |\n\
             | added one-way latency at 1,000 packets/s, p50 / p99 | {added50:.3} / {added99:.3} ms | bare TCP {:.3} / {:.3} ms | — |\n\n\
             Measured {}.\n",
            tp["relay_bytes_per_s"].as_f64().unwrap_or(0.0) / 1e6,
            tp["relay_packets_per_s"].as_f64().unwrap_or(0.0),
            tp["ceiling_bytes_per_s"].as_f64().unwrap_or(0.0) / 1e6,
            per_client / 1024.0,
            f("tcp_p50_ms"),
            f("tcp_p99_ms"),
            Command::new("date").arg("+%Y-%m-%d").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
        );
        crate::util::write_section(&root().join("BENCHMARKS.md"), "DERP relay", &section)?;
        println!("BENCHMARKS.md updated");
    }
    Ok(())
}
