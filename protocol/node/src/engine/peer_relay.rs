//! Peer relays: UDP through a tailnet node, between direct and DERP on the path ladder (wire:
//! `burrow-relay`, Tailscale's peer-relay messages).
//!
//! - **Relay side** (`relay_host.rs`). With [`NodeConfig::relay_server`](super::NodeConfig) set, the engine runs a
//!   [`RelayServer`] on its own socket ([`RELAY_SOCKET`]). Allocation requests come over DERP
//!   from peers; the engine allocates only when the policy lets *both* clients use it
//!   ([`PeerRelayPolicy::clients`]): receiver-side enforcement, as for packets.
//! - **Client side.** A peer still on DERP after [`RELAY_AFTER`] (at once when the two NATs
//!   cannot meet directly) gets an allocation from each relay candidate
//!   ([`PeerRelayPolicy::relays`], at most [`MAX_RELAY_TRIES`]), told to the peer with
//!   CallMeMaybeVia; both sides bind and ping through each relay. The one with the lowest
//!   round trip through it — RTT(us→relay) + RTT(relay→peer) — carries the traffic, with both
//!   it and DERP used until it is trusted (no loss at the switch). A direct path that validates
//!   ends all of it; a relay that stops answering hands the traffic to the next one, or to DERP.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_disco::{Message, TxId, UdpRelayEndpoint};
use burrow_punch::{canonical_remote, is_acceptable_remote, Outcome, Route, SocketId, MAIN_SOCKET};
use burrow_relay::{
    decap, encap, BindingEvent, GeneveHeader, GeneveProtocol, RelayBinding, GENEVE_HEADER_LEN,
};
use burrow_wg::PublicKey;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::wireguard::{WgSource, DATA_STALL_AFTER};
use super::{Event, Node, NodeError, Transmit};
use crate::batch::Dest;

/// The socket the relay server listens on (the driver binds it on the configured port).
pub const RELAY_SOCKET: SocketId = u16::MAX;
/// A peer on DERP this long without a direct path gets relay candidates tried.
pub const RELAY_AFTER: Duration = Duration::from_secs(3);
/// Relays tried at once per peer.
pub const MAX_RELAY_TRIES: usize = 4;
/// An allocation unanswered this long is asked again…
const ALLOC_RETRY: Duration = Duration::from_secs(3);
/// …and given up after this.
const ALLOC_GIVE_UP: Duration = Duration::from_secs(10);
/// Pings through a relay not yet answered go this often.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Pings through a relay go this often once it answers…
const RELAY_HEARTBEAT: Duration = Duration::from_secs(2);
/// …and this often while data went through it lately (a dead relay is noticed sooner).
const RELAY_ACTIVE_HEARTBEAT: Duration = Duration::from_secs(1);
/// Pings unanswered in a row before a relay path is dead.
const RELAY_MISSED_BEFORE_DEAD: u32 = 3;
/// A relay path that never answered binds again this many times before it is dead: the relay
/// acknowledges no Answer, so a lost one (or one refused after a replayed Bind) looks bound.
const MAX_REBINDS: u32 = 2;
/// A ping unanswered for five round trips is missed, but never sooner than this…
const RELAY_PONG_TIMEOUT: Duration = Duration::from_secs(1);
/// …nor later than this.
const RELAY_MAX_PONG_TIMEOUT: Duration = Duration::from_secs(5);
/// Once a direct path validates, the relay paths still take what arrives through them this
/// long: the peer may validate direct a little later and send through the relay until then.
const RELAY_LINGER: Duration = Duration::from_secs(5);
/// A relay that lost our data (sent through it, unanswered for [`DATA_STALL_AFTER`]) is not
/// tried again for this peer this long, though its pings may come back.
const STALL_PENALTY: Duration = Duration::from_secs(300);
/// After every relay failed, discovery waits this long before trying again.
const REDISCOVER_AFTER: Duration = Duration::from_secs(10);
/// A relay path replaces the one in use only when its round trip is lower by this share…
const SWITCH_MARGIN: f64 = 0.2;
/// …and by at least this much.
const SWITCH_MIN: Duration = Duration::from_millis(5);
/// A peer's CallMeMaybeVia restarts a relay's binding at most this often: each restart sends
/// a burst of Binds at once, so offers with ever newer Lamport IDs must not multiply them.
const VIA_RESTART_INTERVAL: Duration = Duration::from_secs(1);
/// Relay addresses bound to per endpoint (the first ones: static and public before local);
/// each gets a Bind every second while binding, so a long list must not multiply them.
const MAX_RELAY_BIND_ADDRS: usize = 8;

