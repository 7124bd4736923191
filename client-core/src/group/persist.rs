//! Persistence: `restore` from an exported state (requests in flight start over), the
//! full snapshot (`export_state`) and the changes since the last export (`export_changes`).

use std::collections::BTreeMap;

use nymstr_mls::NymstrProvider;
use openmls::prelude::MlsGroup;
use openmls_memory_storage::MemoryStorage;
use openmls_traits::OpenMlsProvider;

use super::GroupCore;
use super::config::{GroupConfig, MemberKeys, seeds};
use super::mls_util::mls_id;
use super::roster::roster_of;
use super::state::{Group, GroupRecord, GroupState, GroupStateDelta, OutMsg, Phase, RestoreError, UploadKind};

impl GroupCore {
    /// Restarts a core from an exported state (with a fresh seed). Member groups
    /// resubscribe at the first `handle_timeout` (`poll_timeout` is then due at once);
    /// requests in flight start over: creates and joins are re-sent, unconfirmed messages
    /// re-encrypted, proposals re-proposed, an unconfirmed commit of ours dropped.
    pub fn restore(
        keys: MemberKeys,
        seed: [u8; 32],
        config: GroupConfig,
        state: GroupState,
    ) -> Result<Self, RestoreError> {
        let mut core = Self::new(keys, seed, config);
        let (provider_seed, _) = seeds(seed);
        core.exported = state.storage.iter().map(|(k, v)| (k.clone(), *blake3::hash(v).as_bytes())).collect();
        let storage = MemoryStorage { values: std::sync::RwLock::new(state.storage.into_iter().collect()) };
        core.provider = NymstrProvider::with_storage(provider_seed, storage);
        core.stats = state.stats;
        for mut rec in state.groups {
            let mut mls = MlsGroup::load(core.provider.storage(), &mls_id(&rec.id)).ok().flatten();
            match &mut rec.phase {
                Phase::Member => {
                    let Some(m) = mls.as_mut() else { return Err(RestoreError::MissingMls(rec.id)) };
                    if m.pending_commit().is_some() {
                        let _ = m.clear_pending_commit(core.provider.storage());
                    }
                }
                Phase::Joining { retry_at_us, .. } => {
                    if let Some(mut m) = mls.take() {
                        let _ = m.delete(core.provider.storage());
                    }
                    *retry_at_us = Some(0);
                }
                Phase::Creating { .. } => {
                    if mls.is_none() {
                        return Err(RestoreError::MissingMls(rec.id));
                    }
                }
            }
            // Unconfirmed uploads start over.
            let uploads = std::mem::take(&mut rec.uploads);
            // In-flight messages go first, in the order they were sent (upload ids are
            // random); a stable sort keeps states saved before `order` existed as they were.
            let mut requeue = Vec::new();
            for (upload_id, up) in uploads {
                if let UploadKind::App { msg_id, plaintext } = up.kind {
                    requeue.push(OutMsg { msg_id, plaintext, upload_id: Some(upload_id), order: up.order });
                }
            }
            requeue.extend(rec.outbox.drain(..));
            requeue.sort_by_key(|m| m.order);
            rec.outbox = requeue.into();
            for i in &mut rec.intents {
                i.proposed_epoch = None;
            }
            let roster = mls.as_ref().map(|m| roster_of(m, &mut core.identities)).unwrap_or_default();
            let group = Group::from_record(rec, mls, roster);
            core.groups.insert(group.rec.id, group);
        }
        core.resubscribe = true;
        Ok(core)
    }

    /// A snapshot of everything `restore` needs.
    pub fn export_state(&self) -> GroupState {
        GroupState { storage: self.storage_records(), groups: self.records(), stats: self.stats.clone() }
    }

    /// The storage records changed since the last call (or start / restore), and every
    /// group record. `GroupStateDelta::apply_to` brings a saved full state up to date.
    pub fn export_changes(&mut self) -> GroupStateDelta {
        let now = self.storage_records();
        let mut delta = GroupStateDelta { groups: self.records(), stats: self.stats.clone(), ..Default::default() };
        let mut digests = BTreeMap::new();
        for (k, v) in now {
            let d = *blake3::hash(&v).as_bytes();
            if self.exported.get(&k) != Some(&d) {
                delta.upserts.insert(k.clone(), v);
            }
            digests.insert(k, d);
        }
        delta.deletes = self.exported.keys().filter(|k| !digests.contains_key(*k)).cloned().collect();
        self.exported = digests;
        delta
    }

    pub(super) fn storage_records(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let values = self.provider.storage().values.read().unwrap_or_else(|p| p.into_inner());
        values.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub(super) fn records(&self) -> Vec<GroupRecord> {
        self.groups
            .values()
            .map(|g| {
                let mut rec = g.rec.clone();
                // In-flight handshake uploads are not resumable as such (see `restore`).
                rec.uploads.retain(|_, u| matches!(u.kind, UploadKind::App { .. }));
                rec
            })
            .collect()
    }
}
