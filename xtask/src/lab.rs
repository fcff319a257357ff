//! `cargo xtask lab`: burrow across real NATs. Network namespaces (created here, removed at the
//! end): an "internet" running `burrow control serve` (over TLS, with a self-signed certificate
//! the nodes trust), `burrow derper` and two `burrow stun`
//! servers; routers doing nftables NAT — easy (masquerade, port-preserving), hard
//! (masquerade fully-random), UDP blocked, and a double NAT; a `burrow up` node behind each.
//! It checks that every pair pings over the tunnel, that paths go direct where the NAT pair
//! allows it and stay on DERP where it cannot, that the policy's denied ports are dropped by
//! the receiving node, and that flushing a router's conntrack table or restarting the derper
//! recovers without help. Needs root, iproute2, nftables, conntrack and
//! ping.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{cargo, have, is_root, root, run as run_cmd};

/// The derper in the internet namespace (DERP on 8443, STUN on 3478).
const DERPER_ARGS: &[&str] = &[
    "derper",
    "--listen",
    "0.0.0.0:8443",
    "--stun-listen",
    "0.0.0.0:3478",
];

/// Programs the lab needs, with their Debian packages.
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    ("ping", "iputils-ping"),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Nat {
    Easy,
    Hard,
    UdpBlocked,
    Double,
}

#[derive(Clone, Copy)]
pub(crate) struct Site {
    pub(crate) name: &'static str,
    pub(crate) nat: Nat,
}

const SITES: &[Site] = &[
    Site {
        name: "easy1",
        nat: Nat::Easy,
    },
    Site {
        name: "easy2",
        nat: Nat::Easy,
    },
    Site {
        name: "hard1",
        nat: Nat::Hard,
    },
    Site {
        name: "hard2",
        nat: Nat::Hard,
    },
    Site {
        name: "blocked",
        nat: Nat::UdpBlocked,
    },
    Site {
        name: "double",
        nat: Nat::Double,
    },
];

/// The lab's sites picked by name, in the order given (the mesh benchmark uses some of them).
pub(crate) fn sites(names: &[&str]) -> Vec<Site> {
    names
        .iter()
        .map(|n| {
            *SITES
                .iter()
                .find(|s| s.name == *n)
                .unwrap_or_else(|| panic!("no lab site {n}"))
        })
        .collect()
}

/// The site whose node is user "srv": the policy opens TCP 7000 on it, and nothing else.
const SERVER_SITE: &str = "easy2";

/// The lab's policy: ping between every pair, TCP 7000 to user srv only, all else denied.
const POLICY: &str = r#"{
  "acls": [
    { "action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "icmp" },
    { "action": "accept", "src": ["*"], "dst": ["srv:7000"], "proto": "tcp" },
  ],
}"#;

/// (from, to, should the path go direct)
const PAIRS: &[(&str, &str, bool)] = &[
    ("easy1", "easy2", true),
    ("easy1", "hard1", true),
    ("double", "easy2", true),
    ("hard1", "hard2", false),
    ("blocked", "easy1", false),
];

