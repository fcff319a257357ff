//! What a [`FastNet`] run records: the nodes' events as counters and timeline lines, and the
//! end-of-run figures.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use burrow_node::Event;
use burrow_punch::Route;

use super::bulk;
use super::episodes::EpisodeKind;
use super::packets::{app_seq, quoted_seq};
use super::{FastNet, FastOutcome};

impl FastNet {
    /// Records one of node `s`'s events: application packets received, and the timeline.
    pub(super) fn on_event(&mut self, s: usize, e: Event) {
        let now = self.now;
        let at = (now - self.t0).as_secs_f64();
        if s >= 2 {
            // A relay node: only its handshakes with the two go on the timeline.
            return;
        }
        match e {
            Event::PeerRelayChanged { relay, rtt, peer } if peer == self.peers[s] => {
                let side =
                    relay.and_then(|k| self.sides.iter().position(|x| x.node.public_key() == k));
                self.out.timeline.push(format!(
                    "{at:>8.3}s node{s} peer relay {}{}",
                    side.map_or("none (DERP)".to_string(), |k| format!("via relay{}", k - 2)),
                    rtt.map_or(String::new(), |r| format!(
                        ", {:.1} ms through it",
                        r.as_secs_f64() * 1000.0
                    ))
                ));
                self.relayed_since[s] = side.map(|k| (now, k));
                self.note_route(s);
                let both = (0..2)
                    .all(|k| self.relayed_since[k].is_some() || self.direct_since[k].is_some());
                if both && self.out.time_to_peer_relay.is_none() {
                    self.out.time_to_peer_relay = Some(now - self.t0);
                }
            }
            Event::Packet { data, .. } if bulk::parse(s, &data).is_some() => {
                self.on_segment(s, &data);
            }
            Event::Packet { data, .. } => {
                // An ICMP "fragmentation needed" for one of our own packets: told, not lost.
                if data.len() >= 28 && data[9] == 1 && data[20..22] == [3, 4] {
                    if let Some(n) = quoted_seq(s, &data[28..]) {
                        self.traffic.told[s].insert(n);
                        self.out.too_big[s] += 1;
                        let mtu = usize::from(u16::from_be_bytes([data[26], data[27]]));
                        let size = &mut self.traffic.size[s];
                        *size = size.map(|x| x.min(mtu));
                    }
                    return;
                }
                let Some(n) = app_seq(1 - s, &data) else {
                    return;
                };
                if !self.traffic.received[s].insert(n) {
                    return;
                }
                // The first packet, and the first on each new path, with its one-way latency
                // (packet n left at (n - 1) × interval).
                let route = self.route(s).unwrap_or(Route::Relay);
                if self.traffic.last_reported_route[s] != Some(route) {
                    self.traffic.last_reported_route[s] = Some(route);
                    if let Some(&(sent, _)) = self.traffic.sent[1 - s].get(n as usize - 1) {
                        let sent_at = self.t0 + sent;
                        let via = match route {
                            Route::Relay => "DERP".to_string(),
                            Route::Direct(a) => format!("direct {a}"),
                        };
                        self.out.timeline.push(format!(
                            "{at:>8.3}s node{s} packet #{n} from node{} arrived {:.1} ms after it was sent; node{s} now sends on {via}",
                            1 - s,
                            now.saturating_duration_since(sent_at).as_secs_f64() * 1000.0
                        ));
                    }
                }
                self.out.data_received += 1;
                if self.traffic.first_measured[1 - s].is_some_and(|f| n >= f) {
                    self.out.tail_received += 1;
                }
            }
            Event::Endpoints { nat, candidates } => {
                let what = format!(
                    "{} candidates ({}), NAT {}",
                    candidates.len(),
                    candidates
                        .iter()
                        .map(|c| c.addr.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    match nat {
                        None => "unknown (no STUN answer)".to_string(),
                        Some(n) if !n.mapping_varies => "easy (mapping fixed)".to_string(),
                        Some(n) => match n.delta {
                            Some(d) => format!("hard, sequential ports (step {d})"),
                            None => "hard, random ports".to_string(),
                        },
                    }
                );
                if self.last_endpoints[s].as_ref() != Some(&what) {
                    self.out
                        .timeline
                        .push(format!("{at:>8.3}s node{s} endpoints: {what}"));
                    self.last_endpoints[s] = Some(what);
                }
            }
            Event::BirthdayStarted { probing, peer } if peer == self.peers[s] => {
                let role = if probing {
                    "probing random ports"
                } else {
                    "opening sockets"
                };
                self.out
                    .timeline
                    .push(format!("{at:>8.3}s node{s} birthday: {role}"));
            }
            Event::BirthdayExhausted {
                probes,
                retry_at,
                peer,
            } if peer == self.peers[s] => {
                self.out.timeline.push(format!(
                    "{at:>8.3}s node{s} birthday attempt spent its budget ({probes} packets so far); next at {:.3}s",
                    (retry_at - self.t0).as_secs_f64()
                ));
            }
            Event::HandshakeDone { peer } if peer == self.peers[s] => {
                self.out
                    .timeline
                    .push(format!("{at:>8.3}s node{s} WireGuard handshake done"));
            }
            Event::PathChanged { from, to, peer } if peer == self.peers[s] => {
                self.out
                    .timeline
                    .push(format!("{at:>8.3}s node{s} path {from:?} -> {to:?}"));
                self.out.switches += 1;
                self.out.switches_by_node[s] += 1;
                if let Some(since) = self.direct_since[s] {
                    self.out.direct_time[s] += now - since;
                }
                self.direct_since[s] = match to {
                    Route::Direct(_) => Some(now),
                    Route::Relay => None,
                };
                self.note_route(s);
                self.direct_v6_since[s] = match to {
                    Route::Direct(a) if a.is_ipv6() => Some(now),
                    _ => None,
                };
                if self.direct_v6_since.iter().all(Option::is_some)
                    && self.out.time_to_direct_v6.is_none()
                {
                    self.out.time_to_direct_v6 = Some(now - self.t0);
                }
                let via =
                    |k: usize| self.direct_since[k].is_some() || self.relayed_since[k].is_some();
                if via(0) && via(1) && self.out.time_to_peer_relay.is_none() {
                    self.out.time_to_peer_relay = Some(now - self.t0);
                }
                if self.direct_since.iter().all(Option::is_some)
                    && self.out.time_to_direct.is_none()
                {
                    self.out.time_to_direct = Some(now - self.t0);
                    for k in 0..2 {
                        self.out.probes_before_direct[k] = self.probes(k);
                        self.out.rounds_before_direct[k] = self.sides[k]
                            .node
                            .stats(&self.peers[k])
                            .map_or(0, |st| st.prediction_rounds);
                    }
                }
            }
            _ => {}
        }
    }

    /// Node `s`'s route from now on, for the timelines (when recording them).
    fn note_route(&mut self, s: usize) {
        let kind = if self.direct_since[s].is_some() {
            EpisodeKind::Direct
        } else if self.relayed_since[s].is_some() {
            EpisodeKind::PeerRelay
        } else {
            EpisodeKind::Relay
        };
        if let Some(e) = self.episodes.as_mut() {
            e[s].route(self.now, kind);
        }
    }

    /// Both nodes' doubt episodes as their explanations report them (the engine keeps the
    /// latest few, so this runs once a simulated second while recording).
    pub(super) fn poll_doubts(&mut self) {
        let Some(rec) = self.episodes.as_mut() else {
            return;
        };
        for (s, r) in rec.iter_mut().enumerate() {
            let Some(x) = self.sides[s].node.explain(&self.peers[s]) else {
                continue;
            };
            for d in &x.doubts {
                r.doubt(d.began, d.ended.map(|e| e.0));
            }
        }
    }

    /// Birthday packets node `side` has sent to its peer.
    pub(super) fn probes(&self, side: usize) -> u64 {
        let s = &self.sides[side];
        s.node.stats(&self.peers[side]).map_or(0, |st| st.probes)
    }

    /// Ends the run where it stands and fills in the end-of-run fields: probes, final routes,
    /// NAT peaks, node 0's explanation, the application packets lost.
    pub fn finish(mut self) -> FastOutcome {
        let t0 = self.t0;
        let now = self.now;
        self.out.bulk = self.bulk.as_mut().map(|b| b.finish(now));
        self.poll_doubts();
        if let Some(rec) = &self.episodes {
            self.out.episodes = [rec[0].episodes(t0, now), rec[1].episodes(t0, now)];
        }
        for s in 0..2 {
            if let Some(since) = self.direct_since[s] {
                self.out.direct_time[s] += now - since;
            }
            self.out.link_stats[s] = self.sides[s]
                .link
                .as_ref()
                .map(|l| l.each_ref().map(|w| w.stats));
        }
        for s in 0..2 {
            self.out.probes += self.probes(s);
            let relay = self.sides[s].node.peer_relay(&self.peers[s]);
            self.out.routes[s] = match (self.route(s).unwrap_or(Route::Relay), relay) {
                (Route::Relay, Some(r)) => {
                    let k = self
                        .sides
                        .iter()
                        .position(|x| x.node.public_key() == r.relay);
                    format!("PeerRelay(relay{})", k.map_or(0, |k| k - 2))
                }
                (route, _) => format!("{route:?}"),
            };
        }
        let relay_side = |net: &Self, s: usize| {
            let r = net.sides[s].node.peer_relay(&net.peers[s])?;
            net.sides
                .iter()
                .position(|x| x.node.public_key() == r.relay)
        };
        if matches!(self.route(0), Some(Route::Relay))
            && matches!(self.route(1), Some(Route::Relay))
        {
            let (a, b) = (relay_side(&self, 0), relay_side(&self, 1));
            self.out.peer_relay = a.filter(|_| a == b).map(|k| k - 2);
        }
        let reports = self.sides[0].node.peer_relays(&self.peers[0]);
        self.out.relay_rtts = (2..self.sides.len())
            .map(|k| {
                let key = self.sides[k].node.public_key();
                reports
                    .iter()
                    .find(|r| r.relay == key && r.state == burrow_node::RelayState::Alive)
                    .and_then(|r| r.rtt)
            })
            .collect();
        for s in 0..self.sides.len() {
            let fw6 = self.sides[s].v6.as_ref().and_then(|v| v.firewall.as_ref());
            for table in self.sides[s].boxes.iter().map(|b| &b.0).chain(fw6) {
                self.out.peak_sessions = self.out.peak_sessions.max(table.stats().peak_sessions);
            }
        }
        self.out.direct = self.is_direct();
        self.out.direct_v6 =
            (0..2).all(|s| matches!(self.route(s), Some(Route::Direct(a)) if a.is_ipv6()));
        for s in 0..2 {
            let node = &self.sides[s].node;
            let stats = node.stats(&self.peers[s]).unwrap_or_default();
            self.out.doubt_duplicated[s] = stats.tx_doubt;
            self.out.mtu_probes[s] = stats.mtu_probes;
            self.out.oversize_relayed[s] = stats.tx_oversize_relay;
            self.out.path_mtu[s] = node.path_mtu(&self.peers[s]);
            self.out.black_holes[s] = node
                .explain(&self.peers[s])
                .and_then(|x| x.mtu)
                .map_or(0, |(_, r)| r.black_holes);
        }
        if let Some(x) = self.sides[0].node.explain(&self.peers[0]) {
            // One line per candidate: how often it was tried and what came of it last.
            let mut by_addr: BTreeMap<SocketAddr, (usize, String)> = BTreeMap::new();
            for a in &x.attempts {
                let e = by_addr.entry(a.addr).or_default();
                e.0 += 1;
                e.1 = format!("{:?} at {:.3}s", a.outcome, (a.at - t0).as_secs_f64());
            }
            self.out.explanation = x
                .candidates
                .iter()
                .map(|c| {
                    let (n, last) = by_addr.remove(&c.addr).unwrap_or((0, "not tried".into()));
                    format!(
                        "{} ({:?}, {:?}): {n} recent results, last {last}",
                        c.addr, c.kind, c.source
                    )
                })
                .take(12)
                .collect();
            // Each time the direct path was in doubt (fast loss detection).
            for d in &x.doubts {
                self.out.explanation.push(format!(
                    "in doubt {} at {:.3}s: {}, {} datagrams also over the relay",
                    d.addr,
                    (d.began - t0).as_secs_f64(),
                    match d.ended {
                        Some((lasted, how)) =>
                            format!("{how:?} after {:.3}s", lasted.as_secs_f64()),
                        None => "still".to_string(),
                    },
                    d.duplicated
                ));
            }
        }
        for s in 0..2 {
            for (n, &(sent_at, direct)) in (1..).zip(&self.traffic.sent[s]) {
                let lost = !self.traffic.received[1 - s].contains(&n)
                    && !self.traffic.told[s].contains(&n);
                if !lost {
                    continue;
                }
                self.out.lost_by_node[s] += 1;
                self.out.lost_sends[s].push((sent_at, direct));
                if self.out.lost.len() < 32 && sent_at >= self.config.measure_from {
                    self.out.lost.push((s, n, sent_at));
                }
            }
        }
        self.out.elapsed = self.now - t0;
        self.out
    }
}
