//! Applying the steward's log in seq order: entries pushed or fetched (catch-up; pruned
//! ranges reported as `HistoryGap`), buffered until their turn, our own uploads recognised,
//! entries run through MLS (proposals stored, commits merged), the new epoch (roster,
//! intents, meta re-sent to joiners), and late entries wanted for a repair.

use nymstr_mls as nmls;
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{ErrorCode, GroupEntry, GroupId, MsgId, PublicKey};
use openmls::prelude::{MlsMessageIn, ProcessedMessageContent, Sender, StagedCommit};
use openmls_traits::OpenMlsProvider;
use tls_codec::DeserializeBytes;

use super::GroupCore;
use super::events::{GroupEvent, MemberInfo};
use super::mls_util::{pending_refs, purge_proposals};
use super::policy::check_commit;
use super::roster::{member_index_of, policy_of, roster_of, sender_of};
use super::state::{Intent, MissingRef, OutMsg, Phase, UploadKind};
use crate::sync::SyncBody;

impl GroupCore {
    /// Entries from a fetch (`fetch` = its `from_seq` and whether it was a repair) or sent
    /// unsolicited after a subscription (from our next seq). Entries come in seq order;
    /// a seq the reply skips was pruned by the steward (only application entries are).
    pub(super) fn on_entries(
        &mut self,
        now: TimeUs,
        group: &GroupId,
        entries: Vec<GroupEntry>,
        next_seq: u64,
        fetch: Option<(u64, bool)>,
    ) {
        let Some(g) = self.groups.get_mut(group) else { return };
        if !matches!(g.rec.phase, Phase::Member) {
            return;
        }
        g.rec.known_next_seq = g.rec.known_next_seq.max(next_seq);
        match fetch {
            Some((from_seq, true)) => {
                // A repair: if the reply skips the seq we asked for, it is gone for good.
                let gone = entries.first().map_or(next_seq > from_seq, |e| e.seq > from_seq);
                if gone {
                    let lost: Vec<((PublicKey, MsgId), MissingRef)> =
                        g.rec.missing.iter().filter(|(_, m)| m.seq == from_seq).map(|(k, m)| (*k, m.clone())).collect();
                    for (key, m) in lost {
                        g.rec.missing.remove(&key);
                        let msg_id = key.1;
                        self.events.push_back(GroupEvent::Lost { group: *group, msg_id, sender: m.sender, seq: m.seq });
                    }
                }
            }
            _ => {
                if matches!(fetch, Some((_, false))) {
                    g.catching_up = false;
                    // Still behind after this reply: the next catch-up waits its turn.
                    g.gap_since = Some(now);
                }
                let mut expect = fetch.map_or(g.rec.next_seq, |(f, _)| f);
                let upto = entries.last().map_or(next_seq, |e| e.seq);
                let mut holes = Vec::new();
                for seq in entries.iter().map(|e| e.seq).chain((upto == next_seq).then_some(next_seq)) {
                    if seq > expect {
                        holes.push((expect, seq));
                    }
                    expect = expect.max(seq + 1);
                }
                for (from, to) in holes {
                    let from = from.max(g.rec.next_seq);
                    if from >= to {
                        continue;
                    }
                    // Not in the buffer either (a push may have raced the reply).
                    if (from..to).any(|s| g.buffered.contains_key(&s)) {
                        continue;
                    }
                    g.rec.pruned.insert(from, to);
                    self.events.push_back(GroupEvent::HistoryGap { group: *group, from_seq: from, to_seq: to });
                }
            }
        }
        for e in entries {
            self.on_entry(now, group, e);
        }
        self.after_entries(now, group);
        // More to catch up on.
        if let Some(g) = self.groups.get(group)
            && !matches!(fetch, Some((_, true)))
            && g.rec.known_next_seq > g.rec.next_seq
            && !g.buffered.contains_key(&g.rec.next_seq)
            && g.subscribed
        {
            let from = g.rec.next_seq;
            self.fetch(now, *group, from, false);
        }
    }

    /// Takes one entry (pushed or fetched): applies it when its turn comes.
    pub(super) fn on_entry(&mut self, now: TimeUs, group: &GroupId, entry: GroupEntry) {
        let Some(g) = self.groups.get_mut(group) else { return };
        if !matches!(g.rec.phase, Phase::Member) {
            return;
        }
        g.rec.known_next_seq = g.rec.known_next_seq.max(entry.seq + 1);
        if entry.seq < g.rec.next_seq {
            self.late_entry(now, group, entry);
        } else {
            g.buffered.insert(entry.seq, entry);
        }
    }

