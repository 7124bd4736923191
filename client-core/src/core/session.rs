//! Registration and login with the home node, and the request table: every request is
//! retried with doubling back-off until answered, again at once after a reconnect; the
//! node's errors decide whether a request restarts, waits, or fails for good.

use nymstr_proto::federation::NodeId;
use nymstr_proto::identity;
use nymstr_proto::wire::{Body, Envelope, ErrorCode, Nonce};

use super::{ClientCore, ClientError, Event, Identity, Operation, OutgoingDm, Pending, Step, TimeUs};

impl ClientCore {
    /// Generates keys (if needed) and registers `username` with the home node.
    pub fn register(&mut self, now: TimeUs, username: &str) -> Result<(), ClientError> {
        if self.registered || self.username.is_some() {
            return Err(ClientError::AlreadyRegistered);
        }
        let username = identity::normalize_username(username)?;
        if self.identity.is_none() {
            self.identity = Some(Identity::generate(&mut self.rng, now));
        }
        self.username = Some(username);
        self.start_register(now);
        Ok(())
    }

    /// Proves this installation to the node and binds the current sender tag.
    pub fn login(&mut self, now: TimeUs) -> Result<(), ClientError> {
        if !self.registered {
            return Err(ClientError::NotRegistered);
        }
        self.pending.retain(|_, p| !matches!(p.step, Step::LoginAwaitChallenge | Step::LoginAwaitResult));
        let installation = self.identity.as_ref().expect("registered implies identity").installation_id;
        self.request(now, Step::LoginAwaitChallenge, Body::LoginRequest { installation });
        Ok(())
    }

    /// The transport to the node was replaced (reconnected, new sender tag): every
    /// request goes again now, after a fresh login.
    pub fn reconnected(&mut self, now: TimeUs) {
        let login = self.registered
            && !self.pending.values().any(|p| matches!(p.step, Step::LoginAwaitChallenge | Step::LoginAwaitResult));
        for p in self.pending.values_mut() {
            p.retry_at_us = now;
            p.backoff_us = self.config.retry_after_us / 2;
        }
        if login {
            let _ = self.login(now);
        }
        self.handle_timeout(now);
    }

    pub fn poll_timeout(&self) -> Option<TimeUs> {
        let requests = self.pending.values().map(|p| p.retry_at_us).min();
        let direct = self.direct_attempts.values().map(|a| a.deadline_us).min();
        [requests, direct].into_iter().flatten().min()
    }

    /// Retries every request whose answer is overdue.
    pub fn handle_timeout(&mut self, now: TimeUs) {
        let expired: Vec<u64> =
            self.direct_attempts.iter().filter(|(_, a)| a.deadline_us <= now).map(|(id, _)| *id).collect();
        for attempt in expired {
            self.direct_failed(now, attempt, "no answer in time");
        }
        let due: Vec<(u64, Pending)> =
            self.pending.iter().filter(|(_, p)| p.retry_at_us <= now).map(|(r, p)| (*r, p.clone())).collect();
        for (rid, p) in due {
            self.pending.remove(&rid);
            let backoff_us = (p.backoff_us * 2).min(self.config.retry_after_max_us);
            match p.step {
                Step::RegisterAwaitChallenge | Step::RegisterAwaitResult => self.start_register_with(now, backoff_us),
                Step::LoginAwaitChallenge | Step::LoginAwaitResult => {
                    let installation = self.identity.as_ref().expect("identity").installation_id;
                    self.request_with(now, Step::LoginAwaitChallenge, Body::LoginRequest { installation }, backoff_us);
                }
                Step::Lookup(name) => {
                    let body = self.lookup_body(&name);
                    self.request_with(now, Step::Lookup(name), body, backoff_us)
                }
                Step::Send(msg_id) => {
                    if let Some(dm) = self.unacked.get(&msg_id).cloned() {
                        self.transmit_dm_with(now, dm, backoff_us);
                    }
                }
                Step::Nodes => self.request_with(now, Step::Nodes, Body::NodesRequest, backoff_us),
                Step::Home => self.request_with(now, Step::Home, Body::NodesRequest, backoff_us),
            }
        }
    }

    fn start_register(&mut self, now: TimeUs) {
        let backoff = self.config.retry_after_us;
        self.start_register_with(now, backoff);
    }

