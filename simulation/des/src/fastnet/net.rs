//! Building and stepping [`FastNet`]: the nodes and their NAT chains at time zero, then each
//! instant's arrivals, disruptions, NAT sweeps, timers, application sends and node output.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_node::{
    Event, Input, Node, NodeConfig, PacketBatch, PeerConfig, PeerRelayPolicy, RelayServerSettings,
    Transmit, TransmitBatch, RELAY_SOCKET,
};
use burrow_punch::Route;
use burrow_stun::{BindingServer, ServerConfig};
use burrow_wg::PrivateKey;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::link::LinkWay;
use super::packets::{
    app_packet, copies, hop_delay, note_error, scan, secret_bytes, Packet, Queue,
};
use super::{
    Disruption, Disruptions, FastConfig, FastNet, FastOutcome, Side, SidePortMap, SideV6, Traffic,
    WireSend, BIRTHDAY_BASE_PORT, MAIN_PORT, RELAY_PORT, STUN_SERVERS,
};
use crate::derive_seed;
use crate::nat::NatTable;

impl FastNet {
    /// The network at time zero: keys, NAT chains and nodes derived from `config.seed`, each
    /// node told of the other.
    pub fn new(config: &FastConfig) -> Self {
        let t0 = Instant::now();
        let rng = ChaCha20Rng::seed_from_u64(derive_seed(config.seed, "fastnet"));
        let key = |label: &str| {
            let mut r = ChaCha20Rng::seed_from_u64(derive_seed(config.seed, label));
            PrivateKey::generate(&mut r)
        };
        let count = 2 + config.relays.len();
        let keys: Vec<(PrivateKey, PrivateKey)> = (0..count)
            .map(|s| (key(&format!("wg{s}")), key(&format!("disco{s}"))))
            .collect();
        let secrets: Vec<[u8; 32]> = keys
            .iter()
            .flat_map(|(a, b)| [secret_bytes(a), secret_bytes(b)])
            .collect();
        let mut sides: Vec<Side> = (0..count)
            .map(|s| {
                let (wg, disco) = keys[s].clone();
                new_side(config, s, wg, disco, t0)
            })
            .collect();
        // Boxes that do not translate keep the inside address: use it as their outside one.
        for s in sides.iter_mut() {
            let ip = s.ip;
            for b in s.boxes.iter_mut() {
                if !b.0.config().translate {
                    b.1 = ip;
                }
            }
        }
        for s in 0..2 {
            let peer = peer_of(&sides[1 - s].node, 1 - s);
            let _ = sides[s].node.add_peer(t0, peer);
        }
        // Relay nodes: peers of both nodes (they relay for both), not of each other.
        let relay_keys: std::collections::BTreeSet<_> =
            sides[2..].iter().map(|r| r.node.public_key()).collect();
        for r in 2..count {
            for s in 0..2 {
                let (a, b) = (&sides[s].node, &sides[r].node);
                let (to_r, to_s) = (peer_of(b, r), peer_of(a, s));
                let _ = sides[s].node.add_peer(t0, to_r);
                let _ = sides[r].node.add_peer(t0, to_s);
            }
            let clients = [0, 1].map(|s| sides[s].node.public_key()).into();
            sides[r].node.set_peer_relay_policy(PeerRelayPolicy {
                relays: Default::default(),
                clients,
            });
        }
        for s in sides.iter_mut().take(2) {
            s.node.set_peer_relay_policy(PeerRelayPolicy {
                relays: relay_keys.clone(),
                clients: Default::default(),
            });
        }
        let mut rng = rng;
        for (s, side) in sides.iter_mut().enumerate().take(2) {
            side.link = config.links[s]
                .as_ref()
                .map(|p| [(); 2].map(|_| LinkWay::new(p, t0, &mut rng)));
        }
        let peers = [sides[1].node.public_key(), sides[0].node.public_key()];
        let mut pending: Vec<(Instant, Disruption)> = config
            .disruptions
            .iter()
            .map(|(d, x)| (t0 + *d, *x))
            .collect();
        pending.sort_by_key(|d| d.0);
        pending.reverse();
        FastNet {
            config: config.clone(),
            t0,
            now: t0,
            end: t0 + config.duration,
            done: false,
            rng,
            secrets,
            sides,
            peers,
            stun: STUN_SERVERS.map(|s| BindingServer::new(ServerConfig::new(s))),
            queue: Queue::default(),
            disruptions: Disruptions {
                pending,
                derp_down_until: None,
                cut_until: None,
                drop_data_until: None,
                drop_data_to_until: [None, None],
            },
            traffic: Traffic {
                next: config.data_interval.map(|_| t0),
                seq: [0; 2],
                first_measured: [None; 2],
                received: [BTreeSet::new(), BTreeSet::new()],
                told: [BTreeSet::new(), BTreeSet::new()],
                sent: [Vec::new(), Vec::new()],
                size: [config.data_size; 2],
                last_reported_route: [None; 2],
            },
            last_endpoints: [None, None],
            direct_since: [None, None],
            direct_v6_since: [None, None],
            relayed_since: [None, None],
            next_sweep: t0,
            out: FastOutcome::default(),
            tap: None,
            bulk: config.bulk.map(|b| super::bulk::Bulk::new(b, t0)),
            wake: [(0, 0); 2],
            episodes: config.record_episodes.then(Default::default),
        }
    }

