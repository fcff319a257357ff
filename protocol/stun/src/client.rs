//! Sans-IO Binding client: RFC 8489 §6.2.1 retransmission, responses matched by transaction ID.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use thiserror::Error;

use crate::attribute::{Attribute, ChangeRequest};
use crate::encode::Encoder;
use crate::error::{DecodeError, VerifyError};
use crate::header::{Class, MessageType, Method, TransactionId};
use crate::message::Message;

/// Retransmission parameters (RFC 8489 §6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitConfig {
    /// Initial retransmission timeout; doubles after each retransmission.
    pub rto: Duration,
    /// Rc: how many requests are sent in all.
    pub max_requests: u32,
    /// Rm: after the last request, wait `Rm × rto` before giving up.
    pub last_wait_multiplier: u32,
}

impl Default for RetransmitConfig {
    /// RTO 500 ms, Rc = 7, Rm = 16: requests at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s, timeout at 39.5 s.
    fn default() -> Self {
        RetransmitConfig {
            rto: Duration::from_millis(500),
            max_requests: 7,
            last_wait_multiplier: 16,
        }
    }
}

impl RetransmitConfig {
    /// Total time from the first request until the transaction times out.
    pub fn transaction_timeout(&self) -> Duration {
        let mut t = Duration::ZERO;
        let mut rto = self.rto;
        for _ in 1..self.max_requests.max(1) {
            t += rto;
            rto = rto.saturating_mul(2);
        }
        t.saturating_add(self.rto.saturating_mul(self.last_wait_multiplier))
    }
}

/// Client configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Retransmission schedule.
    pub retransmit: RetransmitConfig,
    /// SOFTWARE value to put in requests, if any.
    pub software: Option<String>,
    /// Whether requests carry FINGERPRINT.
    pub fingerprint: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            retransmit: RetransmitConfig::default(),
            software: None,
            fingerprint: true,
        }
    }
}

/// What to ask a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRequest {
    /// Where to send the request.
    pub server: SocketAddr,
    /// RFC 5780 CHANGE-REQUEST: ask the server to answer from its alternate IP and/or port.
    pub change_request: Option<ChangeRequest>,
}

impl BindingRequest {
    /// A plain Binding request to `server`.
    pub fn to(server: SocketAddr) -> Self {
        BindingRequest {
            server,
            change_request: None,
        }
    }
}

/// A datagram for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub dst: SocketAddr,
    /// The STUN message.
    pub payload: Vec<u8>,
}

/// A successful Binding response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingResponse {
    /// The transaction this answers.
    pub id: TransactionId,
    /// Where the request was sent.
    pub server: SocketAddr,
    /// The source address of the response datagram.
    pub received_from: SocketAddr,
    /// The reflexive address the server saw (XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS).
    pub mapped: SocketAddr,
    /// RFC 5780 OTHER-ADDRESS, if the server has an alternate address.
    pub other_address: Option<SocketAddr>,
    /// RFC 5780 RESPONSE-ORIGIN.
    pub response_origin: Option<SocketAddr>,
    /// Round-trip time, if the request was never retransmitted (Karn's algorithm).
    pub rtt: Option<Duration>,
    /// When the response arrived.
    pub received_at: Instant,
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The server answered with a success response.
    Success(BindingResponse),
    /// The server answered with an error response.
    ErrorResponse {
        /// The transaction.
        id: TransactionId,
        /// Where the request was sent.
        server: SocketAddr,
        /// ERROR-CODE code (0 if the response carried none).
        code: u16,
        /// ERROR-CODE reason phrase.
        reason: String,
    },
    /// No response within the retransmission schedule.
    TimedOut {
        /// The transaction.
        id: TransactionId,
        /// Where the request was sent.
        server: SocketAddr,
    },
}

