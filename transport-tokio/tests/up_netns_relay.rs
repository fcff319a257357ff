//! Peer relays for real: three `burrow up` nodes in network namespaces this test creates (and
//! removes) around a fourth, "the internet", which runs `burrow control serve`, `burrow derper`
//! and STUN and drops UDP between the two clients (nftables in its own namespace). The third
//! node runs `--relay-port`; the policy's `relay` rule lets the clients relay through it. The
//! clients end on `relay via r` in `burrow status` and ping each other through it; the relay's
//! status shows the session and its counters. Needs root; SKIPPED otherwise.

// Shared with the other namespace tests (each uses only some of it).
#[allow(dead_code)]
mod netns;

use std::time::{Duration, Instant};

use netns::{have, is_root, ping, run, Lab, BURROW};

fn skip(test: &str, why: &str) {
    assert!(
        std::env::var_os("BURROW_REQUIRE_INTEROP").is_none(),
        "{test}: {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
}

fn status(sock: &str) -> serde_json::Value {
    let out = run(&[BURROW, "status", "--json", "--socket", sock]);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn peer<'a>(status: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

#[test]
fn two_clients_that_cannot_meet_talk_through_a_peer_relay() {
    relay_lab(
        "burrow_up_peer_relay_in_namespaces",
        r#"{
  "tagOwners": { "tag:relay": ["ops"] },
  "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ],
  "relay": [ { "src": ["*"], "via": ["tag:relay"] } ],
}"#,
        &["--tag", "tag:relay"],
    );
}

/// No relay rule: `autoRelay` makes the relay node (no NAT here, so its mapping is fixed)
/// relay for everyone the ACLs let reach it.
#[test]
fn auto_relay_serves_everyone_the_acls_let_reach_a_fixed_relay() {
    relay_lab(
        "burrow_up_auto_relay_in_namespaces",
        r#"{
  "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ],
  "autoRelay": true,
}"#,
        &[],
    );
}

