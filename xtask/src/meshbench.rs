//! `cargo xtask bench mesh`: iperf3 through the burrow tunnel between two `burrow up` nodes
//! behind real (nftables) NATs — direct over IPv4, direct over IPv6 (through the routers'
//! stateful IPv6 firewalls), and via DERP from a site whose UDP is blocked — next to
//! wireguard-go between the same two namespaces, through the same NATs. Root.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::ipv6::iperf;
use crate::lab::{build, ping, sites, wait};
use crate::util::{apt_install, cargo, have, is_root, root, run as run_cmd, Guard};
use crate::wgbench::{start_wireguard_go, wg_keypair, WgPeer};

/// Median and range of some runs.
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

pub fn run(seconds: u32, runs: u32, no_write: bool, other: Option<PathBuf>) -> Result<()> {
    let no_write = no_write || other.is_some();
    let runs = runs.max(1);
    if !is_root() {
        bail!("the mesh benchmark needs root (network namespaces, nftables, TUN)");
    }
    let tools = [
        "ip",
        "nft",
        "conntrack",
        "ping",
        "iperf3",
        "wireguard-go",
        "wg",
    ];
    if tools.iter().any(|t| !have(t))
        && !apt_install(&[
            "iproute2",
            "nftables",
            "conntrack",
            "iputils-ping",
            "iperf3",
            "wireguard-go",
            "wireguard-tools",
        ])
    {
        bail!("cannot install the tools the benchmark needs");
    }
    let burrow = match other {
        Some(path) => std::fs::canonicalize(&path)
            .with_context(|| format!("--burrow {}: no such binary", path.display()))?,
        None => {
            run_cmd(cargo().args(["build", "--release", "--quiet", "-p", "burrow"]))?;
            root().join("target/release/burrow")
        }
    };
    let sites = sites(&["easy1", "easy2", "blocked", "hard2", "hard3", "relay1"]);
    let built = build(
        &burrow,
        &sites,
        r#"{ "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ],
             "relay": [ { "src": ["*"], "via": ["*"] } ] }"#,
    )?;
    let (ns1, _, _) = built.nodes["easy1"].clone();
    let (ns2, addr2, _) = built.nodes["easy2"].clone();
    let (nsb, _, _) = built.nodes["blocked"].clone();
    let (nsh, _, _) = built.nodes["hard2"].clone();
    let (ns3, addr3, _) = built.nodes["hard3"].clone();
    // IPv6 for easy2 and hard2 only: easy1 → easy2 stays on IPv4, hard2 → easy2 goes direct
    // over IPv6 (its IPv4 NAT is hard; IPv6 needs no punching beyond the firewalls).
    for site in ["easy2", "hard2"] {
        crate::lab::ipv6::set_node_address(&built.v6[site], true)?;
    }
    let sock_h = built.dir.join("hard2").join("burrow.sock");
    // Whether hard2's path to its peer runs over IPv6 (`burrow status --json`).
    let on_v6 = || -> bool {
        let out = Command::new("ip")
            .args(["netns", "exec", &nsh])
            .arg(&burrow)
            .args(["status", "--json", "--socket"])
            .arg(&sock_h)
            .output();
        let Ok(out) = out else { return false };
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["family"] == "ipv6"))
    };
    wait(Duration::from_secs(30), || {
        ping(&nsh, &addr2);
        on_v6()
    })
    .context("hard2 → easy2 never went direct over IPv6")?;
    // hard2 → hard3: two hard NATs, no mapping, hard3 without IPv6: the peer relay at relay1.
    let on_relay = || -> bool {
        let out = Command::new("ip")
            .args(["netns", "exec", &nsh])
            .arg(&burrow)
            .args(["status", "--json", "--socket"])
            .arg(&sock_h)
            .output();
        let Ok(out) = out else { return false };
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["peers"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["name"] == "hard3" && p["relay"]["via"] == "relay1")
        })
    };
    wait(Duration::from_secs(30), || {
        ping(&nsh, &addr3);
        on_relay()
    })
    .context("hard2 → hard3 never went through the peer relay at relay1")?;
    let server3 = Command::new("ip")
        .args(["netns", "exec", &ns3, "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _server3 = Guard(server3);
    let relay_pid = built.lab.pid("relay1").context("relay1's node")?;
    // Paths settle: direct for easy1 → easy2, DERP for blocked → easy2.
    for ns in [&ns1, &nsb] {
        wait(Duration::from_secs(20), || ping(ns, &addr2)).context("no ping through the tunnel")?;
    }
    std::thread::sleep(Duration::from_secs(3));
    let server = Command::new("ip")
        .args(["netns", "exec", &ns2, "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _server = Guard(server);
    std::thread::sleep(Duration::from_millis(500));

    // wireguard-go between the same two nodes' namespaces, through the same NATs.
    let keys: Vec<(String, String)> = (0..2).map(|_| wg_keypair()).collect::<Result<_>>()?;
    let dir = std::env::temp_dir().join(format!("burrow-meshbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut guards = Vec::new();
    for (i, (ns, other_public, inner, other_inner)) in [
        (&ns1, "198.18.2.2:51820", "10.77.0.1/24", "10.77.0.2/32"),
        (&ns2, "198.18.1.2:51820", "10.77.0.2/24", "10.77.0.1/32"),
    ]
    .into_iter()
    .enumerate()
    {
        guards.push(start_wireguard_go(
            ns,
            &format!("wgb{i}"),
            &keys[i].0,
            inner,
            WgPeer {
                public_key: &keys[1 - i].1,
                allowed_ips: other_inner,
                endpoint: other_public,
                // Keep-alives open both NATs (wireguard-go has no hole punching of its own).
                keepalive: Some(1),
            },
            &dir,
        )?);
    }
    wait(Duration::from_secs(30), || ping(&ns1, "10.77.0.2"))
        .context("wireguard-go: no ping through the NATs")?;
    // Rounds interleave the three, so drift on this shared machine hits all alike.
    let (mut direct, mut relayed, mut wggo) = (Vec::new(), Vec::new(), Vec::new());
    let mut direct6 = Vec::new();
    let (mut peer_relayed, mut relay_cpu) = (Vec::new(), Vec::new());
    for round in 1..=runs {
        // The relay node's CPU (user + system) over the run, per Gbit/s carried.
        let cpu0 = cpu_seconds(relay_pid)?;
        let rate = iperf(&nsh, &addr3, seconds)?;
        let cpu = cpu_seconds(relay_pid)? - cpu0;
        peer_relayed.push(rate);
        relay_cpu.push(cpu / f64::from(seconds) / (rate / 1000.0));
        direct.push(iperf(&ns1, &addr2, seconds)?);
        direct6.push(iperf(&nsh, &addr2, seconds)?);
        relayed.push(iperf(&nsb, &addr2, seconds)?);
        wggo.push(iperf(&ns1, "10.77.0.2", seconds)?);
        println!(
            "round {round}/{runs}: burrow direct over IPv4 {:.0}, over IPv6 {:.0}, via a peer relay {:.0} (relay CPU {:.2} cores per Gbit/s), via DERP {:.0}, wireguard-go {:.0} Mbit/s",
            direct.last().unwrap_or(&0.0),
            direct6.last().unwrap_or(&0.0),
            peer_relayed.last().unwrap_or(&0.0),
            relay_cpu.last().unwrap_or(&0.0),
            relayed.last().unwrap_or(&0.0),
            wggo.last().unwrap_or(&0.0)
        );
    }
    if !on_v6() {
        bail!("hard2 → easy2 left IPv6 during the runs");
    }
    if !on_relay() {
        bail!("hard2 → hard3 left the peer relay during the runs");
    }
    drop(guards);
    drop(built);
    let _ = std::fs::remove_dir_all(&dir);

    let (d, r, w) = (summary(&direct), summary(&relayed), summary(&wggo));
    let d6 = summary(&direct6);
    let (p, cpu) = (summary(&peer_relayed), summary(&relay_cpu));
    println!("through the NATs, median of {runs} × {seconds} s: burrow direct over IPv4 {:.0} Mbit/s, over IPv6 {:.0} Mbit/s ({:.2}x IPv4), via a peer relay {:.0} Mbit/s ({:.2}x DERP; relay CPU {:.2} cores per Gbit/s), via DERP {:.0} Mbit/s, wireguard-go direct {:.0} Mbit/s ({:.2}x)", d.0, d6.0, d6.0 / d.0, p.0, p.0 / r.0, cpu.0, r.0, w.0, d.0 / w.0);
    if !no_write {
        let row = |name: &str, (m, lo, hi): (f64, f64, f64)| {
            format!("| {name} | {m:.0} Mbit/s | {lo:.0}–{hi:.0} |\n")
        };
        let section = format!(
            "## The mesh through real NATs\n\nCommand: `cargo xtask bench mesh --seconds {seconds} --runs {runs}`\n\nThe lab's topology (network namespaces, nftables masquerade with an input-drop guard, 198.18.0.0/15 as the \"internet\"), release builds, {seconds} s of iperf3 TCP per run, {runs} rounds interleaving the five: `burrow up` node easy1 → easy2 on the direct IPv4 path both NATs allow; hard2 → easy2 on the direct IPv6 path (both have a 2001:db8::/32 address behind their routers' `ip6` stateful firewalls; hard2's IPv4 NAT is hard, so IPv6 is its only direct path); hard2 → hard3 (two hard NATs, no port mapping, hard3 IPv4-only) through the peer relay at relay1 (an easy NAT, `burrow up --relay-port 40000`; Geneve over UDP, the relay forwarding ciphertext), with the relay node's CPU time (user + system, from /proc) per Gbit/s it carried; a node behind a UDP-blocking router → easy2 via DERP (TCP to the derper in the internet namespace); and wireguard-go between easy1 and easy2 through the same NATs (endpoints on the routers' public addresses, persistent keep-alive to open them). Everything shares this machine's 2 cores, so iperf3, both tunnel ends and the relay compete for CPU.\n\n| path | median | range |\n|---|---:|---:|\n{}{}{}{}{}\nburrow direct / wireguard-go (medians): **{:.2}×**; burrow direct over IPv6 / over IPv4: **{:.2}×**; peer relay / DERP: **{:.2}×** (target ≥ 1.5×); the relay node's CPU: **{:.2} cores per Gbit/s** (median; range {:.2}–{:.2}).\n",
            row("burrow, direct over IPv4", d),
            row("burrow, direct over IPv6", d6),
            row("burrow, via a peer relay", p),
            row("burrow, via DERP", r),
            row("wireguard-go, direct (IPv4)", w),
            d.0 / w.0,
            d6.0 / d.0,
            p.0 / r.0,
            cpu.0,
            cpu.1,
            cpu.2
        );
        crate::util::write_section(
            &root().join("BENCHMARKS.md"),
            "The mesh through real NATs",
            &section,
        )?;
        println!("BENCHMARKS.md updated");
    }
    Ok(())
}

/// A process's CPU time so far (user + system), seconds, from /proc/PID/stat.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses: utime is the 14th
    // field overall, stime the 15th, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}
