//! `burrow ping`: disco pings to a peer through the running node's local API.

use anyhow::Result;

use crate::cli::PingArgs;

/// Runs `burrow ping`.
pub async fn run(args: PingArgs) -> Result<()> {
    let PingArgs {
        peer,
        until_direct,
        count,
        socket,
    } = args;
    use burrow::local_api::{ask, Pong, Request};
    let answers = ask(
        &socket,
        &Request::Ping {
            peer: peer.clone(),
            count,
            until_direct,
        },
    )
    .await?;
    let mut direct = false;
    for a in answers {
        let pong: Pong = serde_json::from_value(a)?;
        match pong.latency_ms {
            Some(ms) => {
                println!("pong from {} via {} in {ms:.1} ms", pong.peer, pong.via);
                direct |= !pong.via.starts_with("DERP");
            }
            None => println!("no pong from {} within 2 s", pong.peer),
        }
    }
    if until_direct && !direct {
        anyhow::bail!("no direct path to {peer} yet");
    }
    Ok(())
}
