//! Witnessing: sealing this node's epochs and asking peers to cosign each head; as a
//! witness, checking and cosigning peers' heads (an inconsistent one becomes a fork
//! certificate); cosignatures received, and where a witness asks to resume (`CosignFrom`).

use super::state::{Federation, FederationError, PREFIX_WSIZE, prefixed, short, whead_key};
use crate::actors::types::{Ctx, Peer};
use crate::store::{Store, StoreError, Table};

use nymstr_proto::federation::evidence::{self, WitnessVerdict};
use nymstr_proto::federation::{Cosignature, Hash, NodeId, SignedHead};
use nymstr_proto::limits::{WITNESS_IDLE_US, WITNESS_NODES_MAX};
use nymstr_proto::wire::{Body, GossipItem};

impl Federation {
    pub(super) fn seal<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), StoreError> {
        let head = self.log.seal(ctx.store, &self.key, ctx.now)?;
        self.stats.heads_signed += 1;
        self.unannounced = false;
        // Witnesses and peers hear of the head only once it is durable: a crash before
        // that must not leave two different signed heads for one epoch in the world.
        let witnesses = self.pick_peers(ctx, ctx.config.federation.witnesses_wanted, None);
        for w in witnesses {
            let from = self.witness_sizes.get(&w).map_or(0, |(size, _)| *size);
            let size = head.head.epoch + 1;
            let from = if from > 0 && from <= size { from } else { 0 };
            let consistency = if from > 0 { self.log.consistency(from, size) } else { Vec::new() };
            let rid = self.fresh_rid(ctx);
            if let Some(addr) = self.peers.get(&w).cloned() {
                ctx.send_durable(
                    Peer::Address(addr),
                    rid,
                    Body::CosignRequest { head: head.clone(), from_log_size: from, consistency },
                );
            }
        }
        self.gossip(ctx, GossipItem::Head { head, cosignatures: Vec::new() }, None);
        Ok(())
    }

    pub(super) fn on_cosign_request<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: NodeId,
        rid: u64,
        head: SignedHead,
        from_log_size: u64,
        consistency: Vec<Hash>,
    ) -> Result<(), FederationError> {
        if head.head.node_id != from {
            return Err(FederationError::Inconsistent("a node asks to cosign only its own heads".into()));
        }
        let key = self.known.get(&from).map(|d| d.key).ok_or_else(|| FederationError::UnknownNode(short(&from)))?;
        // The proof must start where this witness left off; if the requester lost track
        // (a lost `Cosigned`, a restart), say where.
        let last = self.witness.last_size(&from);
        if last > 0 && from_log_size != last && head.head.epoch.saturating_add(1) > last {
            ctx.send(Peer::Address(self.peers[&from].clone()), rid, Body::CosignFrom { log_size: last });
            return Ok(());
        }
        // A badly signed head must not cost another node its place in the view.
        evidence::verify_head(&head, &key).map_err(|e| FederationError::Inconsistent(e.to_string()))?;
        if !self.make_witness_room(ctx, &from)? {
            return Err(FederationError::Busy(self.witness.node_count()));
        }
        let before = self.witness.epochs(&from);
        let verdict =
            self.witness.check(&head, &key, &consistency).map_err(|e| FederationError::Inconsistent(e.to_string()))?;
        if verdict == WitnessVerdict::Cosign {
            self.store_witnessed(ctx, &head, &before)?;
        }
        match verdict {
            WitnessVerdict::Cosign | WitnessVerdict::AlreadyCosigned => {
                let cosignature = evidence::cosign(&self.key, &head);
                self.stats.cosignatures_given += 1;
                ctx.send_durable(
                    Peer::Address(self.peers[&from].clone()),
                    rid,
                    Body::Cosigned { cosignature: cosignature.clone() },
                );
                // What a witness cosigned is gossiped, so two witnesses shown different
                // heads for one epoch find out.
                let _ = self.on_head(ctx, &head, std::slice::from_ref(&cosignature))?;
                self.gossip(ctx, GossipItem::Head { head, cosignatures: vec![cosignature] }, Some(from));
                Ok(())
            }
            WitnessVerdict::Fork(cert) => {
                self.on_fork(ctx, cert.clone())?;
                self.gossip(ctx, GossipItem::Fork(cert), None);
                Err(FederationError::Distrusted(short(&from)))
            }
            WitnessVerdict::Stale => Err(FederationError::Inconsistent("older than a head already cosigned".into())),
            WitnessVerdict::Inconsistent => {
                let last = self.witness.last_size(&from);
                Err(FederationError::Inconsistent(format!("not consistent with log size {last} cosigned before")))
            }
        }
    }

    pub(super) fn on_cosigned<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: NodeId,
        cosig: Cosignature,
    ) -> Result<(), FederationError> {
        let key = self.known.get(&from).map(|d| d.key).ok_or_else(|| FederationError::UnknownNode(short(&from)))?;
        if cosig.witness != from {
            return Err(FederationError::Inconsistent("cosignature names another witness".into()));
        }
        let Some(head) = self.log.latest().cloned() else { return Err(FederationError::NoHead) };
        // It may be for the head before the newest (a slow witness); the log checks.
        let target = if head.head.epoch == cosig.epoch {
            head
        } else {
            match crate::transparency_log::stored_head(&*ctx.store, cosig.epoch)? {
                Some(h) => h,
                None => return Err(FederationError::Inconsistent("no such epoch".into())),
            }
        };
        evidence::verify_cosignature(&cosig, &key, &target.head)
            .map_err(|e| FederationError::Inconsistent(e.to_string()))?;
        let size = cosig.epoch + 1;
        if self.witness_sizes.get(&from).is_none_or(|(s, _)| *s < size) {
            self.note_witness_size(ctx, from, size)?;
        }
        if self.log.add_cosignature(ctx.store, cosig)? {
            self.stats.cosignatures_received += 1;
            let latest = self.log.latest().cloned().expect("a head exists");
            let cosignatures = self.log.latest_cosignatures();
            if cosignatures.len() == ctx.config.federation.serve_quorum {
                // Re-announce the head once it carries a quorum.
                self.gossip(ctx, GossipItem::Head { head: latest, cosignatures }, None);
            }
        }
        Ok(())
    }

    /// A witness asks for the proof from the size it last cosigned: ask again from there.
    pub(super) fn on_cosign_from<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: NodeId,
        log_size: u64,
    ) -> Result<(), FederationError> {
        let Some(head) = self.log.latest().cloned() else { return Err(FederationError::NoHead) };
        let size = head.head.epoch + 1;
        if log_size == 0 || log_size > size {
            return Err(FederationError::Inconsistent(format!("this log has no size {log_size}")));
        }
        self.note_witness_size(ctx, from, log_size)?;
        let consistency = self.log.consistency(log_size, size);
        let rid = self.fresh_rid(ctx);
        let addr = self.peers[&from].clone();
        ctx.send_durable(Peer::Address(addr), rid, Body::CosignRequest { head, from_log_size: log_size, consistency });
        Ok(())
    }

    /// Whether the witness view has room for `node`: it is known, a slot is free, or the
    /// node idle the longest (no new head for `WITNESS_IDLE_US`) is evicted to make one.
    fn make_witness_room<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, node: &NodeId) -> Result<bool, StoreError> {
        if self.witness.knows(node) || self.witness.node_count() < WITNESS_NODES_MAX {
            return Ok(true);
        }
        let idlest = self.witness_seen.iter().min_by_key(|(id, at)| (**at, **id)).map(|(id, at)| (*id, *at));
        let Some((victim, at)) = idlest else { return Ok(false) };
        if ctx.now.saturating_sub(at) < WITNESS_IDLE_US {
            return Ok(false);
        }
        for epoch in self.witness.epochs(&victim) {
            ctx.store.delete(Table::FedState, &whead_key(&victim, epoch))?;
        }
        // An idle node is most likely gone: its record as a witness of this log goes too.
        if self.witness_sizes.remove(&victim).is_some() {
            ctx.store.delete(Table::FedState, &prefixed(PREFIX_WSIZE, &victim))?;
        }
        self.witness.forget(&victim);
        self.witness_seen.remove(&victim);
        Ok(true)
    }

    /// Records that `witness` cosigned this log up to `size` (its `wsize/` row). Bounded
    /// like the witness view: with `WITNESS_NODES_MAX` witnesses kept, a new one takes the
    /// place of the one whose size changed longest ago, if that was at least
    /// `WITNESS_IDLE_US` ago; otherwise it is not recorded (the next request to it starts
    /// its proof from 0 and the witness answers `CosignFrom`, as after a lost cosignature).
    fn note_witness_size<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        witness: NodeId,
        size: u64,
    ) -> Result<(), StoreError> {
        if !self.witness_sizes.contains_key(&witness) && self.witness_sizes.len() >= WITNESS_NODES_MAX {
            let idlest =
                self.witness_sizes.iter().min_by_key(|(id, (_, at))| (*at, **id)).map(|(id, (_, at))| (*id, *at));
            let Some((victim, at)) = idlest else { return Ok(()) };
            if ctx.now.saturating_sub(at) < WITNESS_IDLE_US {
                return Ok(());
            }
            ctx.store.delete(Table::FedState, &prefixed(PREFIX_WSIZE, &victim))?;
            self.witness_sizes.remove(&victim);
        }
        ctx.save(Table::FedState, &prefixed(PREFIX_WSIZE, &witness), &(size, ctx.now))?;
        self.witness_sizes.insert(witness, (size, ctx.now));
        Ok(())
    }

    /// Writes the head the view just recorded as its row, and deletes the rows of the
    /// heads it let go (`WITNESS_RECENT_HEADS` a node).
    fn store_witnessed<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        head: &SignedHead,
        before: &[u64],
    ) -> Result<(), StoreError> {
        let (node, now) = (head.head.node_id, ctx.now);
        ctx.save(Table::FedState, &whead_key(&node, head.head.epoch), &(now, head))?;
        let after = self.witness.epochs(&node);
        for epoch in before.iter().filter(|e| after.binary_search(e).is_err()) {
            ctx.store.delete(Table::FedState, &whead_key(&node, *epoch))?;
        }
        self.witness_seen.insert(node, now);
        Ok(())
    }
}
