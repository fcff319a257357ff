//! `burrow stun`: a tokio UDP driver for [`burrow_stun::BindingServer`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use burrow_stun::server::{BindingServer, Ignored, ServerConfig, MAX_RESPONSE_LEN};
use burrow_stun::{Class, MessageType};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use crate::transport::UdpTransport;

/// Totals across every socket and worker.
#[derive(Debug, Default)]
pub struct Counters {
    /// Success responses sent.
    pub success: AtomicU64,
    /// Error responses sent.
    pub errors: AtomicU64,
    /// Datagrams dropped as malformed.
    pub malformed: AtomicU64,
    /// Indications and responses ignored.
    pub ignored: AtomicU64,
    /// Answers that could not be sent.
    pub send_failures: AtomicU64,
    /// Requests not answered: RFC 3489 (unless enabled), other methods, over a source's
    /// rate limit.
    pub refused: AtomicU64,
}

/// A bound STUN server: one socket per listen address (four with an RFC 5780 alternate).
#[derive(Debug)]
pub struct StunServer<S = UdpSocket> {
    config: ServerConfig,
    sockets: Arc<Vec<(SocketAddr, S)>>,
    counters: Arc<Counters>,
    rfc3489: bool,
    per_source: Option<(u32, u32)>,
}

impl StunServer<UdpSocket> {
    /// Binds every address the configuration needs. A primary port of 0 is allowed only
    /// without an alternate; the chosen port is then written back into the configuration.
    /// `[::]` is bound dual-stack: IPv4 clients are answered too, with their IPv4 address.
    pub async fn bind(mut config: ServerConfig) -> io::Result<Self> {
        if config.alternate.is_none() {
            let socket = crate::dual_stack::udp_socket(config.primary, false)?;
            config.primary = socket.local_addr()?;
            return Ok(Self::from_sockets(config, vec![socket]));
        }
        let mut sockets = Vec::new();
        for addr in config.listen_addresses() {
            let socket = crate::dual_stack::udp_socket(addr, false)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
            sockets.push(socket);
        }
        Ok(Self::from_sockets(config, sockets))
    }
}

impl<S: UdpTransport> StunServer<S> {
    /// A server over sockets the caller bound, one per address in
    /// [`ServerConfig::listen_addresses`] (the simulator binds its own).
    pub fn from_sockets(config: ServerConfig, sockets: Vec<S>) -> Self {
        let sockets = sockets
            .into_iter()
            .map(|s| (s.local_addr().expect("bound socket has an address"), s))
            .collect();
        StunServer {
            config,
            sockets: Arc::new(sockets),
            counters: Arc::new(Counters::default()),
            rfc3489: false,
            per_source: None,
        }
    }

    /// Also answers RFC 3489 requests (no magic cookie), for classic NAT-type clients.
    pub fn with_rfc3489(mut self, on: bool) -> Self {
        self.rfc3489 = on;
        self
    }

    /// Answers at most `per_second` requests a second per source address (bursts of
    /// `burst`), per worker.
    pub fn with_rate_limit_per_source(mut self, per_second: u32, burst: u32) -> Self {
        self.per_source = Some((per_second, burst));
        self
    }

    /// The configuration, with any port chosen at bind time filled in.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Every bound address.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(a, _)| *a).collect()
    }

    /// Shared counters, readable while the server runs.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Serves until `shutdown` completes, with `workers` tasks per socket.
    pub async fn run(self, workers: usize, shutdown: impl std::future::Future<Output = ()>) {
        let mut tasks = JoinSet::new();
        for index in 0..self.sockets.len() {
            for _ in 0..workers.max(1) {
                let sockets = self.sockets.clone();
                let counters = self.counters.clone();
                let mut server =
                    BindingServer::new(self.config.clone()).answer_rfc3489(self.rfc3489);
                if let Some((rate, burst)) = self.per_source {
                    let seed = rand_chacha::rand_core::RngCore::next_u64(
                        &mut <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::from_os_rng(),
                    );
                    server = server.rate_limit_per_source(rate, burst, seed);
                }
                tasks.spawn(serve_socket(server, sockets, index, counters));
            }
        }
        shutdown.await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Receives on socket `index` and answers from whichever socket the reply names.
/// The buffers are reused: nothing is allocated per packet.
async fn serve_socket<S: UdpTransport>(
    mut server: BindingServer,
    sockets: Arc<Vec<(SocketAddr, S)>>,
    index: usize,
    counters: Arc<Counters>,
) {
    let (local, socket) = &sockets[index];
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; MAX_RESPONSE_LEN];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            // An IPv4 client of a dual-stack socket is answered with its IPv4 address
            // (XOR-MAPPED-ADDRESS of family IPv4), and rate-limited as that address.
            Ok((n, from)) => (n, crate::dual_stack::canonical(from)),
            Err(e) => {
                // ICMP errors from earlier sends surface here on Linux; keep serving.
                tracing::trace!(%local, error = %e, "recv_from failed");
                continue;
            }
        };
        match server.handle_packet_at(
            Some(std::time::Instant::now()),
            *local,
            from,
            &buf[..n],
            &mut out,
        ) {
            Ok(reply) => {
                // Never answer from another address than the one RESPONSE-ORIGIN names.
                let ok = match sockets.iter().find(|(a, _)| *a == reply.from) {
                    Some((at, sender)) => sender
                        .send_to(
                            &out[..reply.len],
                            crate::dual_stack::for_socket(*at, reply.to),
                        )
                        .await
                        .is_ok(),
                    None => false,
                };
                let class = MessageType::from_u16(u16::from_be_bytes([out[0], out[1]])).class;
                let counter = match (ok, class) {
                    (false, _) => &counters.send_failures,
                    (true, Class::Error) => &counters.errors,
                    (true, _) => &counters.success,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(Ignored::Malformed(e)) => {
                tracing::debug!(%from, error = %e, "dropped malformed datagram");
                counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
            Err(Ignored::BadFingerprint) => {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e @ (Ignored::Rfc3489 | Ignored::NotBinding | Ignored::RateLimited)) => {
                tracing::trace!(%from, reason = %e, "not answered");
                counters.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::trace!(%from, reason = %e, "ignored datagram");
                counters.ignored.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
