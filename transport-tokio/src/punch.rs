//! The hole-punching driver for one peer: burrow-punch's path machine and burrow-disco's
//! sealed messages over one UDP socket plus a relay link. Generic over the socket, so the
//! simulator runs this same code through its scripted NATs.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use burrow_disco::Message;
use burrow_punch::{Attempt, Candidate, Dst, PathConfig, PathEvent, PeerPaths, Route};
use burrow_stun::client::{ClientConfig, Event as StunEvent};
use burrow_stun::{BindingClient, BindingRequest};
use burrow_wg::{PrivateKey, PublicKey};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::transport::{now, UdpTransport};

/// Carries sealed disco messages to and from the peer when no direct path exists (DERP in
/// production).
pub trait RelayLink: Send + Sync {
    /// Sends one sealed disco message to the peer.
    fn send(&self, sealed: Vec<u8>) -> impl Future<Output = ()> + Send;
    /// Waits for the next sealed disco message from the peer.
    fn recv(&self) -> impl Future<Output = Option<Vec<u8>>> + Send;
}

/// This socket's reflexive address, asked of a STUN server (RFC 8489 retransmissions).
pub async fn reflexive_address<S: UdpTransport>(
    sock: &S,
    server: SocketAddr,
    rng: ChaCha20Rng,
) -> Option<SocketAddr> {
    let mut client = BindingClient::new(ClientConfig::default(), rng);
    client.start(now(), BindingRequest::to(server));
    let mut buf = [0u8; 1500];
    loop {
        while let Some(t) = client.poll_transmit() {
            let _ = sock.send_to(&t.payload, t.dst).await;
        }
        match client.poll_event() {
            Some(StunEvent::Success(r)) => return Some(r.mapped),
            Some(_) => return None,
            None => {}
        }
        let wake = tokio::time::Instant::from_std(client.poll_timeout()?);
        tokio::select! {
            biased;
            r = sock.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    let _ = client.handle_input(now(), from, &buf[..n]);
                }
            }
            _ = tokio::time::sleep_until(wake) => client.handle_timeout(now()),
        }
    }
}

/// What a punching session ended with.
#[derive(Debug, Clone)]
pub struct PunchOutcome {
    /// The route at the end.
    pub route: Route,
    /// How long until the first direct path, if one was found.
    pub time_to_direct: Option<Duration>,
    /// Disco packets sent directly (pings and pongs).
    pub direct_packets: u64,
    /// Why the peer is on its route: every attempt, oldest first.
    pub attempts: Vec<Attempt>,
}

/// Runs path discovery with one peer for `duration`, starting relay-first.
#[allow(clippy::too_many_arguments)]
pub async fn run_peer<S: UdpTransport, R: RelayLink>(
    sock: &S,
    relay: &R,
    disco_key: &PrivateKey,
    peer_disco: &PublicKey,
    candidates: Vec<Candidate>,
    config: PathConfig,
    seed: u64,
    duration: Duration,
) -> PunchOutcome {
    let start = now();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut paths = PeerPaths::new(config, ChaCha20Rng::seed_from_u64(seed ^ 0x5eed), start);
    paths.set_local_candidates(start, candidates);
    let deadline = tokio::time::Instant::from_std(start + duration);
    let mut buf = vec![0u8; 2048];
    let mut time_to_direct = None;
    let mut direct_packets = 0u64;
    let mut relay_open = true;
    loop {
        while let Some(t) = paths.poll_transmit() {
            let Ok(sealed) = t.msg.seal(disco_key, peer_disco, &mut rng) else {
                continue;
            };
            match t.dst {
                Dst::Direct(addr) => {
                    direct_packets += 1;
                    let _ = sock.send_to(&sealed, addr).await;
                }
                Dst::Relay => relay.send(sealed).await,
            }
        }
        while let Some(e) = paths.poll_event() {
            let PathEvent::RouteChanged { to, .. } = e else {
                continue;
            };
            if matches!(to, Route::Direct(_)) && time_to_direct.is_none() {
                time_to_direct = Some(now().saturating_duration_since(start));
            }
        }
        let wake = paths
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .map_or(deadline, |w| w.min(deadline));
        tokio::select! {
            biased;
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else {
                    // A socket error (ICMP unreachable and the like) must not spin the loop.
                    tokio::time::sleep_until(wake).await;
                    continue;
                };
                if let Ok((sender, msg)) = Message::open(disco_key, &buf[..n]) {
                    if sender == *peer_disco {
                        match msg {
                            Message::Ping { tx_id, .. } => paths.handle_ping(now(), 0, from, tx_id),
                            Message::Pong { tx_id, .. } => { paths.handle_pong(now(), 0, from, tx_id); }
                            _ => {}
                        }
                    }
                }
            }
            m = relay.recv(), if relay_open => {
                let Some(sealed) = m else {
                    // The relay is gone (the peer finished): keep going on the direct path alone.
                    relay_open = false;
                    continue;
                };
                if let Ok((sender, Message::CallMeMaybe { endpoints })) = Message::open(disco_key, &sealed) {
                    if sender == *peer_disco {
                        paths.handle_call_me_maybe(now(), &endpoints);
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                paths.handle_timeout(now());
            }
        }
    }
    PunchOutcome {
        route: paths.route(),
        time_to_direct,
        direct_packets,
        attempts: paths.attempts().copied().collect(),
    }
}
