//! Direct messages: sealing and sending them (through the node, or directly when every
//! installation has a route), and receiving them: de-duplicating, waiting for the
//! sender's lookup, opening and verifying, and answering the node or the peer.

use std::collections::BTreeSet;

use nymstr_proto::codec;
use nymstr_proto::identity;
use nymstr_proto::wire::{
    Body, Envelope, ErrorCode, InstallationCert, InstallationId, InstallationPayload, MsgId, SendDm,
};
use rand_core::Rng;

use super::{
    BODY_BYTES_MAX, ClientCore, ClientError, DirectAttempt, DirectReply, DirectTransmit, Event, InboundDm, Operation,
    OutgoingDm, Source, Step, TimeUs, Via, contact_name,
};
use crate::seal::{self, DirectAddress, DmContent, OpenError, Recipient, Sender};

impl ClientCore {
    /// Seals and sends `body` to every installation of `to`; returns the message id.
    pub fn send_dm(&mut self, now: TimeUs, to: &str, body: &[u8]) -> Result<MsgId, ClientError> {
        if !self.registered {
            return Err(ClientError::NotRegistered);
        }
        if body.len() > BODY_BYTES_MAX {
            return Err(ClientError::TooLarge { len: body.len(), max: BODY_BYTES_MAX });
        }
        self.send_content(now, to, DmContent::Text { body: body.to_vec() })
    }

    /// Sends a group invitation to `to` as an end-to-end sealed DM (like a text).
    pub fn send_group_invite(
        &mut self,
        now: TimeUs,
        to: &str,
        invite: seal::GroupInvite,
    ) -> Result<MsgId, ClientError> {
        self.send_content(now, to, DmContent::GroupInvite(invite))
    }

    /// Sends not yet acknowledged by the node (including those waiting for a lookup).
    pub fn unacked_sends(&self) -> usize {
        self.unacked.len() + self.outbox.values().map(Vec::len).sum::<usize>()
    }

    /// Whether `msg_id` still waits for an acknowledgement.
    pub fn is_unacked(&self, msg_id: &MsgId) -> bool {
        self.unacked.contains_key(msg_id) || self.outbox.values().flatten().any(|d| d.msg_id == *msg_id)
    }

    pub(super) fn send_content(&mut self, now: TimeUs, to: &str, content: DmContent) -> Result<MsgId, ClientError> {
        if !self.registered {
            return Err(ClientError::NotRegistered);
        }
        let to = contact_name(to)?;
        let mut msg_id = [0u8; 16];
        self.rng.fill_bytes(&mut msg_id);
        let dm = OutgoingDm {
            to: to.clone(),
            msg_id,
            content,
            sent_at_us: now,
            relayed: false,
            direct_done: BTreeSet::new(),
        };
        if self.contacts.contains_key(&to) {
            self.transmit_dm(now, dm);
        } else {
            let waiting = self.outbox.entry(to.clone()).or_default();
            if waiting.len() >= self.config.waiting_per_contact_max {
                return Err(ClientError::Backlog(to));
            }
            waiting.push(dm);
            self.start_lookup(now, to);
        }
        Ok(msg_id)
    }

    pub(super) fn transmit_dm(&mut self, now: TimeUs, dm: OutgoingDm) {
        let backoff = self.config.retry_after_us;
        self.transmit_dm_with(now, dm, backoff);
    }

