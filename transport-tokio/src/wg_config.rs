//! wg-quick's configuration format: `[Interface]` and `[Peer]` sections of `Key = Value` lines.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use burrow_wg::{PresharedKey, PrivateKey, PublicKey};
use thiserror::Error;

/// An IP prefix such as `10.0.0.0/24` (used for Address and AllowedIPs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// The address as written.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl IpNet {
    /// Whether `ip` falls inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix as u32)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix as u32)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a bad prefix length"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The `[Interface]` section.
#[derive(Debug, Clone)]
pub struct InterfaceConfig {
    /// Our private key.
    pub private_key: PrivateKey,
    /// UDP port to listen on (0 = any).
    pub listen_port: u16,
    /// Addresses for the TUN device.
    pub addresses: Vec<IpNet>,
    /// MTU of the TUN device.
    pub mtu: u16,
}

/// One `[Peer]` section.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Optional pre-shared key.
    pub preshared_key: Option<PresharedKey>,
    /// Where to send until the peer is heard from (`host:port`, resolved by the driver).
    pub endpoint: Option<String>,
    /// Inner addresses routed to, and accepted from, this peer.
    pub allowed_ips: Vec<IpNet>,
    /// Keep-alive interval.
    pub persistent_keepalive: Option<Duration>,
}

/// A whole configuration file.
#[derive(Debug, Clone)]
pub struct WgConfig {
    /// `[Interface]`.
    pub interface: InterfaceConfig,
    /// `[Peer]`s.
    pub peers: Vec<PeerConfig>,
}

/// Why a configuration file was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {message}")]
pub struct ConfigError {
    /// 1-based line number (0 for whole-file problems).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> ConfigError {
    ConfigError {
        line,
        message: message.into(),
    }
}

fn list<T: FromStr<Err = String>>(line: usize, v: &str) -> Result<Vec<T>, ConfigError> {
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.parse().map_err(|e| err(line, e)))
        .collect()
}

