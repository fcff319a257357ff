//! `cargo xtask bench stun`: answered Binding requests per second, burrow vs coturn, in one run.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::util::{
    apt_install, free_port, have, is_root, release_binaries, root, write_section, Guard,
};

#[derive(Subcommand)]
pub enum Which {
    /// STUN server throughput: `burrow stun` against coturn's turnserver on loopback.
    Stun {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Alternating rounds per server; the median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Load generator threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Requests in flight per load thread.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Don't write BENCHMARKS.md.
        #[arg(long)]
        no_write: bool,
    },
    /// DERP: relay throughput vs a TCP forwarder, memory per idle client, added latency.
    Derp {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Throughput rounds; the median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Idle clients to hold.
        #[arg(long, default_value_t = 5000)]
        idle: u32,
        /// Don't write BENCHMARKS.md.
        #[arg(long)]
        no_write: bool,
    },
    /// Coordination server: one change's propagation at 1,000 and 10,000 nodes, CPU, memory.
    Control {
        /// Network sizes.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        nodes: Vec<usize>,
        /// Nodes per team (a change affects its team).
        #[arg(long, default_value_t = 50)]
        team: usize,
        /// Don't write BENCHMARKS.md.
        #[arg(long)]
        no_write: bool,
        /// Instead: this many replicas on one PostgreSQL server (started here; root), against
        /// one replica on the same server, side by side.
        #[arg(long)]
        replicas: Option<usize>,
    },
    /// The mesh through real NATs: iperf3 via burrow up (direct and DERP) vs wireguard-go (root).
    Mesh {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Rounds (each runs all four paths); the table gives medians and ranges.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Don't write BENCHMARKS.md.
        #[arg(long)]
        no_write: bool,
        /// Measure this `burrow` binary instead of this tree's release build (an earlier
        /// commit's, for a before/after in the same conditions); BENCHMARKS.md is left alone.
        #[arg(long)]
        burrow: Option<std::path::PathBuf>,
    },
    /// WireGuard: seal+open and handshakes vs boringtun and the bare AEAD; TUN-to-TUN iperf3
    /// vs wireguard-go between two network namespaces (root).
    Wg {
        /// Seconds per iperf3 measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Alternating TUN rounds per implementation; the median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Don't write BENCHMARKS.md.
        #[arg(long)]
        no_write: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    rate: f64,
    loss: f64,
}

pub fn run(which: Which) -> Result<()> {
    let (seconds, rounds, threads, window, no_write) = match which {
        Which::Stun {
            seconds,
            rounds,
            threads,
            window,
            no_write,
        } => (seconds, rounds, threads, window, no_write),
        Which::Wg {
            seconds,
            rounds,
            no_write,
        } => return crate::wgbench::run(seconds, rounds, no_write),
        Which::Derp {
            seconds,
            rounds,
            idle,
            no_write,
        } => return crate::derpbench::run(seconds, rounds, idle, no_write),
        Which::Control {
            nodes,
            team,
            no_write,
            replicas: None,
        } => return crate::controlbench::run(&nodes, team, no_write),
        Which::Control {
            nodes,
            team,
            no_write,
            replicas: Some(replicas),
        } => return crate::controlbench::replicas(&nodes, team, no_write, replicas),
        Which::Mesh {
            seconds,
            runs,
            no_write,
            burrow,
        } => return crate::meshbench::run(seconds, runs, no_write, burrow),
    };
    let reference_ready = have("turnserver") || (is_root() && apt_install(&["coturn"]));
    if !reference_ready {
        bail!("coturn's turnserver is needed as the reference: apt-get install coturn (as root)");
    }
    let (burrow, loadgen) = release_binaries()?;

    let bp = free_port();
    let mut b = Command::new(&burrow);
    b.args(["stun", "--listen", &format!("127.0.0.1:{bp}")])
        .env("RUST_LOG", "warn");
    let _burrow = start(b, bp, "burrow stun")?;

    let cp = free_port();
    let dir = std::env::temp_dir().join(format!("burrow-bench-coturn-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut c = Command::new("turnserver");
    c.args([
        "-n",
        "--stun-only",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--no-auth",
        "--no-rfc5780",
    ])
    .args(["-L", "127.0.0.1", "-p", &cp.to_string(), "--no-stdout-log"])
    .arg("--log-file")
    .arg(dir.join("turn.log"))
    .arg("--pidfile")
    .arg(dir.join("turn.pid"))
    .arg("--userdb")
    .arg(dir.join("turndb"));
    let _coturn = start(c, cp, "turnserver")?;

    let coturn_version = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "coturn"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..rounds {
        // Alternate the order so neither server always runs on a warmer machine.
        let order: [(&str, u16); 2] = if round % 2 == 0 {
            [("burrow", bp), ("coturn", cp)]
        } else {
            [("coturn", cp), ("burrow", bp)]
        };
        for (name, port) in order {
            let s = load(&loadgen, port, seconds, threads, window)?;
            println!(
                "round {}: {name:>6}: {:>10.0} answered/s, loss {:.3}%",
                round + 1,
                s.rate,
                s.loss * 100.0
            );
            if name == "burrow" {
                ours.push(s)
            } else {
                theirs.push(s)
            }
        }
    }
    let (b, c) = (median(&ours), median(&theirs));
    let ratio = b.rate / c.rate;
    println!();
    println!(
        "burrow stun: {:.0} answered/s (loss {:.3}%)",
        b.rate,
        b.loss * 100.0
    );
    println!(
        "coturn {coturn_version}: {:.0} answered/s (loss {:.3}%)",
        c.rate,
        c.loss * 100.0
    );
    println!("ratio burrow/coturn: {ratio:.2}x (target >= 1.0x)");

    if !no_write {
        let cmd = format!("cargo xtask bench stun --seconds {seconds} --rounds {rounds} --threads {threads} --window {window}");
        let section = format!(
            "## STUN server throughput\n\n\
             Command: `{cmd}`\n\n\
             Loopback, {threads} load threads with {window} Binding requests in flight each, {seconds} s per \
             measurement, {rounds} alternating rounds per server, median shown. Both servers plain STUN \
             (no RFC 5780), default worker counts, on the same {cores}-core machine as the load generator.\n\n\
             | server | answered requests/s | loss |\n|---|---:|---:|\n\
             | burrow stun {version} | {:.0} | {:.3}% |\n| coturn turnserver {coturn_version} | {:.0} | {:.3}% |\n\n\
             **Ratio burrow/coturn: {ratio:.2}x** (target ≥ 1.0x). Measured {date}.\n",
            b.rate, b.loss * 100.0, c.rate, c.loss * 100.0,
            cores = std::thread::available_parallelism().map_or(1, |n| n.get()),
            version = burrow_version(&burrow),
            date = today(),
        );
        write_section(
            &root().join("BENCHMARKS.md"),
            "STUN server throughput",
            &section,
        )?;
        println!("BENCHMARKS.md updated");
    }
    Ok(())
}

fn start(mut cmd: Command, port: u16, name: &str) -> Result<Guard> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if answers(port) {
            return Ok(guard);
        }
    }
    bail!("{name} did not answer on 127.0.0.1:{port}")
}

/// Whether a STUN server answers one Binding request on the port.
fn answers(port: u16) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let req = [
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    let mut buf = [0u8; 512];
    s.send_to(&req, ("127.0.0.1", port)).is_ok() && s.recv(&mut buf).is_ok_and(|n| n >= 20)
}

/// One `burrow-loadgen stun` run against 127.0.0.1:`port`.
fn load(loadgen: &Path, port: u16, seconds: f64, threads: usize, window: usize) -> Result<Sample> {
    let out = Command::new(loadgen)
        .args(["stun", "--target", &format!("127.0.0.1:{port}")])
        .args([
            "--seconds",
            &seconds.to_string(),
            "--threads",
            &threads.to_string(),
            "--window",
            &window.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "load generator failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(Sample {
        rate: v["rate"].as_f64().context("rate")?,
        loss: v["loss"].as_f64().context("loss")?,
    })
}

fn median(samples: &[Sample]) -> Sample {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    s[s.len() / 2]
}

/// "0.1.0" from `burrow --version`.
fn burrow_version(burrow: &Path) -> String {
    Command::new(burrow)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .trim_start_matches("burrow ")
                .to_owned()
        })
        .unwrap_or_default()
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
