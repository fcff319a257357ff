//! MESSAGE-INTEGRITY keys (RFC 8489 §9). Strings must already be prepared with PRECIS
//! OpaqueString (RFC 8265); ASCII passwords need no preparation.

use md5::{Digest, Md5};
use sha2::Sha256;

/// Short-term credential key: the password bytes themselves.
pub fn short_term(password: &str) -> &[u8] {
    password.as_bytes()
}

/// Long-term credential key, MD5 form: `MD5(username ":" realm ":" password)`.
pub fn long_term_md5(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    for (i, part) in [username, realm, password].iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// Long-term credential key, SHA-256 form (PASSWORD-ALGORITHM 0x0002).
pub fn long_term_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for (i, part) in [username, realm, password].iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc8489_md5_example() {
        let k = super::long_term_md5("user", "realm", "pass");
        let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "8493fbc53ba582fb4c044c456bdc40eb");
    }
}
