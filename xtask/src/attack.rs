//! `cargo xtask attack`: the adversarial suite. A hostile member and hostile clients of each
//! server, as code anyone can run:
//! 1. the attack tests (each performs one attack from the security audit against the real
//!    component, loopback only) — unit, sans-IO and binary tests across the workspace;
//! 2. the simulator's hostile member (`burrow-sim --attack all`), judged by per-address
//!    packet counts and byte budgets;
//! 3. the lab (root): `burrow-hostile`, a member with an altered sender, against real
//!    `burrow up` nodes behind nftables NATs, judged by the victim's TUN counters, its
//!    router's nftables counters, its memory and its liveness.
//!
//! The reduced form (`cargo xtask test`, which runs the tests anyway) is 2 and 3 with fewer
//! seeds and shorter attacks.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::{build, is_tooling_ready, ping, sh, wait, Nat, Site};
use crate::util::{cargo, is_root, root, run as run_cmd};

/// Test targets that perform attacks: (package, test target or "lib", name filter).
const ATTACK_TESTS: &[(&str, &str, &str)] = &[
    ("burrow-control", "filter_attacks", ""),
    ("burrow-node", "cryptokey_routing", ""),
    ("burrow-node", "engine_attacks", ""),
    ("burrow-node", "handshake_flood", ""),
    // Peer relays: allocation only for pairs the policy allows, no Binds toward third parties,
    // relay framing only from bound relay paths.
    ("burrow-node", "peer_relay_attacks", ""),
    // A relay that drops WireGuard but forwards disco, a pair the policy stops allowing, a
    // lost Answer: none holds the traffic.
    ("burrow-node", "peer_relay_switch", ""),
    // The relay server: strangers, spoofed Answers, floods, replays, unbound destinations.
    ("burrow-relay", "adversarial", ""),
    ("burrow-relay", "geneve", ""),
    // Mutual port prediction: a peer's announcements cannot make us spend sessions faster.
    ("burrow-punch", "prediction", ""),
    ("burrow-punch", "attacks", ""),
    // Fast loss detection: a path answered only over the relay (data eaten, pings passed)
    // cannot keep us sending everything twice past the data-stall demotion.
    ("burrow-sim", "loss_detection", ""),
    // Both families: a standby's pings set off no ping-pong; withdrawal only by the peer itself.
    ("burrow-punch", "families", ""),
    ("burrow-disco", "messages", ""),
    ("burrow-derp", "relay", ""),
    ("burrow-derp", "relay_attacks", ""),
    ("burrow-derp", "frames", ""),
    ("burrow-derp", "lib", ""),
    ("burrow-stun", "lib", "server::"),
    ("burrow", "lib", "control::"),
    ("burrow-wg", "lib", "device::"),
    ("burrow", "lib", "up::"),
    ("burrow", "lib", "derp_client::"),
    ("burrow", "lib", "derper::"),
    ("burrow", "derper", ""),
    ("burrow", "derper_attacks", ""),
    ("burrow", "control_server_attacks", ""),
    // Control replicas (root, PostgreSQL): a challenge replayed on another replica, an
    // endpoint budget spread over replicas, a replica killed mid-burst (nothing lost or
    // duplicated), a database restart.
    ("burrow", "control_replicas", ""),
    ("burrow-sim", "attack", ""),
    // The port mapper against forged, off-gateway and oversized answers from its LAN.
    ("burrow-portmap", "attacks", ""),
    // A hostile or confused control plane: stolen addresses and keys refused, a removed peer's
    // packets dropped at once, secrets out of Debug; a removed or expired member cannot keep
    // talking; the reference model (no key on any wire, delivery only as the policy allows).
    ("burrow-session", "lib", ""),
    ("burrow-sim", "tailnet", ""),
    ("burrow-des", "reference_model", ""),
];

/// `cargo xtask attack` (`reduced`: the form `cargo xtask test` runs).
pub fn run(reduced: bool) -> Result<()> {
    let mut failures = Vec::new();
    if !reduced {
        for (package, target, filter) in ATTACK_TESTS {
            let mut c = cargo();
            c.args(["test", "-p", package]);
            if *target == "lib" {
                c.arg("--lib");
            } else {
                c.args(["--test", target]);
            }
            if !filter.is_empty() {
                c.arg(filter);
            }
            println!("xtask attack: {package} {target} {filter}");
            if let Err(e) = run_cmd(&mut c) {
                failures.push(format!("{package} {target}: {e}"));
            }
        }
    }
    if let Err(e) = simulator(reduced) {
        failures.push(format!("simulator: {e}"));
    }
    if let Err(e) = lab(reduced) {
        failures.push(format!("lab: {e}"));
    }
    if !failures.is_empty() {
        for f in &failures {
            println!("FAILED attack {f}");
        }
        bail!("attack: {} part(s) failed", failures.len());
    }
    println!("attack: every invariant held");
    Ok(())
}

