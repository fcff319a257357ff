//! The relay server: allocates endpoints for pairs of disco keys, binds each client's address
//! through a stateless return-routability handshake, and forwards Geneve datagrams between the
//! two bound addresses, byte for byte, within budgets.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use blake2::digest::consts::U32;
use blake2::digest::{KeyInit, Mac, Update};
use blake2::Blake2sMac;
use burrow_disco::{BindBody, BoxKey, DiscoError, Message, UdpRelayEndpoint};
use burrow_wg::{PrivateKey, PublicKey};
use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

use crate::budget::Bucket;
use crate::geneve::{control_frame, GeneveHeader, GeneveProtocol, MAX_VNI};
use crate::Transmit;

mod config;
mod report;

pub use config::*;
pub use report::*;

const MAC_DOMAIN: &[u8] = b"burrow relay bind v1";

struct Leg {
    bound: Option<SocketAddr>,
    last_seen: Instant,
    in_progress: u32,
    packets_budget: Bucket,
    bytes_budget: Bucket,
    packets: u64,
    bytes: u64,
}

struct Session {
    pair: [PublicKey; 2],
    boxes: [BoxKey; 2],
    requester: PublicKey,
    lamport_id: u64,
    allocated_at: Instant,
    legs: [Leg; 2],
    binds: Bucket,
    packets_budget: Bucket,
    bytes_budget: Bucket,
}

impl Session {
    fn open(&self) -> bool {
        self.legs.iter().all(|l| l.bound.is_some())
    }

    /// When this endpoint closes unless something happens.
    fn deadline(&self, config: &RelayConfig) -> Instant {
        if self.open() {
            self.legs[0].last_seen.min(self.legs[1].last_seen) + config.steady_state_lifetime
        } else {
            self.allocated_at + config.bind_lifetime
        }
    }
}