    fn start_register_with(&mut self, now: TimeUs, backoff_us: TimeUs) {
        let id = self.identity.as_ref().expect("identity");
        let body = Body::RegisterRequest { username: self.username.clone().expect("username"), cert: id.cert.clone() };
        self.request_with(now, Step::RegisterAwaitChallenge, body, backoff_us);
    }

    pub(super) fn request(&mut self, now: TimeUs, step: Step, body: Body) {
        let backoff = self.config.retry_after_us;
        self.request_with(now, step, body, backoff);
    }

    pub(super) fn request_with(&mut self, now: TimeUs, step: Step, body: Body, backoff_us: TimeUs) {
        let rid = self.next_rid;
        self.next_rid += 1;
        self.pending.insert(rid, Pending { step, retry_at_us: now + backoff_us, backoff_us });
        self.transmits.push(Envelope { request_id: rid, body });
    }

    pub(super) fn on_challenge(&mut self, now: TimeUs, rid: u64, nonce: Nonce, node: &NodeId) {
        let Some(p) = self.pending.remove(&rid) else { return };
        // A challenge names the node the answer is for: with the home node's id pinned,
        // one naming another node (a node relaying another's challenge) is not signed.
        if let Some(home) = self.home.filter(|home| home != node)
            && let Some(what) = match p.step {
                Step::RegisterAwaitChallenge => Some(Operation::Register),
                Step::LoginAwaitChallenge => Some(Operation::Login),
                _ => None,
            }
        {
            if what == Operation::Register {
                self.username = None;
            }
            let detail = format!("the challenge names node {node}, not the home node {home}");
            self.events.push_back(Event::Failed { what, code: ErrorCode::UnexpectedMessage, detail });
            return;
        }
        let id = self.identity.as_ref().expect("identity");
        match p.step {
            Step::RegisterAwaitChallenge => {
                let username = self.username.clone().expect("username");
                let account_sig = identity::sign(
                    &id.account,
                    &identity::register_account_bytes(&nonce, node, &username, &id.installation_id),
                );
                let installation_sig = identity::sign(
                    &id.installation,
                    &identity::register_installation_bytes(&nonce, node, &username, &id.installation_id),
                );
                let body = Body::RegisterResponse { nonce, account_sig, installation_sig };
                self.request_with(now, Step::RegisterAwaitResult, body, p.backoff_us);
            }
            Step::LoginAwaitChallenge => {
                let installation_sig =
                    identity::sign(&id.installation, &identity::login_bytes(&nonce, node, &id.installation_id));
                self.request_with(
                    now,
                    Step::LoginAwaitResult,
                    Body::LoginResponse { nonce, installation_sig },
                    p.backoff_us,
                );
            }
            other => {
                self.pending.insert(rid, Pending { step: other, ..p });
            }
        }
    }

    pub(super) fn on_registered(&mut self, rid: u64, username: String) {
        if self.pending.remove(&rid).is_some() && !self.registered {
            self.registered = true;
            self.events.push_back(Event::Registered { username });
        }
    }

    pub(super) fn on_logged_in(&mut self, now: TimeUs, rid: u64, queued: u32) {
        if self.pending.remove(&rid).is_some() {
            self.events.push_back(Event::LoggedIn { queued });
            // Sends refused while the tag was unbound go again now, from the bound tag, in
            // the order they were written (the node queues them in arrival order).
            let mut unacked: Vec<OutgoingDm> = self.unacked.values().cloned().collect();
            unacked.sort_by_key(|d| (d.sent_at_us, d.msg_id));
            for dm in unacked {
                self.transmit_dm(now, dm);
            }
        }
    }

