//! A box with hairpinning delivers a packet sent to its own public mapping back inside;
//! without it, the packet is dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow::transport::UdpTransport;
use burrow_sim::capture::Recorder;
use burrow_sim::net::{run_box, BoxKind, BoxSpec, BoxUplink, Link, LinkConfig, SimSocket, Uplink};
use burrow_sim::preset;
use burrow_sim::wire::GATEWAY_PORT;

fn hairpin_delivers(hairpin: bool) -> Option<SocketAddr> {
    let mut nat = preset::single("full-cone").unwrap();
    nat.hairpin = hairpin;
    let box_ip = "203.0.113.1".parse().unwrap();
    let node_ip = "10.0.0.2".parse().unwrap();
    let rec = Arc::new(Recorder::new(false, false));
    let got: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(5))
        .build();
    let spec = BoxSpec {
        name: "home".into(),
        ip: box_ip,
        kind: BoxKind::Nat(nat),
        uplink: BoxUplink::Internet(LinkConfig::default()),
        seed: 1,
        inside_links: Vec::new(),
    };
    let r = rec.clone();
    sim.host(box_ip, move || run_box(spec.clone(), r.clone(), 1));
    let (r, g) = (rec.clone(), got.clone());
    sim.client(node_ip, async move {
        let link = Link::new("node", LinkConfig::with_latency(1.0), 1, r.clone());
        let gateway = SocketAddr::new(box_ip, GATEWAY_PORT);
        let s = SimSocket::bind(
            SocketAddr::new(node_ip, 40000),
            Uplink::Gateway { gateway, link },
            r.clone(),
        )
        .await?;
        // Full cone preserves the port: the public mapping is box_ip:40000.
        let public = SocketAddr::new(box_ip, 40000);
        s.send_to(b"hello me", public).await?;
        let mut buf = [0u8; 64];
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_secs(1), s.recv_from(&mut buf)).await
        {
            assert_eq!(&buf[..n], b"hello me");
            *g.lock().unwrap() = Some(from);
        }
        Ok(())
    });
    sim.run().unwrap();
    let r = *got.lock().unwrap();
    r
}

#[test]
fn hairpinning_on_and_off() {
    assert_eq!(
        hairpin_delivers(true),
        Some("203.0.113.1:40000".parse().unwrap()),
        "seen from the public mapping"
    );
    assert_eq!(hairpin_delivers(false), None);
}
