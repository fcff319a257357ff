//! The running node's local API: `burrow status`, `burrow ping`, `burrow doctor` and
//! `burrow down` talk to `burrow up` over a Unix socket (mode 0600, so only root may ask),
//! one JSON request per line, one JSON answer per line.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use burrow_control::PeerInfo;
use burrow_punch::Route;
use burrow_wg::PublicKey;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::node::{EngineState, NodeCommand};

mod family;
pub use family::{family_line, standby_note, FamilyStatus};

/// A request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Peers and paths.
    Status,
    /// Disco pings to a peer (by name or tailnet address).
    Ping {
        /// Name or address.
        peer: String,
        /// How many (at most).
        count: u32,
        /// Stop at the first pong over a direct path.
        until_direct: bool,
    },
    /// Why a peer is on its path.
    Doctor {
        /// Name or address.
        peer: String,
    },
    /// Stop the node.
    Down,
}

/// One peer in `burrow status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Host name.
    pub name: String,
    /// Tailnet addresses.
    pub addresses: Vec<IpAddr>,
    /// Node key (base64).
    pub node_key: String,
    /// "direct IP:PORT" or "derp region N".
    pub path: String,
    /// The direct path's address family, "ipv4" or "ipv6"; None on DERP.
    #[serde(default)]
    pub family: Option<String>,
    /// Where each address family stands, IPv6 first (empty from a node older than this).
    #[serde(default)]
    pub families: Vec<FamilyStatus>,
    /// Seconds since the last WireGuard handshake.
    pub last_handshake_s: Option<f64>,
    /// Plaintext bytes received.
    pub rx_bytes: u64,
    /// Plaintext bytes sent.
    pub tx_bytes: u64,
    /// The peer relay carrying its traffic (the path then reads "relay via NODE (RTT a+b)");
    /// None on a direct path or DERP, and from a node older than this.
    #[serde(default)]
    pub relay: Option<PeerRelayStatus>,
    /// The largest packet the tunnel takes for the peer (path MTU discovery); None from a
    /// node older than this.
    #[serde(default)]
    pub mtu: Option<u16>,
}

/// The peer relay a peer's traffic goes through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRelayStatus {
    /// The relay node's name from the netmap (its key when it is no peer).
    pub via: String,
    /// The relay node's key (base64).
    pub via_key: String,
    /// Round trip through the relay to the peer, ms: our leg plus the relay's.
    pub rtt_ms: Option<f64>,
    /// Our own round trip to the relay node, ms, when known.
    pub our_leg_ms: Option<f64>,
    /// The relay address and VNI bound.
    pub path: Option<String>,
}

/// The relay this node runs for others (`burrow up --relay-port`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayServerStatus {
    /// Endpoints allocated.
    pub allocations: u64,
    /// Allocations refused.
    pub allocations_refused: u64,
    /// Legs bound (including rebinds).
    pub binds_completed: u64,
    /// Datagrams forwarded.
    pub forwarded_packets: u64,
    /// Bytes forwarded.
    pub forwarded_bytes: u64,
    /// Endpoints closed unbound or idle.
    pub expired: u64,
    /// Datagrams dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Endpoints open now.
    pub sessions: Vec<RelaySessionStatus>,
}

/// One endpoint of the relay this node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelaySessionStatus {
    /// Its VNI.
    pub vni: u32,
    /// Each client: its node name when it is our peer (else its disco key), and the address
    /// bound for it.
    pub clients: [String; 2],
    /// Each leg's bound address.
    pub bound: [Option<String>; 2],
    /// Datagrams forwarded from each leg.
    pub packets: [u64; 2],
    /// Bytes forwarded from each leg.
    pub bytes: [u64; 2],
}

/// `burrow status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// This node's name.
    pub name: String,
    /// Its tailnet addresses.
    pub addresses: Vec<IpAddr>,
    /// Peers.
    pub peers: Vec<PeerStatus>,
    /// The relay this node runs for others, if it does (None from a node older than this).
    #[serde(default)]
    pub relay_server: Option<RelayServerStatus>,
}

