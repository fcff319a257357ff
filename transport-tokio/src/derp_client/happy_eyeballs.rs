//! Happy Eyeballs (RFC 8305) for the TCP connection to a relay: the relay's addresses are
//! tried IPv6 first, alternating families; each next attempt starts when an attempt has
//! failed or after the Connection Attempt Delay, and the first connection made wins (the
//! attempts still running are dropped, which closes their sockets).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

/// RFC 8305 §5's recommended Connection Attempt Delay: how long an attempt runs alone before
/// the next address is tried alongside it.
pub const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The order to try addresses in (RFC 8305 §4): duplicates removed, then IPv6 and IPv4
/// alternating, IPv6 first, each family in the order given (the resolver's).
pub fn sort_addresses(addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut v6 = Vec::new();
    let mut v4 = Vec::new();
    for a in addrs {
        let a = crate::dual_stack::canonical(a);
        let family = if a.is_ipv6() { &mut v6 } else { &mut v4 };
        if !family.contains(&a) {
            family.push(a);
        }
    }
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut v6, mut v4) = (v6.into_iter(), v4.into_iter());
    loop {
        match (v6.next(), v4.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Races `connect` over `addrs` (in the order given; see [`sort_addresses`]): the first
/// address at once, each next one `delay` after the previous attempt started or as soon as
/// an attempt fails. Returns the first success and its address; the other
/// attempts are dropped. When every attempt fails, the error names each address's failure.
pub async fn race<T, F, Fut>(
    addrs: &[SocketAddr],
    delay: Duration,
    mut connect: F,
) -> io::Result<(SocketAddr, T)>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let mut start = |a: SocketAddr| {
        let attempt = connect(a);
        async move { (a, attempt.await) }
    };
    let mut next = addrs.iter().copied();
    let Some(first) = next.next() else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no address to connect to",
        ));
    };
    let mut running = FuturesUnordered::new();
    running.push(start(first));
    let mut failures: Vec<(SocketAddr, io::Error)> = Vec::new();
    let timer = tokio::time::sleep(delay);
    tokio::pin!(timer);
    loop {
        let more = next.len() > 0;
        tokio::select! {
            biased;
            Some((a, r)) = running.next() => match r {
                Ok(conn) => return Ok((a, conn)),
                Err(e) => {
                    tracing::debug!(addr = %a, error = %e, "connection attempt failed");
                    failures.push((a, e));
                    match next.next() {
                        Some(b) => {
                            running.push(start(b));
                            timer.as_mut().reset(tokio::time::Instant::now() + delay);
                        }
                        None if running.is_empty() => return Err(all_failed(failures)),
                        None => {}
                    }
                }
            },
            () = &mut timer, if more => {
                if let Some(b) = next.next() {
                    running.push(start(b));
                }
                timer.as_mut().reset(tokio::time::Instant::now() + delay);
            }
        }
    }
}

