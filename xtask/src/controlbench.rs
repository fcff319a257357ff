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

/// The bench's policy for `n` nodes in teams of `team`, written to `path`.
fn write_policy(
    loadgen: &std::path::Path,
    db: &str,
    n: usize,
    team: usize,
    path: &std::path::Path,
) -> Result<()> {
    let out = Command::new(loadgen)
        .args(["control", "--url", "x", "--db", db, "--print-policy"])
        .args(["--nodes", &n.to_string(), "--team", &team.to_string()])
        .output()?;
    std::fs::write(path, &out.stdout)?;
    Ok(())
}

/// `burrow-loadgen control` against the servers `urls` (comma-separated) on `db`: its report.
fn load(
    loadgen: &std::path::Path,
    urls: &str,
    db: &str,
    n: usize,
    team: usize,
) -> Result<serde_json::Value> {
    let out = Command::new(loadgen)
        .args(["control", "--url", urls, "--db", db])
        .args(["--nodes", &n.to_string(), "--team", &team.to_string()])
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "burrow-loadgen control: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
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
        let db_s = db.display().to_string();
        write_policy(&loadgen, &db_s, n, team, &policy)?;
        let (server, port) = serve(&burrow, &db_s, &policy, &dir.join("admin.sock"))?;
        let pid = server.0.id();
        let _server = server;
        let r = load(
            &loadgen,
            &format!("http://127.0.0.1:{port}"),
            &db_s,
            n,
            team,
        )?;
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

/// A PostgreSQL server of the bench's own, in a temporary directory (run as the `postgres`
/// user), stopped and removed when dropped.
struct Postgres {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
}

fn as_postgres(args: &[&str]) -> Result<()> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Postgres {
    fn start() -> Result<Self> {
        if !crate::util::is_root() {
            bail!("bench control --replicas starts a PostgreSQL server: run it as root");
        }
        let find = || {
            let mut bins: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").is_file())
                .collect();
            bins.sort();
            bins.pop()
        };
        let bin = match find() {
            Some(b) => b,
            None if crate::util::apt_install(&["postgresql"]) => {
                find().context("postgresql installed but no initdb")?
            }
            None => bail!("PostgreSQL is needed: apt-get install postgresql"),
        };
        let dir = std::env::temp_dir().join(format!("burrow-bench-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        crate::util::run(Command::new("chown").args(["-R", "postgres"]).arg(&dir))?;
        let pg = Postgres {
            bin,
            dir,
            port: free_port(),
        };
        let data = pg.dir.join("data");
        let data = data.to_str().context("path")?;
        let tool = |t: &str| pg.bin.join(t).display().to_string();
        as_postgres(&[&tool("initdb"), "-D", data, "-A", "trust", "-U", "postgres"])?;
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            pg.port,
            pg.dir.display()
        );
        let log = pg.dir.join("pg.log");
        as_postgres(&[
            &tool("pg_ctl"),
            "-D",
            data,
            "-o",
            &opts,
            "-l",
            log.to_str().context("path")?,
            "-w",
            "start",
        ])?;
        Ok(pg)
    }

    /// A fresh database; its URL.
    fn database(&self, name: &str) -> Result<String> {
        as_postgres(&[
            &self.bin.join("createdb").display().to_string(),
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            name,
        ])?;
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            self.port
        ))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&[
            &self.bin.join("pg_ctl").display().to_string(),
            "-D",
            &self.dir.join("data").display().to_string(),
            "-m",
            "immediate",
            "stop",
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts one `burrow control serve` on `db`; the process and its port.
fn serve(
    burrow: &std::path::Path,
    db: &str,
    policy: &std::path::Path,
    socket: &std::path::Path,
) -> Result<(Guard, u16)> {
    // Port 0: the server says where it listens (no race for a free port).
    let mut child = Command::new(burrow)
        .args(["control", "serve", "--listen", "127.0.0.1:0", "--db", db])
        .arg("--policy")
        .arg(policy)
        .arg("--admin-socket")
        .arg(socket)
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
    let port = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.split(' ').next())
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .with_context(|| format!("control server: {line:?}"))?
        .port();
    Ok((Guard(child), port))
}

/// `cargo xtask bench control --replicas N`: N replicas on one PostgreSQL server against one
/// replica on the same server, for each size: registration throughput (nodes spread over
/// the replicas), one change's propagation to the affected nodes on every replica, and each
/// replica's CPU and peak memory.
pub fn replicas(sizes: &[usize], team: usize, no_write: bool, replicas: usize) -> Result<()> {
    let (burrow, loadgen) = release_binaries()?;
    let pg = Postgres::start()?;
    let mut rows = Vec::new();
    for &n in sizes {
        for count in [1, replicas] {
            let dir = pg.dir.join(format!("run-{n}-{count}"));
            std::fs::create_dir_all(&dir)?;
            let db = pg.database(&format!("burrow_{n}_{count}"))?;
            let policy = dir.join("policy.json");
            write_policy(&loadgen, &db, n, team, &policy)?;
            let mut servers = Vec::new();
            for k in 0..count {
                servers.push(serve(
                    &burrow,
                    &db,
                    &policy,
                    &dir.join(format!("admin{k}.sock")),
                )?);
            }
            let urls: Vec<String> = servers
                .iter()
                .map(|(_, port)| format!("http://127.0.0.1:{port}"))
                .collect();
            let r = load(&loadgen, &urls.join(","), &db, n, team)?;
            let usage: Vec<(f64, u64)> = servers
                .iter()
                .map(|(g, _)| usage(g.0.id()).unwrap_or((0.0, 0)))
                .collect();
            let register_s = r["register_s"].as_f64().unwrap_or(0.0);
            let per_replica: Vec<String> = r["per_replica_ms"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| format!("{:.1}", v.as_f64().unwrap_or(0.0)))
                        .collect()
                })
                .unwrap_or_default();
            let cpu: Vec<String> = usage.iter().map(|(c, _)| format!("{c:.1}")).collect();
            let mem: Vec<String> = usage
                .iter()
                .map(|(_, m)| format!("{:.1}", *m as f64 / 1024.0))
                .collect();
            println!(
                "{n:>6} nodes on {count} replica(s): registered in {register_s:.1} s ({:.0}/s); one change reached {} of {} affected nodes in {:.1} ms (per replica {} ms); unaffected that heard: {}; CPU {} s; peak memory {} MiB",
                n as f64 / register_s.max(1e-9),
                r["heard"],
                team - 1,
                r["propagate_ms"].as_f64().unwrap_or(0.0),
                per_replica.join(" / "),
                r["unaffected_heard"],
                cpu.join(" / "),
                mem.join(" / "),
            );
            rows.push(format!(
                "| {n} | {count} | {register_s:.1} s ({:.0}/s) | {:.1} ms | {} | {} of {} | {} | {} s | {} MiB |",
                n as f64 / register_s.max(1e-9),
                r["propagate_ms"].as_f64().unwrap_or(0.0),
                per_replica.join(" / "),
                r["heard"],
                team - 1,
                r["unaffected_heard"],
                cpu.join(" / "),
                mem.join(" / "),
            ));
        }
    }
    if !no_write {
        let section = format!(
            "## Coordination server replicas\n\nCommand: `cargo xtask bench control --replicas {replicas}`\n\n`burrow control serve` (release) replicas on one PostgreSQL server (a fresh cluster on loopback, started by the bench), against one replica on the same server. N nodes registered over HTTP (32 at a time, spread over the replicas in turn) in teams of {team} whose policy lets each team reach only itself; then one node of team 0 reports new endpoints to the first replica. Propagation: from that request until the last of the other {} members' map streams, spread over the replicas, has the update (the per-replica column: the last on each); a second team's streams must hear nothing. CPU (user + system) and peak RSS per replica cover the whole run. Target: one change reaches the affected nodes on every replica within 1 s at 10,000 nodes.\n\n| nodes | replicas | registration | propagation | per replica (ms) | affected that heard | unaffected that heard | CPU per replica | peak memory per replica |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n{}\n",
            team - 1,
            rows.join("\n")
        );
        crate::util::write_section(
            &root().join("BENCHMARKS.md"),
            "Coordination server replicas",
            &section,
        )?;
        println!("BENCHMARKS.md updated");
    }
    Ok(())
}
