//! The host interface: timers (`poll_timeout`, `handle_timeout`: retries, joins, repairs,
//! syncs, commits), inbound envelopes routed to their handlers, transmits and events out,
//! and reconnection / unsubscription of the transport.

use nymstr_proto::identity;
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{Body, Envelope, GroupId, MsgId, PublicKey};

use super::GroupCore;
use super::events::{GroupEvent, GroupTransmit};
use super::state::{MissingRef, Phase, Step};

impl GroupCore {
    /// The transport to the group nodes was replaced (new sender tag): every group
    /// subscribes again from its next seq, and every request goes again now.
    pub fn reconnected(&mut self, now: TimeUs) {
        for p in self.pending.values_mut() {
            p.retry_at_us = now;
            p.backoff_us = self.config.retry_after_us / 2;
        }
        let ids: Vec<GroupId> = self.groups.keys().copied().collect();
        for id in ids {
            let g = self.groups.get_mut(&id).expect("listed");
            g.subscribed = false;
            if matches!(g.rec.phase, Phase::Member) {
                self.subscribe(now, id);
            }
        }
        self.handle_timeout(now);
    }

    /// Stops receiving a group's pushes on this tag (the group stays; `reconnected`
    /// subscribes again).
    pub fn unsubscribe(&mut self, group: &GroupId) {
        if let Some(g) = self.groups.get_mut(group) {
            g.subscribed = false;
            let (node, id) = (g.rec.group_node.clone(), *group);
            self.pending
                .retain(|_, p| !(p.group == id && matches!(p.step, Step::Subscribe | Step::SubscribeProof { .. })));
            self.emit(node, id, 0, Body::GroupUnsubscribe { group_id: id });
        }
    }

    pub fn poll_timeout(&self) -> Option<TimeUs> {
        let mut next = self.pending.values().map(|p| p.retry_at_us).min();
        let mut consider = |t: Option<TimeUs>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if self.resubscribe {
            consider(Some(0));
        }
        for g in self.groups.values() {
            consider(g.rec.missing.values().map(|m| m.deadline_us).min());
            if !g.catching_up && g.subscribed {
                consider(g.gap_since.map(|t| t + self.config.gap_wait_us));
                consider(Some(g.last_heard.saturating_add(self.config.sync_every_us)));
            }
            if let Phase::Joining { retry_at_us, .. } = g.rec.phase {
                consider(retry_at_us);
            }
            consider(self.next_commit_at(g));
        }
        next
    }

    pub fn handle_timeout(&mut self, now: TimeUs) {
        if std::mem::take(&mut self.resubscribe) {
            let ids: Vec<GroupId> = self.groups.keys().copied().collect();
            for id in ids {
                let g = self.groups.get_mut(&id).expect("listed");
                g.epoch_started_at = now;
                match g.rec.phase {
                    Phase::Member => self.subscribe(now, id),
                    Phase::Creating { ref group_info, ref advert } => {
                        let body =
                            Body::GroupCreate { group_id: id, group_info: group_info.clone(), advert: advert.clone() };
                        self.request(now, id, Step::Create, body);
                    }
                    _ => {}
                }
            }
        }
        // Requests overdue.
        let due: Vec<u64> = self.pending.iter().filter(|(_, p)| p.retry_at_us <= now).map(|(r, _)| *r).collect();
        for rid in due {
            let Some(mut p) = self.pending.remove(&rid) else { continue };
            let backoff = (p.backoff_us.saturating_mul(2)).min(self.config.retry_after_max_us);
            match p.step {
                Step::SubscribeProof { expires_at_us } if expires_at_us <= now + backoff => {
                    // The challenge expires before another retry could answer: start over.
                    self.request_with(now, p.group, Step::Subscribe, self.subscribe_body(&p.group), backoff);
                }
                _ => {
                    let Some(g) = self.groups.get(&p.group) else { continue };
                    p.retry_at_us = now + backoff;
                    p.backoff_us = backoff;
                    let node = g.rec.group_node.clone();
                    self.emit(node, p.group, rid, p.body.clone());
                    self.pending.insert(rid, p);
                }
            }
        }
        let ids: Vec<GroupId> = self.groups.keys().copied().collect();
        for id in ids {
            let Some(g) = self.groups.get_mut(&id) else { continue };
            // Joins waiting to try again.
            if let Phase::Joining { retry_at_us: Some(t), .. } = g.rec.phase
                && t <= now
            {
                if let Phase::Joining { retry_at_us, .. } = &mut g.rec.phase {
                    *retry_at_us = None;
                }
                self.request(now, id, Step::Info, Body::GroupInfoRequest { group_id: id });
                continue;
            }
            // Repairs out of time.
            let lost: Vec<((PublicKey, MsgId), MissingRef)> =
                g.rec.missing.iter().filter(|(_, m)| m.deadline_us <= now).map(|(k, m)| (*k, m.clone())).collect();
            for (key, m) in lost {
                g.rec.missing.remove(&key);
                let msg_id = key.1;
                self.events.push_back(GroupEvent::Lost { group: id, msg_id, sender: m.sender, seq: m.seq });
            }
            let g = self.groups.get_mut(&id).expect("present");
            let quiet = g.last_heard.saturating_add(self.config.sync_every_us) <= now;
            if !g.catching_up
                && g.subscribed
                && (quiet || g.gap_since.is_some_and(|t| t + self.config.gap_wait_us <= now))
            {
                g.last_heard = now;
                let from = g.rec.next_seq;
                self.fetch(now, id, from, false);
            }
            self.maybe_commit(now, &id);
            self.pump(now, &id);
        }
    }