    pub(super) fn on_error(&mut self, now: TimeUs, rid: u64, code: ErrorCode, detail: String) {
        let Some(p) = self.pending.remove(&rid) else { return };
        match (p.step, code) {
            // The node lost or expired the challenge (e.g. it restarted): start again.
            (
                Step::RegisterAwaitChallenge | Step::RegisterAwaitResult,
                ErrorCode::UnknownChallenge | ErrorCode::ChallengeExpired,
            ) => self.start_register_with(now, p.backoff_us),
            (
                Step::LoginAwaitChallenge | Step::LoginAwaitResult,
                ErrorCode::UnknownChallenge | ErrorCode::ChallengeExpired,
            ) => {
                let installation = self.identity.as_ref().expect("identity").installation_id;
                self.request_with(now, Step::LoginAwaitChallenge, Body::LoginRequest { installation }, p.backoff_us);
            }
            // Transient: keep the request and retry at its next deadline.
            (step, ErrorCode::Busy | ErrorCode::QueueFull | ErrorCode::Internal | ErrorCode::Unreachable) => {
                self.pending.insert(rid, Pending { step, ..p });
            }
            // Our tag is not (or no longer) bound, e.g. the node lost the binding or we
            // came back with a new tag: log in; every unacknowledged send goes again after.
            (Step::Send(msg_id), ErrorCode::NotLoggedIn) => {
                self.pending.insert(rid, Pending { step: Step::Send(msg_id), ..p });
                let logging_in =
                    self.pending.values().any(|q| matches!(q.step, Step::LoginAwaitChallenge | Step::LoginAwaitResult));
                if !logging_in {
                    let installation = self.identity.as_ref().expect("identity").installation_id;
                    self.request(now, Step::LoginAwaitChallenge, Body::LoginRequest { installation });
                }
            }
            (Step::Send(msg_id), ErrorCode::StaleRecipient) => {
                if let Some(dm) = self.unacked.remove(&msg_id) {
                    self.contacts.remove(&dm.to);
                    self.outbox.entry(dm.to.clone()).or_default().push(dm.clone());
                    self.start_lookup(now, dm.to);
                }
            }
            (Step::RegisterAwaitChallenge | Step::RegisterAwaitResult, code) => {
                self.username = None;
                self.events.push_back(Event::Failed { what: Operation::Register, code, detail });
            }
            (Step::LoginAwaitChallenge | Step::LoginAwaitResult, code) => {
                self.events.push_back(Event::Failed { what: Operation::Login, code, detail });
            }
            (Step::Lookup(name), code) => {
                self.lookups.remove(&name);
                self.fail_contact(&name, code, &detail);
            }
            (Step::Send(msg_id), code) => {
                if let Some(dm) = self.unacked.remove(&msg_id) {
                    self.events.push_back(Event::Failed { what: Operation::Send { to: dm.to, msg_id }, code, detail });
                }
            }
            // A node that does not federate: no witnesses to learn.
            (Step::Nodes, _) => {}
            // No home id, so no name of another node can be signed: those sends fail.
            (Step::Home, code) => self.home_unknown(code, &detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{ClientConfig, Identity};
    use nymstr_proto::codec;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const T0: TimeUs = 1_700_000_000_000_000;
    const HOME: NodeId = NodeId([2; 32]);

    fn challenge(client: &mut ClientCore, node: NodeId) -> Vec<Body> {
        let rid = client.drain_transmits().next_back().expect("a request").request_id;
        let body = Body::Challenge { nonce: [1; 32], expires_at_us: T0 + 60_000_000, node };
        client.handle_frame(T0, &codec::encode_frame(&Envelope { request_id: rid, body }).unwrap());
        client.drain_transmits().map(|e| e.body).collect()
    }

    #[test]
    fn a_login_challenge_naming_another_node_than_the_pinned_home_is_not_signed() {
        let rng = |n| ChaCha20Rng::seed_from_u64(n);
        let id = Identity::generate(&mut rng(1), T0);
        let mut alice = ClientCore::with_identity(rng(2), ClientConfig::default(), id, "alice".into());
        alice.set_home_node(HOME);
        alice.login(T0).unwrap();
        assert_eq!(challenge(&mut alice, NodeId([3; 32])), vec![], "nothing signed");
        assert!(matches!(
            alice.poll_event(),
            Some(Event::Failed { what: Operation::Login, code: ErrorCode::UnexpectedMessage, .. })
        ));
        alice.login(T0).unwrap();
        assert!(matches!(challenge(&mut alice, HOME)[..], [Body::LoginResponse { .. }]), "the home's is answered");
    }

    #[test]
    fn a_register_challenge_naming_another_node_than_the_pinned_home_is_not_signed() {
        let mut alice = ClientCore::new(ChaCha20Rng::seed_from_u64(1), ClientConfig::default());
        alice.set_home_node(HOME);
        alice.register(T0, "alice").unwrap();
        assert_eq!(challenge(&mut alice, NodeId([3; 32])), vec![], "nothing signed");
        assert!(matches!(
            alice.poll_event(),
            Some(Event::Failed { what: Operation::Register, code: ErrorCode::UnexpectedMessage, .. })
        ));
        alice.register(T0, "alice").unwrap();
        assert!(matches!(challenge(&mut alice, HOME)[..], [Body::RegisterResponse { .. }]));
    }
}
