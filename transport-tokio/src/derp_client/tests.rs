//! The reconnecting client against scripted relays: Restarting within bounds, a relay that
//! stops reading, URL parsing.

use super::*;
use std::sync::Mutex;

/// One end of an in-memory connection (`buffer` bytes each way) to a sans-IO relay that
/// completes the handshake and flushes what it has to say; then `then` gets the relay and
/// its end of the connection.
async fn admitted_relay<F, Fut>(buffer: usize, then: F) -> io::Result<RawConn>
where
    F: FnOnce(burrow_derp::Server, burrow_derp::ConnId, tokio::io::DuplexStream) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (ours, mut theirs) = tokio::io::duplex(buffer);
    tokio::spawn(async move {
        use burrow_derp::{ConnId, Server, ServerConfig};
        let mut server = Server::new(
            ServerConfig::new(PrivateKey::from_bytes([9; 32])),
            ChaCha20Rng::seed_from_u64(9),
        );
        let id = ConnId(1);
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            theirs.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let now = std::time::Instant::now();
        server.accept(now, id);
        let mut buf = [0u8; 4096];
        while !server.is_admitted(id) {
            while let Some(b) = server.poll_transmit_for(now, id) {
                theirs.write_all(&b).await.unwrap();
            }
            let n = theirs.read(&mut buf).await.unwrap();
            server.handle_bytes(now, id, &buf[..n]);
        }
        while let Some(b) = server.poll_transmit_for(now, id) {
            theirs.write_all(&b).await.unwrap();
        }
        then(server, id, theirs).await;
    });
    let url: DerpUrl = "http://relay.test:80/derp".parse().unwrap();
    upgrade(
        Box::new(ours),
        &url,
        PrivateKey::from_bytes([1; 32]),
        None,
        true,
        ChaCha20Rng::seed_from_u64(1),
    )
    .await
}

/// A relay that announces a restart (`reconnect_in` = u32::MAX ms, about 49.7 days;
/// `try_for` = 60 s) and hangs up.
async fn restarting_relay() -> io::Result<RawConn> {
    admitted_relay(64 * 1024, |mut server, id, mut theirs| async move {
        server.announce_restart(
            Duration::from_millis(u64::from(u32::MAX)),
            Duration::from_secs(60),
        );
        while let Some(b) = server.poll_transmit_for(std::time::Instant::now(), id) {
            theirs.write_all(&b).await.unwrap();
        }
        // Dropping `theirs` hangs up.
    })
    .await
}

/// Audit #12: a Restarting that asks for a 49.7-day wait gets 30 s; its try-for window
/// is honoured with quick retries, then the usual back-off resumes. In tokio's paused
/// (virtual) time: the assertions are on the schedule, not on a real clock.
#[tokio::test(start_paused = true)]
async fn a_relays_restart_wait_is_capped_and_its_try_for_window_honoured() {
    let attempts: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(200);
    let seen = attempts.clone();
    let _client = DerpClient::spawn_with(
        "test".into(),
        move || {
            let now = tokio::time::Instant::now();
            let n = {
                let mut a = seen.lock().unwrap();
                a.push(now);
                a.len()
            };
            async move {
                if n == 1 {
                    restarting_relay().await
                } else if now < end {
                    Err(io::Error::from(io::ErrorKind::ConnectionRefused))
                } else {
                    std::future::pending().await
                }
            }
        },
        ChaCha20Rng::seed_from_u64(7),
    );
    tokio::time::sleep(Duration::from_secs(300)).await;
    let a = attempts.lock().unwrap().clone();
    assert!(a.len() > 3, "{a:?}");
    // The restart wait is capped.
    assert_eq!(a[1] - a[0], MAX_RESTART_WAIT);
    // Within the 60 s try-for window after it: quick retries.
    let window_end = a[1] + Duration::from_secs(60);
    let quick: Vec<_> = a[1..].windows(2).filter(|w| w[1] <= window_end).collect();
    assert!(quick.len() > 150, "{} quick retries", quick.len());
    assert!(quick
        .iter()
        .all(|w| w[1] - w[0] <= RESTART_RETRY.mul_f64(1.25) + Duration::from_millis(1)));
    // After it, the usual (grown) back-off.
    let after: Vec<_> = a.windows(2).filter(|w| w[0] > window_end).collect();
    assert!(!after.is_empty());
    assert!(after.iter().all(|w| w[1] - w[0] >= Duration::from_secs(5)));
}