/// One line of `burrow ping`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pong {
    /// The peer.
    pub peer: String,
    /// "DERP(region 1)" or "IP:PORT".
    pub via: String,
    /// Round trip, milliseconds; None: no answer within 2 s.
    pub latency_ms: Option<f64>,
}

/// `burrow doctor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Doctor {
    /// The peer.
    pub peer: String,
    /// This node's NAT, as STUN showed it.
    pub our_nat: String,
    /// The peer's NAT, as it told us.
    pub peer_nat: String,
    /// The chosen path.
    pub path: String,
    /// The chosen path's address family, "ipv4" or "ipv6"; None on DERP.
    #[serde(default)]
    pub family: Option<String>,
    /// Where each address family stands and why, IPv6 first (empty from a node older than
    /// this).
    #[serde(default)]
    pub families: Vec<FamilyStatus>,
    /// Candidate pairs tried, and what came of each, oldest first.
    pub attempts: Vec<String>,
    /// Birthday probing toward the peer.
    pub birthday: String,
    /// Our gateway's port mapping: each protocol's outcome and the mapping.
    #[serde(default)]
    pub our_port_mapping: String,
    /// The peer's port mapping, as it told us.
    #[serde(default)]
    pub peer_port_mapping: String,
    /// Peer relays considered for the peer, one line each: the relay, its state, the round
    /// trip through it (ours + the relay's), and whether it carries the traffic.
    #[serde(default)]
    pub peer_relays: Vec<String>,
    /// Times the direct path was in doubt (data unanswered past its usual answer time, so
    /// traffic went over the relay too), oldest first, one line each.
    #[serde(default)]
    pub doubts: Vec<String>,
    /// Path MTU: the tunnel's for the peer and what the direct path's search found.
    #[serde(default)]
    pub mtu: String,
}

/// Answers to a `burrow ping` waiting for their pong.
pub type PingWaiters = Arc<Mutex<Vec<(PublicKey, oneshot::Sender<PingAnswer>)>>>;

/// A pong for `burrow ping`: the path it came back on and the round trip.
#[derive(Debug, Clone, Copy)]
pub struct PingAnswer {
    /// Direct, or relayed.
    pub via: Route,
    /// The peer relay it came through (relayed, not over DERP).
    pub peer_relay: Option<PublicKey>,
    /// Round trip.
    pub latency: Duration,
}

/// What the API needs from the running node.
#[derive(Clone)]
pub struct ApiContext {
    /// Commands to the engine.
    pub commands: mpsc::UnboundedSender<NodeCommand>,
    /// The node's session: its peers, from the netmap.
    pub session: Arc<Mutex<burrow_session::Session>>,
    /// Ourselves.
    pub name: String,
    /// Our addresses.
    pub addresses: Vec<IpAddr>,
    /// Pings in flight.
    pub pings: PingWaiters,
    /// Asked to stop.
    pub down: mpsc::UnboundedSender<()>,
    /// The port mapper's latest report, in words (`None`: none yet).
    pub port_mapping: Arc<Mutex<Option<String>>>,
}

/// The address family of a direct route, "ipv4" or "ipv6" (an IPv4-mapped address is IPv4);
/// None for the relay.
pub fn route_family(route: Route) -> Option<&'static str> {
    match route {
        Route::Direct(a) if burrow_punch::canonical_remote(a).is_ipv4() => Some("ipv4"),
        Route::Direct(_) => Some("ipv6"),
        Route::Relay => None,
    }
}

/// "IPv4" or "IPv6" for people, from [`route_family`]'s "ipv4" or "ipv6".
pub fn family_label(family: &str) -> &str {
    match family {
        "ipv4" => "IPv4",
        "ipv6" => "IPv6",
        other => other,
    }
}

fn describe(route: Route) -> String {
    match route {
        Route::Direct(a) => format!("direct {a}"),
        Route::Relay => "derp region 1".into(),
    }
}

