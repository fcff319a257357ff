//! Load generators for `cargo xtask bench derp`: relay throughput against a plain TCP
//! forwarder (the ceiling), idle connections, and added latency.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_derp::ClientEvent;
use burrow_wg::PrivateKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use burrow::derp_client::{connect_raw, DerpUrl, RawConn};

fn key(i: u32, side: u8) -> PrivateKey {
    // Bytes 4..8: X25519 clamping clears the low bits of byte 0, which would merge keys.
    let mut b = [side; 32];
    b[4..8].copy_from_slice(&i.to_le_bytes());
    PrivateKey::from_bytes(b)
}

/// Holds `count` authenticated idle clients until `hold` passes; prints "ready" once all are up.
pub async fn idle(url: &DerpUrl, count: u32, hold: Duration) -> io::Result<()> {
    let mut conns: Vec<RawConn> = Vec::with_capacity(count as usize);
    for chunk in (0..count).collect::<Vec<_>>().chunks(200) {
        let futures = chunk
            .iter()
            .map(|&i| connect_raw(url, key(i, 0x42), None, false));
        for c in futures::future::join_all(futures).await {
            conns.push(c?);
        }
    }
    println!("ready {}", conns.len());
    tokio::time::sleep(hold).await;
    Ok(())
}

/// Result of a throughput run.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Payload bytes received per second, all pairs together.
    pub bytes_per_s: f64,
    /// Packets received per second.
    pub packets_per_s: f64,
}

/// Packets a sender may have in flight (sent, not yet received): a closed loop, as a
/// congestion-controlled flow would run, instead of a blast the relay must drop.
const WINDOW: u64 = 32;

/// `pairs` sender→receiver pairs through the relay, `size`-byte packets for `seconds`.
pub async fn relay_throughput(
    url: &DerpUrl,
    pairs: u32,
    size: usize,
    seconds: f64,
) -> io::Result<Throughput> {
    let mut tasks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    for p in 0..pairs {
        let (ks, kr) = (key(p, 0x51), key(p, 0x52));
        let dst = kr.public_key();
        let sender = connect_raw(url, ks, None, false).await?;
        let receiver = connect_raw(url, kr, None, false).await?;
        let (mut s_rd, mut s_wr, mut s_client) = sender.into_parts();
        let (mut r_rd, _r_wr, r_client) = receiver.into_parts();
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let progress = std::sync::Arc::new(tokio::sync::Notify::new());
        let (rx_count, rx_note) = (received.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            // The sender never reads; drain its socket so keep-alives cannot block it.
            let drain = tokio::spawn(async move {
                let mut b = vec![0u8; 4096];
                while matches!(s_rd.read(&mut b).await, Ok(n) if n > 0) {}
            });
            let packet = vec![0xabu8; size];
            let mut sent = 0u64;
            let mut batch = Vec::new();
            while Instant::now() < deadline {
                let in_flight = sent - received.load(std::sync::atomic::Ordering::Acquire);
                if in_flight >= WINDOW {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), progress.notified()).await;
                    if sent - received.load(std::sync::atomic::Ordering::Acquire) >= WINDOW {
                        // Lost to a drop: open the window again rather than stall.
                        sent = received.load(std::sync::atomic::Ordering::Acquire);
                    }
                    continue;
                }
                for _ in in_flight..WINDOW {
                    s_client.send_packet(&dst, &packet);
                    sent += 1;
                }
                batch.clear();
                while let Some(b) = s_client.poll_transmit() {
                    batch.extend_from_slice(&b);
                }
                if s_wr.write_all(&batch).await.is_err() {
                    break;
                }
            }
            drain.abort();
            Ok::<(u64, u64), io::Error>((0, 0))
        }));
        tasks.push(tokio::spawn(async move {
            // Count frames by their size on the wire (as the forwarder's receiver does) rather
            // than parse them, so the load generator does not eat the relay's CPU.
            let framed = (size + 37) as u64;
            let mut bytes = 0u64;
            let mut b = vec![0u8; 64 * 1024];
            drop(r_client);
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                match tokio::time::timeout(remaining, r_rd.read(&mut b)).await {
                    Ok(Ok(n)) if n > 0 => {
                        bytes += n as u64;
                        rx_count.store(bytes / framed, std::sync::atomic::Ordering::Release);
                        rx_note.notify_one();
                    }
                    _ => break,
                }
            }
            let packets = bytes / framed;
            Ok::<(u64, u64), io::Error>((packets * size as u64, packets))
        }));
    }
    let (mut bytes, mut packets) = (0u64, 0u64);
    for t in tasks {
        let (b, p) = t.await.map_err(io::Error::other)??;
        bytes += b;
        packets += p;
    }
    Ok(Throughput {
        bytes_per_s: bytes as f64 / seconds,
        packets_per_s: packets as f64 / seconds,
    })
}

