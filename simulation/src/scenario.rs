//! Scenario files: nodes, servers, boxes, links, a workload and expected outcomes; and running
//! one scenario with one seed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow::stun_server::StunServer;
use burrow_netcheck::{Region, Report};
use burrow_stun::ServerConfig;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::capture::Recorder;
use crate::nat::{Dependence, NatConfig, NatStats, NatTable, PortAllocation};
use crate::net::{
    derive_seed, run_box, BoxKind, BoxSpec, BoxUplink, Link, LinkConfig, SimSocket, Uplink,
};
use crate::wire::GATEWAY_PORT;

/// A scenario, as written in `simulation/scenarios/*.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name shown in reports.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Simulated-time limit in seconds.
    #[serde(default = "default_duration")]
    pub duration_s: f64,
    /// Address family of the whole run (turmoil simulates one family at a time).
    #[serde(default)]
    pub family: Family,
    /// NAT boxes.
    #[serde(default, rename = "box")]
    pub boxes: Vec<BoxDef>,
    /// Servers on the Internet.
    #[serde(default, rename = "server")]
    pub servers: Vec<ServerDef>,
    /// burrow nodes.
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeDef>,
    /// What runs.
    pub workload: Workload,
    /// What must come out.
    #[serde(default)]
    pub expect: Expect,
}

fn default_duration() -> f64 {
    60.0
}

/// The address family a scenario runs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4 (documentation ranges 198.51.100/24, 203.0.113/24, 192.0.2/24; private 10/8, 100.64/10).
    #[default]
    Ipv4,
    /// IPv6 (2001:db8::/32 public, fd00::/8 private).
    Ipv6,
}

impl Family {
    /// An address in the pool named by an IPv4-style prefix, host number `n`.
    fn address(self, pool: [u8; 3], n: u8) -> IpAddr {
        match self {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(pool[0], pool[1], pool[2], n)),
            Family::Ipv6 => {
                let private = pool[0] == 10 || pool[0] == 100;
                let (a, b) = if private {
                    (0xfd00, pool[0] as u16)
                } else {
                    (0x2001, 0x0db8)
                };
                let c = if private {
                    ((pool[1] as u16) << 8) | pool[2] as u16
                } else {
                    pool[0] as u16
                };
                let d = if private {
                    0
                } else {
                    ((pool[1] as u16) << 8) | pool[2] as u16
                };
                IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, n as u16))
            }
        }
    }
}

/// A NAT box: a preset, or a full `nat` table, optionally behind another box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxDef {
    /// Name.
    pub name: String,
    /// A single-box preset name (see `preset::NAMES`; `cgnat` here is the carrier box alone).
    #[serde(default)]
    pub preset: Option<String>,
    /// Explicit behaviour, instead of a preset.
    #[serde(default)]
    pub nat: Option<NatConfig>,
    /// Public (outside) IP; assigned if absent.
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// The box this one sits behind (carrier-grade NAT behind a home NAT).
    #[serde(default)]
    pub behind: Option<String>,
    /// The link to the upstream.
    #[serde(default)]
    pub link: LinkConfig,
}

/// A server on the Internet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerDef {
    /// Name.
    pub name: String,
    /// What it runs: `stun` (burrow's STUN server).
    #[serde(default = "stun")]
    pub kind: String,
    /// Its IP; assigned if absent.
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// Port.
    #[serde(default = "stun_port")]
    pub port: u16,
    /// A second IP for RFC 5780 (an alias box holds it).
    #[serde(default)]
    pub alt_ip: Option<IpAddr>,
    /// Give the server an automatically chosen second IP (RFC 5780) when `alt_ip` is absent.
    #[serde(default)]
    pub rfc5780: bool,
    /// The RFC 5780 alternate port.
    #[serde(default = "alt_port")]
    pub alt_port: u16,
    /// Region code for netcheck; the name if absent.
    #[serde(default)]
    pub region: Option<String>,
    /// The link to the Internet.
    #[serde(default)]
    pub link: LinkConfig,
}

fn stun() -> String {
    "stun".into()
}
fn stun_port() -> u16 {
    3478
}
fn alt_port() -> u16 {
    3479
}

/// A node: behind a box, or on the Internet (optionally with a stateful firewall).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDef {
    /// Name.
    pub name: String,
    /// The box it sits behind; none = a public address.
    #[serde(default)]
    pub behind: Option<String>,
    /// Its IP; assigned if absent.
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// A stateful firewall in front of a public node: a preset name or a `nat` table.
    #[serde(default)]
    pub firewall: Option<FirewallDef>,
    /// The link to its box or the Internet.
    #[serde(default = "lan")]
    pub link: LinkConfig,
}

fn lan() -> LinkConfig {
    LinkConfig::with_latency(1.0)
}

/// A firewall by preset name or explicit table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FirewallDef {
    /// A preset name, e.g. "firewall".
    Preset(String),
    /// An explicit table (`translate = false`).
    Table(NatConfig),
}

/// What the scenario runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Workload {
    /// `burrow netcheck` on one node against some STUN servers.
    Netcheck {
        /// The node.
        node: String,
        /// The servers, each its own region unless they share a region code.
        servers: Vec<String>,
        /// Netcheck's overall deadline, seconds.
        #[serde(default = "netcheck_deadline")]
        deadline_s: f64,
    },
    /// Two burrow nodes (the node engine under `burrow::node::run_node`) with a real DERP
    /// relay and STUN servers: relay first, then punching (birthday probing against hard
    /// NATs), with application packets flowing both ways throughout.
    Mesh {
        /// One node.
        a: String,
        /// The other.
        b: String,
        /// STUN servers (two or more tell an easy NAT from a hard one).
        stun: Vec<String>,
        /// The DERP server (a `kind = "derp"` server).
        derp: String,
        /// How long to run, seconds.
        #[serde(default = "punch_duration")]
        duration_s: f64,
        /// Application packets each way at this interval, milliseconds (0: none).
        #[serde(default = "data_interval")]
        data_interval_ms: f64,
        /// A coordination server (a `kind = "control"` server): the nodes register with it and
        /// learn each other, the DERP map and endpoints from their netmap streams, instead of
        /// being told. They also ping each other every second (latencies in the trace).
        #[serde(default)]
        control: Option<String>,
    },
}

fn data_interval() -> f64 {
    20.0
}

fn punch_duration() -> f64 {
    20.0
}

fn netcheck_deadline() -> f64 {
    6.0
}

