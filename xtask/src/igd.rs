//! A real port-mapping gateway for the namespace lab: Debian's miniupnpd (nftables backend)
//! on a router namespace, serving UPnP IGD, NAT-PMP and PCP to the LAN. `cargo xtask
//! igd-capture` builds a small topology of its own (client, hard-NAT router, internet with an
//! RFC 5780 `burrow stun --alt`), drives the daemon with upnpc, natpmpc and hand-built PCP
//! requests, captures the exchanges and writes them as fixtures into
//! protocol/portmap/tests/captures/. Needs root.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lab::{sh, Lab};
use crate::util::{apt_install, cargo, have, is_root, root, run as run_cmd};

/// Programs igd-capture needs, with their Debian packages.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("miniupnpd", "miniupnpd-nftables"),
    ("upnpc", "miniupnpc"),
    ("natpmpc", "natpmpc"),
    ("tshark", "tshark"),
    ("tcpdump", "tcpdump"),
];

/// What a miniupnpd instance serves.
#[derive(Clone, Debug)]
pub(crate) struct IgdOptions {
    /// UPnP IGD (SSDP and the HTTP/SOAP control point).
    pub upnp: bool,
    /// NAT-PMP and PCP on UDP 5351 (one switch in miniupnpd 2.3.1: `enable_natpmp`).
    pub pmp_pcp: bool,
    /// Refuse every mapping (a `deny` permission rule and no `allow`).
    pub deny: bool,
    /// The HTTP port of the description and SOAP control URLs.
    pub http_port: u16,
}

impl Default for IgdOptions {
    fn default() -> Self {
        IgdOptions {
            upnp: true,
            pmp_pcp: true,
            deny: false,
            http_port: 5000,
        }
    }
}

/// The nftables table (family inet) holding miniupnpd's chains, and the chains' names.
const TABLE: &str = "filter";
const FORWARD_CHAIN: &str = "miniupnpd";
const PREROUTING_CHAIN: &str = "prerouting_miniupnpd";
const POSTROUTING_CHAIN: &str = "postrouting_miniupnpd";

/// A fixed UUID, so that descriptions and SSDP messages stay the same from run to run.
const UUID: &str = "b7c0a5e1-6d2f-4a3b-9c1e-0b0770000001";

/// NAT-PMP and PCP's server port (RFC 6886, RFC 6887).
const PMP_PORT: u16 = 5351;

/// miniupnpd's configuration file for these options.
fn config(
    wan_if: &str,
    lan_if: &str,
    lan_cidr: &str,
    stun: SocketAddr,
    opts: &IgdOptions,
) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut c = format!(
        "ext_ifname={wan_if}\n\
         listening_ip={lan_if}\n\
         http_port={}\n\
         enable_upnp={}\n\
         enable_natpmp={}\n\
         ipv6_disable=yes\n\
         secure_mode=yes\n\
         ext_perform_stun=yes\n\
         ext_stun_host={}\n\
         ext_stun_port={}\n\
         upnp_table_name={TABLE}\n\
         upnp_nat_table_name={TABLE}\n\
         upnp_forward_chain={FORWARD_CHAIN}\n\
         upnp_nat_chain={PREROUTING_CHAIN}\n\
         upnp_nat_postrouting_chain={POSTROUTING_CHAIN}\n\
         uuid={UUID}\n\
         friendly_name=burrow lab router\n\
         serial=1\n\
         model_number=1\n\
         system_uptime=no\n\
         min_lifetime=120\n\
         max_lifetime=86400\n",
        opts.http_port,
        yes(opts.upnp),
        yes(opts.pmp_pcp),
        stun.ip(),
        stun.port(),
    );
    if !opts.deny {
        let _ = writeln!(c, "allow 1024-65535 {lan_cidr} 1024-65535");
    }
    c.push_str("deny 0-65535 0.0.0.0/0 0-65535\n");
    c
}

/// The table and chains miniupnpd fills (the package's nft_init.sh cannot run: the script it
/// sources is missing). DNAT goes in a nat prerouting chain, the matching accept in the
/// forward filter (which drops anything else unsolicited from outside), and its postrouting
/// chain runs just before the router's own masquerade (priority 100), so its rules win.
fn chains(lan_if: &str) -> String {
    format!(
        "table inet {TABLE} {{\n\
         \x20chain forward {{\n\
         \x20 type filter hook forward priority 0; policy drop;\n\
         \x20 ct state established,related accept\n\
         \x20 iifname \"{lan_if}\" accept\n\
         \x20 jump {FORWARD_CHAIN}\n\
         \x20}}\n\
         \x20chain {FORWARD_CHAIN} {{\n }}\n\
         \x20chain prerouting {{\n\
         \x20 type nat hook prerouting priority -100; policy accept;\n\
         \x20 jump {PREROUTING_CHAIN}\n\
         \x20}}\n\
         \x20chain postrouting {{\n\
         \x20 type nat hook postrouting priority 99; policy accept;\n\
         \x20 jump {POSTROUTING_CHAIN}\n\
         \x20}}\n\
         \x20chain {PREROUTING_CHAIN} {{\n }}\n\
         \x20chain {POSTROUTING_CHAIN} {{\n }}\n\
         }}\n"
    )
}

