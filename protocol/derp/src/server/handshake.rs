//! Admission: a ClientInfo is checked for replay, capped per source and globally, and
//! verified with the control server when configured, before the key goes live.

use std::collections::BTreeSet;
use std::time::Instant;

use burrow_wg::PublicKey;
use rand_chacha::rand_core::RngCore;

use crate::frame::{Frame, NONCE_LEN, PROTOCOL_VERSION};
use crate::info::{ClientInfo, ServerInfo};
use crate::nacl::BoxKey;

use super::{
    c_mut, constant_eq, frame, CloseReason, ConnId, Pending, Server, State, Verdict,
    MAX_PENDING_VERIFICATIONS, MAX_PENDING_VERIFICATIONS_PER_SOURCE,
};

impl Server {
    /// A ClientInfo that opened: refuse replays, then verify or admit.
    pub(super) fn client_info(
        &mut self,
        now: Instant,
        conn: ConnId,
        key: [u8; 32],
        nonce: [u8; NONCE_LEN],
        bx: BoxKey,
        info: &ClientInfo,
    ) -> Result<(), CloseReason> {
        // The wire format has no server challenge, so a captured ClientInfo could be
        // replayed; refuse a nonce this key has used (remembered per admitted key) or one a
        // connection of this key waiting for its verdict presented, before anything happens
        // to the live connection of that key.
        let waiting_with_nonce = self.verifying.get(&key).is_some_and(|p| {
            p.conns.iter().any(|id| {
                self.conns.get(id).is_some_and(
                    |c| matches!(&c.state, State::Verifying { nonce: n, .. } if *n == nonce),
                )
            })
        });
        if waiting_with_nonce || self.nonces.contains(now, &key, &nonce) {
            return Err(CloseReason::Replayed);
        }
        // As Tailscale: a wrong mesh key makes an ordinary client, not an error.
        let mesh = matches!((&info.mesh_key, &self.config.mesh_key), (Some(theirs), Some(ours)) if constant_eq(theirs.as_bytes(), ours.0.as_bytes()));
        if self.config.verify_clients && !mesh && self.verify_allowed.get(now, &key).is_none() {
            if self.verify_denied.get(now, &key).is_some() {
                return Err(CloseReason::NotVerified("denied by the control server"));
            }
            if !self.verifying.contains_key(&key) {
                let ip = self.conns.get(&conn).and_then(|c| c.ip);
                if self.verifying.len() >= MAX_PENDING_VERIFICATIONS
                    || ip.is_some_and(|ip| {
                        self.verifying_per_source.is_full(
                            ip,
                            MAX_PENDING_VERIFICATIONS_PER_SOURCE,
                            None,
                        )
                    })
                {
                    return Err(CloseReason::VerifyBusy);
                }
                if let Some(ip) = ip {
                    self.verifying_per_source.add(ip);
                }
                self.verifying.insert(
                    key,
                    Pending {
                        conns: BTreeSet::new(),
                        source: ip,
                    },
                );
                self.verify_out.push_back(key);
            }
            if let Some(p) = self.verifying.get_mut(&key) {
                p.conns.insert(conn);
            }
            c_mut(&mut self.conns, conn).state = State::Verifying {
                key,
                nonce,
                bx: Box::new(bx),
            };
            return Ok(());
        }
        self.admit(now, conn, key, mesh, nonce, &bx)
    }

    /// Forgets a key's pending verification (its source's place is freed).
    pub(super) fn end_verification(&mut self, key: &[u8; 32]) -> Option<BTreeSet<ConnId>> {
        let p = self.verifying.remove(key)?;
        if let Some(ip) = p.source {
            self.verifying_per_source.remove(ip);
        }
        Some(p.conns)
    }

