//! Peer-relay grants: the policy's `relay` section and `autoRelay`, their checks, and the
//! grants each node's netmap and deltas carry as capabilities, identities and policies change.

use std::collections::{BTreeMap, BTreeSet};

use burrow_control::{
    Delta, NetMap, NodeInfo, PeerInfo, Policy, PolicyError, RelayCapability, RelayGrants, Tailnet,
};

fn node(id: u64, user: &str, tags: &[&str]) -> PeerInfo {
    PeerInfo {
        node: NodeInfo {
            id,
            name: format!("n{id}"),
            user: user.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            addresses: vec![format!("100.64.0.{id}").parse().unwrap()],
        },
        node_key: format!("key{id}"),
        disco_key: format!("disco{id}"),
        endpoints: Vec::new(),
        home_region: 1,
    }
}

const RELAY_POLICY: &str = r#"{
  "groups": { "group:eng": ["alice", "bob"] },
  "tagOwners": { "tag:relay": ["ops"] },
  "acls": [ { "action": "accept", "src": ["group:eng"], "dst": ["group:eng:*"] } ],
  "relay": [ { "src": ["group:eng"], "via": ["tag:relay"] } ],
}"#;

fn port(p: u16) -> RelayCapability {
    RelayCapability {
        port: Some(p),
        fixed_mapping: false,
    }
}

fn ids(v: &[u64]) -> BTreeSet<u64> {
    v.iter().copied().collect()
}

/// Each node's grants as its netmap and the deltas since say; checked against a fresh netmap.
struct Views(BTreeMap<u64, RelayGrants>);

impl Views {
    fn of(t: &Tailnet, nodes: &[u64]) -> Self {
        Views(
            nodes
                .iter()
                .map(|id| (*id, t.netmap(*id).unwrap().relay))
                .collect(),
        )
    }

    fn apply(&mut self, deltas: &[(u64, Delta)]) {
        for (id, d) in deltas {
            if let Delta::Relay(g) = d {
                self.0.insert(*id, g.clone());
            }
        }
    }

    /// What an incremental follower holds equals what a reconnecting one would get.
    fn check(&self, t: &Tailnet) {
        for (id, g) in &self.0 {
            if let Some(map) = t.netmap(*id) {
                assert_eq!(g, &map.relay, "node {id}: deltas and netmap disagree");
            }
        }
    }
}

