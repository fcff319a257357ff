//! The node driver: burrow-node's engine over one UDP socket (plus birthday sockets, bound
//! when the engine first sends from one) and a DERP client. Generic over the sockets, so the
//! simulator runs this same code through its scripted NATs and its DERP relay.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use burrow_derp::client::ClientEvent;
use burrow_node::{Event, Input, Node, PacketBatch, TransmitBatch, UdpRun, RELAY_SOCKET};
use burrow_wg::PublicKey;
use tokio::sync::mpsc;

use crate::derp_client::DerpClient;
use crate::transport::{now, RecvBatch, UdpTransport};

/// Opens the extra sockets birthday probing asks for (each on a fresh ephemeral port).
pub trait SocketBinder: Send + Sync + 'static {
    /// The socket type.
    type Socket: UdpTransport;
    /// Binds one more socket.
    fn bind(&self) -> impl Future<Output = io::Result<Self::Socket>> + Send;
}

/// Binds tokio UDP sockets on the given address's IP with port 0. Birthday sockets only ever
/// reach IPv4 hard NATs, so an IPv6 unspecified address (a dual-stack main socket's `[::]`)
/// binds `0.0.0.0`: an IPv4 socket, never a v6-only one.
#[derive(Debug, Clone, Copy)]
pub struct TokioBinder(pub SocketAddr);

impl TokioBinder {
    /// Where each birthday socket is bound.
    pub fn bind_addr(&self) -> SocketAddr {
        let ip = match self.0.ip() {
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            }
            ip => ip,
        };
        SocketAddr::new(ip, 0)
    }
}

impl SocketBinder for TokioBinder {
    type Socket = tokio::net::UdpSocket;
    fn bind(&self) -> impl Future<Output = io::Result<Self::Socket>> + Send {
        tokio::net::UdpSocket::bind(self.bind_addr())
    }
}

/// What the application hands the driver: batches of IP packets for peers (a TUN read's).
pub type Outbound = mpsc::Receiver<PacketBatch>;

/// Datagrams read from the sockets but not yet handled by the engine. When the engine falls
/// behind, the readers wait and the kernel drops (its buffers are the backpressure): a flood
/// costs a bounded amount of memory (audit #8).
const INBOUND_QUEUE: usize = 1024;
/// Batches of packets from the application waiting for the engine (the TUN reader waits when
/// full): each a burst of TUN reads (up to about [`INPUT_BATCH`] packets, a super-packet's
/// segments more), so at most about a thousand packets.
const OUTBOUND_QUEUE: usize = 16;
/// Engine events waiting for the application; past it, events are dropped (and counted), not
/// buffered without limit behind a slow TUN writer.
const EVENT_QUEUE: usize = 4096;
/// Batches of delivered packets waiting for the application (each what one wakeup of the
/// driver delivered: about [`INPUT_BATCH`] packets); past it, a batch is dropped (and
/// counted).
const DELIVERED_QUEUE: usize = 64;

/// One peer as `burrow status` shows it.
#[derive(Debug, Clone)]
pub struct PeerState {
    /// Node key.
    pub key: PublicKey,
    /// Current route.
    pub route: burrow_punch::Route,
    /// Counters (bytes, packets by path, last handshake).
    pub stats: burrow_node::PeerStats,
    /// Why it is on that route.
    pub explanation: Option<burrow_node::Explanation>,
    /// The peer relay carrying its traffic, if one does (the route then says DERP: the
    /// engine's path machine knows only direct and DERP).
    pub peer_relay: Option<burrow_node::RelayReport>,
}

/// The relay this node runs for others (`burrow up --relay-port`), for `burrow status`.
#[derive(Debug, Clone)]
pub struct RelayServerState {
    /// Its counters.
    pub stats: burrow_relay::RelayStats,
    /// Endpoints open now.
    pub sessions: Vec<burrow_relay::SessionInfo>,
}

/// What the engine knows, for `burrow status` and `burrow doctor`.
#[derive(Debug, Clone)]
pub struct EngineState {
    /// When this was taken.
    pub at: std::time::Instant,
    /// Our NAT, from STUN.
    pub nat: Option<burrow_node::NatView>,
    /// Our candidates.
    pub candidates: Vec<burrow_punch::Candidate>,
    /// Every peer.
    pub peers: Vec<PeerState>,
    /// The relay we run for others, if any.
    pub relay_server: Option<RelayServerState>,
}

