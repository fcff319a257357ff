//! The node driver: burrow-node's engine over one UDP socket (plus birthday sockets, bound
//! when the engine first sends from one) and a DERP client. Generic over the sockets, so the
//! simulator runs this same code through its scripted NATs and its DERP relay.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use burrow_derp::client::ClientEvent;
use burrow_node::{Event, Input, Node, Transmit, RELAY_SOCKET};
use burrow_wg::PublicKey;
use tokio::sync::mpsc;

use crate::derp_client::DerpClient;
use crate::transport::{now, UdpTransport};

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

/// What the application hands the driver: IP packets for peers.
pub type Outbound = mpsc::Receiver<(PublicKey, Vec<u8>)>;

/// Datagrams read from the sockets but not yet handled by the engine. When the engine falls
/// behind, the readers wait and the kernel drops (its buffers are the backpressure): a flood
/// costs a bounded amount of memory (audit #8).
const INBOUND_QUEUE: usize = 1024;
/// Packets from the application waiting for the engine (the TUN reader waits when full).
const OUTBOUND_QUEUE: usize = 1024;
/// Engine events waiting for the application; past it, events are dropped (and counted), not
/// buffered without limit behind a slow TUN writer.
const EVENT_QUEUE: usize = 4096;

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

/// Payload buffers the application and the driver share: the application gives back each
/// delivered packet's buffer once it wrote it out and takes one for each packet it sends; the
/// driver hands them to the engine. A steady stream then allocates nothing per packet.
#[derive(Clone, Debug, Default)]
pub struct BufferPool(Arc<std::sync::Mutex<burrow_node::Buffers>>);

impl BufferPool {
    /// A buffer holding a copy of `bytes`, reused when one is spare.
    pub fn take(&self, bytes: &[u8]) -> Vec<u8> {
        self.lock().take(bytes)
    }

    /// Gives a buffer back for reuse.
    pub fn give(&self, buf: Vec<u8>) {
        self.lock().give(buf);
    }

