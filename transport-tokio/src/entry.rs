//! What the `burrow` and `burrow-loadgen` binaries do around their command: a private umask,
//! logs to stderr, a tokio runtime, and an exit status with the error's chain.

use std::future::Future;
use std::process::ExitCode;

/// Runs `command` to completion as process `name`.
pub fn main(name: &str, command: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
