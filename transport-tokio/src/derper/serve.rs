//! One connection's life: TLS, the HTTP request (`/generate_204`, `/health`, `/metrics`, the
//! DERP upgrade), then DERP frames both ways until either side ends.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use burrow_derp::{ConnId, Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::transport::{now, Stream};

use super::{spawn_timers, ConnHandle, PendingSlot, Relay};

/// How long a client may take to send its request head (and TLS handshake).
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// How long one write to a client may block before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Back-off after a failed accept (out of file descriptors, kernel memory): doubles from the
/// first to the second while failures last.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// A connection's read buffer while idle; it grows to [`LARGE_READ`] while data streams in
/// and goes back before the connection waits again.
const SMALL_READ: usize = 4096;
/// See [`SMALL_READ`].
const LARGE_READ: usize = 64 * 1024;

/// Serves one accepted connection (TLS if configured, HTTP, then DERP after the upgrade): for
/// listeners other than tokio's, such as the simulator's. Call [`spawn_timers`] once per relay.
pub async fn serve_stream(
    relay: Arc<Relay>,
    stream: Box<dyn Stream>,
    peer: SocketAddr,
) -> io::Result<()> {
    let Some(slot) = relay.admit_pending(peer.ip()) else {
        return Ok(()); // dropping the stream closes it
    };
    let kick = slot.kick.clone();
    let work = async {
        match relay.tls.clone() {
            Some(acceptor) => {
                match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => handle_http(relay.clone(), Box::new(tls), peer, slot).await,
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS handshake too slow",
                    )),
                }
            }
            None => handle_http(relay.clone(), stream, peer, slot).await,
        }
    };
    // Evicted while still unauthenticated: a newer connection needed the place.
    tokio::select! {
        r = work => r,
        () = kick.notified() => Err(io::Error::other("closed to make room for newer connections")),
    }
}

/// Whether an accept error concerns only the connection being accepted (retry at once),
/// rather than the process (out of descriptors or memory: back off).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Serves HTTP(S) on `listener` until the task is dropped. Accept errors never end it: they
/// are logged and followed by a back-off (10 ms doubling to 1 s), as out of file
/// descriptors is a state that passes.
pub async fn serve(relay: Arc<Relay>, listener: TcpListener) -> io::Result<()> {
    spawn_timers(relay.clone());
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF.0;
                accepted
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                relay.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // On a dual-stack listener an IPv4 client is one IPv4 source, as before.
        let peer = crate::dual_stack::canonical(peer);
        let relay = relay.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_stream(relay, Box::new(tcp), peer).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

/// Reads an HTTP/1.1 request head (at most 16 KiB); returns it and any bytes after it.
async fn read_head(stream: &mut Box<dyn Stream>) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP request head too large",
            ));
        }
    }
}