/// Changes to (and questions for) the engine while it runs.
#[derive(Debug)]
pub enum NodeCommand {
    /// A new peer, or new endpoints for a known one.
    AddPeer(burrow_node::PeerConfig),
    /// Forget a peer (removed from the tailnet, or its key expired).
    RemovePeer(PublicKey),
    /// A disco ping on the peer's current path; the answer comes as `Event::PingResult`.
    Ping(PublicKey),
    /// A snapshot of the engine.
    State(tokio::sync::oneshot::Sender<EngineState>),
    /// The gateway mapped the node's port here (or the mapping is gone).
    SetPortMapping(Option<SocketAddr>),
    /// The host's interface addresses (with the node's port) changed: the engine gathers its
    /// candidates again, tells its peers and asks STUN again.
    SetLocalAddrs(Vec<SocketAddr>),
    /// The router's IPv6 firewall opened a pinhole for the node's port here (PCP), or it is
    /// gone.
    SetIpv6Pinhole(Option<SocketAddr>),
    /// Who relays for us and for whom we relay, from the netmap's grants.
    SetPeerRelayPolicy(burrow_node::PeerRelayPolicy),
}

fn snapshot(engine: &Node) -> EngineState {
    EngineState {
        at: now(),
        nat: engine.nat(),
        candidates: engine.candidates().to_vec(),
        peers: engine
            .peer_keys()
            .into_iter()
            .map(|key| PeerState {
                key,
                route: engine.route(&key).unwrap_or(burrow_punch::Route::Relay),
                stats: engine.stats(&key).unwrap_or_default(),
                explanation: engine.explain(&key),
                peer_relay: engine.peer_relay(&key),
            })
            .collect(),
        relay_server: engine.relay_server().map(|s| RelayServerState {
            stats: s.stats().clone(),
            sessions: s.sessions().collect(),
        }),
    }
}

/// Packet batches the application and the driver pass each other and give back here once
/// read, so a steady stream allocates nothing per packet or per batch.
#[derive(Clone, Debug, Default)]
pub struct BatchPool(Arc<std::sync::Mutex<Vec<PacketBatch>>>);

/// Spare batches kept at most, and the largest kept (bytes of room): at most 64 MiB wait.
const SPARE_BATCHES: usize = 64;
const SPARE_BATCH_BYTES: usize = 1 << 20;

impl BatchPool {
    /// An empty batch, reused when one is spare.
    pub fn take(&self) -> PacketBatch {
        self.lock().pop().unwrap_or_default()
    }