/// Expected outcomes. With `derive = true` they follow from the boxes' properties; explicit
/// fields override.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Derive expectations from the NAT chain in front of the node.
    #[serde(default)]
    pub derive: bool,
    /// `udp`.
    #[serde(default)]
    pub udp: Option<bool>,
    /// `nat_type`.
    #[serde(default)]
    pub nat_type: Option<String>,
    /// `mapping_varies_by_dest_ip` ("true", "false" or "null").
    #[serde(default)]
    pub mapping_varies_by_dest_ip: Option<String>,
    /// `filtering`.
    #[serde(default)]
    pub filtering: Option<String>,
    /// `mapping`.
    #[serde(default)]
    pub mapping: Option<String>,
    /// `port_allocation` kind.
    #[serde(default)]
    pub port_allocation: Option<String>,
    /// IP of `global_v4`.
    #[serde(default)]
    pub global_ip: Option<IpAddr>,
    /// Mesh: where both nodes' traffic ends up, "direct" or "relay".
    #[serde(default)]
    pub route: Option<String>,
    /// Mesh: links are lossless, so every application packet must arrive.
    #[serde(default)]
    pub lossless: bool,
}

/// A check that failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mismatch {
    /// Report field.
    pub field: String,
    /// Expected value.
    pub expected: String,
    /// Value seen.
    pub got: String,
}

/// The result of one scenario with one seed.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Every expectation held.
    pub passed: bool,
    /// Why the run itself failed, if it did.
    pub error: Option<String>,
    /// Expectations that did not hold.
    pub mismatches: Vec<Mismatch>,
    /// The workload's result (the netcheck report).
    pub result: Option<serde_json::Value>,
    /// SHA-256 of the event trace.
    pub trace_hash: String,
    /// Number of trace events.
    pub events: u64,
    /// Simulated time, milliseconds.
    pub sim_ms: u64,
    /// Wall time, milliseconds.
    pub wall_ms: u64,
    /// Counters of every box.
    pub boxes: BTreeMap<String, NatStats>,
}

/// Errors in a scenario's definition.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// Bad TOML.
    #[error("cannot parse scenario: {0}")]
    Parse(#[from] toml::de::Error),
    /// A reference to something not defined, or a bad combination.
    #[error("scenario {scenario}: {message}")]
    Invalid {
        /// Scenario name.
        scenario: String,
        /// What is wrong.
        message: String,
    },
}

impl Scenario {
    /// Parses a TOML scenario.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text)?;
        s.layout()?;
        Ok(s)
    }

    fn invalid(&self, message: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            scenario: self.name.clone(),
            message: message.into(),
        }
    }

    fn box_config(&self, b: &BoxDef) -> Result<NatConfig, ScenarioError> {
        match (&b.preset, &b.nat) {
            (Some(p), None) => crate::preset::single(p).ok_or_else(|| {
                self.invalid(format!(
                    "box {}: unknown preset {p:?} (open has no box; known: {})",
                    b.name,
                    crate::preset::NAMES.join(", ")
                ))
            }),
            (None, Some(n)) => Ok(n.clone()),
            _ => Err(self.invalid(format!("box {}: give exactly one of preset or nat", b.name))),
        }
    }

    fn firewall_config(&self, n: &NodeDef) -> Result<Option<NatConfig>, ScenarioError> {
        Ok(match &n.firewall {
            None => None,
            Some(FirewallDef::Preset(p)) => Some(crate::preset::single(p).ok_or_else(|| {
                self.invalid(format!("node {}: unknown firewall preset {p:?}", n.name))
            })?),
            Some(FirewallDef::Table(t)) => Some(t.clone()),
        })
    }

    /// Checks references and assigns addresses.
    fn layout(&self) -> Result<Layout, ScenarioError> {
        let mut names = std::collections::BTreeSet::new();
        for n in self
            .boxes
            .iter()
            .map(|b| &b.name)
            .chain(self.servers.iter().map(|s| &s.name))
            .chain(self.nodes.iter().map(|n| &n.name))
        {
            if !names.insert(n.clone()) {
                return Err(self.invalid(format!("name {n:?} is used twice")));
            }
        }
        let mut used: Vec<IpAddr> = Vec::new();
        let family = self.family;
        let mut take =
            |wanted: Option<IpAddr>, pool: [u8; 3], next: &mut u8| -> Result<IpAddr, String> {
                let ip = match wanted {
                    Some(ip) => ip,
                    None => loop {
                        *next += 1;
                        let ip = family.address(pool, *next);
                        if !used.contains(&ip) {
                            break ip;
                        }
                    },
                };
                if used.contains(&ip) {
                    return Err(format!("address {ip} is used twice"));
                }
                if ip.is_ipv4() != (family == Family::Ipv4) {
                    return Err(format!(
                        "address {ip} is not in the scenario's family ({family:?})"
                    ));
                }
                used.push(ip);
                Ok(ip)
            };
        let mut layout = Layout::default();
        let (mut next_server, mut next_box, mut next_node) = (0u8, 0u8, 0u8);
        // Automatic second IPs of RFC 5780 servers come from the top of the server range.
        let mut next_alt = 199u8;
        for s in &self.servers {
            if !["stun", "derp", "control"].contains(&s.kind.as_str()) {
                return Err(self.invalid(format!(
                    "server {}: unknown kind {:?} (known: stun, derp, control)",
                    s.name, s.kind
                )));
            }
            let ip = take(s.ip, [198, 51, 100], &mut next_server).map_err(|e| self.invalid(e))?;
            let alt = match (s.alt_ip, s.rfc5780) {
                (Some(a), _) => Some(take(Some(a), [0, 0, 0], &mut 0)),
                (None, true) => Some(take(None, [198, 51, 100], &mut next_alt)),
                (None, false) => None,
            }
            .transpose()
            .map_err(|e| self.invalid(e))?;
            if alt.is_some() && s.alt_port == s.port {
                return Err(
                    self.invalid(format!("server {}: alt_port must differ from port", s.name))
                );
            }
            layout.servers.insert(s.name.clone(), (ip, alt));
        }
        for (i, b) in self.boxes.iter().enumerate() {
            self.box_config(b)?;
            let ip = match &b.behind {
                None => take(b.ip, [203, 0, 113], &mut next_box),
                Some(_) => take(b.ip, [100, 64, i as u8], &mut 1),
            }
            .map_err(|e| self.invalid(e))?;
            layout.boxes.insert(b.name.clone(), ip);
        }
        for b in &self.boxes {
            if let Some(parent) = &b.behind {
                if !layout.boxes.contains_key(parent) {
                    return Err(
                        self.invalid(format!("box {} is behind unknown box {parent:?}", b.name))
                    );
                }
                // No cycles: walking up must end.
                let mut seen = vec![b.name.clone()];
                let mut cur = Some(parent.clone());
                while let Some(c) = cur {
                    if seen.contains(&c) {
                        return Err(self.invalid(format!("boxes form a cycle through {c}")));
                    }
                    seen.push(c.clone());
                    cur = self
                        .boxes
                        .iter()
                        .find(|x| x.name == c)
                        .and_then(|x| x.behind.clone());
                }
            }
        }
        for n in &self.nodes {
            self.firewall_config(n)?;
            let ip = match &n.behind {
                None => take(n.ip, [192, 0, 2], &mut next_node),
                Some(b) => {
                    let idx = self.boxes.iter().position(|x| &x.name == b).ok_or_else(|| self.invalid(format!("node {} is behind unknown box {b:?}", n.name)))?;
                    if n.firewall.is_some() {
                        return Err(self.invalid(format!("node {}: a firewall is for public nodes; put the node behind a box instead", n.name)));
                    }
                    take(n.ip, [10, idx as u8, 0], &mut 1)
                }
            }
            .map_err(|e| self.invalid(e))?;
            layout.nodes.insert(n.name.clone(), ip);
        }
        match &self.workload {
            Workload::Netcheck {
                node,
                servers,
                deadline_s,
            } => {
                if !layout.nodes.contains_key(node) {
                    return Err(self.invalid(format!("workload node {node:?} is not defined")));
                }
                if servers.is_empty() {
                    return Err(self.invalid("netcheck needs at least one server"));
                }
                for s in servers {
                    if !layout.servers.contains_key(s) {
                        return Err(self.invalid(format!("workload server {s:?} is not defined")));
                    }
                }
                if !deadline_s.is_finite() || *deadline_s <= 0.0 {
                    return Err(self.invalid("deadline_s must be positive"));
                }
            }
            Workload::Mesh {
                a,
                b,
                stun,
                derp,
                duration_s,
                data_interval_ms,
                control,
            } => {
                if let Some(c) = control {
                    if self
                        .servers
                        .iter()
                        .find(|x| &x.name == c)
                        .is_none_or(|x| x.kind != "control")
                    {
                        return Err(
                            self.invalid(format!("workload server {c:?} is not a control server"))
                        );
                    }
                }
                for n in [a, b] {
                    if !layout.nodes.contains_key(n) {
                        return Err(self.invalid(format!("workload node {n:?} is not defined")));
                    }
                }
                if a == b {
                    return Err(self.invalid("a mesh needs two different nodes"));
                }
                for s in stun {
                    if self
                        .servers
                        .iter()
                        .find(|x| &x.name == s)
                        .is_none_or(|x| x.kind != "stun")
                    {
                        return Err(
                            self.invalid(format!("workload server {s:?} is not a STUN server"))
                        );
                    }
                }
                if self
                    .servers
                    .iter()
                    .find(|x| &x.name == derp)
                    .is_none_or(|x| x.kind != "derp")
                {
                    return Err(
                        self.invalid(format!("workload server {derp:?} is not a DERP server"))
                    );
                }
                if !duration_s.is_finite() || *duration_s <= 0.0 {
                    return Err(self.invalid("duration_s must be positive"));
                }
                if !data_interval_ms.is_finite() || *data_interval_ms < 0.0 {
                    return Err(self.invalid("data_interval_ms must be zero or positive"));
                }
            }
        }
        if !self.duration_s.is_finite() || self.duration_s <= 0.0 {
            return Err(self.invalid("duration_s must be positive"));
        }
        Ok(layout)
    }

    /// The NAT behaviours between `node` and the Internet, nearest first (its firewall, then
    /// its box, that box's parent, …).
    pub fn chain(&self, node: &str) -> Vec<(String, NatConfig, IpAddr)> {
        let Ok(layout) = self.layout() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let Some(n) = self.nodes.iter().find(|n| n.name == node) else {
            return out;
        };
        if let Ok(Some(fw)) = self.firewall_config(n) {
            out.push((format!("{}-firewall", n.name), fw, layout.nodes[&n.name]));
        }
        let mut cur = n.behind.clone();
        while let Some(b) = cur {
            let def = self.boxes.iter().find(|x| x.name == b).expect("validated");
            out.push((
                b.clone(),
                self.box_config(def).expect("validated"),
                layout.boxes[&b],
            ));
            cur = def.behind.clone();
        }
        out
    }
}

