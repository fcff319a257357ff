#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod birthday;
pub mod candidate;
pub mod limits;
pub mod paths;
pub mod pmtu;
pub mod prediction;

pub use birthday::{
    predict_ports, success_probability, BirthdayProber, Probe, ProbeBudget, MAX_BIRTHDAY_TARGETS,
};
pub use candidate::{
    canonical_remote, choose, is_acceptable_remote, Candidate, CandidateKind, CandidateSource,
    Family, Hysteresis, Path,
};
pub use limits::{Rate, ReplayWindow, TokenBucket};
pub use paths::{
    Attempt, Dst, FamilyReport, FamilyState, Outcome, PathConfig, PathEvent, PeerPaths, Route,
    SocketId, Transmit, MAIN_SOCKET, MAX_MISSES_FOR_DEAD, MAX_PEER_REFLEXIVE,
    MAX_REMOTE_CANDIDATES, PEER_REFLEXIVE_TTL, RECOVERY_PONGS, REPLAY_CAPACITY, REPLAY_WINDOW,
};
pub use pmtu::{MtuReport, MtuSizes, MtuState, PathMtu};
pub use prediction::{
    advance, FlowLedger, MutualPrediction, PeerMapping, PeerPort, PredictionAction,
    PredictionConfig, PredictionReport, PredictionRole,
};
