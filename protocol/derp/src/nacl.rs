//! NaCl `crypto_box`, as Go's `nacl/box` seals DERP's ClientInfo and ServerInfo. It lives in
//! burrow-nacl (shared with disco); this path re-exports it.

pub use burrow_nacl::BoxKey;
