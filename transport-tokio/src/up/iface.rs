//! The node's interface: the TUN device with its tailnet addresses and routes, this host's
//! own addresses (LAN and IPv6 candidates, watched for changes), and a loud warning about
//! plain-HTTP servers.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;

use crate::derp_client::DerpUrl;
use crate::node::NodeCommand;

/// Creates the TUN interface `name` with `addresses` and routes the tailnet through it, with
/// offloads if asked and the kernel agrees.
pub(crate) fn create_tun(
    name: &str,
    addresses: &[IpAddr],
    mtu: u16,
    offload: bool,
) -> Result<(Arc<tun_rs::AsyncDevice>, crate::tun::TunOffload)> {
    let v4 = addresses
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .context("the control server gave no IPv4 address")?;
    let (tun, offloads) = crate::tun::open_tun(name, mtu, offload)
        .with_context(|| format!("creating TUN {name} (needs root or CAP_NET_ADMIN)"))?;
    ip_cmd(&["address", "replace", &format!("{v4}/32"), "dev", name])?;
    ip_cmd(&["link", "set", "dev", name, "up"])?;
    let tun = Arc::new(tun);
    ip_cmd(&["route", "replace", "100.64.0.0/10", "dev", name])?;
    for a in addresses {
        if let IpAddr::V6(v6) = a {
            // The tailnet's ULA on the TUN (no duplicate detection: nobody else is on it) and
            // its /48 through it. A host without IPv6 goes on with the tailnet's IPv4 alone.
            let prefix = tailnet_v6_prefix(*v6);
            let added = ip_cmd(&[
                "-6",
                "address",
                "replace",
                &format!("{a}/128"),
                "dev",
                name,
                "nodad",
            ])
            .and_then(|()| ip_cmd(&["-6", "route", "replace", &prefix, "dev", name]));
            if let Err(e) = added {
                tracing::warn!(error = %e, address = %a, "no tailnet IPv6 on the TUN");
            }
        }
    }
    Ok((tun, offloads))
}

/// The tailnet's IPv6 prefix, routed through the TUN: the /48 the control server's ULA
/// addresses share.
fn tailnet_v6_prefix(address: Ipv6Addr) -> String {
    let s = address.segments();
    format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
}

/// The prefixes `create_tun` routes into the TUN for a node with `addresses`: the engine
/// takes no endpoint inside them (a path there would carry WireGuard inside itself).
pub(crate) fn tunnel_prefixes(addresses: &[IpAddr]) -> Vec<ipnet::IpNet> {
    let mut out: Vec<ipnet::IpNet> = vec!["100.64.0.0/10".parse().expect("a prefix")];
    for a in addresses {
        if let IpAddr::V6(v6) = a {
            if let Ok(p) = tailnet_v6_prefix(*v6).parse() {
                out.push(p);
            }
        }
    }
    out
}

