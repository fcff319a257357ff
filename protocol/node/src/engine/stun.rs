//! The node's own STUN rounds: what its NAT does, and the candidates it gathers from that.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_punch::{
    canonical_remote, predict_ports, Candidate, CandidateKind, CandidateSource, Family, MAIN_SOCKET,
};
use burrow_stun::client::Event as StunEvent;
use burrow_stun::{BindingClient, BindingRequest, ClientConfig};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::{Event, Node};
use crate::batch::Dest;
use crate::nat::{classify, NatView};

/// How many predicted ports a sequential-NAT node advertises.
const PREDICTED_PORTS: usize = 8;

/// A STUN round ends when every server answered, or this long after it started (a missing
/// server must not hold the node's candidates back for STUN's full 39.5 s; three
/// transmissions have gone out by then, and the next round comes soon).
const STUN_ROUND_CAP: Duration = Duration::from_secs(3);
/// The first retry after a STUN round without an IPv4 answer; it doubles with each such round.
const STUN_RETRY_FIRST: Duration = Duration::from_secs(1);

/// One round of Binding requests, one to each configured STUN server.
pub(super) struct StunRound {
    client: BindingClient,
    /// Unanswered transactions and the server (its index in the config) each went to.
    pending: BTreeMap<burrow_stun::TransactionId, usize>,
    /// Each server's answer so far.
    mapped: Vec<Option<SocketAddr>>,
    started: Instant,
}

impl Node {
    /// The first IPv4 STUN server configured: where the relay socket and the fresh sockets
    /// of port prediction ask for their own mappings.
    pub(super) fn ipv4_stun_server(&self) -> Option<SocketAddr> {
        self.config
            .stun_servers
            .iter()
            .copied()
            .find(SocketAddr::is_ipv4)
    }

    /// A STUN datagram: an answer for the running round, if there is one.
    pub(super) fn handle_stun(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if let Some(round) = self.stun.as_mut() {
            let _ = round.client.handle_input(now, from, data);
        }
        self.drain_stun(now);
    }

    /// The STUN part of `handle_timeout`: the running round's retransmissions and cap, or the
    /// next round when it is due.
    pub(super) fn handle_stun_timeout(&mut self, now: Instant) {
        if let Some(round) = self.stun.as_mut() {
            round.client.handle_timeout(now);
            self.drain_stun(now);
        }
        if self.stun.is_none() && now >= self.next_stun {
            self.start_stun(now);
        }
    }

    /// When the STUN part next needs `handle_timeout`.
    pub(super) fn poll_stun_timeout(&self) -> Option<Instant> {
        match &self.stun {
            Some(r) => {
                let cap = r
                    .mapped
                    .iter()
                    .any(Option::is_some)
                    .then_some(r.started + STUN_ROUND_CAP);
                [r.client.poll_timeout(), cap].into_iter().flatten().min()
            }
            None => Some(self.next_stun),
        }
    }

    pub(super) fn start_stun(&mut self, now: Instant) {
        self.start_relay_stun(now);
        if self.config.stun_servers.is_empty() {
            // No STUN: interface addresses are still candidates.
            self.finish_stun(now, &[]);
            return;
        }
        let mut client = BindingClient::new(
            ClientConfig::default(),
            ChaCha20Rng::seed_from_u64(self.rng.next_u64()),
        );
        let mut pending = BTreeMap::new();
        for (k, s) in self.config.stun_servers.iter().enumerate() {
            pending.insert(client.start(now, BindingRequest::to(*s)), k);
        }
        self.stun = Some(StunRound {
            client,
            pending,
            mapped: vec![None; self.config.stun_servers.len()],
            started: now,
        });
        self.drain_stun(now);
    }

