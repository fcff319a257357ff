//! The DERP map `burrow control serve` hands out, from a Tailscale-style DERP map file
//! (`--derp-map`): each region's relay URL, the relay's fixed IPv4 and IPv6 addresses, and its
//! STUN servers, IPv6 and IPv4.

use burrow_derp::DerpMap;

/// Why a DERP map file cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum DerpMapError {
    /// A region's ID does not fit burrow's netmap (16 bits).
    #[error("region {0}: IDs above 65535 are not supported")]
    RegionId(u32),
    /// A STUN host name did not resolve.
    #[error(transparent)]
    Resolve(#[from] crate::netcheck::NetcheckError),
    /// No region has a DERP relay.
    #[error("no region has a DERP relay (every node is STUNOnly)")]
    NoRelay,
}

/// The netmap's regions for `map`, in ID order: each region's first relay that is not
/// STUN-only (its URL and fixed addresses; a client races those, or without them resolves
/// the host name and races both families), and every
/// STUN server of the region at its fixed IPv6 and IPv4 addresses (a node without fixed
/// addresses: its host name's, resolved now). Regions without a relay are left out.
pub async fn regions(map: &DerpMap) -> Result<Vec<burrow_control::DerpRegion>, DerpMapError> {
    let stun = crate::netcheck::resolve_derp_map(map).await?;
    let mut out = Vec::new();
    for r in map.regions() {
        let id = u16::try_from(r.id).map_err(|_| DerpMapError::RegionId(r.id))?;
        let Some(relay) = r.nodes.iter().find(|n| !n.stun_only) else {
            tracing::warn!(region = r.id, "no DERP relay in this region; left out");
            continue;
        };
        let mut servers: Vec<_> = stun
            .iter()
            .filter(|s| s.id == r.id)
            .flat_map(|s| s.servers.iter().copied())
            .collect();
        // IPv6 first, as clients try them.
        servers.sort_by_key(|a| a.is_ipv4());
        out.push(burrow_control::DerpRegion {
            id,
            code: r.code.clone(),
            url: relay.derp_url(),
            stun: servers,
            ipv4: relay.ipv4,
            ipv6: relay.ipv6,
        });
    }
    if out.is_empty() {
        return Err(DerpMapError::NoRelay);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[tokio::test]
    async fn regions_carry_each_relays_url_and_both_families_of_stun() {
        let map = DerpMap::from_json(
            r#"{"Regions":{
              "2":{"RegionID":2,"RegionCode":"nyc","Nodes":[
                {"Name":"2s","HostName":"stun.nyc.example","STUNOnly":true,"IPv6":"2001:db8:2::1"},
                {"Name":"2a","HostName":"derp.nyc.example","IPv4":"198.51.100.2","STUNPort":-1}]},
              "1":{"RegionID":1,"RegionCode":"fra","Nodes":[
                {"Name":"1a","HostName":"derp.fra.example","IPv4":"192.0.2.1",
                 "IPv6":"2001:db8:1::1","STUNPort":3479,"DERPPort":8443}]},
              "3":{"RegionID":3,"RegionCode":"stun-only","Nodes":[
                {"Name":"3s","HostName":"s","STUNOnly":true,"IPv4":"203.0.113.3"}]}}}"#,
        )
        .unwrap();
        let got = regions(&map).await.unwrap();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            got,
            vec![
                burrow_control::DerpRegion {
                    id: 1,
                    code: "fra".into(),
                    url: "https://derp.fra.example:8443/derp".into(),
                    stun: vec![a("[2001:db8:1::1]:3479"), a("192.0.2.1:3479")],
                    ipv4: Some("192.0.2.1".parse().unwrap()),
                    ipv6: Some("2001:db8:1::1".parse().unwrap()),
                },
                burrow_control::DerpRegion {
                    id: 2,
                    code: "nyc".into(),
                    url: "https://derp.nyc.example:443/derp".into(),
                    stun: vec![a("[2001:db8:2::1]:3478")],
                    ipv4: Some("198.51.100.2".parse().unwrap()),
                    ipv6: None,
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_region_id_beyond_16_bits_is_refused() {
        let map = DerpMap::from_json(
            r#"{"Regions":{"70000":{"RegionID":70000,"RegionCode":"x","Nodes":[
                {"HostName":"d","IPv4":"192.0.2.1"}]}}}"#,
        )
        .unwrap();
        assert!(matches!(
            regions(&map).await,
            Err(DerpMapError::RegionId(70000))
        ));
    }
}
