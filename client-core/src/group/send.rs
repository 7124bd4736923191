//! Sending what may go now: one proposal at a time for the member's intents, then queued
//! application messages encrypted in the current epoch, within the in-flight bound.

use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{ErrorCode, GroupId};
use openmls_traits::OpenMlsProvider;

use super::GroupCore;
use super::events::GroupError;
use super::mls_util::{err, mls_bytes, required_extensions};
use super::roster::{member_index_of, policy_of};
use super::state::{Intent, Phase, Upload, UploadKind};

impl GroupCore {
    /// Sends what may go now: proposals for our intents, then application messages.
    pub(super) fn pump(&mut self, now: TimeUs, group: &GroupId) {
        let me = self.member_key();
        let Some(g) = self.groups.get_mut(group) else { return };
        if !matches!(g.rec.phase, Phase::Member) || !g.subscribed {
            return;
        }
        let Some(mls) = g.mls.as_mut() else { return };
        let epoch = mls.epoch().as_u64();
        // Proposals (one at a time; not while catching up: the epoch is probably stale and
        // the proposal would be refused, or made again, once we are current).
        let proposing = g.rec.uploads.values().any(|u| matches!(u.kind, UploadKind::Proposal | UploadKind::Commit));
        if !proposing && !g.catching_up && mls.pending_commit().is_none() {
            let next = g.rec.intents.iter().position(|i| i.proposed_epoch != Some(epoch));
            if let Some(idx) = next {
                let intent = g.rec.intents[idx].intent.clone();
                let made = match &intent {
                    Intent::Remove(k) => match member_index_of(mls, k) {
                        Some(i) => mls.propose_remove_member(&self.provider, &self.signer, i).map_err(err),
                        None => Err(GroupError::UnknownMember),
                    },
                    Intent::Leave => match member_index_of(mls, &me) {
                        Some(i) => mls.propose_remove_member(&self.provider, &self.signer, i).map_err(err),
                        None => Err(GroupError::UnknownMember),
                    },
                    Intent::Promote(k) | Intent::Demote(k) => {
                        let mut policy = policy_of(mls);
                        if matches!(intent, Intent::Promote(_)) {
                            policy.admins.push(*k);
                        } else {
                            policy.admins.retain(|a| a != k);
                        }
                        let policy = policy.normalized();
                        if policy.admins.is_empty() {
                            Err(GroupError::LastAdmin)
                        } else {
                            required_extensions(&policy).and_then(|ext| {
                                mls.propose_group_context_extensions(&self.provider, ext, &self.signer).map_err(err)
                            })
                        }
                    }
                };
                match made {
                    Ok((msg, proposal_ref)) => {
                        // Out of our store until the log carries it.
                        let _ = mls.remove_pending_proposal(self.provider.storage(), &proposal_ref);
                        g.rec.intents[idx].proposed_epoch = Some(epoch);
                        match mls_bytes(&msg) {
                            Ok(bytes) => {
                                let up = Upload {
                                    kind: UploadKind::Proposal,
                                    mls: bytes,
                                    group_info: Vec::new(),
                                    invite: None,
                                    acked_seq: None,
                                    order: 0,
                                    intent: Some(intent),
                                };
                                self.upload(now, group, up);
                            }
                            Err(e) => self.error_event(*group, ErrorCode::BadMlsMessage, e.to_string()),
                        }
                    }
                    Err(e) => {
                        g.rec.intents.remove(idx);
                        self.error_event(*group, ErrorCode::NotAllowed, format!("cannot propose {intent:?}: {e}"));
                    }
                }
            }
        }
        // Application messages.
        loop {
            let max = self.config.uploads_in_flight_max;
            let Some(g) = self.groups.get_mut(group) else { return };
            let Some(mls) = g.mls.as_mut() else { return };
            let in_flight = g.rec.uploads.values().filter(|u| matches!(u.kind, UploadKind::App { .. })).count();
            // Not while catching up (after `WrongEpoch`, or fetching a gap): we would encrypt
            // in a stale epoch. A short gap alone does not stop sending (pushes and acks
            // overtake each other all the time; an overtaken message is re-sent, §2.6).
            let behind = g.catching_up;
            if in_flight >= max
                || behind
                || g.rec.outbox.is_empty()
                || mls.has_pending_proposals()
                || mls.pending_commit().is_some()
            {
                return;
            }
            let m = g.rec.outbox.pop_front().expect("non-empty");
            match mls
                .create_message(&self.provider, &self.signer, &m.plaintext)
                .map_err(err)
                .and_then(|c| mls_bytes(&c))
            {
                Ok(bytes) => {
                    let up = Upload {
                        kind: UploadKind::App { msg_id: m.msg_id, plaintext: m.plaintext },
                        mls: bytes,
                        group_info: Vec::new(),
                        invite: None,
                        acked_seq: None,
                        order: m.order,
                        intent: None,
                    };
                    match m.upload_id {
                        Some(id) => self.upload_with_id(now, group, id, up),
                        None => self.upload(now, group, up),
                    }
                }
                Err(e) => {
                    self.error_event(*group, ErrorCode::BadMlsMessage, format!("cannot encrypt: {e}"));
                    return;
                }
            }
        }
    }
}
