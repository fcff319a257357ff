//! `cargo xtask bench control`: `burrow control serve` with 1,000 and 10,000 registered nodes
//! (teams of 50 that reach only themselves): time and bytes for one endpoint change to reach
//! every affected node, and the server's CPU time and peak memory. Target: under 1 s at 10,000.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{free_port, release_binaries, root, Guard};

/// (utime + stime) seconds and VmHWM KiB of a process.
fn usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks / 100.0, hwm))
}

pub fn run(sizes: &[usize], team: usize, no_write: bool) -> Result<()> {
    let (burrow, loadgen) = release_binaries()?;
    let mut rows = Vec::new();
    for &n in sizes {
        let dir =
            std::env::temp_dir().join(format!("burrow-bench-control-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let db = dir.join("control.sqlite");
        let policy = dir.join("policy.json");
        let out = Command::new(&loadgen)
            .args(["control", "--url", "x", "--db"])
            .arg(&db)
            .args([
                "--nodes",
                &n.to_string(),
                "--team",
                &team.to_string(),
                "--print-policy",
            ])
            .output()?;
        std::fs::write(&policy, &out.stdout)?;
        let port = free_port();
        let mut child = Command::new(&burrow)
            .args([
                "control",
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--db",
            ])
            .arg(&db)
            .arg("--policy")
            .arg(&policy)
            .arg("--admin-socket")
            .arg(dir.join("admin.sock"))
            // Every simulated node connects from 127.0.0.1: lift the per-source limits.
            .args([
                "--max-connections",
                "40000",
                "--max-connections-per-ip",
                "40000",
                "--per-ip-rate",
                "100000",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .context("starting burrow control serve")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        if !line.starts_with("listening on") {
            bail!("control server: {line:?}");
        }
        let pid = child.id();
        let _server = Guard(child);
        let out = Command::new(&loadgen)
            .args([
                "control",
                "--url",
                &format!("http://127.0.0.1:{port}"),
                "--db",
            ])
            .arg(&db)
            .args(["--nodes", &n.to_string(), "--team", &team.to_string()])
            .env("RUST_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!(
                "burrow-loadgen control: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let (cpu, hwm) = usage(pid).unwrap_or((0.0, 0));
        println!(
            "{n:>6} nodes: registered in {:.1} s; one change reached {} of {} affected nodes in {:.1} ms ({} bytes); unaffected streams that heard: {}; server CPU {:.1} s, peak memory {:.1} MiB",
            r["register_s"].as_f64().unwrap_or(0.0),
            r["heard"],
            team - 1,
            r["propagate_ms"].as_f64().unwrap_or(0.0),
            r["propagate_bytes"],
            r["unaffected_heard"],
            cpu,
            hwm as f64 / 1024.0
        );
        rows.push(format!(
            "| {n} | {:.1} s | {:.1} ms | {} of {} | {} | {} | {:.1} s | {:.1} MiB |",
            r["register_s"].as_f64().unwrap_or(0.0),
            r["propagate_ms"].as_f64().unwrap_or(0.0),
            r["heard"],
            team - 1,
            r["propagate_bytes"],
            r["unaffected_heard"],
            cpu,
            hwm as f64 / 1024.0
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !no_write {
        let section = format!(
            "## Coordination server\n\nCommand: `cargo xtask bench control`\n\n`burrow control serve` (release, SQLite) on loopback; N nodes registered over HTTP (32 at a time) in teams of {team} whose policy lets each team reach only itself; then one node of team 0 reports new endpoints. Propagation: from that request until the last of the other {} members' map streams (server-sent events) has the update; a second team's streams must hear nothing. Server CPU (user + system) and peak RSS cover the whole run. Target: one change reaches all affected nodes in under 1 s at 10,000 nodes.\n\n| nodes | registration | propagation | affected that heard | bytes | unaffected that heard | server CPU | server peak memory |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n{}\n",
            team - 1,
            rows.join("\n")
        );
        crate::util::write_section(
            &root().join("BENCHMARKS.md"),
            "Coordination server",
            &section,
        )?;
        println!("BENCHMARKS.md updated");
    }
    Ok(())
}
