#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod fallback;
pub mod fastnet;
pub mod grid;
pub mod ladder;
pub mod nat;
pub mod preset;
pub mod soak;
pub mod svg;
pub mod world;

/// Derives a component's seed from the simulation seed and the component's name.
pub fn derive_seed(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in name.bytes().chain(seed.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}
