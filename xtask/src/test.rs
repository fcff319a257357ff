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
    ("miniupnpd", "miniupnpd-nftables"),
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
    "policy_parse",
    "control_api",
    "upnp_decode",
    "pmp_decode",
    "pcp_decode",
    "portmap_client",
    "relay_server",
    "offload",
];

pub fn run(install: bool) -> Result<()> {
    if std::env::var_os("CI").is_some() {
        // A one-off build gains nothing from incremental state, which roughly doubles the
        // target folder; CI machines can be short of disk.
        std::env::set_var("CARGO_INCREMENTAL", "0");
    }
    // Free disk, for the log: a full disk shows up as a confusing compiler error otherwise.
    let _ = Command::new("df")
        .args(["-h", "."])
        .current_dir(root())
        .status();
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
    // Property tests draw the same cases on every run, so a run's outcome depends on the code
    // alone; set PROPTEST_RNG_SEED to draw others (a failure prints its minimal input).
    let seed = std::env::var("PROPTEST_RNG_SEED").unwrap_or_else(|_| PROPTEST_SEED.to_string());
    println!("xtask: property tests draw cases from PROPTEST_RNG_SEED={seed}");
    tests.env("PROPTEST_RNG_SEED", &seed);
    if skipped.is_empty() && root_user {
        // Everything is installed: an interop test that cannot find its tool is a failure.
        tests.env("BURROW_REQUIRE_INTEROP", "1");
    }
    // The test runner and then the lab go last, so their summaries close the output.
    let campaign = fuzz_smoke(install, &mut skipped);
    if let Err(e) = &campaign {
        println!("xtask: fuzz campaign failed: {e}");
    }
    let matrix = reduced_matrix(install);
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
    // The adversarial suite's reduced form (its tests ran above with the others).
    let attack = crate::attack::run(true);
    if let Err(e) = &attack {
        println!("xtask: attack failed: {e}");
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
        attack.err(),
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
/// hours of simulated time): netcheck per preset, the NAT × NAT grid, the birthday curves; then
/// the chaos soak's reduced form (every NAT class, one seed, four simulated hours); then the
/// report's screenshot in headless Chromium, checked for its charts.
fn reduced_matrix(install: bool) -> Result<()> {
    run_cmd(cargo().args(["build", "--release", "--quiet", "-p", "burrow-sim"]))?;
    let report = root().join("target/sim-report");
    let sim = root().join("target/release/burrow-sim");
    let soak = run_cmd(Command::new(&sim).args([
        "--soak",
        "--soak-seeds",
        "1",
        "--soak-hours",
        "4",
        "--report",
        &report.to_string_lossy(),
    ]));
    if let Err(e) = &soak {
        println!("xtask: chaos soak failed: {e}");
    }
    let matrix = run_cmd(
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
            "--search-seeds",
            "40",
            "--report",
            &report.to_string_lossy(),
        ]),
    );
    let shot = if matrix.is_ok() {
        crate::shot::check_report(&report, install)
    } else {
        Ok(())
    };
    if let Err(e) = &shot {
        println!("xtask: report screenshot failed: {e}");
    }
    matrix.and(soak).and(shot)
}

/// The property tests' default seed (any fixed value: what matters is that it is fixed).
const PROPTEST_SEED: &str = "20261202";

fn have_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `cargo ARGS` runs and exits 0 (output discarded).
fn cargo_ok(args: &[&str]) -> bool {
    Command::new("cargo")
        .args(args)
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure `cargo +nightly fuzz` runs: installs cargo-fuzz (`cargo install cargo-fuzz
/// --locked`, into ~/.cargo/bin, no root needed) when it is missing and `install` allows it.
/// Err says why fuzzing cannot run here.
pub fn ensure_cargo_fuzz(install: bool) -> Result<(), String> {
    if cargo_ok(&["+nightly", "fuzz", "--version"]) {
        return Ok(());
    }
    if !cargo_ok(&["+nightly", "--version"]) {
        return Err(
            "there is no nightly toolchain (`rustup toolchain install nightly`), which cargo-fuzz needs"
                .into(),
        );
    }
    if !install {
        return Err("cargo-fuzz is not installed and --no-install forbids installing it".into());
    }
    println!("xtask: cargo-fuzz is missing: running `cargo install cargo-fuzz --locked` (a few minutes, once)");
    match run_cmd(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .current_dir(root()),
    ) {
        Err(e) => Err(format!("`cargo install cargo-fuzz --locked` failed ({e})")),
        Ok(()) if !cargo_ok(&["+nightly", "fuzz", "--version"]) => Err(
            "cargo-fuzz was installed but `cargo +nightly fuzz --version` still fails (is ~/.cargo/bin on PATH?)"
                .into(),
        ),
        Ok(()) => {
            println!("xtask: cargo-fuzz installed");
            Ok(())
        }
    }
}

/// A few seconds of real fuzzing per target (installing cargo-fuzz first when it is missing);
/// corpus replay runs with the tests. A reason not to fuzz goes to `skipped` too, so the
/// summary repeats it.
fn fuzz_smoke(install: bool, skipped: &mut Vec<String>) -> Result<()> {
    if let Err(why) = ensure_cargo_fuzz(install) {
        let line = format!(
            "SKIPPED fuzz campaign: {why} (the committed corpora are still replayed as tests)"
        );
        println!("{line}");
        skipped.push(line);
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
    if std::env::var_os("CI").is_some() {
        // The sanitizer build is not needed again in a one-off run; free its disk for the rest.
        let _ = std::fs::remove_dir_all(root().join("fuzz/target"));
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
    if let Err(why) = ensure_cargo_fuzz(true) {
        bail!("cannot fuzz: {why}");
    }
    // New inputs collect under target/ (kept between campaigns); the committed corpus only
    // seeds the run, so a long campaign does not flood the repository.
    let found = root().join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&found)?;
    println!(
        "xtask: fuzzing {target} for {seconds} s (new inputs in {})",
        found.display()
    );
    run_cmd(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&found)
            .arg(root().join("fuzz/corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1")
            .current_dir(root()),
    )
}
