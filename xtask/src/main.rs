//! `cargo xtask`: burrow's task runner.

mod attack;
mod bench;
mod controlbench;
mod demo;
mod derpbench;
mod igd;
mod lab;
mod meshbench;
mod shot;
mod test;
mod util;
mod wgbench;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "burrow's tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every test: unit, property, RFC vectors, interop (installing apt packages when root),
    /// doc examples, fuzz corpus replay, and a short fuzz campaign (installing cargo-fuzz if missing).
    Test {
        /// Never install packages, even as root.
        #[arg(long)]
        no_install: bool,
    },
    /// A STUN server and a netcheck on loopback, then the whole mesh in the simulator (control,
    /// DERP, STUN, two nodes behind an easy and a hard NAT going from DERP to direct); with
    /// --real, the namespace lab too.
    Demo {
        /// Also run the mesh for real: control, DERP and nodes behind nftables NATs in network
        /// namespaces (root; the same as `cargo xtask lab`).
        #[arg(long)]
        real: bool,
    },
    /// Benchmarks; figures go to BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
    /// Replay deterministic network scenarios (arguments go to burrow-sim; see --help).
    #[command(disable_help_flag = true)]
    Sim {
        /// e.g. --matrix --report out/ | --scenario NAME --seed N | --seeds A..B | --pcap DIR | --json
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Screenshot DIR/report.html (from `cargo xtask sim --matrix --report DIR`) in headless
    /// Chromium into DIR/report.png, and check that its charts drew (installs Debian's
    /// chromium as root).
    Shot {
        /// The report's folder.
        dir: std::path::PathBuf,
        /// Never install packages.
        #[arg(long)]
        no_install: bool,
    },
    /// burrow across real NATs in network namespaces (nftables): every pair pings, paths go
    /// direct where the NATs allow, recovery after a conntrack flush and a derper restart. Root.
    Lab,
    /// The adversarial suite: every attack test, the simulator's hostile member, and a hostile
    /// member against real `burrow up` nodes in the namespace lab (root).
    Attack {
        /// The short form `cargo xtask test` runs (fewer seeds, shorter attacks, no test targets).
        #[arg(long)]
        reduced: bool,
    },
    /// A real miniupnpd (UPnP IGD, NAT-PMP, PCP) on a hard-NAT router in network namespaces,
    /// driven by upnpc, natpmpc and PCP requests; the exchanges become fixtures in
    /// protocol/portmap/tests/captures/. Root; installs the tools with apt-get.
    IgdCapture {
        /// Never install packages.
        #[arg(long)]
        no_install: bool,
    },
    /// igd-capture's UDP tool, run inside a namespace: sends --hex to --to and prints the
    /// answer, or (without --to) prints the first datagram received on --bind.
    #[command(hide = true)]
    IgdUdp {
        #[arg(long)]
        to: Option<std::net::SocketAddr>,
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: std::net::SocketAddr,
        #[arg(long, default_value = "")]
        hex: String,
        #[arg(long, default_value_t = 1500)]
        wait_ms: u64,
    },
    /// Run a fuzz campaign on nightly with cargo-fuzz.
    Fuzz {
        /// Target name (fuzz/fuzz_targets/TARGET.rs).
        target: String,
        /// How long to fuzz.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

/// Builds the simulator in release mode and runs it with `args`, passing its exit status on.
fn sim(args: &[String]) -> Result<()> {
    util::run(util::cargo().args(["build", "--release", "--quiet", "-p", "burrow-sim"]))?;
    let status = std::process::Command::new(util::root().join("target/release/burrow-sim"))
        .args(args)
        .status()?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Test { no_install } => test::run(!no_install),
        Command::Demo { real } => {
            demo::run()?;
            if real {
                println!();
                println!(
                    "The mesh for real: control, DERP, STUN and six nodes behind nftables NATs."
                );
                lab::run()?;
            }
            Ok(())
        }
        Command::Lab => lab::run(),
        Command::Shot { dir, no_install } => shot::check_report(&dir, !no_install),
        Command::Attack { reduced } => attack::run(reduced),
        Command::Bench { which } => bench::run(which),
        Command::Fuzz { target, seconds } => test::fuzz(&target, seconds),
        Command::Sim { args } => sim(&args),
        Command::IgdCapture { no_install } => igd::capture(!no_install),
        Command::IgdUdp {
            to,
            bind,
            hex,
            wait_ms,
        } => igd::udp_tool(to, bind, &hex, wait_ms),
    }
}
