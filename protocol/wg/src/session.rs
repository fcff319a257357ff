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
        let counter = self.send_counter;
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(WgError::NoSession);
        }
        let len = seal_transport(&self.send, self.remote_index, counter, plaintext, out)?;
        self.send_counter += 1;
        Ok(len)
    }

    /// Takes the next `count` send counters for a [`SealRun`] usable until `until`; `None`
    /// if the keypair's message limit would be passed.
    pub fn reserve(&mut self, count: usize, until: Instant) -> Option<SealRun> {
        let first = self.send_counter;
        let end = first.checked_add(u64::try_from(count).ok()?)?;
        if end > REJECT_AFTER_MESSAGES {
            return None;
        }
        self.send_counter = end;
        Some(SealRun {
            aead: self.send.clone(),
            remote_index: self.remote_index,
            next: first,
            end,
            until,
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

    /// Takes a message opened under this keypair's receiving key through the replay window
    /// (only after its tag verified, which an [`Opened`] proves); refuses one opened under
    /// another key.
    pub fn accept(&mut self, opened: &Opened) -> Result<(), WgError> {
        if !Arc::ptr_eq(&self.recv, &opened.aead) {
            return Err(WgError::UnknownIndex(opened.receiver));
        }
        if self.replay.check_and_set(opened.counter) {
            Ok(())
        } else {
            Err(WgError::Replay)
        }
    }
}

/// A transport message matched to one of a tunnel's keypairs, to be authenticated and
/// decrypted outside the tunnel (on any thread); what [`open`](Opener::open) returns, an
/// [`Opened`], goes back to it with [`Tunnel::accept_opened`](crate::Tunnel::accept_opened)
/// (or [`Device::accept_opened`](crate::Device::accept_opened)), which checks the replay
/// window and runs the timers. Nothing counts as received until then.
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
    /// included, which must name this opener's receiver and counter) into `out`; the
    /// [`Opened`] proof carries the padded plaintext's length.
    pub fn open(self, datagram: &[u8], out: &mut [u8]) -> Result<Opened, WgError> {
        let (header, ciphertext) = datagram
            .split_at_checked(TRANSPORT_HEADER_LEN)
            .filter(|(_, c)| c.len() >= TAG_LEN)
            .ok_or(WgError::DecryptFailed)?;
        if header[4..8] != self.receiver.to_le_bytes()
            || header[8..16] != self.counter.to_le_bytes()
        {
            return Err(WgError::DecryptFailed);
        }
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
        Ok(Opened {
            aead: self.aead,
            receiver: self.receiver,
            counter: self.counter,
            len,
        })
    }
}

/// Proof that a transport message authenticated under a keypair's receiving key (made only by
/// [`Opener::open`]), for the tunnel to accept: it names the key, the receiver index, the
/// counter and the plaintext's (padded) length.
pub struct Opened {
    aead: Arc<DefaultAead>,
    receiver: u32,
    counter: u64,
    len: usize,
}

impl core::fmt::Debug for Opened {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Opened")
            .field("receiver", &self.receiver)
            .field("counter", &self.counter)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Opened {
    /// The receiver index the message named.
    pub fn receiver(&self) -> u32 {
        self.receiver
    }

    /// The padded plaintext's length, at the start of the buffer `open` wrote.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the plaintext is empty (a keepalive).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Writes the transport message for `plaintext` under `counter` into `out`; returns its length,
/// or fails, writing nothing, when `out` is too short.
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
/// the tunnel. Each counter can seal once: [`seal`](SealRun::seal) takes the next, and
/// [`split_off`](SealRun::split_off) hands the later counters to another thread, so a run cut
/// in two is sealed on two cores and still leaves in counter order. A counter left unused is
/// harmless (the receiver's replay window takes gaps). The run keeps its keypair's sending key
/// alive until dropped, and seals nothing once the keypair is too old to send on.
pub struct SealRun {
    aead: Arc<DefaultAead>,
    remote_index: u32,
    next: u64,
    end: u64,
    /// No sealing from this moment (the keypair's sending life).
    until: Instant,
}

impl core::fmt::Debug for SealRun {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SealRun")
            .field("remote_index", &self.remote_index)
            .field("next", &self.next)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl SealRun {
    /// Counters left.
    pub fn len(&self) -> usize {
        usize::try_from(self.end - self.next).unwrap_or(usize::MAX)
    }

    /// Whether no counter is left.
    pub fn is_empty(&self) -> bool {
        self.next == self.end
    }

    /// Keeps the first `at` counters left and returns a run of the rest (all of them if `at`
    /// is larger): two runs that never share a counter.
    pub fn split_off(&mut self, at: usize) -> SealRun {
        let mid = self
            .next
            .saturating_add(u64::try_from(at).unwrap_or(u64::MAX))
            .min(self.end);
        let rest = SealRun {
            aead: self.aead.clone(),
            remote_index: self.remote_index,
            next: mid,
            end: self.end,
            until: self.until,
        };
        self.end = mid;
        rest
    }

    /// Seals `plaintext` into `out` with the run's next counter; returns the transport
    /// message's length. Fails, spending nothing, when no counter is left or the keypair is
    /// too old ([`WgError::NoSession`]: send through the device again) or `out` is too small.
    pub fn seal(
        &mut self,
        now: Instant,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, WgError> {
        if self.next == self.end || now >= self.until {
            return Err(WgError::NoSession);
        }
        let len = seal_transport(&self.aead, self.remote_index, self.next, plaintext, out)?;
        self.next += 1;
        Ok(len)
    }
}
