//! PCP (RFC 6887) messages.