    /// Time since the start: the instant the next [`step`](Self::step) handles.
    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// The run is over (its duration is up, or it stopped once direct).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Node 0 or 1.
    pub fn node(&self, side: usize) -> &Node {
        &self.sides[side].node
    }

    /// Node `side`'s route to the other node.
    pub fn route(&self, side: usize) -> Option<Route> {
        self.sides[side].node.route(&self.peers[side])
    }

    /// Both nodes are on a direct path to each other.
    pub fn is_direct(&self) -> bool {
        (0..2).all(|s| matches!(self.route(s), Some(Route::Direct(_))))
    }

    /// What the run has produced so far (the end-of-run fields are filled by `finish`).
    pub fn outcome(&self) -> &FastOutcome {
        &self.out
    }

    /// Schedules a disruption `at` this long after the start (a time already past means the
    /// next step); disruptions at the same time apply in the order they were added.
    pub fn disrupt(&mut self, at: Duration, d: Disruption) {
        let at = self.t0 + at;
        let pending = &mut self.disruptions.pending;
        let i = pending.partition_point(|p| p.0 > at);
        pending.insert(i, (at, d));
    }

    /// Calls `tap` with every payload either node puts on a wire (UDP or DERP), in addition to
    /// the built-in scan for keys and plaintext.
    pub fn tap(&mut self, tap: impl FnMut(WireSend<'_>) + Send + 'static) {
        self.tap = Some(Box::new(tap));
    }

    /// Runs every step up to and including `t` after the start; false once the run is over.
    pub fn drive_until(&mut self, t: Duration) -> bool {
        let until = self.t0 + t;
        while !self.done && self.now <= until {
            self.step();
        }
        !self.done
    }

    /// Handles everything due at the current instant (arrivals, disruptions, NAT sweeps, node
    /// timers, application sends, the nodes' output), then moves to the next instant anything
    /// is due. False once the run is over.
    pub fn step(&mut self) -> bool {
        if self.done {
            return false;
        }
        let now = self.now;
        while let Some(p) = self.queue.pop_due(now) {
            self.deliver(p);
        }
        self.apply_disruptions();
        // Withdrawn IPv6 addresses that come back: the node hears of them.
        for s in self.sides.iter_mut() {
            let back =
                s.v6.as_mut()
                    .filter(|v| v.withdrawn_until.is_some_and(|t| now >= t));
            if let Some(v6) = back {
                v6.withdrawn_until = None;
                let addrs = s.local_addrs(now);
                s.node.set_local_addrs(now, addrs);
            }
        }
        // NATs sweep idle sessions once a second, so peaks count live sessions.
        if now >= self.next_sweep {
            for s in self.sides.iter_mut() {
                for (table, _) in s.boxes.iter_mut() {
                    table.expire_all(now);
                }
                if let Some(fw) = s.v6.as_mut().and_then(|v| v.firewall.as_mut()) {
                    fw.expire_all(now);
                }
                if let Some(pm) = s.portmap.as_mut() {
                    pm.sync_forwards = true;
                }
            }
            self.next_sweep = now + Duration::from_secs(1);
            self.poll_doubts();
        }
        for (k, s) in self.sides.iter_mut().enumerate() {
            if s.node.poll_timeout().is_some_and(|t| t <= now) {
                s.node.handle_timeout(now);
                if let Some(w) = self.wake.get_mut(k) {
                    let second = (now - self.t0).as_secs();
                    if w.0 != second {
                        *w = (second, 0);
                    }
                    w.1 += 1;
                    self.out.wakeups[k] += 1;
                    self.out.max_wakeups_per_s[k] = self.out.max_wakeups_per_s[k].max(w.1);
                }
            }
        }
        for s in 0..self.sides.len() {
            self.run_port_mapping(s);
        }
        self.send_data();
        self.send_bulk();
        for s in 0..self.sides.len() {
            self.transmit(s);
            self.take_delivered(s);
            while let Some(e) = self.sides[s].node.poll_event() {
                self.on_event(s, e);
            }
        }
        // What the events made the nodes send (the transfer's ACKs and retransmissions).
        for s in 0..2 {
            self.transmit(s);
        }
        self.advance();
        !self.done
    }

    /// Moves the clock to the next instant anything is due, or ends the run.
    fn advance(&mut self) {
        let now = self.now;
        let mut next = self.end;
        if let Some(at) = self.queue.next_at() {
            next = next.min(at);
        }
        for s in &self.sides {
            if let Some(t) = s.node.poll_timeout() {
                next = next.min(t.max(now));
            }
            if let Some(t) = s.portmap.as_ref().and_then(|p| p.mapper.poll_timeout()) {
                next = next.min(t.max(now));
            }
        }
        if let Some(t) = self.traffic.next {
            next = next.min(t);
        }
        if let Some(t) = self.bulk.as_ref().and_then(|b| b.poll_timeout()) {
            next = next.min(t.max(now));
        }
        if let Some(d) = self.disruptions.pending.last() {
            next = next.min(d.0);
        }
        for s in &self.sides {
            if let Some(t) = s.v6.as_ref().and_then(|v| v.withdrawn_until) {
                next = next.min(t.max(now));
            }
        }
        next = next.min(self.next_sweep);
        let settled = self
            .out
            .time_to_direct
            .is_some_and(|t| now >= self.t0 + t + Duration::from_secs(1));
        let stop = self.config.stop_when_direct && settled && self.config.data_interval.is_none();
        if next >= self.end || stop {
            self.now = next.min(self.end);
            self.done = true;
        } else {
            self.now = next;
        }
    }

    /// A packet arrives where it was going: DERP's delivery, a STUN server or the Internet core,
    /// or a side's outermost box.
    fn deliver(&mut self, p: Packet) {
        let now = self.now;
        let config = &self.config;
        match p {
            Packet::Relay { to, from, data } => {
                if self.disruptions.derp_down_until.is_some_and(|u| now < u) {
                    return;
                }
                let from = self.sides[from].node.public_key();
                let input = Input::Derp {
                    region: 1,
                    from,
                    data: &data,
                };
                if let Some((_, e)) = self.sides[to].input(now, input) {
                    note_error(&mut self.out, now - self.t0, to, &e);
                }
            }
            Packet::Up { src, dst, data } => {
                if let Some(k) = STUN_SERVERS.iter().position(|s| *s == dst) {
                    let mut buf = [0u8; 1500];
                    if let Ok(r) = self.stun[k].handle_packet(dst, src, &data, &mut buf) {
                        let side = self.sides.iter().position(|s| s.owns(src.ip()));
                        if let Some(side) = side {
                            let data = buf[..r.len].to_vec();
                            let down = |data| Packet::Down {
                                side,
                                src: dst,
                                dst: r.to,
                                data,
                            };
                            let sd = &mut self.sides[side];
                            if let Some(link) = sd.link.as_mut() {
                                for at in link[1].carry(now, wire_len(dst, r.len), &mut self.rng) {
                                    self.queue.push(at, down(data.clone()));
                                }
                            } else {
                                let d = hop_delay(sd.one_way, config, &mut self.rng);
                                self.queue.push(now + d, down(data));
                            }
                        }
                    }
                    return;
                }
                let Some(side) = self.sides.iter().position(|s| s.owns(dst.ip())) else {
                    return; // unroutable (a LAN candidate of the other side)
                };
                if !fits(self.sides[side].link_mtu, dst, data.len()) {
                    return;
                }
                if self.sides[side].down_until.is_some_and(|u| now < u) {
                    return;
                }
                if self.disruptions.cut_until.is_some_and(|u| now < u) {
                    return;
                }
                let eaten = self.disruptions.drop_data_until.is_some_and(|u| now < u)
                    || self
                        .disruptions
                        .drop_data_to_until
                        .get(side)
                        .is_some_and(|u| u.is_some_and(|u| now < u));
                if eaten && !burrow_disco::looks_like_disco(&data) {
                    return;
                }
                let down = |data| Packet::Down {
                    side,
                    src,
                    dst,
                    data,
                };
                if let Some(link) = self.sides[side].link.as_mut() {
                    for at in link[1].carry(now, wire_len(dst, data.len()), &mut self.rng) {
                        self.queue.push(at, down(data.clone()));
                    }
                    return;
                }
                for _ in 0..copies(config, &mut self.rng) {
                    let d = hop_delay(self.sides[side].one_way, config, &mut self.rng);
                    self.queue.push(now + d, down(data.clone()));
                }
            }
            Packet::RelayCore { to, from, data } => {
                if self.disruptions.derp_down_until.is_some_and(|u| now < u) {
                    return;
                }
                let len = wire_len_tcp(data.len());
                let disco = burrow_disco::looks_like_disco(&data);
                let at = match self.sides[to].link.as_mut() {
                    Some(link) => link[1].carry_stream(now, len, disco, &mut self.rng),
                    None => Some(now),
                };
                if let Some(at) = at {
                    self.queue.push(at, Packet::Relay { to, from, data });
                }
            }
            Packet::Down {
                side,
                src,
                mut dst,
                data,
            } => {
                let s = &mut self.sides[side];
                if dst.is_ipv6() {
                    let Some(v6) = s.v6.as_mut().filter(|v| v.up(now) && v.ip == dst.ip()) else {
                        return;
                    };
                    if let Some(fw) = v6.firewall.as_mut() {
                        if fw.inbound(now, dst.port(), src).is_err() {
                            return;
                        }
                    }
                } else if !s.has_v4 {
                    return;
                }
                let chain = if dst.is_ipv4() {
                    &mut s.boxes[..]
                } else {
                    &mut []
                };
                for (table, outside) in chain.iter_mut().rev() {
                    if dst.ip() != *outside {
                        return;
                    }
                    match table.inbound(now, dst.port(), src) {
                        Ok(internal) => {
                            if table.config().translate {
                                dst = internal;
                            }
                        }
                        Err(_) => return,
                    }
                }
                if dst.is_ipv4() && dst.ip() != s.ip {
                    return;
                }
                let socket = match dst.port() {
                    MAIN_PORT => 0,
                    RELAY_PORT => RELAY_SOCKET,
                    p if p > BIRTHDAY_BASE_PORT => p - BIRTHDAY_BASE_PORT,
                    _ => return,
                };
                let input = Input::Udp {
                    socket,
                    from: src,
                    data: &data,
                };
                if let Some((_, e)) = s.input(now, input) {
                    note_error(&mut self.out, now - self.t0, side, &e);
                }
            }
        }
    }

    /// Applies every scripted disruption that is due.
    fn apply_disruptions(&mut self) {
        let now = self.now;
        while self.disruptions.pending.last().is_some_and(|d| d.0 <= now) {
            let (_, d) = self.disruptions.pending.pop().expect("checked");
            let ds = &mut self.disruptions;
            match d {
                Disruption::FlushNat(side) => {
                    if let Some((table, _)) = self.sides[side].boxes.last_mut() {
                        let c = table.config().clone();
                        let r = ChaCha20Rng::seed_from_u64(self.rng.next_u64());
                        *table = NatTable::new(c, r);
                    }
                }
                Disruption::DerpRestart(x) => ds.derp_down_until = Some(now + x),
                Disruption::RelayDown(k, x) => {
                    if let Some(s) = self.sides.get_mut(2 + k) {
                        s.down_until = Some(now + x);
                    }
                }
                Disruption::CutDirect(x) => ds.cut_until = Some(now + x),
                Disruption::DropData(x) => ds.drop_data_until = Some(now + x),
                Disruption::DropDataTo(k, x) => {
                    if let Some(u) = ds.drop_data_to_until.get_mut(k) {
                        *u = Some(now + x);
                    }
                }
                Disruption::WithdrawIpv6(side, x) => {
                    let s = &mut self.sides[side];
                    if let Some(v6) = s.v6.as_mut() {
                        v6.withdrawn_until = Some(now + x);
                        let addrs = s.local_addrs(now);
                        s.node.set_local_addrs(now, addrs);
                    }
                }
                Disruption::LinkMtu(side, mtu) => self.sides[side].link_mtu = mtu,
                Disruption::NewAddress(side) => self.renumber(side),
                Disruption::ControlRestart => {
                    for s in 0..2 {
                        let other = &self.sides[1 - s].node;
                        let endpoints = other.candidates().iter().map(|c| c.addr).collect();
                        let peer = PeerConfig {
                            endpoints,
                            ..peer_of(other, 1 - s)
                        };
                        if let Err(e) = self.sides[s].node.add_peer(now, peer) {
                            note_error(&mut self.out, now - self.t0, s, &e);
                        }
                    }
                }
                Disruption::RebootGateway(side) => {
                    let s = &mut self.sides[side];
                    if let Some(pm) = s.portmap.as_mut() {
                        if let Some(g) = pm.gateway.as_mut() {
                            g.reboot(now);
                        }
                        pm.sync_forwards = true;
                    }
                    if let Some((table, _)) = s.boxes.first_mut() {
                        let c = table.config().clone();
                        let r = ChaCha20Rng::seed_from_u64(self.rng.next_u64());
                        *table = NatTable::new(c, r);
                    }
                }
            }
        }
    }

    /// Side `side` gets a new public IPv4 address (`Disruption::NewAddress`).
    fn renumber(&mut self, side: usize) {
        let now = self.now;
        let s = &mut self.sides[side];
        s.renumbered = s.renumbered % 250 + 1;
        let ip = IpAddr::V4(Ipv4Addr::new(198, 18, side as u8, s.renumbered));
        s.public_ip = ip;
        let translates = s.boxes.iter().any(|b| b.0.config().translate);
        if let Some((table, outside)) = s.boxes.last_mut() {
            *outside = ip;
            let c = table.config().clone();
            *table = NatTable::new(c, ChaCha20Rng::seed_from_u64(self.rng.next_u64()));
        }
        if !translates {
            // The host's own address is the public one: its interface changed.
            s.ip = ip;
            for b in s.boxes.iter_mut() {
                b.1 = ip;
            }
            let addrs = s.local_addrs(now);
            s.node.set_local_addrs(now, addrs);
        } else if s.boxes.len() == 1 {
            // The gateway itself was renumbered: its mappings name the new address.
            let model = self.config.chains[side][0].gateway.as_ref();
            if let (Some(pm), Some(model), IpAddr::V4(outside)) = (s.portmap.as_mut(), model, ip) {
                let seed = self.rng.next_u64();
                pm.gateway = Some(burrow_portmap::gateway::Gateway::new(
                    model.config(pm.lan_ip, outside),
                    now,
                    seed,
                ));
                pm.sync_forwards = true;
            }
        }
    }

    /// Each node sends its next application packet, when one is due.
    fn send_data(&mut self) {
        let now = self.now;
        let (Some(t), Some(iv)) = (self.traffic.next, self.config.data_interval) else {
            return;
        };
        if t > now {
            return;
        }
        if !self.config.data_active.is_empty() {
            let e = now - self.t0;
            match self.config.data_active.iter().find(|w| e < w.1) {
                None => {
                    self.traffic.next = None;
                    return;
                }
                Some(w) if e < w.0 => {
                    self.traffic.next = Some(self.t0 + w.0);
                    return;
                }
                Some(_) => {}
            }
        }
        if now + self.config.data_quiet_tail < self.end {
            for s in 0..2 {
                let oversize = |net: &Self| {
                    let node = &net.sides[s].node;
                    node.stats(&net.peers[s])
                        .map_or(0, |st| st.tx_oversize_relay)
                };
                let before = oversize(self);
                let tr = &mut self.traffic;
                tr.seq[s] += 1;
                let packet = app_packet(s, tr.seq[s], tr.size[s]);
                // Whether it goes direct: one queued for a handshake leaves later, over DERP
                // if the direct path's size does not carry it.
                let direct = self.sides[s].node.goes_direct(&self.peers[s], packet.len());
                self.send_packets(s, std::iter::once(packet.as_slice()));
                // Too large for the direct path (below the tunnel's minimum): it took DERP.
                let direct = direct && oversize(self) == before;
                let tr = &mut self.traffic;
                tr.sent[s].push((now - self.t0, direct));
                self.out.data_sent += 1;
                if now >= self.t0 + self.config.measure_from {
                    tr.first_measured[s].get_or_insert(tr.seq[s]);
                    self.out.tail_sent += 1;
                }
            }
        }
        self.traffic.next = Some(t + iv);
    }

    /// The bulk transfer's sender puts out what its window and timer allow.
    fn send_bulk(&mut self) {
        let now = self.now;
        let Some(b) = self.bulk.as_mut() else {
            return;
        };
        let burst = b.poll_send(now);
        self.send_packets(0, burst.iter().map(Vec::as_slice));
    }

    /// Node `s` received a segment of the bulk transfer: the receiver ACKs data, the sender
    /// takes ACKs (and may retransmit or send more).
    pub(super) fn on_segment(&mut self, s: usize, data: &[u8]) {
        let now = self.now;
        let Some(b) = self.bulk.as_mut() else {
            return;
        };
        let reply = match super::bulk::parse(s, data) {
            Some(super::bulk::Segment::Data(n)) => Some(b.on_data(now, n)),
            Some(super::bulk::Segment::Ack(n)) => b.on_ack(now, n),
            None => None,
        };
        let mut out: Vec<Vec<u8>> = reply.into_iter().collect();
        if s == 0 {
            out.extend(b.poll_send(now));
        }
        self.send_packets(s, out.iter().map(Vec::as_slice));
    }

    /// Node `s` sends these packets to its peer, as one batch.
    fn send_packets<'a>(&mut self, s: usize, packets: impl Iterator<Item = &'a [u8]>) {
        let now = self.now;
        let peer = self.peers[s];
        let mut batch = PacketBatch::new();
        for p in packets {
            batch.push(peer, p);
        }
        let side = &mut self.sides[s];
        side.node
            .send_batch(now, &batch, &mut side.tx, &mut side.rx);
    }

