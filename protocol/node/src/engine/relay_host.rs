//! The relay this node runs for others (`NodeConfig::relay_server`): the `RelayServer` on
//! [`RELAY_SOCKET`], the addresses it advertises (its own STUN mapping among them), and the
//! allocations peers ask for over DERP, granted only when the policy lets both clients use it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use burrow_punch::canonical_remote;
use burrow_relay::{RelayConfig, RelayLimits, RelayServer};
use burrow_stun::client::Event as StunEvent;
use burrow_stun::{BindingClient, BindingRequest, ClientConfig};
use burrow_wg::PublicKey;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::{Node, NodeError, RELAY_SOCKET};
use crate::batch::Dest;

/// Running a relay for others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayServerSettings {
    /// The relay socket's port (the driver binds [`RELAY_SOCKET`] there).
    pub port: u16,
    /// Addresses to advertise besides the ones the engine knows (interface addresses and the
    /// reflexive address with this port), for a port forward or a cloud's public IP.
    pub static_endpoints: Vec<SocketAddr>,
    /// The server's budgets.
    pub limits: RelayLimits,
}

impl RelayServerSettings {
    /// A relay on `port` with the default budgets.
    pub fn on_port(port: u16) -> Self {
        RelayServerSettings {
            port,
            static_endpoints: Vec::new(),
            limits: RelayLimits::default(),
        }
    }
}

impl Node {
    /// Closes the endpoints of our relay whose two clients the policy (and the netmap) no
    /// longer both let use it: allocation is checked once, so a pair revoked later would
    /// otherwise keep its relay as long as it keeps it busy.
    pub(super) fn enforce_relay_policy(&mut self) {
        let Some(server) = self.relay_server.as_mut() else {
            return;
        };
        let (by_disco, peers, clients) = (&self.by_disco, &self.peers, &self.relay_policy.clients);
        let allowed = |k: &PublicKey| {
            by_disco
                .get(k)
                .is_some_and(|&i| clients.contains(&peers[i].config.node_key))
        };
        server.close_unless(|pair| pair.iter().all(allowed));
        self.drain_relay_server();
    }

    /// The relay server's counters, when this node relays.
    pub fn relay_server(&self) -> Option<&RelayServer> {
        self.relay_server.as_ref()
    }

    /// The relay server, when configured (at start).
    pub(super) fn start_relay_server(&mut self, now: Instant) {
        let Some(s) = &self.config.relay_server else {
            return;
        };
        let mut config = RelayConfig::new(Vec::new());
        config.limits = s.limits.clone();
        let rng = ChaCha20Rng::seed_from_u64(self.rng.next_u64());
        self.relay_server = Some(RelayServer::new(now, config, rng));
        self.refresh_relay_addrs();
    }

    /// The relay's advertised addresses: static ones, then interface addresses and the
    /// reflexive IPv4 (when our mapping is fixed) with the relay port.
    pub(super) fn refresh_relay_addrs(&mut self) {
        let (Some(server), Some(s)) = (self.relay_server.as_mut(), &self.config.relay_server)
        else {
            return;
        };
        let mut addrs: Vec<SocketAddr> = s.static_endpoints.clone();
        let port = s.port;
        // The relay socket's own mapping as STUN saw it; until then, a guess when our NAT keeps
        // one mapping for every destination: the reflexive address with the relay port.
        let reflexive = self.relay_mapped.or_else(|| {
            self.nat
                .filter(|n| !n.mapping_varies)
                .map(|n| SocketAddr::new(n.reflexive.ip(), port))
        });
        addrs.extend(reflexive);
        addrs.extend(
            self.reflexive_v6
                .iter()
                .map(|a| SocketAddr::new(a.ip(), port)),
        );
        addrs.extend(
            self.config
                .local_addrs
                .iter()
                .map(|a| SocketAddr::new(a.ip(), port)),
        );
        let mut seen = BTreeSet::new();
        addrs.retain(|a| seen.insert(*a));
        server.set_addrs(addrs);
    }

    /// Asks a STUN server where the relay socket's own mapping is (behind an endpoint-
    /// independent NAT the relay port need not be kept): with each STUN round.
    pub(super) fn start_relay_stun(&mut self, now: Instant) {
        if self.relay_server.is_none() {
            return;
        }
        let Some(server) = self.ipv4_stun_server() else {
            return;
        };
        let mut client = BindingClient::new(
            ClientConfig::default(),
            ChaCha20Rng::seed_from_u64(self.rng.next_u64()),
        );
        client.start(now, BindingRequest::to(server));
        self.relay_stun = Some((client, server));
        self.drain_relay_stun();
    }

