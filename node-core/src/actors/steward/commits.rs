//! Handshakes: proposals checked against the group policy, the one commit per epoch (from
//! the designated steward in round order, or from an external joiner), and the trial merge
//! that checks the new epoch and its GroupInfo before making it current.

use std::collections::BTreeSet;

use openmls::ciphersuite::signable::Verifiable;
use openmls::prelude::{
    LeafNodeIndex, OpenMlsSignaturePublicKey, ProcessedMessageContent, Proposal, ProposalOrRefType, PublicGroup,
    PublicMessageIn, Sender, SignatureScheme, StagedCommit,
};
use openmls_traits::OpenMlsProvider;
use tls_codec::Serialize as _;

use super::policy::{as_key, check_policy, leaf_key, member_keys, parse_group_info, read_policy, verify_leaf};
use super::storage::{purge_queued_proposals, storage_from, storage_records, sync_mls};
use super::{Hosted, StewardError, bad_mls, seed, state_err};
use crate::actors::Ctx;
use crate::store::{Store, Table};
use nymstr_mls::{GroupPolicy, NymstrProvider, may_commit};
use nymstr_proto::codec;
use nymstr_proto::limits::GROUP_MEMBERS_MAX;
use nymstr_proto::wire::{GroupId, InviteToken, PublicKey};

/// What kind of handshake an upload carried, once accepted.
pub(super) enum Accepted {
    Application {
        epoch: u64,
    },
    Proposal {
        epoch: u64,
    },
    /// A merged commit; `before` is the member set of the epoch it ended.
    Commit {
        epoch: u64,
        before: BTreeSet<PublicKey>,
    },
}

pub(super) fn on_proposal<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group_id: &GroupId,
    g: &mut Hosted,
    index: LeafNodeIndex,
    pm: PublicMessageIn,
) -> Result<Accepted, StewardError> {
    let epoch = g.epoch();
    let proposer = leaf_key(&g.public, index).ok_or(StewardError::NotMember)?;
    if g.pending_proposals >= ctx.config.group_proposals_per_epoch_max {
        return Err(StewardError::Busy("too many proposals in this epoch; wait for the next commit"));
    }
    let processed =
        g.public.process_message(g.provider.crypto(), pm).map_err(|e| bad_mls("proposal does not validate", e))?;
    let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
        return Err(StewardError::BadMls("not a proposal".into()));
    };
    let admin = g.policy.is_admin(&proposer);
    match queued.proposal() {
        Proposal::Remove(r) => {
            if r.removed() != index && !admin {
                return Err(StewardError::NotAllowed("only an admin may remove another member".into()));
            }
        }
        Proposal::SelfRemove => {}
        Proposal::Update(u) => {
            verify_leaf(u.leaf_node())?;
        }
        Proposal::GroupContextExtensions(gce) => {
            if !admin {
                return Err(StewardError::NotAllowed("only an admin may change the group context".into()));
            }
            let policy = GroupPolicy::from_extensions(gce.extensions())
                .ok_or_else(|| StewardError::NotAllowed("the new group context lacks a valid group policy".into()))?;
            check_policy(&policy, &g.members)?;
        }
        other => {
            return Err(StewardError::NotAllowed(format!("{:?} proposals are not accepted", other.proposal_type())));
        }
    }
    g.public.add_proposal(g.provider.storage(), *queued).map_err(state_err)?;
    g.pending_proposals += 1;
    sync_mls(ctx, group_id, g)?;
    Ok(Accepted::Proposal { epoch })
}

