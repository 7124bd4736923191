//! Application messages and their sync header (`crate::sync`): the sender check, the causal
//! check reporting `Missing` references and fetching them, de-duplication, acknowledgements
//! by bloom filter, and delivery as `Message` / `MetaChanged` / `Repaired` events.

use std::collections::BTreeSet;

use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{GroupId, PublicKey};

use super::GroupCore;
use super::events::GroupEvent;
use super::roster::policy_of;
use super::state::{ACKS_TRACKED, GroupMeta, MissingRef, Upload, UploadKind};
use crate::sync::{self, CausalRef, HISTORY_MAX, SyncBody, SyncMessage};

impl GroupCore {
    pub(super) fn own_app_applied(&mut self, group: &GroupId, up: Upload, seq: u64) {
        let UploadKind::App { plaintext, .. } = up.kind else { return };
        let Ok(m) = SyncMessage::decode(&plaintext) else { return };
        let me = self.member_key();
        let username = self.keys.username.clone();
        self.deliver(group, seq, me, username, m, true);
    }

    pub(super) fn on_app(
        &mut self,
        now: TimeUs,
        group: &GroupId,
        seq: u64,
        sender: PublicKey,
        username: String,
        bytes: &[u8],
    ) {
        let Ok(m) = SyncMessage::decode(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        if m.sender != sender {
            self.stats.wrong_sender += 1;
            return;
        }
        let history = m.history.clone();
        if !self.deliver(group, seq, sender, username, m, false) {
            return;
        }
        // Causal check: what the sender saw and we did not.
        let repair_timeout = self.config.repair_timeout_us;
        let g = self.groups.get_mut(group).expect("present");
        let mut fetches = Vec::new();
        for r in history {
            if r.seq > g.rec.join_seq
                && r.seq < seq
                && !g.rec.pre_join.contains(&r.seq)
                && r.seq >= g.rec.seen_floor
                && !g.rec.seen.contains_key(&(r.sender, r.msg_id))
                && !g.rec.missing.contains_key(&(r.sender, r.msg_id))
            {
                g.rec.missing.insert(
                    (r.sender, r.msg_id),
                    MissingRef { sender: r.sender, seq: r.seq, deadline_us: now + repair_timeout },
                );
                self.events.push_back(GroupEvent::Missing {
                    group: *group,
                    msg_id: r.msg_id,
                    sender: r.sender,
                    seq: r.seq,
                });
                fetches.push(r.seq);
            }
        }
        for s in fetches {
            self.fetch(now, *group, s, true);
        }
    }

    /// Records and reports a decrypted (or own) application message; false if a duplicate.
    pub(super) fn deliver(
        &mut self,
        group: &GroupId,
        seq: u64,
        sender: PublicKey,
        username: String,
        m: SyncMessage,
        own: bool,
    ) -> bool {
        let seen_max = self.config.seen_max;
        let g = self.groups.get_mut(group).expect("present");
        // De-duplication on (sender, id): ids are chosen by their sender, so only the
        // sender's own copies (an overtaken message sent again) are duplicates.
        if g.rec.seen.contains_key(&(sender, m.msg_id)) {
            return false;
        }
        g.rec.lamport = g.rec.lamport.max(m.lamport);
        g.rec.seen.insert((sender, m.msg_id), seq);
        g.rec.seen_order.push_back((seq, sender, m.msg_id));
        while g.rec.seen_order.len() > seen_max {
            if let Some((s, by, id)) = g.rec.seen_order.pop_front() {
                g.rec.seen.remove(&(by, id));
                g.rec.seen_floor = g.rec.seen_floor.max(s + 1);
            }
        }
        g.rec.history.push_back(CausalRef { msg_id: m.msg_id, sender, seq });
        while g.rec.history.len() > HISTORY_MAX {
            g.rec.history.pop_front();
        }
        g.rec.window.push_back(m.msg_id);
        while g.rec.window.len() > sync::BLOOM_WINDOW {
            g.rec.window.pop_front();
        }
        g.rec.failed.remove(&seq);
        if own {
            g.rec.acks.push_back((m.msg_id, BTreeSet::new()));
            while g.rec.acks.len() > ACKS_TRACKED {
                g.rec.acks.pop_front();
            }
        } else if let Some(filter) = m.filter() {
            for (id, by) in g.rec.acks.iter_mut() {
                if filter.contains(id) {
                    by.insert(sender);
                }
            }
        }
        let repaired = g.rec.missing.remove(&(sender, m.msg_id));
        match m.body {
            SyncBody::Text { text } => {
                self.events.push_back(GroupEvent::Message {
                    group: *group,
                    msg_id: m.msg_id,
                    sender_username: username,
                    sender_key: sender,
                    text,
                    lamport: m.lamport,
                    seq,
                });
            }
            SyncBody::SetMeta { name, description, version } => {
                // The same rule for everyone, our own messages included (F4): an admin when the
                // message is applied, else ignored by every member.
                let admin = g.mls.as_ref().is_some_and(|mls| policy_of(mls).is_admin(&sender));
                if !admin {
                    self.stats.meta_not_admin += 1;
                } else if version >= g.rec.meta.version {
                    let changed = g.rec.meta.name != name || g.rec.meta.description != description;
                    g.rec.meta = GroupMeta { name: name.clone(), description: description.clone(), version };
                    if changed {
                        self.events.push_back(GroupEvent::MetaChanged { group: *group, name, description });
                    }
                }
            }
        }
        if let Some(r) = repaired {
            self.events.push_back(GroupEvent::Repaired {
                group: *group,
                msg_id: m.msg_id,
                sender: r.sender,
                seq: r.seq,
            });
        }
        true
    }
}
