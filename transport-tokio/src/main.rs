//! The `burrow` binary: parses the command line (`cli`) and runs the command (`cmd`).

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    // Everything burrow creates (state, keys, databases, sockets) is its owner's alone, from
    // the moment it exists: no window between bind/create and chmod (audit #18).
    nix::sys::stat::umask(nix::sys::stat::Mode::S_IRWXG | nix::sys::stat::Mode::S_IRWXO);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("burrow: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("burrow: {e:#}");
            ExitCode::FAILURE
        }
    }
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
