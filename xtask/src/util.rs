//! Small helpers shared by the tasks.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// `cargo`, as the one running us.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs a command, inheriting output; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Whether we run as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs Debian packages (as root); returns whether it worked.
pub fn apt_install(packages: &[&str]) -> bool {
    println!("xtask: installing {} with apt-get", packages.join(" "));
    let quiet = |c: &mut Command| {
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null());
    };
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    quiet(&mut update);
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages);
    quiet(&mut install);
    update.status().is_ok_and(|s| s.success()) && install.status().is_ok_and(|s| s.success())
}

/// Two UDP ports free on 127.0.0.1 and 127.0.0.2 alike.
pub fn free_port_pair() -> (u16, u16) {
    loop {
        let a = free_port();
        let b = free_port();
        if a != b
            && [a, b].iter().all(|&p| {
                ["127.0.0.1", "127.0.0.2"]
                    .iter()
                    .all(|ip| UdpSocket::bind((*ip, p)).is_ok())
            })
        {
            return (a, b);
        }
    }
}

/// A UDP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

/// A child process killed when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Replaces (or appends) the `## {title}` section of a markdown file.
pub fn write_section(path: &Path, title: &str, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| {
        "# Benchmarks\n\nFigures measured on this project's machines, each with the command that produced it.\n\n".to_owned()
    });
    let heading = format!("## {title}\n");
    let new = match old.find(&heading) {
        Some(start) => {
            let rest = &old[start + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(old.len(), |i| start + heading.len() + i + 1);
            format!("{}{}{}", &old[..start], section, &old[end..])
        }
        None => format!(
            "{}{}{}",
            old,
            if old.ends_with("\n\n") { "" } else { "\n" },
            section
        ),
    };
    std::fs::write(path, new)?;
    Ok(())
}

/// Builds `burrow` and `burrow-loadgen` in release mode; their paths.
pub fn release_binaries() -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    run(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "burrow",
        "-p",
        "burrow-loadgen",
    ]))?;
    let release = root().join("target/release");
    Ok((release.join("burrow"), release.join("burrow-loadgen")))
}
