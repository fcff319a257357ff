//! WireGuard's primitives: HASH (BLAKE2s-256), MAC (keyed BLAKE2s-128), HMAC-BLAKE2s, the
//! HKDF-style KDFs, X25519, and (X)ChaCha20-Poly1305 for handshake fields and cookies.

use blake2::digest::{FixedOutput, KeyInit, Mac as _, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::XChaCha20Poly1305;

use crate::aead::{DefaultAead, TransportAead};
use hmac::SimpleHmac;

/// `HASH(a ‖ b ‖ …)`: BLAKE2s-256.
pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// `MAC(key, a ‖ b ‖ …)`: keyed BLAKE2s with a 16-byte output (not HMAC).
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut m = <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(key)
        .expect("key ≤ 32 bytes");
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m =
        <SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize().into_bytes().into()
}

/// HMAC keyed with `prk`, set up once and cloned for each output block.
fn expander(prk: &[u8; 32]) -> SimpleHmac<Blake2s256> {
    <SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(prk).expect("HMAC takes any key")
}

fn block(base: &SimpleHmac<Blake2s256>, parts: &[&[u8]]) -> [u8; 32] {
    let mut m = base.clone();
    for p in parts {
        Update::update(&mut m, p);
    }
    m.finalize().into_bytes().into()
}

/// `KDF1(key, input)`.
pub fn kdf1(key: &[u8; 32], input: &[u8]) -> [u8; 32] {
    let prk = hmac(key, &[input]);
    block(&expander(&prk), &[&[1]])
}

/// `KDF2(key, input)`.
pub fn kdf2(key: &[u8; 32], input: &[u8]) -> ([u8; 32], [u8; 32]) {
    let prk = hmac(key, &[input]);
    let e = expander(&prk);
    let t1 = block(&e, &[&[1]]);
    let t2 = block(&e, &[&t1, &[2]]);
    (t1, t2)
}

/// `KDF3(key, input)`.
pub fn kdf3(key: &[u8; 32], input: &[u8]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let prk = hmac(key, &[input]);
    let e = expander(&prk);
    let t1 = block(&e, &[&[1]]);
    let t2 = block(&e, &[&t1, &[2]]);
    let t3 = block(&e, &[&t2, &[3]]);
    (t1, t2, t3)
}

/// `AEAD(key, counter, plaintext, ad)` into `out` (plaintext length + 16), through the same
/// backend as transport data.
pub fn aead_seal(key: &[u8; 32], counter: u64, plaintext: &[u8], ad: &[u8], out: &mut [u8]) {
    let cipher = DefaultAead::new(key);
    let (body, tag_out) = out.split_at_mut(plaintext.len());
    body.copy_from_slice(plaintext);
    let tag = cipher.seal_in_place(counter, ad, body);
    tag_out[..16].copy_from_slice(&tag);
}

/// Opens `AEAD(key, counter, ·, ad)` from `ciphertext` (with tag) into `out`.
pub fn aead_open(
    key: &[u8; 32],
    counter: u64,
    ciphertext: &[u8],
    ad: &[u8],
    out: &mut [u8],
) -> bool {
    if ciphertext.len() < 16 || out.len() < ciphertext.len() - 16 {
        return false;
    }
    let cipher = DefaultAead::new(key);
    let (body, tag) = ciphertext.split_at(ciphertext.len() - 16);
    let out = &mut out[..body.len()];
    out.copy_from_slice(body);
    cipher.open_in_place(counter, ad, out, tag.try_into().expect("16 bytes"))
}

/// `XAEAD(key, nonce, plaintext, ad)` (cookie replies).
pub fn xaead_seal(key: &[u8; 32], nonce: &[u8; 24], plaintext: &[u8; 16], ad: &[u8]) -> [u8; 32] {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut buf = *plaintext;
    let tag = cipher
        .encrypt_in_place_detached(nonce.into(), ad, &mut buf)
        .expect("16 bytes");
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&buf);
    out[16..].copy_from_slice(&tag);
    out
}

/// Opens an XAEAD cookie.
pub fn xaead_open(
    key: &[u8; 32],
    nonce: &[u8; 24],
    ciphertext: &[u8; 32],
    ad: &[u8],
) -> Option<[u8; 16]> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut buf = [0u8; 16];
    buf.copy_from_slice(&ciphertext[..16]);
    cipher
        .decrypt_in_place_detached(nonce.into(), ad, &mut buf, ciphertext[16..].into())
        .ok()?;
    Some(buf)
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

    #[test]
    fn initial_chaining_key_and_hash() {
        let ci = hash(&[b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"]);
        assert_eq!(
            ci.to_vec(),
            hex("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36")
        );
        let hi = hash(&[&ci, b"WireGuard v1 zx2c4 Jason@zx2c4.com"]);
        assert_eq!(
            hi.to_vec(),
            hex("2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3")
        );
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        let key = [7u8; 32];
        let mut out = [0u8; 21];
        aead_seal(&key, 5, b"hello", b"ad", &mut out);
        let mut pt = [0u8; 5];
        assert!(aead_open(&key, 5, &out, b"ad", &mut pt));
        assert_eq!(&pt, b"hello");
        assert!(!aead_open(&key, 6, &out, b"ad", &mut pt));
        out[0] ^= 1;
        assert!(!aead_open(&key, 5, &out, b"ad", &mut pt));
    }
}
