//! Sealing and opening split from the device's state: counters reserved for a run
//! ([`SealRun`]) and messages matched to a keypair ([`Opener`]) are sealed and opened on any
//! thread, in any order, and the flow still arrives whole, in order, and replay-checked.

use std::time::{Duration, Instant};

use burrow_wg::{
    transport_len, Decapsulated, Device, Encapsulated, Opened, PeerId, PrivateKey, Received,
    SealRun, WgError,
};
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const UNIX: Duration = Duration::from_secs(1_764_000_000);

fn src() -> std::net::SocketAddr {
    "192.0.2.1:51820".parse().unwrap()
}

/// Two devices, each with the other as peer 0, after a completed handshake (a confirmed
/// keypair on both sides).
fn connected(t0: Instant) -> (Device, Device) {
    let (ka, kb) = (
        PrivateKey::from_bytes([1; 32]),
        PrivateKey::from_bytes([2; 32]),
    );
    let mut a = Device::new(ka.clone(), ChaCha20Rng::seed_from_u64(1), t0, UNIX);
    let mut b = Device::new(kb.clone(), ChaCha20Rng::seed_from_u64(2), t0, UNIX);
    a.add_peer(t0, kb.public_key(), None, None);
    b.add_peer(t0, ka.public_key(), None, None);
    a.force_handshake(t0, PeerId(0));
    pump(&mut a, &mut b, t0);
    // A keepalive (an empty data message) from the initiator confirms the keypair at the
    // responder.
    let mut buf = [0u8; 64];
    let Ok(Encapsulated::Sent(n)) = a.encapsulate(t0, PeerId(0), &[], &mut buf) else {
        panic!("the initiator has a keypair")
    };
    let r = b.decapsulate(t0, src(), &buf[..n], &mut [0u8; 64]);
    assert!(
        matches!(r, Ok(Received::Peer(_, Decapsulated::Keepalive))),
        "{r:?}"
    );
    (a, b)
}

/// Moves handshake messages both ways until quiet.
fn pump(a: &mut Device, b: &mut Device, now: Instant) {
    let mut out = vec![0u8; 2048];
    loop {
        let mut moved = false;
        while let Some((_, d)) = a.poll_transmit() {
            moved = true;
            let _ = b.decapsulate(now, src(), &d, &mut out);
        }
        while let Some((_, d)) = b.poll_transmit() {
            moved = true;
            let _ = a.decapsulate(now, src(), &d, &mut out);
        }
        if !moved {
            return;
        }
    }
}

/// A minimal IPv4 packet of `len` bytes (20 of header), so lengths survive padding removal.
fn ip(len: usize, fill: u8) -> Vec<u8> {
    let mut p = vec![fill; len.max(20)];
    p[0] = 0x45;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p
}

/// Cuts a run into runs of one counter each, in order.
fn singles(mut run: SealRun) -> Vec<SealRun> {
    let mut out = Vec::new();
    while !run.is_empty() {
        let rest = run.split_off(1);
        out.push(run);
        run = rest;
    }
    out
}

/// Seals `packets` as one run, packet `order[k]` sealed k-th, each into its own place.
fn seal_run(dev: &mut Device, now: Instant, packets: &[Vec<u8>], order: &[usize]) -> Vec<Vec<u8>> {
    let run = dev
        .reserve(now, PeerId(0), packets.len())
        .expect("a keypair");
    assert_eq!(run.len(), packets.len());
    let mut runs = singles(run);
    assert_eq!(runs.len(), packets.len());
    let mut sealed: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| vec![0u8; transport_len(p.len())])
        .collect();
    for &i in order {
        let n = runs[i].seal(now, &packets[i], &mut sealed[i]).unwrap();
        assert_eq!(n, sealed[i].len());
        assert!(
            matches!(
                runs[i].seal(now, &packets[i], &mut sealed[i].clone()),
                Err(WgError::NoSession)
            ),
            "a counter seals once"
        );
    }
    sealed
}

/// A message opened outside the device: the proof and the plaintext, or why not.
type OpenResult = Result<(Opened, Vec<u8>), WgError>;

/// Opens `datagrams` as one batch at `dev`: all matched first, opened in `order`, then
/// accepted in arrival order. Returns what each acceptance gave.
fn open_batch(
    dev: &mut Device,
    now: Instant,
    datagrams: &[Vec<u8>],
    order: &[usize],
) -> Vec<Result<Vec<u8>, WgError>> {
    let mut openers: Vec<_> = datagrams
        .iter()
        .map(|d| {
            let (peer, opener) = dev
                .opener(now, d)
                .expect("a transport message for a keypair");
            (peer, Some(opener))
        })
        .collect();
    let mut opened: Vec<Option<OpenResult>> = (0..datagrams.len()).map(|_| None).collect();
    for &i in order {
        let mut out = vec![0u8; datagrams[i].len()];
        let opener = openers[i].1.take().unwrap();
        opened[i] = Some(opener.open(&datagrams[i], &mut out).map(|o| (o, out)));
    }
    openers
        .iter()
        .zip(opened)
        .map(|((peer, _), o)| {
            let (o, p) = o.unwrap()?;
            let len = o.len();
            match dev.accept_opened(now, *peer, o, &p)? {
                Received::Peer(_, Decapsulated::Data(n)) => Ok(p[..n].to_vec()),
                Received::Peer(_, Decapsulated::Keepalive) => {
                    assert_eq!(len, 0);
                    Ok(Vec::new())
                }
                other => panic!("unexpected {other:?}"),
            }
        })
        .collect()
}

