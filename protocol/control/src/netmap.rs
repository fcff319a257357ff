//! The tailnet as the control server holds it, and the netmaps it sends: each node learns its
//! own filter and the peers it may talk to or hear from. Changes are incremental: a node
//! joining, leaving or moving costs work in proportion to the nodes that can see it, found
//! through per-user and per-tag indexes, never a recomputation over the whole network.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::policy::{CompiledPolicy, FilterRule, NodeInfo, RelayCapability};

/// What a node is told about one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's node: id, name, user, tags, tailnet addresses.
    pub node: NodeInfo,
    /// WireGuard public key, base64.
    pub node_key: String,
    /// Disco public key, base64.
    pub disco_key: String,
    /// Candidate endpoints the peer reported.
    pub endpoints: Vec<SocketAddr>,
    /// Its home DERP region.
    pub home_region: u16,
}

/// One DERP region of the map the server hands out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerpRegion {
    /// Region id.
    pub id: u16,
    /// Short name.
    pub code: String,
    /// The relay, e.g. https://derp1.example.net/derp.
    pub url: String,
    /// STUN servers of the region.
    pub stun: Vec<SocketAddr>,
    /// The relay's fixed IPv4 address (the DERP map's `IPv4`), dialled beside or instead of
    /// the URL's host name; absent from netmaps of servers that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    /// The relay's fixed IPv6 address (the DERP map's `IPv6`), tried first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

/// A whole netmap for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetMap {
    /// The node itself.
    pub node: NodeInfo,
    /// Peers it may talk to or hear from.
    pub peers: Vec<PeerInfo>,
    /// Its inbound packet filter.
    pub filter: Vec<FilterRule>,
    /// The DERP map.
    #[serde(default)]
    pub derp: Vec<DerpRegion>,
    /// Peer relays: which peers relay for this node and for which it relays (absent from
    /// netmaps of servers that predate them: none).
    #[serde(default, skip_serializing_if = "RelayGrants::is_empty")]
    pub relay: RelayGrants,
}

/// One node's peer-relay grants, by peer node id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayGrants {
    /// Peers that relay for this node: its relay candidates (policy `relay` with this node in
    /// `src` and the peer in `via`, or `autoRelay`; the peer runs a relay).
    #[serde(default)]
    pub relays: BTreeSet<u64>,
    /// Peers this node may relay for (it runs a relay; they are in `src` of a rule naming it
    /// in `via`, or `autoRelay` covers them).
    #[serde(default)]
    pub clients: BTreeSet<u64>,
}

impl RelayGrants {
    /// Whether it grants nothing.
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty() && self.clients.is_empty()
    }
}

/// An incremental update for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Delta {
    /// A peer appeared or changed.
    PeerUpsert(PeerInfo),
    /// A peer left (or may no longer be seen).
    PeerRemove {
        /// Its id.
        id: u64,
    },
    /// The node's filter changed.
    Filter {
        /// The new rules.
        rules: Vec<FilterRule>,
    },
    /// The node's peer-relay grants changed (the whole new set). A node older than this
    /// fails to read it, reconnects and gets a whole netmap, once per change.
    Relay(RelayGrants),
}

/// The tailnet: nodes, their keys and endpoints, the policy, and indexes for incremental work.
#[derive(Debug, Clone)]
pub struct Tailnet {
    policy: CompiledPolicy,
    nodes: BTreeMap<u64, PeerInfo>,
    by_user: BTreeMap<String, BTreeSet<u64>>,
    by_tag: BTreeMap<String, BTreeSet<u64>>,
    derp: Vec<DerpRegion>,
    /// Nodes that reported a relay port (or a fixed mapping), by id.
    capabilities: BTreeMap<u64, RelayCapability>,
    /// The relay grants each node was last told (non-empty ones only).
    grants: BTreeMap<u64, RelayGrants>,
}

impl Tailnet {
    /// Sets the DERP map every netmap carries.
    pub fn set_derp_map(&mut self, regions: Vec<DerpRegion>) {
        self.derp = regions;
    }

    /// An empty tailnet under `policy`.
    pub fn new(policy: CompiledPolicy) -> Self {
        Tailnet {
            policy,
            nodes: BTreeMap::new(),
            by_user: BTreeMap::new(),
            by_tag: BTreeMap::new(),
            derp: Vec::new(),
            capabilities: BTreeMap::new(),
            grants: BTreeMap::new(),
        }
    }

