//! Uploads: one MLS message in (application message, proposal or commit), deduplicated by
//! upload id, checked by its kind, appended to the log, acknowledged, and pushed to the
//! subscribed members; a commit also drops the subscriptions stale since the epoch before.

use openmls::prelude::{ContentType, MlsMessageBodyIn, MlsMessageIn, Sender};
use tls_codec::DeserializeBytes;

use super::activity::touch;
use super::commits::{Accepted, on_external_commit, on_member_commit, on_proposal};
use super::invites::{check_invite, redeem};
use super::log::{UploadRecord, append};
use super::subscriptions::push;
use super::{Steward, StewardError, bad_mls, key2};
use crate::actors::{Ctx, Peer, SenderTag, load};
use crate::store::{Store, Table};
use nymstr_proto::limits::GROUP_MLS_BYTES_MAX;
use nymstr_proto::wire::{Body, GroupId, InviteToken, PublicKey, UploadId};

impl Steward {
    /// A `GroupUpload`; the caller counts a refusal (`StewardStats::group_uploads_rejected`).
    #[allow(clippy::too_many_arguments)]
    pub fn on_upload<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        group_id: GroupId,
        upload_id: UploadId,
        mls: Vec<u8>,
        group_info: Vec<u8>,
        invite: Option<InviteToken>,
    ) -> Result<(), StewardError> {
        let stats = &mut self.stats;
        let g = self.groups.get_mut(&group_id).ok_or(StewardError::UnknownGroup)?;
        for (what, len) in [("mls", mls.len()), ("group_info", group_info.len())] {
            if len > GROUP_MLS_BYTES_MAX {
                return Err(StewardError::PayloadTooLarge { what, len, max: GROUP_MLS_BYTES_MAX });
            }
        }
        if let Some(done) = load::<UploadRecord, _>(&*ctx.store, Table::GroupUploads, &key2(&group_id, &upload_id))? {
            // A retried upload: acknowledge again once the first one is durable.
            let ack = Body::GroupUploadAck { group_id, upload_id, seq: done.seq, epoch: done.epoch };
            ctx.send_durable(Peer::Tag(tag), rid, ack);
            return Ok(());
        }
        let msg = MlsMessageIn::tls_deserialize_exact_bytes(&mls).map_err(|e| bad_mls("mls does not parse", e))?;
        let current = g.epoch();
        let accepted = match msg.extract() {
            MlsMessageBodyIn::PrivateMessage(pm) => {
                if pm.group_id().as_slice() != group_id {
                    return Err(StewardError::BadMls("message is for another group".into()));
                }
                if pm.content_type() != ContentType::Application {
                    return Err(StewardError::BadMls("handshake messages must be sent as PublicMessage".into()));
                }
                let key = g.subs.get(&tag).ok_or(StewardError::NotSubscribed)?;
                if !g.members.contains(key) {
                    return Err(StewardError::NotMember);
                }
                let epoch = pm.epoch().as_u64();
                if epoch != current && epoch.saturating_add(1) != current {
                    return Err(StewardError::WrongEpoch { current });
                }
                Accepted::Application { epoch }
            }
            MlsMessageBodyIn::PublicMessage(pm) => {
                if pm.group_id().as_slice() != group_id {
                    return Err(StewardError::BadMls("message is for another group".into()));
                }
                if pm.epoch().as_u64() != current {
                    return Err(StewardError::WrongEpoch { current });
                }
                match (pm.content_type(), pm.sender().clone()) {
                    (ContentType::Proposal, Sender::Member(index)) => on_proposal(ctx, &group_id, g, index, pm)?,
                    (ContentType::Commit, Sender::Member(index)) => {
                        on_member_commit(ctx, &group_id, g, index, pm, &group_info)?
                    }
                    (ContentType::Commit, Sender::NewMemberCommit) => {
                        let token = if self.admit_any_join {
                            None
                        } else {
                            check_invite(ctx.now, &group_id, g, invite.as_ref(), &*ctx.store)?
                        };
                        let accepted = on_external_commit(ctx, &group_id, g, pm, &group_info, token.as_ref())?;
                        if let Some(t) = token {
                            redeem(ctx, &mut self.used_invites, &group_id, &t)?;
                        }
                        accepted
                    }
                    (ContentType::Application, _) => {
                        return Err(StewardError::BadMls("application messages must be encrypted".into()));
                    }
                    (_, sender) => {
                        return Err(StewardError::NotAllowed(format!("{sender:?} may not send this message")));
                    }
                }
            }
            _ => return Err(StewardError::BadMls("not a PublicMessage or PrivateMessage".into())),
        };
        let (epoch, application) = match &accepted {
            Accepted::Application { epoch } => (*epoch, true),
            Accepted::Proposal { epoch } | Accepted::Commit { epoch, .. } => (*epoch, false),
        };
        let entry = append(ctx, &group_id, g, epoch, mls, application, upload_id)?;
        touch(ctx, &group_id, g)?;
        ctx.send_durable(
            Peer::Tag(tag),
            rid,
            Body::GroupUploadAck { group_id, upload_id, seq: entry.seq, epoch: entry.epoch },
        );
        stats.group_uploads_accepted += 1;
        match accepted {
            Accepted::Application { .. } => {
                stats.group_application_messages += 1;
                let targets: Vec<SenderTag> =
                    g.subs.iter().filter(|(t, k)| **t != tag && g.members.contains(*k)).map(|(t, _)| *t).collect();
                push(ctx, &group_id, &entry, &targets, stats);
            }
            Accepted::Proposal { .. } => {
                stats.group_proposals += 1;
                let targets: Vec<SenderTag> =
                    g.subs.iter().filter(|(t, k)| **t != tag && g.members.contains(*k)).map(|(t, _)| *t).collect();
                push(ctx, &group_id, &entry, &targets, stats);
            }
            Accepted::Commit { before, .. } => {
                stats.group_commits += 1;
                // Everyone who was or now is a member hears the commit (a removed member
                // learns it is out); then subscriptions stale since before this commit go.
                let targets: Vec<SenderTag> = g
                    .subs
                    .iter()
                    .filter(|(t, k)| **t != tag && (g.members.contains(*k) || before.contains(*k)))
                    .map(|(t, _)| *t)
                    .collect();
                push(ctx, &group_id, &entry, &targets, stats);
                let stale: Vec<(SenderTag, PublicKey)> = g
                    .subs
                    .iter()
                    .filter(|(_, k)| !g.members.contains(*k) && !before.contains(*k))
                    .map(|(t, k)| (*t, *k))
                    .collect();
                for (t, k) in stale {
                    g.subs.remove(&t);
                    if g.sub_by_key.get(&k) == Some(&t) {
                        g.sub_by_key.remove(&k);
                    }
                    ctx.store.delete(Table::GroupSubs, &key2(&group_id, &t.0))?;
                }
            }
        }
        Ok(())
    }
}