/// Why an incoming datagram was not taken as a response. The client is unaffected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientError {
    /// Not a well-formed STUN message.
    #[error("not a valid STUN message: {0}")]
    Decode(#[from] DecodeError),
    /// A STUN message, but not a Binding response.
    #[error("not a Binding response")]
    NotABindingResponse,
    /// No transaction with this ID is in progress.
    #[error("no transaction {0:?} in progress")]
    UnknownTransaction(TransactionId),
    /// FINGERPRINT is present but wrong.
    #[error("response rejected: {0}")]
    Verify(#[from] VerifyError),
    /// A success response without a mapped address.
    #[error("success response carries no (XOR-)MAPPED-ADDRESS")]
    MissingMappedAddress,
    /// A response with a comprehension-required attribute we do not understand.
    #[error("response carries unknown comprehension-required attribute {0:#06x}")]
    UnknownAttribute(u16),
}

#[derive(Debug)]
struct Transaction {
    server: SocketAddr,
    payload: Vec<u8>,
    sent: u32,
    first_sent: Instant,
    rto: Duration,
    deadline: Instant,
}

/// Runs any number of concurrent Binding transactions.
///
/// Drive it with [`handle_input`](Self::handle_input) and [`handle_timeout`](Self::handle_timeout);
/// drain [`poll_transmit`](Self::poll_transmit) and [`poll_event`](Self::poll_event); sleep until
/// [`poll_timeout`](Self::poll_timeout).
#[derive(Debug)]
pub struct BindingClient {
    config: ClientConfig,
    rng: ChaCha20Rng,
    transactions: BTreeMap<TransactionId, Transaction>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl BindingClient {
    /// A client with its own seeded random source (for transaction IDs).
    pub fn new(config: ClientConfig, rng: ChaCha20Rng) -> Self {
        BindingClient {
            config,
            rng,
            transactions: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Starts a transaction; its first request is queued at once.
    pub fn start(&mut self, now: Instant, request: BindingRequest) -> TransactionId {
        let id = loop {
            let id = TransactionId::random(&mut self.rng);
            if !self.transactions.contains_key(&id) {
                break id;
            }
        };
        let mut attrs: [Attribute<'_>; 2] = [Attribute::Padding(&[]), Attribute::Padding(&[])];
        let mut n = 0;
        if let Some(cr) = request.change_request {
            attrs[n] = Attribute::ChangeRequest(cr);
            n += 1;
        }
        if let Some(sw) = &self.config.software {
            attrs[n] = Attribute::Software(sw);
            n += 1;
        }
        let mut enc = Encoder::new(MessageType::BINDING_REQUEST, id).attributes(&attrs[..n]);
        if self.config.fingerprint {
            enc = enc.fingerprint();
        }
        let mut payload = Vec::with_capacity(64);
        // A request of at most two short attributes always encodes.
        enc.encode(&mut payload)
            .expect("binding request within size limits");
        let rto = self.config.retransmit.rto;
        self.transmits.push_back(Transmit {
            dst: request.server,
            payload: payload.clone(),
        });
        let mut txn = Transaction {
            server: request.server,
            payload,
            sent: 1,
            first_sent: now,
            rto,
            deadline: now + rto,
        };
        if txn.sent >= self.config.retransmit.max_requests {
            txn.deadline = now + rto.saturating_mul(self.config.retransmit.last_wait_multiplier);
        }
        self.transactions.insert(id, txn);
        id
    }

    /// Abandons a transaction without an event.
    pub fn cancel(&mut self, id: TransactionId) -> bool {
        self.transactions.remove(&id).is_some()
    }

    /// Number of transactions still in progress.
    pub fn in_flight(&self) -> usize {
        self.transactions.len()
    }

    /// Offers a received datagram. Responses are matched by transaction ID alone, so answers
    /// sent from a server's alternate address (CHANGE-REQUEST) are accepted.
    pub fn handle_input(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), ClientError> {
        let msg = Message::parse(datagram)?;
        let ty = msg.message_type();
        if ty.method != Method::BINDING || !matches!(ty.class, Class::Success | Class::Error) {
            return Err(ClientError::NotABindingResponse);
        }
        let id = msg.transaction_id();
        if !self.transactions.contains_key(&id) {
            return Err(ClientError::UnknownTransaction(id));
        }
        if msg.has_fingerprint() {
            msg.verify_fingerprint()?;
        }
        if let Some(t) = msg.unknown_comprehension_required().next() {
            return Err(ClientError::UnknownAttribute(t));
        }
        let event = if ty.class == Class::Success {
            let mut mapped = None;
            let mut xor_mapped = None;
            let mut other_address = None;
            let mut response_origin = None;
            for attr in msg.attributes() {
                match attr? {
                    Attribute::XorMappedAddress(a) => {
                        xor_mapped.get_or_insert(a);
                    }
                    Attribute::MappedAddress(a) => {
                        mapped.get_or_insert(a);
                    }
                    Attribute::OtherAddress(a) | Attribute::ChangedAddress(a) => {
                        other_address.get_or_insert(a);
                    }
                    Attribute::ResponseOrigin(a) | Attribute::SourceAddress(a) => {
                        response_origin.get_or_insert(a);
                    }
                    _ => {}
                }
            }
            let mapped = xor_mapped
                .or(mapped)
                .ok_or(ClientError::MissingMappedAddress)?;
            let txn = self.transactions.remove(&id).expect("checked above");
            Event::Success(BindingResponse {
                id,
                server: txn.server,
                received_from: from,
                mapped,
                other_address,
                response_origin,
                rtt: (txn.sent == 1).then(|| now.saturating_duration_since(txn.first_sent)),
                received_at: now,
            })
        } else {
            let (code, reason) = match msg.attribute(crate::attribute::types::ERROR_CODE) {
                Some(Ok(Attribute::ErrorCode(e))) => (e.code, e.reason.to_owned()),
                Some(Err(e)) => return Err(e.into()),
                _ => (0, String::new()),
            };
            let txn = self.transactions.remove(&id).expect("checked above");
            Event::ErrorResponse {
                id,
                server: txn.server,
                code,
                reason,
            }
        };
        self.events.push_back(event);
        Ok(())
    }

    /// Retransmits or times out every transaction whose deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let cfg = self.config.retransmit;
        let mut expired = Vec::new();
        for (id, txn) in self.transactions.iter_mut() {
            if txn.deadline > now {
                continue;
            }
            if txn.sent >= cfg.max_requests {
                expired.push(*id);
                continue;
            }
            txn.sent += 1;
            txn.rto = txn.rto.saturating_mul(2);
            txn.deadline = if txn.sent >= cfg.max_requests {
                now + cfg.rto.saturating_mul(cfg.last_wait_multiplier)
            } else {
                now + txn.rto
            };
            self.transmits.push_back(Transmit {
                dst: txn.server,
                payload: txn.payload.clone(),
            });
        }
        for id in expired {
            if let Some(txn) = self.transactions.remove(&id) {
                self.events.push_back(Event::TimedOut {
                    id,
                    server: txn.server,
                });
            }
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next completed transaction.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transactions.values().map(|t| t.deadline).min()
    }
}