    /// Applies buffered entries in order, notes gaps, and sends what may now go.
    pub(super) fn after_entries(&mut self, now: TimeUs, group: &GroupId) {
        loop {
            let Some(g) = self.groups.get_mut(group) else { return };
            if !matches!(g.rec.phase, Phase::Member) {
                return;
            }
            if let Some((_, to)) = g.rec.pruned.range(..=g.rec.next_seq).next_back().map(|(f, t)| (*f, *t))
                && to > g.rec.next_seq
            {
                g.rec.next_seq = to;
                continue;
            }
            let Some(entry) = g.buffered.remove(&g.rec.next_seq) else { break };
            g.rec.next_seq += 1;
            self.apply(now, group, entry);
        }
        let Some(g) = self.groups.get_mut(group) else { return };
        let behind = !g.buffered.is_empty() || g.rec.known_next_seq > g.rec.next_seq;
        if !behind {
            g.gap_since = None;
        } else if g.gap_since.is_none() {
            g.gap_since = Some(now);
        }
        self.maybe_commit(now, group);
        self.pump(now, group);
    }

    pub(super) fn apply(&mut self, now: TimeUs, group: &GroupId, entry: GroupEntry) {
        let g = self.groups.get_mut(group).expect("present");
        // Ours?
        let own =
            g.rec.uploads.iter().find(|(_, u)| u.mls == entry.mls || u.acked_seq == Some(entry.seq)).map(|(id, _)| *id);
        if let Some(upload_id) = own {
            let up = self.forget_upload(group, &upload_id).expect("present");
            match up.kind {
                UploadKind::App { msg_id, ref plaintext } => {
                    // Overtaken by a commit (the steward accepts the previous epoch): who
                    // joined in it cannot read this copy, so it goes again in the current
                    // epoch (members who read the first copy drop the second by its id).
                    let g = self.groups.get_mut(group).expect("present");
                    if g.mls.as_ref().is_some_and(|m| m.epoch().as_u64() > entry.epoch) {
                        g.rec.outbox.push_front(OutMsg {
                            msg_id,
                            plaintext: plaintext.clone(),
                            upload_id: None,
                            order: up.order,
                        });
                        self.stats.app_reencryptions += 1;
                    }
                    self.own_app_applied(group, up, entry.seq);
                }
                UploadKind::Commit => {
                    let g = self.groups.get_mut(group).expect("present");
                    let Some(mls) = g.mls.as_mut() else { return };
                    let before = g.roster.clone();
                    let refs = pending_refs(mls);
                    if let Err(e) = mls.merge_pending_commit(&self.provider) {
                        self.error_event(*group, ErrorCode::BadMlsMessage, format!("merging our commit: {e:?}"));
                        return;
                    }
                    purge_proposals(&self.provider, mls, refs);
                    self.on_new_epoch(now, group, before);
                }
                UploadKind::Proposal => self.process(now, group, entry),
                UploadKind::Join => {}
            }
            return;
        }
        self.process(now, group, entry);
    }

