//! The hand-wired harness the engine tests share: engines joined by an in-memory DERP relay.

use std::time::Instant;

use burrow_node::{Event, Input, Node, Transmit};

/// Carries DERP packets among `nodes` until quiet (UDP is dropped: no direct path exists);
/// returns what each node decrypted.
pub fn relay_all(now: Instant, nodes: &mut [&mut Node]) -> Vec<Vec<Vec<u8>>> {
    let mut got = vec![Vec::new(); nodes.len()];
    for _ in 0..6 {
        for i in 0..nodes.len() {
            let from = nodes[i].public_key();
            while let Some(t) = nodes[i].poll_transmit() {
                if let Transmit::Derp { dst, payload, .. } = t {
                    if let Some(j) = nodes.iter().position(|n| n.public_key() == dst) {
                        let input = Input::Derp {
                            region: 1,
                            from,
                            data: &payload,
                        };
                        let _ = nodes[j].handle_input(now, input);
                    }
                }
            }
        }
        for (i, n) in nodes.iter_mut().enumerate() {
            while let Some(e) = n.poll_event() {
                if let Event::Packet { data, .. } = e {
                    got[i].push(data);
                }
            }
        }
    }
    got
}
