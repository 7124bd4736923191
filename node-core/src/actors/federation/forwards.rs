//! Forwarding across nodes for local clients: the bound on pending forwards, the peer a
//! forward goes to, direct messages sent to and received from other nodes, peers'
//! answers passed back to the waiting client, and forwards that time out.

use super::state::{FORWARDS_PENDING_MAX, Federation, FederationError, Pending, PendingKind, fe, short};
use crate::actors::registry::{Account, Registry};
use crate::actors::relay::Relay;
use crate::actors::types::{Address, CodedError, Ctx, NodeStats, Peer, SenderTag};
use crate::store::Store;

use nymstr_proto::federation::NodeId;
use nymstr_proto::federation::descriptor::QualifiedName;
use nymstr_proto::identity;
use nymstr_proto::limits::{FORWARD_CLOCK_SKEW_US, FORWARD_FRESHNESS_US};
use nymstr_proto::wire::{Body, ErrorCode, InstallationCert, SendDm, Sig};

impl Federation {
    /// Refuses a new forward while `FORWARDS_PENDING_MAX` wait for their peers (a client
    /// flooding remote lookups gets `Busy`, nothing else is affected).
    pub(super) fn forward_slot(&self) -> Result<(), FederationError> {
        if self.pending.len() >= FORWARDS_PENDING_MAX {
            return Err(FederationError::Busy(self.pending.len()));
        }
        Ok(())
    }

