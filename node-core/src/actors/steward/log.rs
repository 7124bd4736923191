//! The group log: one ordered entry per accepted upload (application entries pruned beyond
//! the history bound, handshake entries kept), the dedupe record of each upload id, and the
//! reads a member makes of it (`GroupFetch`, `GroupInfoRequest`).

use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{GROUP_ENTRIES_BYTES_MAX, Hosted, Steward, StewardError, corrupt, key2, seq_key};
use crate::actors::{Ctx, Peer, SenderTag, load};
use crate::store::{Store, StoreError, Table};
use nymstr_proto::limits::GROUP_FETCH_MAX;
use nymstr_proto::wire::{Body, GroupEntry, GroupId, UploadId};

/// Per-entry framing counted against [`GROUP_ENTRIES_BYTES_MAX`] (seq, epoch, length).
const ENTRY_OVERHEAD_BYTES: usize = 32;

/// Index record of one log entry (table `GroupSeqs`): application entries are pruned
/// beyond the history bound, handshake entries never.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SeqIndex {
    application: bool,
    upload_id: UploadId,
}

/// Dedupe record of an accepted upload (table `GroupUploads`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct UploadRecord {
    pub(super) seq: u64,
    pub(super) epoch: u64,
}

impl Steward {
    pub fn on_fetch<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        group_id: GroupId,
        from_seq: u64,
        max: u32,
    ) -> Result<(), StewardError> {
        let g = self.groups.get(&group_id).ok_or(StewardError::UnknownGroup)?;
        let key = g.subs.get(&tag).ok_or(StewardError::NotSubscribed)?;
        if !g.members.contains(key) {
            return Err(StewardError::NotMember);
        }
        let max = (max as usize).min(GROUP_FETCH_MAX);
        let entries = collect_entries(&*ctx.store, &group_id, g, from_seq, max)?;
        self.stats.group_fetches += 1;
        let g = self.groups.get_mut(&group_id).ok_or(StewardError::UnknownGroup)?;
        super::activity::touch(ctx, &group_id, g)?;
        ctx.send_durable(Peer::Tag(tag), rid, Body::GroupEntries { group_id, entries, next_seq: g.next_seq });
        Ok(())
    }

    pub fn on_group_info_request<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        group_id: GroupId,
    ) -> Result<(), StewardError> {
        let g = self.groups.get(&group_id).ok_or(StewardError::UnknownGroup)?;
        let body = Body::GroupInfoReply {
            group_id,
            epoch: g.epoch(),
            open: g.policy.open,
            group_info: g.record.group_info.clone(),
        };
        ctx.send_durable(Peer::Tag(tag), rid, body);
        Ok(())
    }
}

/// Appends an accepted message to the log (and prunes application history).
pub(super) fn append<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group_id: &GroupId,
    g: &mut Hosted,
    epoch: u64,
    mls: Vec<u8>,
    application: bool,
    upload_id: UploadId,
) -> Result<GroupEntry, StoreError> {
    let seq = g.next_seq;
    let entry = GroupEntry { seq, epoch, mls };
    ctx.save(Table::GroupLog, &seq_key(group_id, seq), &entry)?;
    ctx.save(Table::GroupSeqs, &seq_key(group_id, seq), &SeqIndex { application, upload_id })?;
    ctx.save(Table::GroupUploads, &key2(group_id, &upload_id), &UploadRecord { seq, epoch })?;
    g.next_seq += 1;
    if application {
        g.app_seqs.push_back(seq);
        let keep = ctx.config.group_history_max.max(1);
        while g.app_seqs.len() > keep {
            let Some(old) = g.app_seqs.pop_front() else { break };
            let k = seq_key(group_id, old);
            if let Some(idx) = ctx.load::<SeqIndex>(Table::GroupSeqs, &k)? {
                ctx.store.delete(Table::GroupUploads, &key2(group_id, &idx.upload_id))?;
            }
            ctx.store.delete(Table::GroupSeqs, &k)?;
            ctx.store.delete(Table::GroupLog, &k)?;
        }
    } else {
        g.handshake_seqs.insert(seq);
    }
    Ok(entry)
}

/// Entries with seq ≥ `from_seq`, in order, at most `max` and within
/// [`GROUP_ENTRIES_BYTES_MAX`] (always at least one if any remain and `max` > 0).
pub(super) fn collect_entries<S: Store>(
    store: &S,
    group_id: &GroupId,
    g: &Hosted,
    from_seq: u64,
    max: usize,
) -> Result<Vec<GroupEntry>, StoreError> {
    let mut handshakes = g.handshake_seqs.range(from_seq..).copied().peekable();
    let start = g.app_seqs.partition_point(|&s| s < from_seq);
    let mut apps = g.app_seqs.range(start..).copied().peekable();
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while out.len() < max {
        let next = match (handshakes.peek(), apps.peek()) {
            (Some(&h), Some(&a)) if h < a => handshakes.next(),
            (Some(_), Some(_)) | (None, Some(_)) => apps.next(),
            (Some(_), None) => handshakes.next(),
            (None, None) => None,
        };
        let Some(seq) = next else { break };
        let Some(entry) = load::<GroupEntry, _>(store, Table::GroupLog, &seq_key(group_id, seq))? else {
            return Err(corrupt(Table::GroupLog, format!("entry {seq} missing")));
        };
        let size = entry.mls.len() + ENTRY_OVERHEAD_BYTES;
        if !out.is_empty() && bytes + size > GROUP_ENTRIES_BYTES_MAX {
            break;
        }
        bytes += size;
        out.push(entry);
    }
    Ok(out)
}

/// A group's log index as stored (table `GroupSeqs`): its application entries (oldest
/// first), its handshake entries, and the seq the next entry gets.
pub(super) fn load_index<S: Store>(
    store: &S,
    group_id: &GroupId,
) -> Result<(VecDeque<u64>, BTreeSet<u64>, u64), StoreError> {
    let mut app_seqs = VecDeque::new();
    let mut handshake_seqs = BTreeSet::new();
    let mut next_seq = 1;
    for (k, v) in store.scan_prefix(Table::GroupSeqs, group_id)? {
        let seq = u64::from_be_bytes(
            k.get(16..24).and_then(|s| s.try_into().ok()).ok_or_else(|| corrupt(Table::GroupSeqs, "key"))?,
        );
        let idx: SeqIndex =
            nymstr_proto::codec::decode_record(&v).map_err(|e| corrupt(Table::GroupSeqs, e.to_string()))?;
        if idx.application {
            app_seqs.push_back(seq);
        } else {
            handshake_seqs.insert(seq);
        }
        next_seq = next_seq.max(seq + 1);
    }
    Ok((app_seqs, handshake_seqs, next_seq))
}