/// A home router's own rules for running miniupnpd: masquerade of the LAN's packets out of
/// `wan_if` (fully-random for a hard NAT; only the LAN's, or the router's own STUN query gets a
/// random port and miniupnpd concludes it sits behind a symmetric NAT), nothing unsolicited to the router itself except from the LAN (HTTP, SSDP,
/// NAT-PMP/PCP) and from the STUN server's addresses (miniupnpd's RFC 5780 test needs the
/// answers from the other address and port, or it decides the firewall filters and disables
/// forwarding).
pub(crate) fn router_rules(
    wan_if: &str,
    lan_if: &str,
    lan_cidr: &str,
    fully_random: bool,
    stun_addrs: &[SocketAddr],
) -> String {
    let ips: Vec<String> = stun_addrs.iter().map(|a| a.ip().to_string()).collect();
    let ports: Vec<String> = stun_addrs.iter().map(|a| a.port().to_string()).collect();
    format!(
        "table ip nat {{\n chain post {{\n  type nat hook postrouting priority 100;\n  ip saddr {lan_cidr} oifname \"{wan_if}\" masquerade{}\n }}\n}}\n\
         table ip guard {{\n chain input {{\n  type filter hook input priority 0; policy drop;\n  ct state established,related accept\n  iifname \"lo\" accept\n  iifname \"{lan_if}\" accept\n  iifname \"{wan_if}\" ip saddr {{ {} }} udp sport {{ {} }} accept\n }}\n}}\n",
        if fully_random { " fully-random" } else { "" },
        ips.join(", "),
        ports.join(", "),
    )
}

/// Loads nftables rules from text into `ns`.
fn nft(ns: &str, dir: &Path, name: &str, rules: &str) -> Result<()> {
    let f = dir.join(name);
    std::fs::write(&f, rules)?;
    sh(&["ip", "netns", "exec", ns, "nft", "-f", path_str(&f)?])?;
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("a non-UTF-8 path")
}

/// The log file of the miniupnpd running in `ns`.
pub(crate) fn miniupnpd_log(dir: &Path, ns: &str) -> PathBuf {
    dir.join(format!("miniupnpd-{ns}.log"))
}

/// Starts miniupnpd in `ns` (in the foreground, its log appended to `dir`'s) after writing its
/// configuration and (re)creating its nftables chains empty, then waits until it says port
/// forwarding is enabled (it first asks `stun`, an RFC 5780 server, for its external address:
/// the lab's 198.18.0.0/15 is reserved, which it refuses otherwise).
pub(crate) fn start_miniupnpd(
    ns: &str,
    wan_if: &str,
    lan_if: &str,
    lan_cidr: &str,
    stun: SocketAddr,
    dir: &Path,
    opts: &IgdOptions,
) -> Result<Child> {
    spawn_miniupnpd(ns, wan_if, lan_if, lan_cidr, stun, dir, opts, true)
}

