//! The lab's IPv6: each site (but the double NAT's) has a /64 of the documentation prefix
//! 2001:db8::/32 routed from the internet namespace, behind an nftables `ip6` stateful
//! firewall on its router (established and related in, new inbound dropped; no NAT66). The
//! node's own address comes in the IPv6 checks, mid-run, as an address a host gains; the
//! IPv6-only site has one from the start and no IPv4 at all.
//!
//! The checks: hard1~hard2 (no IPv4 path without hard1's port mapping) and a UDP-blocked IPv4
//! site ~ easy1 go direct over IPv6; ping and iperf3 over the tailnet's IPv6 (ULA) addresses
//! beside its IPv4 ones; `burrow netcheck` reports IPv6; an address withdrawn mid-run sends
//! the pair back to IPv4 direct or DERP and it comes back when the address does; the IPv6-only
//! site reaches an IPv4-only one through DERP.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{ping, route_in_log, sh, wait, Lab};

/// A site whose node gets its IPv6 address in the checks.
#[derive(Debug, Clone)]
pub(crate) struct SiteV6 {
    /// The node's namespace.
    pub(crate) ns: String,
    /// Its LAN interface.
    pub(crate) dev: String,
    /// The site's number (its prefix is 2001:db8:S::/64).
    pub(crate) s: usize,
}

/// The internet namespace's address on site `s`'s link.
pub(crate) fn inet_addr(s: usize) -> String {
    format!("2001:db8:0:{s}::1")
}

/// Site `s`'s router on that link.
pub(crate) fn router_wan_addr(s: usize) -> String {
    format!("2001:db8:0:{s}::2")
}

/// Site `s`'s router on its LAN.
pub(crate) fn lan_gateway(s: usize) -> String {
    format!("2001:db8:{s}::1")
}

/// Site `s`'s node.
pub(crate) fn node_addr(s: usize) -> String {
    format!("2001:db8:{s}::2")
}

/// Adds an IPv6 address without duplicate address detection (usable at once).
pub(crate) fn add_address(ns: &str, dev: &str, cidr: &str) -> Result<()> {
    sh(&[
        "ip", "-n", ns, "-6", "addr", "add", cidr, "dev", dev, "nodad",
    ])?;
    Ok(())
}

/// The node's default IPv6 route through its router.
pub(crate) fn default_route(ns: &str, s: usize) -> Result<()> {
    sh(&[
        "ip",
        "-n",
        ns,
        "-6",
        "route",
        "replace",
        "default",
        "via",
        &lan_gateway(s),
    ])?;
    Ok(())
}

/// Site `s`'s IPv6 on the internet side: addresses on the link (unless the link was made with
/// them), routes both ways, and the router's stateful firewall.
#[allow(clippy::too_many_arguments)]
pub(crate) fn wan(
    inet: &str,
    inet_if: &str,
    router: &str,
    wan_if: &str,
    s: usize,
    add_addresses: bool,
    dir: &Path,
) -> Result<()> {
    if add_addresses {
        add_address(inet, inet_if, &format!("{}/64", inet_addr(s)))?;
        add_address(router, wan_if, &format!("{}/64", router_wan_addr(s)))?;
    }
    sh(&[
        "ip",
        "-n",
        router,
        "-6",
        "route",
        "replace",
        "default",
        "via",
        &inet_addr(s),
    ])?;
    sh(&[
        "ip",
        "-n",
        inet,
        "-6",
        "route",
        "replace",
        &format!("2001:db8:{s}::/64"),
        "via",
        &router_wan_addr(s),
    ])?;
    // The home router's IPv6 firewall: what went out may come back, ICMPv6 errors about it
    // too (packet too big, unreachable), nothing new comes in.
    let rules = format!(
        "table ip6 burrow_fw6 {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ct state established,related accept\n  iifname \"{wan_if}\" drop\n }}\n}}\n"
    );
    let f = dir.join(format!("{router}-fw6.nft"));
    std::fs::write(&f, rules)?;
    sh(&[
        "ip",
        "netns",
        "exec",
        router,
        "nft",
        "-f",
        f.to_str().context("path")?,
    ])?;
    Ok(())
}

/// The node's global IPv6 address on its site, added (the host gained it) or removed.
pub(crate) fn set_node_address(v: &SiteV6, present: bool) -> Result<()> {
    let cidr = format!("{}/64", node_addr(v.s));
    if present {
        add_address(&v.ns, &v.dev, &cidr)?;
        default_route(&v.ns, v.s)?;
    } else {
        sh(&["ip", "-n", &v.ns, "-6", "addr", "del", &cidr, "dev", &v.dev])?;
    }
    Ok(())
}