fn ip_cmd(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Plain HTTP beyond loopback: whoever is on the path reads the node's secret and rewrites its
/// netmap (peers, filter, relay) or kicks it off its relay. Said loudly, once, at start.
pub(crate) fn warn_if_plain(what: &str, url: &str) {
    if is_plain_beyond_loopback(url) {
        tracing::warn!(url, "{what} over plain HTTP");
        eprintln!(
            "WARNING: the {what} {url} is plain HTTP: anyone on the path can read this node's \
             secret and rewrite what it is told. Use https:// (with --tls-ca for a private CA)."
        );
    }
}

/// Whether `url` is plain HTTP to anything but loopback.
fn is_plain_beyond_loopback(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

/// This host's interface addresses with the node's port: IPv4 ones but loopback, and global
/// IPv6 ones when the socket carries IPv6 (see [`candidate_ips`]); never the tailnet's own.
pub(crate) fn local_addresses(port: u16, ours: &[IpAddr], ipv6: bool) -> Vec<SocketAddr> {
    try_local_addresses(port, ours, ipv6).unwrap_or_default()
}

/// [`local_addresses`], or the error listing the interfaces failed with (so a watcher keeps
/// what it had rather than withdraw every address on a failed look).
fn try_local_addresses(port: u16, ours: &[IpAddr], ipv6: bool) -> io::Result<Vec<SocketAddr>> {
    let gone = std::fs::read_to_string("/proc/net/if_inet6")
        .map(|t| unusable_v6(&t))
        .unwrap_or_default();
    let host: Vec<HostAddr> = if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| {
            let ip = i.ip();
            let usable = !matches!(ip, IpAddr::V6(v6) if gone.contains(&v6))
                && !is_tunnel(&link_type(&i.name));
            HostAddr { ip, usable }
        })
        .collect();
    Ok(candidate_ips(&host, ours, ipv6)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// The link type of interface `name` (`/sys/class/net/NAME/type`, an ARPHRD_* number), if
/// it can be read.
fn link_type(name: &str) -> Option<u16> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/type"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The MTU of the interface this host's traffic leaves by: the IPv4 default route's, else the
/// IPv6 one's, else the largest of the interfaces with a link layer; 1500 when none can be
/// read. The top of path MTU discovery.
pub(crate) fn interface_mtu() -> u16 {
    let default_v4 = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| default_route_interface(&t));
    let default_v6 = || crate::portmap::default_gateway_v6().map(|(_, dev)| dev);
    if let Some(mtu) = default_v4.or_else(default_v6).and_then(|d| link_mtu(&d)) {
        return mtu;
    }
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback() && !is_tunnel(&link_type(&i.name)))
        .filter_map(|i| link_mtu(&i.name))
        .max()
        .unwrap_or(1500)
}

/// The interface of the IPv4 default route in a `/proc/net/route` table.
pub(crate) fn default_route_interface(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
        (*f.get(1)? == "00000000" && flags & 0x1 != 0).then(|| f[0].to_string())
    })
}

/// Interface `name`'s MTU (`/sys/class/net/NAME/mtu`).
fn link_mtu(name: &str) -> Option<u16> {
    let raw: u32 = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(raw.min(u32::from(u16::MAX)) as u16)
}

/// The TUN's MTU: `asked`, else the interface's less UDP and WireGuard overhead over IPv4
/// (60 bytes), in WireGuard's 16-byte steps, at least 1280; 1280 without discovery.
pub(crate) fn tun_mtu(asked: Option<u16>, interface: u16, discovery: bool) -> u16 {
    match (asked, discovery) {
        (Some(m), _) => m,
        (None, false) => burrow_node::MIN_TUNNEL_MTU,
        (None, true) => {
            let fits = interface.saturating_sub(60).min(MAX_TUN_MTU) / 16 * 16;
            fits.max(burrow_node::MIN_TUNNEL_MTU)
        }
    }
}

/// The largest TUN MTU chosen by itself: the node reads datagrams into 4 KiB buffers.
const MAX_TUN_MTU: u16 = 4000;

/// Whether a link type is a layer-3 tunnel with no link layer (ARPHRD_NONE: TUN devices,
/// WireGuard, including other VPNs' and burrow's own): an address on one is no place a peer
/// reaches us directly, and a path over another VPN would carry the tunnel inside the tunnel.
pub(crate) fn is_tunnel(link_type: &Option<u16>) -> bool {
    const ARPHRD_NONE: u16 = 0xfffe;
    *link_type == Some(ARPHRD_NONE)
}

/// How often `burrow up` looks at the host's interface addresses again: an address added or
/// withdrawn (IPv6 coming or going, a new network) reaches the engine within this.
pub(crate) const ADDRESS_POLL: Duration = Duration::from_secs(2);

/// What changed between two gatherings, as sets (the order alone is no change): the
/// addresses added and those removed, or None when the sets are equal.
pub(crate) fn address_change(
    old: &[SocketAddr],
    new: &[SocketAddr],
) -> Option<(Vec<SocketAddr>, Vec<SocketAddr>)> {
    let added: Vec<SocketAddr> = new.iter().filter(|a| !old.contains(a)).copied().collect();
    let removed: Vec<SocketAddr> = old.iter().filter(|a| !new.contains(a)).copied().collect();
    (!added.is_empty() || !removed.is_empty()).then_some((added, removed))
}