    /// Replaces the policy; returns the deltas that bring every node's netmap up to it: peers
    /// it may now see, peers it no longer may, and its new filter, each only where it changed.
    /// Nodes are compared one at a time under the old and the new policy, so the memory is
    /// one node's view, not the whole tailnet's.
    pub fn set_policy(&mut self, policy: CompiledPolicy) -> Vec<(u64, Delta)> {
        let mut old = std::mem::replace(&mut self.policy, policy);
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let mut out = Vec::new();
        for id in ids {
            let (now_seen, now_filter) = self.view_of(id);
            std::mem::swap(&mut self.policy, &mut old);
            let (seen, filter) = self.view_of(id);
            std::mem::swap(&mut self.policy, &mut old);
            out.extend(
                now_seen
                    .difference(&seen)
                    .map(|p| (id, Delta::PeerUpsert(self.nodes[p].clone()))),
            );
            out.extend(
                seen.difference(&now_seen)
                    .map(|&p| (id, Delta::PeerRemove { id: p })),
            );
            if now_filter != filter {
                out.push((id, Delta::Filter { rules: now_filter }));
            }
            self.regrant(id, &mut out);
        }
        out
    }

    /// The policy in force.
    pub fn policy(&self) -> &CompiledPolicy {
        &self.policy
    }

    /// A node's relay capability, as it reported it.
    pub fn relay_capability(&self, id: u64) -> RelayCapability {
        self.capabilities.get(&id).copied().unwrap_or_default()
    }

    /// Records what node `id` reported of its relay (its port, its mapping); returns the
    /// deltas for the nodes whose relay grants change (it, and the peers it relays for or
    /// stops relaying for). Work in proportion to the nodes that can see it.
    pub fn set_relay_capability(&mut self, id: u64, cap: RelayCapability) -> Vec<(u64, Delta)> {
        if !self.nodes.contains_key(&id) || self.relay_capability(id) == cap {
            return Vec::new();
        }
        match cap == RelayCapability::default() {
            true => self.capabilities.remove(&id),
            false => self.capabilities.insert(id, cap),
        };
        let mut out = Vec::new();
        self.regrant_around(id, &BTreeSet::new(), &mut out);
        out
    }

    /// The relay grants node `id` has under the current policy and capabilities, computed
    /// from scratch over the peers it sees.
    pub fn relay_grants(&self, id: u64) -> RelayGrants {
        let mut g = RelayGrants::default();
        let Some(me) = self.nodes.get(&id) else {
            return g;
        };
        if !self.policy.has_relay() {
            return g;
        }
        let my_cap = self.relay_capability(id);
        for p in self.watchers(&me.node) {
            let peer = &self.nodes[&p].node;
            if self
                .policy
                .relays_for(&me.node, peer, self.relay_capability(p))
            {
                g.relays.insert(p);
            }
            if self.policy.relays_for(peer, &me.node, my_cap) {
                g.clients.insert(p);
            }
        }
        g
    }

    /// Recomputes node `id`'s grants; a delta for it when they changed.
    fn regrant(&mut self, id: u64, out: &mut Vec<(u64, Delta)>) {
        if !self.policy.has_relay() && !self.grants.contains_key(&id) {
            return;
        }
        let now = self.relay_grants(id);
        let was = self.grants.get(&id).cloned().unwrap_or_default();
        if now != was {
            match now.is_empty() {
                true => self.grants.remove(&id),
                false => self.grants.insert(id, now.clone()),
            };
            out.push((id, Delta::Relay(now)));
        }
    }

    /// Node `id` changed (identity, capability) or left: its own grants from scratch, and in
    /// each of its watchers' (`extra` too: those that saw it before) only the entry for it.
    fn regrant_around(&mut self, id: u64, extra: &BTreeSet<u64>, out: &mut Vec<(u64, Delta)>) {
        if !self.policy.has_relay() && self.grants.is_empty() {
            return;
        }
        let me = self.nodes.get(&id).map(|p| p.node.clone());
        let sees_me = me.as_ref().map(|m| self.watchers(m)).unwrap_or_default();
        let mut others: BTreeSet<u64> = extra.clone();
        others.extend(&sees_me);
        others.remove(&id);
        if me.is_some() {
            self.regrant(id, out);
        } else {
            self.grants.remove(&id);
        }
        let my_cap = self.relay_capability(id);
        for w in others {
            let Some(peer) = self.nodes.get(&w).map(|p| p.node.clone()) else {
                continue;
            };
            let cap = self.relay_capability(w);
            let (relays, clients) = match (&me, sees_me.contains(&w)) {
                (Some(me), true) => (
                    self.policy.relays_for(&peer, me, my_cap),
                    self.policy.relays_for(me, &peer, cap),
                ),
                _ => (false, false),
            };
            let mut g = self.grants.get(&w).cloned().unwrap_or_default();
            let before = g.clone();
            let set = |s: &mut BTreeSet<u64>, on: bool| match on {
                true => s.insert(id),
                false => s.remove(&id),
            };
            set(&mut g.relays, relays);
            set(&mut g.clients, clients);
            if g != before {
                match g.is_empty() {
                    true => self.grants.remove(&w),
                    false => self.grants.insert(w, g.clone()),
                };
                out.push((w, Delta::Relay(g)));
            }
        }
    }

