//! What a simulation records: an event trace (hashed, for replay checks), per-link packet
//! captures (written as pcap), and the boxes' counters.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::nat::NatStats;

pub use crate::pcap::Packet;

/// Everything one simulation records. Shared by all its hosts.
#[derive(Debug, Default)]
pub struct Recorder {
    trace: Mutex<(Sha256Wrapper, u64, Vec<String>)>,
    keep_lines: bool,
    capture: bool,
    links: Mutex<BTreeMap<String, Vec<Packet>>>,
    boxes: Mutex<BTreeMap<String, NatStats>>,
}

#[derive(Debug, Default)]
struct Sha256Wrapper(Sha256);

/// Simulated time now (zero outside a simulation).
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl Recorder {
    /// A recorder; `capture` keeps packets for pcap, `keep_lines` keeps the trace text.
    pub fn new(capture: bool, keep_lines: bool) -> Self {
        Recorder {
            capture,
            keep_lines,
            ..Default::default()
        }
    }

    /// Appends one trace event.
    pub fn event(&self, line: std::fmt::Arguments<'_>) {
        let text = format!("{:>12} {}", now().as_micros(), line);
        let mut t = self.trace.lock().expect("trace lock");
        t.0 .0.update(text.as_bytes());
        t.0 .0.update(b"\n");
        t.1 += 1;
        if self.keep_lines {
            t.2.push(text);
        }
    }

    /// Records a datagram crossing `link`, in the trace and (if capturing) for pcap.
    pub fn packet(&self, link: &str, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        self.event(format_args!(
            "{link} {src} > {dst} len {} fnv {:016x}",
            payload.len(),
            fnv(payload)
        ));
        if self.capture {
            self.links
                .lock()
                .expect("links lock")
                .entry(link.to_owned())
                .or_default()
                .push(Packet {
                    at: now(),
                    src,
                    dst,
                    payload: payload.to_vec(),
                });
        }
    }

    /// Publishes a box's counters.
    pub fn box_stats(&self, name: &str, stats: NatStats) {
        self.boxes
            .lock()
            .expect("boxes lock")
            .insert(name.to_owned(), stats);
    }

    /// Every box's counters.
    pub fn boxes(&self) -> BTreeMap<String, NatStats> {
        self.boxes.lock().expect("boxes lock").clone()
    }

    /// The trace hash (SHA-256 of every event line, hex) and the number of events.
    pub fn trace_hash(&self) -> (String, u64) {
        let t = self.trace.lock().expect("trace lock");
        let digest = t.0 .0.clone().finalize();
        (digest.iter().map(|b| format!("{b:02x}")).collect(), t.1)
    }

    /// The trace lines, if kept.
    pub fn trace_lines(&self) -> Vec<String> {
        self.trace.lock().expect("trace lock").2.clone()
    }

    /// Writes one pcap per link into `dir`, named `PREFIXLINK.pcap`.
    pub fn write_pcaps(
        &self,
        dir: &Path,
        prefix: &str,
    ) -> std::io::Result<Vec<std::path::PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        for (link, packets) in self.links.lock().expect("links lock").iter() {
            let path = dir.join(format!("{prefix}{link}.pcap"));
            crate::pcap::write(&path, packets)?;
            written.push(path);
        }
        Ok(written)
    }
}

/// FNV-1a, for a short fingerprint of a payload in the trace.
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether an address is IPv4 (pcap framing differs).
pub fn is_v4(a: &SocketAddr) -> bool {
    matches!(a.ip(), IpAddr::V4(_))
}
