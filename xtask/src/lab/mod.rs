//! `cargo xtask lab`: burrow across real NATs. Network namespaces (created here, removed at the
//! end): an "internet" running `burrow control serve` (over TLS, with a self-signed certificate
//! the nodes trust), `burrow derper` and two `burrow stun`
//! servers; routers doing nftables NAT — easy (masquerade, port-preserving), hard
//! (masquerade fully-random), sequential (each new UDP flow takes the next port: nftables `snat`
//! to a `numgen inc` map), UDP blocked, and a double NAT; a `burrow up` node behind each.
//! It checks that every pair pings over the tunnel, that paths go direct where the NAT pair
//! allows it and stay on DERP where it cannot, that the policy's denied ports are dropped by
//! the receiving node, and that flushing a router's conntrack table or restarting the derper
//! recovers without help. hard1's router runs a real miniupnpd (UPnP IGD, NAT-PMP, PCP), so
//! hard1~hard2 goes direct through hard1's port mapping; further checks restart miniupnpd,
//! serve one protocol at a time, deny, and run `burrow netcheck` against it. Needs root,
//! iproute2, nftables, conntrack and ping; miniupnpd (miniupnpd-nftables) for the IGD checks.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{cargo, have, is_root, root, run as run_cmd};

pub(crate) mod ipv6;
mod pmtu;
pub(crate) mod relay;