#[derive(Debug, Default)]
struct Layout {
    servers: BTreeMap<String, (IpAddr, Option<IpAddr>)>,
    boxes: BTreeMap<String, IpAddr>,
    nodes: BTreeMap<String, IpAddr>,
}

/// How a node reaches the network: through its NAT box's gateway, or directly (behind an
/// optional stateful firewall).
struct Attachment {
    ip: IpAddr,
    gateway: Option<SocketAddr>,
    firewall: Option<NatConfig>,
}

impl Attachment {
    fn of(scenario: &Scenario, layout: &Layout, n: &NodeDef) -> Result<Self, ScenarioError> {
        Ok(Attachment {
            ip: layout.nodes[&n.name],
            gateway: n
                .behind
                .as_ref()
                .map(|b| SocketAddr::new(layout.boxes[b], GATEWAY_PORT)),
            firewall: scenario.firewall_config(n)?,
        })
    }

    /// Binds the node's socket; call it inside the node's turmoil host.
    async fn bind(self, n: &NodeDef, seed: u64, rec: Arc<Recorder>) -> std::io::Result<SimSocket> {
        let uplink = self.uplink(n, seed, rec.clone());
        SimSocket::bind(SocketAddr::new(self.ip, 0), uplink, rec).await
    }

    /// The node's way out (shared by all its sockets).
    fn uplink(&self, n: &NodeDef, seed: u64, rec: Arc<Recorder>) -> Uplink {
        let link = Link::new(&n.name, n.link, seed, rec.clone());
        match self.gateway {
            Some(gateway) => Uplink::Gateway { gateway, link },
            None => Uplink::Direct {
                link,
                capture: n.name.clone(),
                firewall: self.firewall.clone().map(|fw| {
                    Arc::new(Mutex::new(NatTable::new(
                        fw,
                        ChaCha20Rng::seed_from_u64(derive_seed(seed, "firewall")),
                    )))
                }),
            },
        }
    }
}

/// What the simulation collected besides the recorder.
type Slot = Arc<Mutex<Option<Result<Report, String>>>>;

/// What each mesh node saw, by node name.
type MeshSlot = Arc<Mutex<BTreeMap<String, MeshNode>>>;

