//! The tokio driver of the node session ([`burrow_session::Session`]): it carries out the
//! session's requests with a [`ControlClient`], reads the map stream, and hands each event back
//! to its caller. `burrow up` and the simulator run the session through this one driver.

use std::sync::{Arc, Mutex, MutexGuard};

use burrow_session::{Failure, Input, Request, Session, SessionEvent};
use burrow_wg::PrivateKey;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::control::client::{ClientError, ControlClient, Opened};
use crate::node::NodeCommand;
use crate::transport::now;

/// Inputs waiting for the session (answers, map messages, endpoints) at most.
const INPUT_QUEUE: usize = 64;
/// Map-stream silence after which the stream counts as lost (three missed keep-alives).
const MAP_IDLE: std::time::Duration = std::time::Duration::from_secs(45);

/// Whether trying again may help.
fn failure_of(e: &ClientError) -> Failure {
    match e {
        ClientError::Refused { status: 401, .. } => Failure::Unauthorized,
        ClientError::Refused { status, reason }
            if (400..500).contains(status) && *status != 408 && *status != 429 =>
        {
            Failure::Permanent(format!("{status}: {reason}"))
        }
        ClientError::BadUrl(_) => Failure::Permanent(e.to_string()),
        // A certificate the node does not trust, or no TLS where TLS was asked for.
        ClientError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            Failure::Permanent(e.to_string())
        }
        _ => Failure::Transient,
    }
}

/// Runs a [`Session`] against a control server.
pub struct SessionDriver {
    session: Arc<Mutex<Session>>,
    client: ControlClient,
    node_key: PrivateKey,
    tx: mpsc::Sender<Input>,
    rx: mpsc::Receiver<Input>,
    /// Requests in flight and the map stream's reader; dropped with the driver.
    tasks: JoinSet<()>,
    /// Map streams opened so far (a later one is a reconnect).
    opened: u64,
}

impl std::fmt::Debug for SessionDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionDriver")
            .field("client", &self.client)
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl SessionDriver {
    /// A driver for `session`, registering with `node_key` (which stays in this process).
    pub fn new(session: Session, client: ControlClient, node_key: PrivateKey) -> Self {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        SessionDriver {
            session: Arc::new(Mutex::new(session)),
            client,
            node_key,
            tx,
            rx,
            tasks: JoinSet::new(),
            opened: 0,
        }
    }

    /// The session, shared with the packet paths (routes and filter).
    pub fn session(&self) -> Arc<Mutex<Session>> {
        self.session.clone()
    }

    /// Where the engine's endpoints go ([`Input::LocalEndpoints`]).
    pub fn inputs(&self) -> mpsc::Sender<Input> {
        self.tx.clone()
    }

    /// Runs the session until it has an event for the caller.
    pub async fn next_event(&mut self) -> SessionEvent {
        loop {
            let timeout = {
                let session = self.session.clone();
                let mut s = lock(&session);
                while let Some(r) = s.poll_transmit() {
                    self.spawn(r);
                }
                if let Some(e) = s.poll_event() {
                    return e;
                }
                s.poll_timeout()
            };
            let sleep = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(input) = self.rx.recv() => lock(&self.session).handle_input(now(), input),
                _ = sleep => lock(&self.session).handle_timeout(now()),
                // Reap finished request tasks (a panic in one is a bug worth surfacing).
                Some(Err(e)) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if e.is_panic() {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            }
        }
    }

    /// Carries out one request in its own task; its outcome comes back as an input.
    fn spawn(&mut self, request: Request) {
        let (client, tx, kind) = (self.client.clone(), self.tx.clone(), request.kind());
        let failed = move |e: &ClientError| Input::Failed {
            request: kind,
            failure: failure_of(e),
        };
        match request {
            Request::Register(body) => {
                let key = self.node_key.clone();
                self.tasks.spawn(async move {
                    let input = match client.register(&key, body).await {
                        Ok(r) => Input::Registered(r),
                        Err(e) => {
                            tracing::warn!(error = %e, "registration failed");
                            failed(&e)
                        }
                    };
                    let _ = tx.send(input).await;
                });
            }
            Request::OpenMap { secret, since } => {
                let again = self.opened > 0;
                self.opened += 1;
                self.tasks.spawn(async move {
                    let mut stream = match client.open_map_since(&secret, since).await {
                        Ok((stream, opened)) => {
                            let input = match opened {
                                Opened::NetMap(map) => {
                                    let peers = map.peers.len();
                                    match again {
                                        true => tracing::info!(peers, "netmap stream reconnected"),
                                        false => tracing::info!(peers, "netmap stream open"),
                                    }
                                    Input::MapOpened(*map)
                                }
                                Opened::Resumed { since } => {
                                    tracing::info!(since, "netmap stream resumed");
                                    Input::MapResumed
                                }
                            };
                            if tx.send(input).await.is_err() {
                                return;
                            }
                            stream
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot open the netmap stream");
                            let _ = tx.send(failed(&e)).await;
                            return;
                        }
                    };
                    let mut seen = None;
                    loop {
                        if stream.last_change() != seen {
                            seen = stream.last_change();
                            if let Some(id) = seen {
                                if tx.send(Input::MapSeen(id)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        // The server sends a keep-alive every 15 s: silence this long is a
                        // dead connection (a blackholed path, a half-open socket). Keep-alives
                        // count: a netmap with nothing new is no reason to reconnect.
                        match stream.next_within(MAP_IDLE).await {
                            Ok(m) => {
                                if tx.send(Input::Map(m)).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "netmap stream lost; reconnecting");
                                let _ = tx.send(Input::MapLost).await;
                                return;
                            }
                        }
                    }
                });
            }
            Request::PostEndpoints { secret, request } => {
                self.tasks.spawn(async move {
                    let input = match client.post_endpoints(&secret, &request).await {
                        Ok(()) => Input::EndpointsPosted(request.endpoints),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot report endpoints; retrying");
                            failed(&e)
                        }
                    };
                    let _ = tx.send(input).await;
                });
            }
        }
    }
}

/// Gives the engine what a session event asks of it; false once the engine is gone.
pub fn apply_to_engine(
    event: &SessionEvent,
    commands: &mpsc::UnboundedSender<NodeCommand>,
) -> bool {
    let command = match event {
        SessionEvent::PeerUpsert { config, .. } => NodeCommand::AddPeer(config.clone()),
        SessionEvent::PeerRemove { key, .. } => NodeCommand::RemovePeer(*key),
        SessionEvent::PeerRelayPolicy(p) => NodeCommand::SetPeerRelayPolicy(p.clone()),
        _ => return !commands.is_closed(),
    };
    commands.send(command).is_ok()
}

/// Locks the session (a panic while holding it already ended the node).
pub fn lock(session: &Mutex<Session>) -> MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(|p| p.into_inner())
}