    /// The peers node `id` sees and its filter.
    fn view_of(&self, id: u64) -> (BTreeSet<u64>, Vec<FilterRule>) {
        let node = &self.nodes[&id].node;
        (self.watchers(node), self.filter_of(node))
    }

    /// Nodes registered.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is registered.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// One node's record.
    pub fn get(&self, id: u64) -> Option<&PeerInfo> {
        self.nodes.get(&id)
    }

    /// A node's inbound filter, its sources resolved through the indexes.
    pub fn filter_of(&self, node: &NodeInfo) -> Vec<FilterRule> {
        self.policy.filter_with(node, |alias| {
            use crate::policy::Alias;
            match alias {
                Alias::Any | Alias::Net(_) => alias.nets(&[]),
                _ => {
                    let mut ids = BTreeSet::new();
                    self.members(alias, &mut ids);
                    ids.iter()
                        .flat_map(|id| self.nodes[id].node.addresses.iter())
                        .map(|a| ipnet::IpNet::from(*a))
                        .collect()
                }
            }
        })
    }

    /// Nodes whose filters name `node` through a user or tag (their filters change when it
    /// joins, leaves, or changes user or tags).
    fn filters_naming(&self, node: &NodeInfo, out: &mut BTreeSet<u64>) {
        for r in self.policy.rules() {
            if r.src
                .iter()
                .any(|a| a.depends_on_nodes() && a.matches(node))
            {
                for (d, _) in &r.dst {
                    self.members(d, out);
                }
            }
        }
    }

    /// Ids of the nodes that can see `node` (it may talk to them or hear from them),
    /// found through the indexes: the work is proportional to the candidates the policy's
    /// aliases name, not to the tailnet.
    pub fn watchers(&self, node: &NodeInfo) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        self.watchers_into(node, &mut out);
        out.remove(&node.id);
        out
    }

    fn watchers_into(&self, node: &NodeInfo, out: &mut BTreeSet<u64>) {
        for r in self.policy.rules() {
            if r.src.iter().any(|a| a.matches(node)) {
                for (d, _) in &r.dst {
                    self.members(d, out);
                }
            }
            if r.dst.iter().any(|(d, _)| d.matches(node)) {
                for s in &r.src {
                    self.members(s, out);
                }
            }
        }
        // Relay rules pair clients and relays: each must know the other.
        for r in self.policy.relay_rules() {
            if r.src.iter().any(|a| a.matches(node)) {
                for v in &r.via {
                    self.members(v, out);
                }
            }
            if r.via.iter().any(|a| a.matches(node)) {
                for s in &r.src {
                    self.members(s, out);
                }
            }
        }
    }

    fn members(&self, alias: &crate::policy::Alias, out: &mut BTreeSet<u64>) {
        use crate::policy::Alias;
        match alias {
            Alias::Any => out.extend(self.nodes.keys()),
            Alias::Users(users) => {
                for u in users {
                    if let Some(ids) = self.by_user.get(u) {
                        out.extend(ids.iter().filter(|id| self.nodes[id].node.tags.is_empty()));
                    }
                }
            }
            Alias::Tag(t) => out.extend(self.by_tag.get(t).into_iter().flatten()),
            Alias::Net(_) => out.extend(
                self.nodes
                    .values()
                    .filter(|p| alias.matches(&p.node))
                    .map(|p| p.node.id),
            ),
        }
    }

    /// The whole netmap of one node (on connect).
    pub fn netmap(&self, id: u64) -> Option<NetMap> {
        let me = self.nodes.get(&id)?;
        let peers = self
            .watchers(&me.node)
            .into_iter()
            .filter_map(|p| self.nodes.get(&p).cloned())
            .collect();
        Some(NetMap {
            node: me.node.clone(),
            peers,
            filter: self.filter_of(&me.node),
            derp: self.derp.clone(),
            relay: self.relay_grants(id),
        })
    }

    /// Adds or updates a node (registration, new endpoints); returns the deltas to send, by
    /// node id. Only nodes that can see it (and it, for its filter) are touched, and nobody
    /// when nothing changed (nodes re-report unchanged endpoints after every STUN round).
    pub fn upsert(&mut self, peer: PeerInfo) -> Vec<(u64, Delta)> {
        let id = peer.node.id;
        let old = self.nodes.get(&id).cloned();
        if old.as_ref() == Some(&peer) {
            return Vec::new();
        }
        let mut before = BTreeSet::new();
        if let Some(o) = &old {
            before = self.watchers(&o.node);
            self.unindex(&o.node);
        }
        self.index(&peer.node);
        self.nodes.insert(id, peer.clone());
        let after = self.watchers(&peer.node);
        let mut out: Vec<(u64, Delta)> = after
            .iter()
            .map(|w| (*w, Delta::PeerUpsert(peer.clone())))
            .collect();
        out.extend(
            before
                .difference(&after)
                .map(|w| (*w, Delta::PeerRemove { id })),
        );
        // Filters change only when identity changes (a join, new tags), and only for the nodes
        // whose rules name this node by user or tag; `*` and addresses do not depend on it.
        let identity_changed = old.as_ref().is_none_or(|o| o.node != peer.node);
        if identity_changed {
            let mut changed = BTreeSet::from([id]);
            self.filters_naming(&peer.node, &mut changed);
            if let Some(o) = &old {
                self.filters_naming(&o.node, &mut changed);
            }
            for w in changed {
                if let Some(n) = self.nodes.get(&w) {
                    out.push((
                        w,
                        Delta::Filter {
                            rules: self.filter_of(&n.node),
                        },
                    ));
                }
            }
            // Who relays for whom may change with who it is, or whom it sees.
            self.regrant_around(id, &before, &mut out);
        }
        out
    }

    /// Removes a node; returns the deltas for those that could see it.
    pub fn remove(&mut self, id: u64) -> Vec<(u64, Delta)> {
        let Some(old) = self.nodes.remove(&id) else {
            return Vec::new();
        };
        self.unindex(&old.node);
        self.capabilities.remove(&id);
        // Watchers among the remaining nodes (the removed one still matches its aliases).
        let mut w = BTreeSet::new();
        self.watchers_into(&old.node, &mut w);
        w.remove(&id);
        let mut out: Vec<(u64, Delta)> = w.iter().map(|n| (*n, Delta::PeerRemove { id })).collect();
        // Nobody keeps it among their relays or clients.
        self.regrant_around(id, &w, &mut out);
        // Filters that named it by user or tag lose its addresses.
        let mut changed = BTreeSet::new();
        self.filters_naming(&old.node, &mut changed);
        for c in changed {
            if let Some(n) = self.nodes.get(&c) {
                out.push((
                    c,
                    Delta::Filter {
                        rules: self.filter_of(&n.node),
                    },
                ));
            }
        }
        out
    }

    fn index(&mut self, n: &NodeInfo) {
        self.by_user.entry(n.user.clone()).or_default().insert(n.id);
        for t in &n.tags {
            self.by_tag.entry(t.clone()).or_default().insert(n.id);
        }
    }

    fn unindex(&mut self, n: &NodeInfo) {
        if let Some(s) = self.by_user.get_mut(&n.user) {
            s.remove(&n.id);
        }
        for t in &n.tags {
            if let Some(s) = self.by_tag.get_mut(t) {
                s.remove(&n.id);
            }
        }
    }
}