    /// Seals for the contact's current installations and sends (or re-sends) the DM:
    /// directly when every installation still waiting for it has a usable route and no
    /// relayed copy exists, else through the node to all of them. Nothing goes while a
    /// direct attempt for the message is in flight (`settle` decides when they end).
    pub(super) fn transmit_dm_with(&mut self, now: TimeUs, mut dm: OutgoingDm, backoff_us: TimeUs) {
        if self.direct_attempts.values().any(|a| a.msg_id == dm.msg_id) {
            self.unacked.insert(dm.msg_id, dm);
            return;
        }
        let Some(contact) = self.contacts.get(&dm.to).cloned() else {
            self.outbox.entry(dm.to.clone()).or_default().push(dm.clone());
            self.unacked.remove(&dm.msg_id);
            self.start_lookup(now, dm.to);
            return;
        };
        let targets: Vec<&InstallationCert> = contact
            .installations
            .iter()
            .filter(|c| !dm.direct_done.contains(&identity::installation_id(&c.signing_key)))
            .collect();
        if targets.is_empty() {
            self.complete(dm);
            return;
        }
        // A user of another node sees us as `user@<home id>`, which we must sign: without
        // the home's id the message waits for it.
        if self.home.is_none() && dm.to.contains('@') {
            self.unacked.remove(&dm.msg_id);
            self.outbox.entry(dm.to.clone()).or_default().push(dm);
            if !self.pending.values().any(|p| matches!(p.step, Step::Home)) {
                self.request(now, Step::Home, Body::NodesRequest);
            }
            return;
        }
        let content = codec::encode(&dm.content);
        let id = self.identity.as_ref().expect("identity");
        let username = self.username.clone().expect("username");
        let signed_from = seal::signed_name(&username, self.home.as_ref());
        let signed_to = seal::signed_name(&dm.to, self.home.as_ref());
        let sender = Sender { username: &signed_from, key: &id.installation, cert: &id.cert };
        let routes: Option<Vec<DirectAddress>> = match self.direct.get(&dm.to) {
            Some(peer) if peer.enabled && !dm.relayed => targets
                .iter()
                .map(|c| {
                    peer.routes
                        .get(&identity::installation_id(&c.signing_key))
                        .filter(|r| r.down_until_us <= now)
                        .map(|r| r.addr.clone())
                })
                .collect(),
            _ => None,
        };
        if let Some(routes) = routes {
            for (cert, addr) in targets.iter().zip(routes) {
                let installation = identity::installation_id(&cert.signing_key);
                let sealed = seal::seal(&mut self.rng, &sender, &signed_to, cert, &dm.msg_id, dm.sent_at_us, &content);
                let attempt = self.next_rid;
                self.next_rid += 1;
                let body = Body::Deliver {
                    delivery_id: 0,
                    from_username: username.clone(),
                    from: id.installation_id,
                    msg_id: dm.msg_id,
                    sealed,
                };
                self.direct_attempts.insert(
                    attempt,
                    DirectAttempt {
                        msg_id: dm.msg_id,
                        installation,
                        addr: addr.clone(),
                        deadline_us: now + self.config.direct_timeout_us,
                    },
                );
                self.direct_transmits.push(DirectTransmit {
                    attempt,
                    to: dm.to.clone(),
                    addr,
                    envelope: Envelope { request_id: attempt, body },
                });
            }
            self.unacked.insert(dm.msg_id, dm);
            return;
        }
        let payloads: Vec<InstallationPayload> = targets
            .iter()
            .map(|cert| InstallationPayload {
                installation: identity::installation_id(&cert.signing_key),
                sealed: seal::seal(&mut self.rng, &sender, &signed_to, cert, &dm.msg_id, dm.sent_at_us, &content),
            })
            .collect();
        let signed = identity::send_dm_fields_bytes(&id.installation_id, &dm.to, &dm.msg_id, &payloads);
        let sig = identity::sign(&id.installation, &signed);
        let body =
            Body::SendDm(SendDm { from: id.installation_id, to: dm.to.clone(), msg_id: dm.msg_id, payloads, sig });
        // One pending retry per message, whatever rid carried it.
        self.pending.retain(|_, p| !matches!(&p.step, Step::Send(m) if *m == dm.msg_id));
        // One sealed copy per installation travels in one frame: with many installations
        // a large body may not fit. Fail the send rather than emit an unencodable frame
        // (and retry it forever). Frame = version byte + request id (at most 9) + body.
        let frame_len = codec::try_encode(&body).map_or(usize::MAX, |b| b.len().saturating_add(1 + 9));
        if frame_len > nymstr_proto::limits::FRAME_BYTES_MAX {
            self.unacked.remove(&dm.msg_id);
            let installations = contact.installations.len();
            self.events.push_back(Event::Failed {
                what: Operation::Send { to: dm.to, msg_id: dm.msg_id },
                code: ErrorCode::FrameTooLarge,
                detail: format!("sealed for {installations} installations the message exceeds one frame"),
            });
            return;
        }
        self.request_with(now, Step::Send(dm.msg_id), body, backoff_us);
        dm.relayed = true;
        self.unacked.insert(dm.msg_id, dm);
    }

    /// The node holds a message. Only a relayed copy is acknowledged by the node; it
    /// covers every installation not reached directly.
    pub(super) fn on_send_ack(&mut self, msg_id: MsgId) {
        if let Some(dm) = self.unacked.get(&msg_id).filter(|d| d.relayed).cloned() {
            self.complete(dm);
        }
    }

    /// Every installation has the message: it is done.
    fn complete(&mut self, dm: OutgoingDm) {
        self.unacked.remove(&dm.msg_id);
        self.pending.retain(|_, p| !matches!(&p.step, Step::Send(m) if *m == dm.msg_id));
        self.events.push_back(Event::SendAcked { to: dm.to, msg_id: dm.msg_id });
    }