impl FromStr for WgConfig {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        enum Section {
            None,
            Interface,
            Peer,
        }
        let mut section = Section::None;
        let (mut private_key, mut listen_port, mut addresses, mut mtu) =
            (None, 0u16, Vec::new(), 1420u16);
        let mut peers: Vec<(usize, PeerDraft)> = Vec::new();
        let mut seen_interface = false;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if line.eq_ignore_ascii_case("[Interface]") {
                if seen_interface {
                    return Err(err(n, "a second [Interface] section"));
                }
                seen_interface = true;
                section = Section::Interface;
                continue;
            }
            if line.eq_ignore_ascii_case("[Peer]") {
                section = Section::Peer;
                peers.push((n, PeerDraft::default()));
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| err(n, format!("expected Key = Value, got {line:?}")))?;
            let (key, value) = (key.trim(), value.trim());
            match section {
                Section::None => {
                    return Err(err(n, "a setting before any [Interface] or [Peer] section"))
                }
                Section::Interface => match key.to_ascii_lowercase().as_str() {
                    "privatekey" => {
                        private_key = Some(
                            PrivateKey::from_base64(value).map_err(|e| err(n, e.to_string()))?,
                        )
                    }
                    "listenport" => {
                        listen_port = value
                            .parse()
                            .map_err(|_| err(n, format!("ListenPort {value:?} is not a port")))?
                    }
                    "address" => addresses.extend(list::<IpNet>(n, value)?),
                    "mtu" => {
                        mtu = value
                            .parse()
                            .ok()
                            .filter(|m| (576..=65535).contains(m))
                            .ok_or_else(|| err(n, "MTU must be 576..=65535"))?
                    }
                    // wg-quick's other settings concern the host, not the tunnel.
                    "dns" | "table" | "preup" | "postup" | "predown" | "postdown"
                    | "saveconfig" | "fwmark" => {}
                    other => return Err(err(n, format!("unknown [Interface] setting {other:?}"))),
                },
                Section::Peer => {
                    let p = &mut peers.last_mut().expect("in a peer section").1;
                    match key.to_ascii_lowercase().as_str() {
                        "publickey" => {
                            p.public_key = Some(
                                PublicKey::from_base64(value).map_err(|e| err(n, e.to_string()))?,
                            )
                        }
                        "presharedkey" => {
                            p.preshared_key = Some(
                                PresharedKey::from_base64(value)
                                    .map_err(|e| err(n, e.to_string()))?,
                            )
                        }
                        "endpoint" => {
                            if value
                                .rsplit_once(':')
                                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
                            {
                                return Err(err(n, format!("Endpoint {value:?} is not host:port")));
                            }
                            p.endpoint = Some(value.to_owned());
                        }
                        "allowedips" => p.allowed_ips.extend(list::<IpNet>(n, value)?),
                        "persistentkeepalive" => {
                            let secs: u16 = if value.eq_ignore_ascii_case("off") {
                                0
                            } else {
                                value.parse().map_err(|_| {
                                    err(n, "PersistentKeepalive must be seconds or off")
                                })?
                            };
                            p.persistent_keepalive =
                                (secs > 0).then(|| Duration::from_secs(secs as u64));
                        }
                        other => return Err(err(n, format!("unknown [Peer] setting {other:?}"))),
                    }
                }
            }
        }
        let private_key = private_key.ok_or_else(|| err(0, "[Interface] needs a PrivateKey"))?;
        let peers = peers
            .into_iter()
            .map(|(n, d)| {
                Ok(PeerConfig {
                    public_key: d
                        .public_key
                        .ok_or_else(|| err(n, "[Peer] needs a PublicKey"))?,
                    preshared_key: d.preshared_key,
                    endpoint: d.endpoint,
                    allowed_ips: d.allowed_ips,
                    persistent_keepalive: d.persistent_keepalive,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(WgConfig {
            interface: InterfaceConfig {
                private_key,
                listen_port,
                addresses,
                mtu,
            },
            peers,
        })
    }
}

#[derive(Default)]
struct PeerDraft {
    public_key: Option<PublicKey>,
    preshared_key: Option<PresharedKey>,
    endpoint: Option<String>,
    allowed_ips: Vec<IpNet>,
    persistent_keepalive: Option<Duration>,
}

/// The peer whose AllowedIPs hold `ip` by longest prefix (crypto-key routing).
pub fn route<T>(table: &[(IpNet, T)], ip: IpAddr) -> Option<&T> {
    table
        .iter()
        .filter(|(net, _)| net.contains(ip))
        .max_by_key(|(net, _)| net.prefix)
        .map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const KEY_B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn parses_a_wg_quick_file() {
        let text = format!(
            "# comment\n[Interface]\nPrivateKey = {KEY_A}\nListenPort = 51820\nAddress = 10.200.0.1/24, fd00::1/64\nDNS = 1.1.1.1\n\n\
             [Peer]\nPublicKey = {KEY_B}\nPresharedKey = {KEY_B}\nEndpoint = 10.99.0.2:51820\nAllowedIPs = 10.200.0.2/32, 192.168.5.0/24\nPersistentKeepalive = 25\n"
        );
        let c: WgConfig = text.parse().unwrap();
        assert_eq!(c.interface.listen_port, 51820);
        assert_eq!(c.interface.addresses.len(), 2);
        assert_eq!(c.peers.len(), 1);
        let p = &c.peers[0];
        assert_eq!(p.endpoint.as_deref(), Some("10.99.0.2:51820"));
        assert_eq!(p.allowed_ips[1].to_string(), "192.168.5.0/24");
        assert_eq!(p.persistent_keepalive, Some(Duration::from_secs(25)));
        assert!(format!("{:?}", c.interface).contains("redacted"));
    }

    #[test]
    fn errors_name_the_line() {
        let e = "[Interface]\nPrivateKey = nope\n"
            .parse::<WgConfig>()
            .unwrap_err();
        assert_eq!(e.line, 2);
        let e = format!("[Interface]\nPrivateKey = {KEY_A}\n[Peer]\nAllowedIPs = 10.0.0.0/33\n")
            .parse::<WgConfig>()
            .unwrap_err();
        assert_eq!(e.line, 4);
        let e = format!("[Interface]\nPrivateKey = {KEY_A}\n[Peer]\nEndpoint = 1.2.3.4:5\n")
            .parse::<WgConfig>()
            .unwrap_err();
        assert!(e.message.contains("PublicKey"));
        let e = "Key = 1\n".parse::<WgConfig>().unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn longest_prefix_wins() {
        let table = vec![
            ("10.0.0.0/8".parse().unwrap(), 1),
            ("10.1.0.0/16".parse().unwrap(), 2),
            ("::/0".parse().unwrap(), 3),
        ];
        assert_eq!(route(&table, "10.1.2.3".parse().unwrap()), Some(&2));
        assert_eq!(route(&table, "10.2.2.3".parse().unwrap()), Some(&1));
        assert_eq!(route(&table, "2001:db8::1".parse().unwrap()), Some(&3));
        assert_eq!(route(&table, "192.0.2.1".parse().unwrap()), None);
    }
}
