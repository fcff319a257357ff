//! The scenarios the matrix and `cargo xtask sim --pair` run: netcheck behind each preset,
//! and two mesh nodes behind a pair of presets, with or without the control server.

use super::{
    data_interval, lan, netcheck_deadline, punch_duration, BoxDef, Expect, Family, FirewallDef,
    NodeDef, Scenario, ServerDef, Workload,
};
use crate::net::LinkConfig;

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

/// [`mesh_for_pair`] in an IPv6 world (turmoil simulates one family per run): the presets
/// that exist on IPv6 are `open` (no firewall) and `firewall` (a stateful firewall, no NAT),
/// and two such nodes go direct by simultaneous pings.
pub fn mesh_for_pair_in(a: &str, b: &str, family: Family) -> Option<Scenario> {
    let mut s = mesh_for_pair(a, b)?;
    if family == Family::Ipv6 {
        s.name = format!("mesh-v6/{a}~{b}");
        s.description = format!("{} (IPv6)", s.description);
    }
    s.family = family;
    Some(s)
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
