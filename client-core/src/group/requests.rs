//! Requests to the steward and their retries: emission, `Pending` bookkeeping (backoff,
//! deferral), subscription, fetches (catch-up and repair), uploads (checked against the size
//! bounds first), dropping a group; and the refusals: per step and error code, retry after a
//! pause, start over, catch up, re-queue, or give up with an `Error` event (or `Removed`).

use nymstr_proto::codec;
use nymstr_proto::limits::{FRAME_BYTES_MAX, GROUP_FETCH_MAX, GROUP_MLS_BYTES_MAX};
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{Body, Envelope, ErrorCode, GroupId, UploadId};
use openmls_traits::OpenMlsProvider;
use rand_core::Rng;

use super::GroupCore;
use super::events::{GroupEvent, GroupTransmit};
use super::state::{OutMsg, Pending, Phase, Step, Upload, UploadKind};

impl GroupCore {
    pub(super) fn emit(&mut self, group_node: Vec<u8>, group: GroupId, request_id: u64, body: Body) {
        self.transmits.push(GroupTransmit { group_node, group, envelope: Envelope { request_id, body } });
    }

    pub(super) fn request(&mut self, now: TimeUs, group: GroupId, step: Step, body: Body) {
        let backoff = self.config.retry_after_us;
        self.request_with(now, group, step, body, backoff);
    }

    pub(super) fn request_with(&mut self, now: TimeUs, group: GroupId, step: Step, body: Body, backoff_us: TimeUs) {
        let Some(g) = self.groups.get(&group) else { return };
        let node = g.rec.group_node.clone();
        let rid = self.next_rid;
        self.next_rid += 1;
        self.pending
            .insert(rid, Pending { group, step, body: body.clone(), retry_at_us: now + backoff_us, backoff_us });
        self.emit(node, group, rid, body);
    }

    /// Queues a request to go out at the first retry (`retry_after_us` from now), without
    /// sending it now: the answer to a `Busy` or `Internal`.
    pub(super) fn defer(&mut self, now: TimeUs, group: GroupId, step: Step, body: Body) {
        let backoff_us = self.config.retry_after_us;
        let rid = self.next_rid;
        self.next_rid += 1;
        self.pending.insert(rid, Pending { group, step, body, retry_at_us: now + backoff_us, backoff_us });
    }

    pub(super) fn subscribe_body(&self, group: &GroupId) -> Body {
        let from_seq = self.groups.get(group).map_or(1, |g| g.rec.next_seq);
        Body::GroupSubscribe { group_id: *group, member_key: self.member_key(), from_seq }
    }

    pub(super) fn subscribe(&mut self, now: TimeUs, group: GroupId) {
        self.pending
            .retain(|_, p| !(p.group == group && matches!(p.step, Step::Subscribe | Step::SubscribeProof { .. })));
        let body = self.subscribe_body(&group);
        self.request(now, group, Step::Subscribe, body);
    }

    pub(super) fn fetch(&mut self, now: TimeUs, group: GroupId, from_seq: u64, repair: bool) {
        if !repair {
            let Some(g) = self.groups.get_mut(&group) else { return };
            if g.catching_up {
                return;
            }
            g.catching_up = true;
        } else if self
            .pending
            .values()
            .any(|p| p.group == group && matches!(p.step, Step::Fetch { from_seq: f, repair: true } if f == from_seq))
        {
            return;
        }
        let max = if repair { 1 } else { GROUP_FETCH_MAX as u32 };
        self.request(now, group, Step::Fetch { from_seq, repair }, Body::GroupFetch { group_id: group, from_seq, max });
    }

    pub(super) fn upload(&mut self, now: TimeUs, group: &GroupId, up: Upload) {
        let mut upload_id = [0u8; 16];
        self.rng.fill_bytes(&mut upload_id);
        self.upload_with_id(now, group, upload_id, up);
    }

    pub(super) fn upload_with_id(&mut self, now: TimeUs, group: &GroupId, upload_id: UploadId, up: Upload) {
        let body = upload_body(*group, upload_id, &up);
        let Some(g) = self.groups.get_mut(group) else { return };
        let too_large = upload_too_large(&up, &body);
        g.rec.uploads.insert(upload_id, up);
        self.pending.retain(|_, p| !matches!(p.step, Step::Upload(u) if u == upload_id));
        if let Some(detail) = too_large {
            // The steward would refuse it (or the frame would not even encode): refused
            // here, as it would be there, and never sent.
            self.on_upload_error(now, group, upload_id, ErrorCode::PayloadTooLarge, detail);
            return;
        }
        self.request(now, *group, Step::Upload(upload_id), body);
    }

