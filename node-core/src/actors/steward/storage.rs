//! The MLS storage mirror: each hosted group's openmls `MemoryStorage` records are written
//! to `Table::GroupMls` (only those that changed since the last sync, tracked by hash), so
//! [`Steward::recover`](super::Steward::recover) rebuilds the same `PublicGroup`.

use std::collections::BTreeMap;

use openmls_memory_storage::MemoryStorage;
use openmls_traits::OpenMlsProvider;

use super::{Hosted, key2};
use crate::actors::Ctx;
use crate::store::{Store, StoreError, Table};
use nymstr_proto::wire::GroupId;

/// openmls' `MemoryStorage` label of queued proposals. `clear_proposal_queue` in
/// openmls_memory_storage 0.6 deletes these records under the wrong key, so the steward
/// purges them itself after every merge (the queue is empty then by definition).
const QUEUED_PROPOSAL_LABEL: &[u8] = b"QueuedProposal";

/// Every record of a `MemoryStorage`, in key order.
pub(super) fn storage_records(storage: &MemoryStorage) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let values = storage.values.read().unwrap_or_else(|p| p.into_inner());
    values.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(super) fn storage_from(records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> MemoryStorage {
    let storage = MemoryStorage::default();
    {
        let mut values = storage.values.write().unwrap_or_else(|p| p.into_inner());
        for (k, v) in records {
            values.insert(k, v);
        }
    }
    storage
}

pub(super) fn purge_queued_proposals(storage: &MemoryStorage) {
    let mut values = storage.values.write().unwrap_or_else(|p| p.into_inner());
    values.retain(|k, _| !k.starts_with(QUEUED_PROPOSAL_LABEL));
}

/// Writes the MLS storage records that changed since the last sync.
pub(super) fn sync_mls<S: Store>(ctx: &mut Ctx<'_, S>, group_id: &GroupId, g: &mut Hosted) -> Result<(), StoreError> {
    let now = storage_records(g.provider.storage());
    let mut mirror = BTreeMap::new();
    for (k, v) in &now {
        let h = *blake3::hash(v).as_bytes();
        if g.mirror.get(k) != Some(&h) {
            ctx.store.put(Table::GroupMls, &key2(group_id, k), v)?;
        }
        mirror.insert(k.clone(), h);
    }
    for k in g.mirror.keys() {
        if !now.contains_key(k) {
            ctx.store.delete(Table::GroupMls, &key2(group_id, k))?;
        }
    }
    g.mirror = mirror;
    Ok(())
}
