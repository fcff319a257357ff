//! A tiny lab: one relay server, clients with addresses, datagrams carried by hand.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_disco::{Message, UdpRelayEndpoint};
use burrow_relay::{
    encap, BindingEvent, Forward, GeneveProtocol, RelayBinding, RelayConfig, RelayError,
    RelayServer, Transmit,
};
use burrow_wg::{PrivateKey, PublicKey};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub const RELAY: &str = "198.51.100.1:7000";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn key(b: u8) -> PrivateKey {
    PrivateKey::from_bytes([b; 32])
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub struct Lab {
    pub t0: Instant,
    pub server: RelayServer,
    pub a: PrivateKey,
    pub b: PrivateKey,
}

impl Lab {
    pub fn new() -> Self {
        Self::with(RelayConfig::new(vec![addr(RELAY)]))
    }

    pub fn with(config: RelayConfig) -> Self {
        let t0 = Instant::now();
        Lab {
            t0,
            server: RelayServer::new(t0, config, ChaCha20Rng::seed_from_u64(42)),
            a: key(1),
            b: key(2),
        }
    }

    pub fn at(&self, d: Duration) -> Instant {
        self.t0 + d
    }

    pub fn pair(&self) -> [PublicKey; 2] {
        [self.a.public_key(), self.b.public_key()]
    }

    pub fn allocate(&mut self, now: Instant) -> UdpRelayEndpoint {
        let pair = self.pair();
        self.server.allocate(now, pair[0], pair).unwrap()
    }

    /// Drains the server's transmits.
    pub fn server_out(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.server.poll_transmit()).collect()
    }

    /// Runs `who`'s handshake from `from` against `endpoint`: Binds to the server, Challenges
    /// back, the Answer to the server. Returns the binding's events.
    pub fn bind(
        &mut self,
        now: Instant,
        endpoint: &UdpRelayEndpoint,
        who: &PrivateKey,
        peer: PublicKey,
        from: SocketAddr,
        generation: u32,
    ) -> Vec<BindingEvent> {
        let mut c = RelayBinding::new(
            now,
            endpoint.clone(),
            who,
            peer,
            generation,
            ChaCha20Rng::seed_from_u64(u64::from(generation)),
        )
        .unwrap();
        self.run_binding(now, &mut c, from);
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    /// Carries a binding's datagrams (sent from `from`) to the server and back until quiet.
    pub fn run_binding(&mut self, now: Instant, c: &mut RelayBinding, from: SocketAddr) {
        for _ in 0..4 {
            let mut quiet = true;
            while let Some(t) = c.poll_transmit() {
                quiet = false;
                assert_eq!(self.server.handle_input(now, from, &t.payload), Ok(None));
            }
            for t in self.server_out() {
                assert_eq!(t.dst, from, "the Challenge goes to the Bind's source");
                quiet = false;
                let _ = c.handle_input(now, addr(RELAY), &t.payload);
            }
            if quiet {
                return;
            }
        }
    }

    /// A disco Ping from `from_key` to `to`, framed for the relay path.
    pub fn relayed_ping(&self, vni: u32, from_key: &PrivateKey, to: PublicKey, tx: u8) -> Vec<u8> {
        let ping = Message::Ping {
            tx_id: [tx; 12],
            node_key: None,
            padding: 0,
        };
        let disco = ping
            .seal(
                from_key,
                &to,
                &mut ChaCha20Rng::seed_from_u64(u64::from(tx)),
            )
            .unwrap();
        let mut out = vec![0; 2048];
        let n = encap(vni, GeneveProtocol::Disco, &disco, &mut out).unwrap();
        out.truncate(n);
        out
    }

    pub fn send(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
    ) -> Result<Option<Forward>, RelayError> {
        self.server.handle_input(now, src, datagram)
    }
}