/// Who relays for whom, as the control plane's policy says (node keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerRelayPolicy {
    /// Peers that relay for us: our relay candidates.
    pub relays: BTreeSet<PublicKey>,
    /// Peers we relay for (both clients of an allocation must be among them).
    pub clients: BTreeSet<PublicKey>,
}

/// How one relay is doing for one peer (explanations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Allocation asked, no answer yet.
    Allocating,
    /// Binding to the endpoint.
    Binding,
    /// Bound; pinging the peer through it.
    Probing,
    /// The peer answers through it.
    Alive,
    /// It failed (no allocation, no challenge, or pings unanswered).
    Dead,
}

/// One relay considered for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayReport {
    /// The relay node's key.
    pub relay: PublicKey,
    /// Where it stands.
    pub state: RelayState,
    /// The relay address and VNI bound, if any.
    pub path: Option<(SocketAddr, u32)>,
    /// Round trip through it to the peer: RTT(us→relay) + RTT(relay→peer).
    pub rtt: Option<Duration>,
    /// Our own round trip to the relay node (its direct path's), when known: the first term.
    pub our_leg: Option<Duration>,
    /// Whether it carries the traffic.
    pub in_use: bool,
}

struct RelayTry {
    relay: PublicKey,
    generation: u32,
    /// When its binding started (a peer's CallMeMaybeVia restarts it no sooner than
    /// [`VIA_RESTART_INTERVAL`] after).
    binding_since: Option<Instant>,
    asked: Option<(Instant, Instant)>,
    endpoint: Option<UdpRelayEndpoint>,
    binding: Option<RelayBinding>,
    path: Option<(SocketAddr, u32)>,
    pings: VecDeque<(TxId, Instant)>,
    next_ping: Instant,
    last_pong: Option<Instant>,
    rtt: Option<Duration>,
    missed: u32,
    /// Handshakes started again on this path (see [`MAX_REBINDS`]).
    rebinds: u32,
    dead: bool,
}

impl RelayTry {
    fn new(relay: PublicKey, generation: u32, now: Instant) -> Self {
        RelayTry {
            relay,
            generation,
            binding_since: None,
            asked: None,
            endpoint: None,
            binding: None,
            path: None,
            pings: VecDeque::new(),
            next_ping: now,
            last_pong: None,
            rtt: None,
            missed: 0,
            rebinds: 0,
            dead: false,
        }
    }

    fn pong_timeout(&self) -> Duration {
        self.rtt
            .map_or(RELAY_PONG_TIMEOUT, |r| r * 5)
            .clamp(RELAY_PONG_TIMEOUT, RELAY_MAX_PONG_TIMEOUT)
    }

    fn alive(&self) -> bool {
        !self.dead && self.path.is_some() && self.last_pong.is_some()
    }

    fn state(&self) -> RelayState {
        match () {
            _ if self.dead => RelayState::Dead,
            _ if self.alive() => RelayState::Alive,
            _ if self.path.is_some() => RelayState::Probing,
            _ if self.binding.is_some() => RelayState::Binding,
            _ => RelayState::Allocating,
        }
    }
}

/// A peer's relay paths.
#[derive(Default)]
pub(super) struct RelayPaths {
    tries: Vec<RelayTry>,
    /// The relay carrying the traffic.
    chosen: Option<PublicKey>,
    /// When the chosen relay took over (trusted after a fresh pong since).
    chosen_at: Option<Instant>,
    /// Since when the peer has been on DERP.
    derp_since: Option<Instant>,
    /// No discovery before this.
    not_before: Option<Instant>,
    /// When WireGuard last went through a relay.
    last_data: Option<Instant>,
    /// Since when the peer has been direct (the relay paths linger [`RELAY_LINGER`]).
    direct_since: Option<Instant>,
    /// Since when data we sent through the chosen relay has had no answer from the peer.
    first_unanswered: Option<Instant>,
    /// Relays that lost our data, until when they are not tried.
    stalled: BTreeMap<PublicKey, Instant>,
}

impl RelayPaths {
    /// Entries held (relays tried).
    pub(super) fn footprint(&self) -> usize {
        self.tries.len()
    }

    /// Something authenticated came from the peer: data sent through the relay is answered.
    pub(super) fn note_answered(&mut self) {
        self.first_unanswered = None;
    }

    fn is_stalled(&self, relay: &PublicKey, now: Instant) -> bool {
        self.stalled.get(relay).is_some_and(|until| now < *until)
    }

