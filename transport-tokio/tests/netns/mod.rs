//! Network-namespace helpers shared by the `burrow up` namespace tests: root and program
//! checks, commands that must succeed, and a lab that kills its processes and removes its
//! namespaces however the test ends.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub const BURROW: &str = env!("CARGO_BIN_EXE_burrow");

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

pub fn run(args: &[&str]) -> std::process::Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Kills the processes, then removes the namespaces, however the test ends.
pub struct Lab {
    pub namespaces: Vec<String>,
    pub children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

impl Lab {
    /// Starts `burrow ARGS…` in namespace `ns`; returns its first stdout line.
    pub fn start(&mut self, ns: &str, args: &[&str], log: &std::path::Path) -> String {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, BURROW])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        self.children.push(child);
        assert!(
            !line.is_empty(),
            "burrow {args:?} printed nothing; log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        line.trim().to_string()
    }
}

/// One ping from namespace `ns` to `addr`, waiting a second at most.
pub fn ping(ns: &str, addr: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", addr])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `ip -n NS ARGS…`, which must succeed.
pub fn ip(ns: &str, args: &[&str]) {
    let mut all = vec!["ip", "-n", ns];
    all.extend_from_slice(args);
    run(&all);
}
