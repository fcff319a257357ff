//! ACL policies: groups, tags, hosts and rules "src → dst:ports (proto)", default deny;
//! parsed from JSON or HuJSON with errors that give the line, and compiled into each node's
//! packet filter and the set of peers it may talk to or hear from.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hujson;

/// The policy file, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `group:NAME` → members (user names or other groups).
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// `tag:NAME` → who may put the tag on a node (users or groups).
    #[serde(default, rename = "tagOwners")]
    pub tag_owners: BTreeMap<String, Vec<String>>,
    /// Names for addresses and networks.
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
    /// The rules; anything they do not accept is denied.
    #[serde(default)]
    pub acls: Vec<AclRule>,
    /// Peer relays: nodes matching `src` may relay through relay-capable nodes matching
    /// `via` (the two also see each other in their netmaps).
    #[serde(default)]
    pub relay: Vec<RelayRule>,
    /// A node with a relay port that reports a fixed public mapping relays for every node the
    /// ACLs let reach it, without a `relay` rule naming it. Off by default.
    #[serde(default, rename = "autoRelay")]
    pub auto_relay: bool,
}

/// One peer-relay grant: `src` may relay through `via`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayRule {
    /// The clients: selectors as in an ACL's `src` (`*`, `group:…`, `tag:…`, users, hosts,
    /// addresses).
    pub src: Vec<String>,
    /// The relays, among the relay-capable nodes (`burrow up --relay-port N`).
    pub via: Vec<String>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Only "accept".
    pub action: String,
    /// Who may connect: `*`, `group:…`, `tag:…`, a user, a host name, an address or CIDR.
    pub src: Vec<String>,
    /// To what: `ALIAS:PORTS` with PORTS `*`, `22`, `80,443` or `1000-2000`.
    pub dst: Vec<String>,
    /// `tcp`, `udp`, `icmp` or an IP protocol number; all three when absent.
    #[serde(default)]
    pub proto: Option<String>,
}

/// Why a policy is not usable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// Not JSON/HuJSON, or not the shape of a policy.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What serde_json said.
        message: String,
    },
    /// Well-formed, but wrong.
    #[error("line {line}: {message}")]
    Invalid {
        /// 1-based line of the offending value.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A relay rule's `src` or `via` names nobody (an empty list grants nothing, and is
    /// most likely a mistake).
    #[error("line {line}: relay rule {rule}: \"{field}\" is empty; name at least one selector")]
    EmptyRelayList {
        /// 1-based line of the `relay` section.
        line: usize,
        /// 1-based index of the rule in `relay`.
        rule: usize,
        /// `src` or `via`.
        field: &'static str,
    },
    /// A relay rule's selector names nothing the policy defines, or is not a selector.
    #[error("line {line}: relay rule {rule}: {field} {selector:?}: {reason}")]
    UnknownSelector {
        /// 1-based line of the selector.
        line: usize,
        /// 1-based index of the rule in `relay`.
        rule: usize,
        /// `src` or `via`.
        field: &'static str,
        /// The selector as written.
        selector: String,
        /// Why it is refused.
        reason: String,
    },
}

impl PolicyError {
    /// The 1-based line the error is on (0 when unknown).
    pub fn line(&self) -> usize {
        match self {
            PolicyError::Syntax { line, .. }
            | PolicyError::Invalid { line, .. }
            | PolicyError::EmptyRelayList { line, .. }
            | PolicyError::UnknownSelector { line, .. } => *line,
        }
    }
}

/// An IP protocol a rule covers.
pub type Proto = u8;
/// TCP.
pub const TCP: Proto = 6;
/// UDP.
pub const UDP: Proto = 17;
/// ICMP.
pub const ICMP: Proto = 1;
/// ICMPv6.
pub const ICMPV6: Proto = 58;

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

impl PortRange {
    /// Every port.
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: 65535,
    };

    /// Whether `port` is inside.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// A node as the control server knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Stable id.
    pub id: u64,
    /// Host name.
    pub name: String,
    /// Owner (tagged nodes act as their tags, not as their owner).
    pub user: String,
    /// `tag:…` names.
    pub tags: Vec<String>,
    /// Its tailnet addresses (100.64.0.0/10 and the ULA).
    pub addresses: Vec<IpAddr>,
}

