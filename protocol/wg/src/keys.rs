//! Keys. A [`PrivateKey`] prints as "redacted", is zeroized on drop and cannot be serialized:
//! it cannot leave the node by accident.

use core::fmt;

use base64::Engine;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A key in a config file was not 32 bytes of standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("not a WireGuard key: expected 44 characters of base64 encoding 32 bytes")]
pub struct KeyFormatError;

fn decode(s: &str) -> Result<[u8; 32], KeyFormatError> {
    let v = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| KeyFormatError)?;
    v.try_into().map_err(|_| KeyFormatError)
}

fn encode(b: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// An X25519 static private key (its public key computed once, at construction).
#[derive(Clone, ZeroizeOnDrop)]
pub struct PrivateKey {
    secret: x25519_dalek::StaticSecret,
    #[zeroize(skip)]
    public: [u8; 32],
}

impl PrivateKey {
    /// From 32 bytes (clamped by X25519 when used).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let secret = x25519_dalek::StaticSecret::from(bytes);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        PrivateKey { secret, public }
    }

    /// A fresh key from `rng`.
    pub fn generate(rng: &mut impl rand_core::RngCore) -> Self {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        let k = Self::from_bytes(b);
        b.zeroize();
        k
    }

    /// From wg's base64 form (a config file's `PrivateKey`).
    pub fn from_base64(s: &str) -> Result<Self, KeyFormatError> {
        let mut b = decode(s)?;
        let k = Self::from_bytes(b);
        b.zeroize();
        Ok(k)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.public)
    }

    /// Diffie–Hellman; `None` for an all-zero (low-order) result, which WireGuard rejects.
    pub(crate) fn diffie_hellman(&self, public: &[u8; 32]) -> Option<[u8; 32]> {
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(*public));
        shared.was_contributory().then(|| shared.to_bytes())
    }

    /// The X25519 shared secret with `peer` (for NaCl boxes such as DERP's ClientInfo);
    /// `None` for a low-order peer key. The private key itself never leaves this type.
    pub fn shared_secret(&self, peer: &PublicKey) -> Option<[u8; 32]> {
        self.diffie_hellman(peer.as_bytes())
    }

    /// The raw bytes, for the one place that must write a key out (`wg`-style genkey).
    pub fn expose_base64(&self) -> String {
        encode(&self.secret.to_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(redacted)")
    }
}

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// From wg's base64 form.
    pub fn from_base64(s: &str) -> Result<Self, KeyFormatError> {
        decode(s).map(PublicKey)
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        encode(&self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// An optional pre-shared key (the psk of Noise_IKpsk2); redacted and zeroized like a private key.
#[derive(Clone, Zeroize, ZeroizeOnDrop, Default)]
pub struct PresharedKey(pub(crate) [u8; 32]);

impl PresharedKey {
    /// From 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PresharedKey(bytes)
    }

    /// From wg's base64 form.
    pub fn from_base64(s: &str) -> Result<Self, KeyFormatError> {
        decode(s).map(PresharedKey)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_are_redacted_and_round_trip_through_base64() {
        let k = PrivateKey::from_bytes([9; 32]);
        assert_eq!(format!("{k:?}"), "PrivateKey(redacted)");
        let again = PrivateKey::from_base64(&k.expose_base64()).unwrap();
        assert_eq!(again.public_key(), k.public_key());
        assert_eq!(
            PrivateKey::from_base64("short").unwrap_err(),
            KeyFormatError
        );
    }
}