/// One error for every failed attempt: the last one's kind, every address's message.
fn all_failed(failures: Vec<(SocketAddr, io::Error)>) -> io::Error {
    let kind = failures
        .last()
        .map_or(io::ErrorKind::NotFound, |(_, e)| e.kind());
    let text = failures
        .iter()
        .map(|(a, e)| format!("{a}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    io::Error::new(kind, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    const V6: &str = "[2001:db8::1]:443";
    const V4: &str = "192.0.2.1:443";

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// How a fake address answers a connect.
    #[derive(Clone, Copy)]
    enum Fake {
        /// Connects after this long.
        Ok(u64),
        /// Is refused after this long.
        Refused(u64),
        /// Never answers (a black hole).
        Hang,
    }

    /// Attempts started (address, milliseconds since the test's start) and attempts dropped
    /// unfinished.
    #[derive(Default)]
    struct Log {
        started: Vec<(SocketAddr, u64)>,
        dropped: Vec<SocketAddr>,
    }

    struct DropGuard(SocketAddr, Arc<Mutex<Log>>, bool);
    impl Drop for DropGuard {
        fn drop(&mut self) {
            if !self.2 {
                self.1.lock().unwrap().dropped.push(self.0);
            }
        }
    }

    /// Runs the race over `plan` with a fake connector; returns the winner, when it won (ms)
    /// and the log.
    async fn run(plan: &[(&str, Fake)]) -> (io::Result<SocketAddr>, u64, Log) {
        let t0 = Instant::now();
        let log = Arc::new(Mutex::new(Log::default()));
        let addrs: Vec<SocketAddr> = plan.iter().map(|(s, _)| a(s)).collect();
        let plan: Vec<(SocketAddr, Fake)> = plan.iter().map(|(s, f)| (a(s), *f)).collect();
        let r = race(&addrs, CONNECTION_ATTEMPT_DELAY, |addr| {
            let fake = plan.iter().find(|(x, _)| *x == addr).unwrap().1;
            let log = log.clone();
            log.lock()
                .unwrap()
                .started
                .push((addr, t0.elapsed().as_millis() as u64));
            async move {
                let mut guard = DropGuard(addr, log, false);
                let r = match fake {
                    Fake::Ok(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(addr)
                    }
                    Fake::Refused(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Err(io::Error::from(io::ErrorKind::ConnectionRefused))
                    }
                    Fake::Hang => std::future::pending().await,
                };
                guard.2 = true;
                r
            }
        })
        .await
        .map(|(winner, conn)| {
            assert_eq!(winner, conn);
            winner
        });
        let at = t0.elapsed().as_millis() as u64;
        let log = std::mem::take(&mut *log.lock().unwrap());
        (r, at, log)
    }

    #[tokio::test(start_paused = true)]
    async fn both_working_ipv6_wins_and_ipv4_is_never_tried() {
        let (r, at, log) = run(&[(V6, Fake::Ok(20)), (V4, Fake::Ok(1))]).await;
        assert_eq!(r.unwrap(), a(V6));
        assert_eq!(at, 20);
        assert_eq!(log.started, vec![(a(V6), 0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_refused_starts_ipv4_at_once() {
        let (r, at, log) = run(&[(V6, Fake::Refused(5)), (V4, Fake::Ok(10))]).await;
        assert_eq!(r.unwrap(), a(V4));
        assert_eq!(log.started, vec![(a(V6), 0), (a(V4), 5)]);
        assert_eq!(at, 15, "not held back by the attempt delay");
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_blackholed_ipv4_starts_after_the_delay_and_wins() {
        let (r, at, log) = run(&[(V6, Fake::Hang), (V4, Fake::Ok(10))]).await;
        assert_eq!(r.unwrap(), a(V4));
        assert_eq!(log.started, vec![(a(V6), 0), (a(V4), 250)]);
        assert_eq!(at, 260);
        assert_eq!(log.dropped, vec![a(V6)], "the hanging attempt is dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_slow_ipv4_started_at_250ms_wins() {
        let (r, at, log) = run(&[(V6, Fake::Ok(400)), (V4, Fake::Ok(30))]).await;
        assert_eq!(r.unwrap(), a(V4));
        assert_eq!(log.started, vec![(a(V6), 0), (a(V4), 250)]);
        assert_eq!(at, 280);
        assert_eq!(log.dropped, vec![a(V6)]);
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_slow_but_first_to_finish_still_wins() {
        let (r, at, log) = run(&[(V6, Fake::Ok(300)), (V4, Fake::Ok(100))]).await;
        assert_eq!(r.unwrap(), a(V6));
        assert_eq!(at, 300);
        assert_eq!(log.started, vec![(a(V6), 0), (a(V4), 250)]);
        assert_eq!(log.dropped, vec![a(V4)]);
    }

    #[tokio::test(start_paused = true)]
    async fn every_address_failing_is_one_error_naming_each() {
        let (r, at, log) = run(&[
            (V6, Fake::Refused(300)),
            (V4, Fake::Refused(10)),
            ("[2001:db8::2]:443", Fake::Refused(1)),
        ])
        .await;
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let text = e.to_string();
        for addr in [V6, V4, "[2001:db8::2]:443"] {
            assert!(text.contains(addr), "{text}");
        }
        // v6 at 0, v4 at 250 (fails at 260), the third at once then (fails at 261), v6 at 300.
        assert_eq!(
            log.started,
            vec![(a(V6), 0), (a(V4), 250), (a("[2001:db8::2]:443"), 260)]
        );
        assert_eq!(at, 300);
    }

    #[tokio::test]
    async fn no_address_is_an_error() {
        let r = race(&[], CONNECTION_ATTEMPT_DELAY, |_| async { Ok(()) }).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn addresses_alternate_families_ipv6_first() {
        let got = sort_addresses([
            a("192.0.2.1:1"),
            a("192.0.2.2:1"),
            a("192.0.2.3:1"),
            a("[2001:db8::1]:1"),
            a("[::ffff:192.0.2.2]:1"),
            a("[2001:db8::2]:1"),
        ]);
        assert_eq!(
            got,
            vec![
                a("[2001:db8::1]:1"),
                a("192.0.2.1:1"),
                a("[2001:db8::2]:1"),
                a("192.0.2.2:1"),
                a("192.0.2.3:1"),
            ]
        );
    }
}
