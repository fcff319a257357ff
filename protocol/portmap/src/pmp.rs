//! NAT-PMP (RFC 6886) messages.