/// A compiled rule, as a receiver checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRule {
    /// Sources allowed.
    pub src: Vec<IpNet>,
    /// Destinations and ports allowed.
    pub dst: Vec<(IpNet, PortRange)>,
    /// Protocols allowed.
    pub protos: Vec<Proto>,
}

/// A checked, resolved policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    rules: Vec<ResolvedRule>,
    relay: Vec<ResolvedRelay>,
    auto_relay: bool,
}

/// A relay rule with its selectors resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedRelay {
    pub(crate) src: Vec<Alias>,
    pub(crate) via: Vec<Alias>,
    /// The selectors as written, for `burrow control policy check`.
    written: RelayRule,
}

/// What the control server knows of a node's ability to relay (it reports it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCapability {
    /// The UDP port it relays on (`burrow up --relay-port N`); None: it does not relay.
    pub port: Option<u16>,
    /// Its STUN results show a fixed public mapping (no NAT, or an endpoint-independent one):
    /// with `autoRelay`, enough for every node the ACLs let reach it.
    pub fixed_mapping: bool,
}

impl RelayCapability {
    /// Whether it relays at all.
    pub fn relays(&self) -> bool {
        self.port.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedRule {
    pub(crate) src: Vec<Alias>,
    pub(crate) dst: Vec<(Alias, Vec<PortRange>)>,
    protos: Vec<Proto>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Alias {
    Any,
    Users(BTreeSet<String>),
    Tag(String),
    Net(IpNet),
}

impl Policy {
    /// Parses JSON or HuJSON.
    pub fn parse(src: &str) -> Result<Policy, PolicyError> {
        let json = hujson::to_json(src);
        serde_json::from_str(&json).map_err(|e| PolicyError::Syntax {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })
    }

    /// Parses and checks (`burrow control policy check FILE`).
    pub fn check(src: &str) -> Result<(Policy, CompiledPolicy), PolicyError> {
        let p = Policy::parse(src)?;
        let c = p.compile_with_source(src)?;
        Ok((p, c))
    }

    /// Checks and resolves group members, tags, hosts, ports and protocols.
    pub fn compile(&self) -> Result<CompiledPolicy, PolicyError> {
        self.compile_with_source("")
    }

    fn compile_with_source(&self, src: &str) -> Result<CompiledPolicy, PolicyError> {
        let invalid = |value: &str, message: String| PolicyError::Invalid {
            line: src
                .find(&format!("\"{value}\""))
                .map_or(0, |at| hujson::line_of(src, at)),
            message,
        };
        for name in self.groups.keys() {
            if !name.starts_with("group:") {
                return Err(invalid(
                    name,
                    format!("group {name:?} must be named group:…"),
                ));
            }
        }
        for (tag, owners) in &self.tag_owners {
            if !tag.starts_with("tag:") {
                return Err(invalid(tag, format!("tag {tag:?} must be named tag:…")));
            }
            for o in owners {
                if o.starts_with("group:") && !self.groups.contains_key(o) {
                    return Err(invalid(
                        o,
                        format!("tag owner {o:?} is not a defined group"),
                    ));
                }
            }
        }
        let mut hosts = BTreeMap::new();
        for (name, addr) in &self.hosts {
            let net = parse_net(addr).ok_or_else(|| {
                invalid(
                    addr,
                    format!("host {name:?}: {addr:?} is not an address or CIDR"),
                )
            })?;
            hosts.insert(name.clone(), net);
        }
        let mut rules = Vec::new();
        for rule in &self.acls {
            if rule.action != "accept" {
                return Err(invalid(
                    &rule.action,
                    format!(
                        "action {:?}: only \"accept\" exists (everything else is denied)",
                        rule.action
                    ),
                ));
            }
            let protos = match rule.proto.as_deref() {
                None => vec![TCP, UDP, ICMP, ICMPV6],
                Some("tcp") => vec![TCP],
                Some("udp") => vec![UDP],
                Some("icmp") => vec![ICMP, ICMPV6],
                Some(n) => vec![n.parse::<u8>().map_err(|_| {
                    invalid(
                        n,
                        format!("proto {n:?}: use tcp, udp, icmp or a protocol number"),
                    )
                })?],
            };
            let mut src_aliases = Vec::new();
            for s in &rule.src {
                src_aliases.push(self.alias(s, &hosts).map_err(|m| invalid(s, m))?);
            }
            let mut dst_aliases = Vec::new();
            for d in &rule.dst {
                let (alias, ports) = d
                    .rsplit_once(':')
                    .filter(|(a, _)| !a.is_empty())
                    .ok_or_else(|| {
                        invalid(d, format!("destination {d:?} needs :PORTS (e.g. {d}:*)"))
                    })?;
                let ports = parse_ports(ports).ok_or_else(|| {
                    invalid(
                        d,
                        format!("destination {d:?}: ports {ports:?} are not *, N, N-M or a list"),
                    )
                })?;
                let alias = self.alias(alias, &hosts).map_err(|m| invalid(d, m))?;
                dst_aliases.push((alias, ports));
            }
            rules.push(ResolvedRule {
                src: src_aliases,
                dst: dst_aliases,
                protos,
            });
        }
        let relay = self.compile_relay(src, &hosts)?;
        Ok(CompiledPolicy {
            rules,
            relay,
            auto_relay: self.auto_relay,
        })
    }

    /// Resolves the `relay` section: every list non-empty, every selector defined.
    fn compile_relay(
        &self,
        src: &str,
        hosts: &BTreeMap<String, IpNet>,
    ) -> Result<Vec<ResolvedRelay>, PolicyError> {
        let line_of = |needle: &str| src.find(needle).map_or(0, |at| hujson::line_of(src, at));
        let mut out = Vec::new();
        for (i, rule) in self.relay.iter().enumerate() {
            let rule_no = i + 1;
            let resolve = |field: &'static str, list: &[String]| {
                if list.is_empty() {
                    return Err(PolicyError::EmptyRelayList {
                        line: line_of("\"relay\""),
                        rule: rule_no,
                        field,
                    });
                }
                list.iter()
                    .map(|s| {
                        self.alias(s, hosts)
                            .map_err(|reason| PolicyError::UnknownSelector {
                                line: line_of(&format!("\"{s}\"")),
                                rule: rule_no,
                                field,
                                selector: s.clone(),
                                reason,
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            let src_aliases = resolve("src", &rule.src)?;
            let via = resolve("via", &rule.via)?;
            out.push(ResolvedRelay {
                src: src_aliases,
                via,
                written: rule.clone(),
            });
        }
        Ok(out)
    }

    fn alias(&self, s: &str, hosts: &BTreeMap<String, IpNet>) -> Result<Alias, String> {
        if s == "*" {
            return Ok(Alias::Any);
        }
        if s.starts_with("group:") {
            return self.expand_group(s).map(Alias::Users);
        }
        if s.starts_with("tag:") {
            if !self.tag_owners.contains_key(s) {
                return Err(format!("tag {s:?} has no entry in tagOwners"));
            }
            return Ok(Alias::Tag(s.to_string()));
        }
        if let Some(net) = hosts.get(s) {
            return Ok(Alias::Net(*net));
        }
        if let Some(net) = parse_net(s) {
            return Ok(Alias::Net(net));
        }
        if s.contains(':') || s.is_empty() {
            return Err(format!(
                "{s:?} is not *, group:…, tag:…, a user, a host or an address"
            ));
        }
        Ok(Alias::Users([s.to_string()].into()))
    }

    /// The users of group `g` and of the groups inside it. Depth-first with its own stack (a
    /// long chain of groups cannot overflow the thread's), and each group is expanded once
    /// (groups naming one another many times would otherwise cost exponential time).
    fn expand_group(&self, g: &str) -> Result<BTreeSet<String>, String> {
        let members_of = |g: &str| {
            self.groups
                .get(g)
                .map(|m| m.iter())
                .ok_or_else(|| format!("group {g:?} is not defined"))
        };
        let mut users = BTreeSet::new();
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut on_stack: BTreeSet<&str> = BTreeSet::from([g]);
        let mut stack = vec![(g, members_of(g)?)];
        while let Some((group, members)) = stack.last_mut() {
            let group: &str = group;
            match members.next() {
                None => {
                    on_stack.remove(group);
                    done.insert(group);
                    stack.pop();
                }
                Some(m) if m.starts_with("group:") => {
                    if on_stack.contains(m.as_str()) {
                        return Err(format!("group {m:?} contains itself"));
                    }
                    if !done.contains(m.as_str()) {
                        on_stack.insert(m);
                        stack.push((m, members_of(m)?));
                    }
                }
                Some(m) => {
                    users.insert(m.clone());
                }
            }
        }
        Ok(users)
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

fn parse_ports(s: &str) -> Option<Vec<PortRange>> {
    if s == "*" {
        return Some(vec![PortRange::ALL]);
    }
    s.split(',')
        .map(|p| {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            let (first, last) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (first <= last).then_some(PortRange { first, last })
        })
        .collect()
}

impl Alias {
    pub(crate) fn matches(&self, node: &NodeInfo) -> bool {
        match self {
            Alias::Any => true,
            // Tagged nodes act as their tags, not as their owner.
            Alias::Users(u) => node.tags.is_empty() && u.contains(&node.user),
            Alias::Tag(t) => node.tags.iter().any(|x| x == t),
            Alias::Net(n) => node.addresses.iter().any(|a| n.contains(a)),
        }
    }

    /// Whether membership can change with the nodes (users and tags; not `*` or addresses).
    pub(crate) fn depends_on_nodes(&self) -> bool {
        matches!(self, Alias::Users(_) | Alias::Tag(_))
    }

    pub(crate) fn nets(&self, nodes: &[NodeInfo]) -> Vec<IpNet> {
        match self {
            Alias::Any => vec![
                "0.0.0.0/0".parse().expect("net"),
                "::/0".parse().expect("net"),
            ],
            Alias::Net(n) => vec![*n],
            _ => nodes
                .iter()
                .filter(|n| self.matches(n))
                .flat_map(|n| n.addresses.iter().map(|a| IpNet::from(*a)))
                .collect(),
        }
    }
}

impl CompiledPolicy {
    pub(crate) fn rules(&self) -> &[ResolvedRule] {
        &self.rules
    }

    /// Rules in the policy.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy accepts nothing at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules `node` enforces on what it receives: those whose destination includes it,
    /// narrowed to its own addresses.
    pub fn filter_for(&self, node: &NodeInfo, nodes: &[NodeInfo]) -> Vec<FilterRule> {
        self.filter_with(node, |a| a.nets(nodes))
    }

    /// [`CompiledPolicy::filter_for`] with the sources' networks from `nets_of` (the tailnet
    /// resolves them through its indexes).
    pub(crate) fn filter_with(
        &self,
        node: &NodeInfo,
        nets_of: impl Fn(&Alias) -> Vec<IpNet>,
    ) -> Vec<FilterRule> {
        let mut out = Vec::new();
        for r in &self.rules {
            let dst: Vec<(IpNet, PortRange)> = r
                .dst
                .iter()
                .filter(|(alias, _)| alias.matches(node))
                .flat_map(|(_, ports)| {
                    node.addresses
                        .iter()
                        .flat_map(move |a| ports.iter().map(move |p| (IpNet::from(*a), *p)))
                })
                .collect();
            if dst.is_empty() {
                continue;
            }
            let mut src: Vec<IpNet> = r.src.iter().flat_map(&nets_of).collect();
            src.sort();
            src.dedup();
            if src.is_empty() {
                continue;
            }
            out.push(FilterRule {
                src,
                dst,
                protos: r.protos.clone(),
            });
        }
        out
    }

    /// Whether `a` may open connections to `b` on some port (so each must know the other).
    pub fn may_talk(&self, a: &NodeInfo, b: &NodeInfo) -> bool {
        self.rules
            .iter()
            .any(|r| r.src.iter().any(|s| s.matches(a)) && r.dst.iter().any(|(d, _)| d.matches(b)))
    }

    /// The peers `node` is told about: those it may talk to or hear from, and those a relay
    /// rule pairs it with (as client or relay).
    pub fn visible_peers<'a>(&self, node: &NodeInfo, nodes: &'a [NodeInfo]) -> Vec<&'a NodeInfo> {
        nodes
            .iter()
            .filter(|p| p.id != node.id)
            .filter(|p| {
                self.may_talk(node, p)
                    || self.may_talk(p, node)
                    || self.relay_paired(node, p)
                    || self.relay_paired(p, node)
            })
            .collect()
    }

    pub(crate) fn relay_rules(&self) -> &[ResolvedRelay] {
        &self.relay
    }

    /// Whether the policy grants any relaying at all (rules, or `autoRelay`).
    pub fn has_relay(&self) -> bool {
        !self.relay.is_empty() || self.auto_relay
    }

    /// Whether `autoRelay` is on.
    pub fn auto_relay(&self) -> bool {
        self.auto_relay
    }

    /// Whether a relay rule lets `client` relay through `relay` (capability aside).
    pub fn relay_paired(&self, client: &NodeInfo, relay: &NodeInfo) -> bool {
        self.relay.iter().any(|r| {
            r.src.iter().any(|a| a.matches(client)) && r.via.iter().any(|a| a.matches(relay))
        })
    }

    /// Whether `relay` relays for `client`: it runs a relay (`cap`), and a relay rule pairs
    /// them, or `autoRelay` is on, its mapping is fixed and the ACLs let `client` reach it.
    pub fn relays_for(&self, client: &NodeInfo, relay: &NodeInfo, cap: RelayCapability) -> bool {
        client.id != relay.id
            && cap.relays()
            && (self.relay_paired(client, relay)
                || (self.auto_relay && cap.fixed_mapping && self.may_talk(client, relay)))
    }

    /// The relay grants in words, one per rule: "src A, B may relay through via C" with the
    /// users that groups stand for (`burrow control policy check`).
    pub fn describe_relay(&self) -> Vec<String> {
        let side = |written: &[String], aliases: &[Alias]| {
            written
                .iter()
                .zip(aliases)
                .map(|(w, a)| match a {
                    Alias::Users(u) if w.starts_with("group:") => {
                        format!("{w} ({})", u.iter().cloned().collect::<Vec<_>>().join(", "))
                    }
                    _ => w.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.relay
            .iter()
            .map(|r| {
                format!(
                    "{} may relay through {} (when they run a relay: burrow up --relay-port)",
                    side(&r.written.src, &r.src),
                    side(&r.written.via, &r.via)
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy whose only rule's source is `group:g0`, with `groups`.
    fn with_groups(groups: BTreeMap<String, Vec<String>>) -> Policy {
        Policy {
            groups,
            acls: vec![AclRule {
                action: "accept".into(),
                src: vec!["group:g0".into()],
                dst: vec!["*:*".into()],
                proto: None,
            }],
            ..Policy::default()
        }
    }

    #[test]
    fn groups_naming_each_other_twice_expand_once() {
        // g0 names g1 twice, g1 names g2 twice, …: 2^64 paths to alice, one group each.
        let mut groups: BTreeMap<String, Vec<String>> = (0..64)
            .map(|i| (format!("group:g{i}"), vec![format!("group:g{}", i + 1); 2]))
            .collect();
        groups.insert("group:g64".into(), vec!["alice".into(), "group:g63".into()]);
        let p = with_groups(groups.clone());
        assert!(
            p.compile()
                .unwrap_err()
                .to_string()
                .contains("contains itself"),
            "the cycle g63 → g64 → g63 is still found"
        );
        groups.insert("group:g64".into(), vec!["alice".into()]);
        let c = with_groups(groups).compile().unwrap();
        assert_eq!(
            c.rules()[0].src,
            vec![Alias::Users(BTreeSet::from(["alice".to_string()]))]
        );
    }

    #[test]
    fn a_long_chain_of_groups_does_not_overflow_the_stack() {
        let n = 100_000;
        let mut groups: BTreeMap<String, Vec<String>> = (0..n)
            .map(|i| {
                (
                    format!("group:g{i}"),
                    vec![format!("group:g{}", i + 1), format!("u{i}")],
                )
            })
            .collect();
        groups.insert(format!("group:g{n}"), vec!["bob".into()]);
        let c = with_groups(groups).compile().unwrap();
        let Alias::Users(users) = &c.rules()[0].src[0] else {
            panic!("a group is users");
        };
        assert_eq!(users.len(), n + 1);
        assert!(users.contains("bob") && users.contains("u0"));
    }
}