/// Node ids that have an address of their own in 100.64.0.0/10: ids past this would share one,
/// and two nodes with one address could speak for each other, so registration stops there.
pub const MAX_NODE_ID: u64 = (1 << 22) - 2;

/// A node's address in 100.64.0.0/10 (CGNAT shared space, as Tailscale uses), for node ids
/// `0..=MAX_NODE_ID` (larger ones are never registered; they wrap).
pub fn address_v4(index: u32) -> IpAddr {
    let n = 0x6440_0000u32 + 1 + index % ((1 << 22) - 2);
    IpAddr::V4(n.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str =
        r#"{"id":1,"code":"fra","url":"https://derp.fra.example/derp","stun":["192.0.2.1:3478"]}"#;

    #[test]
    fn a_region_without_fixed_addresses_parses_and_serializes_as_before() {
        let r: DerpRegion = serde_json::from_str(OLD).unwrap();
        assert_eq!((r.ipv4, r.ipv6), (None, None));
        assert_eq!(r.url, "https://derp.fra.example/derp");
        // No `ipv4`/`ipv6` keys: an older node's netmap is unchanged.
        assert_eq!(serde_json::to_string(&r).unwrap(), OLD);
    }

    #[test]
    fn a_regions_fixed_addresses_round_trip() {
        let text = r#"{"id":1,"code":"fra","url":"https://derp.fra.example/derp","stun":[],
            "ipv4":"192.0.2.1","ipv6":"2001:db8::1"}"#;
        let r: DerpRegion = serde_json::from_str(text).unwrap();
        assert_eq!(r.ipv4, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(r.ipv6, Some("2001:db8::1".parse().unwrap()));
        let back: DerpRegion = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        // A whole netmap from a server that predates the fields still parses.
        let node = r#"{"id":7,"name":"a","user":"u","tags":[],"addresses":["100.64.0.1"]}"#;
        let map = format!(r#"{{"node":{node},"peers":[],"filter":[],"derp":[{OLD}]}}"#);
        let map: NetMap = serde_json::from_str(&map).unwrap();
        assert_eq!(map.derp[0].ipv6, None);
    }
}
