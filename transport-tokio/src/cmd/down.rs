//! `burrow down`: stops the running node.

use anyhow::Result;

use crate::cli::DownArgs;

/// Runs `burrow down`.
pub async fn run(args: DownArgs) -> Result<()> {
    let DownArgs { socket } = args;
    burrow::local_api::ask(&socket, &burrow::local_api::Request::Down).await?;
    println!("down");
    Ok(())
}