/// The tailnet IPv6 (ULA) address of the node in `ns`, from its TUN device.
pub(crate) fn tailnet_v6(ns: &str) -> Result<String> {
    let out = sh(&[
        "ip", "-n", ns, "-6", "-o", "addr", "show", "dev", "burrow0", "scope", "global",
    ])?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
        .context("no IPv6 address on burrow0")
}

fn ping6(ns: &str, addr: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-6", "-c", "1", "-W", "1", addr,
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// iperf3 from `from_ns` to `to` for `secs` seconds: megabits per second received (the lab's
/// IPv6 checks and the mesh benchmark).
pub(crate) fn iperf(from_ns: &str, to: &str, secs: u32) -> Result<f64> {
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        from_ns,
        "iperf3",
        "-c",
        to,
        "-t",
        &secs.to_string(),
        "--connect-timeout",
        "5000",
        "-J",
    ])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result")?;
    Ok(bps / 1e6)
}

/// Whether a route string (as the node logs it) is a direct IPv6 path.
fn direct_v6(route: &str) -> bool {
    route.starts_with("Direct([")
}

/// Everything the checks need from the built lab.
pub(crate) struct Ipv6Lab<'a> {
    pub(crate) lab: &'a mut Lab,
    pub(crate) burrow: &'a Path,
    /// Site → (namespace, tailnet IPv4 address, router namespace).
    pub(crate) nodes: &'a BTreeMap<&'static str, (String, String, String)>,
    pub(crate) v6: &'a BTreeMap<&'static str, SiteV6>,
    /// Each node's `burrow up` arguments (its STUN servers for netcheck).
    pub(crate) node_args: &'a BTreeMap<&'static str, Vec<String>>,
    pub(crate) pubkey: &'a dyn Fn(&str) -> Result<String>,
}

