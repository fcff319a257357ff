//! The commands, one module each; `main` parses the command line and calls the matching `run`.

pub mod common;
pub mod control;
pub mod derper;
pub mod doctor;
pub mod down;
pub mod keys;
pub mod netcheck;
pub mod ping;
pub mod status;
pub mod stun;
pub mod up;
pub mod wg;
