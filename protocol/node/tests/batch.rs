//! The batch API is the one-at-a-time API in other clothes: two pairs of engines built alike,
//! one pair driven packet by packet and the other in batches, send the same bytes to the same
//! places, deliver the same packets and report the same events, whatever the script.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_node::{Dest, Event, Input, Node, PacketBatch, TransmitBatch};
use burrow_wg::PublicKey;
use proptest::prelude::*;

mod common;
use common::{lan_pair as pair, A_ADDR, B_ADDR};

/// An IPv4 UDP packet of `len` bytes (at least 28) from `src` to `dst`, its payload `fill`.
fn packet(src: [u8; 4], dst: [u8; 4], len: usize, fill: u8) -> Vec<u8> {
    let len = len.max(28);
    let mut p = vec![fill; len];
    p[..12].copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

/// One step of a script, applied alike to both pairs.
#[derive(Debug, Clone)]
enum Step {
    /// Node `from` sends packets of these sizes to the other (to an address it does not own
    /// when `stray`: refused or dropped alike).
    Send { from: usize, sizes: Vec<usize> },
    /// What each node has to send crosses the LAN, but for the datagrams `lose` picks (bit i
    /// of the mask for the i-th transmit).
    Carry { lose: u64 },
    /// Time passes and the timers run.
    Tick { millis: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..2usize, prop::collection::vec(28..1500usize, 1..12))
            .prop_map(|(from, sizes)| Step::Send { from, sizes }),
        any::<u64>().prop_map(|lose| Step::Carry { lose }),
        (1..3000u64).prop_map(|millis| Step::Tick { millis }),
    ]
}

/// What a pair did over a script: every transmit as it left, every packet delivered and every
/// other event, per node.
#[derive(Debug, Default, PartialEq, Eq)]
struct Record {
    sent: Vec<(usize, Dest, Vec<u8>)>,
    delivered: Vec<(usize, PublicKey, Vec<u8>)>,
    events: Vec<(usize, String)>,
}

fn addr(i: usize) -> SocketAddr {
    [A_ADDR, B_ADDR][i].parse().unwrap()
}

fn ips(i: usize) -> ([u8; 4], [u8; 4]) {
    match i {
        0 => ([100, 64, 0, 1], [100, 64, 0, 2]),
        _ => ([100, 64, 0, 2], [100, 64, 0, 1]),
    }
}

fn input<'a>(from: usize, key: PublicKey, dest: &Dest, data: &'a [u8]) -> Input<'a> {
    match dest {
        Dest::Udp { socket, .. } => Input::Udp {
            socket: *socket,
            from: addr(from),
            data,
        },
        Dest::Derp { .. } => Input::Derp {
            region: 1,
            from: key,
            data,
        },
    }
}

fn note_events(node: usize, n: &mut Node, rec: &mut Record) {
    while let Some(e) = n.poll_event() {
        match e {
            Event::Packet { peer, data } => rec.delivered.push((node, peer, data)),
            other => rec.events.push((node, format!("{other:?}"))),
        }
    }
}

/// The script, one call per packet and input.
fn one_at_a_time(t0: Instant, script: &[Step]) -> Record {
    let mut now = t0;
    let mut nodes = pair(now);
    let mut rec = Record::default();
    // What each node sent and has not crossed yet.
    let mut queued: [Vec<(Dest, Vec<u8>)>; 2] = Default::default();
    let drain = |i: usize, n: &mut Node, rec: &mut Record, q: &mut Vec<(Dest, Vec<u8>)>| {
        while let Some(t) = n.poll_transmit() {
            let (dest, payload) = t.into_parts();
            rec.sent.push((i, dest, payload.clone()));
            q.push((dest, payload));
        }
    };
    for (i, n) in nodes.iter_mut().enumerate() {
        drain(i, n, &mut rec, &mut queued[i]);
        note_events(i, n, &mut rec);
    }
    for s in script {
        match s {
            Step::Send { from, sizes } => {
                let to = nodes[1 - from].public_key();
                let (src, dst) = ips(*from);
                for (k, &len) in sizes.iter().enumerate() {
                    let p = packet(src, dst, len, k as u8);
                    let _ = nodes[*from].send(now, &to, &p);
                }
                drain(*from, &mut nodes[*from], &mut rec, &mut queued[*from]);
                note_events(*from, &mut nodes[*from], &mut rec);
            }
            Step::Carry { lose } => {
                for from in 0..2 {
                    let to = 1 - from;
                    let key = nodes[from].public_key();
                    let q = std::mem::take(&mut queued[from]);
                    for (k, (dest, data)) in q.iter().enumerate() {
                        if k < 64 && lose >> k & 1 == 1 {
                            continue;
                        }
                        let _ = nodes[to].handle_input(now, input(from, key, dest, data));
                    }
                    drain(to, &mut nodes[to], &mut rec, &mut queued[to]);
                    note_events(to, &mut nodes[to], &mut rec);
                }
            }
            Step::Tick { millis } => {
                now += Duration::from_millis(*millis);
                for (i, n) in nodes.iter_mut().enumerate() {
                    n.handle_timeout(now);
                    drain(i, n, &mut rec, &mut queued[i]);
                    note_events(i, n, &mut rec);
                }
            }
        }
    }
    rec
}