/// Gathers the interface addresses every [`ADDRESS_POLL`] and hands a changed set to the
/// engine; `current` is what it was started with. Returns when the engine has stopped.
pub(crate) async fn watch_addresses(
    port: u16,
    ours: Vec<IpAddr>,
    ipv6: bool,
    mut current: Vec<SocketAddr>,
    commands: mpsc::UnboundedSender<NodeCommand>,
) -> Result<()> {
    let mut tick = tokio::time::interval(ADDRESS_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is at once; `current` is that look
    loop {
        tick.tick().await;
        let new = match try_local_addresses(port, &ours, ipv6) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the interface addresses");
                continue;
            }
        };
        let Some((added, removed)) = address_change(&current, &new) else {
            continue;
        };
        tracing::info!("interface addresses changed: +{added:?} -{removed:?}");
        current.clone_from(&new);
        if commands.send(NodeCommand::SetLocalAddrs(new)).is_err() {
            return Ok(()); // the engine stopped
        }
    }
}

/// An interface address, and whether the kernel still offers it for new traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostAddr {
    /// The address.
    pub ip: IpAddr,
    /// False for IPv6 addresses on their way out (deprecated) or that failed duplicate
    /// detection, and for any address on a tunnel interface (no link layer).
    pub usable: bool,
}

/// Which interface addresses are candidates, each once in the host's order: IPv4 but loopback
/// (LAN candidates); with `ipv6`, global unicast IPv6 (2000::/3), still usable. Link-local,
/// ULA (the tailnet's fd…/48 among them) and loopback IPv6 reach no peer elsewhere, and an
/// IPv4-only socket reaches no IPv6 one. The tailnet's own addresses (`ours`) never are.
pub(crate) fn candidate_ips(host: &[HostAddr], ours: &[IpAddr], ipv6: bool) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in host {
        let wanted = match a.ip {
            IpAddr::V4(v4) => a.usable && !v4.is_loopback(),
            IpAddr::V6(v6) => ipv6 && a.usable && v6.segments()[0] & 0xe000 == 0x2000,
        };
        if wanted && !ours.contains(&a.ip) && !out.contains(&a.ip) {
            out.push(a.ip);
        }
    }
    out
}

/// IPv6 addresses `/proc/net/if_inet6` marks deprecated (IFA_F_DEPRECATED, 0x20) or failed
/// duplicate detection (IFA_F_DADFAILED, 0x08). Tentative ones stay: they are usable within a
/// second, about when the node's next look (every [`ADDRESS_POLL`]) would see them anyway.
pub(crate) fn unusable_v6(if_inet6: &str) -> Vec<Ipv6Addr> {
    const DADFAILED: u8 = 0x08;
    const DEPRECATED: u8 = 0x20;
    if_inet6
        .lines()
        .filter_map(|line| {
            // "20010db8000000000000000000000001 02 40 00 80 eth0": address, index, prefix
            // length, scope, flags, name.
            let mut fields = line.split_whitespace();
            let hex = fields.next()?;
            let flags = u8::from_str_radix(fields.nth(3)?, 16).ok()?;
            let bits = u128::from_str_radix(hex, 16)
                .ok()
                .filter(|_| hex.len() == 32)?;
            (flags & (DADFAILED | DEPRECATED) != 0).then(|| Ipv6Addr::from(bits))
        })
        .collect()
}

/// The relay: --derp, or the first region of the control server's DERP map.
pub(crate) fn derp_url(
    given: Option<&DerpUrl>,
    map: &[burrow_control::DerpRegion],
) -> Result<DerpUrl> {
    match (given, map.first()) {
        (Some(u), _) => Ok(u.clone()),
        (None, Some(r)) => (r.url.parse())
            .map_err(|e| anyhow::anyhow!("the control server's DERP URL {:?}: {e}", r.url)),
        (None, None) => bail!("no DERP relay: pass --derp, or run the control server with --derp"),
    }
}

