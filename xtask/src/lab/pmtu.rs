//! The lab's path MTU checks (issue 18), on easy1~easy2's direct IPv4 path (TUN MTU 1,440 from
//! the nodes' 1,500-byte links):
//! 1. full-size packets with Don't Fragment cross the tunnel;
//! 2. `ip link set mtu 1400` on easy2's router's internet link: larger frames arriving there
//!    are dropped without a word, so the path has a black hole toward easy2. (veth lets a
//!    VLAN tag's 4 bytes through above the MTU: IP packets of up to 1,404 bytes pass.) easy1's
//!    node finds it from the unanswered data and settles at 1,344 (1,404 less 28 bytes of IP
//!    and UDP, less WireGuard's 32, in 16-byte steps) within seconds; the next oversized ping
//!    gets "too big" from burrow's ICMP, a ping that fits crosses, TCP carries on;
//! 3. the MTU back at 1,500 and instead an nftables rule on the same router dropping UDP
//!    packets over 1,380 bytes: the same, settling at 1,312.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{ping, sh, wait, Lab};

/// What the checks need of the built lab.
pub(crate) struct PmtuLab<'a> {
    pub(crate) lab: &'a mut Lab,
    pub(crate) burrow: &'a Path,
    /// Site name → (node namespace, tailnet address, router namespace).
    pub(crate) nodes: &'a BTreeMap<&'static str, (String, String, String)>,
    pub(crate) dir: &'a Path,
}

/// The tunnel MTU easy1's node reports for `peer` (`burrow status --json`).
fn status_mtu(burrow: &Path, ns: &str, sock: &Path, peer: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(burrow)
        .args(["status", "--json", "--socket"])
        .arg(sock)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["peers"].as_array()?.iter().find(|p| p["name"] == peer)?["mtu"].as_u64()
}

/// `burrow doctor PEER` as the node at `ns` prints it (what a failed check shows).
fn doctor(burrow: &Path, ns: &str, sock: &Path, peer: &str) -> String {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(burrow)
        .args(["doctor", peer, "--socket"])
        .arg(sock)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| e.to_string())
}