#[test]
fn a_run_sealed_out_of_order_arrives_in_order() {
    let t0 = Instant::now();
    let (mut a, mut b) = connected(t0);
    let packets: Vec<Vec<u8>> = (0..10).map(|i| ip(100 + 37 * i, i as u8)).collect();
    let sealed = seal_run(&mut a, t0, &packets, &[9, 3, 0, 7, 1, 8, 2, 6, 4, 5]);
    let mut out = vec![0u8; 2048];
    for (i, d) in sealed.iter().enumerate() {
        let r = b.decapsulate(t0, src(), d, &mut out).unwrap();
        let Received::Peer(_, Decapsulated::Data(n)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(out[..n], packets[i][..], "packet {i}");
    }
    // The run's counters are spent: the next packet goes on after them.
    let next = ip(60, 0xee);
    let mut buf = vec![0u8; 256];
    let Encapsulated::Sent(n) = a.encapsulate(t0, PeerId(0), &next, &mut buf).unwrap() else {
        panic!("sent")
    };
    let counter = |d: &[u8]| u64::from_le_bytes(d[8..16].try_into().unwrap());
    for w in sealed.windows(2) {
        assert_eq!(counter(&w[1]), counter(&w[0]) + 1, "consecutive counters");
    }
    assert_eq!(
        counter(&buf),
        counter(sealed.last().unwrap()) + 1,
        "the next packet's counter follows the run"
    );
    assert!(matches!(
        b.decapsulate(t0, src(), &buf[..n], &mut out).unwrap(),
        Received::Peer(_, Decapsulated::Data(_))
    ));
}

#[test]
fn a_run_needs_a_keypair_and_stays_inside_its_bounds() {
    let t0 = Instant::now();
    let mut lonely = Device::new(
        PrivateKey::from_bytes([7; 32]),
        ChaCha20Rng::seed_from_u64(7),
        t0,
        UNIX,
    );
    lonely.add_peer(t0, PrivateKey::from_bytes([8; 32]).public_key(), None, None);
    assert!(lonely.reserve(t0, PeerId(0), 4).is_none(), "no keypair yet");
    let (mut a, _) = connected(t0);
    assert!(a.reserve(t0, PeerId(0), 0).is_none(), "an empty run");
    let mut run = a.reserve(t0, PeerId(0), 2).unwrap();
    let mut out = vec![0u8; 256];
    assert!(matches!(
        run.seal(t0, &ip(40, 1), &mut out[..40]),
        Err(WgError::BufferTooSmall { .. })
    ));
    assert_eq!(run.len(), 2, "a refused seal spends no counter");
    // A run outliving its keypair's sending life seals nothing.
    let old = t0 + burrow_wg::timers::REJECT_AFTER_TIME;
    assert!(matches!(
        run.seal(old, &ip(40, 1), &mut out),
        Err(WgError::NoSession)
    ));
    run.seal(t0, &ip(40, 1), &mut out).unwrap();
    let mut rest = run.split_off(5);
    assert!(rest.is_empty(), "nothing past the run");
    assert!(matches!(
        rest.seal(t0, &ip(40, 1), &mut out),
        Err(WgError::NoSession)
    ));
    run.seal(t0, &ip(40, 2), &mut out).unwrap();
    assert!(matches!(
        run.seal(t0, &ip(40, 3), &mut out),
        Err(WgError::NoSession)
    ));
    // Past REJECT_AFTER_TIME the keypair takes no run: packets queue for a handshake.
    let late = t0 + burrow_wg::timers::REJECT_AFTER_TIME;
    assert!(a.reserve(late, PeerId(0), 2).is_none());
}

#[test]
fn opening_outside_the_device_checks_replay_and_forgery_at_acceptance() {
    let t0 = Instant::now();
    let (mut a, mut b) = connected(t0);
    let packets: Vec<Vec<u8>> = (0..6).map(|i| ip(200, i as u8)).collect();
    let sealed = seal_run(&mut a, t0, &packets, &[0, 1, 2, 3, 4, 5]);
    let got = open_batch(&mut b, t0, &sealed, &[5, 4, 3, 2, 1, 0]);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.as_ref().unwrap(), &packets[i]);
    }
    // The same messages again: they open (the key is right) but acceptance refuses them.
    let again = open_batch(&mut b, t0, &sealed, &[0, 1, 2, 3, 4, 5]);
    assert!(
        again.iter().all(|r| matches!(r, Err(WgError::Replay))),
        "{again:?}"
    );
    // A forged message fails to open and is never accepted, so it cannot spend its counter.
    let mut fresh = seal_run(&mut a, t0, &packets[..1], &[0]);
    let genuine = fresh[0].clone();
    let last = fresh[0].len() - 1;
    fresh[0][last] ^= 1;
    let forged = open_batch(&mut b, t0, &fresh, &[0]);
    assert!(matches!(forged[0], Err(WgError::DecryptFailed)));
    let real = open_batch(&mut b, t0, &[genuine], &[0]);
    assert_eq!(real[0].as_ref().unwrap(), &packets[0]);
}