/// The sans-IO relay server. Feed it datagrams from its relay socket and the clock; drain
/// Challenges from [`poll_transmit`](Self::poll_transmit); forward what
/// [`handle_input`](Self::handle_input) says to forward.
pub struct RelayServer {
    config: RelayConfig,
    rng: ChaCha20Rng,
    key: PrivateKey,
    public: PublicKey,
    secret: [u8; 32],
    previous_secret: [u8; 32],
    next_rotation: Instant,
    sessions: BTreeMap<u32, Session>,
    by_pair: BTreeMap<[PublicKey; 2], u32>,
    per_requester: BTreeMap<PublicKey, usize>,
    next_vni: u32,
    lamport: u64,
    sources: BTreeMap<IpAddr, Bucket>,
    last_source_prune: Option<Instant>,
    challenges_total: Bucket,
    next_deadline: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<RelayEvent>,
    stats: RelayStats,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("server_disco", &self.public)
            .field("sessions", &self.sessions.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl RelayServer {
    /// Entries the server holds (sessions, pair and requester indices, per-source buckets,
    /// transmits and events waiting to be polled): a soak checks that it stays bounded.
    pub fn footprint(&self) -> usize {
        self.sessions.len()
            + self.by_pair.len()
            + self.per_requester.len()
            + self.sources.len()
            + self.transmits.len()
            + self.events.len()
    }

    /// A server with a fresh disco key pair and MAC secret drawn from `rng` (separate from
    /// its node's disco key: clients learn it from the allocation).
    pub fn new(now: Instant, mut config: RelayConfig, mut rng: ChaCha20Rng) -> Self {
        // A zero rotation period would make every deadline "now", forever.
        config.secret_rotation = config.secret_rotation.max(Duration::from_secs(1));
        let key = PrivateKey::generate(&mut rng);
        let mut secret = [0; 32];
        let mut previous_secret = [0; 32];
        rng.fill_bytes(&mut secret);
        rng.fill_bytes(&mut previous_secret);
        let challenges_total = Bucket::new(config.limits.challenges_total, now);
        RelayServer {
            public: key.public_key(),
            key,
            rng,
            secret,
            previous_secret,
            next_rotation: now + config.secret_rotation,
            sessions: BTreeMap::new(),
            by_pair: BTreeMap::new(),
            per_requester: BTreeMap::new(),
            next_vni: 1,
            lamport: 0,
            sources: BTreeMap::new(),
            last_source_prune: None,
            challenges_total,
            next_deadline: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: RelayStats::default(),
            config,
        }
    }

    /// The server's own disco public key (`server_disco` of its endpoints).
    pub fn server_disco(&self) -> PublicKey {
        self.public
    }

    /// Replaces the advertised addresses (after STUN or an interface change). Existing
    /// endpoints keep working; later allocations carry the new list.
    pub fn set_addrs(&mut self, addrs: Vec<SocketAddr>) {
        self.config.addrs = addrs;
    }

    /// Totals and drop counters.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Endpoints open now, by VNI.
    pub fn sessions(&self) -> impl Iterator<Item = SessionInfo> + '_ {
        self.sessions.iter().map(|(vni, s)| Self::info(*vni, s))
    }

    /// One endpoint by VNI.
    pub fn session(&self, vni: u32) -> Option<SessionInfo> {
        self.sessions.get(&vni).map(|s| Self::info(vni, s))
    }

    fn info(vni: u32, s: &Session) -> SessionInfo {
        SessionInfo {
            vni,
            client_disco: s.pair,
            lamport_id: s.lamport_id,
            bound: [s.legs[0].bound, s.legs[1].bound],
            packets: [s.legs[0].packets, s.legs[1].packets],
            bytes: [s.legs[0].bytes, s.legs[1].bytes],
        }
    }

    /// Allocates an endpoint for `clients` at the request of `requester` (one of them; the
    /// caller has checked it may use this relay). The pair is sorted; asking again for the same
    /// pair returns the same endpoint (same VNI and Lamport ID), so both clients may ask.
    pub fn allocate(
        &mut self,
        now: Instant,
        requester: PublicKey,
        clients: [PublicKey; 2],
    ) -> Result<UdpRelayEndpoint, AllocError> {
        let r = self.allocate_inner(now, requester, clients);
        if r.is_err() {
            self.stats.allocations_refused += 1;
        }
        r
    }

    fn allocate_inner(
        &mut self,
        now: Instant,
        requester: PublicKey,
        clients: [PublicKey; 2],
    ) -> Result<UdpRelayEndpoint, AllocError> {
        if self.config.addrs.is_empty() {
            return Err(AllocError::NotReady);
        }
        if !clients.contains(&requester) {
            return Err(AllocError::RequesterNotInPair);
        }
        if clients[0] == clients[1] {
            return Err(AllocError::SameClient);
        }
        if clients.contains(&self.public) {
            return Err(AllocError::ServerKey);
        }
        let mut pair = clients;
        pair.sort();
        if let Some(&vni) = self.by_pair.get(&pair) {
            let lamport_id = self.sessions[&vni].lamport_id;
            return Ok(self.endpoint(pair, vni, lamport_id));
        }
        let limits = &self.config.limits;
        if self.sessions.len() >= limits.max_sessions {
            return Err(AllocError::TooManySessions(limits.max_sessions));
        }
        let mine = self.per_requester.get(&requester).copied().unwrap_or(0);
        if mine >= limits.max_sessions_per_requester {
            return Err(AllocError::TooManyForRequester(
                limits.max_sessions_per_requester,
            ));
        }
        let boxes = [
            BoxKey::new(&self.key, &pair[0]).ok_or(AllocError::BadKey)?,
            BoxKey::new(&self.key, &pair[1]).ok_or(AllocError::BadKey)?,
        ];
        let vni = self.free_vni().ok_or(AllocError::VniExhausted)?;
        self.lamport += 1;
        let limits = &self.config.limits;
        let leg = || Leg {
            bound: None,
            last_seen: now,
            in_progress: 0,
            packets_budget: Bucket::new(limits.leg_packets, now),
            bytes_budget: Bucket::new(limits.leg_bytes, now),
            packets: 0,
            bytes: 0,
        };
        let session = Session {
            pair,
            boxes,
            requester,
            lamport_id: self.lamport,
            allocated_at: now,
            legs: [leg(), leg()],
            binds: Bucket::new(limits.binds_per_session, now),
            packets_budget: Bucket::new(limits.session_packets, now),
            bytes_budget: Bucket::new(limits.session_bytes, now),
        };
        self.earlier_deadline(session.deadline(&self.config));
        self.sessions.insert(vni, session);
        self.by_pair.insert(pair, vni);
        *self.per_requester.entry(requester).or_insert(0) += 1;
        self.stats.allocations += 1;
        self.event(RelayEvent::Allocated {
            vni,
            client_disco: pair,
            lamport_id: self.lamport,
        });
        Ok(self.endpoint(pair, vni, self.lamport))
    }

    /// [`allocate`](Self::allocate) for a received `AllocateUdpRelayEndpointRequest`: the
    /// `AllocateUdpRelayEndpointResponse` to send back (over DERP, sealed with the node's key).
    pub fn allocate_response(
        &mut self,
        now: Instant,
        requester: PublicKey,
        client_disco: [PublicKey; 2],
        generation: u32,
    ) -> Result<Message, AllocError> {
        let endpoint = self.allocate(now, requester, client_disco)?;
        Ok(Message::AllocateUdpRelayEndpointResponse {
            generation,
            endpoint,
        })
    }

    fn endpoint(&self, pair: [PublicKey; 2], vni: u32, lamport_id: u64) -> UdpRelayEndpoint {
        UdpRelayEndpoint {
            server_disco: self.public,
            client_disco: pair,
            lamport_id,
            vni,
            bind_lifetime: self.config.bind_lifetime,
            steady_state_lifetime: self.config.steady_state_lifetime,
            addrs: self
                .config
                .addrs
                .iter()
                .take(burrow_disco::MAX_CALL_ME_MAYBE_ENDPOINTS)
                .copied()
                .collect(),
        }
    }

    /// The next VNI after the last one handed out, wrapping within 1..=2²⁴−1 and skipping VNIs
    /// in use (RFC 6056's "traditional BSD" selection, predictable on purpose, as Tailscale).
    fn free_vni(&mut self) -> Option<u32> {
        if self.sessions.len() >= MAX_VNI as usize {
            return None;
        }
        loop {
            let vni = self.next_vni;
            self.next_vni = if vni >= MAX_VNI { 1 } else { vni + 1 };
            if !self.sessions.contains_key(&vni) {
                return Some(vni);
            }
        }
    }

    /// A datagram arrived on the relay socket from `src`. `Ok(Some(forward))`: send the same
    /// datagram, unchanged, to `forward.dst`. `Ok(None)`: consumed (a handshake message; any
    /// reply is in [`poll_transmit`](Self::poll_transmit)). `Err`: dropped, and counted in
    /// [`stats`](Self::stats); the server is unaffected.
    pub fn handle_input(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
    ) -> Result<Option<Forward>, RelayError> {
        let r = self.input(now, src, datagram);
        if let Err(e) = &r {
            *self.stats.dropped.entry(e.reason()).or_insert(0) += 1;
        }
        r
    }

    fn input(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
    ) -> Result<Option<Forward>, RelayError> {
        let (header, payload) = GeneveHeader::decode(datagram)?;
        let vni = header.vni;
        if !self.sessions.contains_key(&vni) {
            return Err(RelayError::UnknownVni(vni));
        }
        if !header.control {
            return self.forward(now, src, vni, datagram.len()).map(Some);
        }
        if header.protocol != GeneveProtocol::Disco {
            return Err(RelayError::ControlNotDisco);
        }
        let session = &self.sessions[&vni];
        let sender =
            burrow_disco::sender(payload).ok_or(RelayError::Disco(DiscoError::NotDisco))?;
        let leg = session
            .pair
            .iter()
            .position(|k| *k == sender)
            .ok_or(RelayError::NotAClient)?;
        let msg = Message::open_with(&session.boxes[leg], payload).map_err(RelayError::Disco)?;
        match msg {
            Message::BindUdpRelayEndpoint(b) => {
                self.bind(now, src, vni, leg, &b, datagram.len())?;
            }
            Message::BindUdpRelayEndpointAnswer(b) => self.answer(now, src, vni, leg, &b)?,
            _ => return Err(RelayError::UnexpectedMessage),
        }
        Ok(None)
    }

    /// Step 1 of the handshake: answer a Bind with a Challenge to its source, within budgets.
    fn bind(
        &mut self,
        now: Instant,
        src: SocketAddr,
        vni: u32,
        leg: usize,
        b: &BindBody,
        request_len: usize,
    ) -> Result<(), RelayError> {
        let limits = &self.config.limits;
        let session = self.sessions.get_mut(&vni).expect("looked up");
        let other = session.pair[1 - leg];
        if b.vni != vni || b.remote_key != other || b.generation == 0 {
            return Err(RelayError::BindMismatch);
        }
        if self.transmits.len() >= limits.max_queued_transmits {
            return Err(RelayError::OverBudget(Budget::TransmitQueue));
        }
        // Check every budget before taking from any, so a refusal costs none of them.
        if !session.binds.has(now, 1) {
            return Err(RelayError::OverBudget(Budget::SessionBinds));
        }
        let ip = canonical(src).ip();
        if !self.sources.contains_key(&ip) && self.sources.len() >= limits.max_tracked_sources {
            prune_sources(&mut self.sources, &mut self.last_source_prune, now);
            if self.sources.len() >= limits.max_tracked_sources {
                return Err(RelayError::OverBudget(Budget::SourceTable));
            }
        }
        let source = self
            .sources
            .entry(ip)
            .or_insert_with(|| Bucket::new(limits.challenges_per_source_ip, now));
        if !source.has(now, 1) {
            return Err(RelayError::OverBudget(Budget::SourceChallenges));
        }
        if !self.challenges_total.has(now, 1) {
            return Err(RelayError::OverBudget(Budget::TotalChallenges));
        }
        let mac = bind_mac(
            &self.secret,
            vni,
            b.generation,
            &sender_of(session, leg),
            &other,
            src,
        );
        let challenge = Message::BindUdpRelayEndpointChallenge(BindBody {
            vni,
            generation: b.generation,
            remote_key: other,
            challenge: mac,
        });
        let sealed = challenge.seal_with(&session.boxes[leg], &self.public, &mut self.rng);
        let payload = control_frame(vni, &sealed)?;
        // A Bind is at least as large as a Challenge (both carry 72 body bytes); never amplify.
        if payload.len() > request_len {
            return Err(RelayError::BindMismatch);
        }
        session.binds.take(now, 1);
        source.take(now, 1);
        self.challenges_total.take(now, 1);
        session.legs[leg].in_progress = b.generation;
        self.transmits.push_back(Transmit { dst: src, payload });
        self.stats.challenges_sent += 1;
        Ok(())
    }

    /// Step 3: an Answer whose MAC was made for its own source address binds that address.
    fn answer(
        &mut self,
        now: Instant,
        src: SocketAddr,
        vni: u32,
        leg: usize,
        b: &BindBody,
    ) -> Result<(), RelayError> {
        let session = self.sessions.get_mut(&vni).expect("looked up");
        let other = session.pair[1 - leg];
        if b.vni != vni || b.remote_key != other {
            return Err(RelayError::BindMismatch);
        }
        let l = &session.legs[leg];
        if b.generation == 0 || b.generation != l.in_progress {
            return Err(RelayError::AnswerRefused);
        }
        let me = sender_of(session, leg);
        let ok = [&self.secret, &self.previous_secret]
            .into_iter()
            .any(|s| verify_bind_mac(s, vni, b.generation, &me, &other, src, &b.challenge));
        if !ok {
            return Err(RelayError::AnswerRefused);
        }
        if session.legs[1 - leg].bound == Some(src) {
            return Err(RelayError::SameAddress);
        }
        let was_open = session.open();
        let l = &mut session.legs[leg];
        let rebind = l.bound.is_some();
        l.bound = Some(src);
        l.last_seen = now;
        l.in_progress = 0;
        let open = session.open();
        let deadline = session.deadline(&self.config);
        self.earlier_deadline(deadline);
        self.stats.binds_completed += 1;
        self.event(RelayEvent::Bound {
            vni,
            client: me,
            addr: src,
            rebind,
        });
        if open && !was_open {
            self.event(RelayEvent::Open { vni });
        }
        Ok(())
    }

    /// A data packet: forwarded only from one bound leg to the other, within budgets.
    fn forward(
        &mut self,
        now: Instant,
        src: SocketAddr,
        vni: u32,
        len: usize,
    ) -> Result<Forward, RelayError> {
        let session = self.sessions.get_mut(&vni).expect("looked up");
        let (Some(a), Some(b)) = (session.legs[0].bound, session.legs[1].bound) else {
            return Err(RelayError::NotOpen);
        };
        let (leg, dst) = if src == a {
            (0, b)
        } else if src == b {
            (1, a)
        } else {
            return Err(RelayError::UnboundSource);
        };
        session.legs[leg].last_seen = now;
        let bytes = len as u64;
        let l = &mut session.legs[leg];
        for (bucket, n, budget) in [
            (&mut l.packets_budget, 1, Budget::LegPackets),
            (&mut l.bytes_budget, bytes, Budget::LegBytes),
            (&mut session.packets_budget, 1, Budget::SessionPackets),
            (&mut session.bytes_budget, bytes, Budget::SessionBytes),
        ] {
            if !bucket.has(now, n) {
                return Err(RelayError::OverBudget(budget));
            }
        }
        l.packets_budget.take(now, 1);
        l.bytes_budget.take(now, bytes);
        session.packets_budget.take(now, 1);
        session.bytes_budget.take(now, bytes);
        l.packets += 1;
        l.bytes += bytes;
        self.stats.forwarded_packets += 1;
        self.stats.forwarded_bytes += bytes;
        Ok(Forward { dst })
    }

    /// The deadline passed: rotate the MAC secret, close endpoints not bound in time or idle.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_rotation {
            self.previous_secret = self.secret;
            self.rng.fill_bytes(&mut self.secret);
            if now >= self.next_rotation + self.config.secret_rotation {
                // Two periods or more passed: the previous secret is stale too.
                self.rng.fill_bytes(&mut self.previous_secret);
            }
            self.next_rotation = now + self.config.secret_rotation;
            prune_sources(&mut self.sources, &mut self.last_source_prune, now);
        }
        if self.next_deadline.is_some_and(|d| now >= d) {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: Instant) {
        let mut closed = Vec::new();
        for (&vni, s) in &self.sessions {
            if now >= s.deadline(&self.config) {
                let reason = if s.open() {
                    CloseReason::Idle
                } else {
                    CloseReason::BindTimeout
                };
                closed.push((vni, reason));
            }
        }
        for (vni, reason) in closed {
            self.close(vni, reason);
        }
        self.next_deadline = self
            .sessions
            .values()
            .map(|s| s.deadline(&self.config))
            .min();
    }