/// `start_miniupnpd`, optionally keeping the chains (and so the rules) a previous instance
/// left: what a daemon restart without a reboot looks like.
#[allow(clippy::too_many_arguments)]
fn spawn_miniupnpd(
    ns: &str,
    wan_if: &str,
    lan_if: &str,
    lan_cidr: &str,
    stun: SocketAddr,
    dir: &Path,
    opts: &IgdOptions,
    fresh_chains: bool,
) -> Result<Child> {
    let conf = dir.join(format!("miniupnpd-{ns}.conf"));
    std::fs::write(&conf, config(wan_if, lan_if, lan_cidr, stun, opts))?;
    if fresh_chains {
        // A fresh router: whatever an earlier instance left in its chains goes.
        let _ = sh(&[
            "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", TABLE,
        ]);
        nft(ns, dir, &format!("miniupnpd-{ns}.nft"), &chains(lan_if))?;
    }
    let log = miniupnpd_log(dir, ns);
    let marker = format!("=== miniupnpd start ({opts:?}, fresh chains: {fresh_chains})\n");
    {
        use std::io::Write;
        let mut f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)?;
        f.write_all(marker.as_bytes())?;
    }
    let pid = dir.join(format!("miniupnpd-{ns}.pid"));
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "miniupnpd", "-d", "-f"])
        .arg(&conf)
        .arg("-P")
        .arg(&pid)
        .stdin(Stdio::null())
        .stdout(std::fs::File::options().append(true).open(&log)?)
        .stderr(std::fs::File::options().append(true).open(&log)?)
        .spawn()
        .context("starting miniupnpd")?;
    let start = Instant::now();
    loop {
        let all = std::fs::read_to_string(&log).unwrap_or_default();
        let text = all.rsplit(&marker).next().unwrap_or_default();
        if text.contains("Port forwarding is now enabled")
            || text.contains("Port forwarding is enabled")
        {
            return Ok(child);
        }
        let failed = ["Port forwarding is now disabled", "impossible", "EXITING"]
            .iter()
            .any(|s| text.contains(s));
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if failed || exited || start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("miniupnpd in {ns} did not enable port forwarding:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops miniupnpd as an init system would (SIGTERM, then SIGKILL after 5 s).
pub(crate) fn stop_miniupnpd(child: &mut Child) -> Result<()> {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return Ok(());
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// A router reboot: stops miniupnpd and starts it again with fresh (empty) chains, so every
/// mapping is gone.
#[allow(clippy::too_many_arguments)]
pub(crate) fn restart_miniupnpd(
    child: &mut Child,
    ns: &str,
    wan_if: &str,
    lan_if: &str,
    lan_cidr: &str,
    stun: SocketAddr,
    dir: &Path,
    opts: &IgdOptions,
) -> Result<()> {
    stop_miniupnpd(child)?;
    *child = start_miniupnpd(ns, wan_if, lan_if, lan_cidr, stun, dir, opts)?;
    Ok(())
}

/// A UDP tool for what no Debian client does (PCP requests, probing a mapping), run inside a
/// namespace as `xtask igd-udp`. With `to`: sends `hex` from `bind` and prints the answer
/// ("reply from ADDR HEX") or "timeout". Without: prints the first datagram received on `bind`
/// ("from ADDR HEX").
pub fn udp_tool(to: Option<SocketAddr>, bind: SocketAddr, hex: &str, wait_ms: u64) -> Result<()> {
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(Duration::from_millis(wait_ms)))?;
    if let Some(to) = to {
        sock.send_to(&from_hex(hex)?, to)?;
    }
    let mut buf = [0u8; 1500];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => println!(
            "{}from {from} {}",
            if to.is_some() { "reply " } else { "" },
            to_hex(&buf[..n])
        ),
        Err(_) => println!("timeout"),
    }
    Ok(())
}

fn from_hex(s: &str) -> Result<Vec<u8>> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    if s.len() % 2 != 0 {
        bail!("odd hex length");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("hex"))
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// A PCP MAP request (RFC 6887 §11.1) from `client` for `proto` `port` (suggesting the same
/// external port), with a fixed nonce so that captures are reproducible.
fn pcp_map(client: Ipv4Addr, lifetime: u32, proto: u8, port: u16, nonce: u8) -> Vec<u8> {
    let mut v = vec![2, 1, 0, 0];
    v.extend_from_slice(&lifetime.to_be_bytes());
    v.extend_from_slice(&client.to_ipv6_mapped().octets());
    v.extend_from_slice(&[nonce; 12]);
    v.extend_from_slice(&[proto, 0, 0, 0]);
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
    v
}

/// A PCP ANNOUNCE request (RFC 6887 §14.1).
fn pcp_announce(client: Ipv4Addr) -> Vec<u8> {
    let mut v = vec![2, 0, 0, 0, 0, 0, 0, 0];
    v.extend_from_slice(&client.to_ipv6_mapped().octets());
    v
}

/// The capture topology: internet (STUN with an alternate address), a hard-NAT router running
/// miniupnpd, a LAN client. Removed when dropped.
struct Topo {
    _lab: Lab,
    inet: String,
    router: String,
    client: String,
    wan_if: String,
    lan_if: String,
    client_if: String,
    stun: SocketAddr,
    dir: PathBuf,
}

const LAN_CIDR: &str = "192.168.1.0/24";
const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const ROUTER_WAN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

impl Topo {
    fn build(burrow: &Path, dir: &Path) -> Result<Topo> {
        let id = std::process::id();
        let mut lab = Lab::new(&format!("bigdlab{id}-"), dir);
        let inet = lab.add_ns("inet")?;
        let router = lab.add_ns("router")?;
        let client = lab.add_ns("client")?;
        let (_, wan_if) = lab.link(&inet, "198.18.1.1/24", &router, "198.18.1.2/24", "wan")?;
        let (lan_if, client_if) =
            lab.link(&router, "192.168.1.1/24", &client, "192.168.1.2/24", "lan")?;
        // The STUN server's alternate address (RFC 5780 needs a second IP).
        sh(&[
            "ip",
            "-n",
            &inet,
            "addr",
            "add",
            "198.18.2.1/32",
            "dev",
            "lo",
        ])?;
        sh(&[
            "ip",
            "-n",
            &router,
            "route",
            "add",
            "default",
            "via",
            "198.18.1.1",
        ])?;
        sh(&[
            "ip",
            "-n",
            &client,
            "route",
            "add",
            "default",
            "via",
            "192.168.1.1",
        ])?;
        let stun: SocketAddr = "198.18.1.1:3478".parse()?;
        let alt: SocketAddr = "198.18.2.1:3479".parse()?;
        lab.start(
            "stun",
            &inet,
            burrow,
            &[
                "stun",
                "--listen",
                &stun.to_string(),
                "--alt",
                &alt.to_string(),
            ],
        )?;
        nft(
            &router,
            dir,
            "router.nft",
            &router_rules(&wan_if, &lan_if, LAN_CIDR, true, &[stun, alt]),
        )?;
        Ok(Topo {
            _lab: lab,
            inet,
            router,
            client,
            wan_if,
            lan_if,
            client_if,
            stun,
            dir: dir.to_path_buf(),
        })
    }

    fn start(&self, opts: &IgdOptions) -> Result<Daemon> {
        let started = Instant::now();
        let child = start_miniupnpd(
            &self.router,
            &self.wan_if,
            &self.lan_if,
            LAN_CIDR,
            self.stun,
            &self.dir,
            opts,
        )?;
        Ok(Daemon {
            child,
            took: started.elapsed(),
        })
    }

    fn restart(&self, d: &mut Daemon, opts: &IgdOptions) -> Result<()> {
        let started = Instant::now();
        restart_miniupnpd(
            &mut d.child,
            &self.router,
            &self.wan_if,
            &self.lan_if,
            LAN_CIDR,
            self.stun,
            &self.dir,
            opts,
        )?;
        d.took = started.elapsed();
        Ok(())
    }

    /// Runs a command in the client namespace; its output (stdout and stderr), whatever the
    /// exit status (upnpc reports refusals with a non-zero one).
    fn client_run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client])
            .args(args)
            .output()
            .with_context(|| format!("running {args:?}"))?;
        Ok(format!(
            "$ {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// Sends raw bytes from the client to the router's NAT-PMP/PCP port (`xtask igd-udp`).
    fn client_udp(&self, bytes: &[u8]) -> Result<String> {
        self.client_udp_wait(bytes, 1500)
    }

    fn client_udp_wait(&self, bytes: &[u8], wait_ms: u64) -> Result<String> {
        let me = std::env::current_exe()?;
        let to = format!("{ROUTER_LAN}:{PMP_PORT}");
        let hex = to_hex(bytes);
        let wait = wait_ms.to_string();
        self.client_run(&[
            path_str(&me)?,
            "igd-udp",
            "--to",
            &to,
            "--hex",
            &hex,
            "--wait-ms",
            &wait,
        ])
    }

    /// Whether a mapping works both ways: a datagram from the internet to the router's
    /// external `port` reaches the client's `port`, and one from the client's `port` leaves
    /// the router from external `port` (or which port it left from).
    fn probe(&self, port: u16) -> Result<String> {
        let me = std::env::current_exe()?;
        let me = path_str(&me)?;
        let spawn = |ns: &str, bind: &str| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    me,
                    "igd-udp",
                    "--bind",
                    bind,
                    "--wait-ms",
                    "3000",
                ])
                .stdout(Stdio::piped())
                .spawn()
        };
        let mut s = String::new();
        // In: internet → router's external port.
        let listener = spawn(&self.client, &format!("0.0.0.0:{port}"))?;
        std::thread::sleep(Duration::from_millis(300));
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.inet,
            me,
            "igd-udp",
            "--to",
            &format!("{ROUTER_WAN}:{port}"),
            "--hex",
            "696e",
            "--wait-ms",
            "10",
        ])?;
        let got = String::from_utf8_lossy(&listener.wait_with_output()?.stdout).into_owned();
        let _ = writeln!(
            s,
            "inbound to {ROUTER_WAN}:{port}: client got {}",
            got.trim()
        );
        // Out: client's port → internet; which external port does it leave from? (A new
        // destination port each time: no conntrack entry of an earlier probe applies.)
        static PROBES: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(9000);
        let dest = format!(
            "198.18.1.1:{}",
            PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let listener = spawn(&self.inet, &dest)?;
        std::thread::sleep(Duration::from_millis(300));
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.client,
            me,
            "igd-udp",
            "--bind",
            &format!("0.0.0.0:{port}"),
            "--to",
            &dest,
            "--hex",
            "6f7574",
            "--wait-ms",
            "10",
        ])?;
        let got = String::from_utf8_lossy(&listener.wait_with_output()?.stdout).into_owned();
        let _ = writeln!(
            s,
            "outbound from client port {port}: internet got {}",
            got.trim()
        );
        Ok(s)
    }

    fn nft_list(&self) -> String {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.router,
            "nft",
            "list",
            "table",
            "inet",
            TABLE,
        ])
        .unwrap_or_else(|e| format!("(no table: {e})"))
    }
}

