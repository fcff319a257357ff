//! The `burrow` binary: parses the command line (`cli`) and runs the command (`cmd`).

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    burrow::entry::main("burrow", run(cli.command))
}

/// Hands the command to its module.
async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Stun(args) => cmd::stun::run(args).await,
        Command::Netcheck(args) => cmd::netcheck::run(args).await,
        Command::Wg(args) => cmd::wg::run(args).await,
        Command::Derper(args) => cmd::derper::run(args).await,
        Command::Up(args) => cmd::up::run(args).await,
        Command::Status(args) => cmd::status::run(args).await,
        Command::Ping(args) => cmd::ping::run(args).await,
        Command::Doctor(args) => cmd::doctor::run(args).await,
        Command::Down(args) => cmd::down::run(args).await,
        Command::Control { command } => cmd::control::run(command).await,
        Command::Genkey => cmd::keys::genkey(),
        Command::Pubkey => cmd::keys::pubkey(),
    }
}