/// The derper in the internet namespace (DERP on 8443, STUN on 3478).
const DERPER_ARGS: &[&str] = &[
    "derper",
    "--listen",
    "[::]:8443",
    "--stun-listen",
    "[::]:3478",
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
    /// A hard NAT whose router runs miniupnpd (UPnP IGD, NAT-PMP and PCP).
    HardIgd,
    UdpBlocked,
    Double,
    /// Address-and-port-dependent mapping with sequential ports: every new UDP flow through
    /// the router takes the next port of 20000–29999 (nftables `snat` to a `numgen inc` map),
    /// whoever sends it.
    Sequential,
    /// No IPv4 at all: an IPv6-only network (control, DERP and STUN reached over IPv6).
    Ipv6Only,
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
        nat: Nat::HardIgd,
    },
    Site {
        name: "hard2",
        nat: Nat::Hard,
    },
    // Two hard NATs with no port mapping meet through the relay node at relay1 (peer relays).
    Site {
        name: "hard3",
        nat: Nat::Hard,
    },
    Site {
        name: "relay1",
        nat: Nat::Easy,
    },
    Site {
        name: "seq1",
        nat: Nat::Sequential,
    },
    Site {
        name: "seq2",
        nat: Nat::Sequential,
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

/// The IPv6-only site the lab adds to [`SITES`] (not in the mesh benchmark's or the attack
/// lab's topologies).
pub(crate) const V6_ONLY: Site = Site {
    name: "v6only",
    nat: Nat::Ipv6Only,
};

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

/// Sites whose node relays for others (`burrow up --relay-port RELAY_PORT`).
pub(crate) const RELAY_SITES: &[&str] = &["relay1"];
/// The site whose node opens its TUN without offloads.
const PLAIN_TUN_SITE: &str = "hard1";
/// The relay port of relay nodes.
pub(crate) const RELAY_PORT: u16 = 40000;

/// Sites kept to IPv4: their checks are about IPv4 NATs (prediction, peer relays), which IPv6
/// would go around.
fn ipv4_only(site: &Site) -> bool {
    matches!(site.nat, Nat::Double | Nat::Sequential) || ["hard3", "relay1"].contains(&site.name)
}

/// The site whose node is user "srv": the policy opens TCP 7000 on it, and nothing else.
const SERVER_SITE: &str = "easy2";

/// The lab's policy: ping between every pair, TCP 7000 to user srv only, iperf3's 5201
/// anywhere, all else denied.
const POLICY: &str = r#"{
  "acls": [
    { "action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "icmp" },
    { "action": "accept", "src": ["*"], "dst": ["srv:7000"], "proto": "tcp" },
    // iperf3, for the IPv6 checks' throughput over the tailnet.
    { "action": "accept", "src": ["*"], "dst": ["*:5201"], "proto": "tcp" },
  ],
  // Every node may relay through every relay-capable node (burrow up --relay-port).
  "relay": [{ "src": ["*"], "via": ["*"] }],
}"#;

/// (from, to, should the path go direct)
const PAIRS: &[(&str, &str, bool)] = &[
    ("easy1", "easy2", true),
    ("easy1", "hard1", true),
    ("double", "easy2", true),
    // hard1's router maps its port (miniupnpd): hard2 reaches it there.
    ("hard1", "hard2", true),
    // Two sequential NATs predict each other's next port (mutual port prediction).
    ("seq1", "seq2", true),
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
        sh(&[
            "ip",
            "netns",
            "exec",
            &n,
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.forwarding=1",
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
            if addr.contains(':') {
                ipv6::add_address(n, i, addr)?;
            } else {
                sh(&["ip", "-n", n, "addr", "add", addr, "dev", i])?;
            }
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
            // BURROW_LAB_RUST_LOG (e.g. "debug") for a closer look at a failing run.
            .env(
                "RUST_LOG",
                std::env::var("BURROW_LAB_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
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

    /// Stops a program the lab started (SIGKILL), keeping its log as `KEY-TAG.log`.
    fn stop(&mut self, key: &str, tag: &str) {
        if let Some(mut c) = self.children.remove(key) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::rename(
            self.dir.join(format!("{key}.log")),
            self.dir.join(format!("{key}-{tag}.log")),
        );
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

/// The external address of the node's latest mapping, from its log ("mapped with P: ADDR (…").
fn mapped_external(log: &str) -> Option<String> {
    let l = log.lines().rev().find(|l| l.contains("mapped with"))?;
    let rest = l.split("mapped with").nth(1)?.split(": ").nth(1)?;
    Some(rest.split(' ').next()?.to_string())
}

/// Whether `conntrack -L` output holds an answered flow that came in from `peer_ip` to
/// `external` (IP:port).
fn inbound_answered(conntrack: &str, peer_ip: &str, external: &str) -> bool {
    let Some((ip, port)) = external.rsplit_once(':') else {
        return false;
    };
    conntrack.lines().any(|l| {
        let first = |k: &str| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or("")
        };
        first("src=") == peer_ip
            && first("dst=") == ip
            && first("dport=") == port
            && !l.contains("[UNREPLIED]")
    })
}

/// A log line's time of day in seconds (its RFC 3339 timestamp's `HH:MM:SS.ffffff`).
fn log_secs(line: &str) -> Option<f64> {
    let t = line.get(11..26)?;
    let mut f = t.split(':');
    let h: f64 = f.next()?.parse().ok()?;
    let m: f64 = f.next()?.parse().ok()?;
    let s: f64 = f.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
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
    /// Each node's `burrow up` arguments (to restart it).
    node_args: BTreeMap<&'static str, Vec<String>>,
    /// Sites whose router runs miniupnpd → how to restart it.
    igds: BTreeMap<&'static str, IgdRouter>,
    /// Sites with IPv6 behind their router whose node has no IPv6 address yet.
    pub(crate) v6: BTreeMap<&'static str, ipv6::SiteV6>,
}

/// A router running miniupnpd (its child is the lab's "miniupnpd-SITE").
#[derive(Clone)]
pub(crate) struct IgdRouter {
    ns: String,
    wan_if: String,
    lan_if: String,
    lan_cidr: String,
}

/// The RFC 5780 STUN server miniupnpd asks for its external address, and its alternate
/// address (a second IP on the internet namespace's loopback).
const IGD_STUN: &str = "198.18.250.1:3490";
const IGD_STUN_ALT: &str = "198.18.251.1:3491";

fn igd_stun() -> std::net::SocketAddr {
    IGD_STUN.parse().expect("a socket address")
}

impl IgdRouter {
    /// Starts miniupnpd with fresh (empty) chains, as the lab's child "miniupnpd-SITE".
    fn start(
        &self,
        lab: &mut Lab,
        site: &str,
        dir: &Path,
        opts: &crate::igd::IgdOptions,
    ) -> Result<()> {
        let child = crate::igd::start_miniupnpd(
            &self.ns,
            &self.wan_if,
            &self.lan_if,
            &self.lan_cidr,
            igd_stun(),
            dir,
            opts,
        )?;
        lab.children.insert(format!("miniupnpd-{site}"), child);
        Ok(())
    }

    /// A router reboot: miniupnpd stopped and started again with `opts`, every mapping and
    /// (with `flush`) every conntrack entry gone.
    fn restart(
        &self,
        lab: &mut Lab,
        site: &str,
        dir: &Path,
        opts: &crate::igd::IgdOptions,
        flush: bool,
    ) -> Result<()> {
        if let Some(mut c) = lab.children.remove(&format!("miniupnpd-{site}")) {
            crate::igd::stop_miniupnpd(&mut c)?;
        }
        if flush {
            lab.in_ns(&self.ns, &["conntrack", "-F"])?;
        }
        self.start(lab, site, dir, opts)
    }
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
        "[::]:8080",
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
        control_args.extend(["--self-signed".into(), ipv6::inet_addr(s)]);
    }
    let control_args: Vec<&str> = control_args.iter().map(String::as_str).collect();
    lab.start("control", &inet, burrow, &control_args)?;
    lab.start("derper", &inet, burrow, DERPER_ARGS)?;
    lab.start("stun2", &inet, burrow, &["stun", "--listen", "[::]:3479"])?;
    lab.start("stun3", &inet, burrow, &["stun", "--listen", "[::]:3480"])?;
    if sites.iter().any(|s| s.nat == Nat::HardIgd) {
        // miniupnpd refuses the lab's reserved 198.18.0.0/15 as its external address unless
        // an RFC 5780 STUN server (two addresses) tells it the router is not filtered.
        for a in [IGD_STUN, IGD_STUN_ALT] {
            let ip = a.split(':').next().unwrap_or_default();
            sh(&[
                "ip",
                "-n",
                &inet,
                "addr",
                "add",
                &format!("{ip}/32"),
                "dev",
                "lo",
            ])?;
        }
        lab.start(
            "stun-igd",
            &inet,
            burrow,
            &["stun", "--listen", IGD_STUN, "--alt", IGD_STUN_ALT],
        )?;
    }

    // Sites: router(s) and a node behind.
    let mut nodes: BTreeMap<&str, (String, String, String)> = BTreeMap::new(); // name → (ns, address, router ns)
    let mut node_args = BTreeMap::new();
    let mut igds = BTreeMap::new();
    let mut v6 = BTreeMap::new();
    for (k, site) in sites.iter().enumerate() {
        let s = k + 1;
        let router = lab.add_ns(&format!("r{s}"))?;
        let v6_only = site.nat == Nat::Ipv6Only;
        // A link's address: the IPv6 one (a /64) on the IPv6-only site, else the IPv4 one.
        let addr = |v6: String, v4: String| if v6_only { format!("{v6}/64") } else { v4 };
        let (inet_if, out) = lab.link(
            &inet,
            &addr(ipv6::inet_addr(s), format!("198.18.{s}.1/24")),
            &router,
            &addr(ipv6::router_wan_addr(s), format!("198.18.{s}.2/24")),
            &format!("bx{id}{s}"),
        )?;
        if !v6_only {
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
        }
        // IPv6 (every site but the double NAT's): the router's /64 routed from the internet,
        // a stateful firewall in front of it, no NAT66.
        let has_v6 = !ipv4_only(site);
        if has_v6 {
            ipv6::wan(&inet, &inet_if, &router, &out, s, !v6_only, &dir)?;
        }
        // A home router: masquerade out, and nothing unsolicited accepted by the router itself
        // (without the input drop, an unsolicited packet to the router's outside address is
        // confirmed in conntrack and clashes with the mapping the node opens a moment later).
        let masquerade = |ns: &str, oif: &str, nat: Nat| -> Result<()> {
            let rule = match nat {
                Nat::Hard => format!("oifname \"{oif}\" masquerade fully-random"),
                // nftables puts a `numgen` value into the port register in host byte order
                // (ports 8270, 8526, … for 20000, 20001, …), so the ports come from a map.
                Nat::Sequential => format!(
                    "oifname \"{oif}\" meta l4proto udp snat ip to 198.18.{s}.2 : numgen inc mod 10000 map {{ {} }}\n  oifname \"{oif}\" masquerade",
                    (0..10_000)
                        .map(|i| format!("{i} : {}", 20000 + i))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => format!("oifname \"{oif}\" masquerade"),
            };
            let rules = format!(
                "table ip nat {{\n chain post {{\n  type nat hook postrouting priority 100;\n  {rule}\n }}\n}}\n\
                 table ip guard {{\n chain input {{\n  type filter hook input priority 0; policy drop;\n  ct state established,related accept\n  iifname \"lo\" accept\n }}\n}}\n"
            );
            let f = dir.join(format!("{ns}.nft"));
            std::fs::write(&f, rules)?;
            sh(&["ip", "netns", "exec", ns, "nft", "-f", f.to_str().unwrap()])?;
            Ok(())
        };
        if !matches!(site.nat, Nat::HardIgd | Nat::Ipv6Only) {
            masquerade(&router, &out, site.nat)?;
        }
        if RELAY_SITES.contains(&site.name) {
            // A relay needs a UDP port anyone reaches: the router forwards it (a port forward,
            // as Tailscale's peer relays ask for), since this NAT filters per remote endpoint.
            let f = dir.join(format!("{router}-relay.nft"));
            std::fs::write(
                &f,
                format!(
                    "table ip relayfwd {{\n chain pre {{\n  type nat hook prerouting priority -100;\n  iifname \"{out}\" udp dport {RELAY_PORT} dnat to 192.168.{s}.2:{RELAY_PORT}\n }}\n}}\n"
                ),
            )?;
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
            masquerade(&inner, &inner_out, Nat::Easy)?;
            gateway_ns = inner;
        }
        let node = lab.add_ns(site.name)?;
        let (lan_if, node_if) = lab.link(
            &gateway_ns,
            &addr(ipv6::lan_gateway(s), format!("192.168.{s}.1/24")),
            &node,
            &addr(ipv6::node_addr(s), format!("192.168.{s}.2/24")),
            &format!("bn{id}{s}"),
        )?;
        if v6_only {
            ipv6::default_route(&node, s)?;
        } else {
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
            if has_v6 {
                // The router's side of the LAN; the node's address comes later (the IPv6 checks).
                ipv6::add_address(
                    &gateway_ns,
                    &lan_if,
                    &format!("{}/64", ipv6::lan_gateway(s)),
                )?;
                v6.insert(
                    site.name,
                    ipv6::SiteV6 {
                        ns: node.clone(),
                        dev: node_if.clone(),
                        s,
                    },
                );
            }
        }
        if site.nat == Nat::HardIgd {
            // Only the LAN's packets masqueraded (fully random), so that miniupnpd's own STUN
            // query keeps its port; the STUN server's answers from both addresses accepted.
            let lan_cidr = format!("192.168.{s}.0/24");
            let alt: std::net::SocketAddr = IGD_STUN_ALT.parse()?;
            let rules =
                crate::igd::router_rules(&out, &lan_if, &lan_cidr, true, &[igd_stun(), alt]);
            let f = dir.join(format!("{router}.nft"));
            std::fs::write(&f, rules)?;
            sh(&[
                "ip",
                "netns",
                "exec",
                &router,
                "nft",
                "-f",
                f.to_str().unwrap(),
            ])?;
            let igd = IgdRouter {
                ns: router.clone(),
                wan_if: out.clone(),
                lan_if,
                lan_cidr,
            };
            igd.start(
                &mut lab,
                site.name,
                &dir,
                &crate::igd::IgdOptions::default(),
            )?;
            igds.insert(site.name, igd);
        }
        let gw = if v6_only {
            format!("[{}]", ipv6::inet_addr(s))
        } else {
            format!("198.18.{s}.1")
        };
        let state = dir.join(site.name).display().to_string();
        let mut args: Vec<String> = [
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
        ]
        .map(String::from)
        .to_vec();
        if RELAY_SITES.contains(&site.name) {
            args.extend(["--relay-port".into(), RELAY_PORT.to_string()]);
            // Above the default 1,000 Mbit/s per client, so the mesh bench measures what the
            // machine forwards rather than the budget.
            args.extend(["--relay-max-mbit".into(), "10000".into()]);
        }
        if site.name == PLAIN_TUN_SITE {
            // One node with a plain TUN (no IFF_VNET_HDR): its traffic with the offloading
            // others (the IPv6 iperf3 to hard2 among it) checks both data paths against
            // each other.
            args.push("--no-offload".into());
        }
        if has_v6 && !v6_only {
            // STUN over IPv6 too, for when the node gets an IPv6 address.
            args.extend(["--stun".into(), format!("[{}]:3478", ipv6::inet_addr(s))]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = lab.start(site.name, &node, burrow, &argv)?;
        node_args.insert(site.name, args);
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
        node_args,
        igds,
        v6,
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
    let burrow = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("debug/burrow");
    // Without miniupnpd, hard1's router is a plain hard NAT and the IGD checks are skipped.
    let igd = have("miniupnpd");
    if !igd {
        println!("SKIPPED lab IGD checks: needs miniupnpd (package miniupnpd-nftables)");
    }
    let sites: Vec<Site> = SITES
        .iter()
        .map(|s| match s.nat {
            Nat::HardIgd if !igd => Site {
                nat: Nat::Hard,
                ..*s
            },
            _ => *s,
        })
        .chain([V6_ONLY])
        .collect();
    let Built {
        mut lab,
        inet,
        nodes,
        dir,
        node_args,
        igds,
        v6,
        ..
    } = build(&burrow, &sites, POLICY)?;
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
    for &(a, b, direct) in PAIRS {
        // Two hard NATs meet directly only through hard1's port mapping.
        let direct = &(direct && (igd || (a, b) != ("hard1", "hard2")));
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

    if igd {
        igd_checks(
            &mut lab,
            &burrow,
            &nodes,
            &node_args,
            &igds,
            &pubkey,
            &mut failures,
        )?;
    }

    relay::checks(
        relay::RelayLab {
            lab: &mut lab,
            burrow: &burrow,
            inet: &inet,
            nodes: &nodes,
            node_args: &node_args,
            dir: &dir,
            pubkey: &pubkey,
        },
        &mut failures,
    )?;

    pmtu::checks(
        pmtu::PmtuLab {
            lab: &mut lab,
            burrow: &burrow,
            nodes: &nodes,
            dir: &dir,
        },
        &mut failures,
    )?;

    ipv6::checks(
        ipv6::Ipv6Lab {
            lab: &mut lab,
            burrow: &burrow,
            nodes: &nodes,
            v6: &v6,
            node_args: &node_args,
            pubkey: &pubkey,
        },
        &mut failures,
    )?;

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

/// The port-mapping checks against the real miniupnpd on hard1's router (which already served
/// the pair table, all protocols on): `burrow netcheck` reports the mapping; a miniupnpd
/// restart (a router reboot: mappings and conntrack gone) is re-mapped and the pair goes
/// direct again (at once after its NAT-PMP/PCP announcement; with UPnP only, at the node's
/// next 30 s check); with only NAT-PMP/PCP, and with only UPnP, a restarted node goes direct; an
/// IGD that denies leaves the pair on DERP and the node's log says why. The deny check turns
/// NAT-PMP/PCP off: a denied NAT-PMP/PCP request freezes miniupnpd 2.3.1 for over a minute.
fn igd_checks(
    lab: &mut Lab,
    burrow: &Path,
    nodes: &BTreeMap<&'static str, (String, String, String)>,
    node_args: &BTreeMap<&'static str, Vec<String>>,
    igds: &BTreeMap<&'static str, IgdRouter>,
    pubkey: &dyn Fn(&str) -> Result<String>,
    failures: &mut Vec<String>,
) -> Result<()> {
    use crate::igd::IgdOptions;
    let (site, peer) = ("hard1", "hard2");
    let Some(router) = igds.get(site) else {
        return Ok(());
    };
    let dir = lab.dir.clone();
    let (ns, _, _) = nodes[site].clone();
    let (_, peer_addr, peer_router) = nodes[peer].clone();
    let peer_key = pubkey(peer)?;
    let secs =
        |d: Option<Duration>| d.map_or("–".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    let direct_in =
        |log: &str| route_in_log(log, &peer_key).is_some_and(|r| r.starts_with("Direct"));

    // How soon the pair went direct in the pair table above: from hard1 hearing of hard2 (the
    // control server's peer update) to the path change, by the log's timestamps.
    let log = lab.log(site);
    let heard = log
        .lines()
        .find(|l| l.contains(&format!("name: \"{peer}\"")))
        .and_then(log_secs);
    let direct_at = log
        .lines()
        .find(|l| l.contains("path changed") && l.contains(&peer_key) && l.contains("to=Direct"))
        .and_then(log_secs);
    println!(
        "hard1~hard2 (miniupnpd, all protocols): direct {} after hard1 heard of hard2",
        secs(
            heard
                .zip(direct_at)
                .map(|(a, b)| Duration::from_secs_f64((b - a).max(0.0)))
        )
    );

    // netcheck on the node, against the same router.
    let mut args = vec![
        "ip".to_string(),
        "netns".into(),
        "exec".into(),
        ns.clone(),
        burrow.display().to_string(),
        "netcheck".into(),
        "--json".into(),
    ];
    for w in node_args[site].windows(2) {
        if w[0] == "--stun" {
            args.extend(["--stun".to_string(), w[1].clone()]);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = sh(&args).and_then(|o| Ok(serde_json::from_str::<serde_json::Value>(&o)?));
    match report {
        Ok(v) => {
            let pm = &v["port_mapping"];
            let with = pm["mapped_with"].as_str().unwrap_or("none");
            let external = pm["external"].as_str().unwrap_or("none");
            println!(
                "netcheck --json on {site}: port_mapping.mapped_with {with}, external {external}"
            );
            if pm["mapped_with"].is_null() || pm["external"].is_null() {
                failures.push(format!("netcheck on {site} reports no mapping: {pm}"));
            }
        }
        Err(e) => failures.push(format!("netcheck on {site}: {e:#}")),
    }

    println!(
        "{:<40} {:>12}  outcome (expected)",
        "port mapping on hard1's router", "direct after"
    );
    // A router reboot mid-run: the node must notice, map again and get back to direct.
    let reboot = |lab: &mut Lab,
                  label: &str,
                  opts: &IgdOptions,
                  failures: &mut Vec<String>|
     -> Result<()> {
        let from = lab.log(site).len();
        let t0 = Instant::now();
        router.restart(lab, site, &dir, opts, true)?;
        // Conntrack on hard1's router during the outage and after, for a look at why (kept
        // with the logs).
        let tag = if opts.pmp_pcp {
            "reboot"
        } else {
            "reboot-upnp"
        };
        let snapshot = |name: &str| {
            if let Ok(t) = lab.in_ns(&router.ns, &["conntrack", "-L", "-p", "udp"]) {
                let _ = std::fs::write(dir.join(format!("conntrack-{site}-{tag}-{name}.txt")), t);
            }
        };
        let mut outage = false;
        // The path may never leave Direct in the log (re-mapped before the engine notices),
        // so direct means: the route Direct, and the router's (flushed) conntrack holding a
        // flow that came in through the mapping (so it is back) and was answered.
        let external = mapped_external(&lab.log(site));
        // hard2's router's address: where its packets come from.
        let peer_ip = route_in_log(&lab.log(site), &peer_key)
            .and_then(|r| Some(r.strip_prefix("Direct(")?.split(':').next()?.to_string()));
        let back = wait(Duration::from_secs(90), || {
            ping(&ns, &peer_addr);
            if !outage && t0.elapsed() > Duration::from_secs(15) {
                snapshot("outage");
                outage = true;
            }
            direct_in(&lab.log(site))
                && external.as_deref().is_some_and(|e| {
                    lab.in_ns(&router.ns, &["conntrack", "-L", "-p", "udp"])
                        .is_ok_and(|t| inbound_answered(&t, peer_ip.as_deref().unwrap_or("?"), e))
                })
        })
        .map(|_| t0.elapsed());
        snapshot("after");
        let pings = wait(Duration::from_secs(10), || ping(&ns, &peer_addr)).is_some();
        if !pings {
            failures.push(format!("{label}: hard1 cannot ping hard2"));
        }
        let log = lab.log(site);
        let since = log.get(from..).unwrap_or_default();
        let left = since.lines().any(|l| {
            l.contains("path changed")
                && l.contains(&peer_key)
                && !l
                    .split("to=")
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .starts_with("Direct")
        });
        let noticed = if since.contains("gateway restarted") {
            "an announcement or epoch"
        } else if since.contains("mapping lost") {
            "mapping lost"
        } else {
            "re-added at a check"
        };
        println!(
            "{:<40} {:>12}  {} ({noticed}, {}; expected re-mapped, direct)",
            label,
            secs(back),
            if back.is_some() {
                "direct"
            } else {
                "NOT direct"
            },
            if left {
                "left direct meanwhile"
            } else {
                "stayed direct"
            }
        );
        if back.is_none() {
            failures.push(format!("{label}: hard1~hard2 not back to direct"));
        }
        Ok(())
    };
    reboot(
        lab,
        "miniupnpd restarted (mappings lost)",
        &IgdOptions::default(),
        failures,
    )?;

    // A restarted node (fresh conntrack on both routers) against each configuration.
    for (i, (name, opts, expect_direct)) in [
        (
            "NAT-PMP/PCP only",
            IgdOptions {
                upnp: false,
                ..IgdOptions::default()
            },
            true,
        ),
        (
            "UPnP only",
            IgdOptions {
                pmp_pcp: false,
                ..IgdOptions::default()
            },
            true,
        ),
        (
            "UPnP denying (NAT-PMP/PCP off)",
            IgdOptions {
                pmp_pcp: false,
                deny: true,
                ..IgdOptions::default()
            },
            false,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        lab.stop(site, &format!("igd{i}"));
        router.restart(lab, site, &dir, &opts, true)?;
        lab.in_ns(&peer_router, &["conntrack", "-F"])?;
        let t0 = Instant::now();
        let argv: Vec<&str> = node_args[site].iter().map(String::as_str).collect();
        lab.start(site, &ns, burrow, &argv)?;
        let went = wait(
            Duration::from_secs(if expect_direct { 60 } else { 20 }),
            || {
                ping(&ns, &peer_addr);
                direct_in(&lab.log(site))
            },
        )
        .map(|_| t0.elapsed());
        // The tunnel carries pings (a path just switched may drop one).
        let pings = wait(Duration::from_secs(10), || ping(&ns, &peer_addr)).is_some();
        let log = lab.log(site);
        let why = log
            .lines()
            .find(|l| l.contains("burrow::portmap") && l.contains("port mapping at"))
            .map(|l| l[l.find("port mapping at").unwrap_or(0)..].to_string());
        let mapped = log
            .lines()
            .find(|l| l.contains("mapped with"))
            .map(|l| l[l.find("mapped with").unwrap_or(0)..].to_string());
        println!(
            "{:<40} {:>12}  {} ({}) — {}",
            name,
            secs(went),
            if went.is_some() { "direct" } else { "DERP" },
            if expect_direct { "direct" } else { "DERP" },
            if expect_direct {
                mapped.clone().unwrap_or_else(|| "no mapping logged".into())
            } else {
                why.clone()
                    .unwrap_or_else(|| "no port mapping report logged".into())
            }
        );
        if went.is_some() != expect_direct {
            failures.push(format!(
                "{name}: hard1~hard2 expected {}",
                if expect_direct { "direct" } else { "DERP" }
            ));
        }
        if !pings {
            failures.push(format!("{name}: hard1 cannot ping hard2"));
        }
        if expect_direct && mapped.is_none() {
            failures.push(format!("{name}: hard1 logged no mapping"));
        }
        if !expect_direct && (why.is_none() || mapped.is_some()) {
            failures.push(format!(
                "{name}: hard1's log does not say why it has no mapping"
            ));
        }
        if !opts.pmp_pcp && expect_direct {
            // No NAT-PMP/PCP: no announcement, so the mapping comes back at the next check.
            reboot(lab, "miniupnpd restarted, UPnP only", &opts, failures)?;
        }
    }
    Ok(())
}
