//! TUN → network: frames read in batches, cut into packets, sealed and sent as GSO runs.

use std::net::SocketAddr;
use std::sync::Arc;

use burrow_offload::MAX_SEGMENTS;
use burrow_wg::Encapsulated;
use tun_rs::AsyncDevice;

use super::{addresses, send_all, Shared, TunOffload, WgRunError};
use crate::transport::{now, BatchUdpSocket, UdpTransport};
use crate::tun::TunFrames;
use crate::wg_config::route;

/// TUN frames read in one go before their datagrams are sent.
const TUN_BATCH: usize = 64;
/// Datagrams one GSO send carries at most, and its bytes.
const RUN_SEGMENTS: usize = 64;
const RUN_BYTES: usize = 60_000;
/// Room a WireGuard data message needs beyond its plaintext: header, padding, tag.
const WG_OVERHEAD: usize = 16 + 15 + 16;

/// Sealed datagrams packed back to back, with their endpoints, sent as GSO runs.
struct Outgoing {
    buf: Vec<u8>,
    used: usize,
    /// Per datagram: endpoint and length, in order.
    datagrams: Vec<(SocketAddr, usize)>,
}

impl Outgoing {
    fn new(bytes: usize) -> Self {
        Outgoing {
            buf: vec![0; bytes],
            used: 0,
            datagrams: Vec::with_capacity(RUN_SEGMENTS * 2),
        }
    }

    /// Whether `bytes` more (plaintexts with their overhead) still fit.
    fn room_for(&self, bytes: usize) -> bool {
        self.buf.len() - self.used >= bytes
    }

    /// Sends everything: consecutive datagrams to one endpoint, all as long as the first but
    /// a shorter last, go out in one system call.
    async fn flush(&mut self, socket: &BatchUdpSocket) {
        let max = socket.max_segments().min(RUN_SEGMENTS);
        let mut at = 0;
        let mut i = 0;
        while i < self.datagrams.len() {
            let (ep, seg) = self.datagrams[i];
            let mut end = at + seg;
            let mut j = i + 1;
            while j < self.datagrams.len() && j - i < max {
                let (e, len) = self.datagrams[j];
                if e != ep || len > seg || end + len > at + RUN_BYTES {
                    break;
                }
                end += len;
                j += 1;
                if len < seg {
                    break;
                }
            }
            if let Err(e) = socket.send_segments(&self.buf[at..end], seg, ep).await {
                tracing::debug!(%ep, error = %e, "send failed");
            }
            at = end;
            i = j;
        }
        self.used = 0;
        self.datagrams.clear();
    }
}

pub(super) async fn outbound(
    shared: Arc<Shared>,
    tun: Arc<AsyncDevice>,
    socket: Arc<BatchUdpSocket>,
    offload: TunOffload,
    mtu: usize,
) -> Result<(), WgRunError> {
    let mut frames = TunFrames::new(offload, mtu);
    let mut out = Outgoing::new(TUN_BATCH * (frames.max_packet() + WG_OVERHEAD) + 65_535);
    let mut pending = Vec::new();
    loop {
        let mut count = frames.recv(&tun).await?;
        let mut read = 1;
        loop {
            let seg = |i: usize| frames.packet(i);
            let need: usize = (0..count).map(|i| seg(i).len() + WG_OVERHEAD).sum();
            if !out.room_for(need) {
                out.flush(&socket).await;
            }
            if count > 0 {
                seal(&shared, &mut out, &mut pending, count, &seg);
            }
            if read >= TUN_BATCH {
                break;
            }
            match frames.try_recv(&tun)? {
                Some(c) => count = c,
                None => break,
            }
            read += 1;
        }
        out.flush(&socket).await;
        send_all(&socket, &mut pending).await;
    }
}

/// Seals the `count` packets `seg(i)` (one frame's, all to one destination) into `out`: with
/// a usable keypair, counters for all of them are taken under the device's lock and the
/// sealing happens outside it, split over two cores for a large frame; without one, each
/// packet goes through `encapsulate` (queued for the handshake it starts).
fn seal<'a>(
    shared: &Shared,
    out: &mut Outgoing,
    pending: &mut Vec<(SocketAddr, Vec<u8>)>,
    count: usize,
    seg: &(dyn Fn(usize) -> &'a [u8] + Sync),
) {
    let Some((_, dst)) = addresses(seg(0)) else {
        return;
    };
    let Some(&peer) = route(&shared.routes, dst) else {
        return;
    };
    let ep = shared.endpoints.lock().expect("endpoints")[peer.0];
    let t = now();
    let run = {
        let mut device = shared.device.lock().expect("device");
        let run = device.reserve(t, peer, count);
        if run.is_none() {
            for i in 0..count {
                match device.encapsulate(t, peer, seg(i), &mut out.buf[out.used..]) {
                    Ok(Encapsulated::Sent(len)) => {
                        if let Some(ep) = ep {
                            out.used += len;
                            out.datagrams.push((ep, len));
                        }
                    }
                    Ok(Encapsulated::Queued) => {}
                    Err(e) => tracing::debug!(error = %e, "packet not sent"),
                }
            }
        }
        shared.drain(&mut device, pending);
        run
    };
    let (Some(mut run), Some(ep)) = (run, ep) else {
        return;
    };
    // Each sealed packet's place in `out`, in order: the run leaves in counter order.
    let mut lens = [0usize; MAX_SEGMENTS];
    let lens = &mut lens[..count];
    for (i, len) in lens.iter_mut().enumerate() {
        *len = burrow_wg::transport_len(seg(i).len());
    }
    let total: usize = lens.iter().sum();
    let Some(buf) = out.buf.get_mut(out.used..out.used + total) else {
        // `room_for` made space for any frame; were it short, the frame is lost, not the task.
        tracing::debug!(total, "no room for a frame's datagrams");
        return;
    };
    let seal_part =
        |run: &mut burrow_wg::SealRun, first: usize, lens: &[usize], mut buf: &mut [u8]| {
            for (k, &len) in lens.iter().enumerate() {
                let (this, rest) = std::mem::take(&mut buf).split_at_mut(len);
                if let Err(e) = run.seal(t, seg(first + k), this) {
                    // Cannot happen with the lengths above and a run just taken; the receiver
                    // drops what is left in the slot.
                    tracing::debug!(error = %e, "packet not sealed");
                }
                buf = rest;
            }
        };
    if count >= shared.parallel_from {
        let half = count / 2;
        let at: usize = lens[..half].iter().sum();
        let (a, b) = buf.split_at_mut(at);
        let (la, lb) = lens.split_at(half);
        let mut rest = run.split_off(half);
        // The second half on a pool thread while this one seals the first.
        rayon::in_place_scope(|scope| {
            scope.spawn(|_| seal_part(&mut rest, half, lb, b));
            seal_part(&mut run, 0, la, a);
        });
    } else {
        seal_part(&mut run, 0, lens, buf);
    }
    out.used += total;
    out.datagrams.extend(lens.iter().map(|&len| (ep, len)));
}