    fn pop(&self) -> Option<Vec<u8>> {
        self.lock().pop()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, burrow_node::Buffers> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The driver's side of its channels to the application.
#[derive(Debug)]
pub struct NodeChannels {
    outbound: Outbound,
    commands: mpsc::UnboundedReceiver<NodeCommand>,
    events: mpsc::Sender<Event>,
    buffers: BufferPool,
}

/// The application's side: packets to send, commands, and the engine's events.
#[derive(Debug)]
pub struct NodeHandle {
    /// IP packets for peers.
    pub outbound: mpsc::Sender<(PublicKey, Vec<u8>)>,
    /// Peers from the control plane.
    pub commands: mpsc::UnboundedSender<NodeCommand>,
    /// Everything the engine reports (decrypted packets, path changes, endpoints…).
    pub events: mpsc::Receiver<Event>,
    /// Buffers for packets to send; give delivered packets' buffers back here.
    pub buffers: BufferPool,
}

/// Both ends.
pub fn channels() -> (NodeChannels, NodeHandle) {
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let buffers = BufferPool::default();
    (
        NodeChannels {
            outbound: out_rx,
            commands: cmd_rx,
            events: ev_tx,
            buffers: buffers.clone(),
        },
        NodeHandle {
            outbound: out_tx,
            commands: cmd_tx,
            events: ev_rx,
            buffers,
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
    run_node_with_relay(engine, main, None, binder, derp, channels, until).await
}

/// [`run_node`], with the socket of the relay this node runs for others (its engine was
/// configured with `NodeConfig::relay_server`): datagrams read there reach the engine as
/// [`RELAY_SOCKET`]'s, and its transmits from [`RELAY_SOCKET`] leave from it.
pub async fn run_node_with_relay<B: SocketBinder>(
    mut engine: Node,
    main: B::Socket,
    relay: Option<B::Socket>,
    binder: B,
    mut derp: DerpClient,
    channels: NodeChannels,
    until: Option<tokio::time::Instant>,
) -> io::Result<Node> {
    let NodeChannels {
        mut outbound,
        mut commands,
        events,
        buffers,
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
    sockets.push(Some(main));
    // The relay socket sits apart: its id (u16::MAX) is no index into the birthday sockets.
    let mut relay_return = None;
    let relay = relay.map(Arc::new);
    if let Some(r) = &relay {
        let (reader, back) = spawn_reader(RELAY_SOCKET, r.clone(), in_tx.clone());
        readers.push(reader);
        relay_return = Some(back);
    }
    let region = 1;
    let far = tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365);
    let deadline = until.unwrap_or(far);
    let mut app_open = true;
    let mut commands_open = true;
    let result = loop {
        // Buffers the application gave back go to the engine for its next packets.
        while engine.spare_buffers() < ENGINE_SPARE {
            match buffers.pop() {
                Some(b) => engine.recycle(b),
                None => break,
            }
        }
        while let Some(t) = engine.poll_transmit() {
            match t {
                Transmit::Udp {
                    socket,
                    dst,
                    payload,
                } => {
                    if socket == RELAY_SOCKET {
                        if let Some(r) = &relay {
                            let _ = r.send_to(&payload, dst).await;
                        }
                        engine.recycle(payload);
                        continue;
                    }
                    let i = socket as usize;
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
                        let _ = s.send_to(&payload, dst).await;
                    }
                    engine.recycle(payload);
                }
                Transmit::Derp { dst, payload, .. } => derp.send(dst, payload),
            }
        }
        while let Some(e) = engine.poll_event() {
            if let Err(mpsc::error::TrySendError::Full(_)) = events.try_send(e) {
                events_dropped += 1;
                if events_dropped.is_power_of_two() {
                    tracing::warn!(
                        events_dropped,
                        "the application is not keeping up; events dropped"
                    );
                }
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
            Some(Datagram { socket, from, buf, len }) = in_rx.recv() => {
                let _ = engine.handle_input(now(), Input::Udp { socket, from, data: &buf[..len] });
                let back = match socket {
                    RELAY_SOCKET => relay_return.as_ref(),
                    _ => returns.get(usize::from(socket)).and_then(Option::as_ref),
                };
                if let Some(back) = back {
                    let _ = back.try_send(buf);
                }
            }
            e = derp.events.recv() => match e {
                Some(ClientEvent::Packet { src, data }) => {
                    let _ = engine.handle_input(now(), Input::Derp { region, from: src, data: &data });
                }
                Some(_) => {}
                None => break Err(io::Error::other("the DERP client stopped")),
            },
            p = outbound.recv(), if app_open => match p {
                Some((peer, packet)) => {
                    let _ = engine.send(now(), &peer, &packet);
                    engine.recycle(packet);
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

/// Spare buffers the driver keeps the engine supplied with from the shared pool.
const ENGINE_SPARE: usize = 64;

/// Buffers a reader keeps in circulation; with all of them queued it waits (the socket's own
/// buffer holds what arrives meanwhile), so a flood costs at most this many.
const READER_BUFFERS: usize = 64;
/// A reader's buffer: room for any datagram of the mesh (WireGuard at the tunnel's 1280-byte
/// MTU, disco, STUN); anything longer is no datagram of ours and fails to authenticate.
const READ_BUFFER: usize = 4096;

/// Reads datagrams from `socket` into buffers that come back to it over the returned sender,
/// so a steady stream allocates nothing.
fn spawn_reader<S: UdpTransport>(
    id: u16,
    socket: Arc<S>,
    tx: mpsc::Sender<Datagram>,
) -> (tokio::task::JoinHandle<()>, mpsc::Sender<Vec<u8>>) {
    let (back_tx, mut back_rx) = mpsc::channel::<Vec<u8>>(READER_BUFFERS);
    let reader = tokio::spawn(async move {
        let mut made = 0;
        loop {
            let mut buf = match back_rx.try_recv() {
                Ok(b) => b,
                Err(_) if made < READER_BUFFERS => {
                    made += 1;
                    vec![0u8; READ_BUFFER]
                }
                // All in flight: wait for one to come back.
                Err(_) => match back_rx.recv().await {
                    Some(b) => b,
                    None => return,
                },
            };
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((len, from)) => {
                        let d = Datagram {
                            socket: id,
                            // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; the
                            // engine keys paths by the plain IPv4 address.
                            from: burrow_punch::canonical_remote(from),
                            buf,
                            len,
                        };
                        if tx.send(d).await.is_err() {
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::transport::{bind_udp_socket, SocketFamilies};

    async fn next(rx: &mut mpsc::Receiver<Datagram>) -> Datagram {
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a datagram in time")
            .expect("the reader runs")
    }

    #[tokio::test]
    async fn reader_hands_the_engine_canonical_sources() {
        let main = bind_udp_socket(0).unwrap();
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
