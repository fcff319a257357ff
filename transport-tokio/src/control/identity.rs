//! Proof that a registrant holds its node's private key (security audit #2).
//!
//! Registration is two requests. `GET /machine/challenge` returns a fresh challenge and a
//! server key made for it alone; the node seals its registration (auth key or current node
//! secret, host name, disco key, the challenge) in a NaCl box from its node key to that server
//! key. Only the holder of the node's private key can make a box that opens under the node's
//! public key, so a public key copied from a netmap registers nothing.
//!
//! The server keeps no per-challenge state until one is redeemed: a challenge is a timestamp,
//! random bytes and a MAC under a key that lives only in the server's memory, and its server
//! key is derived from it. Redeemed challenges are remembered until they expire, so each one
//! registers once.

use std::collections::BTreeMap;

use base64::Engine;
use burrow_derp::nacl::BoxKey;
use burrow_wg::{PrivateKey, PublicKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// How long a challenge may be answered, in seconds.
pub const CHALLENGE_TTL: u64 = 60;
/// Redeemed challenges remembered at most; past it the oldest are forgotten (they expire within
/// a minute anyway, and only challenges whose registration succeeded are kept).
pub const MAX_REDEEMED: usize = 65_536;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub use burrow_control::{ChallengeResponse, RegisterBody, RegisterRequest};

/// Why a registration's proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    /// Not base64, or the wrong length.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Not issued by this server (or by this run of it), or expired.
    #[error("unknown or expired challenge: ask for a new one")]
    BadChallenge,
    /// Answered already.
    #[error("challenge already used: ask for a new one")]
    Replayed,
    /// The box does not open under the node key: the registrant does not hold it.
    #[error("the registration is not sealed with this node key")]
    NotSealedByNode,
}

/// The nonce of a registration's box: one box per challenge-derived key, so a nonce derived
/// from the challenge is never reused under one key.
fn nonce_for(challenge: &[u8; 32]) -> [u8; 24] {
    let d = Sha256::new()
        .chain_update(b"burrow register nonce v1")
        .chain_update(challenge)
        .finalize();
    let mut n = [0u8; 24];
    n.copy_from_slice(&d[..24]);
    n
}

/// Seals a registration for `challenge` (from `GET /machine/challenge`) with the node key.
pub fn seal_registration(
    node_key: &PrivateKey,
    challenge: &ChallengeResponse,
    mut body: RegisterBody,
) -> Result<RegisterRequest, ProofError> {
    let raw = decode32(&challenge.challenge, "challenge")?;
    let server = PublicKey(decode32(&challenge.server_key, "server key")?);
    let boxed = BoxKey::new(node_key, &server).ok_or(ProofError::Malformed("server key"))?;
    body.challenge = challenge.challenge.clone();
    let json = serde_json::to_vec(&body).map_err(|_| ProofError::Malformed("body"))?;
    Ok(RegisterRequest {
        node_key: node_key.public_key().to_base64(),
        challenge: challenge.challenge.clone(),
        sealed: B64.encode(boxed.seal(&nonce_for(&raw), &json)),
    })
}

fn decode32(s: &str, what: &'static str) -> Result<[u8; 32], ProofError> {
    let v = B64
        .decode(s.trim())
        .map_err(|_| ProofError::Malformed(what))?;
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| ProofError::Malformed(what))
}

/// The challenge a registration answers, as bytes (None: malformed; redeeming it says why).
pub fn challenge_bytes(req: &RegisterRequest) -> Option<[u8; 32]> {
    decode32(&req.challenge, "challenge").ok()
}

/// The server's side: issues challenges and checks answers.
pub struct Challenges {
    mac_key: [u8; 32],
    /// Redeemed challenges and when each expires, and the same ordered by expiry.
    redeemed: BTreeMap<[u8; 32], u64>,
    by_expiry: std::collections::BTreeSet<(u64, [u8; 32])>,
}

impl Challenges {
    /// A fresh MAC key (challenges from an earlier run are void).
    pub fn new(mac_key: [u8; 32]) -> Self {
        Challenges {
            mac_key,
            redeemed: BTreeMap::new(),
            by_expiry: std::collections::BTreeSet::new(),
        }
    }

