//! `cargo xtask test` and `cargo xtask fuzz`.

use std::process::{Command, Stdio};

use anyhow::{bail, Result};

use crate::util::{apt_install, cargo, have, is_root, root, run as run_cmd};

/// Third-party programs the interop tests run, with the Debian package that has each.
const INTEROP: &[(&str, &str)] = &[
    ("turnserver", "coturn"),
    ("turnutils_stunclient", "coturn"),
    ("stun", "stun-client"),
    ("tshark", "tshark"),
    ("wireguard-go", "wireguard-go"),
    ("wg", "wireguard-tools"),
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("iperf3", "iperf3"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    ("pg_ctlcluster", "postgresql"),
];

/// Fuzz targets, as in fuzz/Cargo.toml.
const FUZZ_TARGETS: &[&str] = &[
    "stun_decode",
    "stun_server",
    "netcheck_input",
    "wg_parse",
    "wg_tunnel",
    "derp_frames",
    "derp_server",
    "disco_decode",
    "node_input",
];

pub fn run(install: bool) -> Result<()> {
    let mut skipped = Vec::new();
    let mut missing: Vec<&str> = INTEROP
        .iter()
        .filter(|(p, _)| !have(p))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    let root_user = is_root();
    if !missing.is_empty() && install && root_user && !apt_install(&missing) {
        println!("xtask: apt-get install {} failed", missing.join(" "));
    }
    for (program, package) in INTEROP {
        if !have(program) {
            skipped.push(format!(
                "SKIPPED interop tests needing {program}: package {package} is not installed{}",
                if root_user {
                    " (installation failed)"
                } else {
                    " (run as root to install it)"
                }
            ));
        }
    }
    for s in &skipped {
        println!("{s}");
    }

    let mut tests = if have_nextest() {
        let mut c = cargo();
        c.args([
            "nextest",
            "run",
            "--workspace",
            "--no-fail-fast",
            "--failure-output",
            "final",
        ]);
        c
    } else {
        let mut c = cargo();
        c.args(["test", "--workspace", "--no-fail-fast"]);
        c
    };
    if skipped.is_empty() && root_user {
        // Everything is installed: an interop test that cannot find its tool is a failure.
        tests.env("BURROW_REQUIRE_INTEROP", "1");
    }
    // The test runner and then the lab go last, so their summaries close the output.
    let campaign = fuzz_smoke();
    if let Err(e) = &campaign {
        println!("xtask: fuzz campaign failed: {e}");
    }
    let matrix = reduced_matrix();
    if let Err(e) = &matrix {
        println!("xtask: simulation matrix failed: {e}");
    }
    let doc = run_cmd(cargo().args(["test", "--workspace", "--doc"]));
    let unit = run_cmd(&mut tests);
    // The lab with real NATs (root; it prints SKIPPED otherwise).
    let lab = crate::lab::run();
    if let Err(e) = &lab {
        println!("xtask: lab failed: {e}");
    }
    for s in &skipped {
        println!("{s}");
    }
    let failures: Vec<String> = [
        campaign.err(),
        matrix.err(),
        doc.err(),
        unit.err(),
        lab.err(),
    ]
    .into_iter()
    .flatten()
    .map(|e| e.to_string())
    .collect();
    if !failures.is_empty() {
        bail!("xtask test failed: {}", failures.join("; "));
    }
    Ok(())
}

/// The simulator's matrix on a reduced seed count (release build: the hard–hard long run covers
/// hours of simulated time): netcheck per preset, the NAT × NAT grid, the birthday curves.
fn reduced_matrix() -> Result<()> {
    run_cmd(cargo().args(["build", "--release", "--quiet", "-p", "burrow-sim"]))?;
    let report = root().join("target/sim-report");
    run_cmd(
        Command::new(root().join("target/release/burrow-sim")).args([
            "--matrix",
            "--seeds",
            "1..3",
            "--grid-seeds",
            "6",
            "--curve-seeds",
            "200",
            "--long-run-seeds",
            "8",
            "--report",
            &report.to_string_lossy(),
        ]),
    )
}

fn have_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have_cargo_fuzz() -> bool {
    Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A few seconds of real fuzzing per target when cargo-fuzz is there; corpus replay ran already.
fn fuzz_smoke() -> Result<()> {
    if !have_cargo_fuzz() {
        println!("SKIPPED fuzz campaign: cargo-fuzz is not installed (the committed corpora were replayed as tests; `cargo install cargo-fuzz` to enable)");
        return Ok(());
    }
    for target in FUZZ_TARGETS {
        // New inputs go to a scratch folder; the committed corpus only seeds the run.
        let scratch =
            std::env::temp_dir().join(format!("burrow-fuzz-{target}-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        println!("xtask: fuzzing {target} for 10 s");
        let r = run_cmd(
            Command::new("cargo")
                .args(["+nightly", "fuzz", "run", target])
                .arg(&scratch)
                .arg(root().join("fuzz/corpus").join(target))
                .args(["--", "-max_total_time=10", "-print_final_stats=1"])
                .current_dir(root()),
        );
        let _ = std::fs::remove_dir_all(&scratch);
        r?;
    }
    Ok(())
}

pub fn fuzz(target: &str, seconds: u64) -> Result<()> {
    if !FUZZ_TARGETS.contains(&target) {
        bail!(
            "unknown fuzz target {target:?}; targets: {}",
            FUZZ_TARGETS.join(", ")
        );
    }
    if !have_cargo_fuzz() {
        bail!("cargo-fuzz is not installed: run `cargo install cargo-fuzz` (it uses the nightly toolchain)");
    }
    println!("xtask: fuzzing {target} for {seconds} s");
    run_cmd(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .current_dir(root()),
    )
}
