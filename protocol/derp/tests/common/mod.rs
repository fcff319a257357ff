//! An in-memory relay and its clients for the relay tests: `Net` drives one sans-IO server
//! and its sans-IO clients with no sockets; and small helpers to send and check packets.
// Each test target uses only some of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Instant;

use burrow_derp::{Client, ClientEvent, CloseReason, ConnId, Server, ServerConfig};
use burrow_wg::PrivateKey;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub struct Net {
    pub server: Server,
    pub clients: BTreeMap<ConnId, Client>,
    pub closed: Vec<(ConnId, CloseReason)>,
    pub now: Instant,
    /// Connections whose reads the driver pauses (slow readers).
    pub paused: Vec<ConnId>,
}

/// A region's mesh key (long enough to be accepted).
pub const REGION: &str = "region-secret-0123456789abcdef0123456789";

pub fn key(n: u8) -> PrivateKey {
    PrivateKey::from_bytes([n; 32])
}

impl Net {
    pub fn new(config: ServerConfig) -> Self {
        Net {
            server: Server::new(config, ChaCha20Rng::seed_from_u64(1)),
            clients: BTreeMap::new(),
            closed: Vec::new(),
            now: Instant::now(),
            paused: Vec::new(),
        }
    }

    pub fn connect(&mut self, id: u64, k: PrivateKey, mesh_key: Option<&str>) -> ConnId {
        let conn = ConnId(id);
        let server_key = self.server.public_key();
        self.clients.insert(
            conn,
            Client::new(
                k,
                Some(server_key),
                mesh_key.map(str::to_owned),
                ChaCha20Rng::seed_from_u64(id),
            ),
        );
        self.server.accept(self.now, conn);
        self.pump();
        conn
    }

    /// Connects from a source address (for the per-source caps).
    pub fn connect_from(&mut self, id: u64, k: PrivateKey, ip: &str) -> ConnId {
        let conn = ConnId(id);
        let server_key = self.server.public_key();
        self.clients.insert(
            conn,
            Client::new(k, Some(server_key), None, ChaCha20Rng::seed_from_u64(id)),
        );
        self.server
            .accept_from(self.now, conn, Some(ip.parse().unwrap()));
        self.pump();
        conn
    }

    /// Connects and returns the exact ClientInfo frame the client sent (what an on-path
    /// attacker could capture).
    pub fn connect_capturing(&mut self, id: u64, k: PrivateKey) -> (ConnId, Vec<u8>) {
        let conn = ConnId(id);
        let mut client = Client::new(
            k,
            Some(self.server.public_key()),
            None,
            ChaCha20Rng::seed_from_u64(id),
        );
        self.server.accept(self.now, conn);
        let server_key = self.server.poll_transmit_for(self.now, conn).unwrap();
        client.handle_bytes(&server_key).unwrap();
        let client_info = client.poll_transmit().unwrap();
        self.server.handle_bytes(self.now, conn, &client_info);
        self.clients.insert(conn, client);
        self.pump();
        (conn, client_info)
    }

    /// Moves bytes like `pump`, but never writes to `skip` (a watcher that is not reading).
    pub fn pump_except(&mut self, skip: ConnId) {
        loop {
            let mut moved = false;
            let ids: Vec<ConnId> = self
                .clients
                .keys()
                .copied()
                .filter(|c| *c != skip)
                .collect();
            for conn in ids {
                while let Some(bytes) = self.server.poll_transmit_for(self.now, conn) {
                    moved = true;
                    if let Some(c) = self.clients.get_mut(&conn) {
                        c.handle_bytes(&bytes).unwrap();
                    }
                }
            }
            for (&conn, c) in self.clients.iter_mut() {
                while let Some(b) = c.poll_transmit() {
                    moved = true;
                    self.server.handle_bytes(self.now, conn, &b);
                }
            }
            while let Some((conn, reason)) = self.server.poll_close() {
                self.clients.remove(&conn);
                self.closed.push((conn, reason));
            }
            if !moved {
                return;
            }
        }
    }

    pub fn is_connected(&mut self, conn: ConnId) -> bool {
        self.clients.contains_key(&conn) && self.server.is_admitted(conn)
    }

    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some((conn, bytes)) = self.server.poll_transmit(self.now) {
                if self.paused.contains(&conn) {
                    // The bytes are written; the client just has not read them yet.
                    self.clients.get_mut(&conn).map(|c| c.handle_bytes(&bytes));
                    continue;
                }
                moved = true;
                if let Some(c) = self.clients.get_mut(&conn) {
                    c.handle_bytes(&bytes)
                        .expect("client accepts the server's frames");
                }
            }
            for (&conn, c) in self.clients.iter_mut() {
                while let Some(b) = c.poll_transmit() {
                    moved = true;
                    self.server.handle_bytes(self.now, conn, &b);
                }
            }
            while let Some((conn, reason)) = self.server.poll_close() {
                self.clients.remove(&conn);
                self.closed.push((conn, reason));
            }
            if !moved {
                return;
            }
        }
    }

    pub fn events(&mut self, conn: ConnId) -> Vec<ClientEvent> {
        let c = self.clients.get_mut(&conn).unwrap();
        std::iter::from_fn(|| c.poll_event()).collect()
    }
}

pub fn send(net: &mut Net, from: ConnId, to: u8, data: &[u8]) {
    net.clients
        .get_mut(&from)
        .unwrap()
        .send_packet(&key(to).public_key(), data);
    net.pump();
}

pub fn got_packet(net: &mut Net, conn: ConnId, data: &[u8]) -> bool {
    net.events(conn)
        .iter()
        .any(|e| matches!(e, ClientEvent::Packet { data: d, .. } if d == data))
}