#[test]
fn a_relay_section_parses_and_an_older_policy_still_does() {
    let (p, c) = Policy::check(RELAY_POLICY).unwrap();
    assert_eq!(p.relay.len(), 1);
    assert!(!p.auto_relay);
    assert!(c.has_relay());
    let (p, c) = Policy::check(r#"{"acls": []}"#).unwrap();
    assert!(p.relay.is_empty() && !p.auto_relay && !c.has_relay());
    let (p, c) = Policy::check(r#"{"acls": [], "autoRelay": true}"#).unwrap();
    assert!(p.auto_relay && c.has_relay() && c.auto_relay());
}

#[test]
fn empty_relay_lists_are_refused_with_the_rule_and_field() {
    let text = "{\n  \"acls\": [],\n  \"relay\": [\n    {\"src\": [\"*\"], \"via\": [\"*\"]},\n    {\"src\": [\"*\"], \"via\": []}\n  ]\n}";
    let e = Policy::check(text).unwrap_err();
    assert_eq!(
        e,
        PolicyError::EmptyRelayList {
            line: 3,
            rule: 2,
            field: "via"
        }
    );
    assert_eq!(e.line(), 3);
    let e = Policy::check(r#"{"relay": [{"src": [], "via": ["*"]}]}"#).unwrap_err();
    assert!(matches!(
        e,
        PolicyError::EmptyRelayList {
            rule: 1,
            field: "src",
            ..
        }
    ));
}

#[test]
fn unknown_relay_selectors_are_refused_by_name() {
    let text =
        "{\n  \"relay\": [\n    {\"src\": [\"*\"],\n     \"via\": [\"tag:nowhere\"]}\n  ]\n}";
    match Policy::check(text).unwrap_err() {
        PolicyError::UnknownSelector {
            line,
            rule,
            field,
            selector,
            reason,
        } => {
            assert_eq!((line, rule, field), (4, 1, "via"));
            assert_eq!(selector, "tag:nowhere");
            assert!(reason.contains("tagOwners"), "{reason}");
        }
        e => panic!("not an unknown selector: {e:?}"),
    }
    let e = Policy::check(r#"{"relay": [{"src": ["group:ghosts"], "via": ["*"]}]}"#).unwrap_err();
    assert!(
        matches!(&e, PolicyError::UnknownSelector { field: "src", selector, .. } if selector == "group:ghosts"),
        "{e:?}"
    );
    assert!(e.to_string().contains("not defined"), "{e}");
    // A relay rule has only src and via.
    assert!(matches!(
        Policy::check(r#"{"relay": [{"src": ["*"], "via": ["*"], "dst": ["*"]}]}"#),
        Err(PolicyError::Syntax { .. })
    ));
}

#[test]
fn relay_rules_are_described_with_group_members() {
    let (_, c) = Policy::check(RELAY_POLICY).unwrap();
    let lines = c.describe_relay();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("group:eng (alice, bob) may relay through tag:relay"),
        "{}",
        lines[0]
    );
}

#[test]
fn a_tagged_relay_serves_the_rules_clients_once_it_reports_a_port() {
    let (_, c) = Policy::check(RELAY_POLICY).unwrap();
    let mut t = Tailnet::new(c);
    let (a, b, r, x) = (1, 2, 3, 4);
    t.upsert(node(a, "alice", &[]));
    t.upsert(node(b, "bob", &[]));
    t.upsert(node(r, "ops", &["tag:relay"]));
    t.upsert(node(x, "carol", &[]));
    let mut views = Views::of(&t, &[a, b, r, x]);
    // The relay rule makes clients and relay see each other, with no ACL between them.
    let peers = |id| -> BTreeSet<u64> {
        t.netmap(id)
            .unwrap()
            .peers
            .iter()
            .map(|p| p.node.id)
            .collect()
    };
    assert_eq!(peers(a), ids(&[b, r]));
    assert_eq!(peers(r), ids(&[a, b]));
    assert_eq!(peers(x), ids(&[]));
    // No relay port yet: nothing granted.
    assert!(views.0.values().all(RelayGrants::is_empty));

    let deltas = t.set_relay_capability(r, port(7000));
    views.apply(&deltas);
    let told: BTreeSet<u64> = deltas.iter().map(|(id, _)| *id).collect();
    assert_eq!(told, ids(&[a, b, r]), "carol is not told anything");
    assert_eq!(views.0[&a].relays, ids(&[r]));
    assert_eq!(views.0[&b].relays, ids(&[r]));
    assert!(views.0[&a].clients.is_empty());
    assert_eq!(views.0[&r].clients, ids(&[a, b]));
    assert!(views.0[&r].relays.is_empty());
    views.check(&t);

    // The same report again changes nothing.
    assert!(t.set_relay_capability(r, port(7000)).is_empty());
    // A client does not relay for the relay, even with a port of its own: it is not in `via`.
    let d = t.set_relay_capability(a, port(7001));
    assert!(d.is_empty(), "{d:?}");

    // The relay stops relaying: everyone it served is told.
    let deltas = t.set_relay_capability(r, RelayCapability::default());
    views.apply(&deltas);
    assert!(views.0[&a].is_empty() && views.0[&r].is_empty());
    views.check(&t);
}

#[test]
fn removal_and_a_new_policy_take_the_grants_back() {
    let (_, c) = Policy::check(RELAY_POLICY).unwrap();
    let mut t = Tailnet::new(c);
    for (id, user, tags) in [
        (1, "alice", &[][..]),
        (2, "bob", &[]),
        (3, "ops", &["tag:relay"]),
    ] {
        t.upsert(node(id, user, tags));
    }
    t.set_relay_capability(3, port(7000));
    let mut views = Views::of(&t, &[1, 2, 3]);
    assert_eq!(views.0[&1].relays, ids(&[3]));

    // A client leaves: the relay forgets it as a client.
    let deltas = t.remove(2);
    views.apply(&deltas);
    views.0.remove(&2);
    assert_eq!(views.0[&3].clients, ids(&[1]));
    views.check(&t);
    // It comes back: the relay serves it again, and it has the relay again.
    let deltas = t.upsert(node(2, "bob", &[]));
    views.apply(&deltas);
    assert_eq!(views.0[&3].clients, ids(&[1, 2]));
    assert_eq!(views.0[&2].relays, ids(&[3]));
    views.check(&t);

    // A policy without the relay rule: every grant goes.
    let (_, plain) = Policy::check(
        r#"{"groups": {"group:eng": ["alice", "bob"]}, "tagOwners": {"tag:relay": ["ops"]},
            "acls": [{"action": "accept", "src": ["group:eng"], "dst": ["group:eng:*"]}]}"#,
    )
    .unwrap();
    let deltas = t.set_policy(plain);
    views.apply(&deltas);
    assert!(views.0.values().all(RelayGrants::is_empty), "{:?}", views.0);
    // ...and the relay is no longer a peer of the clients.
    assert!(deltas.contains(&(1, Delta::PeerRemove { id: 3 })));
    views.check(&t);

    // The relay itself leaves under the relay policy: its clients lose it.
    let (_, c) = Policy::check(RELAY_POLICY).unwrap();
    views.apply(&t.set_policy(c));
    assert_eq!(views.0[&1].relays, ids(&[3]));
    let deltas = t.remove(3);
    views.apply(&deltas);
    assert!(views.0[&1].is_empty() && views.0[&2].is_empty());
}

#[test]
fn auto_relay_needs_a_port_a_fixed_mapping_and_an_acl() {
    let (_, c) = Policy::check(
        r#"{"acls": [{"action": "accept", "src": ["alice", "bob"], "dst": ["ops:*"]}],
            "autoRelay": true}"#,
    )
    .unwrap();
    let mut t = Tailnet::new(c);
    let (a, b, r, x) = (1, 2, 3, 4);
    t.upsert(node(a, "alice", &[]));
    t.upsert(node(b, "bob", &[]));
    t.upsert(node(r, "ops", &[]));
    t.upsert(node(x, "carol", &[]));
    let mut views = Views::of(&t, &[a, b, r, x]);
    // A port behind a NAT that varies its mapping: not enough.
    assert!(t.set_relay_capability(r, port(7000)).is_empty());
    let deltas = t.set_relay_capability(
        r,
        RelayCapability {
            port: Some(7000),
            fixed_mapping: true,
        },
    );
    views.apply(&deltas);
    assert_eq!(views.0[&a].relays, ids(&[r]));
    assert_eq!(views.0[&b].relays, ids(&[r]));
    assert_eq!(views.0[&r].clients, ids(&[a, b]), "carol may not reach it");
    assert!(views.0[&x].is_empty());
    views.check(&t);
    // A fixed mapping without a relay port is nothing.
    let deltas = t.set_relay_capability(
        r,
        RelayCapability {
            port: None,
            fixed_mapping: true,
        },
    );
    views.apply(&deltas);
    assert!(views.0.values().all(RelayGrants::is_empty));
    views.check(&t);
}

#[test]
fn a_node_that_changes_tags_gains_and_loses_its_relay_role() {
    let (_, c) = Policy::check(RELAY_POLICY).unwrap();
    let mut t = Tailnet::new(c);
    t.upsert(node(1, "alice", &[]));
    t.upsert(node(3, "ops", &[]));
    t.set_relay_capability(3, port(7000));
    let mut views = Views::of(&t, &[1, 3]);
    assert!(views.0[&1].is_empty(), "untagged: not in via");
    views.apply(&t.upsert(node(3, "ops", &["tag:relay"])));
    assert_eq!(views.0[&1].relays, ids(&[3]));
    assert_eq!(views.0[&3].clients, ids(&[1]));
    views.check(&t);
    views.apply(&t.upsert(node(3, "ops", &[])));
    assert!(views.0[&1].is_empty() && views.0[&3].is_empty());
    views.check(&t);
}

#[test]
fn relay_grants_on_the_wire_and_older_netmaps() {
    let d = Delta::Relay(RelayGrants {
        relays: ids(&[3]),
        clients: ids(&[]),
    });
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"kind": "relay", "relays": [3], "clients": []})
    );
    assert_eq!(serde_json::from_value::<Delta>(json).unwrap(), d);
    let node = r#"{"id":7,"name":"a","user":"u","tags":[],"addresses":["100.64.0.1"]}"#;
    let old = format!(r#"{{"node":{node},"peers":[],"filter":[],"derp":[]}}"#);
    let map: NetMap = serde_json::from_str(&old).unwrap();
    assert!(map.relay.is_empty());
    // Without grants the netmap serializes as before (no "relay" key).
    assert!(!serde_json::to_string(&map).unwrap().contains("relay"));
}
