//! `burrow status`: the running node's peers, over its local API.

use anyhow::{Context, Result};

use crate::cli::StatusArgs;

/// Runs `burrow status`.
pub async fn run(args: StatusArgs) -> Result<()> {
    let StatusArgs { json, socket } = args;
    use burrow::local_api::{ask, family_label, standby_note, Request, Status};
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
            // "direct (IPv6) [2001:db8::2]:41641": the family of a direct path up front.
            // "…, IPv4 standby": the other family works too and takes over if this one fails.
            let path = match (&p.family, p.path.strip_prefix("direct ")) {
                (Some(f), Some(addr)) => match standby_note(&p.families) {
                    Some(note) => format!("direct ({}) {addr}, {note}", family_label(f)),
                    None => format!("direct ({}) {addr}", family_label(f)),
                },
                _ => p.path.clone(),
            };
            let path = match p.mtu {
                Some(m) => format!("{path}, mtu {m}"),
                None => path,
            };
            println!(
                "  {:<16} {:<36} {:<44} handshake {:<10} rx {} B, tx {} B",
                p.name,
                addrs(&p.addresses),
                path,
                p.last_handshake_s
                    .map_or("never".into(), |s| format!("{s:.0}s ago")),
                p.rx_bytes,
                p.tx_bytes
            );
        }
        if let Some(r) = &status.relay_server {
            let dropped: u64 = r.dropped.values().sum();
            println!(
                "relay server: {} sessions; {} allocations ({} refused), {} binds, forwarded {} packets / {} B, {} expired, {dropped} dropped",
                r.sessions.len(),
                r.allocations,
                r.allocations_refused,
                r.binds_completed,
                r.forwarded_packets,
                r.forwarded_bytes,
                r.expired,
            );
            for s in &r.sessions {
                let leg = |i: usize| {
                    format!(
                        "{} at {}",
                        s.clients[i],
                        s.bound[i].as_deref().unwrap_or("unbound")
                    )
                };
                println!(
                    "  vni {:<8} {} <-> {}  packets {}/{}, bytes {}/{}",
                    s.vni,
                    leg(0),
                    leg(1),
                    s.packets[0],
                    s.packets[1],
                    s.bytes[0],
                    s.bytes[1]
                );
            }
        }
    }
    Ok(())
}