    pub(super) fn forget_upload(&mut self, group: &GroupId, upload_id: &UploadId) -> Option<Upload> {
        self.pending.retain(|_, p| !matches!(p.step, Step::Upload(u) if u == *upload_id));
        self.groups.get_mut(group)?.rec.uploads.remove(upload_id)
    }

    pub(super) fn drop_group(&mut self, group: &GroupId, unsubscribe: bool) {
        self.pending.retain(|_, p| p.group != *group);
        if let Some(mut g) = self.groups.remove(group) {
            if unsubscribe {
                self.emit(g.rec.group_node.clone(), *group, 0, Body::GroupUnsubscribe { group_id: *group });
            }
            if let Some(m) = g.mls.as_mut() {
                let _ = m.delete(self.provider.storage());
            }
        }
    }

    pub(super) fn error_event(&mut self, group: GroupId, code: ErrorCode, detail: impl Into<String>) {
        self.events.push_back(GroupEvent::Error { group, code, detail: detail.into() });
    }

    pub(super) fn on_error(&mut self, now: TimeUs, group: &GroupId, step: Step, code: ErrorCode, detail: String) {
        match step {
            Step::Create => {
                if matches!(code, ErrorCode::Busy | ErrorCode::Internal) {
                    if let Some(Phase::Creating { group_info, advert }) =
                        self.groups.get(group).map(|g| g.rec.phase.clone())
                    {
                        let body = Body::GroupCreate { group_id: *group, group_info, advert };
                        self.defer(now, *group, Step::Create, body);
                    }
                } else if code == ErrorCode::GroupExists {
                    // Our own earlier attempt (ids are random): created.
                    self.on_created(now, group);
                } else {
                    self.error_event(*group, code, detail);
                    self.drop_group(group, false);
                }
            }
            Step::Info => {
                if matches!(code, ErrorCode::Busy | ErrorCode::Internal) {
                    self.retry_join(now, group);
                } else {
                    self.error_event(*group, code, detail);
                    self.drop_group(group, false);
                }
            }
            Step::Subscribe | Step::SubscribeProof { .. } => match code {
                // A lost or expired challenge: start over at once.
                ErrorCode::UnknownChallenge | ErrorCode::ChallengeExpired => {
                    let backoff = self.config.retry_after_us;
                    let body = self.subscribe_body(group);
                    self.request_with(now, *group, Step::Subscribe, body, backoff);
                }
                // The steward is full or failing: ask again after a pause, not at once.
                ErrorCode::Busy | ErrorCode::Internal => {
                    let body = self.subscribe_body(group);
                    self.defer(now, *group, Step::Subscribe, body);
                }
                ErrorCode::NotMember => self.removed(group),
                _ => self.error_event(*group, code, detail),
            },
            Step::Fetch { repair, .. } => {
                if !repair && let Some(g) = self.groups.get_mut(group) {
                    g.catching_up = false;
                }
                if code == ErrorCode::NotSubscribed {
                    if let Some(g) = self.groups.get_mut(group) {
                        g.subscribed = false;
                    }
                    self.subscribe(now, *group);
                } else if code == ErrorCode::NotMember {
                    self.removed(group);
                } else if !matches!(code, ErrorCode::Busy | ErrorCode::Internal) {
                    self.error_event(*group, code, detail);
                }
            }
            Step::Upload(upload_id) => self.on_upload_error(now, group, upload_id, code, detail),
        }
    }

