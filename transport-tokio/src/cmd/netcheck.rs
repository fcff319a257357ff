//! `burrow netcheck`: what kind of network this node sits behind, as text or JSON.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::NetcheckArgs;

/// Runs `burrow netcheck`.
pub async fn run(args: NetcheckArgs) -> Result<()> {
    let NetcheckArgs {
        stun,
        derp_map,
        json,
        timeout,
        no_port_mapping,
    } = args;
    if !(timeout > 0.0 && timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let deadline = Duration::from_secs_f64(timeout);
    let port_mapping = async {
        if no_port_mapping {
            return None;
        }
        Some(port_mapping(deadline).await)
    };
    let stun = async {
        Ok::<_, anyhow::Error>(match derp_map {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let map = burrow_derp::DerpMap::from_json(&text)
                    .with_context(|| format!("parsing the DERP map {}", path.display()))?;
                let mut regions = burrow::netcheck::resolve_derp_map(&map).await?;
                // Extra --stun servers join as their own regions after the map's.
                let base = regions.iter().map(|r| r.id).max().unwrap_or(0);
                for (i, mut r) in burrow::netcheck::resolve_regions(&stun)
                    .await?
                    .into_iter()
                    .enumerate()
                {
                    r.id = base + 1 + i as u32;
                    regions.push(r);
                }
                burrow::netcheck::run_regions(regions, deadline).await?
            }
            None => burrow::netcheck::run(&stun, deadline).await?,
        })
    };
    let (report, port_mapping) = tokio::join!(stun, port_mapping);
    let mut report = report?;
    report.port_mapping = port_mapping;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", burrow::netcheck::format_report(&report));
    }
    Ok(())
}

/// Asks the default gateway for a mapping of a random high port (not burrow's own, which a
/// running node may hold), reports, and deletes it again.
async fn port_mapping(deadline: Duration) -> burrow_netcheck::PortMapping {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let seed = rand_chacha::ChaCha20Rng::from_os_rng().next_u64();
    let port = 49152 + (seed % 16384) as u16;
    let Some(mut config) = burrow::portmap::config_for(port, seed) else {
        let mut errors = std::collections::BTreeMap::new();
        errors.insert("gateway".into(), "no IPv4 default route".into());
        return burrow_netcheck::PortMapping {
            gateway: None,
            upnp: false,
            pmp: false,
            pcp: false,
            mapped_with: None,
            external: None,
            lease_secs: None,
            private_external: false,
            pinhole_v6: None,
            errors,
        };
    };
    config.lease = Duration::from_secs(120);
    config.description = "burrow netcheck".into();
    // With a global IPv6 address and an IPv6 default route, a PCP pinhole for the port too.
    config.pinhole = burrow::portmap::pinhole_for(&burrow::up::host_addresses(port));
    let gateway = config.gateway;
    let report = match burrow::portmap::probe(config, deadline).await {
        Ok(r) => r,
        Err(e) => {
            let mut errors = std::collections::BTreeMap::new();
            errors.insert("socket".into(), e.to_string());
            return burrow_netcheck::PortMapping {
                gateway: Some(gateway.into()),
                upnp: false,
                pmp: false,
                pcp: false,
                mapped_with: None,
                external: None,
                lease_secs: None,
                private_external: false,
                pinhole_v6: None,
                errors,
            };
        }
    };
    burrow::portmap::to_netcheck(&report)
}
