#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod control;
pub mod derp_client;
pub mod derper;
pub mod dual_stack;
pub mod entry;
pub mod local_api;
pub mod netcheck;
pub mod node;
pub mod portmap;
pub mod session;
pub mod stun_server;
pub mod tls;
pub mod transport;
pub mod tun;
pub mod up;
pub mod wg;
pub mod wg_config;