    pub(super) fn on_deliver(&mut self, now: TimeUs, dm: InboundDm) {
        if self.seen.contains(&(dm.from, dm.msg_id)) {
            self.answer(dm.source, dm.msg_id, Ok(()));
            return;
        }
        let known_installation = self
            .contacts
            .get(&dm.from_username)
            .is_some_and(|c| c.installations.iter().any(|i| identity::installation_id(&i.signing_key) == dm.from));
        if known_installation {
            self.open_and_ack(now, dm);
        } else {
            // Unknown sender or a device we have not seen: look the sender up first.
            let name = dm.from_username.clone();
            if contact_name(&name).as_deref() != Ok(name.as_str()) {
                self.answer(dm.source, dm.msg_id, Err((ErrorCode::UsernameInvalid, "sender name is not normalized")));
                return;
            }
            let waiting = self.unverified.entry(name.clone()).or_default();
            if waiting.iter().any(|w| w.source == dm.source) || waiting.len() >= self.config.waiting_per_contact_max {
                return;
            }
            waiting.push(dm);
            self.contacts.remove(&name);
            self.start_lookup(now, name);
        }
    }

    pub(super) fn open_and_ack(&mut self, now: TimeUs, dm: InboundDm) {
        let id = self.identity.as_ref().expect("identity");
        let username = self.username.as_deref().expect("username");
        let Some(contact) = self.contacts.get(&dm.from_username) else { return };
        let recipient =
            Recipient { username, home: self.home.as_ref(), installation: id.installation_id, dh_secret: &id.dh };
        let result = seal::open(&recipient, &dm.from_username, &dm.from, &dm.msg_id, &contact.account_key, &dm.sealed)
            .and_then(|opened| match codec::decode::<DmContent>(&opened.body) {
                Ok(content) => Ok((opened, content)),
                Err(_) => Err(OpenError::Content),
            });
        let answer = match &result {
            Ok(_) => Ok(()),
            Err(OpenError::BadCertificate) => Err((ErrorCode::BadCertificate, "sender certificate refused")),
            Err(OpenError::BadSignature) => Err((ErrorCode::BadSignature, "inner signature refused")),
            Err(_) => Err((ErrorCode::Malformed, "sealed message refused")),
        };
        self.answer(dm.source, dm.msg_id, answer);
        if self.seen.contains(&(dm.from, dm.msg_id)) {
            return;
        }
        let via = match dm.source {
            Source::Node { .. } => Via::Relay,
            Source::Direct { .. } => Via::Direct,
        };
        match result {
            Ok((opened, content)) => {
                self.remember(dm.from, dm.msg_id);
                // The routing name (`user@node` for a remote sender) names the contact.
                let from = dm.from_username.clone();
                match content {
                    DmContent::Text { body } => self.events.push_back(Event::Received {
                        from,
                        msg_id: opened.msg_id,
                        sent_at_us: opened.sent_at_us,
                        body,
                        via,
                    }),
                    DmContent::DirectOffer { addr } => {
                        self.on_route(now, from, dm.from, dm.msg_id, opened.sent_at_us, addr, true)
                    }
                    DmContent::DirectAccept { addr } => {
                        self.on_route(now, from, dm.from, dm.msg_id, opened.sent_at_us, addr, false)
                    }
                    DmContent::GroupInvite(invite) => {
                        self.events.push_back(Event::GroupInvited { from, msg_id: opened.msg_id, invite })
                    }
                    DmContent::DirectWithdraw => {
                        let removed = self.direct.get_mut(&from).and_then(|p| p.routes.remove(&dm.from)).is_some();
                        if removed {
                            self.events.push_back(Event::DirectWithdrawn { peer: from });
                        }
                    }
                }
            }
            Err(reason) => self.events.push_back(Event::Rejected { from: dm.from_username, msg_id: dm.msg_id, reason }),
        }
    }

    /// Answers one delivery: `AckDelivery` to the node (always, valid or not, so it stops
    /// redelivering), or `SendAck` / `Error` on the direct connection it came from.
    pub(super) fn answer(&mut self, source: Source, msg_id: MsgId, result: Result<(), (ErrorCode, &str)>) {
        match (source, result) {
            (Source::Node { delivery_id }, _) => {
                self.acks.push(delivery_id);
                self.deliveries_handled += 1;
            }
            (Source::Direct { conn, request_id }, Ok(())) => self
                .direct_replies
                .push(DirectReply { conn, envelope: Envelope { request_id, body: Body::SendAck { msg_id } } }),
            (Source::Direct { conn, request_id }, Err((code, detail))) => {
                self.direct_error(conn, request_id, code, detail.to_string())
            }
        }
    }

    pub(super) fn remember(&mut self, from: InstallationId, msg_id: MsgId) {
        if self.seen.insert((from, msg_id)) {
            self.seen_order.push_back((from, msg_id));
            if self.seen_order.len() > self.config.seen_max
                && let Some(old) = self.seen_order.pop_front()
            {
                self.seen.remove(&old);
                self.seen_first_seq += 1;
            }
        }
    }
}
