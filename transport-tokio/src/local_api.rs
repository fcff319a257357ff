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
}

/// Answers to a `burrow ping` waiting for their pong.
pub type PingWaiters = Arc<Mutex<Vec<(PublicKey, oneshot::Sender<(Route, Duration)>)>>>;

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
                peers: state
                    .peers
                    .iter()
                    .filter_map(|p| {
                        let info = peers.get(&p.key)?;
                        Some(PeerStatus {
                            name: info.node.name.clone(),
                            addresses: info.node.addresses.clone(),
                            node_key: p.key.to_base64(),
                            path: describe(p.route),
                            family: route_family(p.route).map(String::from),
                            families: families_of(p.explanation.as_ref()),
                            last_handshake_s: p
                                .stats
                                .last_handshake
                                .map(|t| state.at.saturating_duration_since(t).as_secs_f64()),
                            rx_bytes: p.stats.rx_bytes,
                            tx_bytes: p.stats.tx_bytes,
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
                let pong = match answer {
                    Ok(Ok((route, latency))) => Pong {
                        peer: info.node.name.clone(),
                        via: match route {
                            Route::Direct(a) => a.to_string(),
                            Route::Relay => "DERP(region 1)".into(),
                        },
                        latency_ms: Some(latency.as_secs_f64() * 1000.0),
                    },
                    _ => Pong {
                        peer: info.node.name.clone(),
                        via: String::new(),
                        latency_ms: None,
                    },
                };
                let direct = pong.latency_ms.is_some() && !pong.via.starts_with("DERP");
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
            let doctor = Doctor {
                our_port_mapping,
                peer_port_mapping,
                peer: info.node.name.clone(),
                our_nat: nat,
                peer_nat: match x.as_ref().and_then(|x| x.peer_mapping_varies) {
                    None => "unknown (it has not said)".into(),
                    Some(false) => "easy: mapping fixed".into(),
                    Some(true) => "hard: mapping varies by destination".into(),
                },
                path: p.map_or("unknown".into(), |p| describe(p.route)),
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
}
