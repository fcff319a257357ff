//! A whole tailnet in discrete events: the coordination server's logic (burrow-control's
//! `Tailnet`), every member's session machine and node engine, and a network that carries UDP
//! between public addresses (5 ms), relays DERP by node key, and can rebind a member's mapping
//! or restart the relay. A step is a function call, so a property test can run many worlds.
//!
//! The control plane answers a session's requests at once, in process: registration, the
//! netmap, endpoint reports, and the deltas each change sends to the members that see it.

use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_control::{
    netmap::address_v4, CompiledPolicy, Delta, MapMessage, NodeInfo, PeerInfo, Policy,
    RegisterResponse, Tailnet, Verdict,
};
use burrow_node::{Event, Input, Node, NodeConfig, Transmit};
use burrow_punch::Route;
use burrow_session::{Input as SessionInput, Request, Session, SessionConfig, SessionEvent};
use burrow_wg::{PrivateKey, PublicKey};

use crate::derive_seed;

/// One-way latency of every hop.
const LATENCY: Duration = Duration::from_millis(5);
/// How long a relay restart drops DERP traffic.
const RELAY_DOWN: Duration = Duration::from_secs(1);

/// A member of the tailnet.
struct Member {
    id: u64,
    address: IpAddr,
    public: SocketAddr,
    private: PrivateKey,
    engine: Node,
    session: Session,
    /// Packets delivered to this member: (when, from which slot, accepted by its filter).
    received: Vec<(Instant, Option<usize>, bool)>,
    stopped: bool,
}

/// Something in flight.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Carried {
    Udp {
        to: SocketAddr,
        from: SocketAddr,
        data: Vec<u8>,
    },
    Derp {
        to: PublicKey,
        from: PublicKey,
        data: Vec<u8>,
    },
}

/// The world.
pub struct World {
    seed: u64,
    start: Instant,
    now: Instant,
    tailnet: Tailnet,
    members: BTreeMap<usize, Member>,
    next_id: u64,
    relay_down_until: Instant,
    in_flight: BinaryHeap<std::cmp::Reverse<(Instant, u64, Carried)>>,
    sequence: u64,
    /// Whether any private key (raw or base64) appeared in a datagram or control message.
    key_on_wire: bool,
    /// Every private key a member ever had, for the scan.
    secrets: Vec<([u8; 32], String)>,
    /// Endpoint changes so far (each gets a fresh address).
    moves: u32,
}

impl World {
    /// An empty tailnet under `policy` (HuJSON), its randomness from `seed`.
    pub fn new(seed: u64, policy: &str) -> Result<Self, burrow_control::PolicyError> {
        let start = Instant::now();
        Ok(World {
            seed,
            start,
            now: start,
            tailnet: Tailnet::new(Policy::check(policy)?.1),
            members: BTreeMap::new(),
            next_id: 1,
            relay_down_until: start,
            in_flight: BinaryHeap::new(),
            sequence: 0,
            key_on_wire: false,
            secrets: Vec::new(),
            moves: 0,
        })
    }

    /// Simulated time so far.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Whether slot `slot` is a member.
    pub fn is_member(&self, slot: usize) -> bool {
        self.members.get(&slot).is_some_and(|m| !m.stopped)
    }

