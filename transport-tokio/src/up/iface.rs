//! The node's interface: the TUN device with its tailnet addresses and routes, this host's
//! own addresses (LAN candidates), and a loud warning about plain-HTTP servers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::derp_client::DerpUrl;

/// Creates the TUN interface `name` with `addresses` and routes the tailnet through it.
pub(crate) fn create_tun(name: &str, addresses: &[IpAddr]) -> Result<Arc<tun::AsyncDevice>> {
    let v4 = addresses
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .context("the control server gave no IPv4 address")?;
    let mut tun_config = tun::Configuration::default();
    tun_config.tun_name(name).mtu(1280).up();
    if let IpAddr::V4(a) = v4 {
        tun_config
            .address(a)
            .netmask(std::net::Ipv4Addr::new(255, 255, 255, 255));
    }
    let tun = Arc::new(
        tun::create_as_async(&tun_config)
            .with_context(|| format!("creating TUN {name} (needs root or CAP_NET_ADMIN)"))?,
    );
    ip_cmd(&["route", "replace", "100.64.0.0/10", "dev", name])?;
    for a in addresses {
        if let IpAddr::V6(v6) = a {
            ip_cmd(&["-6", "address", "add", &format!("{a}/128"), "dev", name])?;
            let segs = v6.segments();
            let prefix = format!("{:x}:{:x}:{:x}::/48", segs[0], segs[1], segs[2]);
            ip_cmd(&["-6", "route", "replace", &prefix, "dev", name])?;
        }
    }
    Ok(tun)
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

/// This host's interface addresses (not loopback, not the tailnet's) with the node's port.
pub(crate) fn local_addresses(port: u16, ours: &[IpAddr]) -> Vec<SocketAddr> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() && !ip.is_loopback() && !ours.contains(ip))
        .map(|ip| SocketAddr::new(ip, port))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
