//! What the control server accepts from a node, checked before it is stored: host names,
//! key spellings, and the endpoints a report may vouch for.

use std::net::{IpAddr, SocketAddr};

/// A host name is one DNS label: letters, digits and inner hyphens, 1 to 63 of them, so no
/// control character or escape sequence reaches a log line or a terminal (audit #18).
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A machine's host name made into a DNS label (the first label, other characters as `-`);
/// "node" when nothing is left.
pub fn hostname_label(name: &str) -> String {
    let first = name.trim().split('.').next().unwrap_or_default();
    let label: String = first
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "node".into()
    } else {
        label.to_string()
    }
}

/// A key in its one canonical spelling (audit #7), or None if it is not a canonical key.
pub(crate) fn canonical_key(s: &str) -> Option<String> {
    burrow_wg::PublicKey::from_base64(s)
        .ok()
        .filter(is_canonical_key)
        .map(|k| k.to_base64())
}

/// X25519 ignores a public key's top bit, so a key with it set is another spelling of the
/// same key: refused, so one key is one node.
pub(crate) fn is_canonical_key(k: &burrow_wg::PublicKey) -> bool {
    k.as_bytes()[31] & 0x80 == 0
}

/// Whether an address is on the public internet as far as vouching goes (not private, shared,
/// loopback, link-local or otherwise special).
fn is_public_v4(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let shared = o[0] == 100 && (o[1] & 0xc0) == 64; // 100.64.0.0/10
            !(v4.is_private()
                || shared
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        IpAddr::V6(_) => false,
    }
}

/// The endpoints a node's report keeps (audit #3): none that peers must never send to
/// (unspecified, loopback, multicast, broadcast, link-local, port 0), and, when the report
/// came from a public IPv4 address, no public IPv4 endpoint on another address. Peers aim
/// birthday probes only at public IPs the control plane lists, so this is what stops a member
/// from pointing the tailnet's probes at a third party. A report over IPv6 cannot show its
/// IPv4 address: it keeps only the public IPv4 addresses an earlier IPv4 report vouched for
/// (`known`, the node's current endpoints). Reports from private IPv4 addresses (the server
/// on a LAN, or behind a proxy) cannot be checked and keep their public endpoints.
pub fn vouched_endpoints(
    source: IpAddr,
    claimed: &[SocketAddr],
    known: &[SocketAddr],
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    let source = super::limits::source_bucket(source);
    for e in claimed {
        // One spelling per address: an IPv4-mapped IPv6 endpoint is its IPv4 endpoint.
        let e = burrow_punch::canonical_remote(*e);
        let acceptable = burrow_punch::is_acceptable_remote(e);
        let foreign = is_public_v4(e.ip())
            && match source {
                IpAddr::V4(_) => is_public_v4(source) && e.ip() != source,
                IpAddr::V6(_) => !known.iter().any(|k| k.ip() == e.ip()),
            };
        if acceptable && !foreign && !out.contains(&e) {
            out.push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_endpoints_peers_may_send_to_and_the_reporters_own_public_ip_are_kept() {
        let e = |s: &str| s.parse::<SocketAddr>().unwrap();
        let claimed = [
            e("0.0.0.0:1"),
            e("127.0.0.1:22"),
            e("224.0.0.251:5353"),
            e("255.255.255.255:9"),
            e("169.254.1.1:41641"),
            e("198.51.100.7:0"),
            e("192.168.1.5:41641"),
            e("198.51.100.7:41641"),
            e("203.0.113.9:53"),
            e("[2001:db8::1]:41641"),
            e("[::ffff:203.0.113.9]:53"),
        ];
        let from_public = vouched_endpoints("198.51.100.7".parse().unwrap(), &claimed, &[]);
        assert_eq!(
            from_public,
            vec![
                e("192.168.1.5:41641"),
                e("198.51.100.7:41641"),
                e("[2001:db8::1]:41641")
            ],
            "a third party's address is not vouched for"
        );
        let from_lan = vouched_endpoints("10.0.0.2".parse().unwrap(), &claimed, &[]);
        assert!(
            from_lan.contains(&e("203.0.113.9:53")),
            "unverifiable, kept"
        );
        assert!(!from_lan.contains(&e("224.0.0.251:5353")));
    }

    #[test]
    fn a_report_over_ipv6_vouches_for_no_new_public_ipv4_address() {
        // A member posting over IPv6 cannot show its IPv4 address: a third party's would
        // otherwise be kept, and the tailnet's birthday probes aimed at it.
        let e = |s: &str| s.parse::<SocketAddr>().unwrap();
        let v6: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let claimed = [
            e("203.0.113.9:53"),
            e("198.51.100.7:41642"),
            e("[2001:db8:1:2::5]:41641"),
            e("192.168.1.5:41641"),
        ];
        assert_eq!(
            vouched_endpoints(v6, &claimed, &[]),
            vec![e("[2001:db8:1:2::5]:41641"), e("192.168.1.5:41641")]
        );
        // What an earlier IPv4 report vouched for stays (its port may move).
        let known = [e("198.51.100.7:41641")];
        assert_eq!(
            vouched_endpoints(v6, &claimed, &known),
            vec![
                e("198.51.100.7:41642"),
                e("[2001:db8:1:2::5]:41641"),
                e("192.168.1.5:41641")
            ]
        );
        // The IPv4-mapped spelling of a source is its IPv4 address.
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(
            vouched_endpoints(mapped, &[e("203.0.113.9:53")], &[]),
            vec![]
        );
    }

    #[test]
    fn host_names_are_dns_labels() {
        assert!(valid_hostname("db-1"));
        for bad in ["", "-a", "a-", "a b", "a.b", "x\u{1b}[2J", &"a".repeat(64)] {
            assert!(!valid_hostname(bad), "{bad:?}");
        }
        assert_eq!(hostname_label("My Laptop.local\n"), "My-Laptop");
        assert_eq!(hostname_label("\u{1b}[31m"), "31m");
        assert_eq!(hostname_label("..."), "node");
    }
}