    fn chosen_try(&self) -> Option<&RelayTry> {
        let c = self.chosen?;
        self.tries.iter().find(|t| t.relay == c)
    }
}

impl Node {
    /// Sets who relays for us and for whom we relay (from the control plane's policy).
    pub fn set_peer_relay_policy(&mut self, policy: PeerRelayPolicy) {
        // A relay that was not a candidate before: peers waiting out a failed discovery try
        // again at once (with every try dead, the next would otherwise wait 10 s).
        let new: Vec<PublicKey> = policy
            .relays
            .iter()
            .filter(|r| !self.relay_policy.relays.contains(r))
            .copied()
            .collect();
        self.relay_policy = policy;
        if !new.is_empty() {
            let now = self.last_now;
            for i in 0..self.peers.len() {
                let r = &mut self.peers[i].relays;
                if r.tries.is_empty() {
                    r.not_before = None;
                } else if r.derp_since.is_some() {
                    // A discovery under way: the new relay is asked at once too.
                    self.ask_relays(now, i, &new);
                }
            }
        }
        self.enforce_relay_policy();
    }

    /// The relay paths considered for `peer`, as of the latest input or timer.
    pub fn peer_relays(&self, peer: &PublicKey) -> Vec<RelayReport> {
        let Some(&i) = self.by_node.get(peer) else {
            return Vec::new();
        };
        let r = &self.peers[i].relays;
        r.tries
            .iter()
            .map(|t| RelayReport {
                relay: t.relay,
                state: t.state(),
                path: t.path,
                rtt: t.rtt,
                our_leg: self.direct_rtt(&t.relay),
                in_use: r.chosen == Some(t.relay) && t.alive(),
            })
            .collect()
    }

    /// The relay carrying `peer`'s traffic now, if any.
    pub fn peer_relay(&self, peer: &PublicKey) -> Option<RelayReport> {
        self.peer_relays(peer).into_iter().find(|r| r.in_use)
    }

    /// Our round trip to node `key` on its direct path, if it has one.
    fn direct_rtt(&self, key: &PublicKey) -> Option<Duration> {
        let p = &self.peers[*self.by_node.get(key)?];
        let Route::Direct(addr) = p.paths.route() else {
            return None;
        };
        p.paths
            .attempts()
            .filter_map(|a| match a.outcome {
                Outcome::Validated(d) if a.addr == addr => Some(d),
                _ => None,
            })
            .last()
    }

    /// Relay node `j` answered one of our allocations.
    pub(super) fn handle_allocate_response(
        &mut self,
        now: Instant,
        j: usize,
        generation: u32,
        endpoint: UdpRelayEndpoint,
    ) {
        let relay = self.peers[j].config.node_key;
        let found = (0..self.peers.len()).find_map(|i| {
            let t = self.peers[i].relays.tries.iter().position(|t| {
                t.relay == relay && t.generation == generation && t.endpoint.is_none() && !t.dead
            })?;
            Some((i, t))
        });
        let Some((i, t)) = found else {
            return;
        };
        let mut pair = [self.disco_public, self.peers[i].config.disco_key];
        pair.sort();
        if endpoint.client_disco != pair {
            return;
        }
        // The relay node's own addresses only, as for a peer's CallMeMaybeVia: a relay cannot
        // point our Binds at a third party either. Others (an address the control plane has
        // not seen yet) are left out, not the whole endpoint.
        let mut endpoint = endpoint;
        let known = self.known_ips(j);
        endpoint
            .addrs
            .retain(|a| known.contains(&canonical_remote(*a).ip()));
        if endpoint.addrs.is_empty() {
            self.relay_refused += 1;
            return;
        }
        self.send_disco_relay(i, &Message::CallMeMaybeVia(endpoint.clone()));
        self.start_binding(now, i, t, endpoint);
    }

