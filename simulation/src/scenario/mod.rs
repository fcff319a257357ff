//! Scenario files: nodes, servers, boxes, links, a workload and expected outcomes; and running
//! one scenario with one seed.
//!
//! The parts: `layout` checks a scenario and assigns addresses, `world` builds its turmoil
//! network (boxes and servers), `workloads` runs its mesh or netcheck nodes, `expectations`
//! judges the outcome, `presets` writes the scenarios the matrix runs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::capture::Recorder;
use crate::nat::{NatConfig, NatStats};
use crate::net::LinkConfig;

mod expectations;
mod layout;
mod presets;
mod workloads;
mod world;

use workloads::{MeshSlot, Slot};

pub use expectations::{traversable, NetcheckExpectation};
pub use presets::{
    mesh_for_pair, mesh_for_pair_in, netcheck_for_preset, netcheck_for_preset_in, story_for_pair,
};

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

pub(super) fn default_duration() -> f64 {
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

pub(super) fn stun() -> String {
    "stun".into()
}
pub(super) fn stun_port() -> u16 {
    3478
}
pub(super) fn alt_port() -> u16 {
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

pub(super) fn lan() -> LinkConfig {
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

pub(super) fn data_interval() -> f64 {
    20.0
}

pub(super) fn punch_duration() -> f64 {
    20.0
}

pub(super) fn netcheck_deadline() -> f64 {
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
    let mut sim = world::build(scenario, &layout, seed, &recorder)?;

    // The workload.
    let slot: Slot = Arc::new(Mutex::new(None));
    let mesh_slot: MeshSlot = Arc::new(Mutex::new(BTreeMap::new()));
    workloads::mesh(&mut sim, scenario, &layout, seed, &recorder, &mesh_slot)?;
    workloads::netcheck(&mut sim, scenario, &layout, seed, &recorder, &slot)?;

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
    expectations::judge(scenario, &layout, &mut outcome, result, &mesh_slot);
    outcome.passed = outcome.error.is_none() && outcome.mismatches.is_empty();
    Ok((outcome, recorder))
}
