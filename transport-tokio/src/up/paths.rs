//! The node's packet paths: the TUN's packets to their peers (routed and recorded by the
//! session), and the engine's events back: packets through the receiver's filter into the TUN,
//! endpoints to the session, ping answers to the local API.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use burrow_control::Verdict;
use burrow_node::{Event, NatView, PacketBatch};
use burrow_session::{Input, Session};
use tokio::sync::mpsc;

use burrow_offload::Coalescer;

use crate::local_api::PingWaiters;
use crate::node::BatchPool;
use crate::session::lock;
use crate::transport::now;
use crate::tun::{write_frames, TunFrames, TunOffload};

/// TUN → peers: each packet goes to the peer owning its destination, its flow recorded so
/// the answer is let back in; a read's packets go to the engine as one batch. From an
/// offloading TUN, a super-packet is cut into segments first (one session lock per frame).
pub(crate) async fn tun_to_peers(
    tun: Arc<tun_rs::AsyncDevice>,
    offload: TunOffload,
    mtu: u16,
    session: Arc<Mutex<Session>>,
    outbound: mpsc::Sender<PacketBatch>,
    batches: BatchPool,
) -> Result<()> {
    let mut frames = TunFrames::new(offload, usize::from(mtu));
    loop {
        let mut count = frames.recv(&tun).await?;
        let mut batch = batches.take();
        loop {
            {
                let mut s = lock(&session);
                let t = now();
                for i in 0..count {
                    let packet = frames.packet(i);
                    if let Some(peer) = s.route_outbound(t, packet) {
                        batch.push(peer, packet);
                    }
                }
            }
            // What else the TUN holds joins the batch (single packets without offloads), up
            // to a burst.
            if batch.len() >= crate::node::INPUT_BATCH {
                break;
            }
            match frames.try_recv(&tun)? {
                Some(n) => count = n,
                None => break,
            }
        }
        if batch.is_empty() {
            batches.give(batch);
        } else if outbound.send(batch).await.is_err() {
            return Ok(()); // the engine stopped
        }
    }
}

/// Packets written to an offloading TUN in one go, at most (coalesced first).
const TUN_BATCH: usize = 256;

/// The engine's output: delivered packets through the filter into the TUN (an offloading one
/// gets them coalesced into super-packets), its events to the session and the local API.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn engine_events(
    mut events: mpsc::Receiver<Event>,
    mut delivered: mpsc::Receiver<PacketBatch>,
    batches: BatchPool,
    tun: Arc<tun_rs::AsyncDevice>,
    offload: TunOffload,
    session: Arc<Mutex<Session>>,
    inputs: mpsc::Sender<Input>,
    pings: PingWaiters,
    relay_forwarded: bool,
) -> Result<()> {
    let mut gro = Coalescer::new(offload.udp, TUN_BATCH);
    let mut admitted = Vec::new();
    let mut events_open = true;
    loop {
        tokio::select! {
            b = delivered.recv() => {
                let Some(batch) = b else { return Ok(()) };
                let mut written = batch.len();
                packets_to_tun(&batch, &tun, offload, &mut gro, &session, &mut admitted).await;
                batches.give(batch);
                // What else waits joins the same super-packets.
                while offload.tcp && written < TUN_BATCH {
                    let Ok(batch) = delivered.try_recv() else { break };
                    written += batch.len().max(1);
                    packets_to_tun(&batch, &tun, offload, &mut gro, &session, &mut admitted).await;
                    batches.give(batch);
                }
                write_frames(&tun, &mut gro).await;
            }
            e = events.recv(), if events_open => match e {
                // Not from the batch calls the driver makes; should one come, it is written
                // like the others.
                Some(Event::Packet { peer, data }) => {
                    let mut batch = batches.take();
                    batch.push(peer, &data);
                    packets_to_tun(&batch, &tun, offload, &mut gro, &session, &mut admitted).await;
                    write_frames(&tun, &mut gro).await;
                    batches.give(batch);
                }
                Some(e) => handle_event(e, &session, &inputs, &pings, relay_forwarded),
                None => events_open = false,
            },
        }
    }
}

/// A batch of delivered packets through the receiver's filter (one session lock) into the TUN,
/// or into `gro` for an offloading one (written out when full).
async fn packets_to_tun(
    batch: &PacketBatch,
    tun: &tun_rs::AsyncDevice,
    offload: TunOffload,
    gro: &mut Coalescer,
    session: &Arc<Mutex<Session>>,
    admitted: &mut Vec<bool>,
) {
    admitted.clear();
    {
        // The engine already dropped packets whose inner source is not one of this peer's
        // addresses (cryptokey routing); the filter keys its flows by peer too.
        let mut s = lock(session);
        let t = now();
        for (peer, packet) in batch.iter() {
            match s.admit_inbound(t, &peer, packet) {
                Verdict::Accept | Verdict::Reply => admitted.push(true),
                Verdict::Drop(reason) => {
                    tracing::debug!(%peer, ?reason, "dropped by the packet filter");
                    admitted.push(false);
                }
            }
        }
    }
    for ((_, packet), ok) in batch.iter().zip(admitted.iter()) {
        if !ok {
            continue;
        }
        if offload.tcp {
            if gro.push(packet).is_err() {
                write_frames(tun, gro).await;
                let _ = gro.push(packet);
            }
        } else {
            let _ = tun.send(packet).await;
        }
    }
}