/// One mesh node's view at the end of a run.
#[derive(Debug, Clone, Default)]
struct MeshNode {
    route: Option<burrow_punch::Route>,
    time_to_direct: Option<Duration>,
    sent: u64,
    received: u64,
    probes: u64,
    switches: u64,
}

/// Opens birthday sockets for a simulated node: more sockets behind the same box.
struct SimBinder {
    ip: IpAddr,
    uplink: Uplink,
    rec: Arc<Recorder>,
}

impl burrow::node::SocketBinder for SimBinder {
    type Socket = SimSocket;
    fn bind(&self) -> impl std::future::Future<Output = std::io::Result<SimSocket>> + Send {
        SimSocket::bind(
            SocketAddr::new(self.ip, 0),
            self.uplink.clone(),
            self.rec.clone(),
        )
    }
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&derive_seed(seed, &i.to_string()).to_le_bytes());
    }
    b
}

/// Whether two nodes behind these NAT chains can reach each other directly by simultaneous
/// send alone (no birthday probing): both endpoint-independent, or one endpoint-independent
/// side whose filters admit new ports of an IP it has sent to (the other side's pings then get
/// through and teach it the peer-reflexive address).
pub fn traversable(a: &[(String, NatConfig, IpAddr)], b: &[(String, NatConfig, IpAddr)]) -> bool {
    let blocked = |c: &[(String, NatConfig, IpAddr)]| c.iter().any(|x| x.1.block_udp);
    if blocked(a) || blocked(b) {
        return false;
    }
    let eim = |c: &[(String, NatConfig, IpAddr)]| {
        c.iter()
            .all(|x| x.1.mapping == Dependence::EndpointIndependent)
    };
    let admits = |c: &[(String, NatConfig, IpAddr)]| {
        c.iter()
            .all(|x| x.1.filtering != Dependence::AddressAndPortDependent)
    };
    (eim(a) && eim(b)) || (eim(a) && admits(a)) || (eim(b) && admits(b))
}

/// Options for a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Keep packets for pcap files.
    pub capture: bool,
    /// Keep the trace text.
    pub keep_trace: bool,
}

