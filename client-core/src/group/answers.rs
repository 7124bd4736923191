//! The steward's answers to our requests: a group created (we are its member), a GroupInfo
//! (our external commit follows), an upload acknowledged (our join merged; our other
//! entries buffered at their seq, to be recognised when the log reaches them).

use nymstr_mls::GroupPolicy;
use nymstr_proto::codec;
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{ErrorCode, GroupEntry, GroupId, InviteToken, UploadId};
use openmls::prelude::{
    LeafNodeParameters, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupJoinConfig, MlsMessageBodyIn,
    MlsMessageIn,
};
use openmls_traits::OpenMlsProvider;
use tls_codec::DeserializeBytes;

use super::GroupCore;
use super::events::{GroupError, GroupEvent};
use super::mls_util::{err, leaf_capabilities, mls_bytes, mls_id};
use super::policy::check_invite;
use super::roster::roster_of;
use super::state::{Phase, Upload, UploadKind};

impl GroupCore {
    pub(super) fn on_created(&mut self, now: TimeUs, group: &GroupId) {
        let Some(g) = self.groups.get_mut(group) else { return };
        if !matches!(g.rec.phase, Phase::Creating { .. }) {
            return;
        }
        g.rec.phase = Phase::Member;
        g.rec.next_seq = 1;
        g.rec.join_seq = 0;
        g.rec.seen_floor = 1;
        g.epoch_started_at = now;
        self.events.push_back(GroupEvent::Created { group: *group });
        self.subscribe(now, *group);
    }

    pub(super) fn on_group_info(&mut self, now: TimeUs, group: &GroupId, open: bool, group_info: &[u8]) {
        let Some(g) = self.groups.get(group) else { return };
        let Phase::Joining { invite, .. } = &g.rec.phase else { return };
        let invite = invite.clone();
        if !open && invite.is_none() {
            self.error_event(*group, ErrorCode::InviteRequired, "the group is invite-only");
            self.drop_group(group, false);
            return;
        }
        match self.external_commit(group, group_info, invite.as_ref()) {
            Ok((mls, commit, new_info)) => {
                let g = self.groups.get_mut(group).expect("present");
                g.mls = Some(mls);
                let up = Upload {
                    kind: UploadKind::Join,
                    mls: commit,
                    group_info: new_info,
                    invite,
                    acked_seq: None,
                    order: 0,
                    intent: None,
                };
                self.upload(now, group, up);
            }
            Err(e) => {
                self.error_event(*group, ErrorCode::BadMlsMessage, format!("cannot join: {e}"));
                self.drop_group(group, false);
            }
        }
    }

    /// Joins by external commit from the node's GroupInfo, which must be the group we asked
    /// for and, with an invitation, one whose policy names the inviting admin (§6.5): the
    /// node cannot lead us into another group. The invitation goes in the commit's
    /// authenticated data, where every member checks it (§6.6).
    pub(super) fn external_commit(
        &self,
        group: &GroupId,
        group_info: &[u8],
        invite: Option<&InviteToken>,
    ) -> Result<(MlsGroup, Vec<u8>, Vec<u8>), GroupError> {
        let msg = MlsMessageIn::tls_deserialize_exact_bytes(group_info).map_err(err)?;
        let MlsMessageBodyIn::GroupInfo(vgi) = msg.extract() else {
            return Err(GroupError::Mls("not a GroupInfo".into()));
        };
        if vgi.group_id() != &mls_id(group) {
            return Err(GroupError::Mls("the GroupInfo is for another group".into()));
        }
        let policy = GroupPolicy::from_extensions(vgi.group_context().extensions())
            .unwrap_or(GroupPolicy { admins: Vec::new(), open: false })
            .normalized();
        match invite {
            _ if self.skip_join_checks => {}
            Some(t) => check_invite(group, &policy, &codec::encode(t), &self.keys.cert.account_key)
                .map_err(|e| GroupError::Mls(format!("the group's policy refuses our invitation: {e}")))?,
            None if !policy.open => return Err(GroupError::Mls("the group is invite-only".into())),
            None => {}
        }
        let join_config = self.join_config();
        let aad = invite.map(codec::encode).unwrap_or_default();
        let (mls, bundle) = MlsGroup::external_commit_builder()
            .with_config(join_config)
            .with_aad(aad)
            .build_group(&self.provider, vgi, self.credential())
            .map_err(err)?
            .leaf_node_parameters(
                LeafNodeParameters::builder().with_capabilities(leaf_capabilities(self.config.ciphersuite)).build(),
            )
            .load_psks(self.provider.storage())
            .map_err(err)?
            .build(self.provider.rand(), self.provider.crypto(), &self.signer, |_| true)
            .map_err(err)?
            .finalize(&self.provider)
            .map_err(err)?;
        let (commit, _, info) = bundle.into_messages();
        let info = info.ok_or_else(|| GroupError::Mls("external commit without GroupInfo".into()))?;
        Ok((mls, mls_bytes(&commit)?, mls_bytes(&info)?))
    }

    pub(super) fn join_config(&self) -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(self.config.max_past_epochs)
            .sender_ratchet_configuration(self.ratchet_config())
            .build()
    }

    pub(super) fn on_upload_ack(&mut self, now: TimeUs, group: &GroupId, upload_id: &UploadId, seq: u64, epoch: u64) {
        let Some(g) = self.groups.get_mut(group) else { return };
        let Some(up) = g.rec.uploads.get_mut(upload_id) else { return };
        up.acked_seq = Some(seq);
        match up.kind {
            UploadKind::Join => {
                self.forget_upload(group, upload_id);
                let g = self.groups.get_mut(group).expect("present");
                let Some(mls) = g.mls.as_mut() else { return };
                if let Err(e) = mls.merge_pending_commit(&self.provider) {
                    self.error_event(*group, ErrorCode::BadMlsMessage, format!("merging our join: {e:?}"));
                    self.drop_group(group, false);
                    return;
                }
                let epoch = mls.epoch().as_u64();
                g.roster = roster_of(mls, &mut self.identities);
                g.rec.phase = Phase::Member;
                g.rec.next_seq = seq + 1;
                g.rec.join_seq = seq;
                g.rec.join_epoch = epoch;
                g.rec.seen_floor = seq + 1;
                g.rec.known_next_seq = g.rec.known_next_seq.max(seq + 1);
                g.epoch_started_at = now;
                g.proposals_since = None;
                self.events.push_back(GroupEvent::Joined { group: *group, epoch });
                self.events.push_back(GroupEvent::MembersChanged { group: *group });
                self.subscribe(now, *group);
            }
            UploadKind::App { .. } | UploadKind::Proposal | UploadKind::Commit => {
                // The steward does not push our own upload back to us: its entry is what
                // we sent, at the acknowledged seq, applied when its turn comes.
                if seq >= g.rec.next_seq {
                    let entry = GroupEntry { seq, epoch, mls: up.mls.clone() };
                    g.rec.known_next_seq = g.rec.known_next_seq.max(seq + 1);
                    g.buffered.insert(seq, entry);
                    self.after_entries(now, group);
                } else if matches!(up.kind, UploadKind::App { .. }) {
                    // Applied before this ack without being recognised (re-encrypted after
                    // a restore): it is ours.
                    let up = self.forget_upload(group, upload_id).expect("present");
                    self.own_app_applied(group, up, seq);
                }
            }
        }
    }
}