    /// Hands the packets node `s` delivered to the run, as the events they were.
    pub(super) fn take_delivered(&mut self, s: usize) {
        loop {
            let mut rx = std::mem::take(&mut self.sides[s].rx);
            if rx.is_empty() {
                self.sides[s].rx = rx;
                return;
            }
            for (peer, data) in rx.iter() {
                let data = data.to_vec();
                self.on_event(s, Event::Packet { peer, data });
            }
            rx.clear();
            // The memory is kept unless the packets' answers delivered more meanwhile.
            if self.sides[s].rx.is_empty() {
                self.sides[s].rx = rx;
            }
        }
    }

    /// Side `s`'s port mapper: its timers, its exchanges with the gateway one LAN hop away
    /// (answered at once), its mappings told to the node, and the gateway's table applied to
    /// the innermost box.
    fn run_port_mapping(&mut self, s: usize) {
        let now = self.now;
        let t0 = self.t0;
        let side = &mut self.sides[s];
        let Some(pm) = side.portmap.as_mut() else {
            return;
        };
        if pm.mapper.poll_timeout().is_some_and(|t| t <= now) {
            pm.mapper.handle_timeout(now);
        }
        let IpAddr::V4(me) = side.ip else {
            return;
        };
        let from = std::net::SocketAddrV4::new(me, burrow_portmap::pmp::CLIENT_PORT);
        loop {
            let mut moved = false;
            while let Some(t) = pm.mapper.poll_transmit() {
                moved = true;
                let Some(g) = pm.gateway.as_mut() else {
                    continue;
                };
                match t {
                    burrow_portmap::Transmit::Udp { dst, payload } => {
                        let to_gateway = dst.ip() == IpAddr::V4(pm.lan_ip)
                            || dst == SocketAddr::V4(burrow_portmap::upnp::ssdp::SSDP_ADDR);
                        if !to_gateway {
                            continue;
                        }
                        if let Some(answer) = g.handle_udp(now, from, dst.port(), &payload) {
                            let src = SocketAddr::new(IpAddr::V4(pm.lan_ip), dst.port());
                            let input = burrow_portmap::Input::Udp {
                                from: src,
                                data: &answer,
                            };
                            let _ = pm.mapper.handle_input(now, input);
                        }
                    }
                    burrow_portmap::Transmit::Http { id, dst, request } => {
                        let answer = (dst.ip() == IpAddr::V4(pm.lan_ip))
                            .then(|| g.handle_http(now, from, &request))
                            .flatten();
                        let input = burrow_portmap::Input::Http {
                            id,
                            response: answer.as_deref(),
                        };
                        let _ = pm.mapper.handle_input(now, input);
                    }
                }
            }
            while let Some(e) = pm.mapper.poll_event() {
                moved = true;
                let at = (now - t0).as_secs_f64();
                match e {
                    burrow_portmap::Event::Mapped(m) => {
                        side.node.set_port_mapping(now, Some(m.external));
                        self.out.time_to_mapping[s].get_or_insert(now - t0);
                        self.out.timeline.push(format!(
                            "{at:8.3}s node{s} port mapping {} via {}{}",
                            m.external,
                            m.protocol.name(),
                            if m.private_external {
                                " (private: double NAT)"
                            } else {
                                ""
                            }
                        ));
                    }
                    burrow_portmap::Event::Lost { protocol, reason } => {
                        side.node.set_port_mapping(now, None);
                        self.out.timeline.push(format!(
                            "{at:8.3}s node{s} port mapping via {} lost: {reason}",
                            protocol.name()
                        ));
                    }
                    burrow_portmap::Event::GatewayRestarted(p) => {
                        self.out.timeline.push(format!(
                            "{at:8.3}s node{s} gateway restarted ({}): mapping again",
                            p.name()
                        ));
                    }
                    burrow_portmap::Event::Closed => side.node.set_port_mapping(now, None),
                    burrow_portmap::Event::Report(r) => {
                        if r.mapping.is_none() {
                            let why: Vec<String> = r
                                .protocols
                                .iter()
                                .filter_map(|p| {
                                    Some(format!("{} {}", p.protocol.name(), p.error.as_ref()?))
                                })
                                .collect();
                            self.out.timeline.push(format!(
                                "{at:8.3}s node{s} no port mapping: {}",
                                why.join(", ")
                            ));
                        }
                    }
                }
            }
            if !moved {
                break;
            }
            pm.sync_forwards = true;
        }
        if !std::mem::take(&mut pm.sync_forwards) {
            return;
        }
        // The gateway's table, as the innermost box's forwarded ports.
        if let (Some(g), Some((table, _))) = (pm.gateway.as_ref(), side.boxes.first_mut()) {
            let forwards = g
                .mappings(now)
                .filter(|m| m.protocol == burrow_portmap::TransportProtocol::Udp)
                .map(|m| (m.external_port, SocketAddr::V4(m.internal)))
                .collect();
            table.set_forwards(&forwards);
        }
    }