/// Runs `scenario` with `seed`; returns the outcome and the recorder (for pcaps and traces).
pub fn run(
    scenario: &Scenario,
    seed: u64,
    options: &RunOptions,
) -> Result<(Outcome, Arc<Recorder>), ScenarioError> {
    let layout = scenario.layout()?;
    let recorder = Arc::new(Recorder::new(options.capture, options.keep_trace));
    let wall = Instant::now();
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs_f64(scenario.duration_s))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::ZERO)
        .max_message_latency(Duration::ZERO)
        .udp_capacity(4096)
        .rng_seed(seed)
        .ip_version(match scenario.family {
            Family::Ipv4 => turmoil::IpVersion::V4,
            Family::Ipv6 => turmoil::IpVersion::V6,
        })
        .build();

    // Boxes.
    for b in &scenario.boxes {
        let ip = layout.boxes[&b.name];
        let uplink = match &b.behind {
            None => BoxUplink::Internet(b.link),
            Some(p) => BoxUplink::Behind(SocketAddr::new(layout.boxes[p], GATEWAY_PORT), b.link),
        };
        let spec = BoxSpec {
            name: b.name.clone(),
            ip,
            kind: BoxKind::Nat(scenario.box_config(b)?),
            uplink,
            seed: derive_seed(seed, &format!("box:{}", b.name)),
            inside_links: scenario
                .nodes
                .iter()
                .filter(|n| n.behind.as_deref() == Some(b.name.as_str()))
                .map(|n| (layout.nodes[&n.name], n.link))
                .chain(
                    scenario
                        .boxes
                        .iter()
                        .filter(|c| c.behind.as_deref() == Some(b.name.as_str()))
                        .map(|c| (layout.boxes[&c.name], c.link)),
                )
                .collect(),
        };
        let rec = recorder.clone();
        sim.host(ip, move || run_box(spec.clone(), rec.clone(), seed));
    }

    // Servers (an alias box holds an RFC 5780 server's second IP).
    for s in &scenario.servers {
        let (ip, alt_ip) = layout.servers[&s.name];
        if s.kind == "control" {
            continue; // started with the mesh workload, which knows its DERP map
        }
        if s.kind == "derp" {
            let port = s.port;
            let relay_seed = derive_seed(seed, &format!("derp:{}", s.name));
            sim.host(ip, move || async move {
                let config = burrow::derper::DerperConfig {
                    private_key: burrow_wg::PrivateKey::from_bytes(seed_bytes(relay_seed)),
                    mesh_key: None,
                    mesh_with: Vec::new(),
                    tls: None,
                    rate_limit: None,
                    admission: Default::default(),
                };
                let relay = burrow::derper::Relay::with_rng(
                    &config,
                    ChaCha20Rng::seed_from_u64(relay_seed),
                );
                burrow::derper::spawn_timers(relay.clone());
                let any = if ip.is_ipv4() {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                };
                let listener = turmoil::net::TcpListener::bind((any, port)).await?;
                loop {
                    let (stream, peer) = listener.accept().await?;
                    let relay = relay.clone();
                    tokio::spawn(async move {
                        let _ = burrow::derper::serve_stream(relay, Box::new(stream), peer).await;
                    });
                }
            });
            continue;
        }
        if let Some(alt_ip) = alt_ip {
            let spec = BoxSpec {
                name: format!("{}-alt", s.name),
                ip: alt_ip,
                kind: BoxKind::Alias,
                uplink: BoxUplink::Internet(s.link),
                seed: 0,
                inside_links: Vec::new(),
            };
            let rec = recorder.clone();
            sim.host(alt_ip, move || run_box(spec.clone(), rec.clone(), seed));
        }
        let (s, rec) = (s.clone(), recorder.clone());
        sim.host(ip, move || {
            let (s, rec) = (s.clone(), rec.clone());
            async move {
                let primary = SocketAddr::new(ip, s.port);
                let alternate = alt_ip.map(|a| SocketAddr::new(a, s.alt_port));
                let config = ServerConfig {
                    primary,
                    alternate,
                    software: Some("burrow-sim".into()),
                };
                let link = Link::new(&s.name, s.link, seed, rec.clone());
                let direct = Uplink::Direct {
                    link,
                    capture: s.name.clone(),
                    firewall: None,
                };
                let mut sockets = Vec::new();
                for addr in config.listen_addresses() {
                    if addr.ip() == ip {
                        sockets.push(SimSocket::bind(addr, direct.clone(), rec.clone()).await?);
                    } else {
                        let lan = Link::new(
                            &format!("{}-alt-lan", s.name),
                            LinkConfig::with_latency(0.0),
                            seed,
                            rec.clone(),
                        );
                        sockets.push(
                            SimSocket::bind_alias(
                                ip,
                                addr,
                                SocketAddr::new(addr.ip(), GATEWAY_PORT),
                                lan,
                                rec.clone(),
                            )
                            .await?,
                        );
                    }
                }
                StunServer::from_sockets(config, sockets)
                    .run(1, std::future::pending())
                    .await;
                Ok(())
            }
        });
    }

    // The workload.
    let slot: Slot = Arc::new(Mutex::new(None));
    let mesh_slot: MeshSlot = Arc::new(Mutex::new(BTreeMap::new()));
    if let Workload::Mesh {
        a,
        b,
        stun,
        derp,
        duration_s,
        data_interval_ms,
        control,
    } = &scenario.workload
    {
        let server_addr = |name: &String| {
            let def = scenario
                .servers
                .iter()
                .find(|s| &s.name == name)
                .expect("validated");
            SocketAddr::new(layout.servers[name].0, def.port)
        };
        let stun_addrs: Vec<SocketAddr> = stun.iter().map(server_addr).collect();
        let derp_addr = server_addr(derp);
        // The coordination server, whose DERP map names the workload's relay and STUN servers.
        let control = match control {
            None => None,
            Some(name) => {
                let addr = server_addr(name);
                let sim_control = Arc::new(
                    crate::control::SimControl::new(vec![burrow_control::DerpRegion {
                        id: 1,
                        code: "sim".into(),
                        url: format!("http://{derp_addr}/derp"),
                        stun: stun_addrs.clone(),
                    }])
                    .map_err(|e| scenario.invalid(format!("control server: {e}")))?,
                );
                let key = sim_control.auth_key.clone();
                sim.host(addr.ip(), move || {
                    let c = sim_control.clone();
                    async move { c.serve(addr.port()).await }
                });
                Some((addr, key))
            }
        };
        let key = |what: &str, name: &str| {
            burrow_wg::PrivateKey::from_bytes(seed_bytes(derive_seed(
                seed,
                &format!("{what}:{name}"),
            )))
        };
        let duration = Duration::from_secs_f64(*duration_s);
        let interval =
            (*data_interval_ms > 0.0).then(|| Duration::from_secs_f64(data_interval_ms / 1000.0));
        for (side, (me, peer)) in [(a.clone(), b.clone()), (b.clone(), a.clone())]
            .into_iter()
            .enumerate()
        {
            // Tailnet addresses without a control server: a is 100.64.0.1, b 100.64.0.2.
            let tailnet_ip = |s: usize| std::net::Ipv4Addr::new(100, 64, 0, 1 + s as u8);
            let n = scenario
                .nodes
                .iter()
                .find(|x| x.name == me)
                .expect("validated")
                .clone();
            let attachment = Attachment::of(scenario, &layout, &n)?;
            let ip = attachment.ip;
            let (wg_key, disco_key) = (key("wg", &me), key("disco", &me));
            let peer_config = burrow_node::PeerConfig {
                node_key: key("wg", &peer).public_key(),
                disco_key: key("disco", &peer).public_key(),
                home_region: 1,
                endpoints: Vec::new(),
                allowed_ips: vec![std::net::IpAddr::V4(tailnet_ip(1 - side)).into()],
            };
            let mut my_ip = tailnet_ip(side);
            let (rec, out, stun_addrs) = (recorder.clone(), mesh_slot.clone(), stun_addrs.clone());
            let control = control.clone();
            sim.client(ip, async move {
                // With a control server: the node session registers and opens the netmap.
                let joined = match &control {
                    None => None,
                    Some((addr, key)) => {
                        let client = crate::control::client(*addr);
                        Some(crate::control::join(client, &me, &wg_key, &disco_key, key, &rec).await?)
                    }
                };
                let uplink = attachment.uplink(&n, seed, rec.clone());
                let sock = SimSocket::bind(SocketAddr::new(ip, 0), uplink.clone(), rec.clone()).await?;
                let local = burrow::transport::UdpTransport::local_addr(&sock)?;
                let binder = SimBinder { ip, uplink, rec: rec.clone() };
                let url = burrow::derp_client::DerpUrl {
                    tls: false,
                    host: derp_addr.ip().to_string(),
                    port: derp_addr.port(),
                    path: "/derp".into(),
                };
                let derp_key = wg_key.clone();
                let conn_seed = Arc::new(std::sync::atomic::AtomicU64::new(derive_seed(seed, &format!("derp-client:{me}"))));
                let derp = burrow::derp_client::DerpClient::spawn_with(
                    url.to_string(),
                    move || {
                        let (url, key) = (url.clone(), derp_key.clone());
                        let rng = ChaCha20Rng::seed_from_u64(conn_seed.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                        async move {
                            let tcp = turmoil::net::TcpStream::connect(derp_addr).await?;
                            burrow::derp_client::upgrade(Box::new(tcp), &url, key, None, false, rng).await
                        }
                    },
                    ChaCha20Rng::seed_from_u64(derive_seed(seed, &format!("derp-jitter:{me}"))),
                );
                let mut config = burrow_node::NodeConfig::new(
                    wg_key,
                    disco_key,
                    derive_seed(seed, &format!("node:{me}")),
                );
                config.stun_servers = stun_addrs;
                config.local_addrs = vec![local];
                // Without a control server nothing vouches for a peer's public IP: the two
                // scripted nodes trust each other's advertisements.
                config.birthday_needs_control_ip = joined.is_some();
                let start = tokio::time::Instant::now();
                let mut engine = burrow_node::Node::new(config, start.into_std());
                let (channels, handle) = burrow::node::channels();
                let burrow::node::NodeHandle { outbound: app_tx, commands, events: mut ev_rx } = handle;
                // Whether the peer is known yet (without a control server: from the start).
                let (known_tx, mut known_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                let mut peer_known = joined.is_none();
                let mut endpoints_to = None;
                match joined {
                    None => {
                        let _ = engine.add_peer(start.into_std(), peer_config.clone());
                    }
                    Some((driver, node)) => {
                        if let Some(std::net::IpAddr::V4(a)) = node.addresses.iter().find(|a| a.is_ipv4()) {
                            my_ip = *a;
                        }
                        endpoints_to = Some(driver.inputs());
                        let watch = peer_config.node_key;
                        crate::control::follow(driver, commands.clone(), rec.clone(), me.clone(), watch, known_tx);
                    }
                }
                let pinging = endpoints_to.is_some();
                let mut next_ping = start;
                let until = start + duration;
                let driver = tokio::spawn(burrow::node::run_node(
                    engine, sock, binder, derp, channels, Some(until),
                ));
                let mut view = MeshNode::default();
                let mut next_data = interval.map(|_| start);
                let peer_key = peer_config.node_key;
                loop {
                    let mut wake = next_data.map_or(until, |t| t.min(until));
                    if pinging && peer_known {
                        wake = wake.min(next_ping);
                    }
                    tokio::select! {
                        Some(()) = known_rx.recv() => peer_known = true,
                        e = ev_rx.recv() => match e {
                            Some(burrow_node::Event::Packet { .. }) => {
                                if view.received == 0 {
                                    let via = view.route.unwrap_or(burrow_punch::Route::Relay);
                                    rec.event(format_args!("mesh {me} first packet from the peer, via {via:?}"));
                                }
                                view.received += 1;
                            }
                            Some(burrow_node::Event::PingResult { via, latency, .. }) => {
                                rec.event(format_args!("mesh {me} pong via {via:?} in {:.1} ms", latency.as_secs_f64() * 1000.0));
                            }
                            Some(burrow_node::Event::PathChanged { from, to, .. }) => {
                                view.switches += 1;
                                rec.event(format_args!("mesh {me} path {from:?} -> {to:?}"));
                                if matches!(to, burrow_punch::Route::Direct(_)) && view.time_to_direct.is_none() {
                                    view.time_to_direct = Some(start.elapsed());
                                }
                                view.route = Some(to);
                            }
                            Some(burrow_node::Event::BirthdayStarted { probing, .. }) => {
                                rec.event(format_args!("mesh {me} birthday (probing: {probing})"));
                            }
                            Some(burrow_node::Event::Endpoints { nat, candidates }) => {
                                let kind = match nat {
                                    None => "unknown".to_owned(),
                                    Some(n) if !n.mapping_varies => format!("easy, reflexive {}", n.reflexive),
                                    Some(n) if n.delta.is_some() => format!("hard (sequential), reflexive {}", n.reflexive),
                                    Some(n) => format!("hard (random ports), reflexive {}", n.reflexive),
                                };
                                rec.event(format_args!("mesh {me} NAT {kind}; {} candidates", candidates.len()));
                                if let Some(inputs) = &endpoints_to {
                                    let endpoints = candidates.iter().map(|c| c.addr).collect();
                                    let _ = inputs.try_send(burrow_session::Input::LocalEndpoints(endpoints));
                                }
                            }
                            Some(_) => {}
                            None => break,
                        },
                        _ = tokio::time::sleep_until(wake) => {
                            let now = tokio::time::Instant::now();
                            if now >= until {
                                break;
                            }
                            if pinging && peer_known && now >= next_ping {
                                let _ = commands.send(burrow::node::NodeCommand::Ping(peer_key));
                                next_ping = now + Duration::from_secs(1);
                            }
                            if let (Some(t), Some(iv)) = (next_data, interval) {
                                if now >= t && peer_known {
                                    // Quiet for the last 2 s, so nothing is in flight at the end.
                                    if now + Duration::from_secs(2) < until {
                                        // From this node's own tailnet address (the peer drops any other).
                                        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
                                        p.extend_from_slice(&my_ip.octets());
                                        p.extend_from_slice(&tailnet_ip(1 - side).octets());
                                        p.extend_from_slice(&view.sent.to_be_bytes());
                                        let _ = app_tx.try_send((peer_key, p));
                                        view.sent += 1;
                                    }
                                    next_data = Some(t + iv);
                                }
                            }
                        }
                    }
                }
                view.route.get_or_insert(burrow_punch::Route::Relay);
                drop(app_tx);
                if let Ok(Ok(engine)) = driver.await {
                    view.probes = engine.stats(&peer_key).map_or(0, |s| s.probes);
                }
                out.lock().expect("mesh slot").insert(me.clone(), view);
                Ok(())
            });
        }
        for n in [a, b] {
            sim.set_link_latency(layout.nodes[n], derp_addr.ip(), Duration::from_millis(15));
        }
    }
    match &scenario.workload {
        Workload::Mesh { .. } => {}
        Workload::Netcheck {
            node,
            servers,
            deadline_s,
        } => {
            let n = scenario
                .nodes
                .iter()
                .find(|x| &x.name == node)
                .expect("validated")
                .clone();
            let attachment = Attachment::of(scenario, &layout, &n)?;
            let ip = attachment.ip;
            let mut regions: Vec<Region> = Vec::new();
            for name in servers {
                let def = scenario
                    .servers
                    .iter()
                    .find(|x| &x.name == name)
                    .expect("validated");
                let code = def.region.clone().unwrap_or_else(|| def.name.clone());
                let addr = SocketAddr::new(layout.servers[name].0, def.port);
                match regions.iter_mut().find(|r| r.code == code) {
                    Some(r) => r.servers.push(addr),
                    None => regions.push(Region {
                        id: regions.len() as u32 + 1,
                        code,
                        servers: vec![addr],
                    }),
                }
            }
            let deadline = Duration::from_secs_f64(*deadline_s);
            let (rec, slot2) = (recorder.clone(), slot.clone());
            sim.client(ip, async move {
                let sock = attachment.bind(&n, seed, rec.clone()).await?;
                let rng =
                    ChaCha20Rng::seed_from_u64(derive_seed(seed, &format!("node:{}", n.name)));
                let (v4, v6) = if ip.is_ipv4() {
                    (Some(sock), None)
                } else {
                    (None, Some(sock))
                };
                let r = burrow::netcheck::run_on(regions, v4, v6, vec![ip], deadline, rng).await;
                let r = match r {
                    Ok(report) => Ok(report),
                    Err(burrow::netcheck::NetcheckError::NoAnswer { .. }) => {
                        Err("no STUN server answered".to_owned())
                    }
                    Err(e) => Err(e.to_string()),
                };
                match &r {
                    Ok(report) => rec.event(format_args!(
                        "netcheck report {}",
                        serde_json::to_string(report).unwrap_or_default()
                    )),
                    Err(e) => rec.event(format_args!("netcheck error {e}")),
                }
                *slot2.lock().expect("slot") = Some(r);
                Ok(())
            });
        }
    }

    let run_result = sim.run();
    let sim_ms = sim.elapsed().as_millis() as u64;
    let result = slot.lock().expect("slot").take();
    let (trace_hash, events) = recorder.trace_hash();
    let mut outcome = Outcome {
        scenario: scenario.name.clone(),
        seed,
        passed: false,
        error: run_result.err().map(|e| e.to_string()),
        mismatches: Vec::new(),
        result: None,
        trace_hash,
        events,
        sim_ms,
        wall_ms: wall.elapsed().as_millis() as u64,
        boxes: recorder.boxes(),
    };
    match &scenario.workload {
        Workload::Mesh { a, b, .. } => {
            let results = mesh_slot.lock().expect("mesh slot").clone();
            let word = |n: &str| match results.get(n).and_then(|v| v.route) {
                Some(burrow_punch::Route::Direct(_)) => "direct".to_owned(),
                Some(burrow_punch::Route::Relay) => "relay".to_owned(),
                None => "unfinished".to_owned(),
            };
            let ms = |n: &str| {
                results
                    .get(n)
                    .and_then(|o| o.time_to_direct)
                    .map(|d| d.as_millis() as u64)
            };
            let get = |n: &str| results.get(n).cloned().unwrap_or_default();
            let (va, vb) = (get(a), get(b));
            outcome.result = Some(serde_json::json!({
                "route_a": word(a), "route_b": word(b),
                "time_to_direct_ms_a": ms(a), "time_to_direct_ms_b": ms(b),
                "sent_a": va.sent, "received_b": vb.received,
                "sent_b": vb.sent, "received_a": va.received,
                "switches": va.switches + vb.switches,
                "probes": va.probes + vb.probes,
            }));
            let expected = scenario.expect.route.clone().or_else(|| {
                scenario.expect.derive.then(|| {
                    let chain = |n: &str| {
                        scenario
                            .chain(n)
                            .into_iter()
                            .map(|x| x.1)
                            .collect::<Vec<_>>()
                    };
                    match crate::grid::expected(&chain(a), &chain(b)) {
                        crate::grid::Expectation::Direct => "direct".into(),
                        crate::grid::Expectation::Relay => "relay".into(),
                        crate::grid::Expectation::LongRun => "any".into(),
                    }
                })
            });
            if let Some(e) = expected.filter(|e| e != "any") {
                for n in [a, b] {
                    if word(n) != e {
                        outcome.mismatches.push(Mismatch {
                            field: format!("route of {n}"),
                            expected: e.clone(),
                            got: word(n),
                        });
                    }
                }
            }
            // Relay first, no loss at the switch: every packet arrives (lossless links).
            for (from, to, sent, received) in
                [(a, b, va.sent, vb.received), (b, a, vb.sent, va.received)]
            {
                if scenario.expect.lossless && received != sent {
                    outcome.mismatches.push(Mismatch {
                        field: format!("packets {from} → {to}"),
                        expected: format!("{sent} delivered"),
                        got: format!("{received} delivered"),
                    });
                }
            }
        }
        Workload::Netcheck { node, .. } => {
            let expected = expected_netcheck(scenario, node, &layout);
            let report = match result {
                Some(Ok(r)) => Some(r),
                Some(Err(e)) if e == "no STUN server answered" => None,
                Some(Err(e)) => {
                    outcome.error.get_or_insert(e);
                    None
                }
                None => {
                    outcome
                        .error
                        .get_or_insert_with(|| "the workload did not finish".into());
                    None
                }
            };
            outcome.result = report
                .as_ref()
                .map(|r| serde_json::to_value(r).expect("report serializes"));
            outcome.mismatches = check_netcheck(&expected, report.as_ref());
        }
    }
    outcome.passed = outcome.error.is_none() && outcome.mismatches.is_empty();
    Ok((outcome, recorder))
}

/// Expected netcheck fields (`None` = not checked).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetcheckExpectation {
    udp: Option<bool>,
    nat_type: Option<String>,
    mapping_varies_by_dest_ip: Option<String>,
    filtering: Option<String>,
    mapping: Option<String>,
    port_allocation: Option<String>,
    global_ip: Option<IpAddr>,
}

