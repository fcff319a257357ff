//! The Noise_IKpsk2 handshake as WireGuard runs it, as plain functions over byte arrays
//! (after boringtun's noise module): build and consume initiation and response, mac1/mac2,
//! cookie replies, TAI64N.

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{aead_open, aead_seal, hash, kdf1, kdf2, kdf3, mac, xaead_open, xaead_seal};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::messages::*;

const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";

/// Why a handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// mac1 does not match: not for us, or corrupted.
    #[error("invalid mac1")]
    BadMac1,
    /// Under load, the source spent its handshake budget.
    #[error("too many handshakes from this source while under load")]
    RateLimited,
    /// A field failed to decrypt, or a DH result was all zero.
    #[error("handshake decryption failed")]
    DecryptFailed,
    /// The initiator's static key is not a configured peer.
    #[error("unknown peer")]
    UnknownPeer,
    /// The timestamp is not newer than the last accepted one (a replay).
    #[error("replayed initiation")]
    Replay,
    /// Initiations from this peer arrive faster than 50 per second.
    #[error("initiation flood")]
    Flood,
    /// A response or cookie for a handshake we did not start (or abandoned).
    #[error("no handshake in progress for this message")]
    Unexpected,
}

fn initial() -> ([u8; 32], [u8; 32]) {
    let ck = hash(&[CONSTRUCTION]);
    let h = hash(&[&ck, IDENTIFIER]);
    (ck, h)
}

/// `HASH(LABEL_MAC1 ‖ key)`: the mac1 key for messages to the owner of `key`.
pub fn mac1_key(receiver: &PublicKey) -> [u8; 32] {
    hash(&[LABEL_MAC1, receiver.as_bytes()])
}

/// `HASH(LABEL_COOKIE ‖ key)`: the cookie-encryption key of the owner of `key`.
pub fn cookie_key(owner: &PublicKey) -> [u8; 32] {
    hash(&[LABEL_COOKIE, owner.as_bytes()])
}

/// Writes mac1 (and mac2 if a cookie is given; zeros otherwise) at `mac1_at`.
pub(crate) fn write_macs(
    msg: &mut [u8],
    mac1_at: usize,
    mac1_key: &[u8; 32],
    cookie: Option<&[u8; 16]>,
) -> [u8; 16] {
    let m1 = mac(mac1_key, &[&msg[..mac1_at]]);
    msg[mac1_at..mac1_at + 16].copy_from_slice(&m1);
    let m2 = cookie.map_or([0u8; 16], |c| mac(c, &[&msg[..mac1_at + 16]]));
    msg[mac1_at + 16..mac1_at + 32].copy_from_slice(&m2);
    m1
}

/// Whether mac1 is right (checked before any expensive work).
pub(crate) fn mac1_valid(msg: &[u8], mac1_at: usize, mac1_key: &[u8; 32]) -> bool {
    let m1 = mac(mac1_key, &[&msg[..mac1_at]]);
    constant_eq(&m1, &msg[mac1_at..mac1_at + 16])
}

/// Whether mac2 is right for `cookie`.
pub(crate) fn mac2_valid(msg: &[u8], mac1_at: usize, cookie: &[u8; 16]) -> bool {
    let m2 = mac(cookie, &[&msg[..mac1_at + 16]]);
    constant_eq(&m2, &msg[mac1_at + 16..mac1_at + 32])
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// TAI64N for a time since the Unix epoch: BE64(2^62 + 10 + secs) ‖ BE32(nanos).
pub fn tai64n(since_unix_epoch: core::time::Duration) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&(0x4000_0000_0000_000a_u64 + since_unix_epoch.as_secs()).to_be_bytes());
    // Like wireguard-go, drop the low 24 bits of the nanoseconds (≈16 ms) to blunt timing leaks.
    t[8..].copy_from_slice(&(since_unix_epoch.subsec_nanos() & !0x00FF_FFFF).to_be_bytes());
    t
}

/// The initiator's state between sending an initiation and consuming the response.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct InitiatorState {
    ck: [u8; 32],
    h: [u8; 32],
    #[zeroize(skip)]
    ephemeral: PrivateKey,
    /// Our sender index in the initiation.
    #[zeroize(skip)]
    pub local_index: u32,
}

/// A session's transport keys and indices, fresh from a handshake.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    /// Key for what we send.
    pub send: [u8; 32],
    /// Key for what we receive.
    pub recv: [u8; 32],
    /// Our index (the peer puts it in messages to us).
    #[zeroize(skip)]
    pub local_index: u32,
    /// The peer's index (we put it in messages to the peer).
    #[zeroize(skip)]
    pub remote_index: u32,
}

