//! `burrow-loadgen`: the load generators `cargo xtask bench stun | derp | control` drive against
//! a release `burrow`. Each prints its figures as one JSON line on stdout.

mod control;
mod derp;
mod stun;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "burrow-loadgen",
    about = "Load generators for cargo xtask bench"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Binding requests at a STUN server, as fast as it answers (`cargo xtask bench stun`).
    Stun {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 32)]
        window: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// DERP relay load (`cargo xtask bench derp`).
    Derp {
        /// idle | throughput | latency
        mode: String,
        /// The relay (http://127.0.0.1:PORT/derp).
        #[arg(long)]
        url: Option<burrow::derp_client::DerpUrl>,
        #[arg(long, default_value_t = 5000)]
        count: u32,
        #[arg(long, default_value_t = 4)]
        pairs: u32,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 1000)]
        rate: u32,
    },
    /// Registrations and one change's propagation against `burrow control serve`
    /// (`cargo xtask bench control`).
    Control {
        /// The server, or several replicas comma-separated (nodes spread over them).
        #[arg(long)]
        url: String,
        /// Its database: a SQLite file or a postgres:// URL.
        #[arg(long)]
        db: String,
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 50)]
        team: usize,
        /// Print the policy for NODES/TEAM teams and exit.
        #[arg(long)]
        print_policy: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    burrow::entry::main("burrow-loadgen", run(cli.command))
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Control {
            url,
            db,
            nodes,
            team,
            print_policy,
        } => {
            if print_policy {
                println!("{}", control::policy(nodes.div_ceil(team)));
                return Ok(());
            }
            let r = control::run(&url, &db, nodes, team).await?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Command::Derp {
            mode,
            url,
            count,
            pairs,
            size,
            seconds,
            rate,
        } => {
            let url = || url.clone().context("--url is required for this mode");
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            match mode.as_str() {
                "idle" => derp::idle(&url()?, count, Duration::from_secs_f64(seconds)).await?,
                "throughput" => {
                    let relay = derp::relay_throughput(&url()?, pairs, size, seconds).await?;
                    let fwd = derp::forwarder().await?;
                    let ceiling = derp::forwarder_throughput(fwd, pairs, size, seconds).await?;
                    println!(
                        "{{\"relay_bytes_per_s\":{:.0},\"relay_packets_per_s\":{:.0},\"ceiling_bytes_per_s\":{:.0},\"ceiling_packets_per_s\":{:.0}}}",
                        relay.bytes_per_s, relay.packets_per_s, ceiling.bytes_per_s, ceiling.packets_per_s
                    );
                }
                "latency" => {
                    let (p50, p99) = derp::relay_latency(&url()?, rate, seconds).await?;
                    let (t50, t99) = derp::tcp_latency(rate, seconds).await?;
                    println!(
                        "{{\"relay_p50_ms\":{:.4},\"relay_p99_ms\":{:.4},\"tcp_p50_ms\":{:.4},\"tcp_p99_ms\":{:.4}}}",
                        ms(p50), ms(p99), ms(t50), ms(t99)
                    );
                }
                other => bail!("unknown mode {other:?} (idle, throughput, latency)"),
            }
            Ok(())
        }
        Command::Stun {
            target,
            threads,
            window,
            seconds,
        } => {
            let config = stun::LoadConfig {
                target,
                threads,
                window,
                duration: Duration::from_secs_f64(seconds),
                loss_timeout: Duration::from_millis(200),
            };
            let r = tokio::task::spawn_blocking(move || stun::run(config)).await??;
            println!(
                "{{\"sent\":{},\"answered\":{},\"lost\":{},\"seconds\":{:.3},\"rate\":{:.1},\"loss\":{:.6}}}",
                r.sent, r.answered, r.lost, r.seconds, r.rate(), r.loss()
            );
            Ok(())
        }
    }
}