/// What netcheck must report for a node, from the properties of the boxes in front of it.
fn expected_netcheck(scenario: &Scenario, node: &str, layout: &Layout) -> NetcheckExpectation {
    let e = &scenario.expect;
    let mut x = NetcheckExpectation::default();
    if e.derive {
        let chain = scenario.chain(node);
        let blocked = chain.iter().any(|(_, c, _)| c.block_udp);
        let translating: Vec<&(String, NatConfig, IpAddr)> =
            chain.iter().filter(|(_, c, _)| c.translate).collect();
        let varies = chain
            .iter()
            .any(|(_, c, _)| c.mapping != Dependence::EndpointIndependent);
        x.udp = Some(!blocked);
        if blocked {
            x.nat_type = Some("udp-blocked".into());
        } else {
            x.nat_type = Some(
                if translating.is_empty() {
                    "none"
                } else if varies {
                    "hard"
                } else {
                    "easy"
                }
                .into(),
            );
            x.mapping_varies_by_dest_ip = Some(varies.to_string());
            let filtering = chain
                .iter()
                .map(|(_, c, _)| c.filtering)
                .max()
                .unwrap_or(Dependence::EndpointIndependent);
            x.filtering = Some(filtering.as_str().into());
            let mapping = chain
                .iter()
                .map(|(_, c, _)| c.mapping)
                .max()
                .unwrap_or(Dependence::EndpointIndependent);
            x.mapping = Some(mapping.as_str().into());
            x.global_ip = Some(
                translating
                    .last()
                    .map_or(layout.nodes[node], |(_, _, ip)| *ip),
            );
            x.port_allocation = match translating.as_slice() {
                [] => Some("preserving".into()),
                [(_, c, _)] if c.mapping != Dependence::EndpointIndependent => match c.allocation {
                    PortAllocation::Sequential { .. } => Some("sequential".into()),
                    PortAllocation::Random => Some("random".into()),
                    PortAllocation::PreserveIfFree => None,
                },
                _ => None,
            };
        }
    }
    if e.udp.is_some() {
        x.udp = e.udp;
    }
    for (field, value) in [
        (&mut x.nat_type, &e.nat_type),
        (
            &mut x.mapping_varies_by_dest_ip,
            &e.mapping_varies_by_dest_ip,
        ),
        (&mut x.filtering, &e.filtering),
        (&mut x.mapping, &e.mapping),
        (&mut x.port_allocation, &e.port_allocation),
    ] {
        if value.is_some() {
            *field = value.clone();
        }
    }
    if e.global_ip.is_some() {
        x.global_ip = e.global_ip;
    }
    x
}

