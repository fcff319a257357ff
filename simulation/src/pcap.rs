//! Pcap files of simulated traffic: real IPv4/IPv6 + UDP headers around each payload, so
//! tshark and Wireshark decode STUN (and later WireGuard) directly.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::DataLink;

/// One captured datagram.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Simulated time since the start.
    pub at: Duration,
    /// Source as seen on this link.
    pub src: SocketAddr,
    /// Destination as seen on this link.
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: Vec<u8>,
}

/// Simulated time zero in the captures: 2026-01-01T00:00:00Z.
pub const EPOCH: Duration = Duration::from_secs(1_767_225_600);

/// Writes `packets` to `path` as LINKTYPE_RAW (bare IP packets).
pub fn write(path: &Path, packets: &[Packet]) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let header = PcapHeader {
        datalink: DataLink::RAW,
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(std::io::BufWriter::new(file), header)
        .map_err(std::io::Error::other)?;
    for p in packets {
        let frame = ip_udp(p.src, p.dst, &p.payload);
        w.write_packet(&PcapPacket::new(EPOCH + p.at, frame.len() as u32, &frame))
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// Builds an IP + UDP datagram with correct lengths and checksums.
pub fn ip_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
            let mut c = checksum(&[&pseudo, &udp]);
            if c == 0 {
                c = 0xffff;
            }
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            let total = 20 + udp_len;
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let hc = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&hc.to_be_bytes());
            ip.extend_from_slice(&udp);
            ip
        }
        (s, d) => {
            let to6 = |a: IpAddr| match a {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            let (s, d) = (to6(s), to6(d));
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            let mut c = checksum(&[&pseudo, &udp]);
            if c == 0 {
                c = 0xffff;
            }
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&(udp_len as u16).to_be_bytes());
            ip.extend_from_slice(&[17, 64]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            ip.extend_from_slice(&udp);
            ip
        }
    }
}

/// The Internet checksum over the concatenation of `parts`.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u16::from_be_bytes([hi, b]) as u32,
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u16::from_be_bytes([hi, 0]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = ip_udp(
            "10.0.0.1:5000".parse().unwrap(),
            "198.51.100.1:3478".parse().unwrap(),
            b"abc",
        );
        assert_eq!(f.len(), 20 + 8 + 3);
        assert_eq!(
            checksum(&[&f[..20]]),
            0,
            "a header with its checksum sums to zero"
        );
        // UDP checksum verifies over pseudo-header + segment.
        let mut pseudo = vec![10, 0, 0, 1, 198, 51, 100, 1, 0, 17, 0, 11];
        pseudo.extend_from_slice(&f[20..]);
        assert_eq!(checksum(&[&pseudo]), 0);
    }
}