/// One engine event (delivered packets come as batches, not events).
fn handle_event(
    e: Event,
    session: &Arc<Mutex<Session>>,
    inputs: &mpsc::Sender<Input>,
    pings: &PingWaiters,
    relay_forwarded: bool,
) {
    match e {
        Event::Endpoints { candidates, nat } => {
            tracing::debug!(?candidates, ?nat, "endpoints");
            let endpoints = candidates.iter().map(|c| c.addr).collect();
            // Never wait on the session here (packets queue behind this): the next STUN
            // round reports the endpoints again if this one did not fit.
            let _ = inputs.try_send(Input::LocalEndpoints(endpoints));
            // A relay port anyone can reach makes a relay eligible under `autoRelay`.
            let host: Vec<std::net::IpAddr> = super::iface::local_addresses(0, &[], true)
                .iter()
                .map(SocketAddr::ip)
                .collect();
            let fixed = relay_reachable(nat.as_ref(), &host, relay_forwarded);
            let _ = inputs.try_send(Input::FixedMapping(fixed));
        }
        Event::PathChanged { peer, from, to } => {
            tracing::info!(%peer, ?from, ?to, "path changed");
        }
        Event::PeerRelayChanged { peer, relay, rtt } => {
            let via = relay.map(|r| {
                lock(session)
                    .peers()
                    .find(|(_, k)| **k == r)
                    .map_or_else(|| r.to_string(), |(p, _)| p.node.name.clone())
            });
            tracing::info!(%peer, relay = ?via, ?rtt, "peer relay changed");
        }
        Event::PingResult {
            peer,
            via,
            peer_relay,
            latency,
        } => {
            let mut waiting = pings.lock().expect("pings");
            if let Some(k) = waiting.iter().position(|(p, _)| *p == peer) {
                let (_, tx) = waiting.remove(k);
                let _ = tx.send(crate::local_api::PingAnswer {
                    via,
                    peer_relay,
                    latency,
                });
            }
        }
        Event::BirthdayStarted { peer, probing } => {
            tracing::info!(%peer, probing, "birthday search started");
        }
        Event::BirthdayExhausted { peer, probes, .. } => {
            tracing::info!(%peer, probes, "birthday attempt spent its budget");
        }
        _ => {}
    }
}

/// Whether the relay port is reachable from anywhere, for `autoRelay`: the operator declared
/// where (`--relay-endpoint`, a port forward), or there is no NAT (STUN saw one of the host's
/// own addresses, with one mapping for every server). An endpoint-independent mapping behind a
/// NAT does not count: its filter may still drop strangers (the lab's easy NAT does), and
/// STUN cannot tell; nor does a gateway port mapping, which covers the main port only.
fn relay_reachable(nat: Option<&NatView>, host: &[std::net::IpAddr], forwarded: bool) -> bool {
    forwarded || nat.is_some_and(|n| !n.mapping_varies && host.contains(&n.reflexive.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat(reflexive: &str, mapping_varies: bool) -> NatView {
        NatView {
            reflexive: reflexive.parse().unwrap(),
            mapping_varies,
            delta: None,
            last_port: 0,
        }
    }

    #[test]
    fn only_a_relay_port_strangers_can_reach_counts_for_auto_relay() {
        let host: Vec<std::net::IpAddr> = vec![
            "192.168.1.5".parse().unwrap(),
            "203.0.113.9".parse().unwrap(),
        ];
        // No NAT: STUN saw the host's own address.
        assert!(relay_reachable(
            Some(&nat("203.0.113.9:41641", false)),
            &host,
            false
        ));
        // Behind an endpoint-independent NAT: its filter may drop strangers.
        assert!(!relay_reachable(
            Some(&nat("198.51.100.1:41641", false)),
            &host,
            false
        ));
        // A varying mapping, even on a host address (a firewall rewriting ports).
        assert!(!relay_reachable(
            Some(&nat("203.0.113.9:41641", true)),
            &host,
            false
        ));
        // No STUN answer yet.
        assert!(!relay_reachable(None, &host, false));
        // The operator declared a forwarded relay endpoint.
        assert!(relay_reachable(
            Some(&nat("198.51.100.1:41641", false)),
            &host,
            true
        ));
        assert!(relay_reachable(None, &host, true));
    }
}
