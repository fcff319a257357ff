//! `burrow up` for real: two nodes in network namespaces this test creates (and removes), a
//! third namespace as "the internet" running `burrow control serve`, `burrow derper` and its
//! STUN server. The nodes register, bring up TUN interfaces with their 100.64 addresses, and
//! ping each other through the tunnel; the receiver's packet filter drops what the policy
//! does not allow. Needs root; SKIPPED otherwise.

// Shared with the other namespace test (each uses only some of it).
#[allow(dead_code)]
mod netns;

use std::process::Command;
use std::time::{Duration, Instant};

use netns::{have, is_root, ping, run, Lab, BURROW};

#[test]
fn two_nodes_register_and_ping_through_the_tunnel_with_the_filter_enforced() {
    const TEST: &str = "burrow_up_in_namespaces";
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
    let (inet, a, b) = (format!("bui{id}"), format!("bua{id}"), format!("bub{id}"));
    let dir = std::env::temp_dir().join(format!("burrow-up-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        namespaces: vec![inet.clone(), a.clone(), b.clone()],
        children: Vec::new(),
    };
    for n in [&inet, &a, &b] {
        run(&["ip", "netns", "add", n]);
        run(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    for (n, k) in [(&a, 1), (&b, 2)] {
        let (outside, inside) = (format!("bi{k}x{id}"), format!("bi{k}y{id}"));
        run(&[
            "ip", "link", "add", &outside, "netns", &inet, "type", "veth", "peer", "name", &inside,
            "netns", n,
        ]);
        run(&[
            "ip",
            "-n",
            &inet,
            "addr",
            "add",
            &format!("10.201.{k}.1/24"),
            "dev",
            &outside,
        ]);
        run(&["ip", "-n", &inet, "link", "set", &outside, "up"]);
        run(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            &format!("10.201.{k}.2/24"),
            "dev",
            &inside,
        ]);
        run(&["ip", "-n", n, "link", "set", &inside, "up"]);
        run(&[
            "ip",
            "-n",
            n,
            "route",
            "add",
            "default",
            "via",
            &format!("10.201.{k}.1"),
        ]);
    }
    run(&[
        "ip",
        "netns",
        "exec",
        &inet,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_forward=1",
    ]);

    // The internet: control (policy: ICMP between everyone, TCP 7000 to tag:srv only), DERP, STUN.
    let db = dir.join("control.sqlite");
    let policy = dir.join("policy.hujson");
    std::fs::write(
        &policy,
        r#"{
  "tagOwners": { "tag:srv": ["ops"] },
  "acls": [
    { "action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "icmp" },
    { "action": "accept", "src": ["*"], "dst": ["tag:srv:7000"], "proto": "tcp" },
  ],
}"#,
    )
    .unwrap();
    let db_s = db.display().to_string();
    let key_a = String::from_utf8(
        run(&[
            BURROW, "control", "authkey", "create", "--db", &db_s, "--user", "ops",
        ])
        .stdout,
    )
    .unwrap();
    let key_b = String::from_utf8(
        run(&[
            BURROW, "control", "authkey", "create", "--db", &db_s, "--user", "ops", "--tag",
            "tag:srv",
        ])
        .stdout,
    )
    .unwrap();
    let policy_s = policy.display().to_string();
    let admin_s = dir.join("admin.sock").display().to_string();
    let ca_s = dir.join("control.der").display().to_string();
    // The control server, with the DERP map it hands out (node b relies on it).
    let control_args = [
        "control",
        "serve",
        "--listen",
        "0.0.0.0:8080",
        "--db",
        &db_s,
        "--policy",
        &policy_s,
        "--derp",
        "http://10.201.1.1:8443/derp",
        "--stun",
        "10.201.1.1:3478",
        "--admin-socket",
        &admin_s,
        // TLS, with a certificate for both of the server's addresses that nodes trust.
        "--self-signed",
        "10.201.1.1",
        "--self-signed",
        "10.201.2.1",
        "--cert-out",
        &ca_s,
    ];
    let line = lab.start(&inet, &control_args, &dir.join("control.log"));
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
    for (n, k, key, name) in [(&a, 1, key_a.trim(), "a"), (&b, 2, key_b.trim(), "b")] {
        let state = dir.join(name).display().to_string();
        let control = format!("https://10.201.{k}.1:8080");
        let derp = format!("http://10.201.{k}.1:8443/derp");
        let stun = format!("10.201.{k}.1:3478");
        let mut args = vec![
            "up",
            "--control",
            &control,
            "--auth-key",
            key,
            "--state-dir",
            &state,
            "--tun",
            "burrow0",
            "--hostname",
            name,
            "--tls-ca",
            &ca_s,
        ];
        // a is told its relay; b takes it from the control server's DERP map.
        if name == "a" {
            args.extend(["--derp", derp.as_str(), "--stun", stun.as_str()]);
        }
        let line = lab.start(n, &args, &dir.join(format!("{name}.log")));
        assert!(
            line.starts_with("up: 100."),
            "{line}; log: {}",
            std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        );
        addrs.push(line.split(' ').nth(1).unwrap().to_string());
        // The private key stays in a 0600 file.
        let meta = std::fs::metadata(dir.join(name).join("node.json")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    // a pings b through the tunnel (relay first, then direct on this flat network).
    let start = Instant::now();
    while !ping(&a, &addrs[1]) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no ping a → b; a: {}\nb: {}",
            std::fs::read_to_string(dir.join("a.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("b.log")).unwrap_or_default()
        );
    }
    assert!(ping(&b, &addrs[0]), "and b → a");
    // On this flat network the path goes direct (DERP carried the first packets).
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(dir.join("a.log")).unwrap_or_default();
        if log.contains("path changed") && log.contains("Direct(10.201.2.2") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "a never went direct: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // TCP 7000 is allowed only to tag:srv (b). A listener on 7000 on both nodes (a control
    // server serves as any TCP listener); connecting is the test.
    for (n, name) in [(&a, "a"), (&b, "b")] {
        let d = dir
            .join(format!("{name}-listener.sqlite"))
            .display()
            .to_string();
        let sock = dir
            .join(format!("{name}-listener.sock"))
            .display()
            .to_string();
        let line = lab.start(
            n,
            &[
                "control",
                "serve",
                "--listen",
                "0.0.0.0:7000",
                "--db",
                &d,
                "--admin-socket",
                &sock,
            ],
            &dir.join(format!("{name}-listener.log")),
        );
        assert!(line.starts_with("listening on"), "{line}");
    }
    let connects = |from: &str, to: &str| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                from,
                "timeout",
                "3",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{to}/7000"),
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        connects(&a, &addrs[1]),
        "a → b:7000 is allowed (b is tag:srv)"
    );
    assert!(
        !connects(&b, &addrs[0]),
        "b → a:7000 is dropped by a's filter"
    );
    // The control server restarts: the nodes keep their tunnel and reconnect their map stream.
    let mut control = lab.children.remove(0);
    let _ = control.kill();
    let _ = control.wait();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ping(&a, &addrs[1]),
        "the tunnel does not need the control server"
    );
    let line = lab.start(&inet, &control_args, &dir.join("control2.log"));
    assert!(line.starts_with("listening on"), "{line}");
    let start = Instant::now();
    loop {
        let a_log = std::fs::read_to_string(dir.join("a.log")).unwrap_or_default();
        if a_log.contains("netmap stream lost")
            && a_log.contains("netmap stream reconnected peers=1")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a did not reconnect: {a_log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ping(&a, &addrs[1]));

    // The local API: status, ping, doctor, down.
    let sock = |name: &str| dir.join(name).join("burrow.sock").display().to_string();
    let out = run(&[BURROW, "status", "--json", "--socket", &sock("a")]);
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
            .starts_with("direct 10.201.2.2"),
        "{status}"
    );
    assert_eq!(b_entry["family"], "ipv4", "{status}");
    assert!(b_entry["rx_bytes"].as_u64().unwrap() > 0, "{status}");
    let out = run(&[
        BURROW,
        "ping",
        "b",
        "--until-direct",
        "--socket",
        &sock("a"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pong from b via 10.201.2.2:"), "{text}");
    let out = run(&[BURROW, "doctor", &addrs[1], "--socket", &sock("a")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("our NAT:   easy") && text.contains("path:      direct 10.201.2.2"),
        "{text}"
    );
    assert!(text.contains("family:    IPv4"), "{text}");
    assert!(text.contains("Validated"), "{text}");

    // The admin removes b: a forgets it at once, and b's `burrow up` stops, saying why.
    let out = run(&[
        BURROW,
        "control",
        "node",
        "remove",
        "b",
        "--admin-socket",
        &admin_s,
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed node"));
    let start = Instant::now();
    loop {
        let out = run(&[BURROW, "status", "--json", "--socket", &sock("a")]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if status["peers"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "a still lists b: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!ping(&a, &addrs[1]), "a removed peer is unreachable");
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(dir.join("b.log")).unwrap_or_default();
        if log.contains("no longer knows this node") && !dir.join("b").join("burrow.sock").exists()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "b kept running after its removal: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // `burrow down` stops a node: its local API goes away.
    run(&[BURROW, "down", "--socket", &sock("a")]);
    let start = Instant::now();
    while dir.join("a").join("burrow.sock").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a is still up after `burrow down`"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The secret never left as a private key: the control database holds public keys only.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("a").join("node.json")).unwrap())
            .unwrap();
    let private = state["private_key"].as_str().unwrap();
    let dbbytes = std::fs::read(&db).unwrap();
    assert!(!dbbytes
        .windows(private.len())
        .any(|w| w == private.as_bytes()));
    let _ = std::fs::remove_dir_all(&dir);
}