    /// The address of an authenticated peer. A node known only by its descriptor is
    /// greeted and the caller told `Unreachable` (transient: the client retries); a node
    /// not known at all is `UnknownNode`.
    pub(super) fn peer_address<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        node: &NodeId,
    ) -> Result<Address, FederationError> {
        if let Some(addr) = self.peers.get(node) {
            return Ok(addr.clone());
        }
        let Some(d) = self.known.get(node) else { return Err(FederationError::UnknownNode(short(node))) };
        let addr = Address(d.address.clone());
        if self.handshakes.get(&addr).is_none_or(|h| h.hello.is_none()) {
            self.hello(ctx, addr);
        }
        Err(FederationError::NotYetPeered(short(node)))
    }

    /// Forwards an authenticated local sender's DM to the recipient's home node.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_dm<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        to_node: NodeId,
        sender: &Account,
        cert: InstallationCert,
        dm: SendDm,
    ) -> Result<(), FederationError> {
        if self.forks.contains_key(&to_node) {
            return Err(FederationError::Distrusted(short(&to_node)));
        }
        self.forward_slot()?;
        let addr = self.peer_address(ctx, &to_node)?;
        let fwd = self.fresh_rid(ctx);
        let deadline = ctx.now + ctx.config.federation.forward_timeout_us;
        self.pending
            .insert(fwd, Pending { peer: to_node, client: tag, client_rid: rid, deadline, kind: PendingKind::Dm });
        self.stats.dms_forwarded += 1;
        let from_username = QualifiedName { username: sender.username.clone(), node: self.id }.to_string();
        let sent_at_us = ctx.now;
        let sig = identity::sign(&self.key, &identity::forward_dm_bytes(&from_username, &to_node, sent_at_us, &dm));
        ctx.send(Peer::Address(addr), fwd, Body::ForwardDm { from_username, cert, dm, sent_at_us, sig });
        Ok(())
    }

    /// A DM forwarded by a peer for one of our users: checked, then queued as if sent here.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_forward_dm<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: NodeId,
        rid: u64,
        from_username: String,
        cert: InstallationCert,
        dm: SendDm,
        sent_at_us: u64,
        sig: Sig,
        relay: &mut Relay,
        registry: &Registry,
        stats: &mut NodeStats,
    ) -> Result<(), (ErrorCode, String)> {
        let q = QualifiedName::parse(&from_username).map_err(|e| fe(FederationError::BadName(e.to_string())))?;
        if q.node != from {
            return Err(fe(FederationError::BadForward("the sender is not a user of the forwarding node".into())));
        }
        // Signed by the forwarding peer, for this node, recently: a forward captured
        // anywhere cannot be replayed once it is older than the dedupe window allows.
        let key = self.known.get(&from).map(|d| d.key).ok_or_else(|| fe(FederationError::NotPeer))?;
        identity::verify(&key, &identity::forward_dm_bytes(&from_username, &self.id, sent_at_us, &dm), &sig)
            .map_err(|_| fe(FederationError::BadForward("forwarding node's signature".into())))?;
        let window = FORWARD_FRESHNESS_US.min(ctx.config.seen_send_ttl_us.saturating_sub(FORWARD_CLOCK_SKEW_US));
        if sent_at_us.saturating_add(window) < ctx.now || sent_at_us > ctx.now.saturating_add(FORWARD_CLOCK_SKEW_US) {
            self.stats.forwards_stale += 1;
            return Err(fe(FederationError::BadForward(format!(
                "stale forward: sent at {sent_at_us} µs, outside the window of {window} µs"
            ))));
        }
        identity::verify_cert(&cert).map_err(|_| fe(FederationError::BadForward("certificate".into())))?;
        if identity::installation_id(&cert.signing_key) != dm.from {
            return Err(fe(FederationError::BadForward("certificate is not the sender installation's".into())));
        }
        identity::verify(&cert.signing_key, &identity::send_dm_signing_bytes(&dm), &dm.sig)
            .map_err(|_| fe(FederationError::BadForward("outer signature".into())))?;
        let local = match dm.to.split_once('@') {
            None => dm.to.clone(),
            Some((user, node)) => {
                if NodeId::from_hex(node) != Some(self.id) {
                    return Err(fe(FederationError::BadForward("recipient is not homed here".into())));
                }
                user.to_string()
            }
        };
        self.stats.dms_received += 1;
        let addr = self.peers[&from].clone();
        relay
            .enqueue(ctx, registry, Peer::Address(addr), rid, from_username, &local, dm, stats)
            .map_err(|e| (e.code(), e.to_string()))
    }

    /// An answer from a peer to something forwarded: passed back to the waiting client.
    pub(super) fn on_peer_answer<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: NodeId,
        rid: u64,
        body: Body,
    ) -> bool {
        let Some(p) = self.pending.get(&rid) else { return false };
        if p.peer != from {
            return false;
        }
        let ok = matches!(
            (&body, p.kind),
            (Body::KtLookupResult { .. } | Body::Error { .. } | Body::Gossip { .. }, PendingKind::Lookup)
                | (Body::SendAck { .. } | Body::Error { .. }, PendingKind::Dm)
        );
        if !ok {
            return false;
        }
        let p = self.pending.remove(&rid).expect("present");
        let body = match body {
            // The peer no longer knows us (it restarted, or a handshake was lost): peer
            // again; for the client it is a transient failure.
            Body::Error { code: ErrorCode::NotPeer, .. } => {
                if let Some(addr) = self.peers.remove(&from) {
                    self.peer_by_address.remove(&addr);
                    self.hello(ctx, addr);
                }
                Body::Error { code: ErrorCode::Unreachable, detail: format!("re-peering with {}", short(&from)) }
            }
            other => other,
        };
        ctx.send(Peer::Tag(p.client), p.client_rid, body);
        true
    }

    /// Forwards whose peer did not answer in time: the waiting client is told `Unreachable`.
    pub(super) fn expire_forwards<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) {
        let expired: Vec<u64> = self.pending.iter().filter(|(_, p)| p.deadline <= ctx.now).map(|(r, _)| *r).collect();
        for rid in expired {
            if let Some(p) = self.pending.remove(&rid) {
                self.stats.forwards_timed_out += 1;
                ctx.send_error(
                    Peer::Tag(p.client),
                    p.client_rid,
                    ErrorCode::Unreachable,
                    format!("node {} did not answer", short(&p.peer)),
                );
            }
        }
    }
}