    /// Peer `i` allocated a relay endpoint for us both: bind to it too, if it is on one of our
    /// relay candidates' addresses (a peer cannot point our Binds anywhere else).
    pub(super) fn handle_call_me_maybe_via(
        &mut self,
        now: Instant,
        i: usize,
        endpoint: UdpRelayEndpoint,
    ) {
        let pair_ok = endpoint.client_disco.contains(&self.disco_public)
            && endpoint
                .client_disco
                .contains(&self.peers[i].config.disco_key);
        let peer_key = self.peers[i].config.node_key;
        // The relay candidate most of the offer's addresses belong to; only its addresses are
        // kept (a peer cannot point our Binds at anyone else).
        let relay = self
            .relay_policy
            .relays
            .iter()
            .copied()
            .filter(|r| *r != peer_key)
            .filter_map(|r| {
                let known = self.known_ips(*self.by_node.get(&r)?);
                let n = endpoint
                    .addrs
                    .iter()
                    .filter(|a| known.contains(&canonical_remote(**a).ip()))
                    .count();
                (n > 0).then_some((n, r, known))
            })
            .max_by_key(|(n, r, _)| (*n, std::cmp::Reverse(*r)));
        let (true, Some((_, relay, known))) = (pair_ok, relay) else {
            self.relay_refused += 1;
            return;
        };
        let mut endpoint = endpoint;
        endpoint
            .addrs
            .retain(|a| known.contains(&canonical_remote(*a).ip()));
        if self.peers[i].relays.is_stalled(&relay, now) {
            self.relay_refused += 1;
            return;
        }
        let r = &mut self.peers[i].relays;
        let t = match r.tries.iter().position(|t| t.relay == relay) {
            Some(t) => {
                let same = r.tries[t].endpoint.as_ref().is_some_and(|e| {
                    e.server_disco == endpoint.server_disco
                        && (e.vni == endpoint.vni || e.lamport_id >= endpoint.lamport_id)
                });
                if same && !r.tries[t].dead {
                    return;
                }
                // Each restart Binds at once: paced, however many newer offers come.
                if r.tries[t]
                    .binding_since
                    .is_some_and(|b| now < b + VIA_RESTART_INTERVAL)
                {
                    self.relay_refused += 1;
                    return;
                }
                let generation = r.tries[t].generation;
                r.tries[t] = RelayTry::new(relay, generation, now);
                t
            }
            None if r.tries.len() < MAX_RELAY_TRIES => {
                let generation = nonzero(&mut self.rng);
                let r = &mut self.peers[i].relays;
                r.tries.push(RelayTry::new(relay, generation, now));
                r.tries.len() - 1
            }
            None => return,
        };
        self.start_binding(now, i, t, endpoint);
    }

    /// The IPs node `j` is known at: its control-plane endpoints and its candidates.
    fn known_ips(&self, j: usize) -> BTreeSet<std::net::IpAddr> {
        let p = &self.peers[j];
        p.config
            .endpoints
            .iter()
            .map(|a| canonical_remote(*a).ip())
            .chain(p.paths.remote_candidates().map(|c| c.addr.ip()))
            .collect()
    }

    fn start_binding(&mut self, now: Instant, i: usize, t: usize, mut endpoint: UdpRelayEndpoint) {
        endpoint
            .addrs
            .retain(|a| is_acceptable_remote(canonical_remote(*a)) && !self.inside_tunnel(*a));
        endpoint.addrs.truncate(MAX_RELAY_BIND_ADDRS);
        let peer = self.peers[i].config.disco_key;
        let generation = nonzero(&mut self.rng);
        let rng = ChaCha20Rng::seed_from_u64(self.rng.next_u64());
        let tr = &mut self.peers[i].relays.tries[t];
        tr.endpoint = Some(endpoint.clone());
        tr.binding_since = Some(now);
        match RelayBinding::new(now, endpoint, &self.config.disco_key, peer, generation, rng) {
            Ok(b) => tr.binding = Some(b),
            Err(_) => tr.dead = true,
        }
        self.drain_binding(now, i, t);
    }

    /// Sends a binding's datagrams and takes its events.
    fn drain_binding(&mut self, now: Instant, i: usize, t: usize) {
        let mut out = Vec::new();
        let tr = &mut self.peers[i].relays.tries[t];
        let Some(b) = tr.binding.as_mut() else {
            return;
        };
        while let Some(x) = b.poll_transmit() {
            out.push(x);
        }
        while let Some(e) = b.poll_event() {
            match e {
                BindingEvent::Bound { relay_addr, vni } => {
                    tr.path = Some((canonical_remote(relay_addr), vni));
                    tr.next_ping = now;
                }
                BindingEvent::GaveUp { .. } => tr.dead = true,
            }
        }
        for x in out {
            self.queue(Transmit::Udp {
                socket: MAIN_SOCKET,
                dst: x.dst,
                payload: x.payload,
            });
        }
    }

