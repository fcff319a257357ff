//! Helpers for the tests of `burrow derper` as a process: the relay, plain HTTP, client keys,
//! and burrow's tokio DERP clients connecting and delivering.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use burrow::derp_client::{DerpClient, DerpState};
use burrow_derp::ClientEvent;
use burrow_wg::PrivateKey;

use super::Running as Derper;

pub fn derper(args: &[&str]) -> Derper {
    super::start("derper", args)
}

pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

pub fn key(n: u8) -> PrivateKey {
    PrivateKey::from_bytes([n; 32])
}

pub async fn connected(c: &mut DerpClient) {
    tokio::time::timeout(
        Duration::from_secs(15),
        c.state.wait_for(|s| *s == DerpState::Connected),
    )
    .await
    .expect("connects in time")
    .unwrap();
}

/// Sends until one arrives (the relay may still be learning about the destination).
pub async fn deliver(
    from: &DerpClient,
    to: &mut DerpClient,
    dst: burrow_wg::PublicKey,
    data: &[u8],
) -> burrow_wg::PublicKey {
    for _ in 0..50 {
        from.send(dst, data.to_vec());
        if let Ok(Some(ClientEvent::Packet { src, data: got })) =
            tokio::time::timeout(Duration::from_millis(200), async {
                loop {
                    match to.events.recv().await {
                        Some(e @ ClientEvent::Packet { .. }) => return Some(e),
                        Some(_) => continue,
                        None => return None,
                    }
                }
            })
            .await
        {
            assert_eq!(got, data);
            return src;
        }
    }
    panic!("packet never arrived");
}