/// A running miniupnpd, killed when dropped.
struct Daemon {
    child: Child,
    /// How long the last start took (until forwarding was enabled).
    took: Duration,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tcpdump on the router's LAN interface into a pcap (IPv4 only: no IPv6 noise).
struct Capture {
    child: Child,
    pcap: PathBuf,
}

impl Capture {
    fn start(ns: &str, iface: &str, pcap: &Path) -> Result<Capture> {
        let err = pcap.with_extension("tcpdump.log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "--immediate-mode",
                "-i",
                iface,
                "-U",
                "-s",
                "0",
                "-w",
            ])
            .arg(pcap)
            .arg("ip")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err)?)
            .spawn()?;
        let ready = crate::lab::wait(Duration::from_secs(10), || {
            std::fs::read_to_string(&err).is_ok_and(|s| s.contains("listening on"))
        });
        let mut c = Capture {
            child,
            pcap: pcap.to_path_buf(),
        };
        if ready.is_none() {
            c.stop();
            bail!(
                "tcpdump did not start: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        Ok(c)
    }

    fn stop(&mut self) {
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One UDP payload or one direction of a TCP stream, from a pcap.
struct Payload {
    frame: u32,
    src: String,
    sport: u16,
    dst: String,
    dport: u16,
    bytes: Vec<u8>,
}

/// The UDP payloads in a pcap (not those quoted inside ICMP errors).
fn udp_payloads(pcap: &Path) -> Result<Vec<Payload>> {
    let out = sh(&[
        "tshark",
        "-r",
        path_str(pcap)?,
        "-Y",
        "udp && !icmp",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-e",
        "frame.number",
        "-e",
        "ip.src",
        "-e",
        "udp.srcport",
        "-e",
        "ip.dst",
        "-e",
        "udp.dstport",
        "-e",
        "udp.payload",
    ])?;
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() < 6 {
                bail!("unexpected tshark line {l:?}");
            }
            Ok(Payload {
                frame: f[0].parse()?,
                src: f[1].into(),
                sport: f[2].parse()?,
                dst: f[3].into(),
                dport: f[4].parse()?,
                bytes: from_hex(f[5])?,
            })
        })
        .collect()
}

/// The TCP streams in a pcap: (client → server bytes, server → client bytes) per stream.
fn tcp_streams(pcap: &Path, server_port: u16) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let out = sh(&[
        "tshark",
        "-r",
        path_str(pcap)?,
        "-Y",
        "tcp.len > 0",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-e",
        "tcp.stream",
        "-e",
        "tcp.srcport",
        "-e",
        "tcp.payload",
    ])?;
    let mut streams: BTreeMap<u32, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
    for l in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() < 3 {
            bail!("unexpected tshark line {l:?}");
        }
        let e = streams.entry(f[0].parse()?).or_default();
        let bytes = from_hex(f[2])?;
        if f[1].parse::<u16>()? == server_port {
            e.1.extend(bytes);
        } else {
            e.0.extend(bytes);
        }
    }
    Ok(streams.into_values().collect())
}

/// Whether tshark dissects a pcap without a malformed packet; its verdict for the README.
fn dissects_cleanly(pcap: &Path, http_port: u16) -> Result<(bool, String)> {
    let decode = format!("tcp.port=={http_port},http");
    let text = sh(&["tshark", "-r", path_str(pcap)?, "-d", &decode, "-V"])?;
    let malformed = text.lines().filter(|l| l.contains("Malformed")).count();
    let frames = sh(&["tshark", "-r", path_str(pcap)?])?.lines().count();
    Ok((
        malformed == 0,
        format!("{frames} frames, {malformed} lines mentioning \"Malformed\""),
    ))
}

