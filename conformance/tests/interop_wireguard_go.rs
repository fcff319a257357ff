//! `burrow wg` against wireguard-go (Debian package wireguard-go, configured with `wg` from
//! wireguard-tools), each in a network namespace this test creates and removes, joined by a
//! veth pair: ping both ways, bulk TCP (iperf3) both ways, and a forced rekey with traffic
//! flowing. Needs root; SKIPPED otherwise.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burrow_conformance::tools::{require, KillOnDrop};

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn burrow_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("burrow");
    bin.is_file().then_some(bin)
}

fn run(args: &[&str]) -> String {
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
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ns<'a>(name: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["ip", "netns", "exec", name];
    v.extend_from_slice(args);
    v
}

/// Removes the namespaces (and with them the veth pair and TUN devices) however the test ends.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn spawn_logged(args: &[&str], log: &std::path::Path) -> Child {
    let f = std::fs::File::create(log).unwrap();
    Command::new(args[0])
        .args(&args[1..])
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, deadline: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn burrow_wg_and_wireguard_go_ping_bulk_tcp_and_rekey() {
    interop("burrow_wg_and_wireguard_go", true, false);
}

/// Large batches sealed and opened on two threads (`--parallel-crypto`): still in order.
#[test]
fn burrow_wg_with_parallel_crypto_and_wireguard_go_ping_bulk_tcp_and_rekey() {
    interop("burrow_wg_parallel_and_wireguard_go", true, true);
}

/// The fallback: a TUN opened without `IFF_VNET_HDR` (one packet per read and write).
#[test]
fn burrow_wg_without_tun_offload_and_wireguard_go_ping_bulk_tcp_and_rekey() {
    interop("burrow_wg_without_offload_and_wireguard_go", false, false);
}