    fn close(&mut self, vni: u32, reason: CloseReason) {
        let Some(s) = self.sessions.remove(&vni) else {
            return;
        };
        self.by_pair.remove(&s.pair);
        if let Some(n) = self.per_requester.get_mut(&s.requester) {
            *n -= 1;
            if *n == 0 {
                self.per_requester.remove(&s.requester);
            }
        }
        match reason {
            CloseReason::Idle => self.stats.expired_idle += 1,
            CloseReason::BindTimeout => self.stats.expired_unbound += 1,
            CloseReason::Revoked => self.stats.revoked += 1,
        }
        self.event(RelayEvent::Closed { vni, reason });
    }

    /// Closes at once every endpoint whose sorted client pair `keep` refuses (a client the
    /// policy no longer lets use this relay, or that left the tailnet): allocation is checked
    /// once, so without this a pair keeps its relay for as long as it keeps it busy. Returns
    /// how many closed.
    pub fn close_unless(&mut self, mut keep: impl FnMut(&[PublicKey; 2]) -> bool) -> usize {
        let gone: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, s)| !keep(&s.pair))
            .map(|(vni, _)| *vni)
            .collect();
        for &vni in &gone {
            self.close(vni, CloseReason::Revoked);
        }
        gone.len()
    }

    fn earlier_deadline(&mut self, d: Instant) {
        self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
    }

    fn event(&mut self, e: RelayEvent) {
        if self.events.len() >= self.config.limits.max_queued_events {
            self.stats.events_dropped += 1;
        } else {
            self.events.push_back(e);
        }
    }

    /// The next Challenge to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout): the next secret rotation or the
    /// earliest an endpoint may expire.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(
            self.next_deadline
                .map_or(self.next_rotation, |d| d.min(self.next_rotation)),
        )
    }
}