    /// Puts node `s`'s output on the wires: DERP, or UDP out through its NAT chain.
    fn transmit(&mut self, s: usize) {
        let mut batch = std::mem::take(&mut self.sides[s].tx);
        self.sides[s].node.poll_transmits(&mut batch);
        for (dest, bytes) in batch.iter() {
            self.transmit_one(s, Transmit::new(dest, bytes.to_vec()));
        }
        batch.clear();
        self.sides[s].tx = batch;
    }

    /// Puts one transmit of node `s` on the wires.
    fn transmit_one(&mut self, s: usize, t: Transmit) {
        let now = self.now;
        {
            let (dst, payload) = match &t {
                Transmit::Derp { payload, .. } => (None, payload),
                Transmit::Udp { dst, payload, .. } => (Some(*dst), payload),
            };
            scan(payload, &self.secrets, &mut self.out);
            if let Some(tap) = self.tap.as_mut() {
                let at = now - self.t0;
                tap(WireSend {
                    at,
                    node: s,
                    dst,
                    payload,
                });
            }
            match t {
                Transmit::Derp { payload, dst, .. } => {
                    let Some(to) = self.sides.iter().position(|x| x.node.public_key() == dst)
                    else {
                        return;
                    };
                    let d = self.config.derp_one_way * 2;
                    let linked = self.sides[s].link.is_some() || self.sides[to].link.is_some();
                    if !linked {
                        let relay = Packet::Relay {
                            to,
                            from: s,
                            data: payload,
                        };
                        self.queue.push(now + d, relay);
                        return;
                    }
                    // Up the sender's access link, through DERP, then down the receiver's.
                    let len = wire_len_tcp(payload.len());
                    // The DERP client sends disco ahead of queued data.
                    let disco = burrow_disco::looks_like_disco(&payload);
                    let up = match self.sides[s].link.as_mut() {
                        Some(link) => link[0].carry_stream(now, len, disco, &mut self.rng),
                        None => Some(now),
                    };
                    if let Some(at) = up {
                        let core = Packet::RelayCore {
                            to,
                            from: s,
                            data: payload,
                        };
                        self.queue.push(at + d, core);
                    }
                }
                Transmit::Udp {
                    socket,
                    dst,
                    payload,
                } => {
                    let port = match socket {
                        0 => MAIN_PORT,
                        RELAY_SOCKET => RELAY_PORT,
                        _ => BIRTHDAY_BASE_PORT + socket,
                    };
                    if self.sides[s].down_until.is_some_and(|u| now < u) {
                        return;
                    }
                    if !fits(self.sides[s].link_mtu, dst, payload.len()) {
                        return;
                    }
                    let Some(src) = send_out(&mut self.sides[s], now, port, dst) else {
                        return; // a box dropped it, or the host has no address of that family
                    };
                    let up = |data| Packet::Up { src, dst, data };
                    if let Some(link) = self.sides[s].link.as_mut() {
                        for at in link[0].carry(now, wire_len(dst, payload.len()), &mut self.rng) {
                            self.queue.push(at, up(payload.clone()));
                        }
                        return;
                    }
                    for _ in 0..copies(&self.config, &mut self.rng) {
                        let d = hop_delay(self.sides[s].one_way, &self.config, &mut self.rng);
                        self.queue.push(now + d, up(payload.clone()));
                    }
                }
            }
        }
    }
}

