//! `FastNet` stepped by hand gives the same run as `run`, and its hooks (disruptions added
//! mid-run, the wire tap) see what they should.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_des::fastnet::{run, Disruption, FastConfig, FastNet, PLAINTEXT_MARKER};
use burrow_des::preset;

fn config(a: &str, b: &str, seed: u64) -> FastConfig {
    let chain = |n: &str| preset::get(n).expect("preset").chain;
    let mut c = FastConfig::new([chain(a), chain(b)], seed);
    c.data_interval = Some(Duration::from_millis(50));
    c.jitter = Duration::from_millis(3);
    c.loss = 0.02;
    c.duration = Duration::from_secs(12);
    c
}

#[test]
fn driving_in_slices_is_the_same_run() {
    let c = config("easy", "hard", 3);
    let whole = run(&c);
    let mut net = FastNet::new(&c);
    let mut t = Duration::ZERO;
    while net.drive_until(t) {
        t += Duration::from_millis(700);
    }
    assert!(net.is_done() && !net.step());
    let sliced = net.finish();
    assert_eq!(format!("{whole:?}"), format!("{sliced:?}"));
}

#[test]
fn a_disruption_added_mid_run_is_the_scripted_one() {
    let mut c = config("easy", "easy", 5);
    let flush = (Duration::from_secs(4), Disruption::FlushNat(1));
    let cut = (
        Duration::from_secs(6),
        Disruption::CutDirect(Duration::from_secs(2)),
    );
    c.disruptions = vec![flush, cut];
    let scripted = run(&c);
    c.disruptions = vec![flush];
    let mut net = FastNet::new(&c);
    net.drive_until(Duration::from_secs(3));
    net.disrupt(cut.0, cut.1);
    while net.step() {}
    let added = net.finish();
    assert_eq!(format!("{scripted:?}"), format!("{added:?}"));
}

#[test]
fn the_tap_sees_every_payload_and_no_plaintext() {
    let c = config("easy", "easy", 9);
    let seen = Arc::new(Mutex::new((0usize, 0usize, false)));
    let mut net = FastNet::new(&c);
    let s = seen.clone();
    net.tap(move |w| {
        let mut s = s.lock().unwrap();
        match w.dst {
            Some(_) => s.0 += 1,
            None => s.1 += 1,
        }
        s.2 |= w.payload.windows(16).any(|x| x == PLAINTEXT_MARKER);
    });
    net.drive_until(Duration::from_secs(5));
    assert!(net.is_direct());
    let out = net.finish();
    let (udp, derp, plaintext) = *seen.lock().unwrap();
    assert!(udp > 0 && derp > 0, "udp {udp}, derp {derp}");
    assert!(!plaintext && !out.plaintext_leaked && !out.key_leaked);
    assert!(out.data_received > 0);
}
