#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Go's nacl/box: key = HSalsa20(X25519(sk, pk), 0¹⁶); output = tag ‖ ciphertext.

use burrow_wg::{PrivateKey, PublicKey};
use salsa20::cipher::consts::U10;
use xsalsa20poly1305::aead::{Aead, KeyInit};
use xsalsa20poly1305::XSalsa20Poly1305;

/// A precomputed box between our key and a peer's (`crypto_box_beforenm`).
pub struct BoxKey(XSalsa20Poly1305);

impl BoxKey {
    /// `None` if the peer's key is low-order.
    pub fn new(local: &PrivateKey, peer: &PublicKey) -> Option<Self> {
        let shared = local.shared_secret(peer)?;
        let key = salsa20::hsalsa::<U10>(&shared.into(), &[0u8; 16].into());
        Some(BoxKey(XSalsa20Poly1305::new(&key)))
    }

    /// Seals `plaintext` under `nonce`.
    pub fn seal(&self, nonce: &[u8; 24], plaintext: &[u8]) -> Vec<u8> {
        self.0
            .encrypt(nonce.into(), plaintext)
            .expect("small messages")
    }

    /// Opens a sealed message; `None` if it does not authenticate.
    pub fn open(&self, nonce: &[u8; 24], sealed: &[u8]) -> Option<Vec<u8>> {
        self.0.decrypt(nonce.into(), sealed).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Golden bytes from libsodium (PyNaCl's `Box.encrypt`), the construction Go's nacl/box uses.
    #[test]
    fn matches_libsodium_box() {
        let a = PrivateKey::from_bytes([1; 32]);
        let b = PrivateKey::from_bytes([2; 32]);
        assert_eq!(
            a.public_key().0.to_vec(),
            hex("a4e09292b651c278b9772c569f5fa9bb13d906b46ab68c9df9dc2b4409f8a209")
        );
        assert_eq!(
            b.public_key().0.to_vec(),
            hex("ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59")
        );
        let sealed = BoxKey::new(&a, &b.public_key())
            .unwrap()
            .seal(&[7; 24], br#"{"version":2}"#);
        assert_eq!(
            sealed,
            hex("6edf723ff1e7350e43f38fd8326be74c53a6a00e8957d075978ea9455e")
        );
        let opened = BoxKey::new(&b, &a.public_key())
            .unwrap()
            .open(&[7; 24], &sealed)
            .unwrap();
        assert_eq!(opened, br#"{"version":2}"#);
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert!(BoxKey::new(&b, &a.public_key())
            .unwrap()
            .open(&[7; 24], &bad)
            .is_none());
    }
}