/// A plain TCP forwarder (the ceiling): connections pair up in arrival order and each
/// pair's bytes are copied from the first to the second through a 256 KiB buffer.
pub async fn forwarder() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut a, _)) = listener.accept().await else {
                return;
            };
            let Ok((mut b, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                // The relay writes in batches of up to 256 KiB; give the forwarder the same.
                let mut rd = tokio::io::BufReader::with_capacity(256 * 1024, &mut a);
                let _ = tokio::io::copy_buf(&mut rd, &mut b).await;
            });
        }
    });
    Ok(addr)
}

/// The same traffic through the plain forwarder: `size`-byte chunks framed as DERP would.
pub async fn forwarder_throughput(
    addr: SocketAddr,
    pairs: u32,
    size: usize,
    seconds: f64,
) -> io::Result<Throughput> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let framed = size + 5 + 32; // the bytes a RecvPacket of `size` occupies
    let mut tasks = Vec::new();
    for _ in 0..pairs {
        let mut s = TcpStream::connect(addr).await?;
        let mut r = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        tasks.push(tokio::spawn(async move {
            let chunk = vec![0xabu8; framed * 64];
            while Instant::now() < deadline {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            0u64
        }));
        tasks.push(tokio::spawn(async move {
            let mut total = 0u64;
            let mut b = vec![0u8; 64 * 1024];
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                match tokio::time::timeout(remaining, r.read(&mut b)).await {
                    Ok(Ok(n)) if n > 0 => total += n as u64,
                    _ => break,
                }
            }
            total
        }));
    }
    let mut bytes = 0u64;
    for t in tasks {
        bytes += t.await.map_err(io::Error::other)?;
    }
    let packets = bytes / framed as u64;
    Ok(Throughput {
        bytes_per_s: (packets * size as u64) as f64 / seconds,
        packets_per_s: packets as f64 / seconds,
    })
}

/// One-way latency of packets through the relay at `rate` packets per second: (p50, p99).
pub async fn relay_latency(
    url: &DerpUrl,
    rate: u32,
    seconds: f64,
) -> io::Result<(Duration, Duration)> {
    let (ks, kr) = (key(0, 0x61), key(0, 0x62));
    let dst = kr.public_key();
    let sender = connect_raw(url, ks, None, false).await?;
    let receiver = connect_raw(url, kr, None, false).await?;
    let (_s_rd, mut s_wr, mut s_client) = sender.into_parts();
    let (mut r_rd, _r_wr, mut r_client) = receiver.into_parts();
    let origin = Instant::now();
    let count = (rate as f64 * seconds) as u32;
    let send = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        for _ in 0..count {
            tick.tick().await;
            let t = origin.elapsed().as_nanos() as u64;
            let mut p = vec![0u8; 256];
            p[..8].copy_from_slice(&t.to_le_bytes());
            s_client.send_packet(&dst, &p);
            while let Some(b) = s_client.poll_transmit() {
                s_wr.write_all(&b).await?;
            }
        }
        Ok::<(), io::Error>(())
    });
    let mut samples = Vec::with_capacity(count as usize);
    let mut b = vec![0u8; 64 * 1024];
    while samples.len() < count as usize {
        let n = match tokio::time::timeout(Duration::from_secs(5), r_rd.read(&mut b)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        r_client.handle_bytes(&b[..n]).map_err(io::Error::other)?;
        let now = origin.elapsed().as_nanos() as u64;
        while let Some(e) = r_client.poll_event() {
            if let ClientEvent::Packet { data, .. } = e {
                let sent = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
                samples.push(Duration::from_nanos(now.saturating_sub(sent)));
            }
        }
    }
    send.await.map_err(io::Error::other)??;
    percentiles(samples)
}

/// The bare loopback TCP one-way latency at the same rate (the floor under the relay's).
pub async fn tcp_latency(rate: u32, seconds: f64) -> io::Result<(Duration, Duration)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (mut r, _) = listener.accept().await?;
    let origin = Instant::now();
    let count = (rate as f64 * seconds) as u32;
    let send = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        for _ in 0..count {
            tick.tick().await;
            let mut p = [0u8; 256];
            p[..8].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_le_bytes());
            s.write_all(&p).await?;
        }
        Ok::<(), io::Error>(())
    });
    let mut samples = Vec::new();
    let mut p = [0u8; 256];
    for _ in 0..count {
        r.read_exact(&mut p).await?;
        let sent = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
        samples.push(Duration::from_nanos(
            (origin.elapsed().as_nanos() as u64).saturating_sub(sent),
        ));
    }
    send.await.map_err(io::Error::other)??;
    percentiles(samples)
}

/// (p50, p99) of latency samples.
fn percentiles(mut samples: Vec<Duration>) -> io::Result<(Duration, Duration)> {
    if samples.is_empty() {
        return Err(io::Error::other("no packet arrived"));
    }
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    Ok((pick(0.5), pick(0.99)))
}
