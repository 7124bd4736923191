//! Direct mode (`specs/direct.md`): offering, accepting and withdrawing our direct
//! address, the routes contacts revealed, frames arriving on our own listener, and the
//! outcome of each direct attempt (success, or failure: the route rests, the relay
//! takes over).

use nymstr_proto::codec;
use nymstr_proto::identity;
use nymstr_proto::wire::{Body, Envelope, ErrorCode, InstallationId, MsgId};

use super::{
    ClientCore, ClientError, DirectPeer, DirectReply, DirectRoute, DirectTransmit, Event, InboundDm, Source, TimeUs,
};
use crate::seal::{DirectAddress, DmContent, OpenError};

impl ClientCore {
    pub fn direct_peer(&self, username: &str) -> Option<&DirectPeer> {
        self.direct.get(username)
    }

    pub fn direct_address(&self) -> Option<&DirectAddress> {
        self.direct_addr.as_ref()
    }

    /// Our own direct address (the host listens there), or `None` when it stops
    /// listening. With an address, every contact the user approved for direct delivery
    /// (`offer_direct`) is told the address again (it may have changed); an offer from
    /// anyone else is only reported (`DirectOffered`), never answered. Returns the
    /// message ids.
    pub fn set_direct_address(&mut self, now: TimeUs, addr: Option<DirectAddress>) -> Result<Vec<MsgId>, ClientError> {
        self.direct_addr = addr.clone();
        let mut sent = Vec::new();
        if let Some(addr) = addr {
            let peers: Vec<String> = self.direct.iter().filter(|(_, p)| p.enabled).map(|(n, _)| n.clone()).collect();
            for peer in peers {
                sent.push(self.send_content(now, &peer, DmContent::DirectOffer { addr: addr.clone() })?);
            }
        }
        Ok(sent)
    }

    /// Agrees to direct delivery with `peer` and reveals our direct address to it (inside
    /// the end-to-end encryption). Its answer arrives as `DirectReady`.
    pub fn offer_direct(&mut self, now: TimeUs, peer: &str) -> Result<MsgId, ClientError> {
        let addr = self.direct_addr.clone().ok_or(ClientError::NoDirectAddress)?;
        let peer = identity::normalize_username(peer)?;
        if !self.registered {
            return Err(ClientError::NotRegistered);
        }
        self.direct.entry(peer.clone()).or_default().enabled = true;
        self.send_content(now, &peer, DmContent::DirectOffer { addr })
    }

    /// Stops direct delivery with `peer` (both ways) and asks it to forget our address.
    pub fn disable_direct(&mut self, now: TimeUs, peer: &str) -> Result<MsgId, ClientError> {
        let peer = identity::normalize_username(peer)?;
        let Some(p) = self.direct.get_mut(&peer) else { return Err(ClientError::NoRoute(peer)) };
        p.enabled = false;
        self.send_content(now, &peer, DmContent::DirectWithdraw)
    }

    /// We stop listening: every contact we agreed direct delivery with is asked to use the
    /// relay again (until we offer anew). Returns the message ids.
    pub fn withdraw_direct(&mut self, now: TimeUs) -> Result<Vec<MsgId>, ClientError> {
        self.direct_addr = None;
        let peers: Vec<String> = self.direct.iter().filter(|(_, p)| p.enabled).map(|(n, _)| n.clone()).collect();
        peers.iter().map(|peer| self.send_content(now, peer, DmContent::DirectWithdraw)).collect()
    }

    /// Feeds one frame that arrived on our direct listener, on the host's connection
    /// `conn`. Answers go out through `drain_direct_replies`.
    pub fn handle_direct_frame(&mut self, now: TimeUs, conn: u64, bytes: &[u8]) {
        let envelope = match codec::decode_frame(bytes) {
            Ok(envelope) => envelope,
            Err(e) => {
                let request_id = codec::peek_request_id(bytes);
                self.direct_error(conn, request_id, ErrorCode::Malformed, e.to_string());
                return;
            }
        };
        let request_id = envelope.request_id;
        match envelope.body {
            Body::Deliver { from_username, from, msg_id, sealed, .. } => {
                if !self.registered || !self.direct.get(&from_username).is_some_and(|p| p.enabled) {
                    self.direct_error(
                        conn,
                        request_id,
                        ErrorCode::UnexpectedMessage,
                        "direct messages are accepted only from contacts that agreed to them".into(),
                    );
                    return;
                }
                let source = Source::Direct { conn, request_id };
                self.on_deliver(now, InboundDm { source, from_username, from, msg_id, sealed });
                self.flush_acks();
            }
            Body::Error { .. } => {}
            other => self.direct_error(
                conn,
                request_id,
                ErrorCode::UnexpectedMessage,
                format!("{} is not a direct message", other.kind()),
            ),
        }
    }

