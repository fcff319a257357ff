//! The peers a node holds, as the netmap gave them, and which of them owns which tailnet
//! address (cryptokey routing: the same rule the engine applies to what peers send).

use std::collections::BTreeMap;
use std::net::IpAddr;

use burrow_control::PeerInfo;
use burrow_node::{AllowedIps, PeerConfig};
use burrow_wg::PublicKey;

/// A netmap peer as the node engine takes it (None if its keys do not parse).
pub fn peer_config(p: &PeerInfo) -> Option<PeerConfig> {
    Some(PeerConfig {
        node_key: PublicKey::from_base64(&p.node_key).ok()?,
        disco_key: PublicKey::from_base64(&p.disco_key).ok()?,
        home_region: p.home_region,
        endpoints: p.endpoints.clone(),
        allowed_ips: p.node.addresses.iter().map(|a| (*a).into()).collect(),
    })
}

/// What applying a netmap peer changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing: the peer is held exactly so already.
    Same,
    /// The peer is new, or changed (keys, endpoints, addresses).
    Upsert {
        /// The peer's previous node key when it changed keys (the engine must forget it).
        replaced: Option<PublicKey>,
        config: PeerConfig,
    },
    /// Refused: its keys do not parse, or another peer already owns one of its addresses.
    Refused(&'static str),
}

/// Peers by node id, with the route table they imply.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    by_id: BTreeMap<u64, (PeerInfo, PublicKey)>,
    /// Node key → node id, for the packet paths and the one-key-one-peer rule.
    by_key: BTreeMap<PublicKey, u64>,
    routes: AllowedIps,
}

impl Peers {
    /// Takes `p` (a new peer, or a new version of one).
    pub(crate) fn upsert(&mut self, p: &PeerInfo) -> Change {
        if self
            .by_id
            .get(&p.node.id)
            .is_some_and(|(held, _)| held == p)
        {
            return Change::Same;
        }
        let Some(config) = peer_config(p) else {
            return Change::Refused("its keys do not parse");
        };
        let replaced = self
            .by_id
            .get(&p.node.id)
            .map(|(_, key)| *key)
            .filter(|old| *old != config.node_key);
        // One node key is one peer: another node id with the same key is refused too.
        let key_taken = self
            .by_key
            .get(&config.node_key)
            .is_some_and(|id| *id != p.node.id);
        if key_taken {
            return Change::Refused("another peer has its node key");
        }
        if let Some(old) = replaced {
            self.routes.remove(&old);
            self.by_key.remove(&old);
        }
        if self
            .routes
            .taken_by_other(&config.node_key, &config.allowed_ips)
        {
            if let Some(old) = replaced {
                // Put the old key's routes back: nothing changed after all.
                let nets = self.by_id[&p.node.id].0.node.addresses.clone();
                let nets: Vec<_> = nets.into_iter().map(Into::into).collect();
                self.routes.set(old, &nets);
            }
            return Change::Refused("another peer owns one of its addresses");
        }
        self.routes.set(config.node_key, &config.allowed_ips);
        self.by_key.insert(config.node_key, p.node.id);
        self.by_id.insert(p.node.id, (p.clone(), config.node_key));
        Change::Upsert { replaced, config }
    }

    /// Forgets the peer with this node id; its key if it was held.
    pub(crate) fn remove(&mut self, id: u64) -> Option<(PeerInfo, PublicKey)> {
        let (info, key) = self.by_id.remove(&id)?;
        self.routes.remove(&key);
        self.by_key.remove(&key);
        Some((info, key))
    }

    /// Node ids held that are not in `keep`.
    pub(crate) fn absent_from(&self, keep: &[PeerInfo]) -> Vec<u64> {
        let keep: std::collections::BTreeSet<u64> = keep.iter().map(|p| p.node.id).collect();
        self.by_id
            .keys()
            .copied()
            .filter(|id| !keep.contains(id))
            .collect()
    }

    /// Whether `key` is a peer held now.
    pub(crate) fn holds(&self, key: &PublicKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// The peer owning `ip`.
    pub(crate) fn route(&self, ip: IpAddr) -> Option<PublicKey> {
        self.routes.owner_of(ip)
    }

    /// The peers held.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&PeerInfo, &PublicKey)> {
        self.by_id.values().map(|(p, k)| (p, k))
    }

    /// How many peers are held.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}