    /// Replays, caps, then ServerInfo: the client is in.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        conn: ConnId,
        key: [u8; 32],
        mesh: bool,
        nonce: [u8; NONCE_LEN],
        bx: &BoxKey,
    ) -> Result<(), CloseReason> {
        // Checked again here: two connections with the same ClientInfo may have waited for
        // one verdict; the first admitted records the nonce, the other is a replay.
        if self.nonces.contains(now, &key, &nonce) {
            return Err(CloseReason::Replayed);
        }
        let replacing = self.by_key.get(&key).and_then(|id| self.conns.get(id));
        let mut counted = None;
        if !mesh {
            let replacing_counts =
                replacing.is_some_and(|r| matches!(r.state, State::Active { mesh: false, .. }));
            let others = self.non_mesh - usize::from(replacing_counts);
            if others >= self.config.max_clients {
                return Err(CloseReason::TooManyClients);
            }
            if let Some(ip) = self.conns.get(&conn).and_then(|c| c.ip) {
                let except = replacing.and_then(|r| r.counted);
                if self
                    .per_source
                    .is_full(ip, self.config.max_clients_per_ip, except)
                {
                    return Err(CloseReason::TooManyFromAddress);
                }
                counted = Some(ip);
            }
        }
        self.nonces.connected(now, key, nonce);
        let mut server_nonce = [0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut server_nonce);
        let (rate, burst) = self.config.rate_limit.unwrap_or((0, 0));
        let reply = ServerInfo {
            version: PROTOCOL_VERSION,
            token_bucket_bytes_per_second: rate,
            token_bucket_bytes_burst: burst,
        };
        let sealed = bx.seal(
            &server_nonce,
            &serde_json::to_vec(&reply).expect("serializable"),
        );
        let c = c_mut(&mut self.conns, conn);
        c.control.push_back(frame(Frame::ServerInfo {
            nonce: server_nonce,
            sealed: &sealed,
        }));
        c.state = State::Active { key, mesh };
        c.counted = counted;
        if !mesh {
            self.non_mesh += 1;
        }
        if let Some(ip) = counted {
            self.per_source.add(ip);
        }
        self.ready.insert(conn);
        self.woken.insert(conn);
        // A newer connection for the same key replaces the older one.
        if let Some(old) = self.by_key.insert(key, conn) {
            if old != conn {
                self.closing.push_back((old, CloseReason::Replaced));
                self.drop_conn(old, false);
            }
        }
        self.note_change(key);
        Ok(())
    }

    /// The next key the driver should verify (with the control server), then report with
    /// [`Server::verified`]. Each key is asked once however many connections wait for it.
    pub fn poll_verify(&mut self) -> Option<PublicKey> {
        while let Some(k) = self.verify_out.pop_front() {
            if self.verifying.contains_key(&k) {
                return Some(PublicKey(k));
            }
        }
        None
    }

    /// The verdict on `key`: its waiting connections are admitted (and their buffered frames
    /// handled) or closed.
    pub fn verified(&mut self, now: Instant, key: &PublicKey, verdict: Verdict) {
        self.now = Some(now);
        match verdict {
            Verdict::Allowed => {
                self.verify_denied.remove(&key.0);
                self.verify_allowed.insert(now, key.0, ());
            }
            Verdict::Denied => {
                self.verify_allowed.remove(&key.0);
                self.verify_denied.insert(now, key.0, ());
            }
            Verdict::Unknown => {}
        }
        let Some(waiting) = self.end_verification(&key.0) else {
            return;
        };
        for conn in waiting {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let State::Verifying { key, nonce, bx } =
                std::mem::replace(&mut c.state, State::AwaitingClientInfo)
            else {
                continue;
            };
            let result = match verdict {
                Verdict::Allowed => self.admit(now, conn, key, false, nonce, &bx),
                Verdict::Denied => Err(CloseReason::NotVerified("denied by the control server")),
                Verdict::Unknown => Err(CloseReason::NotVerified(
                    "no answer from the control server",
                )),
            };
            match result {
                Ok(()) => self.process(now, conn),
                Err(reason) => self.refuse(now, conn, reason),
            }
        }
    }
}
