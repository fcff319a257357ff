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
    } = args;
    if !(timeout > 0.0 && timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let deadline = Duration::from_secs_f64(timeout);
    let report = match derp_map {
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
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", burrow::netcheck::format_report(&report));
    }
    Ok(())
}