/// Milliseconds, for people.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// "relay via NODE (RTT a+b)": a our round trip to the relay, b the relay's to the peer
/// (`rtt` − `our_leg`), in ms; the total alone when our leg is unknown.
pub fn relay_path(via: &str, rtt: Option<Duration>, our_leg: Option<Duration>) -> String {
    match (rtt, our_leg) {
        (Some(t), Some(a)) if a <= t => {
            // The two terms add up to the total as shown.
            let rest = ((ms(t) - ms(a)) * 10.0).round() / 10.0;
            format!("relay via {via} (RTT {}+{rest} ms)", ms(a))
        }
        (Some(t), _) => format!("relay via {via} (RTT {} ms)", ms(t)),
        (None, _) => format!("relay via {via}"),
    }
}

/// A relay's name: the peer's host name when the netmap has it, else its key.
fn relay_name(peers: &BTreeMap<PublicKey, PeerInfo>, key: &PublicKey) -> String {
    peers
        .get(key)
        .map_or_else(|| key.to_base64(), |p| p.node.name.clone())
}

fn peer_relay_status(
    peers: &BTreeMap<PublicKey, PeerInfo>,
    r: &burrow_node::RelayReport,
) -> PeerRelayStatus {
    PeerRelayStatus {
        via: relay_name(peers, &r.relay),
        via_key: r.relay.to_base64(),
        rtt_ms: r.rtt.map(ms),
        our_leg_ms: r.our_leg.map(ms),
        path: r.path.map(|(a, vni)| format!("{a} vni {vni}")),
    }
}

/// One line per relay considered: "NODE: alive, RTT 12 ms (4+8), in use".
fn relay_lines(
    peers: &BTreeMap<PublicKey, PeerInfo>,
    reports: &[burrow_node::RelayReport],
) -> Vec<String> {
    reports
        .iter()
        .map(|r| {
            let state = match r.state {
                burrow_node::RelayState::Allocating => "allocating",
                burrow_node::RelayState::Binding => "binding",
                burrow_node::RelayState::Probing => "probing",
                burrow_node::RelayState::Alive => "alive",
                burrow_node::RelayState::Dead => "dead",
            };
            let rtt = match (r.rtt, r.our_leg) {
                (Some(t), Some(a)) if a <= t => {
                    let rest = ((ms(t) - ms(a)) * 10.0).round() / 10.0;
                    format!(", RTT {} ms ({} + {rest})", ms(t), ms(a))
                }
                (Some(t), _) => format!(", RTT {} ms", ms(t)),
                (None, _) => String::new(),
            };
            let path = r
                .path
                .map_or(String::new(), |(a, vni)| format!(", {a} vni {vni}"));
            let used = if r.in_use { ", in use" } else { "" };
            format!("{}: {state}{rtt}{path}{used}", relay_name(peers, &r.relay))
        })
        .collect()
}

fn relay_server_status(
    s: &crate::node::RelayServerState,
    peers: &BTreeMap<PublicKey, PeerInfo>,
) -> RelayServerStatus {
    let by_disco: BTreeMap<String, String> = peers
        .values()
        .map(|p| (p.disco_key.clone(), p.node.name.clone()))
        .collect();
    let name = |k: &PublicKey| {
        let b = k.to_base64();
        by_disco.get(&b).cloned().unwrap_or(b)
    };
    RelayServerStatus {
        allocations: s.stats.allocations,
        allocations_refused: s.stats.allocations_refused,
        binds_completed: s.stats.binds_completed,
        forwarded_packets: s.stats.forwarded_packets,
        forwarded_bytes: s.stats.forwarded_bytes,
        expired: s.stats.expired_unbound + s.stats.expired_idle,
        dropped: s
            .stats
            .dropped
            .iter()
            .map(|(r, n)| (format!("{r:?}"), *n))
            .collect(),
        sessions: s
            .sessions
            .iter()
            .map(|x| RelaySessionStatus {
                vni: x.vni,
                clients: [name(&x.client_disco[0]), name(&x.client_disco[1])],
                bound: x.bound.map(|b| b.map(|a| a.to_string())),
                packets: x.packets,
                bytes: x.bytes,
            })
            .collect(),
    }
}

