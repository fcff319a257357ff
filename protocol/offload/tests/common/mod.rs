//! Packet builders and a deliberately naive checksum (16-bit words, end-around carry at every
//! step) that shares no code with the crate, so the tests judge the crate's checksums
//! independently.
#![allow(dead_code)]

/// One packet to build.
#[derive(Clone, Debug)]
pub struct Spec {
    pub v6: bool,
    pub udp: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub id: u16,
    pub flags: u8,
    pub window: u16,
    pub options: Vec<u8>,
    pub tos: u8,
    pub ttl: u8,
    pub flow_label: u32,
    pub payload: Vec<u8>,
}

impl Spec {
    pub fn tcp4(sport: u16, seq: u32, id: u16, payload: Vec<u8>) -> Spec {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        Spec {
            v6: false,
            udp: false,
            src,
            dst,
            sport,
            dport: 5201,
            seq,
            ack: 77,
            id,
            flags: 0x10,
            window: 501,
            options: Vec::new(),
            tos: 0,
            ttl: 64,
            flow_label: 0,
            payload,
        }
    }

    pub fn tcp6(sport: u16, seq: u32, payload: Vec<u8>) -> Spec {
        let mut s = Spec::tcp4(sport, seq, 0, payload);
        s.v6 = true;
        s.src = [0xfd, 0x1c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        s.dst = [0xfd, 0x1c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        s
    }

    pub fn udp4(sport: u16, id: u16, payload: Vec<u8>) -> Spec {
        let mut s = Spec::tcp4(sport, 0, id, payload);
        s.udp = true;
        s
    }

    pub fn ip_len(&self) -> usize {
        if self.v6 {
            40
        } else {
            20
        }
    }

    pub fn l4_len(&self) -> usize {
        if self.udp {
            8
        } else {
            20 + self.options.len()
        }
    }
}

pub fn naive_sum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for ch in data.chunks(2) {
        let w = (u32::from(ch[0]) << 8) | u32::from(*ch.get(1).unwrap_or(&0));
        s += w;
        if s > 0xffff {
            s = (s & 0xffff) + 1;
        }
    }
    s as u16
}

pub fn pseudo(v6: bool, src: &[u8], dst: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    if v6 {
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
    }
    p
}

fn addrs(p: &[u8]) -> (bool, &[u8], &[u8], usize) {
    if p[0] >> 4 == 6 {
        (true, &p[8..24], &p[24..40], 40)
    } else {
        (false, &p[12..16], &p[16..20], usize::from(p[0] & 0xf) * 4)
    }
}

/// Builds `s` with valid checksums (IPv4 header, TCP or UDP over the pseudo-header).
pub fn build(s: &Spec) -> Vec<u8> {
    let (ip, l4) = (s.ip_len(), s.l4_len());
    let total = ip + l4 + s.payload.len();
    let mut p = vec![0u8; ip + l4];
    if s.v6 {
        let first = (6u32 << 28) | (u32::from(s.tos) << 20) | (s.flow_label & 0xf_ffff);
        p[..4].copy_from_slice(&first.to_be_bytes());
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        p[6] = if s.udp { 17 } else { 6 };
        p[7] = s.ttl;
        p[8..24].copy_from_slice(&s.src);
        p[24..40].copy_from_slice(&s.dst);
    } else {
        p[0] = 0x45;
        p[1] = s.tos;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&s.id.to_be_bytes());
        p[6] = 0x40;
        p[8] = s.ttl;
        p[9] = if s.udp { 17 } else { 6 };
        p[12..16].copy_from_slice(&s.src[..4]);
        p[16..20].copy_from_slice(&s.dst[..4]);
    }
    p[ip..ip + 2].copy_from_slice(&s.sport.to_be_bytes());
    p[ip + 2..ip + 4].copy_from_slice(&s.dport.to_be_bytes());
    if s.udp {
        p[ip + 4..ip + 6].copy_from_slice(&((total - ip) as u16).to_be_bytes());
    } else {
        p[ip + 4..ip + 8].copy_from_slice(&s.seq.to_be_bytes());
        p[ip + 8..ip + 12].copy_from_slice(&s.ack.to_be_bytes());
        p[ip + 12] = ((l4 / 4) as u8) << 4;
        p[ip + 13] = s.flags;
        p[ip + 14..ip + 16].copy_from_slice(&s.window.to_be_bytes());
        p[ip + 20..ip + l4].copy_from_slice(&s.options);
    }
    p.extend_from_slice(&s.payload);
    fix_checksums(&mut p);
    p
}

/// Recomputes the IPv4 header checksum and the transport checksum (naively).
pub fn fix_checksums(p: &mut [u8]) {
    let (v6, _, _, ip) = addrs(p);
    if !v6 {
        p[10] = 0;
        p[11] = 0;
        let c = !naive_sum(&p[..ip]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let udp = if v6 { p[6] == 17 } else { p[9] == 17 };
    let field = ip + if udp { 6 } else { 16 };
    p[field] = 0;
    p[field + 1] = 0;
    let (_, src, dst, _) = addrs(p);
    let mut all = pseudo(v6, src, dst, if udp { 17 } else { 6 }, p.len() - ip);
    all.extend_from_slice(&p[ip..]);
    let mut c = !naive_sum(&all);
    if udp && c == 0 {
        c = 0xffff;
    }
    p[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Whether the IPv4 header checksum (if any) and the transport checksum verify.
pub fn checksums_valid(p: &[u8]) -> bool {
    let (v6, src, dst, ip) = addrs(p);
    if !v6 && naive_sum(&p[..ip]) != 0xffff {
        return false;
    }
    let udp = if v6 { p[6] == 17 } else { p[9] == 17 };
    if udp && !v6 && p[ip + 6] == 0 && p[ip + 7] == 0 {
        return true;
    }
    let mut all = pseudo(v6, src, dst, if udp { 17 } else { 6 }, p.len() - ip);
    all.extend_from_slice(&p[ip..]);
    naive_sum(&all) == 0xffff
}

/// Completes a merged frame's partial checksum the way a device would (sum from csum_start,
/// fold, complement) and says whether the whole super-packet then verifies.
pub fn partial_completes(frame_packet: &[u8], csum_start: usize, csum_offset: usize) -> bool {
    let mut p = frame_packet.to_vec();
    let c = !naive_sum(&p[csum_start..]);
    let field = csum_start + csum_offset;
    p[field..field + 2].copy_from_slice(&c.to_be_bytes());
    checksums_valid(&p)
}

/// A TSO/USO super-packet as the kernel hands it over: full-length headers, the first
/// segment's IP ID and sequence number, and the pseudo-header's partial sum in the transport
/// checksum field.
pub fn super_packet(s: &Spec) -> Vec<u8> {
    let mut p = build(s);
    let (v6, src, dst, ip) = addrs(&p);
    let udp = s.udp;
    let ps = pseudo(v6, src, dst, if udp { 17 } else { 6 }, p.len() - ip);
    let partial = naive_sum(&ps);
    let field = ip + if udp { 6 } else { 16 };
    p[field..field + 2].copy_from_slice(&partial.to_be_bytes());
    p
}