    fn drain_relay_stun(&mut self) {
        let Some((client, _)) = self.relay_stun.as_mut() else {
            return;
        };
        let mut mapped = None;
        let mut done = false;
        while let Some(t) = client.poll_transmit() {
            let dest = Dest::Udp {
                socket: RELAY_SOCKET,
                dst: t.dst,
            };
            self.transmits.push(dest, &t.payload);
        }
        while let Some(e) = client.poll_event() {
            done = true;
            if let StunEvent::Success(r) = e {
                mapped = Some(canonical_remote(r.mapped));
            }
        }
        if done {
            self.relay_stun = None;
            if mapped.is_some() && mapped != self.relay_mapped {
                self.relay_mapped = mapped;
                self.refresh_relay_addrs();
            }
        }
    }

    /// The relay socket's STUN retransmissions.
    pub(super) fn handle_relay_stun_timeout(&mut self, now: Instant) {
        if let Some((client, _)) = self.relay_stun.as_mut() {
            if client.poll_timeout().is_some_and(|t| t <= now) {
                client.handle_timeout(now);
            }
        }
        self.drain_relay_stun();
    }

    /// When the relay socket's STUN transaction next needs `handle_timeout`.
    pub(super) fn poll_relay_stun_timeout(&self) -> Option<Instant> {
        self.relay_stun.as_ref().and_then(|(c, _)| c.poll_timeout())
    }

    /// A datagram on the relay socket.
    pub(super) fn handle_relay_socket(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<(), NodeError> {
        if self.relay_server.is_none() {
            return Err(NodeError::Unrecognised(from));
        }
        // The answer to the relay socket's own STUN request (from that server only).
        if let Some((client, server)) = self.relay_stun.as_mut() {
            if burrow_stun::is_stun(data) && canonical_remote(from) == *server {
                let _ = client.handle_input(now, *server, data);
                self.drain_relay_stun();
                return Ok(());
            }
        }
        let Some(server) = self.relay_server.as_mut() else {
            return Err(NodeError::Unrecognised(from));
        };
        let r = server.handle_input(now, canonical_remote(from), data);
        self.drain_relay_server();
        match r {
            Ok(Some(fwd)) => {
                let dest = Dest::Udp {
                    socket: RELAY_SOCKET,
                    dst: fwd.dst,
                };
                self.transmits.push(dest, data);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(NodeError::Relay(e)),
        }
    }

    fn drain_relay_server(&mut self) {
        let Some(server) = self.relay_server.as_mut() else {
            return;
        };
        while let Some(t) = server.poll_transmit() {
            let dest = Dest::Udp {
                socket: RELAY_SOCKET,
                dst: t.dst,
            };
            self.transmits.push(dest, &t.payload);
        }
        while server.poll_event().is_some() {}
    }

    /// The relay server's timers.
    pub(super) fn handle_relay_server_timeout(&mut self, now: Instant) {
        if let Some(s) = self.relay_server.as_mut() {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        self.drain_relay_server();
    }

    /// Peer `j` asks us to relay between `client_disco`: allowed only when we run a relay,
    /// `j` is one of the two, and the policy lets both use us.
    pub(super) fn handle_allocate_request(
        &mut self,
        now: Instant,
        j: usize,
        client_disco: [PublicKey; 2],
        generation: u32,
    ) {
        if self.relay_server.is_none() {
            return;
        }
        let requester = self.peers[j].config.disco_key;
        let allowed = |k: &PublicKey| {
            self.by_disco.get(k).is_some_and(|&i| {
                self.relay_policy
                    .clients
                    .contains(&self.peers[i].config.node_key)
            })
        };
        if !client_disco.contains(&requester) || !client_disco.iter().all(allowed) {
            self.relay_refused += 1;
            return;
        }
        let server = self.relay_server.as_mut().expect("checked");
        match server.allocate_response(now, requester, client_disco, generation) {
            Ok(msg) => self.send_disco_relay(j, &msg),
            Err(_) => self.relay_refused += 1,
        }
        self.drain_relay_server();
    }
}