    /// The peer-relay part of `handle_timeout` for peer `i`.
    pub(super) fn run_peer_relay(&mut self, now: Instant, i: usize) {
        if matches!(self.peers[i].paths.route(), Route::Direct(_)) {
            // A direct path validated: relays carry nothing from us at once, and are forgotten
            // after a moment (the peer may still send through one until it validates direct
            // too; what arrives meanwhile is taken). Their sessions idle out.
            let r = &mut self.peers[i].relays;
            if r.chosen.is_some() {
                self.set_chosen(now, i, None);
            }
            let r = &mut self.peers[i].relays;
            let since = *r.direct_since.get_or_insert(now);
            if now >= since + RELAY_LINGER {
                r.tries.clear();
            }
            r.derp_since = None;
            return;
        }
        self.peers[i].relays.direct_since = None;
        // Data through the chosen relay unanswered as long as a direct path may go unanswered:
        // the relay loses it (its pings may still pass). Left, and not tried again for a while.
        let r = &mut self.peers[i].relays;
        if r.first_unanswered
            .is_some_and(|t| now.saturating_duration_since(t) >= DATA_STALL_AFTER)
        {
            r.first_unanswered = None;
            if let Some(c) = r.chosen {
                r.stalled.insert(c, now + STALL_PENALTY);
                if let Some(t) = r.tries.iter_mut().find(|t| t.relay == c) {
                    t.dead = true;
                }
            }
        }
        r.stalled.retain(|_, until| now < *until);
        let since = *self.peers[i].relays.derp_since.get_or_insert(now);
        let r = &self.peers[i].relays;
        let start = if self.hopeless(i) {
            since
        } else {
            since + RELAY_AFTER
        };
        if r.tries.is_empty() && now >= start && r.not_before.is_none_or(|t| now >= t) {
            self.start_discovery(now, i);
        }
        for t in 0..self.peers[i].relays.tries.len() {
            self.run_try(now, i, t);
        }
        self.choose_relay(now, i);
        // Every relay failed: try again later.
        let r = &mut self.peers[i].relays;
        if !r.tries.is_empty() && r.tries.iter().all(|t| t.dead) {
            r.tries.clear();
            r.not_before = Some(now + REDISCOVER_AFTER);
        }
    }

    /// The two NATs cannot meet directly (both map per destination, neither predictably, no
    /// port mapping): relays are tried at once.
    fn hopeless(&self, i: usize) -> bool {
        let (Some(me), Some(peer)) = (self.nat, self.peers[i].peer_nat) else {
            return false;
        };
        let me_seq = me.delta.is_some();
        me.mapping_varies
            && peer.varies
            && !(me_seq && peer.predictable)
            && !peer.mapped
            && !self.has_public_mapping()
    }

    fn start_discovery(&mut self, now: Instant, i: usize) {
        let peer = self.peers[i].config.node_key;
        let me = self.device.public_key();
        let mut candidates: Vec<(Duration, PublicKey)> = self
            .relay_policy
            .relays
            .iter()
            .filter(|r| **r != peer && **r != me && self.by_node.contains_key(r))
            .filter(|r| !self.peers[i].relays.is_stalled(r, now))
            .map(|r| (self.direct_rtt(r).unwrap_or(Duration::MAX), *r))
            .collect();
        candidates.sort();
        candidates.truncate(MAX_RELAY_TRIES);
        if candidates.is_empty() {
            self.peers[i].relays.not_before = Some(now + REDISCOVER_AFTER);
            return;
        }
        let relays: Vec<PublicKey> = candidates.into_iter().map(|(_, r)| r).collect();
        self.ask_relays(now, i, &relays);
    }

    /// Asks each of `relays` (not tried yet for peer `i`, within `MAX_RELAY_TRIES`) to
    /// allocate an endpoint for the pair.
    fn ask_relays(&mut self, now: Instant, i: usize, relays: &[PublicKey]) {
        let peer = self.peers[i].config.node_key;
        let me = self.device.public_key();
        let pair = [self.disco_public, self.peers[i].config.disco_key];
        for &relay in relays {
            let r = &self.peers[i].relays;
            // A dead try of the same relay is replaced, so one relay has one try.
            let slot = r.tries.iter().position(|t| t.relay == relay);
            if relay == peer
                || relay == me
                || !self.by_node.contains_key(&relay)
                || slot.is_some_and(|s| !r.tries[s].dead)
                || (slot.is_none() && r.tries.len() >= MAX_RELAY_TRIES)
                || r.is_stalled(&relay, now)
            {
                continue;
            }
            let generation = nonzero(&mut self.rng);
            let mut t = RelayTry::new(relay, generation, now);
            t.asked = Some((now, now));
            let tries = &mut self.peers[i].relays.tries;
            match slot {
                Some(s) => tries[s] = t,
                None => tries.push(t),
            }
            let j = self.by_node[&relay];
            let msg = Message::AllocateUdpRelayEndpointRequest {
                client_disco: pair,
                generation,
            };
            self.send_disco_relay(j, &msg);
        }
    }

