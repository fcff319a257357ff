#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod netcheck;
pub mod report;

pub use netcheck::{Config, Error, Event, Netcheck, Region};
pub use report::{
    FilteringBehavior, MappingBehavior, NatType, PortAllocation, PortMapping, RegionLatency, Report,
};
