//! Commit timing: when the steward rounds of the current epoch make this admin a committer
//! (`nymstr_mls::designated_committer`, holds after a refusal), and the commit itself.

use nymstr_mls as nmls;
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{ErrorCode, GroupId};
use openmls::prelude::{MlsGroup, Proposal, QueuedProposal};
use openmls_traits::OpenMlsProvider;

use super::GroupCore;
use super::events::GroupError;
use super::mls_util::{err, mls_bytes};
use super::roster::policy_of;
use super::state::{Group, Phase, Upload, UploadKind};

impl GroupCore {
    /// When the steward rounds of the current epoch make us a committer (admins with
    /// pending proposals only).
    pub(super) fn next_commit_at(&self, g: &Group) -> Option<TimeUs> {
        let mls = g.mls.as_ref()?;
        if !matches!(g.rec.phase, Phase::Member) || !g.subscribed || !mls.has_pending_proposals() {
            return None;
        }
        if mls.pending_commit().is_some() || g.rec.uploads.values().any(|u| matches!(u.kind, UploadKind::Commit)) {
            return None;
        }
        let policy = policy_of(mls);
        let me = self.member_key();
        if !policy.is_admin(&me) || self.own_removal_pending(mls) {
            return None;
        }
        let origin = g.epoch_started_at.max(g.proposals_since.unwrap_or(0));
        let epoch = mls.epoch().as_u64();
        (0..=nmls::round_cap(policy.admins.len()))
            .find(|r| nmls::designated_committer(&g.rec.id, epoch, *r, &policy.admins) == Some(me))
            .map(|r| (origin + r * nmls::COMMIT_ROUND_US).max(g.commit_hold_until))
    }

    pub(super) fn own_removal_pending(&self, mls: &MlsGroup) -> bool {
        let own = mls.own_leaf_index();
        mls.pending_proposals()
            .any(|p: &QueuedProposal| matches!(p.proposal(), Proposal::Remove(r) if r.removed() == own))
    }

    /// Commits pending proposals if this admin's steward round has come.
    pub(super) fn maybe_commit(&mut self, now: TimeUs, group: &GroupId) {
        let Some(g) = self.groups.get(group) else { return };
        let Some(at) = self.next_commit_at(g) else { return };
        if at > now {
            return;
        }
        let g = self.groups.get_mut(group).expect("present");
        let mls = g.mls.as_mut().expect("checked");
        let made = mls
            .commit_builder()
            .consume_proposal_store(true)
            .load_psks(self.provider.storage())
            .map_err(err)
            .and_then(|b| {
                // At most one GroupContextExtensions proposal per commit (RFC 9420 §12.2):
                // the first in log order; the others are proposed again next epoch.
                let mut gce = false;
                let first_gce_only = |p: &QueuedProposal| {
                    if !matches!(p.proposal(), Proposal::GroupContextExtensions(_)) {
                        return true;
                    }
                    !std::mem::replace(&mut gce, true)
                };
                b.build(self.provider.rand(), self.provider.crypto(), &self.signer, first_gce_only).map_err(err)
            })
            .and_then(|b| b.stage_commit(&self.provider).map_err(err));
        match made {
            Ok(bundle) => {
                let (commit, _, info) = bundle.into_messages();
                let bytes = mls_bytes(&commit).and_then(|c| {
                    let i = info.ok_or_else(|| GroupError::Mls("commit without GroupInfo".into()))?;
                    Ok((c, mls_bytes(&i)?))
                });
                match bytes {
                    Ok((c, i)) => {
                        let up = Upload {
                            kind: UploadKind::Commit,
                            mls: c,
                            group_info: i,
                            invite: None,
                            acked_seq: None,
                            order: 0,
                            intent: None,
                        };
                        self.upload(now, group, up);
                    }
                    Err(e) => {
                        let _ = mls.clear_pending_commit(self.provider.storage());
                        self.error_event(*group, ErrorCode::BadMlsMessage, e.to_string());
                    }
                }
            }
            Err(e) => {
                // A proposal we cannot commit: drop them all; their proposers propose again.
                let _ = mls.clear_pending_proposals(self.provider.storage());
                g.proposals_since = None;
                g.commit_hold_until = now + nmls::COMMIT_ROUND_US;
                self.error_event(*group, ErrorCode::BadMlsMessage, format!("cannot commit: {e}"));
            }
        }
    }
}
