//! `cargo xtask`: burrow's task runner.

mod bench;
mod demo;
mod test;
mod util;

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
    /// doc examples, fuzz corpus replay, and a short fuzz campaign when cargo-fuzz is installed.
    Test {
        /// Never install packages, even as root.
        #[arg(long)]
        no_install: bool,
    },
    /// Start `burrow stun` on two loopback addresses and run `burrow netcheck` against it.
    Demo,
    /// Benchmarks; figures go to BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Test { no_install } => test::run(!no_install),
        Command::Demo => demo::run(),
        Command::Bench { which } => bench::run(which),
        Command::Fuzz { target, seconds } => test::fuzz(&target, seconds),
    }
}