/// Writes the fixtures found in one scenario's pcap; returns (file, what it is) for the README.
fn extract(
    pcap: &Path,
    scenario: &str,
    out: &Path,
    http_port: u16,
) -> Result<Vec<(String, String)>> {
    let mut files: Vec<(String, String)> = Vec::new();
    // Writes a fixture; the first of a name wins (upnpc repeats itself: every run fetches the
    // description and asks for the external address again).
    let save = |files: &mut Vec<(String, String)>,
                name: String,
                what: String,
                bytes: &[u8]|
     -> Result<()> {
        if !files.iter().any(|(f, _)| *f == name) {
            std::fs::write(out.join(&name), bytes)?;
            files.push((name, what));
        }
        Ok(())
    };
    let tag = if scenario == "all" {
        String::new()
    } else {
        format!("-{scenario}")
    };

    // HTTP: one stream per request (miniupnpc closes the connection every time).
    for (req, resp) in tcp_streams(pcap, http_port)? {
        let head = String::from_utf8_lossy(&req).into_owned();
        let body = String::from_utf8_lossy(&resp).into_owned();
        // Past the first scenario only refusals are new (the rest repeats it).
        if !tag.is_empty() && !body.contains("<errorCode>") {
            continue;
        }
        let fault = body
            .split("<errorCode>")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .map(|c| format!("-fault-{c}"))
            .unwrap_or_default();
        if head.starts_with("GET ") {
            let path = head.split(' ').nth(1).unwrap_or("/");
            let what = path.trim_start_matches('/').trim_end_matches(".xml");
            let stem = format!("miniupnpd{tag}-{}", what.to_lowercase());
            save(
                &mut files,
                format!("{stem}.request.http"),
                format!("upnpc's GET {path}"),
                &req,
            )?;
            save(
                &mut files,
                format!("{stem}.response.http"),
                format!("miniupnpd's answer to GET {path}"),
                &resp,
            )?;
            if let Some(i) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
                save(
                    &mut files,
                    format!("{stem}.xml"),
                    format!("the body of {path}"),
                    &resp[i + 4..],
                )?;
            }
        } else if let Some(action) = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("soapaction:"))
            .and_then(|l| l.split('#').nth(1))
            .map(|a| {
                a.trim_matches(|c: char| c == '"' || c.is_whitespace())
                    .to_string()
            })
        {
            let stem = format!("miniupnpd{tag}-soap-{action}{fault}");
            save(
                &mut files,
                format!("{stem}.request.http"),
                format!("upnpc's SOAP {action} request"),
                &req,
            )?;
            let what = if fault.is_empty() {
                format!("miniupnpd's {action} response")
            } else {
                format!("miniupnpd's {action} fault (UPnP error {})", &fault[7..])
            };
            save(&mut files, format!("{stem}.response.http"), what, &resp)?;
        }
    }

    // UDP: SSDP, NAT-PMP, PCP.
    let mut seq = 0;
    for p in udp_payloads(pcap)? {
        let b = &p.bytes;
        let route = format!(
            "{}:{} → {}:{} (frame {})",
            p.src, p.sport, p.dst, p.dport, p.frame
        );
        if p.dport == 1900 || p.sport == 1900 {
            // One file per kind and search/notification type (the daemon repeats itself).
            let text = String::from_utf8_lossy(b);
            let header = |name: &str| {
                text.lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case(name)
                            .then(|| v.trim().to_string())
                    })
                    .unwrap_or_default()
            };
            let (kind, st) = if text.starts_with("M-SEARCH") {
                (format!("upnpc{tag}-ssdp-msearch"), header("ST"))
            } else if text.starts_with("NOTIFY") {
                let nts = header("NTS");
                let nts = nts.trim_start_matches("ssdp:");
                (format!("miniupnpd{tag}-ssdp-notify-{nts}"), header("NT"))
            } else {
                (format!("miniupnpd{tag}-ssdp-response"), header("ST"))
            };
            let slug = if st.starts_with("uuid:") {
                "uuid".to_string()
            } else {
                let parts: Vec<&str> = st.split(':').collect();
                match parts.as_slice() {
                    [.., a, b] if b.chars().all(|c| c.is_ascii_digit()) => format!("{a}-{b}"),
                    [.., b] => b.to_string(),
                    [] => "none".to_string(),
                }
            };
            let name = format!("{kind}-{slug}.txt");
            // The daemon's announcements are the same in every scenario but for the goodbyes.
            let repeat = !tag.is_empty() && !kind.contains("byebye");
            if !repeat {
                save(&mut files, name, format!("{route}, {st}"), b)?;
            }
        } else if p.dport == PMP_PORT || p.sport == PMP_PORT || p.dport == 5350 {
            seq += 1;
            let from_server = p.sport == PMP_PORT;
            let dir = if p.dport == 5350 {
                "announce"
            } else if from_server {
                "response"
            } else {
                "request"
            };
            let (proto, what) = match b.first() {
                Some(0) => ("natpmp", natpmp_what(b, from_server)),
                Some(2) => ("pcp", pcp_what(b)),
                Some(v) => ("unknown", format!("version-{v}")),
                None => ("unknown", "empty".to_string()),
            };
            save(
                &mut files,
                format!("{proto}{tag}-{seq:02}-{what}.{dir}.bin"),
                format!("{proto} {dir}: {what}, {route}"),
                b,
            )?;
        }
    }
    Ok(files)
}

fn natpmp_what(b: &[u8], response: bool) -> String {
    let op = b.get(1).copied().unwrap_or(0) & 0x7f;
    let name = match op {
        0 => "address".to_string(),
        1 | 2 => {
            let proto = if op == 1 { "udp" } else { "tcp" };
            let life = b
                .get(8..12)
                .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]))
                .unwrap_or(0);
            let life = if response {
                b.get(12..16)
                    .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]))
                    .unwrap_or(0)
            } else {
                life
            };
            if life == 0 {
                format!("unmap-{proto}")
            } else {
                format!("map-{proto}")
            }
        }
        n => format!("op{n}"),
    };
    match (response, b.get(2..4)) {
        (true, Some(r)) if r != [0, 0] => {
            format!("{name}-result-{}", u16::from_be_bytes([r[0], r[1]]))
        }
        _ => name,
    }
}

fn pcp_what(b: &[u8]) -> String {
    let op = b.get(1).copied().unwrap_or(0) & 0x7f;
    let life = b
        .get(4..8)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]))
        .unwrap_or(0);
    let name = match op {
        0 => "announce".to_string(),
        1 if life == 0 && b.get(3).is_none_or(|&r| r == 0) => "unmap".to_string(),
        1 => "map".to_string(),
        2 => "peer".to_string(),
        n => format!("op{n}"),
    };
    let response = b.get(1).is_some_and(|o| o & 0x80 != 0);
    match b.get(3) {
        Some(&r) if response && r != 0 => format!("{name}-result-{r}"),
        _ => name,
    }
}

