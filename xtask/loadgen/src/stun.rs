//! A STUN load generator for `cargo xtask bench stun`: blocking sockets on threads, each keeping
//! a window of Binding requests outstanding, counting answers and losses.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_stun::{Encoder, MessageType, TransactionId};

/// Load shape.
#[derive(Debug, Clone, Copy)]
pub struct LoadConfig {
    /// The server under test.
    pub target: SocketAddr,
    /// Sending threads, one socket each.
    pub threads: usize,
    /// Requests outstanding per socket.
    pub window: usize,
    /// How long to send.
    pub duration: Duration,
    /// A request unanswered this long counts as lost.
    pub loss_timeout: Duration,
}

/// What a run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadResult {
    /// Requests sent.
    pub sent: u64,
    /// Valid answers received.
    pub answered: u64,
    /// Requests that got no answer in time.
    pub lost: u64,
    /// Seconds measured.
    pub seconds: f64,
}

impl LoadResult {
    /// Answered requests per second.
    pub fn rate(&self) -> f64 {
        self.answered as f64 / self.seconds
    }

    /// Fraction of requests unanswered.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost as f64 / self.sent as f64
        }
    }
}

/// Runs the load and returns the totals.
pub fn run(config: LoadConfig) -> io::Result<LoadResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..config.threads.max(1) {
        let socket = UdpSocket::bind(if config.target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })?;
        socket.connect(config.target)?;
        socket.set_read_timeout(Some(config.loss_timeout))?;
        let stop = stop.clone();
        handles.push(std::thread::spawn(move || {
            worker(socket, t as u32, config, &stop)
        }));
    }
    let start = Instant::now();
    std::thread::sleep(config.duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = LoadResult::default();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| io::Error::other("load thread panicked"))??;
        total.sent += r.sent;
        total.answered += r.answered;
        total.lost += r.lost;
    }
    total.seconds = start.elapsed().as_secs_f64();
    Ok(total)
}

fn worker(
    socket: UdpSocket,
    thread: u32,
    config: LoadConfig,
    stop: &AtomicBool,
) -> io::Result<LoadResult> {
    let mut r = LoadResult::default();
    let mut seq: u64 = 0;
    let mut req = Vec::with_capacity(64);
    let mut buf = [0u8; 1024];
    let mut outstanding = 0usize;
    let mut send = |seq: &mut u64, r: &mut LoadResult| -> io::Result<()> {
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&thread.to_be_bytes());
        id[4..].copy_from_slice(&seq.to_be_bytes());
        *seq += 1;
        req.clear();
        Encoder::new(MessageType::BINDING_REQUEST, TransactionId(id))
            .encode(&mut req)
            .map_err(io::Error::other)?;
        socket.send(&req)?;
        r.sent += 1;
        Ok(())
    };
    while !stop.load(Ordering::Relaxed) {
        while outstanding < config.window {
            send(&mut seq, &mut r)?;
            outstanding += 1;
        }
        match socket.recv(&mut buf) {
            Ok(n) => {
                // Count only well-formed success responses to this thread's requests.
                if let Ok(msg) = burrow_stun::Message::parse(&buf[..n]) {
                    if msg.message_type() == MessageType::BINDING_SUCCESS
                        && msg.transaction_id().0[..4] == thread.to_be_bytes()
                        && msg.mapped_address().is_some()
                    {
                        r.answered += 1;
                        outstanding = outstanding.saturating_sub(1);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // The whole window went unanswered: count it lost and start a fresh one.
                r.lost += outstanding as u64;
                outstanding = 0;
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                r.lost += outstanding as u64;
                outstanding = 0;
                std::thread::sleep(config.loss_timeout);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(r)
}