/// Builds an initiation (mac1 and mac2 written by the caller with [`write_macs`]).
pub fn create_initiation(
    local: &PrivateKey,
    peer: &PublicKey,
    ephemeral: PrivateKey,
    local_index: u32,
    timestamp: [u8; 12],
    static_static: &[u8; 32],
) -> Option<([u8; INITIATION_LEN], InitiatorState)> {
    let (mut ck, mut h) = initial();
    h = hash(&[&h, peer.as_bytes()]);
    let e_pub = ephemeral.public_key();
    let mut msg = [0u8; INITIATION_LEN];
    msg[0] = TYPE_INITIATION;
    msg[4..8].copy_from_slice(&local_index.to_le_bytes());
    msg[8..40].copy_from_slice(e_pub.as_bytes());
    ck = kdf1(&ck, e_pub.as_bytes());
    h = hash(&[&h, e_pub.as_bytes()]);
    let es = ephemeral.diffie_hellman(peer.as_bytes())?;
    let (c, mut k) = kdf2(&ck, &es);
    ck = c;
    aead_seal(&k, 0, local.public_key().as_bytes(), &h, &mut msg[40..88]);
    h = hash(&[&h, &msg[40..88]]);
    let (c, k2) = kdf2(&ck, static_static);
    ck = c;
    k.zeroize();
    aead_seal(&k2, 0, &timestamp, &h, &mut msg[88..116]);
    h = hash(&[&h, &msg[88..116]]);
    Some((
        msg,
        InitiatorState {
            ck,
            h,
            ephemeral,
            local_index,
        },
    ))
}

/// What the responder learned from an initiation.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ConsumedInitiation {
    ck: [u8; 32],
    h: [u8; 32],
    /// The initiator's static key.
    #[zeroize(skip)]
    pub peer: PublicKey,
    /// Its TAI64N timestamp.
    pub timestamp: [u8; 12],
    /// Its sender index.
    #[zeroize(skip)]
    pub remote_index: u32,
    e_pub: [u8; 32],
}

/// Decrypts an initiation addressed to `local` (mac1 already checked). `static_static` computes
/// DH(local, peer) for the decrypted peer key (callers cache it per peer).
pub fn consume_initiation(
    local: &PrivateKey,
    msg: &[u8; INITIATION_LEN],
    static_static: impl FnOnce(&PublicKey) -> Option<[u8; 32]>,
) -> Result<ConsumedInitiation, HandshakeError> {
    let (mut ck, mut h) = initial();
    h = hash(&[&h, local.public_key().as_bytes()]);
    let e_pub: [u8; 32] = msg[8..40].try_into().expect("32 bytes");
    ck = kdf1(&ck, &e_pub);
    h = hash(&[&h, &e_pub]);
    let es = local
        .diffie_hellman(&e_pub)
        .ok_or(HandshakeError::DecryptFailed)?;
    let (c, k) = kdf2(&ck, &es);
    ck = c;
    let mut peer = [0u8; 32];
    if !aead_open(&k, 0, &msg[40..88], &h, &mut peer) {
        return Err(HandshakeError::DecryptFailed);
    }
    h = hash(&[&h, &msg[40..88]]);
    let peer = PublicKey(peer);
    let ss = static_static(&peer).ok_or(HandshakeError::UnknownPeer)?;
    let (c, k2) = kdf2(&ck, &ss);
    ck = c;
    let mut timestamp = [0u8; 12];
    if !aead_open(&k2, 0, &msg[88..116], &h, &mut timestamp) {
        return Err(HandshakeError::DecryptFailed);
    }
    h = hash(&[&h, &msg[88..116]]);
    Ok(ConsumedInitiation {
        ck,
        h,
        peer,
        timestamp,
        remote_index: le32(&msg[4..8]),
        e_pub,
    })
}