    fn mac(&self, label: &[u8], data: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac_key).expect("any key size");
        m.update(label);
        m.update(data);
        m.finalize().into_bytes().into()
    }

    fn server_key(&self, challenge: &[u8; 32]) -> PrivateKey {
        PrivateKey::from_bytes(self.mac(b"burrow register server key v1", challenge))
    }

    /// A challenge issued at `now` (unix seconds) with 8 random bytes.
    pub fn issue(&self, now: u64, random: [u8; 8]) -> ChallengeResponse {
        let mut c = [0u8; 32];
        c[..8].copy_from_slice(&now.to_be_bytes());
        c[8..16].copy_from_slice(&random);
        let tag = self.mac(b"burrow register challenge v1", &c[..16]);
        c[16..].copy_from_slice(&tag[..16]);
        ChallengeResponse {
            challenge: B64.encode(c),
            server_key: self.server_key(&c).public_key().to_base64(),
        }
    }

    /// Checks a registration: the challenge is ours, fresh and unused, and the box opens under
    /// the node key. Returns the node key and the body; the challenge is then spent.
    pub fn redeem(
        &mut self,
        now: u64,
        req: &RegisterRequest,
    ) -> Result<(PublicKey, RegisterBody), ProofError> {
        let node =
            PublicKey::from_base64(&req.node_key).map_err(|_| ProofError::Malformed("node key"))?;
        let c = decode32(&req.challenge, "challenge")?;
        let tag = self.mac(b"burrow register challenge v1", &c[..16]);
        {
            use subtle::ConstantTimeEq;
            if !bool::from(tag[..16].ct_eq(&c[16..])) {
                return Err(ProofError::BadChallenge);
            }
        }
        let issued = u64::from_be_bytes(c[..8].try_into().expect("8 bytes"));
        if issued > now + 5 || now >= issued.saturating_add(CHALLENGE_TTL) {
            return Err(ProofError::BadChallenge);
        }
        let sealed = B64
            .decode(req.sealed.trim())
            .map_err(|_| ProofError::Malformed("sealed body"))?;
        let plain = BoxKey::new(&self.server_key(&c), &node)
            .and_then(|b| b.open(&nonce_for(&c), &sealed))
            .ok_or(ProofError::NotSealedByNode)?;
        let body: RegisterBody =
            serde_json::from_slice(&plain).map_err(|_| ProofError::Malformed("body"))?;
        if body.challenge != req.challenge {
            return Err(ProofError::NotSealedByNode);
        }
        while let Some(&(expires, old)) = self.by_expiry.first() {
            if expires > now && self.redeemed.len() < MAX_REDEEMED {
                break;
            }
            self.by_expiry.remove(&(expires, old));
            self.redeemed.remove(&old);
        }
        if self.redeemed.contains_key(&c) {
            return Err(ProofError::Replayed);
        }
        let expires = issued + CHALLENGE_TTL;
        self.redeemed.insert(c, expires);
        self.by_expiry.insert((expires, c));
        Ok((node, body))
    }

    /// Gives a challenge back: its registration was refused, so it registered nothing and
    /// need not be remembered (only successful registrations hold memory here).
    pub fn release(&mut self, req: &RegisterRequest) {
        if let Ok(c) = decode32(&req.challenge, "challenge") {
            if let Some(expires) = self.redeemed.remove(&c) {
                self.by_expiry.remove(&(expires, c));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> RegisterBody {
        RegisterBody {
            auth_key: Some("burrowkey-x".into()),
            hostname: "a".into(),
            disco_key: PrivateKey::from_bytes([9; 32]).public_key().to_base64(),
            ..RegisterBody::default()
        }
    }

    #[test]
    fn only_the_key_holder_registers_and_only_once() {
        let mut server = Challenges::new([1; 32]);
        let node = PrivateKey::from_bytes([2; 32]);
        let c = server.issue(1000, [3; 8]);
        let req = seal_registration(&node, &c, body()).unwrap();
        let (key, got) = server.redeem(1001, &req).unwrap();
        assert_eq!(key, node.public_key());
        assert_eq!(got.auth_key.as_deref(), Some("burrowkey-x"));
        assert_eq!(server.redeem(1002, &req).unwrap_err(), ProofError::Replayed);

        // Someone who knows only the public key: seals with their own key, claims the node's.
        let c = server.issue(1000, [4; 8]);
        let mut forged = seal_registration(&PrivateKey::from_bytes([5; 32]), &c, body()).unwrap();
        forged.node_key = node.public_key().to_base64();
        assert_eq!(
            server.redeem(1001, &forged).unwrap_err(),
            ProofError::NotSealedByNode
        );
    }

    #[test]
    fn a_refused_registration_gives_its_challenge_back() {
        let mut server = Challenges::new([1; 32]);
        let node = PrivateKey::from_bytes([2; 32]);
        let req = seal_registration(&node, &server.issue(1000, [3; 8]), body()).unwrap();
        server.redeem(1001, &req).unwrap();
        server.release(&req);
        assert!(server.redeemed.is_empty() && server.by_expiry.is_empty());
        server.redeem(1002, &req).unwrap();
        assert_eq!(server.redeem(1003, &req).unwrap_err(), ProofError::Replayed);
        // Expired entries leave in expiry order when later ones are redeemed.
        let later = 1000 + CHALLENGE_TTL + 1;
        let next = seal_registration(&node, &server.issue(later, [4; 8]), body()).unwrap();
        server.redeem(later, &next).unwrap();
        assert_eq!(server.redeemed.len(), 1);
    }

    #[test]
    fn foreign_and_stale_challenges_are_refused() {
        let mut server = Challenges::new([1; 32]);
        let other = Challenges::new([7; 32]);
        let node = PrivateKey::from_bytes([2; 32]);
        let req = seal_registration(&node, &other.issue(1000, [3; 8]), body()).unwrap();
        assert_eq!(
            server.redeem(1001, &req).unwrap_err(),
            ProofError::BadChallenge
        );
        let req = seal_registration(&node, &server.issue(1000, [3; 8]), body()).unwrap();
        assert_eq!(
            server.redeem(1000 + CHALLENGE_TTL, &req).unwrap_err(),
            ProofError::BadChallenge
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let b = RegisterBody {
            node_secret: Some("burrownode-secret".into()),
            ..body()
        };
        let s = format!("{b:?}");
        assert!(
            !s.contains("burrowkey-x") && !s.contains("burrownode-secret"),
            "{s}"
        );
    }
}