    fn run_try(&mut self, now: Instant, i: usize, t: usize) {
        let peer_box_ok = self.peers[i].disco_box.is_some();
        let tr = &mut self.peers[i].relays.tries[t];
        if tr.dead {
            return;
        }
        // The allocation: asked again, or given up.
        if tr.endpoint.is_none() {
            if let Some((first, last)) = tr.asked {
                if now >= first + ALLOC_GIVE_UP {
                    tr.dead = true;
                } else if now >= last + ALLOC_RETRY {
                    tr.asked = Some((first, now));
                    let (relay, generation) = (tr.relay, tr.generation);
                    if let Some(&j) = self.by_node.get(&relay) {
                        let pair = [self.disco_public, self.peers[i].config.disco_key];
                        let msg = Message::AllocateUdpRelayEndpointRequest {
                            client_disco: pair,
                            generation,
                        };
                        self.send_disco_relay(j, &msg);
                    }
                }
            }
            return;
        }
        if let Some(b) = tr.binding.as_mut() {
            if b.poll_timeout().is_some_and(|x| x <= now) {
                b.handle_timeout(now);
            }
        }
        self.drain_binding(now, i, t);
        let tr = &mut self.peers[i].relays.tries[t];
        let Some((addr, vni)) = tr.path else {
            return;
        };
        // Missed pongs.
        let timeout = tr.pong_timeout();
        while tr
            .pings
            .front()
            .is_some_and(|(_, sent)| now >= *sent + timeout)
        {
            tr.pings.pop_front();
            tr.missed += 1;
        }
        if tr.missed >= RELAY_MISSED_BEFORE_DEAD {
            if tr.last_pong.is_none() && tr.rebinds < MAX_REBINDS {
                // Never answered through it: our Answer may not have bound us. Bind again.
                let generation = nonzero(&mut self.rng);
                let tr = &mut self.peers[i].relays.tries[t];
                if let Some(b) = tr.binding.as_mut() {
                    if b.rebind(now, generation).is_ok() {
                        tr.rebinds += 1;
                        tr.path = None;
                        tr.missed = 0;
                        tr.pings.clear();
                        self.drain_binding(now, i, t);
                        return;
                    }
                }
            }
            self.peers[i].relays.tries[t].dead = true;
            return;
        }
        if now < tr.next_ping || !peer_box_ok {
            return;
        }
        let active = self.peers[i]
            .relays
            .last_data
            .is_some_and(|d| now.saturating_duration_since(d) < RELAY_HEARTBEAT);
        let tr = &mut self.peers[i].relays.tries[t];
        let interval = match (tr.last_pong, active) {
            (None, _) => PROBE_INTERVAL,
            (Some(_), true) => RELAY_ACTIVE_HEARTBEAT,
            (Some(_), false) => RELAY_HEARTBEAT,
        };
        tr.next_ping = now + interval;
        let mut tx_id = [0u8; 12];
        self.rng.fill_bytes(&mut tx_id);
        let tr = &mut self.peers[i].relays.tries[t];
        tr.pings.push_back((tx_id, now));
        if tr.pings.len() > 8 {
            tr.pings.pop_front();
        }
        let ping = Message::Ping {
            tx_id,
            node_key: Some(self.device.public_key()),
            padding: 0,
        };
        if let Some(sealed) = self.seal(i, &ping) {
            self.send_via_relay(addr, vni, GeneveProtocol::Disco, &sealed);
        }
    }

    /// Sends a sealed disco message to the relay at `addr` for endpoint `vni`.
    pub(super) fn send_disco_via_relay(&mut self, addr: SocketAddr, vni: u32, sealed: &[u8]) {
        self.send_via_relay(addr, vni, GeneveProtocol::Disco, sealed);
    }

    /// Sends `payload` to the relay at `addr` for endpoint `vni`, Geneve-framed.
    fn send_via_relay(
        &mut self,
        addr: SocketAddr,
        vni: u32,
        proto: GeneveProtocol,
        payload: &[u8],
    ) {
        let dest = Dest::Udp {
            socket: MAIN_SOCKET,
            dst: addr,
        };
        let max = GENEVE_HEADER_LEN + payload.len();
        self.transmits
            .push_with(dest, max, |out| encap(vni, proto, payload, out).ok());
    }