/// A ping of `size` bytes of payload with Don't Fragment: whether it was answered, and what
/// ping printed.
fn df_ping(ns: &str, addr: &str, size: usize) -> (bool, String) {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-M", "do", "-s",
        ])
        .arg(size.to_string())
        .arg(addr)
        .output();
    match out {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// The router's interface toward the internet namespace (its default route's).
fn wan_interface(router: &str) -> Result<String> {
    let r = sh(&["ip", "-n", router, "route", "show", "default"])?;
    r.split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .map(String::from)
        .context("the router has no default route")
}

pub(crate) fn checks(l: PmtuLab<'_>, failures: &mut Vec<String>) -> Result<()> {
    let (a, b) = ("easy1", "easy2");
    let (ns_a, _, _) = l.nodes[a].clone();
    let (_, addr_b, router_b) = l.nodes[b].clone();
    let sock = l.dir.join(a).join("burrow.sock");
    let mtu = || status_mtu(l.burrow, &ns_a, &sock, b);
    println!();
    // 1. The whole tunnel MTU: 1,440-byte packets (1,412 bytes of ICMP payload).
    let full = wait(Duration::from_secs(20), || {
        df_ping(&ns_a, &addr_b, 1412).0 && mtu() == Some(1440)
    });
    println!(
        "path MTU {a}~{b}: 1,440-byte packets with DF {}",
        full.map_or("did NOT cross".into(), |d| format!(
            "cross (tunnel MTU 1440) after {:.1} s",
            d.as_secs_f64()
        ))
    );
    if full.is_none() {
        failures.push(format!(
            "path MTU: 1,440-byte DF packets do not cross {a}~{b} (mtu {:?})",
            mtu()
        ));
        return Ok(());
    }
    let wan = wan_interface(&router_b)?;
    // 2. A smaller link: a black hole toward easy2 for frames over 1,400 bytes.
    sh(&["ip", "-n", &router_b, "link", "set", &wan, "mtu", "1400"])?;
    let found = settle(&ns_a, &addr_b, &mtu, 1344);
    if found.is_none() {
        println!("{}", doctor(l.burrow, &ns_a, &sock, b));
    }
    report(
        "router link MTU 1400",
        found,
        &ns_a,
        &addr_b,
        1344,
        failures,
    );
    // TCP through the smaller path: its segments shrink to what burrow's ICMP named.
    if crate::util::have("iperf3") {
        let ns_b = &l.nodes[b].0;
        l.lab
            .start(
                "iperf3-pmtu",
                ns_b,
                Path::new("iperf3"),
                &["-s", "-1", "--forceflush"],
            )
            .ok();
        std::thread::sleep(Duration::from_millis(300));
        match super::ipv6::iperf(&ns_a, &addr_b, 2) {
            Ok(mbps) if mbps > 1.0 => {
                println!("path MTU, router link MTU 1400: iperf3 {a} → {b} {mbps:.0} Mbit/s")
            }
            other => failures.push(format!(
                "path MTU: TCP through the 1,400-byte link: {other:?}"
            )),
        }
    } else {
        println!("SKIPPED path MTU TCP check: needs iperf3 (package iperf3)");
    }
    sh(&["ip", "-n", &router_b, "link", "set", &wan, "mtu", "1500"])?;
    // 3. Large UDP dropped by nftables on the same router.
    let rule = format!(
        "ip netns exec {router_b} nft add table inet pmtu; \
         ip netns exec {router_b} nft add chain inet pmtu mtu_drop '{{ type filter hook forward priority -10; }}'; \
         ip netns exec {router_b} nft add rule inet pmtu mtu_drop meta l4proto udp ip length gt 1380 drop"
    );
    sh(&["bash", "-c", &rule])?;
    let found = settle(&ns_a, &addr_b, &mtu, 1312);
    if found.is_none() {
        println!("{}", doctor(l.burrow, &ns_a, &sock, b));
    }
    report(
        "nftables drops UDP over 1380 bytes",
        found,
        &ns_a,
        &addr_b,
        1312,
        failures,
    );
    sh(&[
        "ip", "netns", "exec", &router_b, "nft", "delete", "table", "inet", "pmtu",
    ])?;
    Ok(())
}

/// Keeps large DF pings going (the tunnel's full size, and one that fits 1,344 for a host
/// that already learned that) until the node reports `want`: how long that took.
fn settle(ns: &str, addr: &str, mtu: &dyn Fn() -> Option<u64>, want: u64) -> Option<Duration> {
    wait(Duration::from_secs(30), || {
        df_ping(ns, addr, 1412);
        df_ping(ns, addr, 1316);
        mtu() == Some(want)
    })
}

/// Prints and checks one case: the time to the new MTU `want`, a DF ping one byte over it
/// refused with burrow's "too big" (ping shows the MTU it names), and one that fits answered.
///
/// The oversized ping is the smallest one that does not fit: while the search ran, the host may
/// have been told a larger interim size and keeps that for 10 minutes, so a bigger ping could be
/// refused by the host itself, naming the interim size, without ever reaching burrow.
fn report(
    what: &str,
    found: Option<Duration>,
    ns: &str,
    addr: &str,
    want: u64,
    failures: &mut Vec<String>,
) {
    let fits = want as usize - 28;
    let big = fits + 1;
    let (big_ok, big_out) = df_ping(ns, addr, big);
    let told =
        big_out.contains(&format!("mtu = {want}")) || big_out.contains(&format!("mtu={want}"));
    let small_ok = (0..3).any(|_| df_ping(ns, addr, fits).0);
    let plain = ping(ns, addr);
    println!(
        "path MTU, {what}: tunnel MTU {want} after {}; {}-byte DF ping {}; {}-byte ping {}; small ping {}",
        found.map_or("NEVER".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        big + 28,
        if told { "told \"too big\"" } else if big_ok { "answered (?)" } else { "lost" },
        want,
        if small_ok { "answered" } else { "LOST" },
        if plain { "answered" } else { "LOST" },
    );
    if found.is_none() || !told || !small_ok || !plain {
        failures.push(format!(
            "path MTU, {what}: settled {found:?}, told {told}, fitting ping {small_ok}, small ping {plain}: {}",
            big_out.trim()
        ));
    }
}
