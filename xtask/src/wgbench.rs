//! `cargo xtask bench wg`: burrow-wg against boringtun and the bare AEAD (in process), and
//! `burrow wg` against wireguard-go TUN to TUN over veth between two network namespaces.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{apt_install, cargo, have, is_root, root, run as run_cmd, Guard};

fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn wait_for(mut ok: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("timed out");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A WireGuard key pair from wireguard-tools: (private, public), base64.
pub(crate) fn wg_keypair() -> Result<(String, String)> {
    let k = sh(&["wg", "genkey"])?.trim().to_owned();
    let mut c = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut c.stdin.take().context("stdin")?, k.as_bytes())?;
    let p = String::from_utf8(c.wait_with_output()?.stdout)?
        .trim()
        .to_owned();
    Ok((k, p))
}

/// wireguard-go's one peer.
pub(crate) struct WgPeer<'a> {
    /// Its public key.
    pub(crate) public_key: &'a str,
    /// What it may send from.
    pub(crate) allowed_ips: &'a str,
    /// Where it is.
    pub(crate) endpoint: &'a str,
    /// Persistent keep-alive, seconds.
    pub(crate) keepalive: Option<u32>,
}

/// Starts wireguard-go as `ifname` in namespace `ns` (names must differ across namespaces:
/// its control socket is global), listening on 51820 with `address`, and configures its peer.
pub(crate) fn start_wireguard_go(
    ns: &str,
    ifname: &str,
    private_key: &str,
    address: &str,
    peer: WgPeer<'_>,
    dir: &Path,
) -> Result<Guard> {
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "env",
            "WG_PROCESS_FOREGROUND=1",
            "wireguard-go",
            "-f",
            ifname,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let guard = Guard(child);
    wait_for(|| link_exists(ns, ifname))?;
    let kf = dir.join(format!("{ifname}.key"));
    std::fs::write(&kf, private_key)?;
    let keepalive = peer.keepalive.map(|k| k.to_string());
    let mut args = vec![
        "ip",
        "netns",
        "exec",
        ns,
        "wg",
        "set",
        ifname,
        "private-key",
        kf.to_str().context("path")?,
        "listen-port",
        "51820",
        "peer",
        peer.public_key,
        "allowed-ips",
        peer.allowed_ips,
        "endpoint",
        peer.endpoint,
    ];
    if let Some(k) = &keepalive {
        args.extend(["persistent-keepalive", k.as_str()]);
    }
    sh(&args)?;
    sh(&["ip", "-n", ns, "addr", "add", address, "dev", ifname])?;
    sh(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
    Ok(guard)
}

fn link_exists(ns: &str, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "link", "show", dev])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Which implementation runs on both ends (or none: the bare veth, the ceiling).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Impl {
    /// `burrow wg` with TUN offloads (the default).
    Burrow,
    /// `burrow wg --no-offload`: one packet per TUN read and write.
    BurrowPlain,
    /// `burrow wg --parallel-crypto`: a large batch sealed or opened on two threads.
    BurrowParallel,
    WireguardGo,
    /// No tunnel: iperf3 straight over the veth.
    Bare,
}

impl Impl {
    const ALL: [Impl; 5] = [
        Impl::Burrow,
        Impl::BurrowParallel,
        Impl::BurrowPlain,
        Impl::WireguardGo,
        Impl::Bare,
    ];

    fn label(self) -> &'static str {
        match self {
            Impl::Burrow => "burrow wg",
            Impl::BurrowPlain => "burrow wg --no-offload",
            Impl::BurrowParallel => "burrow wg --parallel-crypto",
            Impl::WireguardGo => "wireguard-go",
            Impl::Bare => "bare veth",
        }
    }
}

/// One iperf3 run: throughput, and the CPU the two tunnel processes and the machine spent.
#[derive(Clone, Copy, Debug)]
struct Measure {
    mbps: f64,
    /// CPU seconds of both tunnel processes per GB moved.
    process_s_per_gb: f64,
    /// Busy CPU seconds of the whole machine (iperf3, TCP stacks, softirq included) per GB.
    machine_s_per_gb: f64,
}

/// Busy CPU seconds of the whole machine so far (`/proc/stat`, all but idle and iowait).
fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("/proc/stat")?;
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse::<f64>().unwrap_or(0.0))
        .collect();
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    Ok((f.iter().sum::<f64>() - idle) / 100.0)
}