fn simulator(reduced: bool) -> Result<()> {
    run_cmd(cargo().args(["build", "--release", "--quiet", "-p", "burrow-sim"]))?;
    let (seeds, seconds) = if reduced {
        ("1..2", "20")
    } else {
        ("1..5", "60")
    };
    run_cmd(
        Command::new(root().join("target/release/burrow-sim")).args([
            "--attack",
            "all",
            "--seeds",
            seeds,
            "--attack-seconds",
            seconds,
        ]),
    )
}

/// Third-party addresses the hostile member names: routed from the victim's router into the
/// lab's internet namespace, where nothing answers and no route leads out.
const THIRD_PARTY: &str = "198.18.250.0";

const SITES: &[Site] = &[
    Site {
        name: "victim",
        nat: Nat::Easy,
    },
    Site {
        name: "honest",
        nat: Nat::Easy,
    },
    Site {
        name: "mallory",
        nat: Nat::Easy,
    },
];

const POLICY: &str =
    r#"{ "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "icmp" } ] }"#;

/// Counters on the victim's router: packets toward the third-party /24, and toward the
/// address the false NatInfo names.
const COUNTERS: &str = "table ip burrowattack {\n counter spray { }\n counter natinfo { }\n chain watch {\n  type filter hook forward priority -10; policy accept;\n  ip daddr 198.18.250.250 counter name \"natinfo\"\n  ip daddr 198.18.250.0/24 counter name \"spray\"\n }\n}\n";

fn counter(router: &str, name: &str) -> Result<u64> {
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        router,
        "nft",
        "list",
        "counter",
        "ip",
        "burrowattack",
        name,
    ])?;
    let packets = out
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .context("no packet count")?;
    Ok(packets.parse()?)
}

