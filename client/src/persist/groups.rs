//! The group member's state (`GroupState`: the MLS storage and the group records),
//! invitations received and not yet accepted, and the group history (messages and
//! notices).

use std::collections::BTreeMap;

use nymstr_proto::codec;
use nymstr_proto::wire::GroupId;

use super::Home;
use super::format::{Result, decode, decode_big, encode_big};
use super::records::{GroupLine, GroupLineKind, InviteRecord};
use nymstr_client_core::group::{GroupRecord, GroupState, GroupStateDelta, GroupStats};

impl Home {
    /// The group member state as last saved (empty if there is none).
    pub fn group_state(&self) -> Result<GroupState> {
        let mut storage = BTreeMap::new();
        for item in self.group_storage.iter() {
            let (k, v) = item?;
            storage.insert(k.to_vec(), v.to_vec());
        }
        let groups: Vec<GroupRecord> = match &self.saved_group_records {
            Some(v) => decode_big("group records", v)?,
            None => Vec::new(),
        };
        let stats: GroupStats = match &self.saved_group_stats {
            Some(v) => decode("group stats", v)?,
            None => GroupStats::default(),
        };
        Ok(GroupState { storage, groups, stats })
    }

    /// Writes a group state delta (`GroupCore::export_changes`). Not flushed: returns
    /// whether anything was written, and the caller flushes before acknowledging.
    pub fn save_group_delta(&mut self, delta: GroupStateDelta) -> Result<bool> {
        let mut writes = 0usize;
        if !delta.upserts.is_empty() || !delta.deletes.is_empty() {
            let mut batch = sled::Batch::default();
            for k in &delta.deletes {
                batch.remove(k.as_slice());
                writes += 1;
            }
            for (k, v) in &delta.upserts {
                batch.insert(k.as_slice(), v.as_slice());
                writes += 1;
            }
            self.group_storage.apply_batch(batch)?;
        }
        let records = encode_big(&delta.groups)?;
        if self.saved_group_records.as_deref() != Some(records.as_slice()) {
            self.group_state.insert("records", records.as_slice())?;
            self.saved_group_records = Some(records);
            writes += 1;
        }
        let stats = codec::encode(&delta.stats);
        if self.saved_group_stats.as_deref() != Some(stats.as_slice()) {
            self.group_state.insert("stats", stats.as_slice())?;
            self.saved_group_stats = Some(stats);
            writes += 1;
        }
        Ok(writes > 0)
    }

    /// Keeps an invitation (a newer one for the same group replaces it). Not flushed.
    pub fn record_invite(&self, record: &InviteRecord) -> Result<()> {
        self.group_invites.insert(record.invite.token.group_id, codec::encode(record))?;
        Ok(())
    }

    /// Invitations not yet accepted, oldest first.
    pub fn invites(&self) -> Result<Vec<InviteRecord>> {
        let mut out: Vec<InviteRecord> = Vec::new();
        for item in self.group_invites.iter() {
            let (_, v) = item?;
            out.push(decode("group invitation", &v)?);
        }
        out.sort_by_key(|r| r.received_at_us);
        Ok(out)
    }

    pub fn invite(&self, group: &GroupId) -> Result<Option<InviteRecord>> {
        self.group_invites.get(group)?.map(|v| decode("group invitation", &v)).transpose()
    }

    pub fn remove_invite(&self, group: &GroupId) -> Result<()> {
        self.group_invites.remove(group)?;
        Ok(())
    }

    pub fn mark_invite_shown(&self, group: &GroupId) -> Result<()> {
        if let Some(mut r) = self.invite(group)? {
            r.shown = true;
            self.record_invite(&r)?;
        }
        Ok(())
    }

    /// Appends a line of group history; a message already recorded (same group and
    /// message id) is not recorded twice and comes back as stored. Not flushed.
    pub fn record_group_line(&self, mut line: GroupLine) -> Result<GroupLine> {
        let id_key = match &line.kind {
            GroupLineKind::Message { msg_id, .. } | GroupLineKind::LegacyMessage { msg_id, .. } => {
                let mut k = line.group.to_vec();
                k.extend_from_slice(msg_id);
                Some(k)
            }
            GroupLineKind::Notice { .. } => None,
        };
        if let Some(k) = &id_key
            && let Some(seq) = self.group_log_ids.get(k)?
            && let Some(existing) = self.group_log.get(&seq)?
        {
            return decode("group history line", &existing);
        }
        let seq = self.db.generate_id()?;
        line.seq = seq;
        self.group_log.insert(seq.to_be_bytes(), codec::encode(&line))?;
        if let Some(k) = id_key {
            self.group_log_ids.insert(k, &seq.to_be_bytes())?;
        }
        Ok(line)
    }

    pub fn mark_group_read(&self, line: &GroupLine) -> Result<()> {
        if let Some(bytes) = self.group_log.get(line.seq.to_be_bytes())? {
            let mut l: GroupLine = decode("group history line", &bytes)?;
            l.read = true;
            self.group_log.insert(line.seq.to_be_bytes(), codec::encode(&l))?;
        }
        Ok(())
    }

    /// Group lines not shown yet, oldest first.
    pub fn group_unread(&self) -> Result<Vec<GroupLine>> {
        let mut out = Vec::new();
        for item in self.group_log.iter() {
            let (_, v) = item?;
            let line: GroupLine = decode("group history line", &v)?;
            if !line.read {
                out.push(line);
            }
        }
        Ok(out)
    }

    /// The last `limit` lines of one group (or all), oldest first.
    pub fn group_lines(&self, group: Option<&GroupId>, limit: usize) -> Result<Vec<GroupLine>> {
        let mut out = Vec::new();
        for item in self.group_log.iter().rev() {
            let (_, v) = item?;
            let line: GroupLine = decode("group history line", &v)?;
            if group.is_none_or(|g| *g == line.group) {
                out.push(line);
                if out.len() >= limit {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }
}