/// Builds the response to a consumed initiation and derives the responder's session keys.
pub fn create_response(
    init: &ConsumedInitiation,
    ephemeral: &PrivateKey,
    local_index: u32,
    psk: &PresharedKey,
) -> Option<([u8; RESPONSE_LEN], SessionKeys)> {
    let mut ck = init.ck;
    let mut h = init.h;
    let e_pub = ephemeral.public_key();
    let mut msg = [0u8; RESPONSE_LEN];
    msg[0] = TYPE_RESPONSE;
    msg[4..8].copy_from_slice(&local_index.to_le_bytes());
    msg[8..12].copy_from_slice(&init.remote_index.to_le_bytes());
    msg[12..44].copy_from_slice(e_pub.as_bytes());
    h = hash(&[&h, e_pub.as_bytes()]);
    ck = kdf1(&ck, e_pub.as_bytes());
    ck = kdf1(&ck, &ephemeral.diffie_hellman(&init.e_pub)?);
    ck = kdf1(&ck, &ephemeral.diffie_hellman(init.peer.as_bytes())?);
    let (c, tau, k) = kdf3(&ck, &psk.0);
    ck = c;
    h = hash(&[&h, &tau]);
    aead_seal(&k, 0, &[], &h, &mut msg[44..60]);
    let (t1, t2) = kdf2(&ck, &[]);
    ck.zeroize();
    h.zeroize();
    Some((
        msg,
        SessionKeys {
            send: t2,
            recv: t1,
            local_index,
            remote_index: init.remote_index,
        },
    ))
}

/// Consumes a response (mac1 already checked) and derives the initiator's session keys.
pub fn consume_response(
    state: &InitiatorState,
    local: &PrivateKey,
    msg: &[u8; RESPONSE_LEN],
    psk: &PresharedKey,
) -> Result<SessionKeys, HandshakeError> {
    if le32(&msg[8..12]) != state.local_index {
        return Err(HandshakeError::Unexpected);
    }
    let e_pub: [u8; 32] = msg[12..44].try_into().expect("32 bytes");
    let mut ck = state.ck;
    let mut h = hash(&[&state.h, &e_pub]);
    ck = kdf1(&ck, &e_pub);
    ck = kdf1(
        &ck,
        &state
            .ephemeral
            .diffie_hellman(&e_pub)
            .ok_or(HandshakeError::DecryptFailed)?,
    );
    ck = kdf1(
        &ck,
        &local
            .diffie_hellman(&e_pub)
            .ok_or(HandshakeError::DecryptFailed)?,
    );
    let (c, tau, k) = kdf3(&ck, &psk.0);
    ck = c;
    h = hash(&[&h, &tau]);
    if !aead_open(&k, 0, &msg[44..60], &h, &mut []) {
        return Err(HandshakeError::DecryptFailed);
    }
    let (t1, t2) = kdf2(&ck, &[]);
    ck.zeroize();
    h.zeroize();
    Ok(SessionKeys {
        send: t1,
        recv: t2,
        local_index: state.local_index,
        remote_index: le32(&msg[4..8]),
    })
}

/// Builds a cookie reply for a handshake message whose sender index is `receiver` and whose
/// mac1 is `mac1`; `cookie` is `MAC(secret, source address)`.
pub fn create_cookie_reply(
    local: &PublicKey,
    receiver: u32,
    mac1: &[u8; 16],
    cookie: &[u8; 16],
    nonce: [u8; 24],
) -> [u8; COOKIE_REPLY_LEN] {
    let mut msg = [0u8; COOKIE_REPLY_LEN];
    msg[0] = TYPE_COOKIE_REPLY;
    msg[4..8].copy_from_slice(&receiver.to_le_bytes());
    msg[8..32].copy_from_slice(&nonce);
    msg[32..64].copy_from_slice(&xaead_seal(&cookie_key(local), &nonce, cookie, mac1));
    msg
}