/// A relay (4 KiB of buffer) that never reads again once the client is admitted; its end
/// is parked in `keep`.
async fn stalled_relay(keep: Arc<Mutex<Vec<tokio::io::DuplexStream>>>) -> io::Result<RawConn> {
    admitted_relay(4096, move |_, _, theirs| async move {
        keep.lock().unwrap().push(theirs); // open, and never read again
    })
    .await
}

/// Security review follow-up (attack `relay-stall`): a relay that stops reading used to
/// block the client's write forever while every packet the node sent piled up in an
/// unbounded queue. Now the queue holds COMMAND_QUEUE packets and drops (and counts) the
/// rest, and after WRITE_TIMEOUT the connection is taken for dead and replaced. In
/// tokio's paused time: the assertions are on what happened, not on a clock.
#[tokio::test(start_paused = true)]
async fn a_relay_that_stops_reading_costs_a_bounded_queue_and_a_reconnect() {
    let keep: Arc<Mutex<Vec<tokio::io::DuplexStream>>> = Arc::default();
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (k, a) = (keep.clone(), attempts.clone());
    let mut client = DerpClient::spawn_with(
        "test".into(),
        move || {
            let n = a.fetch_add(1, Ordering::SeqCst);
            let keep = k.clone();
            async move {
                if n == 0 {
                    stalled_relay(keep).await
                } else {
                    std::future::pending().await
                }
            }
        },
        ChaCha20Rng::seed_from_u64(7),
    );
    client
        .state
        .wait_for(|s| *s == DerpState::Connected)
        .await
        .unwrap();
    let dst = PrivateKey::from_bytes([2; 32]).public_key();
    let sent = 5 * COMMAND_QUEUE as u64;
    for _ in 0..sent {
        client.send(dst, vec![0u8; 1000]);
    }
    assert!(
        client.dropped() >= sent - COMMAND_QUEUE as u64,
        "{} dropped",
        client.dropped()
    );
    tokio::time::sleep(WRITE_TIMEOUT * 3).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "reconnected once");
    let state = client.state.borrow().clone();
    match state {
        DerpState::Connecting {
            last_error: Some(e),
        } => assert!(e.contains("stopped reading"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn parses_relay_urls() {
    let u: DerpUrl = "https://derp1.example.net/derp".parse().unwrap();
    assert_eq!(
        (u.tls, u.host.as_str(), u.port, u.path.as_str()),
        (true, "derp1.example.net", 443, "/derp")
    );
    let u: DerpUrl = "http://127.0.0.1:8080".parse().unwrap();
    assert_eq!((u.tls, u.port, u.path.as_str()), (false, 8080, "/derp"));
    assert_eq!(u.to_string(), "http://127.0.0.1:8080/derp");
    assert!("ftp://x".parse::<DerpUrl>().is_err());
    let v6: DerpUrl = "https://[::1]/derp".parse().unwrap();
    assert_eq!((v6.host.as_str(), v6.port), ("::1", 443));
    let v6p: DerpUrl = "http://[fd00::2]:8080/derp".parse().unwrap();
    assert_eq!((v6p.host.as_str(), v6p.port), ("fd00::2", 8080));
    assert_eq!(v6p.to_string().parse::<DerpUrl>().unwrap(), v6p);
    assert!("http://:80".parse::<DerpUrl>().is_err());
}

/// The upgrade request's Host header names an IPv6 relay in brackets, a name or IPv4 as is.
#[tokio::test]
async fn the_host_header_brackets_an_ipv6_literal() {
    for (url, want) in [
        ("http://[fd00::2]:8080/derp", "Host: [fd00::2]\r\n"),
        ("http://192.0.2.1:8080/derp", "Host: 192.0.2.1\r\n"),
        ("http://relay.test/derp", "Host: relay.test\r\n"),
    ] {
        let url: DerpUrl = url.parse().unwrap();
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let head = tokio::spawn(async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                theirs.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            String::from_utf8(head).unwrap() // dropping `theirs` ends the upgrade
        });
        let r = upgrade(
            Box::new(ours),
            &url,
            PrivateKey::from_bytes([1; 32]),
            None,
            false,
            ChaCha20Rng::seed_from_u64(1),
        )
        .await;
        assert!(r.is_err(), "no answer, no connection");
        let head = head.await.unwrap();
        assert!(head.contains(want), "{url}: {head:?}");
    }
}

fn url(s: &str) -> DerpUrl {
    s.parse().unwrap()
}

fn addrs(s: &[&str]) -> Vec<SocketAddr> {
    s.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn a_regions_fixed_addresses_are_dialled_ipv6_first_on_the_urls_port() {
    let got = region_dial_addrs(
        &url("https://derp.example:8443/derp"),
        Some("192.0.2.1".parse().unwrap()),
        Some("2001:db8::1".parse().unwrap()),
    );
    assert_eq!(got, addrs(&["[2001:db8::1]:8443", "192.0.2.1:8443"]));
    let v4_only = region_dial_addrs(
        &url("https://derp.example/derp"),
        Some("192.0.2.1".parse().unwrap()),
        None,
    );
    assert_eq!(v4_only, addrs(&["192.0.2.1:443"]));
    assert!(region_dial_addrs(&url("https://derp.example/derp"), None, None).is_empty());
}

#[test]
fn a_control_servers_unusable_relay_addresses_are_ignored() {
    let remote = url("https://derp.example/derp");
    for (v4, v6) in [
        ("0.0.0.0", "::"),
        ("224.0.0.1", "ff02::1"),
        ("255.255.255.255", "::ffff:192.0.2.1"),
        // Loopback only for a relay whose URL is on loopback itself.
        ("127.0.0.1", "::1"),
    ] {
        let got = region_dial_addrs(
            &remote,
            Some(v4.parse().unwrap()),
            Some(v6.parse().unwrap()),
        );
        assert!(got.is_empty(), "{v4} {v6}: {got:?}");
    }
    // One bad family leaves the other.
    let got = region_dial_addrs(
        &remote,
        Some("198.51.100.7".parse().unwrap()),
        Some("::".parse().unwrap()),
    );
    assert_eq!(got, addrs(&["198.51.100.7:443"]));
    for local in [
        "http://localhost:3340/derp",
        "http://127.0.0.1:3340/derp",
        "http://[::1]:3340/derp",
    ] {
        let got = region_dial_addrs(
            &url(local),
            Some("127.0.0.1".parse().unwrap()),
            Some("::1".parse().unwrap()),
        );
        assert_eq!(got, addrs(&["[::1]:3340", "127.0.0.1:3340"]), "{local}");
    }
}

/// Ladder finding (congested links): with the data queue backed up behind a slow relay
/// connection, a disco message used to wait behind up to COMMAND_QUEUE data packets, or be
/// dropped with them. It now takes its own lane and is written next.
#[tokio::test(start_paused = true)]
async fn disco_goes_ahead_of_data_queued_for_a_slow_relay() {
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<usize>();
    let slot = Arc::new(Mutex::new(Some((go_rx, seen_tx))));
    let mut client = DerpClient::spawn_with(
        "test".into(),
        move || {
            let slot = slot.clone();
            async move {
                let Some((go, seen)) = slot.lock().unwrap().take() else {
                    return std::future::pending().await;
                };
                admitted_relay(4096, move |_, _, mut theirs| async move {
                    let _ = go.await;
                    // Read until the disco magic shows up; report how many bytes came first.
                    let mut stream = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = theirs.read(&mut buf).await.unwrap();
                        stream.extend_from_slice(&buf[..n]);
                        let at = stream
                            .windows(burrow_disco::MAGIC.len())
                            .position(|w| w == burrow_disco::MAGIC);
                        if let Some(at) = at {
                            let _ = seen.send(at);
                            return;
                        }
                    }
                })
                .await
            }
        },
        ChaCha20Rng::seed_from_u64(8),
    );
    client
        .state
        .wait_for(|s| *s == DerpState::Connected)
        .await
        .unwrap();
    let dst = PrivateKey::from_bytes([2; 32]).public_key();
    for _ in 0..500 {
        client.send(dst, vec![0u8; 1000]);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut disco = burrow_disco::MAGIC.to_vec();
    disco.resize(200, 1);
    assert!(burrow_disco::looks_like_disco(&disco));
    client.send(dst, disco);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let _ = go_tx.send(());
    let before = seen_rx.await.expect("the relay saw the disco message");
    // What was already written (the 4 KiB pipe, one blocked write of at most SEND_BATCH
    // packets) comes first, not the hundreds of data packets still queued.
    let frame = 5 + 32 + 1000;
    assert!(
        before <= 4096 + SEND_BATCH * frame,
        "{before} bytes of data went first"
    );
    assert_eq!(client.dropped(), 0);
}