    /// The peer's answer to direct attempt `attempt`.
    pub fn handle_direct_answer(&mut self, now: TimeUs, attempt: u64, bytes: &[u8]) {
        let Some(a) = self.direct_attempts.get(&attempt) else { return };
        match codec::decode_frame(bytes).map(|e| e.body) {
            Ok(Body::SendAck { msg_id }) if msg_id == a.msg_id => self.direct_succeeded(now, attempt),
            Ok(Body::Error { code, detail }) => self.direct_failed(now, attempt, &format!("{code:?}: {detail}")),
            Ok(other) => self.direct_failed(now, attempt, &format!("unexpected answer {}", other.kind())),
            Err(e) => self.direct_failed(now, attempt, &format!("answer does not decode: {e}")),
        }
    }

    /// Direct attempt `attempt` failed (no connection, timeout, closed): the message goes
    /// through the relay and the route rests.
    pub fn direct_failed(&mut self, now: TimeUs, attempt: u64, reason: &str) {
        let Some(a) = self.direct_attempts.remove(&attempt) else { return };
        let Some(dm) = self.unacked.get(&a.msg_id) else { return };
        let to = dm.to.clone();
        if let Some(route) = self.direct.get_mut(&to).and_then(|p| p.routes.get_mut(&a.installation))
            && route.addr == a.addr
        {
            let base = self.config.direct_backoff_us;
            let rest = base.saturating_mul(1 << route.failures.min(20)).min(self.config.direct_backoff_max_us);
            route.failures = route.failures.saturating_add(1);
            route.down_until_us = now.saturating_add(rest);
        }
        self.events.push_back(Event::DirectFailed { to, msg_id: a.msg_id, addr: a.addr, reason: reason.to_string() });
        self.settle(now, a.msg_id);
    }

    /// Frames for the host to deliver directly, each answered by one frame.
    pub fn drain_direct_transmits(&mut self) -> std::vec::Drain<'_, DirectTransmit> {
        self.direct_transmits.drain(..)
    }

    /// Answers to frames that arrived on our direct listener.
    pub fn drain_direct_replies(&mut self) -> std::vec::Drain<'_, DirectReply> {
        self.direct_replies.drain(..)
    }

    fn direct_succeeded(&mut self, now: TimeUs, attempt: u64) {
        let Some(a) = self.direct_attempts.remove(&attempt) else { return };
        let Some(dm) = self.unacked.get_mut(&a.msg_id) else { return };
        dm.direct_done.insert(a.installation);
        let to = dm.to.clone();
        if let Some(route) = self.direct.get_mut(&to).and_then(|p| p.routes.get_mut(&a.installation)) {
            route.failures = 0;
            route.down_until_us = 0;
        }
        self.events.push_back(Event::DirectDelivered { to, msg_id: a.msg_id });
        self.settle(now, a.msg_id);
    }

    /// Once no direct attempt of a message is in flight: done, or relay the rest.
    fn settle(&mut self, now: TimeUs, msg_id: MsgId) {
        if self.direct_attempts.values().any(|a| a.msg_id == msg_id) {
            return;
        }
        if let Some(dm) = self.unacked.get(&msg_id).cloned() {
            self.transmit_dm(now, dm);
        }
    }

    pub(super) fn direct_error(&mut self, conn: u64, request_id: u64, code: ErrorCode, detail: String) {
        let body = Body::Error { code, detail };
        self.direct_replies.push(DirectReply { conn, envelope: Envelope { request_id, body } });
    }

    /// A contact's installation revealed (or moved) its direct address.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_route(
        &mut self,
        now: TimeUs,
        peer: String,
        installation: InstallationId,
        msg_id: MsgId,
        announced_at_us: TimeUs,
        addr: DirectAddress,
        is_offer: bool,
    ) {
        if !addr.is_valid() {
            self.events.push_back(Event::Rejected { from: peer, msg_id, reason: OpenError::Content });
            return;
        }
        // Only a contact the user approved (`offer_direct`) gets an answer, and only its
        // routes are kept: a stranger's offer is reported and forgotten, so the listener
        // neither reveals its address to it nor ever dials the address it offered.
        let Some(p) = self.direct.get_mut(&peer).filter(|p| p.enabled) else {
            self.events.push_back(Event::DirectOffered { peer, addr });
            return;
        };
        if p.routes.get(&installation).is_some_and(|r| r.announced_at_us > announced_at_us) {
            return; // an older announcement overtaken by a newer one
        }
        p.routes
            .insert(installation, DirectRoute { addr: addr.clone(), announced_at_us, failures: 0, down_until_us: 0 });
        self.events.push_back(Event::DirectReady { peer: peer.clone(), addr });
        if let Some(ours) = self.direct_addr.clone()
            && is_offer
        {
            let _ = self.send_content(now, &peer, DmContent::DirectAccept { addr: ours });
        }
    }
}