    pub(super) fn on_upload_error(
        &mut self,
        now: TimeUs,
        group: &GroupId,
        upload_id: UploadId,
        code: ErrorCode,
        detail: String,
    ) {
        let Some(up) = self.forget_upload(group, &upload_id) else { return };
        if matches!(code, ErrorCode::Busy | ErrorCode::Internal) {
            // Same upload again after a pause (the steward dedupes by upload id).
            let backoff = self.config.retry_after_us;
            let body = upload_body(*group, upload_id, &up);
            if let Some(g) = self.groups.get_mut(group) {
                g.rec.uploads.insert(upload_id, up);
            }
            self.pending.insert(
                self.next_rid,
                Pending {
                    group: *group,
                    step: Step::Upload(upload_id),
                    body,
                    retry_at_us: now + backoff,
                    backoff_us: backoff,
                },
            );
            self.next_rid += 1;
            return;
        }
        let Some(g) = self.groups.get_mut(group) else { return };
        match up.kind {
            UploadKind::Join => {
                if let Some(mut m) = g.mls.take() {
                    let _ = m.delete(self.provider.storage());
                }
                if matches!(code, ErrorCode::WrongEpoch | ErrorCode::NotSteward) {
                    self.retry_join(now, group);
                } else {
                    self.error_event(*group, code, detail);
                    self.drop_group(group, false);
                }
            }
            UploadKind::App { msg_id, plaintext } => match code {
                ErrorCode::WrongEpoch | ErrorCode::NotSubscribed => {
                    // Encrypt again once we have caught up (or subscribed).
                    g.rec.outbox.push_front(OutMsg { msg_id, plaintext, upload_id: Some(upload_id), order: up.order });
                    self.stats.app_reencryptions += 1;
                    if code == ErrorCode::NotSubscribed {
                        g.subscribed = false;
                        self.subscribe(now, *group);
                    } else {
                        let from = g.rec.next_seq;
                        self.fetch(now, *group, from, false);
                    }
                }
                ErrorCode::NotMember => {
                    // Probably removed by a commit we have not applied yet: catch up.
                    let from = g.rec.next_seq;
                    self.fetch(now, *group, from, false);
                }
                _ => self.error_event(*group, code, format!("message {msg_id:02x?} refused: {detail}")),
            },
            UploadKind::Proposal => {
                // Only the intent this proposal was for is affected.
                let idx = up.intent.as_ref().and_then(|want| g.rec.intents.iter().position(|i| i.intent == *want));
                if let Some(i) = idx {
                    g.rec.intents[i].proposed_epoch = None;
                }
                match code {
                    ErrorCode::WrongEpoch => {
                        let from = g.rec.next_seq;
                        self.fetch(now, *group, from, false);
                    }
                    ErrorCode::NotSubscribed => {
                        g.subscribed = false;
                        self.subscribe(now, *group);
                    }
                    _ => {
                        // Refused for good: forget that intent (the others stay).
                        if let Some(i) = idx {
                            g.rec.intents.remove(i);
                        }
                        self.error_event(*group, code, format!("proposal refused: {detail}"));
                    }
                }
            }
            UploadKind::Commit => {
                if let Some(m) = g.mls.as_mut() {
                    let _ = m.clear_pending_commit(self.provider.storage());
                }
                // Not again before the next round (a refused commit must not spin).
                g.commit_hold_until = now + nymstr_mls::COMMIT_ROUND_US;
                match code {
                    ErrorCode::WrongEpoch | ErrorCode::NotSteward => {
                        let from = g.rec.next_seq;
                        self.fetch(now, *group, from, false);
                    }
                    _ => self.error_event(*group, code, format!("commit refused: {detail}")),
                }
            }
        }
        self.pump(now, group);
    }

    /// The steward says we are no longer a member (we missed the commit that removed us).
    pub(super) fn removed(&mut self, group: &GroupId) {
        if self.groups.get(group).is_some_and(|g| matches!(g.rec.phase, Phase::Member)) {
            self.drop_group(group, true);
            self.events.push_back(GroupEvent::Removed { group: *group });
        }
    }

    pub(super) fn retry_join(&mut self, now: TimeUs, group: &GroupId) {
        let max = self.config.retry_after_max_us;
        let Some(g) = self.groups.get_mut(group) else { return };
        if let Phase::Joining { backoff_us, retry_at_us, .. } = &mut g.rec.phase {
            *retry_at_us = Some(now + *backoff_us);
            *backoff_us = (*backoff_us * 2).min(max);
        }
    }
}

/// Why an upload cannot go to the steward: its MLS message or GroupInfo exceeds
/// `GROUP_MLS_BYTES_MAX`, or its frame would exceed `FRAME_BYTES_MAX`.
pub(super) fn upload_too_large(up: &Upload, body: &Body) -> Option<String> {
    for (what, len) in [("mls message", up.mls.len()), ("group info", up.group_info.len())] {
        if len > GROUP_MLS_BYTES_MAX {
            return Some(format!("{what} of {len} bytes exceeds {GROUP_MLS_BYTES_MAX}"));
        }
    }
    // The largest request id: the frame as it would be sent, at worst.
    let envelope = Envelope { request_id: u64::MAX, body: body.clone() };
    match codec::encode_frame(&envelope) {
        Ok(frame) if frame.len() <= FRAME_BYTES_MAX => None,
        Ok(frame) => Some(format!("frame of {} bytes exceeds {FRAME_BYTES_MAX}", frame.len())),
        Err(e) => Some(format!("frame does not encode: {e}")),
    }
}

/// The `GroupUpload` that carries `up` (sent first, and again after a `Busy`).
fn upload_body(group_id: GroupId, upload_id: UploadId, up: &Upload) -> Body {
    Body::GroupUpload {
        group_id,
        upload_id,
        mls: up.mls.clone(),
        group_info: up.group_info.clone(),
        invite: up.invite.clone(),
    }
}