/// The same script through the batch calls.
fn batched(t0: Instant, script: &[Step]) -> Record {
    let mut now = t0;
    let mut nodes = pair(now);
    let mut rec = Record::default();
    let mut queued: [TransmitBatch; 2] = Default::default();
    let mut delivered = PacketBatch::new();
    let mut packets = PacketBatch::new();
    let note_sent = |i: usize, rec: &mut Record, q: &TransmitBatch, before: usize| {
        for (dest, bytes) in q.iter().skip(before) {
            rec.sent.push((i, dest, bytes.to_vec()));
        }
    };
    let note_delivered = |i: usize, rec: &mut Record, d: &mut PacketBatch| {
        for (peer, p) in d.iter() {
            rec.delivered.push((i, peer, p.to_vec()));
        }
        d.clear();
    };
    for (i, n) in nodes.iter_mut().enumerate() {
        n.poll_transmits(&mut queued[i]);
        note_sent(i, &mut rec, &queued[i], 0);
        note_events(i, n, &mut rec);
    }
    for s in script {
        match s {
            Step::Send { from, sizes } => {
                let to = nodes[1 - from].public_key();
                let (src, dst) = ips(*from);
                packets.clear();
                for (k, &len) in sizes.iter().enumerate() {
                    packets.push(to, &packet(src, dst, len, k as u8));
                }
                let before = queued[*from].len();
                let outcome =
                    nodes[*from].send_batch(now, &packets, &mut queued[*from], &mut delivered);
                assert_eq!(outcome.handled, sizes.len());
                note_sent(*from, &mut rec, &queued[*from], before);
                note_delivered(*from, &mut rec, &mut delivered);
                note_events(*from, &mut nodes[*from], &mut rec);
            }
            Step::Carry { lose } => {
                for from in 0..2 {
                    let to = 1 - from;
                    let key = nodes[from].public_key();
                    let q = std::mem::take(&mut queued[from]);
                    let inputs = q
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| *k >= 64 || lose >> k & 1 == 0)
                        .map(|(_, (dest, data))| input(from, key, &dest, data));
                    let before = queued[to].len();
                    nodes[to].handle_batch(now, inputs, &mut queued[to], &mut delivered);
                    note_sent(to, &mut rec, &queued[to], before);
                    note_delivered(to, &mut rec, &mut delivered);
                    note_events(to, &mut nodes[to], &mut rec);
                }
            }
            Step::Tick { millis } => {
                now += Duration::from_millis(*millis);
                for (i, n) in nodes.iter_mut().enumerate() {
                    n.handle_timeout(now);
                    let before = queued[i].len();
                    n.poll_transmits(&mut queued[i]);
                    note_sent(i, &mut rec, &queued[i], before);
                    note_events(i, n, &mut rec);
                }
            }
        }
    }
    rec
}

