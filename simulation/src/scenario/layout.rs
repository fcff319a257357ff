//! Checking a scenario and assigning addresses: its [`Layout`], the NAT chain in front of a
//! node, and how each node attaches to the network.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::{BoxDef, Family, FirewallDef, NodeDef, Scenario, ScenarioError, Workload};
use crate::capture::Recorder;
use crate::nat::{NatConfig, NatTable};
use crate::net::{derive_seed, Link, SimSocket, Uplink};
use crate::wire::GATEWAY_PORT;

impl Scenario {
    /// Parses a TOML scenario.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text)?;
        s.layout()?;
        Ok(s)
    }

    pub(super) fn invalid(&self, message: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            scenario: self.name.clone(),
            message: message.into(),
        }
    }

    pub(super) fn box_config(&self, b: &BoxDef) -> Result<NatConfig, ScenarioError> {
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

    pub(super) fn firewall_config(&self, n: &NodeDef) -> Result<Option<NatConfig>, ScenarioError> {
        Ok(match &n.firewall {
            None => None,
            Some(FirewallDef::Preset(p)) => Some(crate::preset::single(p).ok_or_else(|| {
                self.invalid(format!("node {}: unknown firewall preset {p:?}", n.name))
            })?),
            Some(FirewallDef::Table(t)) => Some(t.clone()),
        })
    }

    /// Checks references and assigns addresses.
    pub(super) fn layout(&self) -> Result<Layout, ScenarioError> {
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
pub(super) struct Layout {
    pub(super) servers: BTreeMap<String, (IpAddr, Option<IpAddr>)>,
    pub(super) boxes: BTreeMap<String, IpAddr>,
    pub(super) nodes: BTreeMap<String, IpAddr>,
}

/// How a node reaches the network: through its NAT box's gateway, or directly (behind an
/// optional stateful firewall).
pub(super) struct Attachment {
    pub(super) ip: IpAddr,
    gateway: Option<SocketAddr>,
    firewall: Option<NatConfig>,
}

impl Attachment {
    pub(super) fn of(
        scenario: &Scenario,
        layout: &Layout,
        n: &NodeDef,
    ) -> Result<Self, ScenarioError> {
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
    pub(super) async fn bind(
        self,
        n: &NodeDef,
        seed: u64,
        rec: Arc<Recorder>,
    ) -> std::io::Result<SimSocket> {
        let uplink = self.uplink(n, seed, rec.clone());
        SimSocket::bind(SocketAddr::new(self.ip, 0), uplink, rec).await
    }

    /// The node's way out (shared by all its sockets).
    pub(super) fn uplink(&self, n: &NodeDef, seed: u64, rec: Arc<Recorder>) -> Uplink {
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