    /// Envelopes for the group nodes, in order.
    pub fn drain_transmits(&mut self) -> Vec<GroupTransmit> {
        std::mem::take(&mut self.transmits)
    }

    pub fn poll_event(&mut self) -> Option<GroupEvent> {
        self.events.pop_front()
    }

    /// Feeds one frame received from `group_node`.
    pub fn handle_frame(&mut self, now: TimeUs, group_node: &[u8], bytes: &[u8]) {
        if let Ok(envelope) = nymstr_proto::codec::decode_frame(bytes) {
            self.handle_envelope(now, group_node, envelope);
        }
    }

    /// Feeds one envelope received from `group_node`. Answers are matched to requests by
    /// `request_id`; pushes by group id (and must come from the group's node, unless the
    /// host passes an empty `group_node`, meaning "unknown").
    pub fn handle_envelope(&mut self, now: TimeUs, group_node: &[u8], envelope: Envelope) {
        let rid = envelope.request_id;
        let step = (rid != 0).then(|| self.pending.get(&rid).map(|p| (p.group, p.step.clone()))).flatten();
        let about = step.as_ref().map(|(g, _)| *g).or(match &envelope.body {
            Body::GroupPush { group_id, .. } | Body::GroupEntries { group_id, .. } => Some(*group_id),
            _ => None,
        });
        if let Some(g) = about.and_then(|id| self.groups.get_mut(&id))
            && (group_node.is_empty() || g.rec.group_node == group_node)
        {
            g.last_heard = now;
        }
        match envelope.body {
            Body::GroupPush { group_id, entry } if self.is_from_group_node(&group_id, group_node) => {
                self.on_entry(now, &group_id, entry);
                self.after_entries(now, &group_id);
            }
            Body::Challenge { nonce, expires_at_us, .. } => {
                let Some((group, Step::Subscribe)) = step else { return };
                self.pending.remove(&rid);
                let sig = identity::sign(&self.keys.installation, &identity::group_subscribe_bytes(&group, &nonce));
                self.request(
                    now,
                    group,
                    Step::SubscribeProof { expires_at_us },
                    Body::GroupSubscribeProof { group_id: group, nonce, sig },
                );
            }
            Body::GroupSubscribed { group_id, next_seq, .. } => {
                if !matches!(step, Some((g, Step::SubscribeProof { .. })) if g == group_id) {
                    return;
                }
                self.pending.remove(&rid);
                let Some(g) = self.groups.get_mut(&group_id) else { return };
                g.subscribed = true;
                g.rec.known_next_seq = g.rec.known_next_seq.max(next_seq);
                self.after_entries(now, &group_id);
            }
            Body::GroupCreated { group_id, .. } => {
                if !matches!(step, Some((g, Step::Create)) if g == group_id) {
                    return;
                }
                self.pending.remove(&rid);
                self.on_created(now, &group_id);
            }
            Body::GroupInfoReply { group_id, open, group_info, .. } => {
                if !matches!(step, Some((g, Step::Info)) if g == group_id) {
                    return;
                }
                self.pending.remove(&rid);
                self.on_group_info(now, &group_id, open, &group_info);
            }
            Body::GroupUploadAck { group_id, upload_id, seq, epoch } => {
                if !matches!(step, Some((g, Step::Upload(u))) if g == group_id && u == upload_id) {
                    return;
                }
                self.pending.remove(&rid);
                self.on_upload_ack(now, &group_id, &upload_id, seq, epoch);
            }
            Body::GroupEntries { group_id, entries, next_seq } => {
                let fetch = match step {
                    Some((g, Step::Fetch { from_seq, repair })) if g == group_id => {
                        self.pending.remove(&rid);
                        Some((from_seq, repair))
                    }
                    _ if self.is_from_group_node(&group_id, group_node) => None,
                    _ => return,
                };
                self.on_entries(now, &group_id, entries, next_seq, fetch);
            }
            Body::Error { code, detail } => {
                let Some((group, step)) = step else { return };
                self.pending.remove(&rid);
                self.on_error(now, &group, step, code, detail);
            }
            _ => {}
        }
    }

    pub(super) fn is_from_group_node(&self, group: &GroupId, group_node: &[u8]) -> bool {
        self.groups.get(group).is_some_and(|g| group_node.is_empty() || g.rec.group_node == group_node)
    }
}
