//! Network → TUN: datagrams read in batches, opened, crypto-key routed and written coalesced.

use std::net::SocketAddr;
use std::sync::Arc;

use burrow_offload::Coalescer;
use burrow_wg::{Decapsulated, PeerId, Received};
use tun_rs::AsyncDevice;

use super::{addresses, send_all, Shared, TunOffload, WgRunError};
use crate::transport::{now, BatchUdpSocket, RecvBatch, UdpTransport};
use crate::tun::write_frames;
use crate::wg_config::route;

pub(super) async fn inbound(
    shared: Arc<Shared>,
    tun: Arc<AsyncDevice>,
    socket: Arc<BatchUdpSocket>,
    offload: TunOffload,
) -> Result<(), WgRunError> {
    let mut batch = RecvBatch::for_socket(&*socket, 65_535);
    // Outputs of `decapsulate` (cookie replies) back to back, and where each lies.
    let mut plain: Vec<u8> = Vec::new();
    let mut cookies: Vec<(SocketAddr, usize, usize)> = Vec::new();
    // Transport messages opened outside the lock: their plaintexts back to back.
    let mut jobs: Vec<OpenJob> = Vec::new();
    let mut opened: Vec<u8> = Vec::new();
    let mut delivered: Vec<(usize, usize)> = Vec::new();
    let mut gro = Coalescer::new(offload.udp, RECV_FRAMES);
    let mut pending = Vec::new();
    loop {
        socket.recv_batch(&mut batch).await?;
        let datagrams: Vec<(SocketAddr, &[u8])> = batch
            .datagrams()
            // IPv4 peers arrive as ::ffff:a.b.c.d on the dual-stack socket: keep them as IPv4.
            .map(|(src, d)| (burrow_punch::canonical_remote(src), d))
            .collect();
        let t = now();
        let mut used = 0;
        let mut room = 0;
        let mut next = 0;
        while next < datagrams.len() {
            {
                // Transport messages are matched to their keypairs (opened below); anything
                // else is handled here, once the transport messages before it were taken, so
                // the batch is handled in arrival order. The device counts handshakes and asks
                // for cookies past its rate by itself.
                let mut device = shared.device.lock().expect("device");
                while let Some(&(src, data)) = datagrams.get(next) {
                    if let Some((peer, opener)) = device.opener(t, data) {
                        jobs.push(OpenJob {
                            datagram: next,
                            peer,
                            opener: Some(opener),
                            at: room,
                            opened: Err(burrow_wg::WgError::DecryptFailed),
                        });
                        room += data.len();
                        next += 1;
                        continue;
                    }
                    if !jobs.is_empty() {
                        break;
                    }
                    next += 1;
                    if plain.len() < used + data.len() + 64 {
                        plain.resize(used + data.len() + 64, 0);
                    }
                    match device.decapsulate(t, src, data, &mut plain[used..]) {
                        Ok(Received::Peer(peer, result)) => {
                            // What `opener` refused cannot carry data here.
                            debug_assert!(!matches!(result, Decapsulated::Data(_)));
                            // Roam on authenticated packets only: a cookie reply is forgeable
                            // by anyone who saw our mac1.
                            if result != Decapsulated::CookieReply {
                                shared.endpoints.lock().expect("endpoints")[peer.0] = Some(src);
                            }
                        }
                        Ok(Received::CookieReply(len)) => {
                            cookies.push((src, used, len));
                            used += len;
                        }
                        Err(e) => tracing::debug!(%src, error = %e, "datagram refused"),
                    }
                }
                shared.drain(&mut device, &mut pending);
            }
            if jobs.is_empty() {
                continue;
            }
            let base = jobs[0].at;
            if opened.len() < room {
                opened.resize(room, 0);
            }
            open_all(
                &datagrams,
                &mut jobs,
                &mut opened[base..room],
                shared.parallel_from,
            );
            // Taken in arrival order: replay window, timers, roaming, crypto-key routing.
            let mut device = shared.device.lock().expect("device");
            for job in jobs.drain(..) {
                let src = datagrams[job.datagram].0;
                let r = job.opened.and_then(|o| {
                    let at = job.at;
                    device.accept_opened(t, job.peer, o, &opened[at..])
                });
                match r {
                    Ok(Received::Peer(peer, result)) => {
                        shared.endpoints.lock().expect("endpoints")[peer.0] = Some(src);
                        if let Decapsulated::Data(len) = result {
                            // The inner source must be one of the peer's AllowedIPs.
                            match addresses(&opened[job.at..job.at + len]) {
                                Some((inner, _)) if route(&shared.routes, inner) == Some(&peer) => {
                                    delivered.push((job.at, len));
                                }
                                _ => tracing::debug!(
                                    %src,
                                    "dropped a packet whose inner source the peer may not use"
                                ),
                            }
                        }
                    }
                    Ok(Received::CookieReply(_)) => {}
                    Err(e) => tracing::debug!(%src, error = %e, "datagram refused"),
                }
            }
            shared.drain(&mut device, &mut pending);
        }
        drop(datagrams);
        for (at, len) in delivered.drain(..) {
            let packet = &opened[at..at + len];
            if offload.tcp {
                if gro.push(packet).is_err() {
                    write_frames(&tun, &mut gro).await;
                    let _ = gro.push(packet);
                }
            } else if let Err(e) = tun.send(packet).await {
                // One packet the kernel refuses (or a device going down) costs only itself.
                tracing::debug!(error = %e, "TUN write failed");
            }
        }
        write_frames(&tun, &mut gro).await;
        for (src, at, len) in cookies.drain(..) {
            let _ = socket.send_to(&plain[at..at + len], src).await;
        }
        send_all(&socket, &mut pending).await;
    }
}

/// A transport message matched under the lock, opened outside it.
struct OpenJob {
    /// Its index in the batch.
    datagram: usize,
    peer: PeerId,
    /// Spent by opening.
    opener: Option<burrow_wg::Opener>,
    /// Where its plaintext goes (room for the whole datagram).
    at: usize,
    /// The proof it authenticated, or why it did not.
    opened: Result<burrow_wg::Opened, burrow_wg::WgError>,
}

/// Opens every job's datagram into its place in `out` (which starts at the first job's),
/// half of them on a pool thread when there are `parallel_from` or more.
fn open_all(
    datagrams: &[(SocketAddr, &[u8])],
    jobs: &mut [OpenJob],
    out: &mut [u8],
    parallel_from: usize,
) {
    let open_part = |jobs: &mut [OpenJob], out: &mut [u8]| {
        let base = jobs.first().map_or(0, |j| j.at);
        for job in jobs.iter_mut() {
            let data = datagrams[job.datagram].1;
            let at = job.at - base;
            if let Some(opener) = job.opener.take() {
                job.opened = opener.open(data, &mut out[at..at + data.len()]);
            }
        }
    };
    if jobs.len() >= parallel_from.max(2) {
        let half = jobs.len() / 2;
        let split = jobs[half].at - jobs[0].at;
        let (ja, jb) = jobs.split_at_mut(half);
        let (oa, ob) = out.split_at_mut(split);
        rayon::in_place_scope(|scope| {
            scope.spawn(|_| open_part(jb, ob));
            open_part(ja, oa);
        });
    } else {
        open_part(jobs, out);
    }
}

/// Frames one coalescer holds at most before they are written (a batch with more flows, or
/// coalesced runs, writes in several goes).
const RECV_FRAMES: usize = crate::transport::RECV_SLOTS;
