//! The node's packet paths: the TUN's packets to their peers (routed and recorded by the
//! session), and the engine's events back: packets through the receiver's filter into the TUN,
//! endpoints to the session, ping answers to the local API.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use burrow_control::Verdict;
use burrow_node::Event;
use burrow_session::{Input, Session};
use burrow_wg::PublicKey;
use tokio::sync::mpsc;

use crate::local_api::PingWaiters;
use crate::node::BufferPool;
use crate::session::lock;
use crate::transport::now;

/// TUN → peers: each packet goes to the peer owning its destination, its flow recorded so
/// the answer is let back in.
pub(crate) async fn tun_to_peers(
    tun: Arc<tun::AsyncDevice>,
    session: Arc<Mutex<Session>>,
    outbound: mpsc::Sender<(PublicKey, Vec<u8>)>,
    buffers: BufferPool,
) -> Result<()> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = tun.recv(&mut buf).await?;
        let packet = &buf[..n];
        let Some(peer) = lock(&session).route_outbound(now(), packet) else {
            continue;
        };
        if outbound.send((peer, buffers.take(packet))).await.is_err() {
            return Ok(()); // the engine stopped
        }
    }
}

/// Engine events: packets through the filter into the TUN, endpoints to the session.
pub(crate) async fn engine_events(
    mut events: mpsc::Receiver<Event>,
    tun: Arc<tun::AsyncDevice>,
    session: Arc<Mutex<Session>>,
    inputs: mpsc::Sender<Input>,
    pings: PingWaiters,
    buffers: BufferPool,
) -> Result<()> {
    while let Some(e) = events.recv().await {
        match e {
            Event::Packet { peer, data } => {
                // The engine already dropped packets whose inner source is not one of this
                // peer's addresses (cryptokey routing); the filter keys its flows by peer too.
                let verdict = lock(&session).admit_inbound(now(), &peer, &data);
                match verdict {
                    Verdict::Accept | Verdict::Reply => {
                        let _ = tun.send(&data).await;
                    }
                    Verdict::Drop(reason) => {
                        tracing::debug!(%peer, ?reason, "dropped by the packet filter");
                    }
                }
                buffers.give(data);
            }
            Event::Endpoints { candidates, nat } => {
                tracing::debug!(?candidates, ?nat, "endpoints");
                let endpoints = candidates.iter().map(|c| c.addr).collect();
                // Never wait on the session here (packets queue behind this): the next STUN
                // round reports the endpoints again if this one did not fit.
                let _ = inputs.try_send(Input::LocalEndpoints(endpoints));
                // A fixed public mapping (no NAT, or endpoint-independent mapping) makes a
                // relay eligible under `autoRelay`. A gateway port mapping covers the main
                // port, not the relay's, so it does not count.
                let fixed = nat.is_some_and(|n| !n.mapping_varies);
                let _ = inputs.try_send(Input::FixedMapping(fixed));
            }
            Event::PathChanged { peer, from, to } => {
                tracing::info!(%peer, ?from, ?to, "path changed");
            }
            Event::PeerRelayChanged { peer, relay, rtt } => {
                let via = relay.map(|r| {
                    lock(&session)
                        .peers()
                        .find(|(_, k)| **k == r)
                        .map_or_else(|| r.to_string(), |(p, _)| p.node.name.clone())
                });
                tracing::info!(%peer, relay = ?via, ?rtt, "peer relay changed");
            }
            Event::PingResult { peer, via, latency } => {
                let mut waiting = pings.lock().expect("pings");
                if let Some(k) = waiting.iter().position(|(p, _)| *p == peer) {
                    let (_, tx) = waiting.remove(k);
                    let _ = tx.send((via, latency));
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
    Ok(())
}