/// Brings up a two-namespace topology with `which` on both ends; measures iperf3 A→B with
/// `streams` parallel streams.
fn tun_throughput(which: Impl, burrow: &Path, seconds: u32, streams: u32) -> Result<Measure> {
    let id = std::process::id() % 10_000;
    let (na, nb) = (format!("bba{id}"), format!("bbb{id}"));
    let _ns = Namespaces(vec![na.clone(), nb.clone()]);
    sh(&["ip", "netns", "add", &na])?;
    sh(&["ip", "netns", "add", &nb])?;
    sh(&[
        "ip", "link", "add", "vba", "netns", &na, "type", "veth", "peer", "name", "vbb", "netns",
        &nb,
    ])?;
    for (n, v, a) in [(&na, "vba", "10.98.0.1/24"), (&nb, "vbb", "10.98.0.2/24")] {
        sh(&["ip", "-n", n, "addr", "add", a, "dev", v])?;
        sh(&["ip", "-n", n, "link", "set", v, "up"])?;
        sh(&["ip", "-n", n, "link", "set", "lo", "up"])?;
    }
    let dir = std::env::temp_dir().join(format!("burrow-wgbench-{id}"));
    std::fs::create_dir_all(&dir)?;
    let keys: Vec<(String, String)> = (0..2).map(|_| wg_keypair()).collect::<Result<_>>()?;
    let mut guards = Vec::new();
    for (i, (ns, me, other_ep, inner, other_inner)) in [
        (
            &na,
            0usize,
            "10.98.0.2:51820",
            "10.201.0.1/24",
            "10.201.0.2/32",
        ),
        (&nb, 1, "10.98.0.1:51820", "10.201.0.2/24", "10.201.0.1/32"),
    ]
    .into_iter()
    .enumerate()
    {
        let ifname = format!("bwb{i}");
        let (key, _) = &keys[me];
        let (_, peer_pub) = &keys[1 - me];
        match which {
            Impl::Burrow | Impl::BurrowPlain | Impl::BurrowParallel => {
                let conf = dir.join(format!("{ifname}.conf"));
                std::fs::write(
                    &conf,
                    format!("[Interface]\nPrivateKey = {key}\nListenPort = 51820\nAddress = {inner}\n[Peer]\nPublicKey = {peer_pub}\nEndpoint = {other_ep}\nAllowedIPs = {other_inner}\n"),
                )?;
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns])
                    .arg(burrow)
                    .args(["wg", "--config"])
                    .arg(&conf);
                if which == Impl::BurrowPlain {
                    cmd.arg("--no-offload");
                }
                if which == Impl::BurrowParallel {
                    cmd.arg("--parallel-crypto");
                }
                let child = cmd
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?;
                guards.push(Guard(child));
                wait_for(|| link_exists(ns, &ifname))?;
            }
            Impl::WireguardGo => {
                guards.push(start_wireguard_go(
                    ns,
                    &ifname,
                    key,
                    inner,
                    WgPeer {
                        public_key: peer_pub,
                        allowed_ips: other_inner,
                        endpoint: other_ep,
                        keepalive: None,
                    },
                    &dir,
                )?);
            }
            Impl::Bare => {}
        }
    }
    let target = if which == Impl::Bare {
        "10.98.0.2"
    } else {
        "10.201.0.2"
    };
    // Handshake, then measure.
    let _ = Command::new("ip")
        .args(["netns", "exec", &na, "ping", "-c", "3", "-W", "2", target])
        .output();
    let server = Command::new("ip")
        .args(["netns", "exec", &nb, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _server = Guard(server);
    std::thread::sleep(Duration::from_millis(500));
    let pids: Vec<u32> = guards.iter().map(|g| g.0.id()).collect();
    let process_cpu = || -> f64 {
        pids.iter()
            .map(|p| crate::meshbench::cpu_seconds(*p).unwrap_or(0.0))
            .sum()
    };
    let (p0, m0) = (process_cpu(), machine_busy_seconds()?);
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &na,
        "iperf3",
        "-c",
        target,
        "-t",
        &seconds.to_string(),
        "-P",
        &streams.to_string(),
        "-J",
    ])?;
    let (p1, m1) = (process_cpu(), machine_busy_seconds()?);
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result")?;
    let gb = v["end"]["sum_received"]["bytes"]
        .as_f64()
        .context("iperf3 bytes")?
        / 1e9;
    drop(guards);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Measure {
        mbps: bps / 1e6,
        process_s_per_gb: (p1 - p0) / gb.max(1e-9),
        machine_s_per_gb: (m1 - m0) / gb.max(1e-9),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(seconds: u32, rounds: usize, no_write: bool) -> Result<()> {
    // In-process figures.
    let out = cargo()
        .args(["bench", "-q", "-p", "burrow-conformance", "--bench", "wg"])
        .output()?;
    if !out.status.success() {
        bail!(
            "wg micro-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("benchmark output")?
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&line)?;
    let f = |a: &str, b: &str| v[a][b].as_f64().unwrap_or(0.0);
    let (bt, bo, ae) = (
        f("transport", "burrow_per_s"),
        f("transport", "boringtun_per_s"),
        f("transport", "aead_per_s"),
    );
    let (hb, ho) = (
        f("handshakes", "burrow_per_s"),
        f("handshakes", "boringtun_per_s"),
    );
    println!("transport seal+open 1420 B: burrow {bt:.0}/s, boringtun {bo:.0}/s ({:.2}x), bare AEAD {ae:.0}/s ({:.2}x of ceiling)", bt / bo, bt / ae);
    println!(
        "handshakes: burrow {hb:.0}/s, boringtun {ho:.0}/s ({:.2}x)",
        hb / ho
    );

    // Which AEAD backend: measured, not assumed (a standalone crate, so aws-lc-rs's C build
    // happens only here).
    let aead = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["run", "-q", "--release", "--manifest-path"])
        .arg(root().join("xtask/aead-bench/Cargo.toml"))
        .output()?;
    if !aead.status.success() {
        bail!(
            "AEAD benchmark failed: {}",
            String::from_utf8_lossy(&aead.stderr)
        );
    }
    let a: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&aead.stdout)
            .lines()
            .last()
            .unwrap_or("{}"),
    )?;
    let us = |k: &str| a[k].as_f64().unwrap_or(0.0);
    println!(
        "AEAD seal+open 1424 B: ring {:.3} µs, aws-lc-rs {:.3} µs, RustCrypto {:.3} µs",
        us("ring_us"),
        us("aws_lc_rs_us"),
        us("rustcrypto_us")
    );
    let aead_line = format!(
        "| AEAD backend, seal + open of 1,424 bytes (chooses the default) | ring {:.3} µs | aws-lc-rs {:.3} µs; RustCrypto {:.3} µs | aws-lc-rs/ring {:.2}, RustCrypto/ring {:.1} | pick by measurement: ring and aws-lc-rs share BoringSSL's assembly and tie within noise; ring is the default (no C build) |",
        us("ring_us"),
        us("aws_lc_rs_us"),
        us("rustcrypto_us"),
        us("aws_lc_rs_us") / us("ring_us"),
        us("rustcrypto_us") / us("ring_us")
    );

    // TUN to TUN.
    let mut tun_line =
        String::from("not measured: needs root, wireguard-go, wireguard-tools and iperf3");
    let tools_ready = is_root()
        && (["wireguard-go", "wg", "iperf3", "ip"]
            .iter()
            .all(|t| have(t))
            || apt_install(&["wireguard-go", "wireguard-tools", "iperf3", "iproute2"]));
    if tools_ready {
        run_cmd(cargo().args(["build", "--release", "--quiet", "-p", "burrow"]))?;
        let burrow = root().join("target/release/burrow");
        // results[streams][impl] = one Measure per round; the order rotates every round.
        let stream_counts = [1u32, 4];
        let mut results = vec![vec![Vec::<Measure>::new(); Impl::ALL.len()]; 2];
        for r in 0..rounds {
            for (si, &streams) in stream_counts.iter().enumerate() {
                for k in 0..Impl::ALL.len() {
                    let which = Impl::ALL[(k + r) % Impl::ALL.len()];
                    let m = tun_throughput(which, &burrow, seconds, streams)?;
                    println!(
                        "round {}: {streams} stream(s) {:>24}: {:>6.0} Mbit/s, {:.2} CPU s/GB in the tunnels, {:.2} machine-wide",
                        r + 1,
                        which.label(),
                        m.mbps,
                        m.process_s_per_gb,
                        m.machine_s_per_gb
                    );
                    let i = Impl::ALL.iter().position(|w| *w == which).unwrap_or(0);
                    results[si][i].push(m);
                }
            }
        }
        // The ceiling, measured: one thread sealing while another opens (the slower side);
        // derived from the one-core rate above when the measure is missing.
        let derived_gbps = 2.0 * ae * 1420.0 * 8.0 / 1e9;
        let ceiling_gbps = match a["two_core_gbps"].as_f64() {
            Some(g) if g > 0.0 => g,
            _ => derived_gbps,
        };
        println!(
            "AEAD ceiling, one thread sealing while another opens: {ceiling_gbps:.1} Gbit/s (seal {:.0}/s, open {:.0}/s; derived from one core: {derived_gbps:.1})",
            a["seal_per_s"].as_f64().unwrap_or(0.0),
            a["open_per_s"].as_f64().unwrap_or(0.0),
        );
        let mut rows = String::new();
        for (si, &streams) in stream_counts.iter().enumerate() {
            let med =
                |i: usize, f: fn(&Measure) -> f64| median(results[si][i].iter().map(f).collect());
            let mbps = |i| med(i, |m| m.mbps);
            let (ours, parallel, plain, go, bare) = (mbps(0), mbps(1), mbps(2), mbps(3), mbps(4));
            println!(
                "TUN to TUN iperf3, {streams} stream(s): burrow wg {ours:.0} Mbit/s, --parallel-crypto {parallel:.0}, --no-offload {plain:.0}, wireguard-go {go:.0} ({:.2}x), bare veth {bare:.0}; {:.1} % of the AEAD ceiling ({ceiling_gbps:.1} Gbit/s)",
                ours / go,
                ours / 10.0 / ceiling_gbps
            );
            rows.push_str(&format!(
                "| {streams} | **{ours:.0}** | {parallel:.0} | {plain:.0} | {go:.0} | **{:.2}×** | {:.2}× | {:.2}× | {bare:.0} | {:.1} % | {:.2} / {:.2} | {:.2} / {:.2} |\n",
                ours / go,
                parallel / ours,
                ours / plain,
                ours / 10.0 / ceiling_gbps,
                med(0, |m| m.process_s_per_gb),
                med(3, |m| m.process_s_per_gb),
                med(0, |m| m.machine_s_per_gb),
                med(3, |m| m.machine_s_per_gb),
            ));
        }
        tun_line = format!(
            "\n\nTUN→TUN TCP over veth between two namespaces (iperf3, {seconds} s per run, median of {rounds} rounds, \
             the five set-ups rotating within each round). The AEAD ceiling is measured: one thread sealing \
             1,420-byte packets with ring while another opens them, both at once for 2 s, the slower side's \
             rate: {ceiling_gbps:.1} Gbit/s (twice ring's one-core seal + open rate above gives \
             {derived_gbps:.1}).\n\n\
             | streams | burrow wg (Mbit/s) | --parallel-crypto | --no-offload | wireguard-go | burrow / wireguard-go | crypto on two threads / one | offload on / off | bare veth | of the AEAD ceiling | CPU s/GB, tunnel processes: burrow / wireguard-go | CPU s/GB, whole machine: burrow / wireguard-go |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n{rows}"
        );
    } else {
        println!("SKIPPED TUN-to-TUN benchmark: {tun_line}");
        tun_line = format!("\n\nTUN→TUN TCP over veth: {tun_line}.\n");
    }
    if !no_write {
        let cmd = format!("cargo xtask bench wg --seconds {seconds} --rounds {rounds}");
        let section = format!(
            "## WireGuard (burrow-wg)\n\nCommand: `{cmd}`\n\nIn process, one core, best of 5 rounds of 2 s, contenders interleaved; \
             ring's ChaCha20-Poly1305 is the AEAD under both burrow-wg (default backend) and boringtun 0.7.1.\n\n\
             | measure | burrow | reference | ratio | target |\n|---|---:|---:|---:|---|\n\
             | seal + open, 1,420-byte transport packets | {bt:.0}/s | boringtun {bo:.0}/s | **{:.2}×** | ≥ 1.0× |\n\
             | same, against the bare AEAD on the same buffers (ceiling) | {bt:.0}/s | ring {ae:.0}/s | **{:.2}×** | ≥ 0.90× |\n\
             | complete handshakes (initiation → response → first data) | {hb:.0}/s | boringtun {ho:.0}/s | **{:.2}×** | ≥ 1.0× |\n\
             {aead_line}{tun_line}\n\
             Where the time goes: a handshake is eight X25519 operations (two fixed-base, six variable-base) \
             in both implementations, on the same x25519-dalek, and they dominate, so parity is the expected \
             result; burrow caches public keys and reuses HMAC state to shave what is left. Transport is one \
             ChaCha20-Poly1305 seal and open, so both sit at the AEAD's ceiling. Through TUN devices, \
             `burrow wg` reads TCP super-packets of up to 64 KiB from a TUN opened with `IFF_VNET_HDR` \
             and TSO, cuts them into segments (burrow-offload), seals them and sends runs of equal-sized \
             datagrams with UDP GSO; it reads with UDP GRO and `recvmmsg` and writes each batch's \
             segments to the TUN coalesced into super-packets. Encryption and decryption run on separate \
             tasks; each batch's counters are taken under the device's lock (`Device::reserve`, \
             `Device::opener`) and its AEAD work is done outside it. With `--parallel-crypto` a batch of \
             8 packets or more is split over two threads (half on a rayon thread) and still leaves, or is \
             accepted through the replay window, in order; on these two cores, which the traffic's TCP \
             stacks and iperf3 share, that costs more than it saves, so it is off by default. The Debian wireguard-go measured here predates wireguard-go's own \
             offload work.\n\n\
             Measured {}.\n\n",
            bt / bo,
            bt / ae,
            hb / ho,
            sh(&["date", "+%Y-%m-%d"]).unwrap_or_default().trim()
        );
        crate::util::write_section(
            &root().join("BENCHMARKS.md"),
            "WireGuard (burrow-wg)",
            &section,
        )?;
        println!("BENCHMARKS.md updated");
    }
    Ok(())
}
