//! `burrow up` dual-stack for real: two nodes in network namespaces this test creates (and
//! removes), each with an IPv4 address and a global IPv6 one from the documentation prefix
//! 2001:db8::/32, routed through a third namespace ("the internet": control, DERP, STUN over
//! IPv4). The nodes advertise their IPv6 interface addresses from their one dual-stack socket,
//! go direct over IPv6 (ranked above IPv4), `burrow status` and `burrow doctor` say so, and
//! the tunnel carries the tailnet's IPv6 (ULA) as well as its IPv4. Then b's IPv6 address is
//! withdrawn mid-run: b notices (it watches its interface addresses), a falls to IPv4 direct,
//! and goes back to IPv6 once the address is back. Needs root; SKIPPED otherwise.

// Shared with the other namespace test (each uses only some of it).
#[allow(dead_code)]
mod netns;

use std::time::{Duration, Instant};

use netns::{have, ip, is_root, ping, run, Lab, BURROW};

const TEST: &str = "burrow_up_dual_stack_in_namespaces";

/// `burrow ARGS…` (a client of a node's local API), its stdout.
fn burrow(args: &[&str]) -> String {
    let mut all = vec![BURROW];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&run(&all).stdout).into_owned()
}

/// Peer `name` in `burrow status --json` over `sock`.
fn peer_status(sock: &str, name: &str) -> serde_json::Value {
    let status: serde_json::Value =
        serde_json::from_str(&burrow(&["status", "--json", "--socket", sock])).unwrap();
    status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no peer {name} in {status}"))
}

/// Polls `check` every 500 ms until it holds or `limit` passes; how long it took, or the last
/// thing seen.
fn wait_for(
    limit: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let seen = match check() {
            Ok(()) => return Ok(start.elapsed()),
            Err(seen) => seen,
        };
        if start.elapsed() > limit {
            return Err(seen);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
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
    // Each family on its line: IPv6 carries the traffic, IPv4 (10.202.2.2, a LAN candidate
    // ranked below global IPv6) answers and stands by.
    let standby = wait_for(Duration::from_secs(10), || {
        ping(&a, &addrs[1]);
        let text = burrow(&["doctor", "b", "--socket", &sock]);
        let status = burrow(&["status", "--socket", &sock]);
        match text.contains("  IPv6: in use, [2001:db8:2::2]:")
            && text.contains("  IPv4: standby (works, ")
            && text.contains("IPv6 ranks first)")
            && status.contains("direct (IPv6) [2001:db8:2::2]:41641, IPv4 standby")
        {
            true => Ok(()),
            false => Err(format!("{text}{status}")),
        }
    });
    if let Err(seen) = standby {
        panic!("doctor and status never showed IPv4 standing by: {seen}");
    }
    let doctor: serde_json::Value =
        serde_json::from_str(&burrow(&["doctor", "b", "--json", "--socket", &sock])).unwrap();
    assert_eq!(doctor["families"][0]["family"], "ipv6", "{doctor}");
    assert_eq!(doctor["families"][0]["state"], "in-use", "{doctor}");
    assert!(doctor["families"][0]["rtt_ms"].is_f64(), "{doctor}");
    assert_eq!(doctor["families"][1]["family"], "ipv4", "{doctor}");
    assert_eq!(doctor["families"][1]["state"], "standby", "{doctor}");
    let b_status = peer_status(&sock, "b");
    assert_eq!(b_status["families"][1]["state"], "standby", "{b_status}");

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

    // b's IPv6 address goes away mid-run: b sees it within its 2 s look and tells a; a falls
    // to IPv4 direct (its standby), not to DERP.
    let b_dev = format!("b62y{id}");
    ip(
        &b,
        &["-6", "addr", "del", "2001:db8:2::2/64", "dev", &b_dev],
    );
    let b_sock = dir.join("b").join("burrow.sock").display().to_string();
    let to_v4 = wait_for(Duration::from_secs(15), || {
        ping(&a, &addrs[1]);
        let p = peer_status(&sock, "b");
        match p["family"] == "ipv4"
            && p["path"]
                .as_str()
                .unwrap()
                .starts_with("direct 10.202.2.2:")
        {
            true => Ok(()),
            false => Err(p.to_string()),
        }
    });
    match to_v4 {
        Ok(took) => eprintln!("{TEST}: IPv6 withdrawn, a direct over IPv4 after {took:?}"),
        Err(seen) => panic!(
            "a stayed off IPv4 direct after b's IPv6 went: {seen}; {}",
            logs()
        ),
    }
    let b_log = std::fs::read_to_string(dir.join("b.log")).unwrap_or_default();
    assert!(
        b_log.contains("interface addresses changed: +[] -[[2001:db8:2::2]:41641]"),
        "b did not notice its address go; {}",
        logs()
    );
    let text = burrow(&["doctor", "b", "--socket", &sock]);
    eprintln!("a's doctor, IPv6 gone:\n{text}");
    assert!(text.contains("  IPv4: in use, 10.202.2.2:"), "{text}");
    assert!(!text.contains("  IPv6: in use"), "{text}");
    let b_doctor = wait_for(Duration::from_secs(5), || {
        let text = burrow(&["doctor", "a", "--socket", &b_sock]);
        match text.contains("  IPv6: we have no IPv6 address") {
            true => Ok(()),
            false => Err(text),
        }
    });
    if let Err(seen) = b_doctor {
        panic!("b's doctor does not say it lost IPv6: {seen}");
    }

    // The address comes back: a returns to IPv6 direct.
    ip(
        &b,
        &[
            "-6",
            "addr",
            "add",
            "2001:db8:2::2/64",
            "dev",
            &b_dev,
            "nodad",
        ],
    );
    ip(
        &b,
        &["-6", "route", "replace", "default", "via", "2001:db8:2::1"],
    );
    let to_v6 = wait_for(Duration::from_secs(30), || {
        ping(&a, &addrs[1]);
        let p = peer_status(&sock, "b");
        match p["family"] == "ipv6"
            && p["path"]
                .as_str()
                .unwrap()
                .starts_with("direct [2001:db8:2::2]:")
        {
            true => Ok(()),
            false => Err(p.to_string()),
        }
    });
    match to_v6 {
        Ok(took) => eprintln!("{TEST}: IPv6 back, a direct over IPv6 after {took:?}"),
        Err(seen) => panic!("a never went back to IPv6: {seen}; {}", logs()),
    }
    // b's own look (every 2 s) sees the address back (a may have found it first: b's socket
    // answers on it as soon as it is there).
    let noticed = wait_for(Duration::from_secs(5), || {
        let b_log = std::fs::read_to_string(dir.join("b.log")).unwrap_or_default();
        match b_log.contains("interface addresses changed: +[[2001:db8:2::2]:41641] -[]") {
            true => Ok(()),
            false => Err(String::new()),
        }
    });
    assert!(
        noticed.is_ok(),
        "b did not notice its address come back; {}",
        logs()
    );
    let text = burrow(&["doctor", "b", "--socket", &sock]);
    eprintln!("a's doctor, IPv6 back:\n{text}");
    assert!(text.contains("  IPv6: in use, [2001:db8:2::2]:"), "{text}");
}