    /// Picks the relay with the lowest round trip among those alive, keeping the one in use
    /// unless another is clearly better.
    fn choose_relay(&mut self, now: Instant, i: usize) {
        let r = &self.peers[i].relays;
        let best = r
            .tries
            .iter()
            .filter(|t| t.alive())
            .min_by_key(|t| (t.rtt.unwrap_or(Duration::MAX), t.relay))
            .map(|t| (t.relay, t.rtt.unwrap_or(Duration::MAX)));
        let current = r
            .chosen_try()
            .filter(|t| t.alive())
            .map(|t| (t.relay, t.rtt.unwrap_or(Duration::MAX)));
        let next = match (current, best) {
            (_, None) => None,
            (None, Some(b)) => Some(b.0),
            (Some(c), Some(b)) => {
                let better = b.1 + SWITCH_MIN < c.1
                    && b.1.as_secs_f64() < c.1.as_secs_f64() * (1.0 - SWITCH_MARGIN);
                Some(if better { b.0 } else { c.0 })
            }
        };
        if next != self.peers[i].relays.chosen {
            self.set_chosen(now, i, next);
        }
    }

    fn set_chosen(&mut self, now: Instant, i: usize, relay: Option<PublicKey>) {
        let r = &mut self.peers[i].relays;
        r.chosen = relay;
        r.chosen_at = relay.map(|_| now);
        r.first_unanswered = None;
        let rtt = r.chosen_try().and_then(|t| t.rtt);
        let peer = self.peers[i].config.node_key;
        self.events
            .push_back(Event::PeerRelayChanged { peer, relay, rtt });
    }

    /// Where peer `i`'s WireGuard goes through a relay now: (relay address, VNI, trusted). A
    /// relay is trusted once a pong came back after it took over and none is missed since.
    pub(super) fn relay_route(&self, now: Instant, i: usize) -> Option<(SocketAddr, u32, bool)> {
        let r = &self.peers[i].relays;
        let t = r.chosen_try().filter(|t| t.alive())?;
        let (addr, vni) = t.path?;
        let fresh = t
            .last_pong
            .is_some_and(|p| now.saturating_duration_since(p) <= self.config.trust);
        let since_switch = r
            .chosen_at
            .is_some_and(|c| t.last_pong.is_some_and(|p| p > c));
        Some((addr, vni, fresh && since_switch && t.missed == 0))
    }

    /// Notes that peer `i`'s data goes through a relay now (heartbeats quicken).
    pub(super) fn note_relay_data(&mut self, now: Instant, i: usize) {
        let r = &mut self.peers[i].relays;
        r.last_data = Some(now);
        r.first_unanswered.get_or_insert(now);
    }

    /// Sends a WireGuard datagram to peer `i` through its relay.
    pub(super) fn send_wg_via_relay(&mut self, addr: SocketAddr, vni: u32, datagram: &[u8]) {
        self.send_via_relay(addr, vni, GeneveProtocol::WireGuard, datagram);
    }