fn check_netcheck(x: &NetcheckExpectation, report: Option<&Report>) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut check = |field: &str, expected: &Option<String>, got: String| {
        if let Some(e) = expected {
            if *e != got {
                out.push(Mismatch {
                    field: field.into(),
                    expected: e.clone(),
                    got,
                });
            }
        }
    };
    let udp = report.is_some_and(|r| r.udp);
    check("udp", &x.udp.map(|b| b.to_string()), udp.to_string());
    match report {
        None => {
            // No server answered: netcheck's verdict is udp-blocked.
            check("nat_type", &x.nat_type, "udp-blocked".into());
        }
        Some(r) => {
            check("nat_type", &x.nat_type, r.nat_type.as_str().into());
            check(
                "mapping_varies_by_dest_ip",
                &x.mapping_varies_by_dest_ip,
                r.mapping_varies_by_dest_ip
                    .map_or("null".into(), |b| b.to_string()),
            );
            check("filtering", &x.filtering, r.filtering.as_str().into());
            check("mapping", &x.mapping, r.mapping.as_str().into());
            check(
                "port_allocation",
                &x.port_allocation,
                r.port_allocation.kind().into(),
            );
            let (field, global) = match x.global_ip {
                Some(IpAddr::V6(_)) => ("global_v6", r.global_v6),
                _ => ("global_v4", r.global_v4),
            };
            check(
                field,
                &x.global_ip.map(|ip| ip.to_string()),
                global.map_or("null".into(), |a| a.ip().to_string()),
            );
        }
    }
    out
}

