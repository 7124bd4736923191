//! Invites: an invite-only group is joined by an external commit carrying a single-use
//! token signed by an admin; redeemed tokens are remembered until they expire.

use std::collections::BTreeSet;

use super::{Hosted, Steward, StewardError, corrupt, key2};
use crate::actors::{Ctx, TimeUs};
use crate::store::{Store, StoreError, Table};
use nymstr_proto::identity;
use nymstr_proto::wire::{GroupId, InviteToken};

/// For an invite-only group, the token attached to an external commit (returned so it is
/// recorded as redeemed once the commit is accepted). `None` for an open group.
pub(super) fn check_invite(
    now: TimeUs,
    group_id: &GroupId,
    g: &Hosted,
    invite: Option<&InviteToken>,
    store: &impl Store,
) -> Result<Option<InviteToken>, StewardError> {
    if g.policy.open {
        return Ok(None);
    }
    let t = invite.ok_or(StewardError::InviteRequired)?;
    if t.group_id != *group_id {
        return Err(StewardError::BadInvite("the token is for another group"));
    }
    if !g.policy.is_admin(&t.admin_key) {
        return Err(StewardError::BadInvite("the token is not signed by an admin of the group"));
    }
    identity::verify_invite_token(t).map_err(|_| StewardError::BadInvite("the token's signature does not verify"))?;
    if t.expires_at_us <= now {
        return Err(StewardError::InviteExpired);
    }
    if store.get(Table::GroupInvites, &key2(group_id, &t.token_id))?.is_some() {
        return Err(StewardError::InviteUsed);
    }
    Ok(Some(t.clone()))
}

/// Records a token as redeemed once the external commit it came with is accepted.
pub(super) fn redeem<S: Store>(
    ctx: &mut Ctx<'_, S>,
    used_invites: &mut BTreeSet<(TimeUs, GroupId, [u8; 16])>,
    group_id: &GroupId,
    t: &InviteToken,
) -> Result<(), StoreError> {
    ctx.save(Table::GroupInvites, &key2(group_id, &t.token_id), &t.expires_at_us)?;
    used_invites.insert((t.expires_at_us, *group_id, t.token_id));
    Ok(())
}

impl Steward {
    /// Rebuilds the sweep index of redeemed invites (table `GroupInvites`).
    pub(super) fn recover_invites<S: Store>(&mut self, store: &S) -> Result<(), StoreError> {
        for (k, v) in store.scan_prefix(Table::GroupInvites, &[])? {
            if k.len() != 32 {
                return Err(corrupt(Table::GroupInvites, "key length"));
            }
            let expires: TimeUs =
                nymstr_proto::codec::decode_record(&v).map_err(|e| corrupt(Table::GroupInvites, e.to_string()))?;
            let group_id: GroupId = k[..16].try_into().expect("16 bytes");
            let token: [u8; 16] = k[16..].try_into().expect("16 bytes");
            self.used_invites.insert((expires, group_id, token));
        }
        Ok(())
    }

    /// Deletes redeemed invites past their expiry (an expired token is refused as expired,
    /// so its record is no longer needed).
    pub(super) fn sweep_invites<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), StoreError> {
        while let Some(&(expires, group_id, token)) = self.used_invites.first() {
            if expires > ctx.now {
                break;
            }
            ctx.store.delete(Table::GroupInvites, &key2(&group_id, &token))?;
            self.used_invites.pop_first();
        }
        Ok(())
    }
}