/// Opens a cookie reply from `peer`, given the mac1 of the message it answers.
pub fn consume_cookie_reply(
    peer: &PublicKey,
    msg: &[u8; COOKIE_REPLY_LEN],
    last_mac1: &[u8; 16],
) -> Option<[u8; 16]> {
    let nonce: [u8; 24] = msg[8..32].try_into().expect("24 bytes");
    let ct: [u8; 32] = msg[32..64].try_into().expect("32 bytes");
    xaead_open(&cookie_key(peer), &nonce, &ct, last_mac1)
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

    fn key(first: u8, fill: u8, last: u8) -> PrivateKey {
        let mut b = [fill; 32];
        b[0] = first;
        b[31] = last;
        PrivateKey::from_bytes(b)
    }

    /// The self-generated vector of shared/reference §4.6 (its Noise core checked against
    /// cacophony's Noise_IKpsk2 vector): byte-exact messages, keys and keepalive.
    #[test]
    fn reference_vector() {
        let s_i = key(0x10, 0x11, 0x51);
        let e_i = key(0x20, 0x22, 0x62);
        let s_r = key(0x30, 0x33, 0x73);
        let e_r = key(0x40, 0x44, 0x44);
        let psk = PresharedKey::default();
        assert_eq!(
            s_i.public_key().0.to_vec(),
            hex("7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13")
        );
        assert_eq!(
            s_r.public_key().0.to_vec(),
            hex("7b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14")
        );
        let ts = tai64n(core::time::Duration::from_secs(1_700_000_000));
        assert_eq!(ts.to_vec(), hex("400000006553f10a00000000"));
        let ss = s_i.diffie_hellman(s_r.public_key().as_bytes()).unwrap();
        let (mut m1, state) =
            create_initiation(&s_i, &s_r.public_key(), e_i, 0x11223344, ts, &ss).unwrap();
        let mac1_to_r = mac1_key(&s_r.public_key());
        assert_eq!(
            mac1_to_r.to_vec(),
            hex("ddf789015bcda5a3f830d712ad1174928ee963c27985fd28b0d1cee19960d57c")
        );
        let sent_mac1 = write_macs(&mut m1, INITIATION_MAC1, &mac1_to_r, None);
        assert_eq!(m1.to_vec(), hex("01000000443322110faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f203d95fc552c29d1bed66597b8ccddb5766350b66aad8baf1f3be1ddc6d207869c1b35fcf9165dca7274c2fc8309478ea5a698d106dde47e0325181bc100185094f7a123629882675ee6ca90bc6b8b619aad8c974b8d334605d932f71e00000000000000000000000000000000"));

        assert!(mac1_valid(&m1, INITIATION_MAC1, &mac1_to_r));
        let consumed = consume_initiation(&s_r, &m1, |p| s_r.diffie_hellman(p.as_bytes())).unwrap();
        assert_eq!(consumed.peer, s_i.public_key());
        assert_eq!(consumed.timestamp, ts);
        let (mut m2, keys_r) = create_response(&consumed, &e_r, 0x55667788, &psk).unwrap();
        write_macs(&mut m2, RESPONSE_MAC1, &mac1_key(&s_i.public_key()), None);
        assert_eq!(m2.to_vec(), hex("020000008877665544332211ff2ee45601ec1b67310c7790404585ae697331eee1c1f8cf2419731c1fff3e6b32bbe62424fc2b26d53342f57a4396e9f245f0b1a2ce1d0f0c1e56884d41801100000000000000000000000000000000"));
        let keys_i = consume_response(&state, &s_i, &m2, &psk).unwrap();
        assert_eq!(
            keys_i.send.to_vec(),
            hex("a34ccdf475340d322edbe5a9d5d7d53f4846da5413787bec742bf3046a20a0e1")
        );
        assert_eq!(
            keys_i.recv.to_vec(),
            hex("bf099c99b6272d78fb6c67d6d3372e99001d3be1fc9e6c72041cfa6ad6e3ea3a")
        );
        assert_eq!(keys_r.recv, keys_i.send);
        assert_eq!(keys_r.send, keys_i.recv);
        assert_eq!(keys_i.remote_index, 0x55667788);

        // Keepalive I→R with counter 0.
        let mut ka = vec![4u8, 0, 0, 0];
        ka.extend_from_slice(&keys_i.remote_index.to_le_bytes());
        ka.extend_from_slice(&0u64.to_le_bytes());
        let mut tag = [0u8; 16];
        aead_seal(&keys_i.send, 0, &[], &[], &mut tag);
        ka.extend_from_slice(&tag);
        assert_eq!(
            ka,
            hex("040000008877665500000000000000001d9612c4ffd267f43fd53646efb4f3ea")
        );

        // Cookie path.
        let cookie = mac(&[0x77; 32], &[&hex("c0000201ca6c")]);
        assert_eq!(cookie.to_vec(), hex("46c419ce02f997278ea19ed5a327151e"));
        let m3 = create_cookie_reply(
            &s_r.public_key(),
            0x11223344,
            &sent_mac1,
            &cookie,
            [0x99; 24],
        );
        assert_eq!(m3.to_vec(), hex("0300000044332211999999999999999999999999999999999999999999999999977438950dee5f6d4c668133d1029f86f251df5c31271e3d38931f3da729da81"));
        assert_eq!(
            consume_cookie_reply(&s_r.public_key(), &m3, &sent_mac1),
            Some(cookie)
        );
        let mut again = m1;
        write_macs(&mut again, INITIATION_MAC1, &mac1_to_r, Some(&cookie));
        assert_eq!(
            again[132..148].to_vec(),
            hex("aa42429859e60439eb09b0923c6ece2b")
        );
        assert!(mac2_valid(&again, INITIATION_MAC1, &cookie));
    }
}