    /// Gives a batch back for reuse (emptied), unless enough are spare or it grew too large.
    pub fn give(&self, mut batch: PacketBatch) {
        batch.clear();
        let mut spare = self.lock();
        if spare.len() < SPARE_BATCHES && batch.capacity() <= SPARE_BATCH_BYTES {
            spare.push(batch);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PacketBatch>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The driver's side of its channels to the application.
#[derive(Debug)]
pub struct NodeChannels {
    outbound: Outbound,
    commands: mpsc::UnboundedReceiver<NodeCommand>,
    events: mpsc::Sender<Event>,
    delivered: mpsc::Sender<PacketBatch>,
    batches: BatchPool,
}

/// The application's side: packets to send, commands, the packets delivered and the engine's
/// other events.
#[derive(Debug)]
pub struct NodeHandle {
    /// Batches of IP packets for peers (take them from `batches`).
    pub outbound: mpsc::Sender<PacketBatch>,
    /// Peers from the control plane.
    pub commands: mpsc::UnboundedSender<NodeCommand>,
    /// Everything else the engine reports (path changes, endpoints, ping results…).
    pub events: mpsc::Receiver<Event>,
    /// Batches of decrypted packets from peers (give them back to `batches` once read).
    pub delivered: mpsc::Receiver<PacketBatch>,
    /// Empty batches for packets to send; give delivered batches back here.
    pub batches: BatchPool,
}

/// Both ends.
pub fn channels() -> (NodeChannels, NodeHandle) {
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (del_tx, del_rx) = mpsc::channel(DELIVERED_QUEUE);
    let batches = BatchPool::default();
    (
        NodeChannels {
            outbound: out_rx,
            commands: cmd_rx,
            events: ev_tx,
            delivered: del_tx,
            batches: batches.clone(),
        },
        NodeHandle {
            outbound: out_tx,
            commands: cmd_tx,
            events: ev_rx,
            delivered: del_rx,
            batches,
        },
    )
}

/// Runs the engine until `until`: datagrams and DERP packets in, transmits out, timers; every
/// engine event goes to the handle. Returns the engine (for its counters and explanations).
pub async fn run_node<B: SocketBinder>(
    engine: Node,
    main: B::Socket,
    binder: B,
    derp: DerpClient,
    channels: NodeChannels,
    until: Option<tokio::time::Instant>,
) -> io::Result<Node> {
    run_node_with_relay(
        engine,
        main,
        None::<B::Socket>,
        binder,
        derp,
        channels,
        until,
    )
    .await
}

/// [`run_node`], with the socket of the relay this node runs for others (its engine was
/// configured with `NodeConfig::relay_server`): datagrams read there reach the engine as
/// [`RELAY_SOCKET`]'s, and its transmits from [`RELAY_SOCKET`] leave from it.
pub async fn run_node_with_relay<B: SocketBinder, M: UdpTransport, R: UdpTransport>(
    mut engine: Node,
    main: M,
    relay: Option<R>,
    binder: B,
    mut derp: DerpClient,
    channels: NodeChannels,
    until: Option<tokio::time::Instant>,
) -> io::Result<Node> {
    let NodeChannels {
        mut outbound,
        mut commands,
        events,
        delivered,
        batches,
    } = channels;
    let (in_tx, mut in_rx) = mpsc::channel::<Datagram>(INBOUND_QUEUE);
    // Each reader's buffers come back to it once the engine has read them.
    let mut returns: Vec<Option<mpsc::Sender<Vec<u8>>>> = Vec::new();
    let mut events_dropped: u64 = 0;
    let mut sockets: Vec<Option<Arc<B::Socket>>> = Vec::new();
    let mut readers = Vec::new();
    let main = Arc::new(main);
    let (reader, back) = spawn_reader(0, main.clone(), in_tx.clone());
    readers.push(reader);
    returns.push(Some(back));
    // Socket 0 is `main`, kept apart from the birthday sockets (another type).
    sockets.push(None);
    // The relay socket sits apart: its id (u16::MAX) is no index into the birthday sockets.
    let mut relay_return = None;
    let relay = relay.map(Arc::new);
    if let Some(r) = &relay {
        let (reader, back) = spawn_reader(RELAY_SOCKET, r.clone(), in_tx.clone());
        readers.push(reader);
        relay_return = Some(back);
    }
    // The engine's batches: what to send (its UDP datagrams leave as runs of equal-sized
    // datagrams to one destination, one GSO send each), packets it delivered, and packets
    // and datagrams gathered for it.
    let mut tx = TransmitBatch::new();
    let mut rx = batches.take();
    let mut arrived: Vec<Datagram> = Vec::with_capacity(INPUT_BATCH);
    let mut relayed: Vec<(PublicKey, Vec<u8>)> = Vec::with_capacity(INPUT_BATCH);
    // The DERP client's received packets' buffers, reused for the packets we hand it.
    let mut derp_buffers = burrow_node::Buffers::default();
    let max_segments = relay
        .as_ref()
        .map_or(usize::MAX, |r| r.max_segments())
        .min(main.max_segments());
    let region = 1;
    let far = tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365);
    let deadline = until.unwrap_or(far);
    let mut app_open = true;
    let mut commands_open = true;
    let result = loop {
        // Timers that fell due while inputs kept the loop busy (a flood at the socket) run
        // now, not once the inputs stop.
        if engine.poll_timeout().is_some_and(|w| w <= now()) {
            engine.handle_timeout(now());
        }
        engine.poll_transmits(&mut tx);
        for run in tx.udp_runs(max_segments) {
            match run.socket {
                RELAY_SOCKET => {
                    if let Some(r) = &relay {
                        send_run(r.as_ref(), &run).await;
                    }
                }
                0 => send_run(main.as_ref(), &run).await,
                socket => {
                    let i = usize::from(socket);
                    if sockets.len() <= i {
                        sockets.resize(i + 1, None);
                    }
                    if sockets[i].is_none() {
                        match binder.bind().await {
                            Ok(s) => {
                                let s = Arc::new(s);
                                let (reader, back) = spawn_reader(socket, s.clone(), in_tx.clone());
                                readers.push(reader);
                                if returns.len() <= i {
                                    returns.resize(i + 1, None);
                                }
                                returns[i] = Some(back);
                                sockets[i] = Some(s);
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "cannot open a birthday socket");
                                continue;
                            }
                        }
                    }
                    if let Some(s) = &sockets[i] {
                        // Send errors (unreachable, no route) are the network's answer, not ours.
                        for d in run.segments() {
                            let _ = s.send_to(d, run.dst).await;
                        }
                    }
                }
            }
        }
        for (_, dst, packet) in tx.derp() {
            derp.send(dst, derp_buffers.take(packet));
        }
        tx.clear();
        // Packets for the application, as a batch (on a channel of their own).
        let mut dropped = 0;
        if !rx.is_empty() {
            match delivered.try_send(std::mem::replace(&mut rx, batches.take())) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(b)) => {
                    dropped += b.len() as u64;
                    batches.give(b);
                }
                Err(mpsc::error::TrySendError::Closed(b)) => batches.give(b),
            }
        }
        while let Some(e) = engine.poll_event() {
            if let Err(mpsc::error::TrySendError::Full(_)) = events.try_send(e) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            let before = events_dropped;
            events_dropped += dropped;
            // Warned at each power of two reached.
            if before == 0 || events_dropped.ilog2() > before.ilog2() {
                tracing::warn!(
                    events_dropped,
                    "the application is not keeping up; packets and events dropped"
                );
            }
        }
        let wake = engine
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .map_or(deadline, |w| w.min(deadline));
        tokio::select! {
            biased;
            // The control plane first: a removed peer must not keep the engine busy with its
            // datagrams ahead of its own removal.
            c = commands.recv(), if commands_open => match c {
                Some(NodeCommand::AddPeer(p)) => {
                    if let Err(e) = engine.add_peer(now(), p) {
                        tracing::warn!(error = %e, "peer refused");
                    }
                }
                Some(NodeCommand::RemovePeer(k)) => {
                    engine.remove_peer(now(), &k);
                }
                Some(NodeCommand::Ping(peer)) => {
                    let _ = engine.ping(now(), &peer);
                }
                Some(NodeCommand::State(reply)) => {
                    let _ = reply.send(snapshot(&engine));
                }
                Some(NodeCommand::SetPortMapping(m)) => {
                    engine.set_port_mapping(now(), m);
                }
                Some(NodeCommand::SetLocalAddrs(addrs)) => {
                    engine.set_local_addrs(now(), addrs);
                }
                Some(NodeCommand::SetIpv6Pinhole(p)) => {
                    engine.set_ipv6_pinhole(now(), p);
                }
                Some(NodeCommand::SetPeerRelayPolicy(p)) => {
                    tracing::info!(
                        relays = p.relays.len(),
                        clients = p.clients.len(),
                        "peer-relay policy"
                    );
                    engine.set_peer_relay_policy(p);
                }
                None => commands_open = false,
            },
            Some(first) = in_rx.recv() => {
                // What else has arrived goes in as one batch, so a burst leaves as runs the
                // sockets send in one call each.
                arrived.push(first);
                while arrived.len() < INPUT_BATCH {
                    match in_rx.try_recv() {
                        Ok(d) => arrived.push(d),
                        Err(_) => break,
                    }
                }
                let inputs = arrived.iter().map(|d| Input::Udp {
                    socket: d.socket,
                    from: d.from,
                    data: &d.buf[..d.len],
                });
                engine.handle_batch(now(), inputs, &mut tx, &mut rx);
                for d in arrived.drain(..) {
                    let back = match d.socket {
                        RELAY_SOCKET => relay_return.as_ref(),
                        socket => returns.get(usize::from(socket)).and_then(Option::as_ref),
                    };
                    if let Some(back) = back {
                        let _ = back.try_send(d.buf);
                    }
                }
            }
            e = derp.events.recv() => match e {
                Some(ClientEvent::Packet { src, data }) => {
                    relayed.push((src, data));
                    // Every event counts toward the batch, packets or not.
                    for _ in 1..INPUT_BATCH {
                        match derp.events.try_recv() {
                            Ok(ClientEvent::Packet { src, data }) => relayed.push((src, data)),
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    let inputs = relayed.iter().map(|(from, data)| Input::Derp {
                        region,
                        from: *from,
                        data,
                    });
                    engine.handle_batch(now(), inputs, &mut tx, &mut rx);
                    for (_, data) in relayed.drain(..) {
                        derp_buffers.give(data);
                    }
                }
                Some(_) => {}
                None => break Err(io::Error::other("the DERP client stopped")),
            },
            p = outbound.recv(), if app_open => match p {
                Some(batch) => {
                    // What else the application has queued goes in too (up to a budget), so
                    // its datagrams leave as runs.
                    let t = now();
                    let mut taken = batch.len();
                    engine.send_batch(t, &batch, &mut tx, &mut rx);
                    batches.give(batch);
                    while taken < INPUT_BATCH {
                        match outbound.try_recv() {
                            Ok(batch) => {
                                taken += batch.len().max(1);
                                engine.send_batch(t, &batch, &mut tx, &mut rx);
                                batches.give(batch);
                            }
                            Err(_) => break,
                        }
                    }
                }
                None => app_open = false,
            },
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    break Ok(engine);
                }
                engine.handle_timeout(now());
            }
        }
    };
    for r in readers {
        r.abort();
    }
    result
}

