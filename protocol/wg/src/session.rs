//! One keypair: sealing and opening transport data in caller buffers, counters, replay window.

use std::sync::Arc;
use std::time::Instant;

use crate::aead::{DefaultAead, TransportAead};
use crate::messages::{padded, transport_len, TAG_LEN, TRANSPORT_HEADER_LEN, TYPE_TRANSPORT};
use crate::noise::SessionKeys;
use crate::replay::{ReplayWindow, REJECT_AFTER_MESSAGES};
use crate::WgError;

pub(crate) struct Session {
    pub local_index: u32,
    pub remote_index: u32,
    send: Arc<DefaultAead>,
    recv: Arc<DefaultAead>,
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
            send: Arc::new(DefaultAead::new(&keys.send)),
            recv: Arc::new(DefaultAead::new(&keys.recv)),
            send_counter: 0,
            created,
            initiator,
            replay: ReplayWindow::default(),
        }
    }

    /// Writes a transport message for `plaintext` into `out`; returns its length.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, WgError> {
        let total = transport_len(plaintext.len());
        if out.len() < total {
            return Err(WgError::BufferTooSmall { needed: total });
        }
        let counter = self.send_counter;
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(WgError::NoSession);
        }
        self.send_counter += 1;
        seal_transport(&self.send, self.remote_index, counter, plaintext, out)
    }

    /// Takes the next `count` send counters for a [`SealRun`]; `None` if the keypair's
    /// message limit would be passed.
    pub fn reserve(&mut self, count: usize) -> Option<SealRun> {
        let first = self.send_counter;
        let end = first.checked_add(u64::try_from(count).ok()?)?;
        if end > REJECT_AFTER_MESSAGES {
            return None;
        }
        self.send_counter = end;
        Some(SealRun {
            aead: self.send.clone(),
            remote_index: self.remote_index,
            first,
            count,
        })
    }

    /// The receiving key, for an [`Opener`].
    pub fn opener(&self, receiver: u32, counter: u64) -> Opener {
        Opener {
            aead: self.recv.clone(),
            receiver,
            counter,
        }
    }

    /// Takes `counter`, whose message authenticated, through the replay window: it must come
    /// only after the tag verified.
    pub fn accept(&mut self, counter: u64) -> Result<(), WgError> {
        if self.replay.check_and_set(counter) {
            Ok(())
        } else {
            Err(WgError::Replay)
        }
    }
}

/// A transport message matched to one of a tunnel's keypairs, to be authenticated and
/// decrypted outside the tunnel (on any thread), then handed back to it with
/// [`Tunnel::accept_opened`](crate::Tunnel::accept_opened) (or
/// [`Device::accept_opened`](crate::Device::accept_opened)), which checks the replay window and
/// runs the timers. Nothing counts as received until then.
#[derive(Clone)]
pub struct Opener {
    aead: Arc<DefaultAead>,
    receiver: u32,
    counter: u64,
}

impl core::fmt::Debug for Opener {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Opener")
            .field("receiver", &self.receiver)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// The receiver index the message named.
    pub fn receiver(&self) -> u32 {
        self.receiver
    }

    /// The message's counter.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Authenticates and decrypts the transport message `datagram` (the whole of it, header
    /// included) into `out`; returns the padded plaintext's length.
    pub fn open(&self, datagram: &[u8], out: &mut [u8]) -> Result<usize, WgError> {
        let ciphertext = datagram
            .get(TRANSPORT_HEADER_LEN..)
            .filter(|c| c.len() >= TAG_LEN)
            .ok_or(WgError::DecryptFailed)?;
        let len = ciphertext.len() - TAG_LEN;
        if out.len() < len {
            return Err(WgError::BufferTooSmall { needed: len });
        }
        let tag: [u8; 16] = ciphertext[len..].try_into().expect("16 bytes");
        out[..len].copy_from_slice(&ciphertext[..len]);
        if !self
            .aead
            .open_in_place(self.counter, &[], &mut out[..len], &tag)
        {
            return Err(WgError::DecryptFailed);
        }
        Ok(len)
    }
}

/// Writes the transport message for `plaintext` under `counter` into `out` (which the caller
/// made long enough); returns its length.
fn seal_transport(
    aead: &DefaultAead,
    remote_index: u32,
    counter: u64,
    plaintext: &[u8],
    out: &mut [u8],
) -> Result<usize, WgError> {
    let padded_len = padded(plaintext.len());
    let total = transport_len(plaintext.len());
    if out.len() < total {
        return Err(WgError::BufferTooSmall { needed: total });
    }
    out[..4].copy_from_slice(&[TYPE_TRANSPORT, 0, 0, 0]);
    out[4..8].copy_from_slice(&remote_index.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
    let body = &mut out[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + padded_len];
    body[..plaintext.len()].copy_from_slice(plaintext);
    body[plaintext.len()..].fill(0);
    let tag = aead.seal_in_place(counter, &[], body);
    out[TRANSPORT_HEADER_LEN + padded_len..total].copy_from_slice(&tag);
    Ok(total)
}

/// Send counters taken from the current keypair for a run of data packets, sealed outside
/// the tunnel, by several threads at once if the caller likes: packet `i` of the run gets
/// counter `first + i`, so sending the run in index order keeps the flow in order whoever
/// sealed which packet. A counter left unused is harmless (the receiver's replay window
/// takes gaps). The run keeps its keypair's sending key alive until dropped.
#[derive(Clone)]
pub struct SealRun {
    aead: Arc<DefaultAead>,
    remote_index: u32,
    first: u64,
    count: usize,
}

impl core::fmt::Debug for SealRun {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SealRun")
            .field("remote_index", &self.remote_index)
            .field("first", &self.first)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl SealRun {
    /// Packets the run has counters for.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the run has no counter.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Seals packet `i` of the run into `out`; returns the transport message's length.
    /// Fails for an index past the run ([`WgError::NoSession`]) or too small a buffer.
    pub fn seal(&self, i: usize, plaintext: &[u8], out: &mut [u8]) -> Result<usize, WgError> {
        if i >= self.count {
            return Err(WgError::NoSession);
        }
        let counter = self.first + i as u64;
        seal_transport(&self.aead, self.remote_index, counter, plaintext, out)
    }
}
