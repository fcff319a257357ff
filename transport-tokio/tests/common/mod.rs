//! Running the `burrow` binary from integration tests; helpers per server in `control` and
//! `derper`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Helpers for the control server's test targets (each uses only some of them).
#[allow(dead_code)]
pub mod control;
/// Helpers for the derper's test targets (each uses only some of them).
#[allow(dead_code)]
pub mod derper;
/// A PostgreSQL server of a test's own.
#[allow(dead_code)]
pub mod postgres;

pub const BURROW: &str = env!("CARGO_BIN_EXE_burrow");

/// A `burrow` server process and the addresses it announced; killed when dropped.
pub struct Running(pub Child, pub Vec<SocketAddr>);

impl Running {
    /// The first announced address.
    pub fn addr(&self) -> SocketAddr {
        self.1[0]
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `burrow SUBCOMMAND ARGS…` and waits for its "listening on ADDR…" line.
pub fn start(subcommand: &str, args: &[&str]) -> Running {
    let mut child = Command::new(BURROW)
        .arg(subcommand)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addrs = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .split(' ')
        .map(|a| a.parse().unwrap())
        .collect();
    Running(child, addrs)
}