/// Where two records first part: which list, at which index, and the two entries (short).
fn first_difference(a: &Record, b: &Record) -> Option<String> {
    fn diff<T: PartialEq + std::fmt::Debug>(what: &str, x: &[T], y: &[T]) -> Option<String> {
        let short = |v: Option<&T>| {
            let s = format!("{v:?}");
            s.chars().take(160).collect::<String>()
        };
        (0..x.len().max(y.len()))
            .find(|&i| x.get(i) != y.get(i))
            .map(|i| format!("{what}[{i}]: {} | {}", short(x.get(i)), short(y.get(i))))
    }
    diff("sent", &a.sent, &b.sent)
        .or_else(|| diff("delivered", &a.delivered, &b.delivered))
        .or_else(|| diff("events", &a.events, &b.events))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn batches_send_deliver_and_report_exactly_what_single_calls_do(
        script in prop::collection::vec(step(), 1..40)
    ) {
        let t0 = Instant::now();
        let single = one_at_a_time(t0, &script);
        let batch = batched(t0, &script);
        prop_assert_eq!(first_difference(&single, &batch), None);
    }
}

/// A script long enough to reach a direct path and carry data both ways: the comparison above
/// is only worth something if the scripts deliver packets.
#[test]
fn a_busy_script_delivers_packets_both_ways_and_alike() {
    let mut script = Vec::new();
    for round in 0..60 {
        script.push(Step::Tick { millis: 200 });
        script.push(Step::Send {
            from: round % 2,
            sizes: vec![1200; 8],
        });
        script.push(Step::Carry { lose: 0 });
        script.push(Step::Carry { lose: 0 });
    }
    let t0 = Instant::now();
    let single = one_at_a_time(t0, &script);
    let batch = batched(t0, &script);
    let delivered_to = |n: usize| single.delivered.iter().filter(|d| d.0 == n).count();
    assert!(
        delivered_to(0) > 100 && delivered_to(1) > 100,
        "{} and {}",
        delivered_to(0),
        delivered_to(1)
    );
    // Datagrams went direct, in runs.
    assert!(single
        .sent
        .iter()
        .any(|(_, d, b)| matches!(d, Dest::Udp { .. }) && b.len() > 1200));
    assert_eq!(first_difference(&single, &batch), None);
}

/// The batch from `send_batch` holds a burst to one peer as one UDP run once the path is
/// direct and trusted.
#[test]
fn a_burst_to_a_direct_peer_leaves_as_one_run() {
    let script: Vec<Step> = (0..40)
        .flat_map(|_| {
            [
                Step::Tick { millis: 200 },
                Step::Send {
                    from: 0,
                    sizes: vec![1000],
                },
                Step::Carry { lose: 0 },
                Step::Carry { lose: 0 },
            ]
        })
        .collect();
    // Warm the pair up as the script does, then send a burst.
    let mut now = Instant::now();
    let mut nodes = pair(now);
    let mut q: [TransmitBatch; 2] = Default::default();
    let mut delivered = PacketBatch::new();
    let mut packets = PacketBatch::new();
    for s in &script {
        match s {
            Step::Tick { millis } => {
                now += Duration::from_millis(*millis);
                for (i, n) in nodes.iter_mut().enumerate() {
                    n.handle_timeout(now);
                    n.poll_transmits(&mut q[i]);
                }
            }
            Step::Send { .. } => {
                let to = nodes[1].public_key();
                packets.clear();
                packets.push(to, &packet([100, 64, 0, 1], [100, 64, 0, 2], 1000, 0));
                nodes[0].send_batch(now, &packets, &mut q[0], &mut delivered);
            }
            Step::Carry { .. } => {
                for from in 0..2 {
                    let key = nodes[from].public_key();
                    let batch = std::mem::take(&mut q[from]);
                    let inputs = batch.iter().map(|(d, b)| input(from, key, &d, b));
                    nodes[1 - from].handle_batch(now, inputs, &mut q[1 - from], &mut delivered);
                }
            }
        }
    }
    q[0].clear();
    packets.clear();
    let to = nodes[1].public_key();
    for k in 0..16 {
        packets.push(to, &packet([100, 64, 0, 1], [100, 64, 0, 2], 1000, k));
    }
    let outcome = nodes[0].send_batch(now, &packets, &mut q[0], &mut delivered);
    assert_eq!(outcome.refused, 0);
    let runs: Vec<_> = q[0].udp_runs(64).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].count(), 16);
    assert_eq!(runs[0].dst, addr(1));
    assert_eq!(q[0].derp().count(), 0);
}