fn sender_of(session: &Session, leg: usize) -> PublicKey {
    session.pair[leg]
}

/// Forgets source IPs whose challenge budget has refilled (at most once a second, so a full
/// table under a flood of new sources costs one scan a second, not one per packet).
fn prune_sources(sources: &mut BTreeMap<IpAddr, Bucket>, last: &mut Option<Instant>, now: Instant) {
    if last.is_some_and(|l| now < l + Duration::from_secs(1)) {
        return;
    }
    *last = Some(now);
    sources.retain(|_, b| !b.is_full(now));
}

/// One form per address: IPv4-mapped IPv6 (a dual-stack socket's view of IPv4) as IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn mac_state(
    secret: &[u8; 32],
    vni: u32,
    generation: u32,
    client: &PublicKey,
    remote: &PublicKey,
    src: SocketAddr,
) -> Blake2sMac<U32> {
    let ip = match canonical(src).ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut m = <Blake2sMac<U32> as KeyInit>::new_from_slice(secret).expect("32-byte key");
    for part in [
        MAC_DOMAIN,
        &vni.to_be_bytes(),
        &generation.to_be_bytes(),
        client.as_bytes(),
        remote.as_bytes(),
        &ip.octets(),
        &src.port().to_be_bytes(),
    ] {
        Update::update(&mut m, part);
    }
    m
}