    /// A Geneve datagram on one of our client sockets: a Challenge for a binding, or disco or
    /// WireGuard through a relay path of ours.
    pub(super) fn handle_geneve(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<(), NodeError> {
        let from = canonical_remote(from);
        let Ok((h, inner)) = decap(data) else {
            return Err(NodeError::Unrecognised(from));
        };
        if h.control {
            return self.handle_challenge(now, from, h, data);
        }
        // Only through a relay path we bound: (relay address, VNI).
        let found = (0..self.peers.len()).find_map(|i| {
            let t = self.peers[i]
                .relays
                .tries
                .iter()
                .position(|t| t.path == Some((from, h.vni)))?;
            Some((i, t))
        });
        let Some((i, t)) = found else {
            return Err(NodeError::Unrecognised(from));
        };
        match h.protocol {
            GeneveProtocol::Disco => {
                if burrow_disco::sender(inner) != Some(self.peers[i].config.disco_key) {
                    return Err(NodeError::Unrecognised(from));
                }
                let Some(msg) = self.open(i, inner) else {
                    return Err(NodeError::Unrecognised(from));
                };
                match msg {
                    // A relay we left (dead) answers no pings for us, so the peer leaves it too.
                    Message::Ping { .. } if self.peers[i].relays.tries[t].dead => {}
                    Message::Ping { tx_id, .. } if self.peers[i].paths.admit_ping(now, tx_id) => {
                        let pong = Message::Pong { tx_id, src: from };
                        if let Some(sealed) = self.seal(i, &pong) {
                            self.send_via_relay(from, h.vni, GeneveProtocol::Disco, &sealed);
                        }
                        // The peer is bound too: ping back now if we have no answer yet (an
                        // earlier ping may have reached the relay before the peer bound).
                        // (At most one per ping of the peer's, which come once a second.)
                        let tr = &mut self.peers[i].relays.tries[t];
                        if tr.last_pong.is_none() {
                            tr.next_ping = now;
                            self.run_try(now, i, t);
                        }
                    }
                    Message::Pong { tx_id, .. }
                        if self.peers[i].relays.tries[t]
                            .pings
                            .iter()
                            .all(|(id, _)| *id != tx_id) =>
                    {
                        // Not a probe of this relay: perhaps the answer to `burrow ping`.
                        let relay = self.peers[i].relays.tries[t].relay;
                        self.user_pong(now, &tx_id, Route::Relay, Some(relay));
                    }
                    Message::Pong { tx_id, .. } => {
                        let tr = &mut self.peers[i].relays.tries[t];
                        if let Some(k) = tr.pings.iter().position(|(id, _)| *id == tx_id) {
                            let (_, sent) = tr.pings.remove(k).expect("present");
                            let rtt = now.saturating_duration_since(sent);
                            tr.rtt = Some(match tr.rtt {
                                // A smoothed round trip (RFC 6298's 1/8 gain).
                                Some(old) => (old * 7 + rtt) / 8,
                                None => rtt,
                            });
                            tr.last_pong = Some(now);
                            tr.missed = 0;
                            // Older unanswered pings were answered by this one's path too.
                            tr.pings.retain(|(_, s)| *s > sent);
                            self.choose_relay(now, i);
                        }
                    }
                    _ => {}
                }
                let _ = socket;
                Ok(())
            }
            GeneveProtocol::WireGuard => {
                self.handle_wg(now, inner, WgSource::PeerRelay(from, h.vni))
            }
        }
    }

    fn handle_challenge(
        &mut self,
        now: Instant,
        from: SocketAddr,
        h: GeneveHeader,
        data: &[u8],
    ) -> Result<(), NodeError> {
        for i in 0..self.peers.len() {
            for t in 0..self.peers[i].relays.tries.len() {
                let tr = &mut self.peers[i].relays.tries[t];
                let matches = tr.endpoint.as_ref().is_some_and(|e| e.vni == h.vni);
                let Some(b) = tr.binding.as_mut().filter(|_| matches) else {
                    continue;
                };
                if b.handle_input(now, from, data).is_ok() {
                    self.drain_binding(now, i, t);
                    return Ok(());
                }
            }
        }
        Err(NodeError::Unrecognised(from))
    }

    /// When the peer-relay machinery of peer `i` next needs `handle_timeout`.
    pub(super) fn poll_relay_timeout(&self, i: usize) -> Option<Instant> {
        let r = &self.peers[i].relays;
        if matches!(self.peers[i].paths.route(), Route::Direct(_)) {
            let forget = r.direct_since.map_or(self.last_now, |d| d + RELAY_LINGER);
            return (!r.tries.is_empty()).then_some(forget);
        }
        let discovery = if r.tries.is_empty() && !self.relay_policy.relays.is_empty() {
            let since = r.derp_since.unwrap_or(self.last_now);
            let start = if self.hopeless(i) {
                since
            } else {
                since + RELAY_AFTER
            };
            Some(r.not_before.map_or(start, |n| n.max(start)))
        } else {
            None
        };
        let tries = r.tries.iter().filter(|t| !t.dead).flat_map(|t| {
            let alloc = match (t.endpoint.is_none(), t.asked) {
                (true, Some((first, last))) => {
                    Some((last + ALLOC_RETRY).min(first + ALLOC_GIVE_UP))
                }
                _ => None,
            };
            let binding = t.binding.as_ref().and_then(|b| b.poll_timeout());
            let ping = t.path.map(|_| t.next_ping);
            let pong = t.pings.front().map(|(_, s)| *s + t.pong_timeout());
            [alloc, binding, ping, pong]
        });
        let stall = r
            .chosen
            .and(r.first_unanswered)
            .map(|t| t + DATA_STALL_AFTER);
        discovery
            .into_iter()
            .chain(tries.flatten())
            .chain(stall)
            .min()
    }
}

/// A random nonzero u32 (handshake generations are never 0).
fn nonzero(rng: &mut ChaCha20Rng) -> u32 {
    rng.next_u32().max(1)
}