/// The wire form of a peer's family reports (none before the engine explained the peer).
fn families_of(explanation: Option<&burrow_node::Explanation>) -> Vec<FamilyStatus> {
    explanation.map_or_else(Vec::new, |x| {
        x.families.iter().map(FamilyStatus::from_report).collect()
    })
}

impl ApiContext {
    fn find(&self, who: &str) -> Option<(PublicKey, PeerInfo)> {
        crate::session::lock(&self.session)
            .peers()
            .find(|(p, _)| {
                p.node.name == who || p.node.addresses.iter().any(|a| a.to_string() == who)
            })
            .map(|(p, k)| (*k, p.clone()))
    }

    async fn state(&self) -> Result<EngineState> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(NodeCommand::State(tx))
            .map_err(|_| anyhow::anyhow!("the engine stopped"))?;
        Ok(rx.await?)
    }
}

/// Serves the API on `path` until the task is dropped.
pub async fn serve(path: &Path, cx: ApiContext) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let cx = cx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, cx).await {
                tracing::debug!(error = %e, "local API request failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, cx: ApiContext) -> Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    BufReader::new(rd).read_line(&mut line).await?;
    let reply = |v: serde_json::Value| format!("{v}\n");
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            wr.write_all(
                reply(serde_json::json!({ "error": format!("bad request: {e}") })).as_bytes(),
            )
            .await?;
            return Ok(());
        }
    };
    match request {
        Request::Status => {
            let state = cx.state().await?;
            let peers: BTreeMap<PublicKey, PeerInfo> = crate::session::lock(&cx.session)
                .peers()
                .map(|(p, k)| (*k, p.clone()))
                .collect();
            let status = Status {
                name: cx.name.clone(),
                addresses: cx.addresses.clone(),
                relay_server: state
                    .relay_server
                    .as_ref()
                    .map(|s| relay_server_status(s, &peers)),
                peers: state
                    .peers
                    .iter()
                    .filter_map(|p| {
                        let info = peers.get(&p.key)?;
                        let relay = p.peer_relay.as_ref().map(|r| peer_relay_status(&peers, r));
                        let path = match (&p.peer_relay, p.route) {
                            (Some(r), Route::Relay) => {
                                relay_path(&relay_name(&peers, &r.relay), r.rtt, r.our_leg)
                            }
                            _ => describe(p.route),
                        };
                        Some(PeerStatus {
                            relay,
                            name: info.node.name.clone(),
                            addresses: info.node.addresses.clone(),
                            node_key: p.key.to_base64(),
                            path,
                            family: route_family(p.route).map(String::from),
                            families: families_of(p.explanation.as_ref()),
                            last_handshake_s: p
                                .stats
                                .last_handshake
                                .map(|t| state.at.saturating_duration_since(t).as_secs_f64()),
                            rx_bytes: p.stats.rx_bytes,
                            tx_bytes: p.stats.tx_bytes,
                            mtu: p.explanation.as_ref().map(|x| x.effective_mtu),
                        })
                    })
                    .collect(),
            };
            wr.write_all(reply(serde_json::to_value(status)?).as_bytes())
                .await?;
        }
        Request::Ping {
            peer,
            count,
            until_direct,
        } => {
            let Some((key, info)) = cx.find(&peer) else {
                wr.write_all(
                    reply(serde_json::json!({ "error": format!("no peer {peer:?}") })).as_bytes(),
                )
                .await?;
                return Ok(());
            };
            for _ in 0..count.max(1) {
                let (tx, rx) = oneshot::channel();
                cx.pings.lock().expect("pings").push((key, tx));
                cx.commands
                    .send(NodeCommand::Ping(key))
                    .map_err(|_| anyhow::anyhow!("the engine stopped"))?;
                let answer = tokio::time::timeout(Duration::from_secs(2), rx).await;
                let (pong, direct) = match answer {
                    Ok(Ok(a)) => {
                        let via = match (a.via, a.peer_relay) {
                            (Route::Direct(addr), _) => addr.to_string(),
                            (Route::Relay, Some(r)) => {
                                let name = crate::session::lock(&cx.session)
                                    .peers()
                                    .find(|(_, k)| **k == r)
                                    .map_or_else(|| r.to_base64(), |(p, _)| p.node.name.clone());
                                format!("peer relay {name}")
                            }
                            (Route::Relay, None) => "DERP(region 1)".into(),
                        };
                        let pong = Pong {
                            peer: info.node.name.clone(),
                            via,
                            latency_ms: Some(a.latency.as_secs_f64() * 1000.0),
                        };
                        (pong, matches!(a.via, Route::Direct(_)))
                    }
                    _ => {
                        let pong = Pong {
                            peer: info.node.name.clone(),
                            via: String::new(),
                            latency_ms: None,
                        };
                        (pong, false)
                    }
                };
                wr.write_all(reply(serde_json::to_value(&pong)?).as_bytes())
                    .await?;
                if until_direct && direct {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Request::Doctor { peer } => {
            let Some((key, info)) = cx.find(&peer) else {
                wr.write_all(
                    reply(serde_json::json!({ "error": format!("no peer {peer:?}") })).as_bytes(),
                )
                .await?;
                return Ok(());
            };
            let state = cx.state().await?;
            let p = state.peers.iter().find(|p| p.key == key);
            let nat = match state.nat {
                None => "unknown (no STUN answer)".to_string(),
                Some(n) if !n.mapping_varies => {
                    format!("easy: mapping fixed, reflexive {}", n.reflexive)
                }
                Some(n) => match n.delta {
                    Some(d) => format!(
                        "hard: sequential ports (step {d}), reflexive {}",
                        n.reflexive
                    ),
                    None => format!("hard: random ports, reflexive {}", n.reflexive),
                },
            };
            let x = p.and_then(|p| p.explanation.clone());
            let ours = cx.port_mapping.lock().map(|s| s.clone()).unwrap_or(None);
            let our_port_mapping = match (ours, x.as_ref().and_then(|x| x.port_mapping)) {
                (Some(report), _) => report,
                (None, Some(m)) => format!("mapped at {m}"),
                (None, None) => "no report yet".into(),
            };
            let peer_port_mapping = match x.as_ref().and_then(|x| x.peer_port_mapped) {
                None => "unknown (it has not said)".into(),
                Some(true) => "mapped: its gateway forwards its port (see its candidates)".into(),
                Some(false) => "none".into(),
            };
            let netmap_peers: BTreeMap<PublicKey, PeerInfo> = crate::session::lock(&cx.session)
                .peers()
                .map(|(p, k)| (*k, p.clone()))
                .collect();
            let peer_relays = x
                .as_ref()
                .map_or_else(Vec::new, |x| relay_lines(&netmap_peers, &x.peer_relays));
            let relay_in_use = p.and_then(|p| p.peer_relay);
            let doctor = Doctor {
                mtu: x.as_ref().map_or_else(String::new, mtu_line),
                peer_relays,
                doubts: x.as_ref().map_or_else(Vec::new, |x| {
                    x.doubts
                        .iter()
                        .map(|d| {
                            let ended = match d.ended {
                                Some((lasted, how)) => {
                                    format!("{how:?} after {} ms", lasted.as_millis())
                                }
                                None => "still in doubt".into(),
                            };
                            format!(
                                "{:>7.1} s ago  {}  {ended}; {} datagrams ({} bytes) also over the relay",
                                state.at.saturating_duration_since(d.began).as_secs_f64(),
                                d.addr,
                                d.duplicated,
                                d.duplicated_bytes
                            )
                        })
                        .collect()
                }),
                our_port_mapping,
                peer_port_mapping,
                peer: info.node.name.clone(),
                our_nat: nat,
                peer_nat: match x.as_ref().and_then(|x| x.peer_mapping_varies) {
                    None => "unknown (it has not said)".into(),
                    Some(false) => "easy: mapping fixed".into(),
                    Some(true) => "hard: mapping varies by destination".into(),
                },
                path: match (relay_in_use, p) {
                    (Some(r), Some(p)) if p.route == Route::Relay => {
                        relay_path(&relay_name(&netmap_peers, &r.relay), r.rtt, r.our_leg)
                    }
                    (_, p) => p.map_or("unknown".into(), |p| describe(p.route)),
                },
                family: p.and_then(|p| route_family(p.route)).map(String::from),
                families: families_of(x.as_ref()),
                attempts: x
                    .as_ref()
                    .map(|x| {
                        x.attempts
                            .iter()
                            .map(|a| {
                                format!(
                                    "{:>7.1} s ago  {}  {:?}",
                                    state.at.saturating_duration_since(a.at).as_secs_f64(),
                                    a.addr,
                                    a.outcome
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                birthday: x.as_ref().map_or(String::new(), |x| {
                    if x.probes == 0 {
                        "not needed".into()
                    } else {
                        format!(
                            "{} packets, {} attempts spent their budget",
                            x.probes, x.birthday_attempts_exhausted
                        )
                    }
                }),
            };
            wr.write_all(reply(serde_json::to_value(doctor)?).as_bytes())
                .await?;
        }
        Request::Down => {
            wr.write_all(reply(serde_json::json!({ "ok": true })).as_bytes())
                .await?;
            let _ = cx.down.send(());
        }
    }
    Ok(())
}

/// Sends one request and returns the answer lines (the client side of the CLI commands).
pub async fn ask(path: &Path, request: &Request) -> Result<Vec<serde_json::Value>> {
    let stream = UnixStream::connect(path)
        .await
        .with_context(|| format!("connecting to {} (is `burrow up` running?)", path.display()))?;
    let (rd, mut wr) = stream.into_split();
    wr.write_all(format!("{}\n", serde_json::to_string(request)?).as_bytes())
        .await?;
    let mut lines = BufReader::new(rd).lines();
    let mut out = Vec::new();
    while let Some(l) = lines.next_line().await? {
        let v: serde_json::Value = serde_json::from_str(&l)?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            bail!("{e}");
        }
        out.push(v);
    }
    Ok(out)
}

/// `burrow doctor`'s MTU line: the tunnel's MTU for the peer, and the direct path's search.
fn mtu_line(x: &burrow_node::Explanation) -> String {
    let Some((addr, r)) = x.mtu else {
        return format!("{} (no direct path probed)", x.effective_mtu);
    };
    let state = match r.state {
        burrow_punch::MtuState::Searching => "searching",
        burrow_punch::MtuState::Settled => "settled",
    };
    let too_big = r
        .too_big
        .map_or(String::new(), |b| format!(", {b} bytes went unanswered"));
    format!(
        "{} (direct path {addr} carries {}-byte datagrams{too_big}; {state}, {} probes, {} black holes)",
        x.effective_mtu, r.limit, r.probes, r.black_holes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_route_has_the_family_of_its_address() {
        let route = |s: &str| Route::Direct(s.parse().unwrap());
        assert_eq!(route_family(route("198.51.100.7:41641")), Some("ipv4"));
        assert_eq!(route_family(route("[2001:db8::2]:41641")), Some("ipv6"));
        assert_eq!(
            route_family(route("[::ffff:198.51.100.7]:41641")),
            Some("ipv4")
        );
        assert_eq!(route_family(Route::Relay), None);
        assert_eq!(
            describe(route("[2001:db8::2]:41641")),
            "direct [2001:db8::2]:41641"
        );
    }

    #[test]
    fn status_from_a_node_without_families_still_reads() {
        let old = serde_json::json!({
            "name": "b", "addresses": ["100.64.0.2"], "node_key": "k",
            "path": "direct 192.0.2.2:41641", "last_handshake_s": null,
            "rx_bytes": 0, "tx_bytes": 0
        });
        let p: PeerStatus = serde_json::from_value(old).unwrap();
        assert_eq!(p.family, None);
        assert!(p.families.is_empty());
        let new = serde_json::json!({
            "name": "b", "addresses": ["100.64.0.2"], "node_key": "k",
            "path": "direct [2001:db8::2]:41641", "family": "ipv6",
            "last_handshake_s": null, "rx_bytes": 0, "tx_bytes": 0
        });
        let p: PeerStatus = serde_json::from_value(new).unwrap();
        assert_eq!(p.family.as_deref(), Some("ipv6"));
        assert!(p.families.is_empty());
        assert_eq!(family_label("ipv6"), "IPv6");
        assert_eq!(family_label("ipv4"), "IPv4");
    }

    #[test]
    fn doctor_from_a_node_without_families_still_reads() {
        let old = serde_json::json!({
            "peer": "b", "our_nat": "easy", "peer_nat": "easy",
            "path": "direct 192.0.2.2:41641", "family": "ipv4",
            "attempts": [], "birthday": "not needed"
        });
        let d: Doctor = serde_json::from_value(old).unwrap();
        assert!(d.families.is_empty());
        let new = serde_json::json!({
            "peer": "b", "our_nat": "easy", "peer_nat": "easy",
            "path": "direct [2001:db8::2]:41641", "family": "ipv6",
            "families": [
                { "family": "ipv6", "state": "in-use", "addr": "[2001:db8::2]:41641",
                  "rtt_ms": 1.5, "pongs": null, "outcome": null, "candidates": null },
                { "family": "ipv4", "state": "we-have-none" }
            ],
            "attempts": [], "birthday": "not needed"
        });
        let d: Doctor = serde_json::from_value(new).unwrap();
        assert_eq!(d.families.len(), 2);
        assert_eq!(
            family_line(&d.families[0], &d.families),
            "IPv6: in use, [2001:db8::2]:41641, rtt 1.5 ms"
        );
        assert_eq!(
            family_line(&d.families[1], &d.families),
            "IPv4: we have no IPv4 address"
        );
    }

    #[test]
    fn a_relay_path_reads_via_node_with_both_legs() {
        let ms = Duration::from_millis;
        assert_eq!(
            relay_path("relay1", Some(ms(30)), Some(ms(12))),
            "relay via relay1 (RTT 12+18 ms)"
        );
        // Our leg unknown (no direct path to the relay node): the total alone.
        assert_eq!(
            relay_path("relay1", Some(ms(30)), None),
            "relay via relay1 (RTT 30 ms)"
        );
        assert_eq!(relay_path("relay1", None, None), "relay via relay1");
        // A leg measured longer than the sum (taken at another moment): the total alone.
        assert_eq!(
            relay_path("r", Some(ms(10)), Some(ms(11))),
            "relay via r (RTT 10 ms)"
        );
        assert_eq!(
            relay_path("r", Some(Duration::from_micros(2_345)), Some(ms(1))),
            "relay via r (RTT 1+1.3 ms)"
        );
        // Rounded so the terms add up to the total shown (0.7 = 0.4 + 0.3).
        assert_eq!(
            relay_path(
                "r",
                Some(Duration::from_micros(687)),
                Some(Duration::from_micros(437))
            ),
            "relay via r (RTT 0.4+0.3 ms)"
        );
    }

    #[test]
    fn status_from_a_node_without_relays_still_reads() {
        let old = serde_json::json!({
            "name": "a", "addresses": ["100.64.0.1"], "peers": [{
                "name": "b", "addresses": ["100.64.0.2"], "node_key": "k",
                "path": "derp region 1", "last_handshake_s": null,
                "rx_bytes": 0, "tx_bytes": 0
            }]
        });
        let s: Status = serde_json::from_value(old).unwrap();
        assert!(s.relay_server.is_none());
        assert!(s.peers[0].relay.is_none());
    }
}