/// What each scenario did, for the README and the report.
#[derive(Default)]
struct Notes {
    transcript: String,
    facts: Vec<String>,
}

impl Notes {
    fn log(&mut self, s: &str) {
        self.transcript.push_str(s);
        if !s.ends_with('\n') {
            self.transcript.push('\n');
        }
        print!("{s}");
        if !s.ends_with('\n') {
            println!();
        }
    }
}

/// Runs the capture: every scenario, fixtures and README.
pub fn capture(install: bool) -> Result<()> {
    if !is_root() {
        println!("SKIPPED igd-capture: needs root for network namespaces and nftables");
        return Ok(());
    }
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(p, _)| !have(p))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if !missing.is_empty() && install && !apt_install(&missing) {
        println!("xtask: apt-get install {} failed", missing.join(" "));
    }
    for (program, package) in TOOLS {
        if !have(program) {
            println!("SKIPPED igd-capture: needs {program} (package {package})");
            return Ok(());
        }
    }
    run_cmd(cargo().args(["build", "--quiet", "-p", "burrow"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let burrow = target.join("debug/burrow");
    let version = sh(&["miniupnpd", "--version"])?
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let package =
        sh(&["dpkg-query", "-W", "-f", "${Version}", "miniupnpd-nftables"]).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("burrow-igd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let out = root().join("protocol/portmap/tests/captures");
    std::fs::create_dir_all(&out)?;

    let topo = Topo::build(&burrow, &dir)?;
    let result = scenarios(&topo, &out);
    drop(topo);
    let (files, notes) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("igd-capture failed; logs kept in {}", dir.display());
            return Err(e);
        }
    };
    write_readme(&out, &version, &package, &files, &notes)?;
    if std::env::var_os("BURROW_LAB_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "igd-capture: {} files in {}",
        files.len() + 1,
        out.display()
    );
    Ok(())
}

type Files = Vec<(String, String)>;

fn scenarios(t: &Topo, out: &Path) -> Result<(Files, Notes)> {
    let mut notes = Notes::default();
    let mut files: Files = Vec::new();
    let all = IgdOptions::default();
    let http = all.http_port;
    let url = format!("http://{ROUTER_LAN}:{http}/rootDesc.xml");
    let client = CLIENT.to_string();
    let router = ROUTER_LAN.to_string();
    let upnpc = |args: &[&str]| -> Vec<String> {
        let mut v = vec!["upnpc".to_string(), "-u".into(), url.clone()];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    let run = |notes: &mut Notes, v: Vec<String>| -> Result<String> {
        let a: Vec<&str> = v.iter().map(String::as_str).collect();
        let o = t.client_run(&a)?;
        notes.log(&o);
        Ok(o)
    };
    let finish = |notes: &mut Notes, cap: &mut Capture, scenario: &str| -> Result<Files> {
        cap.stop();
        let pcap_name = format!("miniupnpd-{scenario}.pcap");
        std::fs::copy(&cap.pcap, out.join(&pcap_name))?;
        let (clean, verdict) = dissects_cleanly(&cap.pcap, http)?;
        notes.log(&format!("tshark on {pcap_name}: {verdict}"));
        if !clean {
            notes
                .facts
                .push(format!("tshark finds malformed packets in {pcap_name}"));
        }
        let mut f = vec![(
            pcap_name,
            format!("the {scenario} scenario on the router's LAN side; tshark: {verdict}"),
        )];
        f.extend(extract(&cap.pcap, scenario, out, http)?);
        Ok(f)
    };

    // 1. Everything on: SSDP, UPnP IGD, NAT-PMP, PCP.
    notes.log("== all: UPnP IGD, NAT-PMP and PCP, allow rule for the LAN");
    let mut cap = Capture::start(&t.router, &t.lan_if, &t.dir.join("all.pcap"))?;
    let mut d = t.start(&all)?;
    notes.log(&format!(
        "miniupnpd enabled forwarding {:.1} s after start",
        d.took.as_secs_f64()
    ));
    run(
        &mut notes,
        vec![
            "upnpc".into(),
            "-m".into(),
            t.client_if.clone(),
            "-s".into(),
        ],
    )?;
    run(&mut notes, upnpc(&["-s"]))?;
    run(
        &mut notes,
        upnpc(&["-a", &client, "41641", "41641", "UDP", "7200"]),
    )?;
    run(&mut notes, upnpc(&["-l"]))?;
    notes.log(&format!("nft after AddPortMapping:\n{}", t.nft_list()));
    notes.log(&t.probe(41641)?);
    // Same external port from another internal port: ConflictInMappingEntry expected.
    run(
        &mut notes,
        upnpc(&["-a", &client, "41642", "41641", "UDP", "7200"]),
    )?;
    // Another host's address: secure mode refuses.
    run(
        &mut notes,
        upnpc(&["-a", "192.168.1.3", "41643", "41643", "UDP", "7200"]),
    )?;
    run(&mut notes, upnpc(&["-d", "41641", "UDP"]))?;
    run(&mut notes, upnpc(&["-d", "41641", "UDP"]))?;
    run(
        &mut notes,
        vec!["natpmpc".into(), "-g".into(), router.clone()],
    )?;
    run(
        &mut notes,
        vec![
            "natpmpc".into(),
            "-g".into(),
            router.clone(),
            "-a".into(),
            "41641".into(),
            "41641".into(),
            "udp".into(),
            "7200".into(),
        ],
    )?;
    notes.log(&format!("nft after the NAT-PMP mapping:\n{}", t.nft_list()));
    notes.log(&t.probe(41641)?);
    run(
        &mut notes,
        vec![
            "natpmpc".into(),
            "-g".into(),
            router.clone(),
            "-a".into(),
            "41641".into(),
            "41641".into(),
            "udp".into(),
            "0".into(),
        ],
    )?;
    notes.log(&t.client_udp(&pcp_announce(CLIENT))?);
    notes.log(&t.client_udp(&pcp_map(CLIENT, 7200, 17, 41641, 0x11))?);
    notes.log(&format!("nft after the PCP mapping:\n{}", t.nft_list()));
    notes.log(&t.client_udp(&pcp_map(CLIENT, 0, 17, 41641, 0x11))?);
    // Another nonce for the same mapping: PCP says NOT_AUTHORIZED? (RFC 6887 §11.5).
    notes.log(&t.client_udp(&pcp_map(CLIENT, 7200, 17, 41644, 0x22))?);
    notes.log(&t.client_udp(&pcp_map(CLIENT, 7200, 17, 41644, 0x33))?);
    notes.log(&t.client_udp(&pcp_map(CLIENT, 0, 17, 41644, 0x22))?);
    // A NAT-PMP request with an unknown opcode, and a PCP request with a bad version.
    notes.log(&t.client_udp(&[0, 9])?);
    notes.log(&t.client_udp(&[3, 1, 0, 0])?);
    files.extend(finish(&mut notes, &mut cap, "all")?);

    // 2. Restart with a mapping in place: mappings gone, epoch reset.
    notes.log("== restart: a NAT-PMP mapping, then miniupnpd stopped (SIGTERM) and started again");
    let mut cap = Capture::start(&t.router, &t.lan_if, &t.dir.join("restart.pcap"))?;
    run(
        &mut notes,
        vec![
            "natpmpc".into(),
            "-g".into(),
            router.clone(),
            "-a".into(),
            "41641".into(),
            "41641".into(),
            "udp".into(),
            "7200".into(),
        ],
    )?;
    run(
        &mut notes,
        upnpc(&["-a", &client, "41650", "41650", "TCP", "7200"]),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    run(
        &mut notes,
        vec!["natpmpc".into(), "-g".into(), router.clone()],
    )?;
    stop_miniupnpd(&mut d.child)?;
    notes.log(&format!(
        "nft after miniupnpd stopped (SIGTERM):\n{}",
        t.nft_list()
    ));
    // A daemon restart that keeps the chains (no reboot).
    let started = Instant::now();
    d.child = spawn_miniupnpd(
        &t.router, &t.wan_if, &t.lan_if, LAN_CIDR, t.stun, &t.dir, &all, false,
    )?;
    notes.log(&format!(
        "miniupnpd (chains kept) enabled forwarding {:.1} s after the restart",
        started.elapsed().as_secs_f64()
    ));
    run(
        &mut notes,
        vec!["natpmpc".into(), "-g".into(), router.clone()],
    )?;
    run(&mut notes, upnpc(&["-l"]))?;
    notes.log(&format!(
        "nft after the restart keeping chains:\n{}",
        t.nft_list()
    ));
    notes.log(&t.probe(41641)?);
    // A reboot: chains recreated empty.
    t.restart(&mut d, &all)?;
    notes.log(&format!(
        "miniupnpd (fresh chains) enabled forwarding {:.1} s after the restart",
        d.took.as_secs_f64()
    ));
    run(
        &mut notes,
        vec!["natpmpc".into(), "-g".into(), router.clone()],
    )?;
    run(&mut notes, upnpc(&["-l"]))?;
    notes.log(&format!(
        "nft after the restart with fresh chains:\n{}",
        t.nft_list()
    ));
    notes.log(&t.probe(41641)?);
    files.extend(finish(&mut notes, &mut cap, "restart")?);
    stop_miniupnpd(&mut d.child)?;

    // 3. Everything denied.
    notes.log("== deny: a deny rule for everything");
    let deny = IgdOptions {
        deny: true,
        ..IgdOptions::default()
    };
    let mut cap = Capture::start(&t.router, &t.lan_if, &t.dir.join("deny.pcap"))?;
    t.restart(&mut d, &deny)?;
    run(
        &mut notes,
        upnpc(&["-a", &client, "41641", "41641", "UDP", "7200"]),
    )?;
    // miniupnpd 2.3.1 looks for another allowed external port before refusing a NAT-PMP or
    // PCP request, one nftables dump per port: about 85 s here, during which it answers
    // nothing. Raw requests (natpmpc would retransmit nine times meanwhile).
    let natpmp_map = [0u8, 1, 0, 0, 0xa2, 0xa9, 0xa2, 0xa9, 0, 0, 0x1c, 0x20];
    let started = Instant::now();
    notes.log(&t.client_udp_wait(&natpmp_map, 150_000)?);
    notes.log(&format!(
        "(NAT-PMP refusal after {:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    let started = Instant::now();
    notes.log(&t.client_udp_wait(&pcp_map(CLIENT, 7200, 17, 41641, 0x44), 150_000)?);
    notes.log(&format!(
        "(PCP refusal after {:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    files.extend(finish(&mut notes, &mut cap, "deny")?);
    stop_miniupnpd(&mut d.child)?;

    // 4. NAT-PMP/PCP only.
    notes.log("== pmp-pcp-only: enable_upnp=no");
    let pmp = IgdOptions {
        upnp: false,
        ..IgdOptions::default()
    };
    let mut cap = Capture::start(&t.router, &t.lan_if, &t.dir.join("pmp-pcp-only.pcap"))?;
    t.restart(&mut d, &pmp)?;
    run(&mut notes, upnpc(&["-s"]))?;
    run(
        &mut notes,
        vec!["natpmpc".into(), "-g".into(), router.clone()],
    )?;
    files.extend(finish(&mut notes, &mut cap, "pmp-pcp-only")?);
    stop_miniupnpd(&mut d.child)?;

    // 5. UPnP only.
    notes.log("== upnp-only: enable_natpmp=no");
    let upnp = IgdOptions {
        pmp_pcp: false,
        ..IgdOptions::default()
    };
    let mut cap = Capture::start(&t.router, &t.lan_if, &t.dir.join("upnp-only.pcap"))?;
    t.restart(&mut d, &upnp)?;
    run(&mut notes, upnpc(&["-s"]))?;
    run(
        &mut notes,
        vec!["natpmpc".into(), "-g".into(), router.clone()],
    )?;
    notes.log(&t.client_udp(&pcp_announce(CLIENT))?);
    files.extend(finish(&mut notes, &mut cap, "upnp-only")?);
    stop_miniupnpd(&mut d.child)?;
    let log = std::fs::read_to_string(miniupnpd_log(&t.dir, &t.router)).unwrap_or_default();
    notes.log(&format!("miniupnpd's log, every run:\n{}", squeeze(&log)));
    Ok((files, notes))
}

/// The README's account of the scenarios and of what they showed.
const SCENARIOS: &str = "
## Scenarios

Each has its pcap (`miniupnpd-SCENARIO.pcap`, capture started before the daemon, so its startup
SSDP NOTIFYs and PCP ANNOUNCE are in it); fixture names carry the scenario after `miniupnpd`,
`natpmp` or `pcp` except for `all`. NAT-PMP/PCP files are numbered in capture order.

- all: UPnP, NAT-PMP and PCP. `upnpc -m IF -s` (SSDP M-SEARCH and the answer), `upnpc -u URL
  -s`, `-a 192.168.1.2 41641 41641 UDP 7200`, `-l`, `-a 192.168.1.2 41642 41641 UDP 7200` (same
  host, another internal port: miniupnpd silently moves the mapping, no fault), `-a 192.168.1.3
  41643 41643 UDP 7200` (another host under secure_mode: fault 718 ConflictInMappingEntry),
  `-d 41641 UDP` twice (both answer success); `natpmpc -g 192.168.1.1`, `-a 41641 41641 udp
  7200`, `-a 41641 41641 udp 0`; PCP ANNOUNCE, MAP 41641 (nonce 11…), its delete, MAP 41644
  (nonce 22…), MAP 41644 again with nonce 33… (accepted: the mapping changes hands), delete with
  nonce 22… (result 2 NOT_AUTHORIZED); a NAT-PMP request with opcode 9 (result 5), a 4-byte
  request with version 3 (answered with version 0, result 3, in a 24-byte packet).
- restart: NAT-PMP and UPnP mappings, then SIGTERM (SSDP byebye sent; the nftables rules stay),
  a restart keeping the chains (epoch back to 0; the old rules still forward but miniupnpd does
  not list them: fault 713 at index 0), then a restart with fresh chains (mappings gone).
- deny: `deny 0-65535 0.0.0.0/0 0-65535` only. UPnP AddPortMapping: fault 606. NAT-PMP MAP and
  PCP MAP: result 2 (NOT_AUTHORIZED), but only after about 75 s each, during which miniupnpd
  answers nothing (it tries every external port against the permission rules).
- pmp-pcp-only: `enable_upnp=no`: HTTP port closed (RST), NAT-PMP answers.
- upnp-only: `enable_natpmp=no`: UDP 5351 closed (ICMP port unreachable), UPnP answers.
";

/// miniupnpd's debug log without its rule-cache chatter, runs of one line counted once.
fn squeeze(log: &str) -> String {
    let body = |l: &str| l.split_once("]: ").map_or(l, |(_, b)| b).to_string();
    let mut out: Vec<(String, usize)> = Vec::new();
    for l in log.lines().filter(|l| !l.contains("table_cb(")) {
        match out.last_mut() {
            Some((last, n)) if body(last) == body(l) => *n += 1,
            _ => out.push((l.to_string(), 1)),
        }
    }
    out.iter()
        .map(|(l, n)| {
            if *n > 1 {
                format!("{l}   (×{n})")
            } else {
                l.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn write_readme(
    out: &Path,
    version: &str,
    package: &str,
    files: &Files,
    notes: &Notes,
) -> Result<()> {
    let mut r = String::new();
    let _ = writeln!(r, "# Captures of a real miniupnpd\n");
    let _ = writeln!(
        r,
        "Exchanges with {version} (Debian package miniupnpd-nftables {package}) on a hard-NAT \
         router (nftables masquerade fully-random) in network namespaces, captured on the \
         router's LAN interface. Produced by `cargo xtask igd-capture` (root), which also \
         regenerates this file.\n"
    );
    let _ = writeln!(
        r,
        "Topology: client {CLIENT} — router LAN {ROUTER_LAN} (miniupnpd: HTTP {}, SSDP 1900, \
         NAT-PMP/PCP {PMP_PORT}) / WAN {ROUTER_WAN} — internet 198.18.1.1 running `burrow stun \
         --listen 198.18.1.1:3478 --alt 198.18.2.1:3479`, which miniupnpd asks for its external \
         address (`ext_perform_stun=yes`). Clients: upnpc (miniupnpc) with `-u \
         http://{ROUTER_LAN}:5000/rootDesc.xml`, natpmpc (libnatpmp), and PCP requests built by \
         the xtask (no PCP client is packaged in Debian), sent with fixed nonces.\n",
        IgdOptions::default().http_port
    );
    let _ = writeln!(r, "`.http` files are one direction of one TCP connection, byte for byte; `.bin` files are one UDP payload; `.txt` files are SSDP datagrams.\n");
    let _ = writeln!(r, "| file | what |\n| --- | --- |");
    let mut sorted = files.clone();
    sorted.sort();
    for (f, w) in &sorted {
        let _ = writeln!(r, "| {f} | {w} |");
    }
    if !notes.facts.is_empty() {
        let _ = writeln!(r, "\n## Notes\n");
        for f in &notes.facts {
            let _ = writeln!(r, "- {f}");
        }
    }
    r.push_str(SCENARIOS);
    let _ = writeln!(
        r,
        "\ntranscript.txt: every command run, its output, miniupnpd's logs and the router's \
         nftables table after each step."
    );
    std::fs::write(out.join("README.md"), r)?;
    std::fs::write(out.join("transcript.txt"), &notes.transcript)?;
    Ok(())
}
