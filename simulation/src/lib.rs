#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod attack;
pub mod capture;
mod control;
pub use burrow_des::fallback;
pub use burrow_des::fastnet;
pub use burrow_des::grid;
pub use burrow_des::ladder;
pub use burrow_des::nat;
pub mod net;
mod node_io;
pub mod pcap;
pub use burrow_des::preset;
pub use burrow_des::soak;
pub mod report;
pub mod scenario;
pub mod tailnet;
pub mod wire;
