//! `burrow up` dual-stack for real: two nodes in network namespaces this test creates (and
//! removes), each with an IPv4 address and a global IPv6 one from the documentation prefix
//! 2001:db8::/32, routed through a third namespace ("the internet": control, DERP, STUN over
//! IPv4). The nodes advertise their IPv6 interface addresses from their one dual-stack socket,
//! go direct over IPv6 (ranked above IPv4), `burrow status` and `burrow doctor` say so, and
//! the tunnel carries the tailnet's IPv6 (ULA) as well as its IPv4. Needs root; SKIPPED
//! otherwise.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BURROW: &str = env!("CARGO_BIN_EXE_burrow");
const TEST: &str = "burrow_up_dual_stack_in_namespaces";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn run(args: &[&str]) -> std::process::Output {
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

fn ip(ns: &str, args: &[&str]) {
    let mut all = vec!["ip", "-n", ns];
    all.extend_from_slice(args);
    run(&all);
}

/// Kills the processes, then removes the namespaces, however the test ends.
struct Lab {
    namespaces: Vec<String>,
    children: Vec<Child>,
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
    fn start(&mut self, ns: &str, args: &[&str], log: &std::path::Path) -> String {
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

fn ping(ns: &str, addr: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", addr])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn dual_stack_nodes_go_direct_over_ipv6_and_carry_the_tailnets_ipv6() {
    if !is_root() {
        assert!(
            std::env::var_os("BURROW_REQUIRE_INTEROP").is_none(),
            "{TEST} needs root"
        );
        eprintln!("SKIPPED {TEST}: needs root for network namespaces and TUN devices");
        return;
    }
    for (program, package) in [("ip", "iproute2"), ("ping", "iputils-ping")] {
        if !have(program) {
            assert!(
                std::env::var_os("BURROW_REQUIRE_INTEROP").is_none(),
                "{TEST} needs {program}"
            );
            eprintln!("SKIPPED {TEST}: needs {program} (package {package})");
            return;
        }
    }
    let id = std::process::id() % 100_000;
    let (inet, a, b) = (format!("b6i{id}"), format!("b6a{id}"), format!("b6b{id}"));
    let dir = std::env::temp_dir().join(format!("burrow-up-v6-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        namespaces: vec![inet.clone(), a.clone(), b.clone()],
        children: Vec::new(),
    };
    for n in [&inet, &a, &b] {
        run(&["ip", "netns", "add", n]);
        ip(n, &["link", "set", "lo", "up"]);
    }
    for (n, k) in [(&a, 1), (&b, 2)] {
        let (outside, inside) = (format!("b6{k}x{id}"), format!("b6{k}y{id}"));
        run(&[
            "ip", "link", "add", &outside, "netns", &inet, "type", "veth", "peer", "name", &inside,
            "netns", n,
        ]);
        // No duplicate address detection: the addresses are usable at once.
        for (ns, dev, host) in [(&inet, &outside, 1), (n, &inside, 2)] {
            ip(
                ns,
                &["addr", "add", &format!("10.202.{k}.{host}/24"), "dev", dev],
            );
            let v6 = format!("2001:db8:{k}::{host}/64");
            ip(ns, &["-6", "addr", "add", &v6, "dev", dev, "nodad"]);
            ip(ns, &["link", "set", dev, "up"]);
        }
        ip(
            n,
            &["route", "add", "default", "via", &format!("10.202.{k}.1")],
        );
        let gw6 = format!("2001:db8:{k}::1");
        ip(n, &["-6", "route", "add", "default", "via", &gw6]);
    }
    for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        run(&["ip", "netns", "exec", &inet, "sysctl", "-q", "-w", sysctl]);
    }

    // The internet: control (ICMP between everyone), DERP and STUN, over IPv4.
    let db_s = dir.join("control.sqlite").display().to_string();
    let policy = dir.join("policy.hujson");
    std::fs::write(
        &policy,
        r#"{ "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "icmp" } ] }"#,
    )
    .unwrap();
    let key = String::from_utf8(
        run(&[
            BURROW,
            "control",
            "authkey",
            "create",
            "--db",
            &db_s,
            "--user",
            "ops",
            "--reusable",
        ])
        .stdout,
    )
    .unwrap();
    let policy_s = policy.display().to_string();
    let admin_s = dir.join("admin.sock").display().to_string();
    let line = lab.start(
        &inet,
        &[
            "control",
            "serve",
            "--listen",
            "0.0.0.0:8080",
            "--db",
            &db_s,
            "--policy",
            &policy_s,
            "--derp",
            "http://10.202.1.1:8443/derp",
            "--stun",
            "10.202.1.1:3478",
            "--admin-socket",
            &admin_s,
        ],
        &dir.join("control.log"),
    );
    assert!(line.starts_with("listening on"), "{line}");
    let line = lab.start(
        &inet,
        &[
            "derper",
            "--listen",
            "0.0.0.0:8443",
            "--stun-listen",
            "0.0.0.0:3478",
        ],
        &dir.join("derper.log"),
    );
    assert!(line.starts_with("listening on"), "{line}");

    let mut addrs = Vec::new();
    for (n, k, name) in [(&a, 1, "a"), (&b, 2, "b")] {
        let state = dir.join(name).display().to_string();
        let control = format!("http://10.202.{k}.1:8080");
        let line = lab.start(
            n,
            &[
                "up",
                "--control",
                &control,
                "--auth-key",
                key.trim(),
                "--state-dir",
                &state,
                "--tun",
                "burrow0",
                "--hostname",
                name,
            ],
            &dir.join(format!("{name}.log")),
        );
        assert!(
            line.starts_with("up: 100."),
            "{line}; log: {}",
            std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        );
        addrs.push(line.split(' ').nth(1).unwrap().to_string());
    }
    let logs = || {
        format!(
            "a: {}\nb: {}",
            std::fs::read_to_string(dir.join("a.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("b.log")).unwrap_or_default()
        )
    };

    // a reaches b through the tunnel, then goes direct: over IPv6, which ranks above IPv4.
    let start = Instant::now();
    while !ping(&a, &addrs[1]) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no ping a → b; {}",
            logs()
        );
    }
    let start = Instant::now();
    loop {
        ping(&a, &addrs[1]);
        let log = std::fs::read_to_string(dir.join("a.log")).unwrap_or_default();
        if log.contains("path changed") && log.contains("Direct([2001:db8:2::2]") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a never went direct over IPv6; {}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // `burrow status` and `burrow doctor` name the family.
    let sock = dir.join("a").join("burrow.sock").display().to_string();
    let out = run(&[BURROW, "status", "--json", "--socket", &sock]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b_entry = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "b")
        .cloned()
        .unwrap();
    assert!(
        b_entry["path"]
            .as_str()
            .unwrap()
            .starts_with("direct [2001:db8:2::2]:"),
        "{status}"
    );
    assert_eq!(b_entry["family"], "ipv6", "{status}");
    let out = run(&[BURROW, "status", "--socket", &sock]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("direct (IPv6) [2001:db8:2::2]:"), "{text}");
    let out = run(&[BURROW, "doctor", "b", "--socket", &sock]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("path:      direct [2001:db8:2::2]:") && text.contains("family:    IPv6"),
        "{text}"
    );

    // The tailnet's IPv6: b's ULA address, on its TUN and routed through a's.
    let b_v6 = b_entry["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| a.contains(':'))
        .expect("b has a tailnet IPv6 address")
        .to_string();
    assert!(b_v6.starts_with("fd"), "a ULA: {b_v6}");
    assert!(
        ping(&a, &b_v6),
        "no ping a → b over the tailnet's IPv6 ({b_v6}); {}",
        logs()
    );
}