fn tun_rx(ns: &str) -> Result<u64> {
    let out = sh(&["ip", "-n", ns, "-s", "-j", "link", "show", "burrow0"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .context("no rx counter")
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `burrow-hostile` in `ns`, calling `on_line` for each line it prints.
fn hostile(
    ns: &str,
    bin: &std::path::Path,
    args: &[&str],
    mut on_line: impl FnMut(&str) -> Result<()>,
) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()?;
    let out = BufReader::new(child.stdout.take().context("stdout")?);
    for line in out.lines() {
        let line = line?;
        println!("  {line}");
        on_line(&line)?;
    }
    if !child.wait()?.success() {
        bail!("burrow-hostile {args:?} failed");
    }
    Ok(())
}

fn lab(reduced: bool) -> Result<()> {
    if !is_root() {
        println!("SKIPPED attack lab: needs root for network namespaces, nftables and TUN devices");
        return Ok(());
    }
    if !is_tooling_ready() {
        return Ok(()); // it printed what is missing
    }
    run_cmd(cargo().args([
        "build",
        "--quiet",
        "-p",
        "burrow",
        "-p",
        "burrow-conformance",
    ]))?;
    let burrow = root().join("target/debug/burrow");
    let hostile_bin = root().join("target/debug/burrow-hostile");
    let built = build(&burrow, SITES, POLICY)?;
    let mut lab = built.lab;
    let (victim_ns, victim_ip, victim_router) = built.nodes["victim"].clone();
    let (honest_ns, _, _) = built.nodes["honest"].clone();
    let (mallory_ns, _, _) = built.nodes["mallory"].clone();
    let f = built.dir.join("counters.nft");
    std::fs::write(&f, COUNTERS)?;
    lab.in_ns(
        &victim_router,
        &["nft", "-f", f.to_str().unwrap_or_default()],
    )?;
    if wait(Duration::from_secs(20), || ping(&honest_ns, &victim_ip)).is_none() {
        bail!("the honest node cannot reach the victim before the attack");
    }
    let victim_pid = lab.pid("victim").context("victim pid")?;
    let gw = "198.18.3.1"; // mallory is site 3
    let control = format!("https://{gw}:8080");
    let derp = format!("http://{gw}:8443/derp");
    let seconds = if reduced { "8" } else { "20" };
    let common = |attack: &'static str| -> Vec<String> {
        [
            "--control",
            &control,
            "--tls-ca",
            built.ca.to_str().unwrap_or_default(),
            "--auth-key-file",
            built.auth_key_file.to_str().unwrap_or_default(),
            "--derp",
            &derp,
            "--victim",
            "victim",
            "--impersonate",
            "honest",
            "--third-party",
            THIRD_PARTY,
            "--seconds",
            seconds,
            "--attack",
            attack,
        ]
        .map(String::from)
        .to_vec()
    };
    let mut failures = Vec::new();

    // 1. Spoofed inner source: nothing reaches the victim's TUN; the control run does.
    let rx0 = tun_rx(&victim_ns)?;
    let mut marks = Vec::new();
    let args = common("spoof");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    hostile(&mallory_ns, &hostile_bin, &args, |line| {
        if line.ends_with("spoof-done") || line.ends_with("control-done") {
            marks.push(tun_rx(&victim_ns)?);
        }
        Ok(())
    })?;
    let [after_spoof, after_control] = marks[..] else {
        bail!("burrow-hostile did not finish the spoof phase");
    };
    let (spoofed_in, control_in) = (after_spoof - rx0, after_control - after_spoof);
    println!(
        "spoofed source: {spoofed_in} of 200 reached the victim's TUN (the handshake's one honest packet included); control run: {control_in} of 200"
    );
    if spoofed_in > 5 {
        failures.push(format!(
            "{spoofed_in} spoofed packets reached the victim's TUN"
        ));
    }
    if control_in < 150 {
        failures.push(format!(
            "only {control_in} of 200 honest packets arrived: the spoof check proves nothing"
        ));
    }

    // 2. CallMeMaybe spray, false NatInfo, handshake flood, with an honest ping during the flood.
    let rss0 = rss_kib(victim_pid).unwrap_or(0);
    let mut served_during_flood = None;
    let args = common("spray,natinfo,flood");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    hostile(&mallory_ns, &hostile_bin, &args, |line| {
        if line.contains("natinfo claimed") {
            // The flood starts now.
            std::thread::sleep(Duration::from_secs(2));
            served_during_flood =
                Some(ping(&honest_ns, &victim_ip) || ping(&honest_ns, &victim_ip));
        }
        Ok(())
    })?;
    let rss1 = rss_kib(victim_pid).unwrap_or(0);
    let (spray, natinfo) = (
        counter(&victim_router, "spray")?,
        counter(&victim_router, "natinfo")?,
    );
    let secs: u64 = seconds.parse()?;
    // Disco pings toward a peer's candidates: 64 at once, then 8 a second, over the whole run
    // (spray and natinfo phases, and the upgrade retries after them).
    let budget = 64 + 8 * (2 * secs + 15);
    println!(
        "call-me-maybe spray and false NatInfo: {spray} packets toward {THIRD_PARTY}/24 ({natinfo} to the NatInfo target), budget {budget}"
    );
    if spray > budget {
        failures.push(format!(
            "{spray} packets toward third parties (budget {budget})"
        ));
    }
    let alive = lab.running("victim");
    let after = ping(&honest_ns, &victim_ip);
    println!(
        "handshake flood: victim {} (RSS {} → {} MiB); honest ping during the flood: {}, after: {}",
        if alive { "running" } else { "EXITED" },
        rss0 / 1024,
        rss1 / 1024,
        served_during_flood.map_or("not tried", |ok| if ok { "ok" } else { "FAILED" }),
        if after { "ok" } else { "FAILED" }
    );
    if !alive {
        failures.push("the victim's burrow up exited".into());
    }
    if rss1 > rss0 + 64 * 1024 {
        failures.push(format!(
            "the victim's memory grew by {} MiB",
            (rss1 - rss0) / 1024
        ));
    }
    if served_during_flood != Some(true) || !after {
        failures.push("the honest peer was not served during or after the attack".into());
    }
    drop(lab);
    if !failures.is_empty() {
        for f in &failures {
            println!("FAILED {f}");
        }
        bail!("{} invariant(s) broken", failures.len());
    }
    let _ = std::fs::remove_dir_all(&built.dir);
    println!("attack lab: every invariant held");
    Ok(())
}
