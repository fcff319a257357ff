//! One keypair: sealing and opening transport data in caller buffers, counters, replay window.

use std::time::Instant;

use crate::aead::{DefaultAead, TransportAead};
use crate::messages::{padded, TAG_LEN, TRANSPORT_HEADER_LEN, TYPE_TRANSPORT};
use crate::noise::SessionKeys;
use crate::replay::{ReplayWindow, REJECT_AFTER_MESSAGES};
use crate::WgError;

pub(crate) struct Session {
    pub local_index: u32,
    pub remote_index: u32,
    send: DefaultAead,
    recv: DefaultAead,
    pub send_counter: u64,
    pub created: Instant,
    pub initiator: bool,
    replay: ReplayWindow,
}

impl Session {
    pub fn new(keys: &SessionKeys, created: Instant, initiator: bool) -> Self {
        Session {
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            send: DefaultAead::new(&keys.send),
            recv: DefaultAead::new(&keys.recv),
            send_counter: 0,
            created,
            initiator,
            replay: ReplayWindow::default(),
        }
    }

    /// Writes a transport message for `plaintext` into `out`; returns its length.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, WgError> {
        let padded_len = padded(plaintext.len());
        let total = TRANSPORT_HEADER_LEN + padded_len + TAG_LEN;
        if out.len() < total {
            return Err(WgError::BufferTooSmall { needed: total });
        }
        let counter = self.send_counter;
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(WgError::NoSession);
        }
        self.send_counter += 1;
        out[..4].copy_from_slice(&[TYPE_TRANSPORT, 0, 0, 0]);
        out[4..8].copy_from_slice(&self.remote_index.to_le_bytes());
        out[8..16].copy_from_slice(&counter.to_le_bytes());
        let body = &mut out[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + padded_len];
        body[..plaintext.len()].copy_from_slice(plaintext);
        body[plaintext.len()..].fill(0);
        let tag = self.send.seal_in_place(counter, &[], body);
        out[TRANSPORT_HEADER_LEN + padded_len..total].copy_from_slice(&tag);
        Ok(total)
    }

    /// Authenticates and decrypts into `out`; returns the (padded) plaintext length.
    pub fn open(
        &mut self,
        counter: u64,
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, WgError> {
        let len = ciphertext.len() - TAG_LEN;
        if out.len() < len {
            return Err(WgError::BufferTooSmall { needed: len });
        }
        let tag: [u8; 16] = ciphertext[len..].try_into().expect("16 bytes");
        out[..len].copy_from_slice(&ciphertext[..len]);
        if !self.recv.open_in_place(counter, &[], &mut out[..len], &tag) {
            return Err(WgError::DecryptFailed);
        }
        // The replay check comes only after the tag verified.
        if !self.replay.check_and_set(counter) {
            return Err(WgError::Replay);
        }
        Ok(len)
    }
}
