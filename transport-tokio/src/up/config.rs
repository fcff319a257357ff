//! `burrow up`'s settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::derp_client::DerpUrl;

/// `burrow up`'s settings.
#[derive(Clone)]
pub struct UpConfig {
    /// The coordination server, e.g. http://10.0.0.1:8080.
    pub control: String,
    /// A pre-auth key (needed the first time, or after the server forgot the node).
    pub auth_key: Option<String>,
    /// Where the keys and the node secret live.
    pub state_dir: PathBuf,
    /// TUN interface name.
    pub tun: String,
    /// UDP port of the node's socket (0: any).
    pub listen_port: u16,
    /// The DERP relay (None: the first region of the control server's DERP map).
    pub derp: Option<DerpUrl>,
    /// STUN servers (two or more tell an easy NAT from a hard one).
    pub stun: Vec<SocketAddr>,
    /// Host name to register.
    pub hostname: String,
    /// The local API's Unix socket (`burrow status`, `ping`, `doctor`, `down`).
    pub socket: PathBuf,
    /// Certificates (DER) trusted besides the web PKI, for https:// control and DERP servers.
    pub extra_roots: Vec<Vec<u8>>,
    /// Ask the default gateway to map the node's port (NAT-PMP, PCP, UPnP IGD).
    pub port_mapping: bool,
    /// Relay for other nodes on this UDP port (peer relays; 0: any free port); None: do not.
    pub relay_port: Option<u16>,
    /// Addresses to advertise for the relay besides the ones found (a port forward, a
    /// cloud's public IP).
    pub relay_endpoints: Vec<SocketAddr>,
    /// The relay's forwarding budget per client of a pair, in Mbit/s.
    pub relay_max_mbit: u64,
    /// The TUN's MTU (None: from the outgoing interface, or 1280 without path MTU discovery).
    pub mtu: Option<u16>,
    /// Probe each peer's path MTU and follow it.
    pub path_mtu: bool,
    /// Open the TUN with offloads (`IFF_VNET_HDR`, TSO/USO; plain packets if refused).
    pub offload: bool,
}

impl std::fmt::Debug for UpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpConfig")
            .field("control", &self.control)
            .field("auth_key", &self.auth_key.as_ref().map(|_| "<redacted>"))
            .field("state_dir", &self.state_dir)
            .field("tun", &self.tun)
            .field("listen_port", &self.listen_port)
            .field("derp", &self.derp)
            .field("stun", &self.stun)
            .field("hostname", &self.hostname)
            .field("port_mapping", &self.port_mapping)
            .field("relay_port", &self.relay_port)
            .field("relay_endpoints", &self.relay_endpoints)
            .field("relay_max_mbit", &self.relay_max_mbit)
            .field("mtu", &self.mtu)
            .field("path_mtu", &self.path_mtu)
            .field("offload", &self.offload)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auth_key_stays_out_of_debug() {
        let cfg = UpConfig {
            control: "https://c".into(),
            auth_key: Some("burrowkey-0123456789".into()),
            state_dir: "/tmp/x".into(),
            tun: "burrow0".into(),
            listen_port: 0,
            derp: None,
            stun: vec![],
            hostname: "h".into(),
            socket: "/tmp/x/s".into(),
            extra_roots: vec![],
            port_mapping: true,
            relay_port: None,
            relay_endpoints: vec![],
            relay_max_mbit: 1000,
            mtu: None,
            path_mtu: true,
            offload: true,
        };
        let s = format!("{cfg:?}");
        assert!(
            !s.contains("burrowkey-0123456789") && s.contains("redacted"),
            "{s}"
        );
    }
}