/// The Challenge's MAC: keyed BLAKE2s-256 over a domain tag, VNI, generation, the client's and
/// the remote disco keys, and the Bind's source address (IPv4 as IPv4-mapped IPv6) and port.
fn bind_mac(
    secret: &[u8; 32],
    vni: u32,
    generation: u32,
    client: &PublicKey,
    remote: &PublicKey,
    src: SocketAddr,
) -> [u8; 32] {
    mac_state(secret, vni, generation, client, remote, src)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks an Answer's MAC in constant time.
fn verify_bind_mac(
    secret: &[u8; 32],
    vni: u32,
    generation: u32,
    client: &PublicKey,
    remote: &PublicKey,
    src: SocketAddr,
    mac: &[u8; 32],
) -> bool {
    mac_state(secret, vni, generation, client, remote, src)
        .verify_slice(mac)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn vni_counter_wraps_within_24_bits_and_skips_vnis_in_use() {
        let t0 = Instant::now();
        let config = RelayConfig::new(vec!["198.51.100.1:7000".parse().unwrap()]);
        let mut s = RelayServer::new(t0, config, ChaCha20Rng::seed_from_u64(1));
        let k = |i: u8| PrivateKey::from_bytes([i; 32]).public_key();
        let first = s.allocate(t0, k(1), [k(1), k(2)]).unwrap();
        assert_eq!(first.vni, 1);
        s.next_vni = MAX_VNI;
        let top = s.allocate(t0, k(1), [k(1), k(3)]).unwrap();
        assert_eq!(top.vni, MAX_VNI);
        // Wraps to 1, which is in use: 2.
        let wrapped = s.allocate(t0, k(1), [k(1), k(4)]).unwrap();
        assert_eq!(wrapped.vni, 2);
        assert_eq!(wrapped.lamport_id, 3);
    }
}
