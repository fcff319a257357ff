#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod birthday;
pub mod candidate;

pub use birthday::{predict_ports, success_probability, BirthdayProber, Probe, ProbeBudget};
pub use candidate::{choose, Candidate, CandidateKind, CandidateSource, Hysteresis, Path};
