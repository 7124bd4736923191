//! The member's own enforcement of the group policy (`specs/groups.md` §6.6): a commit
//! from the steward's log is merged only if its committer and every proposal it carries
//! are allowed by the policy of the epoch it ends, and an external join only if the group
//! is open or the joiner signed a valid invitation into it. The check is a pure function
//! of the member's epoch state and the commit, so every honest member decides alike and a
//! refused entry is skipped by all of them (none forks). The steward checks the same
//! rules first (and more: commit rounds, token expiry and reuse), so an honest steward
//! never logs a commit that members refuse.

use nymstr_mls::{GroupPolicy, MemberIdentity};
use nymstr_proto::codec;
use nymstr_proto::identity;
use nymstr_proto::wire::{GroupId, InviteToken, PublicKey};
use openmls::prelude::{LeafNode, MlsGroup, Proposal, ProposalOrRefType, Sender, StagedCommit};

use super::roster::{key32, member_key_of, policy_of};

/// Why a member refuses a commit from the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitRefusal {
    #[error("the committer is not an admin of the group")]
    NotAdmin,
    #[error("an external commit to an invite-only group without a valid invitation: {0}")]
    NoInvite(&'static str),
    #[error("a {0} proposal this sender may not make")]
    Forbidden(&'static str),
    #[error("a leaf credential does not verify")]
    BadCredential,
    #[error("the new epoch has no valid group policy")]
    BadPolicy,
    #[error("commit from a sender type that may not commit")]
    BadSender,
}

fn leaf_ok(leaf: &LeafNode) -> Result<MemberIdentity, CommitRefusal> {
    let id = MemberIdentity::verify(leaf.credential(), leaf.signature_key().as_slice())
        .map_err(|_| CommitRefusal::BadCredential)?;
    key32(leaf.signature_key().as_slice()).ok_or(CommitRefusal::BadCredential)?;
    Ok(id)
}

/// The invitation an external joiner carries in its commit's authenticated data: for
/// `group`, signed by an admin of `policy`, and, if it names an invitee, for the account
/// that certified the joiner's leaf (`joiner_account`): a steward that saw a token
/// redeemed cannot replay it for a key of its own. Expiry and single use are the
/// steward's (members share no clock and a late joiner does not know earlier redemptions).
pub(super) fn check_invite(
    group: &GroupId,
    policy: &GroupPolicy,
    aad: &[u8],
    joiner_account: &PublicKey,
) -> Result<(), CommitRefusal> {
    let t: InviteToken = codec::decode(aad).map_err(|_| CommitRefusal::NoInvite("no token"))?;
    if t.group_id != *group {
        return Err(CommitRefusal::NoInvite("the token is for another group"));
    }
    if !policy.is_admin(&t.admin_key) {
        return Err(CommitRefusal::NoInvite("the token is not signed by an admin"));
    }
    identity::verify_invite_token(&t).map_err(|_| CommitRefusal::NoInvite("the token's signature does not verify"))?;
    if t.invitee.is_some_and(|k| k != *joiner_account) {
        return Err(CommitRefusal::NoInvite("the token is for another account"));
    }
    Ok(())
}

/// Whether a staged commit of the current epoch of `mls` (sent by `sender`, with
/// authenticated data `aad`) follows the group policy of that epoch.
pub(super) fn check_commit(
    group: &GroupId,
    mls: &MlsGroup,
    sender: &Sender,
    aad: &[u8],
    staged: &StagedCommit,
) -> Result<(), CommitRefusal> {
    let policy = policy_of(mls);
    let admin = |s: &Sender| match s {
        Sender::Member(i) => member_key_of(mls, *i).is_some_and(|k| policy.is_admin(&k)),
        _ => false,
    };
    let path_leaf = staged.update_path_leaf_node();
    if let Some(leaf) = path_leaf {
        leaf_ok(leaf)?;
    }
    // The committer's own leaf: a member's index, or none for a joiner.
    let committer = match sender {
        Sender::Member(i) => {
            if !admin(sender) {
                return Err(CommitRefusal::NotAdmin);
            }
            Some(*i)
        }
        Sender::NewMemberCommit => {
            let joiner = path_leaf.ok_or(CommitRefusal::BadCredential)?;
            if !policy.open {
                check_invite(group, &policy, aad, &leaf_ok(joiner)?.cert.account_key)?;
            }
            // The joiner may remove only its own old leaf (a resync); nothing else inline.
            for qp in staged.queued_proposals() {
                if qp.proposal_or_ref_type() != ProposalOrRefType::Proposal {
                    continue;
                }
                match qp.proposal() {
                    Proposal::ExternalInit(_) => {}
                    Proposal::Remove(r)
                        if mls
                            .public_group()
                            .leaf(r.removed())
                            .is_some_and(|l| l.credential() == joiner.credential()) => {}
                    _ => return Err(CommitRefusal::Forbidden("inline")),
                }
            }
            None
        }
        _ => return Err(CommitRefusal::BadSender),
    };
    for qp in staged.queued_proposals() {
        // Inline proposals are the committer's; by reference, their proposer's.
        let by = qp.sender();
        let own_leaf = match by {
            Sender::Member(i) => Some(*i),
            _ => None,
        };
        match qp.proposal() {
            Proposal::Add(a) => {
                if !admin(by) {
                    return Err(CommitRefusal::Forbidden("Add"));
                }
                leaf_ok(a.key_package().leaf_node())?;
            }
            Proposal::Remove(r) => {
                if committer == Some(r.removed()) {
                    return Err(CommitRefusal::Forbidden("Remove of the committer"));
                }
                // A joiner's own inline Remove (its old leaf) was checked above.
                let joiner_inline = matches!(by, Sender::NewMemberCommit);
                if !joiner_inline && own_leaf != Some(r.removed()) && !admin(by) {
                    return Err(CommitRefusal::Forbidden("Remove"));
                }
            }
            Proposal::SelfRemove => {
                if committer.is_some() && own_leaf == committer {
                    return Err(CommitRefusal::Forbidden("SelfRemove of the committer"));
                }
            }
            Proposal::Update(u) => {
                leaf_ok(u.leaf_node())?;
            }
            Proposal::GroupContextExtensions(_) => {
                if !admin(by) {
                    return Err(CommitRefusal::Forbidden("GroupContextExtensions"));
                }
            }
            Proposal::ExternalInit(_) if committer.is_none() => {}
            other => return Err(CommitRefusal::Forbidden(proposal_name(other))),
        }
    }
    let next = GroupPolicy::from_extensions(staged.group_context().extensions()).ok_or(CommitRefusal::BadPolicy)?;
    if next.admins.is_empty() || !next.admins.windows(2).all(|w| w[0] < w[1]) {
        return Err(CommitRefusal::BadPolicy);
    }
    Ok(())
}

fn proposal_name(p: &Proposal) -> &'static str {
    match p {
        Proposal::PreSharedKey(_) => "PreSharedKey",
        Proposal::ReInit(_) => "ReInit",
        Proposal::ExternalInit(_) => "ExternalInit",
        _ => "other",
    }
}
