//! Judging a run against what its scenario expects: the mesh's routes and delivery, and the
//! netcheck report against what the boxes in front of the node imply.

use std::net::IpAddr;

use burrow_netcheck::Report;

use super::layout::Layout;
use super::workloads::{MeshSlot, NetcheckResult};
use super::{Mismatch, Outcome, Scenario, Workload};
use crate::nat::{Dependence, NatConfig, PortAllocation};

/// Fills `outcome`'s result and mismatches from what the workload left behind.
pub(super) fn judge(
    scenario: &Scenario,
    layout: &Layout,
    outcome: &mut Outcome,
    result: Option<NetcheckResult>,
    mesh_slot: &MeshSlot,
) {
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
            let expected =
                scenario.expect.route.clone().or_else(|| {
                    scenario.expect.derive.then(|| {
                        let chain = |n: &str| {
                            scenario
                                .chain(n)
                                .into_iter()
                                .map(|x| x.1)
                                .collect::<Vec<_>>()
                        };
                        match crate::grid::expected(&chain(a), &chain(b)) {
                            crate::grid::Expectation::Direct
                            | crate::grid::Expectation::DirectIpv6 => "direct".into(),
                            crate::grid::Expectation::Relay => "relay".into(),
                            crate::grid::Expectation::LongRun
                            | crate::grid::Expectation::PeerRelay => "any".into(),
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
            let expected = expected_netcheck(scenario, node, layout);
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