/// The IP packet a UDP payload of `len` bytes to or from `peer` makes.
fn wire_len(peer: SocketAddr, len: usize) -> usize {
    len + if peer.is_ipv4() { 28 } else { 48 }
}

/// What a DERP frame of `len` bytes costs on an access link: its frame header, TLS's record
/// overhead and TCP/IP's headers.
fn wire_len_tcp(len: usize) -> usize {
    len + 5 + 22 + 40
}

/// Whether a UDP datagram of `len` bytes to or from `peer` fits a link of `mtu`.
fn fits(mtu: Option<usize>, peer: SocketAddr, len: usize) -> bool {
    let ip = if peer.is_ipv4() { 20 } else { 40 };
    mtu.is_none_or(|m| len + ip + 8 <= m)
}

/// The source a datagram from `side`'s socket on `port` to `dst` has on the Internet: past
/// the IPv4 boxes or the IPv6 firewall, or `None` when one drops it or the host has no
/// address of `dst`'s family.
fn send_out(side: &mut Side, now: Instant, port: u16, dst: SocketAddr) -> Option<SocketAddr> {
    if dst.is_ipv6() {
        let v6 = side.v6.as_mut().filter(|v| v.up(now))?;
        let src = SocketAddr::new(v6.ip, port);
        if let Some(fw) = v6.firewall.as_mut() {
            fw.outbound(now, src, dst).ok()?;
        }
        return Some(src);
    }
    if !side.has_v4 {
        return None;
    }
    let inside = SocketAddr::new(side.ip, port);
    translate_out(side, now, inside, dst)
}

