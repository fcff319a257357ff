//! `burrow wg`: a WireGuard tunnel over a TUN device from a wg-quick style file.

use anyhow::{bail, Context, Result};

use crate::cli::WgArgs;

/// Runs `burrow wg`.
pub async fn run(args: WgArgs) -> Result<()> {
    let WgArgs {
        config,
        interface,
        no_offload,
        parallel_crypto,
    } = args;
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    let parsed: burrow::wg_config::WgConfig = text
        .parse()
        .with_context(|| format!("in {}", config.display()))?;
    let name = interface.unwrap_or_else(|| {
        config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "burrow0".into())
    });
    if name.is_empty() || name.len() > 15 {
        bail!("interface name {name:?} must be 1 to 15 characters (use --interface)");
    }
    let options = burrow::wg::WgOptions {
        offload: !no_offload,
        parallel_crypto,
    };
    burrow::wg::run(parsed, &name, options, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
