//! `burrow status`: the running node's peers, over its local API.

use anyhow::{Context, Result};

use crate::cli::StatusArgs;

/// Runs `burrow status`.
pub async fn run(args: StatusArgs) -> Result<()> {
    let StatusArgs { json, socket } = args;
    use burrow::local_api::{ask, Request, Status};
    let answer = ask(&socket, &Request::Status).await?;
    let status: Status = serde_json::from_value(answer.into_iter().next().context("no answer")?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        let addrs = |a: &[std::net::IpAddr]| {
            a.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("{} ({})", status.name, addrs(&status.addresses));
        for p in &status.peers {
            println!(
                "  {:<16} {:<36} {:<28} handshake {:<10} rx {} B, tx {} B",
                p.name,
                addrs(&p.addresses),
                p.path,
                p.last_handshake_s
                    .map_or("never".into(), |s| format!("{s:.0}s ago")),
                p.rx_bytes,
                p.tx_bytes
            );
        }
    }
    Ok(())
}