/// The source a datagram from `src` to `dst` has past the last of `side`'s boxes, or `None`
/// when a box drops it.
fn translate_out(
    side: &mut Side,
    now: Instant,
    mut src: SocketAddr,
    dst: SocketAddr,
) -> Option<SocketAddr> {
    for (table, outside) in side.boxes.iter_mut() {
        let port = table.outbound(now, src, dst).ok()?;
        if table.config().translate {
            src = SocketAddr::new(*outside, port);
        }
    }
    Some(src)
}

/// Node `s` behind its chain of boxes (innermost first; the outermost has the public address).
fn new_side(config: &FastConfig, s: usize, wg: PrivateKey, disco: PrivateKey, t0: Instant) -> Side {
    let relay = s.checked_sub(2).map(|k| &config.relays[k]);
    let chain = match relay {
        Some(r) => &r.chain,
        None => &config.chains[s],
    };
    let public_ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10 + s as u8));
    let mut boxes = Vec::new();
    for (k, c) in chain.iter().enumerate() {
        let outermost = k + 1 == chain.len();
        let outside = if outermost {
            public_ip
        } else {
            IpAddr::V4(Ipv4Addr::new(100, 64, s as u8, 1 + k as u8))
        };
        let rng = ChaCha20Rng::seed_from_u64(derive_seed(config.seed, &format!("box{s}.{k}")));
        boxes.push((NatTable::new(c.clone(), rng), outside));
    }
    let translates = chain.iter().any(|c| c.translate);
    let ip = if translates {
        IpAddr::V4(Ipv4Addr::new(10, s as u8 + 1, 0, 2))
    } else {
        public_ip
    };
    let access = config.ipv6.get(s).and_then(Option::as_ref);
    let v6 = access.map(|a| SideV6 {
        ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x10 + s as u16, 0, 0, 0, 0, 2)),
        firewall: a.firewall.clone().map(|c| {
            let rng = ChaCha20Rng::seed_from_u64(derive_seed(config.seed, &format!("fw6.{s}")));
            NatTable::new(c, rng)
        }),
        withdrawn_until: None,
    });
    let has_v4 = !access.is_some_and(|a| a.only);
    let mut nc = NodeConfig::new(wg, disco, derive_seed(config.seed, &format!("node{s}")));
    // Every server of both families, as a real node's DERP map lists them.
    nc.stun_servers = STUN_SERVERS.to_vec();
    nc.local_addrs = [has_v4.then_some(ip), v6.as_ref().map(|v| v.ip)]
        .into_iter()
        .flatten()
        .map(|ip| SocketAddr::new(ip, MAIN_PORT))
        .collect();
    nc.probe = config.probe;
    nc.prediction = config.prediction;
    if let Some(m) = config.mtu {
        nc.mtu = m;
    }
    if relay.is_some() {
        nc.relay_server = Some(RelayServerSettings::on_port(RELAY_PORT));
    }
    // No control plane here: the two nodes trust each other's advertised endpoints.
    nc.birthday_needs_control_ip = false;
    // Behind a translating box the node asks its gateway (the innermost box) for a mapping.
    let portmap = match ip {
        IpAddr::V4(me) if translates && config.port_mapping && has_v4 => {
            let lan_ip = Ipv4Addr::new(10, s as u8 + 1, 0, 1);
            let seed = derive_seed(config.seed, &format!("portmap{s}"));
            let pc = burrow_portmap::PortMapperConfig::new(lan_ip, me, MAIN_PORT, seed);
            let mut mapper = burrow_portmap::PortMapper::new(pc);
            mapper.start(t0);
            let gateway = match (chain[0].gateway.as_ref(), boxes[0].1) {
                (Some(g), IpAddr::V4(outside)) => Some(burrow_portmap::gateway::Gateway::new(
                    g.config(lan_ip, outside),
                    t0,
                    seed ^ 1,
                )),
                _ => None,
            };
            Some(SidePortMap {
                mapper,
                gateway,
                lan_ip,
                sync_forwards: true,
            })
        }
        _ => None,
    };
    Side {
        node: Node::new(nc, t0),
        ip,
        boxes,
        public_ip,
        v6,
        has_v4,
        one_way: relay.map_or(config.one_way, |r| r.one_way),
        down_until: None,
        link_mtu: config.link_mtu.get(s).copied().flatten(),
        link: None,
        portmap,
        renumbered: 0,
        tx: TransmitBatch::new(),
        rx: PacketBatch::new(),
    }
}

