//! `burrow up` against a replicated control plane, for real: three `burrow control serve`
//! replicas and their PostgreSQL server (started by the test) in an "internet" namespace,
//! and nodes in namespaces of their own that name all three replicas. The replica a node
//! follows is killed with SIGKILL: the node moves to another, resumes its stream, and hears of
//! a node that joins afterwards; PostgreSQL restarts under the tunnels. Needs root, iproute2,
//! ping and PostgreSQL; SKIPPED otherwise.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
mod netns;

use std::time::{Duration, Instant};

use common::postgres::Postgres;
use netns::{have, ip, is_root, ping, run, Lab, BURROW};

const TEST: &str = "burrow_up_with_control_replicas";

fn skip(why: &str) {
    assert!(
        std::env::var_os("BURROW_REQUIRE_INTEROP").is_none(),
        "{TEST} needs {why}"
    );
    eprintln!("SKIPPED {TEST}: needs {why}");
}

/// Waits until `log` holds `text` past its first `from` bytes; how long that took.
fn wait_for(log: &std::path::Path, from: usize, text: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let s = std::fs::read_to_string(log).unwrap_or_default();
        if s.get(from..).is_some_and(|after| after.contains(text)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{} never said {text:?}: {s}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pings(ns: &str, addr: &str, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if ping(ns, addr) {
            return true;
        }
    }
    false
}

#[test]
fn nodes_fail_over_between_control_replicas_and_keep_hearing_of_each_other() {
    if !is_root() {
        return skip("root for network namespaces and TUN devices");
    }
    for (program, package) in [("ip", "iproute2"), ("ping", "iputils-ping")] {
        if !have(program) {
            return skip(&format!("{program} (package {package})"));
        }
    }
    let id = std::process::id() % 100_000;
    let inet = format!("bri{id}");
    let nodes: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("br{n}{id}"))
        .collect();
    let dir = std::env::temp_dir().join(format!("burrow-up-replicas-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        namespaces: vec![inet.clone()],
        children: Vec::new(),
    };
    lab.namespaces.extend(nodes.iter().cloned());
    for n in &lab.namespaces {
        run(&["ip", "netns", "add", n]);
        ip(n, &["link", "set", "lo", "up"]);
    }
    for (k, n) in nodes.iter().enumerate() {
        let k = k + 1;
        let (outside, inside) = (format!("br{k}x{id}"), format!("br{k}y{id}"));
        run(&[
            "ip", "link", "add", &outside, "netns", &inet, "type", "veth", "peer", "name", &inside,
            "netns", n,
        ]);
        ip(
            &inet,
            &["addr", "add", &format!("10.202.{k}.1/24"), "dev", &outside],
        );
        ip(&inet, &["link", "set", &outside, "up"]);
        ip(
            n,
            &["addr", "add", &format!("10.202.{k}.2/24"), "dev", &inside],
        );
        ip(n, &["link", "set", &inside, "up"]);
        ip(
            n,
            &["route", "add", "default", "via", &format!("10.202.{k}.1")],
        );
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
    // PostgreSQL on the internet namespace's loopback (dropped after the lab: declared later).
    let Some(pg) = Postgres::start_in("up_replicas", Some(&inet)) else {
        return; // said why
    };
    let db = pg.url();
    let policy = dir.join("policy.hujson");
    std::fs::write(
        &policy,
        r#"{ "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ] }"#,
    )
    .unwrap();
    let key = String::from_utf8(
        run(&[
            "ip",
            "netns",
            "exec",
            &inet,
            BURROW,
            "control",
            "authkey",
            "create",
            "--db",
            &db,
            "--user",
            "ops",
            "--reusable",
        ])
        .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let policy_s = policy.display().to_string();
    let mut replica_pid = Vec::new();
    for r in 0..3 {
        let port = format!("0.0.0.0:{}", 8080 + r);
        let admin = dir.join(format!("admin{r}.sock")).display().to_string();
        let line = lab.start(
            &inet,
            &[
                "control",
                "serve",
                "--listen",
                &port,
                "--db",
                &db,
                "--policy",
                &policy_s,
                "--admin-socket",
                &admin,
                "--derp",
                "http://10.202.1.1:8443/derp",
                "--stun",
                "10.202.1.1:3478",
            ],
            &dir.join(format!("control{r}.log")),
        );
        assert!(line.starts_with("listening on"), "{line}");
        replica_pid.push(lab.children.last().unwrap().id());
    }
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

    // Node k (1, 2, 3) names every replica, starting with replica k-1: a and b follow
    // replicas 0 and 1; c joins later.
    let up = |lab: &mut Lab, k: usize| {
        let name = ["a", "b", "c"][k - 1];
        let urls: Vec<String> = (0..3)
            .map(|r| format!("http://10.202.{k}.1:{}", 8080 + (k - 1 + r) % 3))
            .collect();
        let control = urls.join(",");
        let state = dir.join(name).display().to_string();
        let log = dir.join(format!("{name}.log"));
        let line = lab.start(
            &nodes[k - 1],
            &[
                "up",
                "--control",
                &control,
                "--auth-key",
                &key,
                "--state-dir",
                &state,
                "--tun",
                "burrow0",
                "--hostname",
                name,
            ],
            &log,
        );
        assert!(
            line.starts_with("up: 100."),
            "{line}; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        line.split(' ').nth(1).unwrap().to_string()
    };
    let a = up(&mut lab, 1);
    let b = up(&mut lab, 2);
    assert!(pings(&nodes[0], &b, Duration::from_secs(30)), "a → b");
    assert!(pings(&nodes[1], &a, Duration::from_secs(10)), "b → a");

    // Replica 0, which a follows, dies: a moves on and resumes its stream.
    let a_log = dir.join("a.log");
    let before = std::fs::read(&a_log).map_or(0, |b| b.len());
    assert!(
        !String::from_utf8_lossy(&std::fs::read(&a_log).unwrap()).contains("netmap stream lost"),
        "a's stream was steady before the kill"
    );
    let killed = Instant::now();
    run(&["kill", "-KILL", &replica_pid[0].to_string()]);
    wait_for(
        &a_log,
        before,
        "netmap stream lost",
        Duration::from_secs(10),
    );
    wait_for(
        &a_log,
        before,
        "netmap stream resumed",
        Duration::from_secs(20),
    );
    let failover = killed.elapsed();
    eprintln!("a's stream resumed on another replica {failover:?} after the SIGKILL");
    assert!(
        pings(&nodes[0], &b, Duration::from_secs(5)),
        "the tunnel stays"
    );

    // PostgreSQL restarts under the tunnels.
    pg.stop().unwrap();
    assert!(
        pings(&nodes[0], &b, Duration::from_secs(3)),
        "no database, same tunnel"
    );
    pg.start_again().unwrap();

    // c joins through replica 2: a (now on another replica) and b hear of it, and reach it.
    let c = up(&mut lab, 3);
    assert!(pings(&nodes[0], &c, Duration::from_secs(30)), "a → c");
    assert!(pings(&nodes[1], &c, Duration::from_secs(10)), "b → c");
    assert!(pings(&nodes[2], &a, Duration::from_secs(10)), "c → a");
    let a_text = std::fs::read_to_string(&a_log).unwrap_or_default();
    assert!(a_text.contains("control server failover"), "{a_text}");
    drop(lab);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}
