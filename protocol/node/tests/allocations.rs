//! The data path allocates nothing per packet in steady state: 10,000 packets through two
//! engines on a confirmed direct path, every payload recycled, under an allocator that counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_node::{Dest, Event, Input, Node, PacketBatch, Transmit, TransmitBatch};
use burrow_punch::Route;
use burrow_wg::PublicKey;

/// Counts this thread's allocations (other test threads do not disturb the count).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; the count is a thread-local `Cell` with a const
// initializer, which neither allocates nor runs a destructor.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

mod common;
use common::{lan_pair, A_ADDR, B_ADDR};

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Carries everything `from` sends to `to` (both on one LAN; DERP straight across), recycling
/// each payload into the sender; returns how many packets `to` delivered, recycling them too.
fn carry(now: Instant, from: &mut Node, from_addr: SocketAddr, to: &mut Node) -> usize {
    let key = from.public_key();
    while let Some(t) = from.poll_transmit() {
        let payload = match t {
            Transmit::Udp {
                socket, payload, ..
            } => {
                let input = Input::Udp {
                    socket,
                    from: from_addr,
                    data: &payload,
                };
                let _ = to.handle_input(now, input);
                payload
            }
            Transmit::Derp { payload, .. } => {
                let input = Input::Derp {
                    region: 1,
                    from: key,
                    data: &payload,
                };
                let _ = to.handle_input(now, input);
                payload
            }
        };
        from.recycle(payload);
    }
    let mut delivered = 0;
    while let Some(e) = to.poll_event() {
        if let Event::Packet { data, .. } = e {
            delivered += 1;
            to.recycle(data);
        }
    }
    delivered
}

#[test]
fn ten_thousand_packets_allocate_nothing_once_the_path_is_direct() {
    let mut now = Instant::now();
    let (a_addr, b_addr) = (A_ADDR.parse().unwrap(), B_ADDR.parse().unwrap());
    let [mut a, mut b] = lan_pair(now);
    let (a_key, b_key) = (a.public_key(), b.public_key());
    // 1280 bytes from a's tailnet address to b's.
    let mut packet = vec![0u8; 1280];
    packet[..20].copy_from_slice(&[
        0x45, 0, 5, 0, 0, 0, 0, 0, 64, 17, 0, 0, 100, 64, 0, 1, 100, 64, 0, 2,
    ]);
    let step = |now: Instant, a: &mut Node, b: &mut Node| {
        let mut got = 0;
        for _ in 0..4 {
            got += carry(now, a, a_addr, b);
            carry(now, b, b_addr, a);
        }
        got
    };
    // Warm up: pings, the handshake, a confirmed direct path, and traffic both ways until
    // the queues and spare buffers have their working sizes.
    for _ in 0..200 {
        now += Duration::from_millis(50);
        a.handle_timeout(now);
        b.handle_timeout(now);
        a.send(now, &b_key, &packet).unwrap();
        step(now, &mut a, &mut b);
    }
    assert!(
        matches!(a.route(&b_key), Some(Route::Direct(addr)) if addr == b_addr),
        "{:?}",
        a.route(&b_key)
    );
    assert!(matches!(b.route(&a_key), Some(Route::Direct(_))));
    let before = allocations();
    let mut delivered = 0;
    for _ in 0..10_000 {
        now += Duration::from_micros(50);
        a.send(now, &b_key, &packet).unwrap();
        delivered += step(now, &mut a, &mut b);
    }
    let made = allocations() - before;
    assert_eq!(delivered, 10_000);
    assert_eq!(made, 0, "{made} allocations over 10,000 packets");
}

/// Carries `out` (what `from` sent) into `to` as one batch; returns how many packets `to`
/// delivered. `out` ends empty, `replies` holds what `to` sends back.
fn carry_batch(
    now: Instant,
    from: (PublicKey, SocketAddr),
    out: &mut TransmitBatch,
    to: &mut Node,
    replies: &mut TransmitBatch,
    delivered: &mut PacketBatch,
) -> usize {
    let (key, addr) = from;
    let inputs = out.iter().map(|(dest, data)| match dest {
        Dest::Udp { socket, .. } => Input::Udp {
            socket,
            from: addr,
            data,
        },
        Dest::Derp { .. } => Input::Derp {
            region: 1,
            from: key,
            data,
        },
    });
    to.handle_batch(now, inputs, replies, delivered);
    out.clear();
    let n = delivered.len();
    delivered.clear();
    n
}

#[test]
fn ten_thousand_packets_in_batches_allocate_nothing_once_the_path_is_direct() {
    let mut now = Instant::now();
    let (a_addr, b_addr): (SocketAddr, SocketAddr) =
        (A_ADDR.parse().unwrap(), B_ADDR.parse().unwrap());
    let [mut a, mut b] = lan_pair(now);
    let (a_key, b_key) = (a.public_key(), b.public_key());
    let mut packet = vec![0u8; 1280];
    packet[..20].copy_from_slice(&[
        0x45, 0, 5, 0, 0, 0, 0, 0, 64, 17, 0, 0, 100, 64, 0, 1, 100, 64, 0, 2,
    ]);
    // Sixteen packets per batch, as a TUN read of a super-packet hands over.
    let mut packets = PacketBatch::new();
    for _ in 0..16 {
        packets.push(b_key, &packet);
    }
    let (mut a_out, mut b_out) = (TransmitBatch::new(), TransmitBatch::new());
    let mut delivered = PacketBatch::new();
    let mut round = |now: Instant,
                     a: &mut Node,
                     b: &mut Node,
                     a_out: &mut TransmitBatch,
                     b_out: &mut TransmitBatch| {
        a.send_batch(now, &packets, a_out, &mut delivered);
        let mut got = 0;
        for _ in 0..3 {
            got += carry_batch(now, (a_key, a_addr), a_out, b, b_out, &mut delivered);
            carry_batch(now, (b_key, b_addr), b_out, a, a_out, &mut delivered);
        }
        got
    };
    for _ in 0..200 {
        now += Duration::from_millis(50);
        a.handle_timeout(now);
        a.poll_transmits(&mut a_out);
        b.handle_timeout(now);
        b.poll_transmits(&mut b_out);
        round(now, &mut a, &mut b, &mut a_out, &mut b_out);
    }
    assert!(matches!(a.route(&b_key), Some(Route::Direct(addr)) if addr == b_addr));
    let before = allocations();
    let mut delivered = 0;
    for _ in 0..625 {
        now += Duration::from_micros(800);
        delivered += round(now, &mut a, &mut b, &mut a_out, &mut b_out);
    }
    let made = allocations() - before;
    assert_eq!(delivered, 10_000);
    assert_eq!(made, 0, "{made} allocations over 10,000 packets in batches");
}