    /// Runs one log entry through MLS.
    pub(super) fn process(&mut self, now: TimeUs, group: &GroupId, entry: GroupEntry) {
        let g = self.groups.get_mut(group).expect("present");
        if entry.epoch < g.rec.join_epoch {
            // Sent before we joined, logged after: not for us (and it cannot decrypt).
            // The sender re-sends it in the new epoch (overtaken message).
            g.rec.pre_join.insert(entry.seq);
            while g.rec.pre_join.len() > 64 {
                g.rec.pre_join.pop_first();
            }
            return;
        }
        let Some(mls) = g.mls.as_mut() else { return };
        let message =
            MlsMessageIn::tls_deserialize_exact_bytes(&entry.mls).ok().and_then(|m| m.try_into_protocol_message().ok());
        let Some(message) = message else {
            self.stats.unprocessable += 1;
            g.rec.failed.insert(entry.seq);
            return;
        };
        let processed = match mls.process_message(&self.provider, message) {
            Ok(p) => p,
            Err(_) => {
                self.stats.unprocessable += 1;
                g.rec.failed.insert(entry.seq);
                return;
            }
        };
        let sender = processed.sender().clone();
        let app = matches!(processed.content(), ProcessedMessageContent::ApplicationMessage(_));
        let from = if app { sender_of(mls, &processed, &g.roster, &mut self.identities) } else { None };
        let aad = processed.aad().to_vec();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                if !matches!(sender, Sender::Member(_)) {
                    return;
                }
                let Some((key, username)) = from else { return };
                self.on_app(now, group, entry.seq, key, username, &app.into_bytes());
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                let stored = mls.store_pending_proposal(self.provider.storage(), *p).is_ok();
                if stored && g.proposals_since.is_none() {
                    g.proposals_since = Some(now);
                }
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                // Members, not the steward, enforce the policy (§6.6): a commit that breaks
                // it is skipped by every honest member alike, and the epoch stays.
                if let Err(why) = check_commit(group, mls, &sender, &aad, &staged) {
                    self.stats.refused_commits += 1;
                    self.error_event(
                        *group,
                        ErrorCode::NotAllowed,
                        format!("refused the commit at seq {}: {why}", entry.seq),
                    );
                    return;
                }
                self.on_commit(now, group, *staged)
            }
            _ => {}
        }
    }

    pub(super) fn on_commit(&mut self, now: TimeUs, group: &GroupId, staged: StagedCommit) {
        let g = self.groups.get_mut(group).expect("present");
        let Some(mls) = g.mls.as_mut() else { return };
        let removed = staged.self_removed();
        let before = g.roster.clone();
        let refs = pending_refs(mls);
        if let Err(e) = mls.merge_staged_commit(&self.provider, staged) {
            self.error_event(*group, ErrorCode::BadMlsMessage, format!("merging a commit: {e:?}"));
            return;
        }
        purge_proposals(&self.provider, mls, refs);
        if removed {
            self.drop_group(group, true);
            self.events.push_back(GroupEvent::Removed { group: *group });
            return;
        }
        self.on_new_epoch(now, group, before);
    }

    pub(super) fn on_new_epoch(&mut self, now: TimeUs, group: &GroupId, before: Vec<MemberInfo>) {
        let me = self.member_key();
        let g = self.groups.get_mut(group).expect("present");
        let Some(mls) = g.mls.as_ref() else { return };
        let epoch = mls.epoch().as_u64();
        let after = roster_of(mls, &mut self.identities);
        g.roster = after.clone();
        let policy = policy_of(mls);
        g.epoch_started_at = now;
        g.proposals_since = None;
        // Intents: fulfilled ones go; the others are proposed again (`pump`).
        g.rec.intents.retain(|i| match &i.intent {
            Intent::Remove(k) => member_index_of(mls, k).is_some(),
            Intent::Leave => true,
            Intent::Promote(k) => member_index_of(mls, k).is_some() && !policy.is_admin(k),
            Intent::Demote(k) => policy.is_admin(k),
        });
        let joined = after.iter().any(|m| !before.iter().any(|b| b.key == m.key));
        let resend_meta = joined
            && policy.is_admin(&me)
            && nmls::designated_committer(group, epoch, 0, &policy.admins) == Some(me)
            && g.rec.meta.version > 0;
        let meta = g.rec.meta.clone();
        for m in after.iter().filter(|m| !m.verified) {
            self.events.push_back(GroupEvent::Error {
                group: *group,
                code: ErrorCode::BadCertificate,
                detail: format!("member {:02x?} has no valid installation credential", &m.key[..4]),
            });
        }
        self.events.push_back(GroupEvent::EpochChanged { group: *group, epoch });
        if before != after {
            self.events.push_back(GroupEvent::MembersChanged { group: *group });
        }
        if resend_meta {
            let _ = self.send_body(
                now,
                group,
                SyncBody::SetMeta { name: meta.name, description: meta.description, version: meta.version },
            );
        }
    }

    /// An entry below our next seq: only a repair (an application message we missed or
    /// could not process) is of interest.
    pub(super) fn late_entry(&mut self, now: TimeUs, group: &GroupId, entry: GroupEntry) {
        let g = self.groups.get_mut(group).expect("present");
        let wanted = g.rec.failed.contains(&entry.seq) || g.rec.missing.values().any(|m| m.seq == entry.seq);
        if !wanted {
            return;
        }
        let Some(mls) = g.mls.as_mut() else { return };
        let message =
            MlsMessageIn::tls_deserialize_exact_bytes(&entry.mls).ok().and_then(|m| m.try_into_protocol_message().ok());
        let Some(message) = message else { return };
        let Ok(processed) = mls.process_message(&self.provider, message) else { return };
        let sender = processed.sender().clone();
        let app = matches!(processed.content(), ProcessedMessageContent::ApplicationMessage(_));
        let from = if app { sender_of(mls, &processed, &g.roster, &mut self.identities) } else { None };
        if let ProcessedMessageContent::ApplicationMessage(app) = processed.into_content() {
            if !matches!(sender, Sender::Member(_)) {
                return;
            }
            let Some((key, username)) = from else { return };
            self.on_app(now, group, entry.seq, key, username, &app.into_bytes());
        }
    }
}
