//! `cargo xtask demo`: a real STUN server with RFC 5780 on two loopback addresses and a
//! netcheck against it; then the whole mesh in the simulator: control, DERP, STUN and two nodes
//! behind an easy and a hard NAT going from DERP to direct.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{cargo, free_port_pair, root, run as run_cmd, Guard};

pub fn run() -> Result<()> {
    run_cmd(cargo().args(["build", "--quiet", "-p", "burrow"]))?;
    let burrow = root().join("target/debug/burrow");
    let (p, q) = free_port_pair();
    let primary = format!("127.0.0.1:{p}");
    let alt = format!("127.0.0.2:{q}");
    println!("$ burrow stun --listen {primary} --alt {alt}");
    let mut child = Command::new(&burrow)
        .args(["stun", "--listen", &primary, "--alt", &alt])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting burrow stun")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let _server = Guard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("listening on") {
        bail!("burrow stun did not start: {line:?}");
    }
    println!("  {}", line.trim());
    let mut servers = vec![format!("loopback={primary}")];
    // A second server on [::1], when this host has IPv6 loopback, so both families show.
    let mut _v6 = None;
    if let Some(port) = std::net::UdpSocket::bind("[::1]:0")
        .ok()
        .and_then(|s| s.local_addr().ok())
        .map(|a| a.port())
    {
        let v6 = format!("[::1]:{port}");
        println!("$ burrow stun --listen {v6}");
        let mut child = Command::new(&burrow)
            .args(["stun", "--listen", &v6])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .context("starting burrow stun on [::1]")?;
        let stdout = child.stdout.take().context("server stdout")?;
        _v6 = Some(Guard(child));
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        println!("  {}", line.trim());
        servers.push(format!("loopback={v6}"));
    }
    println!();
    let args: Vec<String> = servers
        .iter()
        .flat_map(|s| ["--stun".to_owned(), s.clone()])
        .collect();
    println!("$ burrow netcheck {}", args.join(" "));
    let status = Command::new(&burrow).arg("netcheck").args(&args).status()?;
    if !status.success() {
        bail!("burrow netcheck failed: {status}");
    }
    println!();
    println!("Loopback has no NAT, so netcheck reports nat_type none; the RFC 5780 tests against");
    println!("the alternate address 127.0.0.2 show endpoint-independent mapping and filtering.");
    println!("`burrow netcheck --json` prints the same report as stable JSON.");
    println!();
    println!("The whole mesh in the simulator: the real control server, a DERP relay, three STUN");
    println!("servers, and two burrow nodes, one behind an easy NAT and one behind a hard");
    println!("(random-port) NAT. They register, learn each other from their netmap streams, reach");
    println!("each other over DERP at once, then go direct after birthday probing.");
    run_cmd(cargo().args(["build", "--quiet", "--release", "-p", "burrow-sim"]))?;
    let sim = root().join("target/release/burrow-sim");
    println!("$ cargo xtask sim --story easy:hard --seed 1");
    let status = Command::new(&sim)
        .args(["--story", "easy:hard", "--seed", "1"])
        .status()?;
    if !status.success() {
        bail!("the simulated story failed: {status}");
    }
    println!();
    println!("`cargo xtask sim --pair easy:hard` explains one pair's punching in detail, and");
    println!("`cargo xtask sim --matrix --report out/` runs every pair of NAT presets (out/report.html).");
    println!("`cargo xtask demo --real` (root) runs the mesh behind real nftables NATs.");
    Ok(())
}