/// Runs the IPv6 checks; failures go to `failures`.
pub(crate) fn checks(x: Ipv6Lab<'_>, failures: &mut Vec<String>) -> Result<()> {
    let Ipv6Lab {
        lab,
        burrow,
        nodes,
        v6,
        node_args,
        pubkey,
    } = x;
    let sites = ["hard1", "hard2", "blocked", "easy1"];
    if sites.iter().any(|s| !v6.contains_key(s)) {
        println!("SKIPPED lab IPv6 checks: the lab has no IPv6 for {sites:?}");
        return Ok(());
    }
    for s in sites {
        set_node_address(&v6[s], true)?;
    }
    println!();
    println!(
        "{:<18} {:>14}  path (expected)",
        "IPv6 added", "direct over v6"
    );
    for (a, b) in [("hard1", "hard2"), ("blocked", "easy1")] {
        let key_b = pubkey(b)?;
        let (ns_a, _, _) = &nodes[a];
        let (_, addr_b, _) = &nodes[b];
        let went = wait(Duration::from_secs(30), || {
            ping(ns_a, addr_b);
            route_in_log(&lab.log(a), &key_b).is_some_and(|r| direct_v6(&r))
        });
        let route = route_in_log(&lab.log(a), &key_b).unwrap_or_else(|| "Relay".into());
        println!(
            "{:<18} {:>14}  {route} (direct over IPv6)",
            format!("{a}~{b}"),
            went.map_or("–".into(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
        if went.is_none() {
            failures.push(format!(
                "{a}~{b} with IPv6: expected direct over IPv6, got {route}"
            ));
        }
    }

    // Ping and iperf3 over the tailnet's IPv6 addresses as well as its IPv4 ones.
    let (ns_h1, v4_h2) = (&nodes["hard1"].0, &nodes["hard2"].1);
    let ula_h2 = tailnet_v6(&nodes["hard2"].0)?;
    let ok6 = wait(Duration::from_secs(10), || ping6(ns_h1, &ula_h2)).is_some();
    println!(
        "ping hard1 → hard2 over the tailnet's IPv6 ({ula_h2}): {}",
        if ok6 { "ok" } else { "FAILED" }
    );
    if !ok6 {
        failures.push(format!(
            "hard1 cannot ping hard2's tailnet IPv6 address {ula_h2}"
        ));
    }
    if crate::util::have("iperf3") {
        lab.start(
            "iperf3-hard2",
            &nodes["hard2"].0,
            Path::new("iperf3"),
            &["-s", "-1", "--forceflush"],
        )
        .ok();
        std::thread::sleep(Duration::from_millis(300));
        let v6_mbps = iperf(ns_h1, &ula_h2, 2);
        lab.start(
            "iperf3-hard2-v4",
            &nodes["hard2"].0,
            Path::new("iperf3"),
            &["-s", "-1", "--forceflush"],
        )
        .ok();
        std::thread::sleep(Duration::from_millis(300));
        let v4_mbps = iperf(ns_h1, v4_h2, 2);
        match (&v6_mbps, &v4_mbps) {
            (Ok(a), Ok(b)) => println!(
                "iperf3 hard1 → hard2 through the tunnel (direct over IPv6): {a:.0} Mbit/s to its tailnet IPv6 address, {b:.0} Mbit/s to its IPv4 one"
            ),
            _ => failures.push(format!(
                "iperf3 over the tailnet: IPv6 {v6_mbps:?}, IPv4 {v4_mbps:?}"
            )),
        }
    } else {
        println!("SKIPPED iperf3 over the tailnet: needs iperf3 (package iperf3)");
    }

    // netcheck reports IPv6 and the global address.
    let mut args = vec![
        "ip".to_string(),
        "netns".into(),
        "exec".into(),
        nodes["hard1"].0.clone(),
        burrow.display().to_string(),
        "netcheck".into(),
        "--json".into(),
        "--no-port-mapping".into(),
    ];
    for w in node_args["hard1"].windows(2) {
        if w[0] == "--stun" {
            args.extend(["--stun".to_string(), w[1].clone()]);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let want = node_addr(v6["hard1"].s);
    match sh(&args).and_then(|o| Ok(serde_json::from_str::<serde_json::Value>(&o)?)) {
        Ok(v) => {
            let global = v["global_v6"].as_str().unwrap_or("none").to_string();
            println!(
                "netcheck --json on hard1: ipv6 {}, global_v6 {global}",
                v["ipv6"]
            );
            if v["ipv6"] != serde_json::Value::Bool(true) || !global.contains(&want) {
                failures.push(format!(
                    "netcheck on hard1: expected ipv6 true and {want}, got ipv6 {} global_v6 {global}",
                    v["ipv6"]
                ));
            }
        }
        Err(e) => failures.push(format!("netcheck on hard1: {e:#}")),
    }

    // Withdrawn mid-run: hard1~hard2 leaves IPv6 (to IPv4 direct through hard1's mapping, or
    // DERP) and comes back when the address does.
    let key_h2 = pubkey("hard2")?;
    set_node_address(&v6["hard2"], false)?;
    let left = wait(Duration::from_secs(20), || {
        ping(ns_h1, v4_h2);
        route_in_log(&lab.log("hard1"), &key_h2).is_some_and(|r| !direct_v6(&r))
    });
    let route = route_in_log(&lab.log("hard1"), &key_h2).unwrap_or_else(|| "Relay".into());
    let still = ping(ns_h1, v4_h2) || ping(ns_h1, v4_h2);
    println!(
        "hard2's IPv6 address withdrawn: hard1 left IPv6 after {} for {route}; ping {}",
        left.map_or("NEVER".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        if still { "ok" } else { "FAILED" }
    );
    if left.is_none() || !still {
        failures.push(format!(
            "IPv6 withdrawn: hard1~hard2 did not fall back (route {route}, ping {still})"
        ));
    }
    set_node_address(&v6["hard2"], true)?;
    let back = wait(Duration::from_secs(45), || {
        ping(ns_h1, v4_h2);
        route_in_log(&lab.log("hard1"), &key_h2).is_some_and(|r| direct_v6(&r))
    });
    println!(
        "hard2's IPv6 address back: direct over IPv6 again after {}",
        back.map_or("NEVER".into(), |d| format!("{:.1} s", d.as_secs_f64()))
    );
    if back.is_none() {
        failures.push("IPv6 came back but hard1~hard2 did not return to it".into());
    }

    // The IPv6-only site ~ an IPv4-only one (easy2 never got IPv6): DERP, and it works.
    if let (Some((ns_v6, _, _)), Some((_, addr_e2, _))) = (nodes.get("v6only"), nodes.get("easy2"))
    {
        let key_e2 = pubkey("easy2")?;
        let first = wait(Duration::from_secs(20), || ping(ns_v6, addr_e2));
        let route = route_in_log(&lab.log("v6only"), &key_e2).unwrap_or_else(|| "Relay".into());
        println!(
            "v6only~easy2 (IPv6-only ~ IPv4-only): first ping after {}, path {route} (expected DERP)",
            first.map_or("NEVER".into(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
        if first.is_none() || route != "Relay" {
            failures.push(format!(
                "v6only~easy2: expected pings over DERP, got first ping {first:?}, path {route}"
            ));
        }
    }
    Ok(())
}