#[test]
fn an_opened_message_counts_only_for_the_keypair_and_datagram_it_was_made_for() {
    let t0 = Instant::now();
    // Two pairs built alike: the same keys and indices, distinct keypair objects.
    let (mut a1, mut b1) = connected(t0);
    let (_, mut b2) = connected(t0);
    let packets = vec![ip(100, 1), ip(100, 2)];
    let sealed = seal_run(&mut a1, t0, &packets, &[0, 1]);
    let (peer, opener) = b1.opener(t0, &sealed[0]).unwrap();
    // Another message than the one matched: refused, whatever the key.
    let (_, other) = b1.opener(t0, &sealed[1]).unwrap();
    assert!(matches!(
        other.open(&sealed[0], &mut [0u8; 256]),
        Err(WgError::DecryptFailed)
    ));
    let mut out = vec![0u8; 256];
    let opened = opener.open(&sealed[0], &mut out).unwrap();
    // The twin device has a keypair under the same index, but not this one.
    assert!(matches!(
        b2.accept_opened(t0, peer, opened, &out),
        Err(WgError::UnknownIndex(_))
    ));
    // The message itself still counts once where it belongs.
    let got = open_batch(&mut b1, t0, &sealed[..1], &[0]);
    assert_eq!(got[0].as_ref().unwrap(), &packets[0]);
}

#[test]
fn only_transport_messages_for_a_known_keypair_get_an_opener() {
    let t0 = Instant::now();
    let (mut a, b) = connected(t0);
    // A handshake initiation is for decapsulate.
    a.force_handshake(t0 + Duration::from_secs(1), PeerId(0));
    let (_, init) = a.poll_transmit().unwrap();
    assert!(b.opener(t0, &init).is_none());
    // An unknown receiver index, and bytes that are no message at all.
    let mut stray = vec![0u8; 64];
    stray[0] = 4;
    stray[4..8].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
    assert!(b.opener(t0, &stray).is_none());
    assert!(b.opener(t0, &[1, 2, 3]).is_none());
}

proptest! {
    /// Any run, sealed in any order and opened in any order, arrives byte for byte and in
    /// order, exactly as the same packets sent one at a time would.
    #[test]
    fn split_sealing_and_opening_match_the_one_at_a_time_path(
        sizes in prop::collection::vec(20usize..1500, 1..40),
        seal_order in any::<prop::sample::Index>(),
        open_order in any::<prop::sample::Index>(),
    ) {
        let t0 = Instant::now();
        let (mut a, mut b) = connected(t0);
        let packets: Vec<Vec<u8>> =
            sizes.iter().enumerate().map(|(i, &n)| ip(n, i as u8)).collect();
        let n = packets.len();
        let rotate = |k: usize| -> Vec<usize> { (0..n).map(|i| (i * 7 + k) % n).collect() };
        // A permutation when 7 and n are coprime, else a rotation.
        let perm = |k: usize| -> Vec<usize> {
            let p = rotate(k);
            let mut seen = vec![false; n];
            if p.iter().all(|&i| !std::mem::replace(&mut seen[i], true)) {
                p
            } else {
                (0..n).map(|i| (i + k) % n).collect()
            }
        };
        let sealed = seal_run(&mut a, t0, &packets, &perm(seal_order.index(n)));
        let got = open_batch(&mut b, t0, &sealed, &perm(open_order.index(n)));
        for (i, g) in got.iter().enumerate() {
            prop_assert_eq!(g.as_ref().unwrap(), &packets[i]);
        }
        // The next packet, one at a time, still goes through.
        let mut buf = vec![0u8; 2048];
        let mut out = vec![0u8; 2048];
        let Ok(Encapsulated::Sent(len)) = a.encapsulate(t0, PeerId(0), &packets[0], &mut buf) else {
            panic!("sent")
        };
        let r = b.decapsulate(t0, src(), &buf[..len], &mut out);
        prop_assert!(matches!(r, Ok(Received::Peer(_, Decapsulated::Data(_)))), "{:?}", r);
    }
}