/// A datagram a reader received: `buf[..len]`, from `from` on socket `socket`.
struct Datagram {
    socket: u16,
    from: SocketAddr,
    buf: Vec<u8>,
    len: usize,
}

/// Datagrams the engine takes in one go before its transmits are sent.
pub(crate) const INPUT_BATCH: usize = 64;

/// Sends one run from `socket`: a lone datagram by itself, more as one GSO send. Send errors
/// (unreachable, no route) are the network's answer, not ours.
async fn send_run<S: UdpTransport>(socket: &S, run: &UdpRun<'_>) {
    let _ = if run.count() == 1 {
        socket.send_to(run.datagrams, run.dst).await.map(drop)
    } else {
        socket
            .send_segments(run.datagrams, run.segment, run.dst)
            .await
    };
}

/// Buffers a reader keeps in circulation; with all of them queued it waits (the socket's own
/// buffer holds what arrives meanwhile), so a flood costs at most this many.
const READER_BUFFERS: usize = 64;
/// A reader's buffer: room for any datagram of the mesh (WireGuard at a tunnel MTU of up to
/// 4000, `burrow up --mtu`'s limit; disco, path MTU probes, STUN); anything longer is no
/// datagram of ours and is dropped as it is read.
const READ_BUFFER: usize = 4096;