pub(super) fn on_member_commit<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group_id: &GroupId,
    g: &mut Hosted,
    index: LeafNodeIndex,
    pm: PublicMessageIn,
    group_info: &[u8],
) -> Result<Accepted, StewardError> {
    let epoch = g.epoch();
    let committer = leaf_key(&g.public, index).ok_or(StewardError::NotMember)?;
    let round = nymstr_mls::commit_round(g.record.epoch_started_at_us, ctx.now);
    if !g.policy.is_admin(&committer) || !may_commit(group_id, epoch, round, &g.policy.admins, &committer) {
        return Err(StewardError::NotSteward { epoch, round });
    }
    let processed =
        g.public.process_message(g.provider.crypto(), pm).map_err(|e| bad_mls("commit does not validate", e))?;
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err(StewardError::BadMls("not a commit".into()));
    };
    for qp in staged.queued_proposals() {
        // A commit may not remove its committer, whether by a `Remove` or by the
        // committer's own `SelfRemove` (by reference: its proposal was accepted earlier).
        // openmls refuses a `Remove` of the committer first (ValSem200, so `BadMls`) and
        // refuses to build a commit covering its own `SelfRemove`; this check is the
        // steward's own guarantee for a commit built otherwise.
        let removes_committer = match qp.proposal() {
            Proposal::Remove(r) => r.removed() == index,
            Proposal::SelfRemove => *qp.sender() == Sender::Member(index),
            _ => false,
        };
        if removes_committer {
            return Err(StewardError::NotAllowed("a commit may not remove its committer".into()));
        }
        // Proposals by reference passed the policy when they were uploaded; the
        // committer's own (by value) are checked here.
        if qp.proposal_or_ref_type() == ProposalOrRefType::Proposal {
            match qp.proposal() {
                Proposal::Add(a) => {
                    verify_leaf(a.key_package().leaf_node())?;
                }
                Proposal::Remove(_) | Proposal::GroupContextExtensions(_) => {}
                other => {
                    return Err(StewardError::NotAllowed(format!(
                        "{:?} proposals are not accepted in a commit",
                        other.proposal_type()
                    )));
                }
            }
        }
    }
    let signer = match staged.update_path_leaf_node() {
        Some(leaf) => {
            verify_leaf(leaf)?;
            as_key(leaf.signature_key().as_slice()).ok_or_else(|| StewardError::BadMls("leaf key".into()))?
        }
        None => committer,
    };
    merge(ctx, group_id, g, *staged, group_info, &signer)
}

pub(super) fn on_external_commit<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group_id: &GroupId,
    g: &mut Hosted,
    pm: PublicMessageIn,
    group_info: &[u8],
    token: Option<&InviteToken>,
) -> Result<Accepted, StewardError> {
    let processed = g
        .public
        .process_message(g.provider.crypto(), pm)
        .map_err(|e| bad_mls("external commit does not validate", e))?;
    // Members check the invitation themselves (specs/groups.md §6.6), from the commit's
    // authenticated data, which the joiner signed: it must be the token checked here.
    if let Some(t) = token
        && processed.aad() != codec::encode(t).as_slice()
    {
        return Err(StewardError::BadInvite("the commit's authenticated data is not the token"));
    }
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err(StewardError::BadMls("not a commit".into()));
    };
    let leaf = staged
        .update_path_leaf_node()
        .ok_or_else(|| StewardError::BadMls("an external commit must carry a path".into()))?;
    let identity = verify_leaf(leaf)?;
    // A token bound to an invitee is redeemable only by that account's installations.
    if let Some(invitee) = token.and_then(|t| t.invitee)
        && identity.cert.account_key != invitee
    {
        return Err(StewardError::BadInvite("the token is for another account"));
    }
    let joiner = as_key(leaf.signature_key().as_slice()).ok_or_else(|| StewardError::BadMls("leaf key".into()))?;
    for qp in staged.queued_proposals() {
        if qp.proposal_or_ref_type() != ProposalOrRefType::Proposal {
            continue;
        }
        match qp.proposal() {
            Proposal::ExternalInit(_) => {}
            // A resync: the same installation (same credential) replaces its old leaf.
            Proposal::Remove(r) => {
                let same = g.public.leaf(r.removed()).is_some_and(|old| old.credential() == leaf.credential());
                if !same {
                    return Err(StewardError::NotAllowed(
                        "an external commit may remove only the joiner's old leaf".into(),
                    ));
                }
            }
            other => {
                return Err(StewardError::NotAllowed(format!(
                    "{:?} proposals are not accepted in an external commit",
                    other.proposal_type()
                )));
            }
        }
    }
    merge(ctx, group_id, g, *staged, group_info, &joiner)
}

