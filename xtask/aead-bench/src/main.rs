//! Seal + open of 1,420-byte transport packets (padded to 1,424) with each candidate backend,
//! interleaved, best of 5 rounds. Prints one JSON object of microseconds per seal+open.

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
    let aws = aws_lc_rs::aead::LessSafeKey::new(aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::CHACHA20_POLY1305, &key).unwrap());
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
                .seal_in_place_separate_tag(aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce), aws_lc_rs::aead::Aad::empty(), &mut buf)
                .unwrap();
            aws.open_in_place_separate_tag(aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce), aws_lc_rs::aead::Aad::empty(), tag.as_ref(), &mut buf)
                .unwrap();
            black_box(&buf);
        }));
        best_rust = best_rust.min(time_per_op(d, |c| {
            let tag = rust.seal_in_place(c, &[], &mut buf);
            assert!(rust.open_in_place(c, &[], &mut buf, &tag));
            black_box(&buf);
        }));
    }
    println!("{{\"ring_us\":{best_ring:.3},\"aws_lc_rs_us\":{best_aws:.3},\"rustcrypto_us\":{best_rust:.3}}}");
}
