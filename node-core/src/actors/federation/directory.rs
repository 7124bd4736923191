//! This node's own directory in its transparency log: entries staged from the registry (on
//! registration, by the operator, and by the reconciliation at start), and lookups of
//! names, answered here with a proof or forwarded to the name's home node.

use super::state::{Federation, FederationError, Pending, PendingKind};
use crate::actors::registry::Account;
use crate::actors::types::{Ctx, Peer, SenderTag};
use crate::store::{Store, StoreError, Table};

use nymstr_proto::codec;
use nymstr_proto::federation::descriptor::QualifiedName;
use nymstr_proto::federation::{DirEntry, EntryStatus};
use nymstr_proto::identity;
use nymstr_proto::wire::{Body, GossipItem};

impl Federation {
    /// The registry is the source of truth for accounts: a crash between a registry write
    /// and its directory staging must not leave an account out of the log. Run at start.
    pub(super) fn reconcile_registry<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), StoreError> {
        let mut stale = Vec::new();
        for (_, v) in ctx.store.scan_prefix(Table::Accounts, &[])? {
            let Ok(account) = codec::decode_record::<Account>(&v) else { continue };
            let current = self.log.newest_entry(&account.username).is_some_and(|e| {
                e.account_key == account.account_key
                    && e.installations == account.installations
                    && e.status == EntryStatus::Active
            });
            if !current {
                stale.push(account);
            }
        }
        for account in stale {
            self.on_account_changed(ctx, &account)?;
        }
        Ok(())
    }

    /// A registration or installation change is durable in the registry: stage the new
    /// directory entry and promise the client its inclusion.
    pub fn on_account_changed<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        account: &Account,
    ) -> Result<nymstr_proto::federation::Promise, StoreError> {
        let entry = DirEntry {
            username: account.username.clone(),
            account_key: account.account_key,
            installations: account.installations.clone(),
            status: EntryStatus::Active,
            seq: 0,
            epoch: 0,
        };
        self.log.stage(ctx.store, &self.key, &account.username, entry)
    }

    /// Stages a directory entry as given (an operator's override; see
    /// `NodeCore::operator_stage_entry`).
    pub fn stage_entry<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        username: &str,
        entry: DirEntry,
    ) -> Result<nymstr_proto::federation::Promise, StoreError> {
        self.log.stage(ctx.store, &self.key, username, entry)
    }

    pub(super) fn local_lookup<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        to: Peer,
        rid: u64,
        username: &str,
        from_log_size: u64,
    ) -> Result<(), FederationError> {
        let cfg = &ctx.config.federation;
        let folded = identity::normalize_username(username).map_err(|e| FederationError::BadName(e.to_string()))?;
        let proof = self
            .log
            .lookup(&folded, from_log_size, ctx.now, cfg.serve_quorum, cfg.serve_grace_us)
            .ok_or(FederationError::NoHead)?;
        self.stats.lookups_served += 1;
        ctx.send_durable(to, rid, Body::KtLookupResult { descriptor: self.descriptor.clone(), proof: Box::new(proof) });
        Ok(())
    }

    /// A client's transparency lookup: answered here for local names, else forwarded to
    /// the named node (which learns only this node).
    pub fn on_client_lookup<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        name: &str,
        from_log_size: u64,
    ) -> Result<(), FederationError> {
        match name.split_once('@') {
            None => self.local_lookup(ctx, Peer::Tag(tag), rid, name, from_log_size),
            Some(_) => {
                let q = QualifiedName::parse(name).map_err(|e| FederationError::BadName(e.to_string()))?;
                if q.node == self.id {
                    return self.local_lookup(ctx, Peer::Tag(tag), rid, &q.username, from_log_size);
                }
                if let Some(cert) = self.forks.get(&q.node) {
                    // The client checks the evidence itself.
                    ctx.send(Peer::Tag(tag), rid, Body::Gossip { items: vec![GossipItem::Fork(cert.clone())] });
                    return Ok(());
                }
                self.forward_slot()?;
                let addr = self.peer_address(ctx, &q.node)?;
                let fwd = self.fresh_rid(ctx);
                let deadline = ctx.now + ctx.config.federation.forward_timeout_us;
                self.pending.insert(
                    fwd,
                    Pending { peer: q.node, client: tag, client_rid: rid, deadline, kind: PendingKind::Lookup },
                );
                self.stats.lookups_forwarded += 1;
                ctx.send(Peer::Address(addr), fwd, Body::KtLookup { name: q.username, from_log_size });
                Ok(())
            }
        }
    }
}