    /// Slot `slot` joins as node `n{slot}` of user `n{slot}`, at public address
    /// 198.51.100.{slot}:41641, and registers.
    pub fn join(&mut self, slot: usize) {
        if self.members.contains_key(&slot) {
            return;
        }
        let mut key = |what: &str| {
            let mut b = [0u8; 32];
            b[..8]
                .copy_from_slice(&derive_seed(self.seed, &format!("{what}:{slot}")).to_le_bytes());
            b[8] = slot as u8 + 1;
            let k = PrivateKey::from_bytes(b);
            self.secrets.push((b, k.expose_base64()));
            k
        };
        let (private, disco) = (key("wg"), key("disco"));
        let public = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, slot as u8 + 1)),
            41641,
        );
        let mut config = NodeConfig::new(
            private.clone(),
            disco.clone(),
            derive_seed(self.seed, &format!("node:{slot}")),
        );
        config.local_addrs = vec![public];
        let engine = Node::new(config, self.now);
        let mut sc = SessionConfig::new(format!("n{slot}"), disco.public_key());
        sc.auth_key = Some(format!("key-{slot}"));
        sc.seed = derive_seed(self.seed, &format!("session:{slot}"));
        let session = Session::new(sc, self.now);
        self.members.insert(
            slot,
            Member {
                id: 0,
                address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                public,
                private,
                engine,
                session,
                received: Vec::new(),
                stopped: false,
            },
        );
        self.pump();
    }

    /// The admin removes slot `slot`: its peers are told, and it stops.
    pub fn remove(&mut self, slot: usize) {
        let Some(m) = self.members.remove(&slot) else {
            return;
        };
        let deltas = self.tailnet.remove(m.id);
        self.deliver_deltas(deltas);
        self.pump();
    }

    /// Slot `slot`'s NAT mapping changes: its datagrams leave from a new port, and the old
    /// one no longer reaches it.
    pub fn rebind(&mut self, slot: usize) {
        if let Some(m) = self.members.get_mut(&slot) {
            let port = m.public.port().wrapping_add(1).max(1024);
            m.public.set_port(port);
        }
    }

    /// Slot `slot` moves to a new network (a new public address, as after a Wi-Fi to cellular
    /// switch): the old address no longer reaches it, and the endpoints its STUN round would
    /// find go to the control server, which tells its peers.
    pub fn change_endpoints(&mut self, slot: usize) {
        self.moves += 1;
        let Some(m) = self.members.get_mut(&slot) else {
            return;
        };
        let ip = Ipv4Addr::new(203, 0, 113, (self.moves % 250) as u8 + 1);
        m.public = SocketAddr::new(IpAddr::V4(ip), 41641 + slot as u16);
        let (id, public) = (m.id, m.public);
        if let Some(mut p) = self.tailnet.get(id).cloned() {
            p.endpoints = vec![public];
            let deltas = self.tailnet.upsert(p);
            self.scan_json(&deltas);
            self.deliver_deltas(deltas);
        }
        self.pump();
    }

    /// The relay restarts: what it carries is lost for a second.
    pub fn restart_relay(&mut self) {
        self.relay_down_until = self.now + RELAY_DOWN;
    }

    /// A new policy reaches every member at once.
    pub fn set_policy(&mut self, policy: CompiledPolicy) {
        let deltas = self.tailnet.set_policy(policy);
        self.deliver_deltas(deltas);
        self.pump();
    }

    /// Runs the world for `d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.pump();
            let mut next = end;
            if let Some(std::cmp::Reverse((t, _, _))) = self.in_flight.peek() {
                next = next.min(*t);
            }
            for m in self.members.values() {
                for t in [m.engine.poll_timeout(), m.session.poll_timeout()]
                    .into_iter()
                    .flatten()
                {
                    next = next.min(t);
                }
            }
            self.now = next.max(self.now);
            while self
                .in_flight
                .peek()
                .is_some_and(|std::cmp::Reverse((t, _, _))| *t <= self.now)
            {
                let std::cmp::Reverse((_, _, c)) = self.in_flight.pop().expect("peeked");
                self.arrive(c);
            }
            let now = self.now;
            for m in self.members.values_mut() {
                if m.engine.poll_timeout().is_some_and(|t| t <= now) {
                    m.engine.handle_timeout(now);
                }
                if m.session.poll_timeout().is_some_and(|t| t <= now) {
                    m.session.handle_timeout(now);
                }
            }
            if self.now >= end {
                self.pump();
                return;
            }
        }
    }

    /// Slot `from` sends one UDP packet (port 7 to 9) to slot `to`'s tailnet address; true if
    /// `to` took it in (its filter accepted it) within a second.
    pub fn probe(&mut self, from: usize, to: usize) -> bool {
        let (Some(src), Some(dst)) = (self.address_of(from), self.address_of(to)) else {
            return false;
        };
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (src, dst) else {
            return false;
        };
        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&[0, 7, 0, 9, 0, 8, 0, 0]);
        let sent = self.now;
        let now = self.now;
        let m = self.members.get_mut(&from).expect("a member");
        if let Some(peer) = m.session.route_outbound(now, &p) {
            let _ = m.engine.send(now, &peer, &p);
        }
        self.run_for(Duration::from_secs(1));
        self.members.get(&to).is_some_and(|m| {
            m.received
                .iter()
                .any(|(t, f, ok)| *t >= sent && *f == Some(from) && *ok)
        })
    }

    /// The route slot `from`'s engine uses to slot `to`.
    pub fn route(&self, from: usize, to: usize) -> Option<Route> {
        let key = self.members.get(&to)?.private.public_key();
        self.members.get(&from)?.engine.route(&key)
    }

    /// The slots `slot`'s session holds as peers.
    pub fn peers_of(&self, slot: usize) -> Vec<usize> {
        let Some(m) = self.members.get(&slot) else {
            return Vec::new();
        };
        let mut out: Vec<usize> = m
            .session
            .peers()
            .filter_map(|(p, _)| self.slot_of_id(p.node.id))
            .collect();
        out.sort_unstable();
        out
    }

    /// Whether a private key ever appeared on any wire.
    pub fn key_on_wire(&self) -> bool {
        self.key_on_wire
    }

    fn address_of(&self, slot: usize) -> Option<IpAddr> {
        self.members
            .get(&slot)
            .filter(|m| m.id != 0)
            .map(|m| m.address)
    }

    fn slot_of_id(&self, id: u64) -> Option<usize> {
        self.members
            .iter()
            .find(|(_, m)| m.id == id)
            .map(|(s, _)| *s)
    }

    fn slot_of_address(&self, ip: IpAddr) -> Option<usize> {
        self.members
            .iter()
            .find(|(_, m)| m.address == ip)
            .map(|(s, _)| *s)
    }

    /// Scans bytes for any member's private key.
    fn scan(&mut self, bytes: &[u8]) {
        self.key_on_wire |= leaks(&self.secrets, bytes);
    }

    fn send(&mut self, c: Carried) {
        let (Carried::Udp { data, .. } | Carried::Derp { data, .. }) = &c;
        self.key_on_wire |= leaks(&self.secrets, data);
        self.sequence += 1;
        self.in_flight
            .push(std::cmp::Reverse((self.now + LATENCY, self.sequence, c)));
    }

    fn arrive(&mut self, c: Carried) {
        let now = self.now;
        match c {
            Carried::Udp { to, from, data } => {
                if let Some(m) = self.members.values_mut().find(|m| m.public == to) {
                    let input = Input::Udp {
                        socket: 0,
                        from,
                        data: &data,
                    };
                    let _ = m.engine.handle_input(now, input);
                }
            }
            Carried::Derp { to, from, data } => {
                if now < self.relay_down_until {
                    return;
                }
                if let Some(m) = (self.members.values_mut()).find(|m| m.private.public_key() == to)
                {
                    let input = Input::Derp {
                        region: 1,
                        from,
                        data: &data,
                    };
                    let _ = m.engine.handle_input(now, input);
                }
            }
        }
    }

    /// Drains every member's machines until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            let slots: Vec<usize> = self.members.keys().copied().collect();
            for slot in slots {
                moved |= self.pump_member(slot);
            }
            if !moved {
                return;
            }
        }
    }

    fn pump_member(&mut self, slot: usize) -> bool {
        let now = self.now;
        let mut moved = false;
        while let Some(r) = self
            .members
            .get_mut(&slot)
            .and_then(|m| m.session.poll_transmit())
        {
            moved = true;
            self.answer(slot, r);
        }
        let Some(m) = self.members.get_mut(&slot) else {
            return moved;
        };
        while let Some(e) = m.session.poll_event() {
            moved = true;
            match e {
                SessionEvent::PeerUpsert { config, .. } => {
                    let _ = m.engine.add_peer(now, config);
                }
                SessionEvent::PeerRemove { key, .. } => {
                    m.engine.remove_peer(now, &key);
                }
                SessionEvent::PeerRelayPolicy(p) => m.engine.set_peer_relay_policy(p),
                SessionEvent::Failed(_) => m.stopped = true,
                _ => {}
            }
        }
        let from_key = m.private.public_key();
        let from_addr = m.public;
        let mut out = Vec::new();
        while let Some(t) = m.engine.poll_transmit() {
            out.push(match t {
                Transmit::Udp { dst, payload, .. } => Carried::Udp {
                    to: dst,
                    from: from_addr,
                    data: payload,
                },
                Transmit::Derp { dst, payload, .. } => Carried::Derp {
                    to: dst,
                    from: from_key,
                    data: payload,
                },
            });
        }
        let mut delivered = Vec::new();
        while let Some(e) = m.engine.poll_event() {
            match e {
                Event::Endpoints { candidates, .. } => {
                    let endpoints = candidates.iter().map(|c| c.addr).collect();
                    m.session
                        .handle_input(now, SessionInput::LocalEndpoints(endpoints));
                    moved = true;
                }
                Event::Packet { peer, data } => {
                    let verdict = m.session.admit_inbound(now, &peer, &data);
                    delivered.push((data, !matches!(verdict, Verdict::Drop(_))));
                }
                _ => {}
            }
        }
        for (data, ok) in delivered {
            let src = data.get(12..16).and_then(|b| <[u8; 4]>::try_from(b).ok());
            let from = src.and_then(|b| self.slot_of_address(IpAddr::from(b)));
            if let Some(m) = self.members.get_mut(&slot) {
                m.received.push((now, from, ok));
            }
        }
        moved |= !out.is_empty();
        for c in out {
            self.send(c);
        }
        moved
    }

    /// The control plane's answer to a member's request, and the deltas it sends others.
    fn answer(&mut self, slot: usize, r: Request) {
        let now = self.now;
        let input = match r {
            Request::Register(body) => {
                let m = self.members.get_mut(&slot).expect("a member");
                if m.id == 0 {
                    m.id = self.next_id;
                    self.next_id += 1;
                    m.address = address_v4(m.id as u32);
                }
                let node = NodeInfo {
                    id: m.id,
                    name: format!("n{slot}"),
                    user: format!("n{slot}"),
                    tags: Vec::new(),
                    addresses: vec![m.address],
                };
                let peer = PeerInfo {
                    node: node.clone(),
                    node_key: m.private.public_key().to_base64(),
                    disco_key: body.disco_key.clone(),
                    endpoints: Vec::new(),
                    home_region: 1,
                };
                let deltas = self.tailnet.upsert(peer);
                self.scan_json(&deltas);
                self.deliver_deltas(deltas);
                SessionInput::Registered(RegisterResponse {
                    node,
                    secret: format!("secret-{slot}"),
                })
            }
            Request::OpenMap { .. } => {
                let id = self.members[&slot].id;
                match self.tailnet.netmap(id) {
                    Some(map) => {
                        self.scan_json(&map);
                        SessionInput::MapOpened(map)
                    }
                    None => SessionInput::Failed {
                        request: burrow_session::RequestKind::OpenMap,
                        failure: burrow_session::Failure::Unauthorized,
                    },
                }
            }
            Request::PostEndpoints { request, .. } => {
                let id = self.members[&slot].id;
                if let Some(mut p) = self.tailnet.get(id).cloned() {
                    p.endpoints = request.endpoints.clone();
                    let deltas = self.tailnet.upsert(p);
                    self.scan_json(&deltas);
                    self.deliver_deltas(deltas);
                }
                SessionInput::EndpointsPosted(request.endpoints)
            }
        };
        if let Some(m) = self.members.get_mut(&slot) {
            m.session.handle_input(now, input);
        }
    }

    fn scan_json<T: serde::Serialize>(&mut self, value: &T) {
        if let Ok(text) = serde_json::to_vec(value) {
            self.scan(&text);
        }
    }

    fn deliver_deltas(&mut self, deltas: Vec<(u64, Delta)>) {
        let now = self.now;
        for (id, d) in deltas {
            if let Some(m) = self.members.values_mut().find(|m| m.id == id) {
                m.session
                    .handle_input(now, SessionInput::Map(MapMessage::Delta(d)));
            }
        }
    }
}

/// Whether `bytes` hold any of `secrets`, raw or in base64.
fn leaks(secrets: &[([u8; 32], String)], bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    secrets
        .iter()
        .any(|(raw, b64)| bytes.windows(32).any(|w| w == raw) || text.contains(b64.as_str()))
}
