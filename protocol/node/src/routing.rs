//! Cryptokey routing: which peer owns which address. Each peer's allowed prefixes (its tailnet
//! addresses and any routes the control plane grants) are indexed; an address belongs to the
//! peer with the longest prefix holding it, and only that peer may send from it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use burrow_wg::PublicKey;
use ipnet::IpNet;

/// The allowed prefixes of every peer.
#[derive(Debug, Default)]
pub struct AllowedIps {
    owners: BTreeMap<IpNet, PublicKey>,
    /// Prefix lengths in use per family (is IPv6, length) and how many prefixes have each, so
    /// a lookup tries only lengths that exist, longest first.
    lengths: BTreeMap<(bool, u8), usize>,
}

impl AllowedIps {
    /// Prefixes held.
    pub(crate) fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether another peer than `peer` already has one of `nets` (the same prefix).
    pub fn taken_by_other(&self, peer: &PublicKey, nets: &[IpNet]) -> bool {
        nets.iter()
            .any(|n| self.owners.get(&n.trunc()).is_some_and(|o| o != peer))
    }

    /// Gives `peer` exactly `nets` (its previous prefixes are dropped).
    pub fn set(&mut self, peer: PublicKey, nets: &[IpNet]) {
        self.remove(&peer);
        for n in nets {
            if self.owners.insert(n.trunc(), peer).is_none() {
                *self.lengths.entry(family_len(n)).or_insert(0) += 1;
            }
        }
    }

    /// Forgets `peer`'s prefixes.
    pub fn remove(&mut self, peer: &PublicKey) {
        let gone: Vec<IpNet> = self
            .owners
            .iter()
            .filter(|(_, o)| *o == peer)
            .map(|(n, _)| *n)
            .collect();
        for n in gone {
            self.owners.remove(&n);
            let key = family_len(&n);
            if let Some(count) = self.lengths.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.lengths.remove(&key);
                }
            }
        }
    }

    /// The peer owning `ip`: the one with the longest prefix holding it.
    pub fn owner_of(&self, ip: IpAddr) -> Option<PublicKey> {
        let v6 = ip.is_ipv6();
        self.lengths
            .keys()
            .rev()
            .filter(|(family, _)| *family == v6)
            .find_map(|&(_, len)| {
                let net = IpNet::new(ip, len).ok()?.trunc();
                self.owners.get(&net).copied()
            })
    }
}

fn family_len(n: &IpNet) -> (bool, u8) {
    (n.addr().is_ipv6(), n.prefix_len())
}

/// A decrypted packet's source address (keep-alives, which are empty, never get here).
pub(crate) fn inner_source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet
            .get(12..16)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(IpAddr::from),
        Some(6) => packet
            .get(8..24)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(IpAddr::from),
        _ => None,
    }
}