    fn drain_stun(&mut self, now: Instant) {
        let Some(round) = self.stun.as_mut() else {
            return;
        };
        while let Some(t) = round.client.poll_transmit() {
            let dest = Dest::Udp {
                socket: MAIN_SOCKET,
                dst: t.dst,
            };
            self.transmits.push(dest, &t.payload);
        }
        while let Some(e) = round.client.poll_event() {
            let (id, mapped) = match e {
                StunEvent::Success(r) => (r.id, Some(r.mapped)),
                StunEvent::ErrorResponse { id, .. } | StunEvent::TimedOut { id, .. } => (id, None),
            };
            if let Some(k) = round.pending.remove(&id) {
                round.mapped[k] = mapped;
            }
        }
        // Servers of a family we have no address of cannot answer (an IPv4-only host asking
        // an IPv6 server): the round does not wait for them.
        let local = &self.config.local_addrs;
        let reachable = |k: usize| {
            let f = Family::of(self.config.stun_servers[k]);
            local.is_empty() || local.iter().any(|a| Family::of(*a) == f)
        };
        let done =
            !round.pending.values().any(|k| reachable(*k)) || now >= round.started + STUN_ROUND_CAP;
        if !done {
            // The first round: an IPv6 answer (no NAT to classify) and the interface addresses
            // are enough for peers to start on; IPv4's answers may be slow or never come (UDP
            // blocked on IPv4), so do not hold IPv6 back for them.
            let v6: Vec<SocketAddr> = round
                .mapped
                .iter()
                .flatten()
                .map(|a| canonical_remote(*a))
                .filter(|a| Family::of(*a) == Family::Ipv6)
                .collect();
            if self.candidates.is_empty() && !v6.is_empty() {
                self.reflexive_v6 = v6;
                self.refresh_candidates(now, None);
            }
            return;
        }
        let mapped: Vec<SocketAddr> = round.mapped.iter().flatten().copied().collect();
        self.stun = None;
        self.finish_stun(now, &mapped);
    }

    /// A STUN round's answers (possibly none): classify, gather, and tell peers if anything changed.
    ///
    /// Only IPv4 answers say what the NAT does; IPv6 has no NAT (at most a stateful firewall),
    /// so an IPv6 server's answer is simply our global address, a candidate of its own.
    fn finish_stun(&mut self, now: Instant, mapped: &[SocketAddr]) {
        let (v4, v6): (Vec<SocketAddr>, Vec<SocketAddr>) = mapped
            .iter()
            .map(|a| canonical_remote(*a))
            .partition(|a| Family::of(*a) == Family::Ipv4);
        // A round that could not classify our IPv4 mapping (answers lost on a bad link, or
        // UDP blocked) is tried again soon, backing off 1, 2, 4… s up to the usual interval:
        // until it answers, peers behind filtering NATs cannot reach us directly.
        let has_v4 = self.config.local_addrs.is_empty()
            || self.config.local_addrs.iter().any(|a| a.is_ipv4());
        let asks_v4 = self.config.stun_servers.iter().any(|s| s.is_ipv4());
        let v4_servers = self
            .config
            .stun_servers
            .iter()
            .filter(|s| s.is_ipv4())
            .count();
        let incomplete = v4.len() < v4_servers.min(2);
        let wait = if incomplete && has_v4 && asks_v4 {
            let backoff = STUN_RETRY_FIRST * 2u32.saturating_pow(self.stun_failures.min(16));
            self.stun_failures = self.stun_failures.saturating_add(1);
            backoff.min(self.config.restun_interval)
        } else {
            self.stun_failures = 0;
            self.config.restun_interval
        };
        self.next_stun = now + wait;
        // One IPv4 answer cannot show a mapping that varies by destination: a NAT known to be
        // hard (at the same public address) stays hard until a round with two answers says
        // otherwise; its latest port is the answer's.
        let nat = match (classify(&v4), self.nat) {
            (Some(n), Some(o))
                if v4.len() < 2 && o.mapping_varies && o.reflexive.ip() == n.reflexive.ip() =>
            {
                Some(NatView {
                    reflexive: n.reflexive,
                    last_port: n.last_port,
                    ..o
                })
            }
            (n, _) => n,
        };
        self.nat = nat.or(self.nat);
        // A round without an IPv6 answer (one lost datagram) keeps the last one: IPv6 is gone
        // only when our interfaces say so (`set_local_addrs`), not when STUN is quiet.
        if !v6.is_empty() {
            self.reflexive_v6 = v6;
        }
        self.refresh_candidates(now, nat);
    }

    /// The host's interface addresses changed (an address added or withdrawn, a new network):
    /// gather again, tell peers, and ask STUN again soon.
    pub fn set_local_addrs(&mut self, now: Instant, addrs: Vec<SocketAddr>) {
        if addrs == self.config.local_addrs {
            return;
        }
        let lost_v6 = !addrs.iter().any(|a| Family::of(*a) == Family::Ipv6);
        self.config.local_addrs = addrs;
        if lost_v6 {
            // No IPv6 address left: the STUN-learned one is gone with it.
            self.reflexive_v6.clear();
        }
        let nat = self.nat;
        self.refresh_candidates(now, nat);
        if self.stun.is_none() {
            self.next_stun = self.next_stun.min(now);
        }
    }

