//! Seal + open of 1,420-byte transport packets (padded to 1,424) with each candidate backend,
//! interleaved, best of 5 rounds; then the tunnel's crypto ceiling on this machine, measured:
//! one thread sealing while another opens, at once, for 2 s (ring). Prints one JSON object.

use std::hint::black_box;
use std::time::{Duration, Instant};

use burrow_wg::aead::{RingAead, RustCryptoAead, TransportAead};

fn time_per_op(for_: Duration, mut f: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < for_ {
        for _ in 0..256 {
            f(n);
            n += 1;
        }
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let key = [7u8; 32];
    let mut buf = vec![0u8; 1424];
    let ring = RingAead::new(&key);
    let rust = RustCryptoAead::new(&key);
    let aws = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::CHACHA20_POLY1305, &key).unwrap(),
    );
    let (mut best_ring, mut best_aws, mut best_rust) = (f64::MAX, f64::MAX, f64::MAX);
    let d = Duration::from_millis(800);
    for _ in 0..5 {
        best_ring = best_ring.min(time_per_op(d, |c| {
            let tag = ring.seal_in_place(c, &[], &mut buf);
            assert!(ring.open_in_place(c, &[], &mut buf, &tag));
            black_box(&buf);
        }));
        best_aws = best_aws.min(time_per_op(d, |c| {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&c.to_le_bytes());
            let tag = aws
                .seal_in_place_separate_tag(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                    aws_lc_rs::aead::Aad::empty(),
                    &mut buf,
                )
                .unwrap();
            aws.open_in_place_separate_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                aws_lc_rs::aead::Aad::empty(),
                tag.as_ref(),
                &mut buf,
            )
            .unwrap();
            black_box(&buf);
        }));
        best_rust = best_rust.min(time_per_op(d, |c| {
            let tag = rust.seal_in_place(c, &[], &mut buf);
            assert!(rust.open_in_place(c, &[], &mut buf, &tag));
            black_box(&buf);
        }));
    }
    let (seal_per_s, open_per_s) = two_cores(&key, Duration::from_secs(2));
    // A tunnel's bound: the slower of the two sides, in 1,420-byte packets.
    let two_core_gbps = seal_per_s.min(open_per_s) * 1420.0 * 8.0 / 1e9;
    println!("{{\"ring_us\":{best_ring:.3},\"aws_lc_rs_us\":{best_aws:.3},\"rustcrypto_us\":{best_rust:.3},\"seal_per_s\":{seal_per_s:.0},\"open_per_s\":{open_per_s:.0},\"two_core_gbps\":{two_core_gbps:.2}}}");
}

/// Seals on one thread while another opens, for `for_`: operations per second of each.
fn two_cores(key: &[u8; 32], for_: Duration) -> (f64, f64) {
    let sealer = RingAead::new(key);
    let opener = RingAead::new(key);
    // One sealed packet to open over and over (restored from a copy each time: opening in
    // place decrypts it; the copy is 1,424 bytes against the AEAD's 1,424 twice).
    let mut sealed = vec![0u8; 1424];
    let tag = sealer.seal_in_place(1, &[], &mut sealed);
    let seal = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1424];
        1e6 / time_per_op(for_, |n| {
            black_box(sealer.seal_in_place(n, &[], &mut buf));
        })
    });
    let open = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1424];
        1e6 / time_per_op(for_, |_| {
            buf.copy_from_slice(&sealed);
            assert!(opener.open_in_place(1, &[], &mut buf, &tag));
        })
    });
    (
        seal.join().expect("sealing thread"),
        open.join().expect("opening thread"),
    )
}