/// Node `n` (side `s`) as a peer: its keys and its tailnet address 100.64.0.(s + 1).
fn peer_of(n: &Node, s: usize) -> PeerConfig {
    PeerConfig {
        node_key: n.public_key(),
        disco_key: n.disco_public_key(),
        home_region: 1,
        endpoints: Vec::new(),
        allowed_ips: vec![IpAddr::from([100, 64, 0, s as u8 + 1]).into()],
    }
}

impl SideV6 {
    /// The address is configured (not withdrawn) at `now`.
    fn up(&self, now: Instant) -> bool {
        self.withdrawn_until.is_none_or(|t| now >= t)
    }
}

impl Side {
    /// One datagram or relayed packet for the node, through its batch call; the refusal, if
    /// it was refused.
    fn input(&mut self, now: Instant, input: Input<'_>) -> Option<(usize, burrow_node::NodeError)> {
        let outcome = self
            .node
            .handle_batch(now, [input], &mut self.tx, &mut self.rx);
        outcome.last_error
    }

    /// Whether `ip` reaches this side from the Internet: its outermost IPv4 address (when it
    /// has IPv4) or its IPv6 address.
    fn owns(&self, ip: IpAddr) -> bool {
        (self.has_v4 && self.public_ip == ip) || self.v6.as_ref().is_some_and(|v| v.ip == ip)
    }

    /// The node's interface addresses at `now`, as its driver would list them.
    fn local_addrs(&self, now: Instant) -> Vec<SocketAddr> {
        let v4 = self.has_v4.then_some(self.ip);
        let v6 = self.v6.as_ref().filter(|v| v.up(now)).map(|v| v.ip);
        [v4, v6]
            .into_iter()
            .flatten()
            .map(|ip| SocketAddr::new(ip, MAIN_PORT))
            .collect()
    }
}