/// Reads datagrams from `socket` into buffers that come back to it over the returned sender,
/// so a steady stream allocates nothing.
fn spawn_reader<S: UdpTransport>(
    id: u16,
    socket: Arc<S>,
    tx: mpsc::Sender<Datagram>,
) -> (tokio::task::JoinHandle<()>, mpsc::Sender<Vec<u8>>) {
    let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>(READER_BUFFERS);
    let mut pool = ReaderPool { back_rx, made: 0 };
    let reader = tokio::spawn(async move {
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; the engine keys paths by
        // the plain IPv4 address.
        let datagram = |from, buf, len| Datagram {
            socket: id,
            from: burrow_punch::canonical_remote(from),
            buf,
            len,
        };
        if socket.recv_slots() > 1 {
            // Many datagrams per system call, each copied into a buffer of the pool.
            let mut batch = RecvBatch::for_socket(&*socket, READ_BUFFER);
            loop {
                if socket.recv_batch(&mut batch).await.is_err() {
                    // ICMP errors and the like: keep reading, without spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
                for (from, bytes) in batch.datagrams() {
                    let Some(mut buf) = pool.take().await else {
                        return;
                    };
                    if buf.len() < bytes.len() {
                        buf.resize(bytes.len(), 0);
                    }
                    buf[..bytes.len()].copy_from_slice(bytes);
                    if tx.send(datagram(from, buf, bytes.len())).await.is_err() {
                        return;
                    }
                }
            }
        }
        loop {
            let Some(mut buf) = pool.take().await else {
                return;
            };
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((len, from)) => {
                        if tx.send(datagram(from, buf, len)).await.is_err() {
                            return;
                        }
                        break;
                    }
                    // ICMP errors and the like: keep reading, without spinning.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            }
        }
    });
    (reader, back_tx)
}

/// A reader's buffers: made up to [`READER_BUFFERS`], then only those the engine gives back.
struct ReaderPool {
    back_rx: mpsc::Receiver<Vec<u8>>,
    made: usize,
}

impl ReaderPool {
    /// A free buffer, waiting for one to come back when all are in flight (`None` once the
    /// driver has gone).
    async fn take(&mut self) -> Option<Vec<u8>> {
        match self.back_rx.try_recv() {
            Ok(b) => Some(b),
            Err(_) if self.made < READER_BUFFERS => {
                self.made += 1;
                Some(vec![0u8; READ_BUFFER])
            }
            Err(_) => self.back_rx.recv().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::transport::{bind_udp_socket, SocketFamilies};
    use burrow_node::Dest;

    async fn next(rx: &mut mpsc::Receiver<Datagram>) -> Datagram {
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a datagram in time")
            .expect("the reader runs")
    }

    #[tokio::test]
    async fn reader_hands_the_engine_canonical_sources() {
        let main = bind_udp_socket(0).unwrap();
        canonical_sources(main).await;
    }

    #[tokio::test]
    async fn the_batch_reader_hands_the_engine_canonical_sources() {
        let main = crate::transport::BatchUdpSocket::new(bind_udp_socket(0).unwrap());
        assert!(main.recv_slots() > 1, "the batch path");
        canonical_sources(main).await;
    }

    async fn canonical_sources<S: UdpTransport>(main: S) {
        let local = main.local_addr().unwrap();
        if !SocketFamilies::of(local).ipv6() {
            eprintln!("SKIPPED reader_hands_the_engine_canonical_sources: no IPv6 here");
            return;
        }
        let (tx, mut rx) = mpsc::channel(4);
        let (reader, _back) = spawn_reader(0, Arc::new(main), tx);
        let v4 = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let v6 = tokio::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0))
            .await
            .unwrap();

        v4.send_to(b"four", (Ipv4Addr::LOCALHOST, local.port()))
            .await
            .unwrap();
        let d = next(&mut rx).await;
        assert_eq!(&d.buf[..d.len], b"four");
        assert_eq!(
            d.from,
            v4.local_addr().unwrap(),
            "127.0.0.1, not ::ffff:127.0.0.1"
        );
        assert!(d.from.is_ipv4());

        v6.send_to(b"six", (Ipv6Addr::LOCALHOST, local.port()))
            .await
            .unwrap();
        let d = next(&mut rx).await;
        assert_eq!(&d.buf[..d.len], b"six");
        assert_eq!(d.from, v6.local_addr().unwrap());
        reader.abort();
    }

    /// Records what the driver hands a socket: `(segment size, datagrams, destination)`.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<SendCall>>);

    /// One send: segment size, the datagrams, their destination.
    type SendCall = (usize, Vec<Vec<u8>>, SocketAddr);

    impl UdpTransport for Recorder {
        async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
            let call = (buf.len(), vec![buf.to_vec()], target);
            self.0.lock().unwrap().push(call);
            Ok(buf.len())
        }
        async fn recv_from(&self, _: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
            std::future::pending().await
        }
        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(SocketAddr::from(([127, 0, 0, 1], 1)))
        }
        fn max_segments(&self) -> usize {
            64
        }
        async fn send_segments(
            &self,
            buf: &[u8],
            segment: usize,
            to: SocketAddr,
        ) -> io::Result<()> {
            let datagrams = buf.chunks(segment).map(<[u8]>::to_vec).collect();
            self.0.lock().unwrap().push((segment, datagrams, to));
            Ok(())
        }
    }

    /// Sends datagrams from the main socket as the driver does: from the engine's batch, as
    /// runs.
    async fn drive(socket: &Recorder, datagrams: &[(SocketAddr, Vec<u8>)]) {
        let mut batch = TransmitBatch::new();
        for (dst, d) in datagrams {
            batch.push(
                Dest::Udp {
                    socket: 0,
                    dst: *dst,
                },
                d,
            );
        }
        for run in batch.udp_runs(socket.max_segments()) {
            send_run(socket, &run).await;
        }
    }

    #[tokio::test]
    async fn runs_gather_equal_datagrams_to_one_destination_in_order() {
        let (x, y) = (
            SocketAddr::from(([192, 0, 2, 1], 1)),
            SocketAddr::from(([192, 0, 2, 2], 2)),
        );
        let socket = Recorder::default();
        let mut input = Vec::new();
        for i in 0..3u8 {
            input.push((x, vec![i; 100]));
        }
        input.push((x, vec![3; 60])); // shorter: ends the run
        input.push((x, vec![4; 100])); // starts the next
        input.push((x, vec![5; 120])); // longer: cannot join a run of 100
        input.push((y, vec![6; 120])); // another destination
        input.push((x, vec![7; 100]));
        drive(&socket, &input).await;
        let calls = socket.0.into_inner().unwrap();
        let shape: Vec<(usize, usize, SocketAddr)> =
            calls.iter().map(|(s, d, to)| (*s, d.len(), *to)).collect();
        assert_eq!(
            shape,
            vec![
                (100, 4, x),
                (100, 1, x),
                (120, 1, x),
                (120, 1, y),
                (100, 1, x)
            ]
        );
        let out: Vec<(SocketAddr, Vec<u8>)> = calls
            .into_iter()
            .flat_map(|(_, d, to)| d.into_iter().map(move |d| (to, d)))
            .collect();
        assert_eq!(out, input, "every datagram, in order, to its destination");
    }

    #[tokio::test]
    async fn a_run_stops_at_the_segment_limit_and_below_64_kib() {
        let x = SocketAddr::from(([192, 0, 2, 1], 1));
        let socket = Recorder::default();
        let input: Vec<_> = (0..200).map(|_| (x, vec![0u8; 1400])).collect();
        drive(&socket, &input).await;
        let calls = socket.0.into_inner().unwrap();
        assert!(calls.len() > 1);
        for (_, d, _) in &calls {
            assert!(d.len() <= 64);
            assert!(d.iter().map(Vec::len).sum::<usize>() <= burrow_node::batch::RUN_BYTES);
        }
        assert_eq!(calls.iter().map(|(_, d, _)| d.len()).sum::<usize>(), 200);
        let small: Vec<_> = (0..100).map(|_| (x, vec![0u8; 20])).collect();
        let socket = Recorder::default();
        drive(&socket, &small).await;
        let calls = socket.0.into_inner().unwrap();
        assert_eq!(calls[0].1.len(), 64, "the segment limit");
        assert_eq!(calls[1].1.len(), 36);
    }

    #[tokio::test]
    async fn birthday_sockets_are_ipv4_beside_a_dual_stack_main_socket() {
        let binder = TokioBinder("[::]:41641".parse().unwrap());
        assert_eq!(binder.bind_addr(), SocketAddr::from(([0, 0, 0, 0], 0)));
        let s = binder.bind().await.unwrap();
        assert!(s.local_addr().unwrap().is_ipv4());
        assert_ne!(s.local_addr().unwrap().port(), 0);
        // An explicit address is kept (port 0: a fresh ephemeral port each).
        let given = TokioBinder("192.0.2.7:41641".parse().unwrap());
        assert_eq!(given.bind_addr(), "192.0.2.7:0".parse().unwrap());
        let v6 = TokioBinder("[2001:db8::7]:41641".parse().unwrap());
        assert_eq!(v6.bind_addr(), "[2001:db8::7]:0".parse().unwrap());
    }
}
