//! Shared pieces of burrow's conformance suite: the bodies of the fuzz targets (so the
//! committed corpora replay as ordinary tests) and helpers for running third-party tools.

#![forbid(unsafe_code)]

pub mod fuzz;
pub mod tools;