/// The netcheck scenario the matrix runs for a preset: a node behind the preset's boxes, two
/// STUN servers on distinct public IPs, one of them offering RFC 5780.
pub fn netcheck_for_preset(preset: &str) -> Option<Scenario> {
    netcheck_for_preset_in(preset, Family::Ipv4)
}

/// The boxes of a preset's chain, outermost first (each naming its parent), prefixed with
/// `prefix`; a non-translating box becomes the node's firewall. Returns the boxes, the
/// firewall and the box the node sits behind.
fn preset_boxes(
    p: &crate::preset::Preset,
    prefix: &str,
) -> (Vec<BoxDef>, Option<FirewallDef>, Option<String>) {
    let mut boxes = Vec::new();
    let mut firewall = None;
    let mut behind = None;
    for (i, cfg) in p.chain.iter().enumerate().rev() {
        if !cfg.translate {
            firewall = Some(FirewallDef::Table(cfg.clone()));
            continue;
        }
        let name = if i == 0 {
            format!("{prefix}home")
        } else {
            format!("{prefix}carrier{i}")
        };
        boxes.push(BoxDef {
            name: name.clone(),
            preset: None,
            nat: Some(cfg.clone()),
            ip: None,
            behind: behind.clone(),
            link: LinkConfig::with_latency(5.0),
        });
        behind = Some(name);
    }
    (boxes, firewall, behind)
}

/// Two nodes behind presets `a` and `b` finding a direct path, relay first; the expected
/// route follows from the presets' properties.
pub fn mesh_for_pair(a: &str, b: &str) -> Option<Scenario> {
    let (pa, pb) = (crate::preset::get(a)?, crate::preset::get(b)?);
    let (mut boxes, fa, ba) = preset_boxes(&pa, "a-");
    let (boxes_b, fb, bb) = preset_boxes(&pb, "b-");
    boxes.extend(boxes_b);
    let node = |name: &str, behind: Option<String>, firewall: Option<FirewallDef>| NodeDef {
        name: name.into(),
        behind,
        ip: None,
        firewall,
        link: LinkConfig::with_latency(2.0),
    };
    let server = |name: &str, kind: &str, port: u16| ServerDef {
        name: name.into(),
        kind: kind.into(),
        ip: None,
        port,
        alt_ip: None,
        rfc5780: false,
        alt_port: port + 1,
        region: None,
        link: LinkConfig::with_latency(10.0),
    };
    Some(Scenario {
        name: format!("mesh/{a}~{b}"),
        description: format!(
            "two burrow nodes, behind {a} and {b}, with DERP and three STUN servers"
        ),
        duration_s: 40.0,
        family: Family::Ipv4,
        boxes,
        servers: vec![
            server("stun1", "stun", 3478),
            server("stun2", "stun", 3478),
            server("stun3", "stun", 3478),
            server("derp", "derp", 80),
        ],
        nodes: vec![node("a", ba, fa), node("b", bb, fb)],
        workload: Workload::Mesh {
            a: "a".into(),
            b: "b".into(),
            stun: vec!["stun1".into(), "stun2".into(), "stun3".into()],
            derp: "derp".into(),
            duration_s: punch_duration(),
            data_interval_ms: data_interval(),
            control: None,
        },
        expect: Expect {
            derive: true,
            lossless: true,
            ..Expect::default()
        },
    })
}

/// The whole story for presets `a` and `b`: [`mesh_for_pair`] plus the real coordination
/// server, which the nodes register with and learn each other from.
pub fn story_for_pair(a: &str, b: &str) -> Option<Scenario> {
    let mut s = mesh_for_pair(a, b)?;
    s.name = format!("story/{a}~{b}");
    s.description =
        format!("control, DERP, three STUN servers, and two burrow nodes behind {a} and {b}");
    let mut control = s.servers.last()?.clone();
    control.name = "control".into();
    control.kind = "control".into();
    s.servers.push(control);
    if let Workload::Mesh { control, .. } = &mut s.workload {
        *control = Some("control".into());
    }
    Some(s)
}

/// [`netcheck_for_preset`] in a given address family.
pub fn netcheck_for_preset_in(preset: &str, family: Family) -> Option<Scenario> {
    let p = crate::preset::get(preset)?;
    let (boxes, firewall, behind) = preset_boxes(&p, "");
    let server = |name: &str, rfc5780: bool, ms: f64| ServerDef {
        name: name.into(),
        kind: "stun".into(),
        ip: None,
        port: 3478,
        alt_ip: None,
        rfc5780,
        alt_port: 3479,
        region: None,
        link: LinkConfig::with_latency(ms),
    };
    Some(Scenario {
        name: match family {
            Family::Ipv4 => format!("netcheck/{preset}"),
            Family::Ipv6 => format!("netcheck-v6/{preset}"),
        },
        family,
        description: format!("netcheck behind the {preset} preset: {}", p.doc),
        duration_s: 30.0,
        boxes,
        servers: vec![server("stun1", true, 10.0), server("stun2", false, 20.0)],
        nodes: vec![NodeDef {
            name: "node".into(),
            behind,
            ip: None,
            firewall,
            link: lan(),
        }],
        workload: Workload::Netcheck {
            node: "node".into(),
            servers: vec!["stun1".into(), "stun2".into()],
            deadline_s: netcheck_deadline(),
        },
        expect: Expect {
            derive: true,
            ..Expect::default()
        },
    })
}
