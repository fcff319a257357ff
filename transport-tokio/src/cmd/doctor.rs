//! `burrow doctor`: why a peer is on its path, from the running node's local API.

use anyhow::{Context, Result};

use crate::cli::DoctorArgs;

/// Runs `burrow doctor`.
pub async fn run(args: DoctorArgs) -> Result<()> {
    let DoctorArgs { peer, json, socket } = args;
    use burrow::local_api::{ask, family_label, family_line, Doctor, Request};
    let answer = ask(&socket, &Request::Doctor { peer }).await?;
    let d: Doctor = serde_json::from_value(answer.into_iter().next().context("no answer")?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    println!("peer:      {}", d.peer);
    println!("our NAT:   {}", d.our_nat);
    println!("its NAT:   {}", d.peer_nat);
    println!("path:      {}", d.path);
    match (&d.family, d.path.starts_with("derp")) {
        (Some(f), _) => println!("family:    {}", family_label(f)),
        (None, true) => println!("family:    none (relayed over DERP)"),
        (None, false) if d.path.starts_with("relay via") => {
            println!("family:    none (through a peer relay)")
        }
        (None, false) => println!("family:    unknown"),
    }
    // Each family on a line: which one carries the traffic, and why the other does not.
    for f in &d.families {
        println!("  {}", family_line(f, &d.families));
    }
    println!("birthday:  {}", d.birthday);
    println!("our port mapping: {}", d.our_port_mapping);
    println!("its port mapping: {}", d.peer_port_mapping);
    if d.peer_relays.is_empty() {
        println!("peer relays: none considered");
    } else {
        println!("peer relays considered (RTT = ours to the relay + the relay's to the peer):");
        for r in &d.peer_relays {
            println!("  {r}");
        }
    }
    if !d.mtu.is_empty() {
        println!("mtu:       {}", d.mtu);
    }
    if !d.doubts.is_empty() {
        println!("direct path in doubt (data unanswered; the relay carried it too):");
        for l in &d.doubts {
            println!("  {l}");
        }
    }
    println!("candidate pairs tried (oldest first):");
    for a in &d.attempts {
        println!("  {a}");
    }
    Ok(())
}
