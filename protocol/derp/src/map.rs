//! The DERP map: regions of relays and their STUN ports, in Tailscale's JSON form
//! (`tailcfg.DERPMap`), so netcheck and clients share one description of the relays.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Regions by ID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerpMap {
    /// Regions keyed by their ID (as a string, as in Tailscale's JSON).
    #[serde(rename = "Regions")]
    pub regions: BTreeMap<String, DerpRegion>,
}

/// One region: relays in one place, meshed together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerpRegion {
    /// Numeric ID.
    #[serde(rename = "RegionID")]
    pub id: u32,
    /// Short code, e.g. "fra".
    #[serde(rename = "RegionCode")]
    pub code: String,
    /// Long name.
    #[serde(rename = "RegionName", default)]
    pub name: String,
    /// The relays.
    #[serde(rename = "Nodes", default)]
    pub nodes: Vec<DerpNode>,
}

/// One relay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerpNode {
    /// Node name, e.g. "1a".
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Host name (for TLS and DNS).
    #[serde(rename = "HostName")]
    pub host_name: String,
    /// IPv4 address, if fixed.
    #[serde(rename = "IPv4", default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address, if fixed.
    #[serde(rename = "IPv6", default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// STUN port: 0 means 3478, negative means no STUN.
    #[serde(rename = "STUNPort", default)]
    pub stun_port: i32,
    /// Only STUN, no DERP.
    #[serde(rename = "STUNOnly", default)]
    pub stun_only: bool,
    /// DERP (HTTPS) port: 0 means 443.
    #[serde(rename = "DERPPort", default)]
    pub derp_port: u16,
    /// Plain HTTP instead of HTTPS (tests only).
    #[serde(rename = "InsecureForTests", default)]
    pub insecure_for_tests: bool,
}

impl DerpNode {
    /// The STUN port, if the node serves STUN.
    pub fn stun_port(&self) -> Option<u16> {
        match self.stun_port {
            0 => Some(3478),
            p if p > 0 && p <= u16::MAX as i32 => Some(p as u16),
            _ => None,
        }
    }

    /// The DERP (HTTPS) port: 0 in the map means 443.
    pub fn derp_port(&self) -> u16 {
        if self.derp_port == 0 {
            443
        } else {
            self.derp_port
        }
    }

    /// The relay's fixed addresses with its DERP port, IPv6 first (RFC 8305's order for
    /// Happy Eyeballs); empty when the map gives none and the host name must be resolved.
    pub fn dial_addrs(&self) -> Vec<SocketAddr> {
        let port = self.derp_port();
        let v6 = self.ipv6.map(|ip| SocketAddr::new(IpAddr::V6(ip), port));
        let v4 = self.ipv4.map(|ip| SocketAddr::new(IpAddr::V4(ip), port));
        v6.into_iter().chain(v4).collect()
    }

    /// The relay's URL (`https://host:port/derp`, or `http://` for tests).
    pub fn derp_url(&self) -> String {
        let port = self.derp_port();
        format!(
            "{}://{}:{port}/derp",
            if self.insecure_for_tests {
                "http"
            } else {
                "https"
            },
            self.host_name
        )
    }
}

impl DerpMap {
    /// Parses Tailscale-style JSON.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Regions in ID order.
    pub fn regions(&self) -> impl Iterator<Item = &DerpRegion> {
        let mut v: Vec<&DerpRegion> = self.regions.values().collect();
        v.sort_by_key(|r| r.id);
        v.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tailscale_style_json() {
        let m = DerpMap::from_json(
            r#"{"Regions":{"900":{"RegionID":900,"RegionCode":"home","RegionName":"Home","Nodes":[
                {"Name":"900a","RegionID":900,"HostName":"derp.example.net","IPv4":"192.0.2.10","STUNPort":0,"DERPPort":0},
                {"Name":"900b","HostName":"127.0.0.1","STUNPort":-1,"DERPPort":8443,"InsecureForTests":true}]}},
                "OmitDefaultRegions":true}"#,
        )
        .unwrap();
        let r = m.regions().next().unwrap();
        assert_eq!((r.id, r.code.as_str()), (900, "home"));
        assert_eq!(r.nodes[0].stun_port(), Some(3478));
        assert_eq!(r.nodes[0].derp_url(), "https://derp.example.net:443/derp");
        assert_eq!(r.nodes[1].stun_port(), None);
        assert_eq!(r.nodes[1].derp_url(), "http://127.0.0.1:8443/derp");
    }

    #[test]
    fn a_node_carries_both_families_through_json() {
        let text = r#"{"Regions":{"1":{"RegionID":1,"RegionCode":"fra","Nodes":[
            {"Name":"1a","HostName":"derp.example.net","IPv4":"192.0.2.10",
             "IPv6":"2001:db8::10","DERPPort":8443}]}}}"#;
        let m = DerpMap::from_json(text).unwrap();
        let node = &m.regions["1"].nodes[0];
        assert_eq!(node.ipv4, Some(Ipv4Addr::new(192, 0, 2, 10)));
        assert_eq!(node.ipv6, Some("2001:db8::10".parse().unwrap()));
        let dial: Vec<String> = node.dial_addrs().iter().map(|a| a.to_string()).collect();
        assert_eq!(dial, ["[2001:db8::10]:8443", "192.0.2.10:8443"]);
        let json = serde_json::to_string(&m).unwrap();
        assert!(
            json.contains(r#""IPv4":"192.0.2.10""#) && json.contains(r#""IPv6":"2001:db8::10""#),
            "{json}"
        );
        assert_eq!(DerpMap::from_json(&json).unwrap(), m);
        let only_v6 = DerpNode {
            host_name: "derp6.example.net".into(),
            ipv6: Some("2001:db8::6".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            only_v6.dial_addrs(),
            vec!["[2001:db8::6]:443".parse::<SocketAddr>().unwrap()]
        );
        assert!(!serde_json::to_string(&only_v6).unwrap().contains("IPv4"));
    }
}
