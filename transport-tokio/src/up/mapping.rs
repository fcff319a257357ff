//! `burrow up`'s port mapping: the gateway maps the node's UDP port, and the engine hears
//! of each mapping (a candidate any peer can reach). With a global IPv6 address and an IPv6
//! default route, the router's IPv6 firewall is asked for a pinhole too (PCP), which follows
//! the address.

use std::net::{IpAddr, SocketAddr};

use anyhow::Result;

/// What the IPv6 pinhole follows: the host's addresses as `burrow up` gathers them.
pub(super) struct Ipv6Addrs {
    /// The tailnet's own addresses (never candidates).
    pub ours: Vec<IpAddr>,
    /// The node's socket carries IPv6.
    pub enabled: bool,
    /// The addresses gathered at start.
    pub current: Vec<SocketAddr>,
}

/// How often the pinhole's address and gateway are looked at again.
const PINHOLE_POLL: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts keeping the node's port mapped on the default gateway, with a task that tells the
/// engine of each mapping. Without a default route the node simply goes without.
pub(super) async fn start(
    port: u16,
    seed: u64,
    v6: Ipv6Addrs,
    commands: tokio::sync::mpsc::UnboundedSender<crate::node::NodeCommand>,
    summary: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    tasks: &mut tokio::task::JoinSet<Result<()>>,
) -> Option<crate::portmap::PortMapHandle> {
    let Some(mut config) = crate::portmap::config_for(port, seed) else {
        tracing::info!("port mapping: no IPv4 default route");
        if let Ok(mut s) = summary.lock() {
            *s = Some("no IPv4 default route".into());
        }
        return None;
    };
    let enabled = v6.enabled;
    let pinhole_for = move |addrs: &[SocketAddr]| {
        if !enabled {
            return None;
        }
        crate::portmap::pinhole_for(addrs)
    };
    config.pinhole = pinhole_for(&v6.current);
    match config.pinhole {
        Some(p) => tracing::info!(
            "port mapping: asking {} for an IPv6 pinhole for [{}]:{port}",
            p.gateway,
            p.local_ip
        ),
        None => tracing::debug!("port mapping: no global IPv6 address or IPv6 default route"),
    }
    let mut pinhole_cfg = config.pinhole;
    let handle = match crate::portmap::spawn(config).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "port mapping: no socket");
            return None;
        }
    };
    let mut report = handle.report.clone();
    tasks.spawn(async move {
        // Each report, in words, for `burrow doctor`.
        while report.changed().await.is_ok() {
            let line = report
                .borrow_and_update()
                .as_ref()
                .map(crate::portmap::summary);
            if let (Some(line), Ok(mut s)) = (line, summary.lock()) {
                *s = Some(line);
            }
        }
        std::future::pending().await
    });
    let mut pinhole = handle.pinhole.clone();
    let pinhole_commands = commands.clone();
    tasks.spawn(async move {
        loop {
            let p = *pinhole.borrow_and_update();
            let sent = pinhole_commands.send(crate::node::NodeCommand::SetIpv6Pinhole(p));
            if sent.is_err() || pinhole.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    });
    let follow = handle.pinhole_follower();
    tasks.spawn(async move {
        // The pinhole follows our global IPv6 address and the IPv6 default route.
        let mut tick = tokio::time::interval(PINHOLE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let addrs = super::iface::local_addresses(port, &v6.ours, v6.enabled);
            let now = pinhole_for(&addrs);
            if now != pinhole_cfg {
                tracing::info!(from = ?pinhole_cfg, to = ?now, "IPv6 pinhole: the address or gateway changed");
                pinhole_cfg = now;
                if !follow.set_pinhole(now).await {
                    return std::future::pending().await;
                }
            }
        }
    });
    let mut mapping = handle.mapping.clone();
    tasks.spawn(async move {
        loop {
            let external = mapping.borrow_and_update().map(|m| m.external);
            let sent = commands.send(crate::node::NodeCommand::SetPortMapping(external));
            if sent.is_err() || mapping.changed().await.is_err() {
                // The engine or the mapper stopped: the node goes on without.
                return std::future::pending().await;
            }
        }
    });
    Some(handle)
}
