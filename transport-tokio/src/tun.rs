//! The TUN device as `burrow wg` and `burrow up` open it: with `IFF_VNET_HDR` and TSO/USO
//! where the kernel agrees, its frames read as the packets they carry (a super-packet cut into
//! segments) and written back coalesced.

use std::io;
use std::ops::Range;

use burrow_offload::{Coalescer, SlotLayout, VirtioNetHdr, MAX_SEGMENTS, VNET_HDR_LEN};
use tun_rs::AsyncDevice;

use crate::wg::ip_cmd;

/// What the TUN device accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunOffload {
    /// Frames carry a virtio-net header; TCP segmentation offload is on.
    pub tcp: bool,
    /// UDP segmentation offload is on too (Linux 6.2+).
    pub udp: bool,
}

/// Opens the TUN `name` with offloads if asked and the kernel agrees, else without. An
/// offloading TUN also needs super-packets capped at 64 segments (what a frame's slots hold);
/// a kernel that does not take the cap gets a plain TUN, so no super-packet is ever dropped.
pub fn open_tun(name: &str, mtu: u16, offload: bool) -> io::Result<(AsyncDevice, TunOffload)> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(offload)
            .build_async()
    };
    if offload {
        match build(true) {
            Ok(dev) if dev.tcp_gso() && limit_gso_segments(name) => {
                let udp = dev.udp_gso();
                return Ok((dev, TunOffload { tcp: true, udp }));
            }
            Ok(dev) => drop(dev),
            Err(e) => tracing::info!(error = %e, "TUN offload refused; plain packets"),
        }
    }
    let dev = build(false)?;
    Ok((
        dev,
        TunOffload {
            tcp: false,
            udp: false,
        },
    ))
}

/// Caps super-packets on the TUN `ifname` at [`burrow_offload::MAX_SEGMENTS`] segments (the
/// kernel cuts larger ones itself before the TUN), and reads the cap back: an old kernel or
/// `ip` may accept the command and ignore it. False when the cap does not hold.
fn limit_gso_segments(ifname: &str) -> bool {
    let max = burrow_offload::MAX_SEGMENTS;
    if let Err(e) = ip_cmd(&[
        "link",
        "set",
        "dev",
        ifname,
        "gso_max_segs",
        &max.to_string(),
    ]) {
        tracing::info!(error = %e, "gso_max_segs not taken; plain TUN packets");
        return false;
    }
    // Read back through netlink (`ip -d link`): /sys may show another network namespace.
    let segs = std::process::Command::new("ip")
        .args(["-d", "link", "show", "dev", ifname])
        .output()
        .ok()
        .and_then(|out| gso_max_segs(&String::from_utf8_lossy(&out.stdout)));
    match segs {
        Some(segs) if segs <= max => true,
        other => {
            tracing::info!(?other, "gso_max_segs does not hold; plain TUN packets");
            false
        }
    }
}

/// The `gso_max_segs` value in `ip -d link show` output.
fn gso_max_segs(details: &str) -> Option<usize> {
    let mut words = details.split_whitespace();
    words.find(|w| *w == "gso_max_segs")?;
    words.next()?.parse().ok()
}

/// One TUN frame at a time, seen as the packets it carries: the frame itself from a plain
/// TUN; from an offloading one, its one packet (partial checksum completed in place, so any
/// size the TUN's MTU allows passes) or a super-packet's segments, cut into slots.
pub(crate) struct TunFrames {
    offload: bool,
    frame: Vec<u8>,
    /// A super-packet's segments, one per slot of `layout`.
    segments: Vec<u8>,
    layout: SlotLayout,
    lens: [usize; MAX_SEGMENTS],
    /// Where the frame's one packet lies, when it is not cut.
    single: Option<Range<usize>>,
    count: usize,
}

impl TunFrames {
    /// Buffers for a TUN opened with `offload` and an MTU of `mtu`.
    pub(crate) fn new(offload: TunOffload, mtu: usize) -> Self {
        let layout = SlotLayout {
            stride: mtu.max(1280) + 64,
            headroom: 0,
            tailroom: 0,
        };
        let slots = if offload.tcp { MAX_SEGMENTS } else { 0 };
        TunFrames {
            offload: offload.tcp,
            frame: vec![0u8; VNET_HDR_LEN + 65_535],
            segments: vec![0u8; slots * layout.stride],
            layout,
            lens: [0; MAX_SEGMENTS],
            single: None,
            count: 0,
        }
    }