/// Where to dial the relay [`derp_url`] chose: the map region's fixed IPv6 and IPv4 addresses
/// (checked, see [`crate::derp_client::region_dial_addrs`]); empty, so the URL's host is
/// resolved, for --derp or a region without them.
pub(crate) fn derp_dial(
    given: Option<&DerpUrl>,
    map: &[burrow_control::DerpRegion],
    url: &DerpUrl,
) -> Vec<SocketAddr> {
    match (given, map.first()) {
        (None, Some(r)) => crate::derp_client::region_dial_addrs(url, r.ipv4, r.ipv6),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_regions_fixed_addresses_are_dialled_unless_derp_is_given() {
        let region = burrow_control::DerpRegion {
            id: 1,
            code: "fra".into(),
            url: "https://derp.fra.example:8443/derp".into(),
            stun: Vec::new(),
            ipv4: Some("192.0.2.1".parse().unwrap()),
            ipv6: Some("2001:db8::1".parse().unwrap()),
        };
        let map = [region.clone()];
        let url = derp_url(None, &map).unwrap();
        assert_eq!(url.host, "derp.fra.example");
        assert_eq!(
            derp_dial(None, &map, &url),
            vec![
                "[2001:db8::1]:8443".parse::<SocketAddr>().unwrap(),
                "192.0.2.1:8443".parse().unwrap()
            ]
        );
        // --derp names another relay: the region's addresses are not its.
        let given: DerpUrl = "https://other.example/derp".parse().unwrap();
        assert!(derp_dial(Some(&given), &map, &given).is_empty());
        // A region without fixed addresses: the URL's host is resolved.
        let bare = [burrow_control::DerpRegion {
            ipv4: None,
            ipv6: None,
            ..region
        }];
        assert!(derp_dial(None, &bare, &url).is_empty());
    }

    #[test]
    fn plain_http_beyond_loopback_is_flagged() {
        for url in [
            "http://192.0.2.1:8080",
            "http://control.example/x",
            "http://[2001:db8::1]:80",
        ] {
            assert!(is_plain_beyond_loopback(url), "{url}");
        }
        for url in [
            "https://192.0.2.1",
            "http://127.0.0.1:8080",
            "http://[::1]:9",
            "http://localhost/derp",
        ] {
            assert!(!is_plain_beyond_loopback(url), "{url}");
        }
    }

    fn usable(ips: &[&str]) -> Vec<HostAddr> {
        ips.iter()
            .map(|s| HostAddr {
                ip: s.parse().unwrap(),
                usable: true,
            })
            .collect()
    }

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn candidates_are_ipv4_and_global_ipv6() {
        let host = usable(&[
            "127.0.0.1",
            "192.168.1.20",
            "100.64.0.1",         // the tailnet's own IPv4 (on the TUN)
            "::1",                // loopback
            "fe80::fc:ff:fe00:1", // link-local
            "fd7a:115c:a1e0::1",  // the tailnet's own ULA
            "fd12:3456:789a::1",  // another ULA
            "2001:db8:1::20",     // global (documentation prefix: the lab's)
            "2a01:4f8::1",        // global
            "ff02::1",            // multicast
            "::ffff:192.0.2.1",   // IPv4-mapped
            "192.168.1.20",       // twice (two interfaces)
        ]);
        let ours = ips(&["100.64.0.1", "fd7a:115c:a1e0::1"]);
        assert_eq!(
            candidate_ips(&host, &ours, true),
            ips(&["192.168.1.20", "2001:db8:1::20", "2a01:4f8::1"])
        );
    }

    #[test]
    fn an_ipv4_only_socket_gets_no_ipv6_candidates() {
        let host = usable(&["10.0.0.5", "2001:db8:1::20"]);
        assert_eq!(candidate_ips(&host, &[], false), ips(&["10.0.0.5"]));
    }

    #[test]
    fn deprecated_ipv6_addresses_are_left_out() {
        let mut host = usable(&["2001:db8:1::20", "2001:db8:1::99"]);
        host[1].usable = false;
        assert_eq!(candidate_ips(&host, &[], true), ips(&["2001:db8:1::20"]));
    }

    #[test]
    fn addresses_on_tunnel_interfaces_are_left_out() {
        // Another VPN's interface (wireguard-go's wg0 in the mesh bench, say): a path over it
        // would carry burrow inside that tunnel.
        assert!(is_tunnel(&Some(65534)));
        assert!(!is_tunnel(&Some(1))); // Ethernet (veth too)
        assert!(!is_tunnel(&None));
        let mut host = usable(&["192.168.1.20", "10.77.0.1", "2001:db8:1::20"]);
        host[1].usable = false;
        assert_eq!(
            candidate_ips(&host, &[], true),
            ips(&["192.168.1.20", "2001:db8:1::20"])
        );
    }

    #[test]
    fn global_ipv6_that_is_ours_is_left_out() {
        let host = usable(&["2001:db8:1::20"]);
        assert!(candidate_ips(&host, &ips(&["2001:db8:1::20"]), true).is_empty());
    }

    #[test]
    fn if_inet6_flags_mark_unusable_addresses() {
        let table = "\
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
20010db8000100000000000000000020 04 40 00 80     eth0
20010db80001000000000000000000aa 04 40 00 21     eth0
20010db80001000000000000000000bb 04 40 00 c0     eth0
20010db80001000000000000000000cc 04 40 00 88     eth0
20010db80001000000000000000000dd 1a 40 00 01   wlan0
not a line
20010db8 04 40 00 20 eth0
";
        // Deprecated (0x20, here a temporary one past its preferred life) and DAD failed
        // (0x08); tentative (0x40), permanent (0x80) and temporary (0x01) ones stay.
        assert_eq!(
            unusable_v6(table),
            vec![
                "2001:db8:1::aa".parse::<Ipv6Addr>().unwrap(),
                "2001:db8:1::cc".parse().unwrap(),
            ]
        );
    }

    fn addrs(s: &[&str]) -> Vec<SocketAddr> {
        s.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn an_address_change_is_what_was_added_and_what_was_removed() {
        let v4 = "10.0.0.5:41641";
        let v6 = "[2001:db8:2::2]:41641";
        // The same set, in another order: no change.
        assert_eq!(address_change(&addrs(&[v4, v6]), &addrs(&[v6, v4])), None);
        assert_eq!(address_change(&[], &[]), None);
        // IPv6 withdrawn.
        assert_eq!(
            address_change(&addrs(&[v4, v6]), &addrs(&[v4])),
            Some((vec![], addrs(&[v6])))
        );
        // IPv6 back.
        assert_eq!(
            address_change(&addrs(&[v4]), &addrs(&[v4, v6])),
            Some((addrs(&[v6]), vec![]))
        );
        // A new network: one address for another.
        assert_eq!(
            address_change(&addrs(&[v4, v6]), &addrs(&["192.168.7.9:41641", v6])),
            Some((addrs(&["192.168.7.9:41641"]), addrs(&[v4])))
        );
        // Everything gone, and from nothing.
        assert_eq!(
            address_change(&addrs(&[v4, v6]), &[]),
            Some((vec![], addrs(&[v4, v6])))
        );
        assert_eq!(
            address_change(&[], &addrs(&[v6])),
            Some((addrs(&[v6]), vec![]))
        );
    }

    #[test]
    fn the_default_routes_interface_from_the_route_table() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth1\t000A0A0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interface(table).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface("Iface\n"), None);
    }

    #[test]
    fn the_tun_mtu_leaves_room_for_the_overhead_in_16_byte_steps() {
        assert_eq!(tun_mtu(None, 1500, true), 1440);
        assert_eq!(tun_mtu(None, 1492, true), 1424);
        assert_eq!(tun_mtu(None, 9000, true), 4000);
        assert_eq!(tun_mtu(None, 1280, true), 1280);
        assert_eq!(tun_mtu(None, 1500, false), 1280);
        assert_eq!(tun_mtu(Some(1400), 1500, true), 1400);
    }

    #[test]
    fn the_tailnet_prefix_is_the_ula_slash_48() {
        let a: Ipv6Addr = "fd7a:115c:a1e0::1:2".parse().unwrap();
        assert_eq!(tailnet_v6_prefix(a), "fd7a:115c:a1e0::/48");
        let p = tunnel_prefixes(&[IpAddr::V4("100.64.0.3".parse().unwrap()), IpAddr::V6(a)]);
        assert_eq!(
            p,
            vec![
                "100.64.0.0/10".parse::<ipnet::IpNet>().unwrap(),
                "fd7a:115c:a1e0::/48".parse().unwrap()
            ]
        );
        let b: Ipv6Addr = "fd00:5:6::7".parse().unwrap();
        assert_eq!(tailnet_v6_prefix(b), "fd00:5:6::/48");
    }
}
