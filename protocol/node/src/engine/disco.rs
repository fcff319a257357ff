//! Disco: sealing and opening disco messages, answering pings and pongs, taking in
//! CallMeMaybe and NatInfo, and moving each peer's path machine's output to the engine's queues.

use std::net::SocketAddr;
use std::time::Instant;

use burrow_disco::Message;
use burrow_punch::{Dst, PathEvent, Route, SocketId};

use super::{relay_addr, Event, Node, PeerNat, Transmit};
use crate::nat::NatView;

impl Node {
    /// Seals `msg` for peer `i`; `None` when no box could be made with its disco key.
    pub(super) fn seal(&mut self, i: usize, msg: &Message) -> Option<Vec<u8>> {
        let bx = self.peers[i].disco_box.as_ref()?;
        Some(msg.seal_with(bx, &self.disco_public, &mut self.rng))
    }

    /// Opens a disco datagram from peer `i`; `None` when it does not authenticate.
    pub(super) fn open(&self, i: usize, datagram: &[u8]) -> Option<Message> {
        Message::open_with(self.peers[i].disco_box.as_ref()?, datagram).ok()
    }

    /// Sends a disco message to peer `i` over DERP, through its home region.
    pub(super) fn send_disco_relay(&mut self, i: usize, msg: &Message) {
        if let Some(payload) = self.seal(i, msg) {
            let p = &self.peers[i].config;
            self.queue(Transmit::Derp {
                region: p.home_region,
                dst: p.node_key,
                payload,
            });
        }
    }

    /// A disco message from peer `i` that came on one of our UDP sockets.
    pub(super) fn handle_direct_disco(
        &mut self,
        now: Instant,
        i: usize,
        socket: SocketId,
        from: SocketAddr,
        msg: Message,
    ) {
        // Disco from an address inside the tailnet came through our own tunnel (a peer that
        // advertised its tailnet address): a path there would carry WireGuard inside itself.
        if self.inside_tunnel(from) {
            return;
        }
        match msg {
            Message::Ping { tx_id, .. } => {
                // Replays, unacceptable sources and pings over the pong budget go unanswered.
                self.peers[i].paths.handle_ping(now, socket, from, tx_id);
            }
            // A path MTU probe's answer concerns the probe only.
            Message::Pong { tx_id, .. } if self.pmtu_pong(now, i, from, &tx_id) => {}
            Message::Pong { tx_id, .. }
                if !self.user_pong(now, &tx_id, Route::Direct(from), None)
                    && self.peers[i].paths.handle_pong(now, socket, from, tx_id) =>
            {
                self.peers[i].doubt.pong(now, from);
            }
            // CallMeMaybe and NatInfo only count over DERP (where the sender is authenticated
            // by its node key too).
            _ => {}
        }
        self.flush_paths(now, i);
    }

    /// A disco message from peer `i` that came over DERP (from its own node key).
    pub(super) fn handle_relayed_disco(&mut self, now: Instant, i: usize, msg: Message) {
        match msg {
            Message::CallMeMaybe { endpoints } => {
                let endpoints = self.outside_tunnel(&endpoints);
                self.peers[i].paths.handle_call_me_maybe(now, &endpoints);
                self.plan_birthday(now, i);
            }
            Message::NatInfo {
                mapping_varies,
                predictable,
                mapped,
            } => {
                self.peers[i].peer_nat = Some(PeerNat {
                    varies: mapping_varies,
                    predictable,
                    mapped,
                });
                let p = &mut self.peers[i];
                p.peer_mapped_since = if mapped {
                    p.peer_mapped_since.or(Some(now))
                } else {
                    None
                };
                self.plan_birthday(now, i);
                self.plan_prediction(now, i);
            }
            Message::PortPrediction { round, port } => {
                self.handle_port_prediction(now, i, round, port);
            }
            Message::AllocateUdpRelayEndpointRequest {
                client_disco,
                generation,
            } => self.handle_allocate_request(now, i, client_disco, generation),
            Message::AllocateUdpRelayEndpointResponse {
                generation,
                endpoint,
            } => self.handle_allocate_response(now, i, generation, endpoint),
            Message::CallMeMaybeVia(endpoint) => self.handle_call_me_maybe_via(now, i, endpoint),
            // A ping over DERP: answer over DERP (what `burrow ping` uses before a direct path),
            // unless its transaction ID was seen lately (a replay).
            Message::Ping { tx_id, .. } if self.peers[i].paths.admit_ping(now, tx_id) => {
                let pong = Message::Pong {
                    tx_id,
                    src: relay_addr(),
                };
                self.send_disco_relay(i, &pong);
            }
            Message::Pong { tx_id, .. } => {
                self.user_pong(now, &tx_id, Route::Relay, None);
            }
            _ => {}
        }
        self.flush_paths(now, i);
    }

