#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod birthday;
pub mod candidate;
pub mod paths;

pub use birthday::{predict_ports, success_probability, BirthdayProber, Probe, ProbeBudget};
pub use candidate::{choose, Candidate, CandidateKind, CandidateSource, Hysteresis, Path};
pub use paths::{
    Attempt, Dst, Outcome, PathConfig, PathEvent, PeerPaths, Route, SocketId, Transmit, MAIN_SOCKET,
};