async fn respond(
    stream: &mut Box<dyn Stream>,
    status: &str,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

async fn handle_http(
    relay: Arc<Relay>,
    mut stream: Box<dyn Stream>,
    peer: SocketAddr,
    slot: Arc<PendingSlot>,
) -> io::Result<()> {
    let (head, rest) = tokio::time::timeout(HANDSHAKE_DEADLINE, read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "HTTP request too slow"))??;
    relay.http_requests.fetch_add(1, Ordering::Relaxed);
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
        return respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            "bad request\n",
        )
        .await;
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let path = req
        .path
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_owned();
    match (req.method.unwrap_or(""), path.as_str()) {
        ("GET", "/derp") => {
            if !header("Upgrade").is_some_and(|u| u.eq_ignore_ascii_case("DERP")) {
                return respond(
                    &mut stream,
                    "426 Upgrade Required",
                    "text/plain",
                    "DERP requires connection upgrade\n",
                )
                .await;
            }
            let fast_start = header("Derp-Fast-Start").as_deref() == Some("1");
            if !fast_start {
                let key = relay.server.lock().expect("server").public_key();
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\nDerp-Public-Key: {}\r\n\r\n",
                    key.0.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
                stream.write_all(head.as_bytes()).await?;
            }
            run_derp(relay, stream, rest, peer, slot).await
        }
        ("GET", "/derp/probe") | ("GET", "/derp/latency-check") => {
            respond(&mut stream, "200 OK", "text/plain", "").await
        }
        ("GET", "/generate_204") => {
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .await?;
            stream.flush().await
        }
        ("GET", "/health") => {
            respond(&mut stream, "200 OK", "text/plain", "derp server ok\n").await
        }
        ("GET", "/metrics") => {
            let body = relay.metrics();
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        ("GET", "/") => {
            respond(
                &mut stream,
                "200 OK",
                "text/plain",
                "This is a burrow DERP relay.\n",
            )
            .await
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
    }
}

/// A connection's read buffer: [`SMALL_READ`] while idle (idle clients must cost little),
/// [`LARGE_READ`] while data streams in, given back before the connection waits again (it
/// used to stay at 64 KiB for good after one large read).
struct ReadBuf {
    buf: Vec<u8>,
}

impl ReadBuf {
    fn new() -> Self {
        ReadBuf {
            buf: vec![0; SMALL_READ],
        }
    }

    /// Reads once from `rd`; the bytes are then [`ReadBuf::filled`].
    async fn read<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> io::Result<usize> {
        use std::future::Future;
        if self.buf.len() > SMALL_READ {
            // Large: read at once what is already there; if nothing is, shrink, then wait.
            let ready = {
                let mut read = std::pin::pin!(rd.read(&mut self.buf));
                std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await
            };
            match ready {
                std::task::Poll::Ready(r) => return r,
                std::task::Poll::Pending => self.buf = vec![0; SMALL_READ],
            }
        }
        let n = rd.read(&mut self.buf).await?;
        if n == self.buf.len() && self.buf.len() < LARGE_READ {
            self.buf.resize(LARGE_READ, 0);
        }
        Ok(n)
    }

    fn filled(&self, n: usize) -> &[u8] {
        &self.buf[..n]
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// One DERP connection: a reader feeding the server, a writer draining this connection's
/// queue as fast as the socket takes it.
async fn run_derp(
    relay: Arc<Relay>,
    stream: Box<dyn Stream>,
    already: Vec<u8>,
    peer: SocketAddr,
    slot: Arc<PendingSlot>,
) -> io::Result<()> {
    let id = ConnId(relay.next_conn.fetch_add(1, Ordering::Relaxed));
    relay.connections_total.fetch_add(1, Ordering::Relaxed);
    let wake = Arc::new(Notify::new());
    let closed = Arc::new(AtomicBool::new(false));
    relay.conns.lock().expect("conns").insert(
        id,
        ConnHandle {
            wake: wake.clone(),
            closed: closed.clone(),
        },
    );
    {
        let mut server = relay.server.lock().expect("server");
        server.accept_from(now(), id, Some(peer.ip()));
        if !already.is_empty() {
            server.handle_bytes(now(), id, &already);
        }
        relay.dispatch(&mut server);
    }
    // Leaves the gate once the server admitted the client (seen by whichever half first).
    let admitted = Arc::new(AtomicBool::new(false));
    let note_admitted = {
        let (slot, admitted) = (slot.clone(), admitted.clone());
        move |server: &Server| {
            if !admitted.load(Ordering::Relaxed) && server.is_admitted(id) {
                admitted.store(true, Ordering::Relaxed);
                slot.release();
            }
        }
    };
    drop(slot);
    tracing::debug!(conn = id.0, %peer, "DERP connection");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = {
        let (relay, wake, closed) = (relay.clone(), wake.clone(), closed.clone());
        let note_admitted = note_admitted.clone();
        async move {
            // Everything queued for this connection goes out in one write: one lock and one
            // syscall per wake-up, not per frame.
            let mut batch: Vec<u8> = Vec::new();
            loop {
                loop {
                    batch.clear();
                    {
                        let mut server = relay.server.lock().expect("server");
                        server.write_transmit_for(now(), id, &mut batch, 256 * 1024);
                        note_admitted(&server);
                    }
                    if batch.is_empty() {
                        break;
                    }
                    // A client that stops reading must not pin its writer forever (as
                    // Tailscale's 2 s write deadline).
                    match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&batch)).await {
                        Ok(r) => r?,
                        Err(_) => {
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "client stopped reading",
                            ))
                        }
                    }
                }
                if batch.capacity() > SMALL_READ {
                    batch = Vec::new(); // an idle connection keeps no large buffer
                }
                wr.flush().await?;
                if closed.load(Ordering::SeqCst) {
                    let _ = wr.shutdown().await;
                    return Ok::<(), io::Error>(());
                }
                wake.notified().await;
            }
        }
    };
    let reader = {
        let (relay, closed) = (relay.clone(), closed.clone());
        async move {
            let mut buf = ReadBuf::new();
            loop {
                let n = buf.read(&mut rd).await?;
                if n == 0 || closed.load(Ordering::SeqCst) {
                    return Ok::<(), io::Error>(());
                }
                let mut server = relay.server.lock().expect("server");
                server.handle_bytes(now(), id, buf.filled(n));
                note_admitted(&server);
                relay.dispatch(&mut server);
            }
        }
    };
    let result = tokio::select! {
        r = writer => r,
        r = reader => r,
    };
    relay.conns.lock().expect("conns").remove(&id);
    let mut server = relay.server.lock().expect("server");
    server.disconnected(id);
    relay.dispatch(&mut server);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// Security review follow-up (derper memory): the read buffer grows while data streams
    /// in and is given back as soon as the connection has nothing more to read, before it
    /// waits (it used to stay at 64 KiB for the life of the connection).
    #[tokio::test]
    async fn the_read_buffer_shrinks_before_the_connection_waits() {
        let (mut ours, theirs) = tokio::io::duplex(256 * 1024);
        let (mut rd, _wr) = tokio::io::split(theirs);
        ours.write_all(&[7u8; 100_000]).await.unwrap();
        let mut buf = ReadBuf::new();
        let mut total = 0;
        while total < 100_000 {
            let n = buf.read(&mut rd).await.unwrap();
            assert!(buf.filled(n).iter().all(|b| *b == 7));
            total += n;
        }
        assert!(buf.capacity() >= LARGE_READ, "grew while data streamed in");
        // Nothing more to read: the next read waits, with the small buffer.
        assert!(buf.read(&mut rd).now_or_never().is_none());
        assert_eq!(buf.capacity(), SMALL_READ);
        ours.write_all(b"more").await.unwrap();
        let n = buf.read(&mut rd).await.unwrap();
        assert_eq!(buf.filled(n), b"more");
    }
}