/// Pings, bulk TCP both ways and a rekey between `burrow wg` (TUN offloads on or off) and
/// wireguard-go, which gets plain, correctly sized datagrams either way.
fn interop(test: &'static str, offload: bool, parallel: bool) {
    let name = test;
    if !is_root() {
        assert!(
            std::env::var_os("BURROW_REQUIRE_INTEROP").is_none(),
            "{name} needs root"
        );
        eprintln!("SKIPPED {name}: needs root for network namespaces and TUN devices");
        return;
    }
    let tools = [
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
        ("ip", "iproute2"),
        ("ping", "iputils-ping"),
        ("iperf3", "iperf3"),
    ];
    for (program, package) in tools {
        if require(name, program, package).is_none() {
            return;
        }
    }
    let Some(burrow) = burrow_bin() else {
        assert!(
            std::env::var_os("BURROW_REQUIRE_INTEROP").is_none(),
            "{name}: the burrow binary is not built next to the tests"
        );
        eprintln!("SKIPPED {name}: build the burrow binary first (cargo build -p burrow)");
        return;
    };
    let burrow = burrow.to_str().unwrap().to_owned();
    let id = std::process::id() % 10_000 * 10 + u32::from(offload) + 2 * u32::from(parallel);
    let (na, nb) = (format!("bwa{id}"), format!("bwb{id}"));
    let (va, vb) = (format!("vwa{id}"), format!("vwb{id}"));
    let (ia, ib) = (format!("bwga{id}"), format!("bwgb{id}"));
    let _cleanup = Namespaces(vec![na.clone(), nb.clone()]);
    run(&["ip", "netns", "add", &na]);
    run(&["ip", "netns", "add", &nb]);
    run(&[
        "ip", "link", "add", &va, "netns", &na, "type", "veth", "peer", "name", &vb, "netns", &nb,
    ]);
    for (n, v, addr) in [(&na, &va, "10.99.0.1/24"), (&nb, &vb, "10.99.0.2/24")] {
        run(&["ip", "-n", n, "addr", "add", addr, "dev", v]);
        run(&["ip", "-n", n, "link", "set", v, "up"]);
        run(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    let dir = std::env::temp_dir().join(format!("burrow-wg-interop-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let key_a = run(&[&burrow, "genkey"]).trim().to_owned();
    let pub_a = {
        let mut c = Command::new(&burrow)
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(key_a.as_bytes()).unwrap();
        String::from_utf8(c.wait_with_output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned()
    };
    let key_b = run(&["wg", "genkey"]).trim().to_owned();
    let key_b_file = dir.join("b.key");
    std::fs::write(&key_b_file, &key_b).unwrap();
    let pub_b = {
        let mut c = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(key_b.as_bytes()).unwrap();
        String::from_utf8(c.wait_with_output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned()
    };
    let psk = run(&["wg", "genpsk"]).trim().to_owned();
    std::fs::write(dir.join("psk"), &psk).unwrap();
    let conf = dir.join(format!("{ia}.conf"));
    std::fs::write(
        &conf,
        format!(
            "[Interface]\nPrivateKey = {key_a}\nListenPort = 51820\nAddress = 10.200.0.1/24\n\n\
             [Peer]\nPublicKey = {pub_b}\nPresharedKey = {psk}\nEndpoint = 10.99.0.2:51820\nAllowedIPs = 10.200.0.2/32\n"
        ),
    )
    .unwrap();

    // wireguard-go in B.
    let go_log = dir.join("wireguard-go.log");
    let _go = KillOnDrop(spawn_logged(
        &[
            "ip",
            "netns",
            "exec",
            &nb,
            "env",
            "WG_PROCESS_FOREGROUND=1",
            "wireguard-go",
            "-f",
            &ib,
        ],
        &go_log,
    ));
    wait_for("wireguard-go's interface", Duration::from_secs(10), || {
        Command::new("ip")
            .args(["-n", &nb, "link", "show", &ib])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    run(&ns(
        &nb,
        &[
            "wg",
            "set",
            &ib,
            "private-key",
            key_b_file.to_str().unwrap(),
            "listen-port",
            "51820",
            "peer",
            &pub_a,
            "preshared-key",
            dir.join("psk").to_str().unwrap(),
            "allowed-ips",
            "10.200.0.1/32",
            "endpoint",
            "10.99.0.1:51820",
        ],
    ));
    run(&["ip", "-n", &nb, "addr", "add", "10.200.0.2/24", "dev", &ib]);
    run(&["ip", "-n", &nb, "link", "set", &ib, "up"]);

    // burrow in A.
    let burrow_log = dir.join("burrow.log");
    let mut args = vec![
        "ip",
        "netns",
        "exec",
        &na,
        &burrow,
        "wg",
        "--config",
        conf.to_str().unwrap(),
    ];
    if !offload {
        args.push("--no-offload");
    }
    if parallel {
        args.push("--parallel-crypto");
    }
    let mut burrow_child = spawn_logged(&args, &burrow_log);
    let burrow_pid = burrow_child.id();
    wait_for("burrow's interface", Duration::from_secs(10), || {
        Command::new("ip")
            .args(["-n", &na, "link", "show", &ia])
            .output()
            .is_ok_and(|o| o.status.success())
    });

    // wireguard-go initiates (burrow responds), then burrow's side pings back.
    let ping = |n: &str, dst: &str, extra: &[&str]| -> String {
        let mut args = vec!["ip", "netns", "exec", n, "ping", "-W", "2"];
        args.extend_from_slice(extra);
        args.push(dst);
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = ping(&nb, "10.200.0.1", &["-c", "5"]);
    assert!(
        out.contains(" 0% packet loss")
            || out.contains("5 received")
            || out.contains(", 4 received"),
        "wireguard-go → burrow ping:\n{out}\n{}",
        std::fs::read_to_string(&burrow_log).unwrap_or_default()
    );
    let out = ping(&na, "10.200.0.2", &["-c", "5"]);
    assert!(
        out.contains(" 0% packet loss"),
        "burrow → wireguard-go ping:\n{out}"
    );

    // Bulk TCP both ways.
    for reverse in [false, true] {
        let mut server = KillOnDrop(
            Command::new("ip")
                .args(["netns", "exec", &nb, "iperf3", "-s", "-1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(500));
        let mut args = vec![
            "ip",
            "netns",
            "exec",
            na.as_str(),
            "iperf3",
            "-c",
            "10.200.0.2",
            "-t",
            "2",
            "-J",
        ];
        if reverse {
            args.push("-R");
        }
        let out = run(&args);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        assert!(
            bps > 1e6,
            "bulk TCP {} moved {bps} bit/s",
            if reverse {
                "wireguard-go → burrow"
            } else {
                "burrow → wireguard-go"
            }
        );
        let _ = server.0.wait();
    }

    // A forced rekey (SIGUSR1) while pings flow: nothing lost.
    let handshake_before = run(&ns(&nb, &["wg", "show", &ib, "latest-handshakes"]));
    let pinger = Command::new("ip")
        .args([
            "netns",
            "exec",
            &na,
            "ping",
            "-i",
            "0.05",
            "-c",
            "60",
            "10.200.0.2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    run(&["kill", "-USR1", &burrow_pid.to_string()]);
    let out = String::from_utf8_lossy(&pinger.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        out.contains("60 received"),
        "pings lost across the rekey:\n{out}"
    );
    wait_for("the rekey to show in wg", Duration::from_secs(5), || {
        run(&ns(&nb, &["wg", "show", &ib, "latest-handshakes"])) != handshake_before
    });
    let log = std::fs::read_to_string(&burrow_log).unwrap();
    assert!(log.matches("HandshakeCompleted").count() >= 2, "{log}");
    // The data path was the one asked for (this kernel takes TSO on a TUN).
    assert!(log.contains(&format!("tso={offload}")), "{log}");
    assert!(
        log.contains(&format!("parallel_crypto={parallel}")),
        "{log}"
    );

    let _ = burrow_child.kill();
    let _ = burrow_child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