    /// Waits for the next frame; returns how many packets it carries (0 for a frame dropped
    /// as malformed).
    pub(crate) async fn recv(&mut self, tun: &AsyncDevice) -> io::Result<usize> {
        let n = tun.recv(&mut self.frame).await?;
        Ok(self.take(n))
    }

    /// The next frame if one is waiting: its number of packets, or `None`.
    pub(crate) fn try_recv(&mut self, tun: &AsyncDevice) -> io::Result<Option<usize>> {
        match tun.try_recv(&mut self.frame) {
            Ok(n) => Ok(Some(self.take(n))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The longest packet a frame yields (a slot's size).
    pub(crate) fn max_packet(&self) -> usize {
        self.layout.stride
    }

    /// Packet `i` of the frame last read.
    pub(crate) fn packet(&self, i: usize) -> &[u8] {
        match &self.single {
            Some(range) => &self.frame[range.clone()],
            None => {
                let at = i * self.layout.stride;
                &self.segments[at..at + self.lens[i]]
            }
        }
    }

    /// Sees the `n` bytes just read as packets.
    fn take(&mut self, n: usize) -> usize {
        self.single = None;
        self.count = 0;
        if !self.offload {
            self.single = Some(0..n);
            self.count = 1;
            return 1;
        }
        match frame_segments(
            &mut self.frame[..n],
            &mut self.segments,
            self.layout,
            &mut self.lens,
        ) {
            Ok(None) => {
                self.single = Some(VNET_HDR_LEN..n);
                self.count = 1;
            }
            Ok(Some(count)) => self.count = count,
            Err(e) => tracing::debug!(error = %e, "TUN frame dropped"),
        }
        self.count
    }
}

/// Reads one offload frame: `None` for a single packet, which stays in `frame` with its
/// partial checksum completed (so any size the TUN's MTU allows passes); for a super-packet,
/// the number of segments it was cut into (in `segments`, lengths in `lens`).
fn frame_segments(
    frame: &mut [u8],
    segments: &mut [u8],
    layout: SlotLayout,
    lens: &mut [usize],
) -> Result<Option<usize>, burrow_offload::OffloadError> {
    let hdr = VirtioNetHdr::parse(frame)?;
    let packet = &mut frame[VNET_HDR_LEN..];
    if hdr.gso()? == burrow_offload::GsoType::None {
        burrow_offload::complete_checksum(&hdr, packet)?;
        return Ok(None);
    }
    burrow_offload::split(&hdr, packet, segments, layout, lens).map(Some)
}

/// Writes the coalesced frames to the TUN, then forgets them.
pub(crate) async fn write_frames(tun: &AsyncDevice, gro: &mut Coalescer) {
    for frame in gro.frames() {
        if let Err(e) = tun.send(frame).await {
            // A frame the kernel refuses (or a device going down) costs only itself.
            tracing::debug!(error = %e, "TUN write failed");
        }
    }
    gro.clear();
}

#[cfg(test)]
mod tests {
    use super::gso_max_segs;

    #[test]
    fn the_segment_cap_is_read_from_ip_link_details() {
        let details = "7: bw0: <POINTOPOINT,MULTICAST,NOARP> mtu 1420 qdisc noop state DOWN\n    \
            link/none  promiscuity 0 minmtu 68 maxmtu 65535\n    tun type tun pi off vnet_hdr on \
            multi_queue off numtxqueues 1 gso_max_size 65536 gso_max_segs 64 tso_max_size 65536";
        assert_eq!(gso_max_segs(details), Some(64));
        assert_eq!(
            gso_max_segs("gso_max_size 65536 gso_max_segs 65535"),
            Some(65_535)
        );
        // An `ip` too old to print it, or output cut short: no cap known.
        assert_eq!(gso_max_segs("link/none promiscuity 0"), None);
        assert_eq!(gso_max_segs("gso_max_segs"), None);
    }
}
