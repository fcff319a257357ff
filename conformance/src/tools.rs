//! Running third-party programs from tests: finding them, free loopback ports, and visible skips.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Child;

/// Where a program is on `PATH`, if anywhere.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Looks for `program` (from Debian package `package`). When missing, prints a SKIPPED line
/// and returns `None` — unless `BURROW_REQUIRE_INTEROP` is set (as `cargo xtask test` does
/// after installing packages as root), in which case a missing tool is a failure.
pub fn require(test: &str, program: &str, package: &str) -> Option<PathBuf> {
    match which(program) {
        Some(p) => Some(p),
        None if std::env::var_os("BURROW_REQUIRE_INTEROP").is_some() => {
            panic!("{test}: {program} not found although BURROW_REQUIRE_INTEROP is set (package {package})")
        }
        None => {
            eprintln!("SKIPPED {test}: {program} not found (install Debian package {package})");
            None
        }
    }
}

/// A UDP port that is free on `ip` right now.
pub fn free_udp_port(ip: &str) -> u16 {
    let s = UdpSocket::bind((ip, 0)).expect("bind an ephemeral port");
    s.local_addr().expect("bound").port()
}

/// Two ports free on both 127.0.0.1 and 127.0.0.2 (for an RFC 5780 server's four sockets).
pub fn free_port_pair() -> (u16, u16) {
    loop {
        let a = free_udp_port("127.0.0.1");
        let b = free_udp_port("127.0.0.1");
        let ok = a != b
            && [a, b].iter().all(|&p| {
                ["127.0.0.1", "127.0.0.2"]
                    .iter()
                    .all(|ip| UdpSocket::bind((*ip, p)).is_ok())
            });
        if ok {
            return (a, b);
        }
    }
}

/// Kills the child when dropped, so a failing test leaves no server behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