/// Merges a validated commit on a copy of the group state, checks the resulting epoch
/// (policy, size, the uploaded GroupInfo), and only then makes the copy current.
fn merge<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group_id: &GroupId,
    g: &mut Hosted,
    staged: StagedCommit,
    group_info: &[u8],
    signer: &PublicKey,
) -> Result<Accepted, StewardError> {
    let epoch = g.epoch();
    let trial_storage = storage_from(storage_records(g.provider.storage()));
    let mut trial = PublicGroup::load(&trial_storage, &g.mls_group_id())
        .map_err(|e| state_err(format!("{e:?}")))?
        .ok_or_else(|| state_err("group state missing"))?;
    trial.merge_commit(&trial_storage, staged).map_err(|e| state_err(format!("{e:?}")))?;
    purge_queued_proposals(&trial_storage);
    let policy = read_policy(&trial)
        .ok_or_else(|| StewardError::NotAllowed("the commit leaves no valid group policy".into()))?;
    let members = member_keys(&trial);
    if members.len() > GROUP_MEMBERS_MAX {
        return Err(StewardError::NotAllowed(format!("the group is full ({GROUP_MEMBERS_MAX} members)")));
    }
    check_policy(&policy, &members)?;
    // The new epoch's GroupInfo, signed by the committer's (new) leaf, for joiners.
    if group_info.is_empty() {
        return Err(StewardError::BadMls("a commit must carry the new epoch's group_info".into()));
    }
    let vgi = parse_group_info(group_info)?;
    if vgi.group_id() != trial.group_id() || vgi.epoch() != trial.group_context().epoch() {
        return Err(StewardError::BadMls("group_info is not for the new epoch".into()));
    }
    if vgi.group_context() != trial.group_context() {
        return Err(StewardError::BadMls("group_info's group context is not the new epoch's".into()));
    }
    // The signed GroupInfo must commit to the commit's confirmation tag (which the commit's
    // own signature does not cover): GroupInfoTBS = context || extensions || tag || signer.
    let tbs = vgi.unsigned_payload().map_err(|e| bad_mls("group_info", e))?;
    let mut expected = trial.group_context().tls_serialize_detached().map_err(state_err)?;
    expected.extend(vgi.extensions().tls_serialize_detached().map_err(|e| bad_mls("group_info", e))?);
    expected.extend(trial.confirmation_tag().tls_serialize_detached().map_err(state_err)?);
    if !tbs.starts_with(&expected) {
        return Err(StewardError::BadMls("group_info's confirmation tag is not the commit's".into()));
    }
    let tree = vgi
        .extensions()
        .ratchet_tree()
        .ok_or_else(|| StewardError::BadMls("group_info lacks the ratchet tree extension".into()))?;
    let sent = tree.ratchet_tree().tls_serialize_detached().map_err(|e| bad_mls("ratchet tree", e))?;
    let ours = trial.export_ratchet_tree().tls_serialize_detached().map_err(state_err)?;
    if sent != ours {
        return Err(StewardError::BadMls("group_info's ratchet tree is not the new epoch's".into()));
    }
    let pk = OpenMlsSignaturePublicKey::new(signer.to_vec().into(), SignatureScheme::ED25519)
        .map_err(|e| bad_mls("signer key", e))?;
    vgi.verify_no_out(g.provider.crypto(), &pk)
        .map_err(|_| StewardError::BadMls("group_info is not signed by the committer".into()))?;

    // Accepted: the trial state becomes the group.
    let before = std::mem::replace(&mut g.members, members);
    g.provider = NymstrProvider::with_storage(seed(ctx), trial_storage);
    g.public = trial;
    g.policy = policy;
    g.pending_proposals = 0;
    g.record.epoch_started_at_us = ctx.now;
    g.record.group_info = group_info.to_vec();
    ctx.save(Table::Groups, group_id, &g.record)?;
    sync_mls(ctx, group_id, g)?;
    Ok(Accepted::Commit { epoch, before })
}
