#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod attack;
pub mod capture;
mod control;
pub mod fastnet;
pub mod grid;
pub mod nat;
pub mod net;
mod node_io;
pub mod pcap;
pub mod preset;
pub mod report;
pub mod scenario;
pub mod tailnet;
pub mod wire;