/// Three nodes and the internet; `policy` decides who relays; `relay_key` are the relay
/// node's auth-key options.
fn relay_lab(test: &str, policy_text: &str, relay_key: &[&str]) {
    if !is_root() {
        return skip(test, "needs root for network namespaces and TUN devices");
    }
    for (program, package) in [
        ("ip", "iproute2"),
        ("ping", "iputils-ping"),
        ("nft", "nftables"),
    ] {
        if !have(program) {
            return skip(test, &format!("needs {program} (package {package})"));
        }
    }
    // Two tests may run at once: each its own namespaces, veths and addresses.
    let auto = relay_key.is_empty();
    let id = std::process::id() % 10_000 * 10 + u32::from(auto);
    let net = if auto { 204 } else { 203 };
    let inet = format!("bri{id}");
    let names = ["a", "b", "r"];
    let ns: Vec<String> = names.iter().map(|n| format!("br{n}{id}")).collect();
    let dir = std::env::temp_dir().join(format!("burrow-relay-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        namespaces: std::iter::once(inet.clone()).chain(ns.clone()).collect(),
        children: Vec::new(),
    };
    for n in &lab.namespaces {
        run(&["ip", "netns", "add", n]);
        run(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    // Node k sits at 10.NET.k.2 behind the internet's 10.NET.k.1.
    for (k, n) in (1..).zip(&ns) {
        let (outside, inside) = (format!("br{k}x{id}"), format!("br{k}y{id}"));
        run(&[
            "ip", "link", "add", &outside, "netns", &inet, "type", "veth", "peer", "name", &inside,
            "netns", n,
        ]);
        let outer = format!("10.{net}.{k}.1/24");
        let inner = format!("10.{net}.{k}.2/24");
        run(&["ip", "-n", &inet, "addr", "add", &outer, "dev", &outside]);
        run(&["ip", "-n", &inet, "link", "set", &outside, "up"]);
        run(&["ip", "-n", n, "addr", "add", &inner, "dev", &inside]);
        run(&["ip", "-n", n, "link", "set", &inside, "up"]);
        let gw = format!("10.{net}.{k}.1");
        run(&["ip", "-n", n, "route", "add", "default", "via", &gw]);
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
    // a and b cannot meet: the internet drops UDP between them (DERP is TCP and still works).
    let rules = dir.join("drop.nft");
    std::fs::write(
        &rules,
        format!(
            "table inet burrowtest {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    \
             ip saddr 10.{net}.1.2 ip daddr 10.{net}.2.2 meta l4proto udp drop\n    \
             ip saddr 10.{net}.2.2 ip daddr 10.{net}.1.2 meta l4proto udp drop\n  }}\n}}\n"
        ),
    )
    .unwrap();
    run(&[
        "ip",
        "netns",
        "exec",
        &inet,
        "nft",
        "-f",
        &rules.display().to_string(),
    ]);

    let db = dir.join("control.sqlite");
    let policy = dir.join("policy.hujson");
    std::fs::write(&policy, policy_text).unwrap();
    let db_s = db.display().to_string();
    let authkey = |extra: &[&str]| {
        let mut args = vec![
            BURROW, "control", "authkey", "create", "--db", &db_s, "--user", "ops",
        ];
        args.extend_from_slice(extra);
        String::from_utf8(run(&args).stdout)
            .unwrap()
            .trim()
            .to_string()
    };
    let keys = [authkey(&[]), authkey(&[]), authkey(relay_key)];
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
            &format!("http://10.{net}.1.1:8443/derp"),
            "--stun",
            &format!("10.{net}.1.1:3478"),
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

    let log =
        |name: &str| std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let sock = |name: &str| dir.join(name).join("burrow.sock").display().to_string();
    let mut addrs = Vec::new();
    for (k, ((n, name), key)) in (1..).zip(ns.iter().zip(names).zip(&keys)) {
        let state = dir.join(name).display().to_string();
        let control = format!("http://10.{net}.{k}.1:8080");
        let derp = format!("http://10.{net}.{k}.1:8443/derp");
        let stun = format!("10.{net}.{k}.1:3478");
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
            "--derp",
            &derp,
            "--stun",
            &stun,
            "--no-port-mapping",
        ];
        if name == "r" {
            args.extend(["--relay-port", "7777"]);
        }
        let line = lab.start(n, &args, &dir.join(format!("{name}.log")));
        assert!(line.starts_with("up: 100."), "{line}; log: {}", log(name));
        addrs.push(line.split(' ').nth(1).unwrap().to_string());
    }

    // a reaches b at once over DERP; then both move to the peer relay.
    let start = Instant::now();
    while !ping(&ns[0], &addrs[1]) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no ping a → b; a: {}\nb: {}",
            log("a"),
            log("b")
        );
    }
    let start = Instant::now();
    let (mut a_status, mut b_status);
    loop {
        // Traffic keeps the path machines busy, as a user's would.
        ping(&ns[0], &addrs[1]);
        a_status = status(&sock("a"));
        b_status = status(&sock("b"));
        let on_relay = |s: &serde_json::Value, other: &str| {
            peer(s, other)
                .and_then(|p| p["path"].as_str())
                .is_some_and(|p| p.starts_with("relay via r"))
        };
        if on_relay(&a_status, "b") && on_relay(&b_status, "a") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "not on the peer relay: a {a_status}\nb {b_status}\na: {}\nb: {}\nr: {}",
            log("a"),
            log("b"),
            log("r")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let b_entry = peer(&a_status, "b").unwrap();
    assert_eq!(b_entry["relay"]["via"], "r", "{a_status}");
    assert!(
        b_entry["relay"]["rtt_ms"].as_f64().is_some(),
        "a measured the round trip through r: {a_status}"
    );
    // The path reads "relay via r (RTT a+b ms)", with our leg when a has a direct path to r.
    let path = b_entry["path"].as_str().unwrap();
    assert!(
        path.starts_with("relay via r (RTT ") && path.ends_with(" ms)"),
        "{path}"
    );
    // Pings go through the relay both ways.
    for _ in 0..3 {
        assert!(ping(&ns[0], &addrs[1]), "a → b through r");
        assert!(ping(&ns[1], &addrs[0]), "b → a through r");
    }
    // The direct path never formed: UDP between a and b is dropped.
    assert!(
        !b_entry["path"].as_str().unwrap().starts_with("direct"),
        "{a_status}"
    );
    assert!(log("a").contains("peer relay changed"), "{}", log("a"));

    // The relay's own status: one session between a and b, packets forwarded.
    let r_status = status(&sock("r"));
    let server = &r_status["relay_server"];
    assert!(server.is_object(), "{r_status}");
    assert!(
        server["forwarded_packets"].as_u64().unwrap() > 0,
        "{r_status}"
    );
    assert!(
        server["binds_completed"].as_u64().unwrap() >= 2,
        "{r_status}"
    );
    let sessions = server["sessions"].as_array().unwrap();
    assert!(
        sessions.iter().any(|s| {
            let c = s["clients"].as_array().unwrap();
            c.contains(&"a".into()) && c.contains(&"b".into())
        }),
        "a session between a and b: {r_status}"
    );
    // The human form says the same.
    let out = run(&[BURROW, "status", "--socket", &sock("a")]);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let out = run(&[BURROW, "status", "--socket", &sock("r")]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(text.contains("relay server: "), "{text}");
    let out = run(&[BURROW, "doctor", "b", "--socket", &sock("a")]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        text.contains("path:      relay via r")
            && text.contains("r: alive")
            && text.contains("family:    none (through a peer relay)"),
        "{text}"
    );
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}
