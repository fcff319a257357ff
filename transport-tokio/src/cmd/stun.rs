//! `burrow stun`: a STUN server until Ctrl-C, with its counters logged at the end.

use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use burrow::stun_server::StunServer;
use burrow_stun::ServerConfig;

use crate::cli::StunArgs;

/// Runs `burrow stun`.
pub async fn run(args: StunArgs) -> Result<()> {
    let StunArgs {
        listen,
        alt,
        workers,
        software,
        rfc3489,
        per_source_rate,
    } = args;
    if let Some(alt) = alt {
        if alt.is_ipv4() != listen.is_ipv4()
            || alt.ip() == listen.ip()
            || alt.port() == listen.port()
        {
            bail!(
                "--alt must differ from --listen in both IP and port, in the same address family"
            );
        }
        if listen.port() == 0 || alt.port() == 0 {
            bail!("--listen and --alt need explicit ports when --alt is given");
        }
    }
    let config = ServerConfig {
        primary: listen,
        alternate: alt,
        software,
    };
    let mut server = StunServer::bind(config)
        .await
        .context("starting the STUN server")?
        .with_rfc3489(rfc3489);
    if let Some(rate) = per_source_rate {
        server = server.with_rate_limit_per_source(rate, rate.saturating_mul(2));
    }
    let workers =
        workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tracing::info!(addrs = ?server.local_addrs(), rfc5780 = alt.is_some(), workers, "STUN server listening");
    println!(
        "listening on {}",
        server
            .local_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let counters = server.counters();
    server
        .run(workers, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    tracing::info!(
        success = counters.success.load(Ordering::Relaxed),
        errors = counters.errors.load(Ordering::Relaxed),
        malformed = counters.malformed.load(Ordering::Relaxed),
        ignored = counters.ignored.load(Ordering::Relaxed),
        "STUN server stopped"
    );
    Ok(())
}