    /// Gathers the candidates again; tells the driver (for the control plane) and, when they
    /// changed, every peer; and plans birthday searches anew.
    fn refresh_candidates(&mut self, now: Instant, nat: Option<NatView>) {
        let candidates = self.gather(nat);
        let changed = candidates != self.candidates;
        self.events.push_back(Event::Endpoints {
            nat,
            candidates: candidates.clone(),
        });
        if changed {
            self.candidates = candidates;
            for i in 0..self.peers.len() {
                self.peers[i]
                    .paths
                    .set_local_candidates(now, self.candidates.clone());
                self.flush_paths(now, i);
            }
        }
        for i in 0..self.peers.len() {
            self.plan_birthday(now, i);
        }
        self.refresh_relay_addrs();
    }

    /// The gateway mapped our port at `external` (or the mapping is gone): a candidate that
    /// any peer reaches directly, advertised first. With a public mapping the node counts as
    /// behind an easy NAT, so its own birthday searches stop. A private external address (the
    /// gateway sits behind another NAT) reaches no peer outside and is ignored.
    pub fn set_port_mapping(&mut self, now: Instant, external: Option<SocketAddr>) {
        let external = external.filter(|a| CandidateKind::of(*a) != CandidateKind::Lan);
        if self.port_mapping == external {
            return;
        }
        self.port_mapping = external;
        self.mapped_since = external.map(|_| now);
        if external.is_some() {
            // Our own searches wait for the mapping's grace period.
            for p in &mut self.peers {
                p.prober = None;
                p.opening = None;
            }
        }
        let nat = self.nat;
        self.refresh_candidates(now, nat);
        if let Some(nat) = self.nat {
            for i in 0..self.peers.len() {
                self.send_nat_info(i, nat);
            }
        }
    }

    /// The live port mapping, if any.
    pub fn port_mapping(&self) -> Option<SocketAddr> {
        self.port_mapping
    }

    /// The router's IPv6 firewall keeps a pinhole open for our port at `pinhole` (PCP, RFC
    /// 6887 §11), or no longer does: an IPv6 candidate any peer reaches, advertised before the
    /// interface addresses (normally the same address: it then counts as port-mapped). Only a
    /// global IPv6 address is taken.
    pub fn set_ipv6_pinhole(&mut self, now: Instant, pinhole: Option<SocketAddr>) {
        let pinhole = pinhole
            .map(canonical_remote)
            .filter(|a| CandidateKind::of(*a) == CandidateKind::Ipv6 && a.port() != 0)
            .filter(|a| !a.ip().is_multicast() && !a.ip().is_unspecified());
        if self.ipv6_pinhole == pinhole {
            return;
        }
        self.ipv6_pinhole = pinhole;
        let nat = self.nat;
        self.refresh_candidates(now, nat);
    }

    /// The live IPv6 pinhole, if any.
    pub fn ipv6_pinhole(&self) -> Option<SocketAddr> {
        self.ipv6_pinhole
    }

    /// Whether the gateway maps our port on a public address.
    pub(super) fn has_public_mapping(&self) -> bool {
        self.port_mapping.is_some()
    }

    /// Interface addresses, the reflexive address, and predicted ports for a sequential NAT.
    fn gather(&self, nat: Option<NatView>) -> Vec<Candidate> {
        // The IPv6 pinhole first: it is normally one of the interface addresses, and the
        // deduplication below keeps the first (the firewall lets any peer in there).
        let mut out: Vec<Candidate> = self
            .ipv6_pinhole
            .map(|a| Candidate::direct(a, CandidateSource::PortMapping))
            .into_iter()
            .collect();
        out.extend(
            self.config
                .local_addrs
                .iter()
                .map(|a| Candidate::direct(*a, CandidateSource::Interface)),
        );
        // The mapping goes before the STUN-reflexive address (equal when the NAT is easy and
        // kept the port; then it is the one kept): the gateway keeps it open for any peer.
        if let Some(m) = self.port_mapping {
            out.push(Candidate::direct(m, CandidateSource::PortMapping));
        }
        // IPv6 as STUN saw it (normally one of the interface addresses, deduplicated below).
        for a in &self.reflexive_v6 {
            out.push(Candidate::direct(*a, CandidateSource::Stun));
        }
        if let Some(nat) = nat {
            out.push(Candidate::direct(nat.reflexive, CandidateSource::Stun));
            if let Some(delta) = nat.delta {
                for port in predict_ports(nat.last_port, delta, PREDICTED_PORTS, 1024, 65535) {
                    out.push(Candidate::direct(
                        SocketAddr::new(nat.reflexive.ip(), port),
                        CandidateSource::Predicted,
                    ));
                }
            }
        }
        let mut seen = BTreeSet::new();
        out.retain(|c| seen.insert(c.addr));
        out
    }
}