    /// Seals a peer's queued disco messages and moves them to the engine's transmits.
    pub(super) fn send_path_transmits(&mut self, i: usize) {
        while let Some(t) = self.peers[i].paths.poll_transmit() {
            let Some(payload) = self.seal(i, &t.msg) else {
                continue;
            };
            match t.dst {
                Dst::Direct(dst) => {
                    self.peers[i].stats.disco_direct += 1;
                    self.queue(Transmit::Udp {
                        socket: t.socket,
                        dst,
                        payload,
                    });
                }
                Dst::Relay => {
                    let p = &self.peers[i].config;
                    self.queue(Transmit::Derp {
                        region: p.home_region,
                        dst: p.node_key,
                        payload,
                    });
                    // The peer needs our NAT kind with our candidates (an earlier NatInfo may
                    // have been dropped while it was not yet on DERP).
                    if let (Message::CallMeMaybe { .. }, Some(nat)) = (&t.msg, self.nat) {
                        self.send_nat_info(i, nat);
                    }
                }
            }
        }
    }

    /// Moves a peer's disco transmits and path events to the engine's queues.
    pub(super) fn flush_paths(&mut self, now: Instant, i: usize) {
        self.send_path_transmits(i);
        let peer = self.peers[i].config.node_key;
        while let Some(e) = self.peers[i].paths.poll_event() {
            match e {
                PathEvent::RouteChanged { from, to } => {
                    let p = &mut self.peers[i];
                    match to {
                        Route::Direct(addr) => {
                            if let Some(b) = p.prober.as_mut() {
                                b.succeeded(addr);
                            }
                            p.opening = None;
                            p.prediction = None;
                            p.parked_prediction = None;
                        }
                        // Back on DERP: a birthday search that found the old path starts over
                        // (the NAT may have forgotten every mapping).
                        Route::Relay => {
                            if p.prober.as_ref().is_some_and(|b| b.success().is_some()) {
                                p.prober = None;
                            }
                            // A direct path that died often means our own mapping changed (NAT
                            // rebinding, a new network): ask STUN again now, not in 20 s.
                            if self.stun.is_none() {
                                self.next_stun = self.next_stun.min(now);
                            }
                        }
                    }
                    if let Route::Direct(addr) = to {
                        self.pmtu_route_entered(now, i, addr);
                    }
                    self.events.push_back(Event::PathChanged { peer, from, to });
                }
                PathEvent::Attempt(attempt) => {
                    self.events.push_back(Event::Attempt { peer, attempt });
                }
            }
        }
        self.run_pmtu(now, i);
    }

    /// Whether `addr` is routed into the tunnel (`NodeConfig::tunnel_prefixes`): pinging it
    /// would go through WireGuard.
    pub(super) fn inside_tunnel(&self, addr: SocketAddr) -> bool {
        let ip = burrow_punch::canonical_remote(addr).ip();
        self.config.tunnel_prefixes.iter().any(|p| p.contains(&ip))
    }

    /// The endpoints a peer or the control plane offers, minus those inside the tunnel.
    pub(super) fn outside_tunnel(&self, endpoints: &[SocketAddr]) -> Vec<SocketAddr> {
        endpoints
            .iter()
            .copied()
            .filter(|a| !self.inside_tunnel(*a))
            .collect()
    }

    /// Reports a pong that answers a `Node::ping`; false when it answers none.
    pub(super) fn user_pong(
        &mut self,
        now: Instant,
        tx_id: &burrow_disco::TxId,
        via: Route,
        peer_relay: Option<burrow_wg::PublicKey>,
    ) -> bool {
        let Some((i, sent, _)) = self.user_pings.remove(tx_id) else {
            return false;
        };
        let peer = self.peers[i].config.node_key;
        self.events.push_back(Event::PingResult {
            peer,
            via,
            peer_relay,
            latency: now.saturating_duration_since(sent),
        });
        true
    }

    /// Tells peer `i` over DERP what our NAT does (it plans birthday probing from that).
    pub(super) fn send_nat_info(&mut self, i: usize, nat: NatView) {
        let msg = Message::NatInfo {
            mapping_varies: nat.mapping_varies,
            predictable: nat.delta.is_some(),
            mapped: self.has_public_mapping(),
        };
        self.send_disco_relay(i, &msg);
    }
}