pub(crate) struct Lab {
    /// Every namespace name starts with it ("bl<pid>" for the lab).
    prefix: String,
    namespaces: Vec<String>,
    children: BTreeMap<String, Child>,
    dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.children.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

pub(crate) fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Lab {
    /// An empty lab whose namespaces are named `{prefix}{name}`, logs in `dir` (other tasks
    /// build their own topologies with it; everything goes when it is dropped).
    pub(crate) fn new(prefix: &str, dir: &Path) -> Lab {
        Lab {
            prefix: prefix.to_string(),
            namespaces: Vec::new(),
            children: BTreeMap::new(),
            dir: dir.to_path_buf(),
        }
    }

    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(crate) fn add_ns(&mut self, name: &str) -> Result<String> {
        let n = self.ns(name);
        sh(&["ip", "netns", "add", &n])?;
        self.namespaces.push(n.clone());
        sh(&["ip", "-n", &n, "link", "set", "lo", "up"])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &n,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ])?;
        Ok(n)
    }

    pub(crate) fn in_ns(&self, ns: &str, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "netns", "exec", ns];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// A veth between two namespaces with an address on each end.
    pub(crate) fn link(
        &self,
        a: &str,
        a_addr: &str,
        b: &str,
        b_addr: &str,
        tag: &str,
    ) -> Result<(String, String)> {
        let (ia, ib) = (format!("{tag}a"), format!("{tag}b"));
        sh(&[
            "ip", "link", "add", &ia, "netns", a, "type", "veth", "peer", "name", &ib, "netns", b,
        ])?;
        for (n, i, addr) in [(a, &ia, a_addr), (b, &ib, b_addr)] {
            sh(&["ip", "-n", n, "addr", "add", addr, "dev", i])?;
            sh(&["ip", "-n", n, "link", "set", i, "up"])?;
        }
        Ok((ia, ib))
    }

    /// Starts `burrow ARGS…` in `ns`, waiting for its first stdout line.
    pub(crate) fn start(
        &mut self,
        key: &str,
        ns: &str,
        burrow: &Path,
        args: &[&str],
    ) -> Result<String> {
        let log = self.dir.join(format!("{key}.log"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(burrow)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        self.children.insert(key.to_string(), child);
        if line.is_empty() {
            bail!(
                "burrow {args:?} in {ns} printed nothing: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(line.trim().to_string())
    }

    fn log(&self, key: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{key}.log"))).unwrap_or_default()
    }

    /// The process id of a program the lab started.
    pub(crate) fn pid(&self, key: &str) -> Option<u32> {
        self.children.get(key).map(Child::id)
    }

    /// Whether a program the lab started is still running.
    pub(crate) fn running(&mut self, key: &str) -> bool {
        self.children
            .get_mut(key)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// Whether the lab's programs are installed; prints a SKIPPED line naming the first missing one.
pub(crate) fn is_tooling_ready() -> bool {
    for (program, package) in TOOLS {
        if !have(program) {
            println!("SKIPPED lab: needs {program} (package {package}); `cargo xtask test` installs it as root");
            return false;
        }
    }
    true
}

pub(crate) fn ping(ns: &str, addr: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", addr])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub(crate) fn wait(deadline: Duration, mut ok: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if ok() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The node's current route to `peer_key`, from its log ("path changed … to=…").
fn route_in_log(log: &str, peer_key: &str) -> Option<String> {
    log.lines()
        .rev()
        .find(|l| l.contains("path changed") && l.contains(peer_key))
        .and_then(|l| l.split("to=").nth(1))
        .map(|s| s.trim().to_string())
}

/// A built lab: namespaces, services and nodes (killed and removed when dropped).
pub(crate) struct Built {
    pub(crate) lab: Lab,
    inet: String,
    /// Site name → (node namespace, tailnet address, router namespace).
    pub(crate) nodes: BTreeMap<&'static str, (String, String, String)>,
    pub(crate) dir: PathBuf,
    /// The file holding the reusable auth key of user "lab" (0600).
    pub(crate) auth_key_file: PathBuf,
    /// The control server's certificate (DER), which every node trusts.
    pub(crate) ca: PathBuf,
}

/// Builds the internet (control, derper, STUN ×3), the sites' routers and a `burrow up` node
/// behind each.
pub(crate) fn build(burrow: &Path, sites: &[Site], policy_text: &str) -> Result<Built> {
    let id = std::process::id() % 10_000;
    let dir = std::env::temp_dir().join(format!("burrow-lab-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut lab = Lab::new(&format!("bl{id}"), &dir);

    // The internet and its services.
    let inet = lab.add_ns("inet")?;
    let db = dir.join("control.sqlite").display().to_string();
    let policy = dir.join("policy.hujson");
    std::fs::write(&policy, policy_text)?;
    let authkey = |user: &str| -> Result<String> {
        let key = sh(&[
            burrow.to_str().unwrap(),
            "control",
            "authkey",
            "create",
            "--db",
            &db,
            "--reusable",
            "--user",
            user,
        ])?;
        Ok(key.trim().to_string())
    };
    // Keys go to nodes in files (a command line is readable by every local user).
    let key_file = |user: &str| -> Result<PathBuf> {
        let f = dir.join(format!("{user}.authkey"));
        std::fs::write(&f, authkey(user)?)?;
        Ok(f)
    };
    let key = key_file("lab")?;
    // The server site's node belongs to user "srv", which the lab's policy lets reach on 7000.
    let srv_key = key_file("srv")?;
    let policy_s = policy.display().to_string();
    let admin = dir.join("admin.sock").display().to_string();
    // The control API over TLS, as a deployment runs it: a self-signed certificate for the
    // address each site reaches the internet namespace at, which every node trusts.
    let ca = dir.join("control.der").display().to_string();
    let mut control_args: Vec<String> = [
        "control",
        "serve",
        "--listen",
        "0.0.0.0:8080",
        "--db",
        &db,
        "--policy",
        &policy_s,
        "--admin-socket",
        &admin,
        "--cert-out",
        &ca,
    ]
    .map(String::from)
    .to_vec();
    for s in 1..=sites.len() {
        control_args.extend(["--self-signed".into(), format!("198.18.{s}.1")]);
    }
    let control_args: Vec<&str> = control_args.iter().map(String::as_str).collect();
    lab.start("control", &inet, burrow, &control_args)?;
    lab.start("derper", &inet, burrow, DERPER_ARGS)?;
    lab.start(
        "stun2",
        &inet,
        burrow,
        &["stun", "--listen", "0.0.0.0:3479"],
    )?;
    lab.start(
        "stun3",
        &inet,
        burrow,
        &["stun", "--listen", "0.0.0.0:3480"],
    )?;

    // Sites: router(s) and a node behind.
    let mut nodes: BTreeMap<&str, (String, String, String)> = BTreeMap::new(); // name → (ns, address, router ns)
    for (k, site) in sites.iter().enumerate() {
        let s = k + 1;
        let router = lab.add_ns(&format!("r{s}"))?;
        let (_, out) = lab.link(
            &inet,
            &format!("198.18.{s}.1/24"),
            &router,
            &format!("198.18.{s}.2/24"),
            &format!("bx{id}{s}"),
        )?;
        sh(&[
            "ip",
            "-n",
            &router,
            "route",
            "add",
            "default",
            "via",
            &format!("198.18.{s}.1"),
        ])?;
        // A home router: masquerade out, and nothing unsolicited accepted by the router itself
        // (without the input drop, an unsolicited packet to the router's outside address is
        // confirmed in conntrack and clashes with the mapping the node opens a moment later).
        let masquerade = |ns: &str, oif: &str, fully_random: bool| -> Result<()> {
            let rules = format!(
                "table ip nat {{\n chain post {{\n  type nat hook postrouting priority 100;\n  oifname \"{oif}\" masquerade{}\n }}\n}}\n\
                 table ip guard {{\n chain input {{\n  type filter hook input priority 0; policy drop;\n  ct state established,related accept\n  iifname \"lo\" accept\n }}\n}}\n",
                if fully_random { " fully-random" } else { "" }
            );
            let f = dir.join(format!("{ns}.nft"));
            std::fs::write(&f, rules)?;
            sh(&["ip", "netns", "exec", ns, "nft", "-f", f.to_str().unwrap()])?;
            Ok(())
        };
        masquerade(&router, &out, site.nat == Nat::Hard)?;
        if site.nat == Nat::UdpBlocked {
            let f = dir.join(format!("{router}-block.nft"));
            std::fs::write(&f, "table ip filter {\n chain block {\n  type filter hook forward priority 0;\n  meta l4proto udp drop\n }\n}\n")?;
            sh(&[
                "ip",
                "netns",
                "exec",
                &router,
                "nft",
                "-f",
                f.to_str().unwrap(),
            ])?;
        }
        let mut gateway_ns = router.clone();
        if site.nat == Nat::Double {
            let inner = lab.add_ns(&format!("r{s}i"))?;
            let (_, inner_out) = lab.link(
                &router,
                &format!("172.16.{s}.1/24"),
                &inner,
                &format!("172.16.{s}.2/24"),
                &format!("bd{id}{s}"),
            )?;
            sh(&[
                "ip",
                "-n",
                &inner,
                "route",
                "add",
                "default",
                "via",
                &format!("172.16.{s}.1"),
            ])?;
            masquerade(&inner, &inner_out, false)?;
            gateway_ns = inner;
        }
        let node = lab.add_ns(site.name)?;
        lab.link(
            &gateway_ns,
            &format!("192.168.{s}.1/24"),
            &node,
            &format!("192.168.{s}.2/24"),
            &format!("bn{id}{s}"),
        )?;
        sh(&[
            "ip",
            "-n",
            &node,
            "route",
            "add",
            "default",
            "via",
            &format!("192.168.{s}.1"),
        ])?;
        let gw = format!("198.18.{s}.1");
        let state = dir.join(site.name).display().to_string();
        let line = lab.start(
            site.name,
            &node,
            burrow,
            &[
                "up",
                "--control",
                &format!("https://{gw}:8080"),
                "--tls-ca",
                &ca,
                "--auth-key-file",
                if site.name == SERVER_SITE {
                    srv_key.to_str().unwrap_or_default()
                } else {
                    key.to_str().unwrap_or_default()
                },
                "--state-dir",
                &state,
                "--tun",
                "burrow0",
                "--derp",
                &format!("http://{gw}:8443/derp"),
                "--stun",
                &format!("{gw}:3478"),
                "--stun",
                &format!("{gw}:3479"),
                "--stun",
                &format!("{gw}:3480"),
                "--hostname",
                site.name,
            ],
        )?;
        let addr = line
            .strip_prefix("up: ")
            .and_then(|l| l.split(' ').next())
            .with_context(|| format!("{}: unexpected {line:?}", site.name))?
            .to_string();
        nodes.insert(site.name, (node, addr, router));
    }
    Ok(Built {
        lab,
        inet,
        nodes,
        dir: dir.clone(),
        auth_key_file: key,
        ca: PathBuf::from(ca),
    })
}

/// Runs the lab; prints a table and fails if any check fails.
pub fn run() -> Result<()> {
    if !is_root() {
        println!("SKIPPED lab: needs root for network namespaces, nftables and TUN devices");
        return Ok(());
    }
    if !is_tooling_ready() {
        return Ok(());
    }
    run_cmd(cargo().args(["build", "--quiet", "-p", "burrow"]))?;
    let burrow = root().join("target/debug/burrow");
    let Built {
        mut lab,
        inet,
        nodes,
        dir,
        ..
    } = build(&burrow, SITES, POLICY)?;
    let pubkey = |name: &str| -> Result<String> {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(name).join("node.json"))?)?;
        let private = state["private_key"].as_str().context("key")?.to_string();
        let mut child = Command::new(&burrow)
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        use std::io::Write;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(private.as_bytes())?;
        Ok(String::from_utf8(child.wait_with_output()?.stdout)?
            .trim()
            .to_string())
    };

    // Every pair pings; paths go where the NATs allow.
    let mut failures = Vec::new();
    println!(
        "{:<18} {:>10} {:>14}  path (expected)",
        "pair", "first ping", "direct after"
    );
    for (a, b, direct) in PAIRS {
        let (ns_a, _, _) = &nodes[a];
        let (_, addr_b, _) = &nodes[b];
        let first = wait(Duration::from_secs(20), || ping(ns_a, addr_b));
        let key_b = pubkey(b)?;
        // Keep traffic flowing while waiting for the path.
        // Birthday probing may need a second attempt (after the first's 30 s back-off): ~2 %.
        let went = wait(Duration::from_secs(if *direct { 60 } else { 15 }), || {
            ping(ns_a, addr_b);
            route_in_log(&lab.log(a), &key_b).is_some_and(|r| r.starts_with("Direct"))
        });
        let route = route_in_log(&lab.log(a), &key_b).unwrap_or_else(|| "Relay".into());
        println!(
            "{:<18} {:>10} {:>14}  {route} ({})",
            format!("{a}~{b}"),
            first.map_or("NONE".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            went.map_or("–".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            if *direct { "direct" } else { "DERP" }
        );
        if first.is_none() {
            failures.push(format!("{a} cannot ping {b} through the tunnel"));
        }
        if went.is_some() != *direct {
            failures.push(format!(
                "{a}~{b}: expected {}, got {route}",
                if *direct { "direct" } else { "DERP" }
            ));
        }
    }

    // The packet filter, enforced by the receiver: TCP listeners on 7000 and 7001 on the
    // server site and on 7000 on easy1 (a derper is a handy TCP listener); only srv:7000 is
    // open. The sender does not filter, so every refusal below is the receiver's doing.
    for (site, port) in [(SERVER_SITE, 7000), (SERVER_SITE, 7001), ("easy1", 7000)] {
        let listen = format!("0.0.0.0:{port}");
        lab.start(
            &format!("listener-{site}-{port}"),
            &nodes[site].0,
            &burrow,
            &["derper", "--listen", &listen],
        )?;
    }
    let connects = |from: &str, to: &str, port: u16| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &nodes[from].0,
                "timeout",
                "3",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{}/{port}", nodes[to].1),
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    for (from, to, port, allowed) in [
        ("easy1", SERVER_SITE, 7000, true),
        ("hard1", SERVER_SITE, 7000, true),
        ("easy1", SERVER_SITE, 7001, false),
        (SERVER_SITE, "easy1", 7000, false),
    ] {
        let got = connects(from, to, port);
        println!(
            "ACL {from} → {to}:{port}/tcp: {} (expected {})",
            if got { "connected" } else { "dropped" },
            if allowed { "allowed" } else { "denied" }
        );
        if got != allowed {
            failures.push(format!(
                "ACL: {from} → {to}:{port} {}",
                if got { "got through" } else { "was refused" }
            ));
        }
    }

    // Flushing a router's conntrack table: the direct path recovers by itself.
    let (ns_e1, _, router_e1) = nodes["easy1"].clone();
    let (_, addr_e2, _) = nodes["easy2"].clone();
    lab.in_ns(&router_e1, &["conntrack", "-F"])?;
    let back = wait(Duration::from_secs(20), || ping(&ns_e1, &addr_e2));
    println!(
        "conntrack flushed on easy1's router: ping again after {}",
        back.map_or("NEVER".into(), |d| format!("{:.1} s", d.as_secs_f64()))
    );
    if back.is_none() {
        failures.push("no recovery after a conntrack flush".into());
    }

    // Restarting the derper: the DERP-only pair recovers by itself.
    if let Some(mut c) = lab.children.remove("derper") {
        let _ = c.kill();
        let _ = c.wait();
    }
    std::thread::sleep(Duration::from_secs(1));
    lab.start("derper2", &inet, &burrow, DERPER_ARGS)?;
    let (ns_bl, _, _) = nodes["blocked"].clone();
    let (_, addr_e1, _) = nodes["easy1"].clone();
    let back = wait(Duration::from_secs(30), || ping(&ns_bl, &addr_e1));
    println!(
        "derper restarted: blocked~easy1 (DERP only) pings again after {}",
        back.map_or("NEVER".into(), |d| format!("{:.1} s", d.as_secs_f64()))
    );
    if back.is_none() {
        failures.push("the DERP-only pair did not recover after a derper restart".into());
    }

    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAILED {f}");
        }
        eprintln!("logs kept in {}", dir.display());
        bail!("lab: {} check(s) failed", failures.len());
    }
    drop(lab);
    if std::env::var_os("BURROW_LAB_KEEP").is_some() {
        println!("logs kept in {} (BURROW_LAB_KEEP)", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("lab: every check passed");
    Ok(())
}
