//! The public-group directory: the advert a group may carry (checked against its policy and
//! signed by an admin) and `DirectoryRequest`, which lists the adverts hosted here first.

use super::{Steward, StewardError};
use crate::actors::{Ctx, Peer, SenderTag};
use crate::store::Store;
use nymstr_mls::GroupPolicy;
use nymstr_proto::identity;
use nymstr_proto::limits::{
    ADDRESS_BYTES_MAX, DIRECTORY_ADVERTS_MAX, GROUP_DESCRIPTION_BYTES_MAX, GROUP_NAME_BYTES_MAX,
};
use nymstr_proto::wire::{Body, GroupAdvert, GroupId};

impl Steward {
    /// The public groups hosted here, then `remote` ones learnt from peers, up to the limit.
    pub fn on_directory_request<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        remote: &[GroupAdvert],
    ) {
        let adverts: Vec<GroupAdvert> = self
            .groups
            .values()
            .filter_map(|g| g.record.advert.clone())
            .chain(remote.iter().cloned())
            .take(DIRECTORY_ADVERTS_MAX)
            .collect();
        ctx.send_durable(Peer::Tag(tag), rid, Body::Directory { adverts });
    }
}

pub(super) fn check_advert(a: &GroupAdvert, group_id: &GroupId, policy: &GroupPolicy) -> Result<(), StewardError> {
    if a.group_id != *group_id {
        return Err(StewardError::Malformed("advert is for another group"));
    }
    if a.name.len() > GROUP_NAME_BYTES_MAX
        || a.description.len() > GROUP_DESCRIPTION_BYTES_MAX
        || a.group_node.len() > ADDRESS_BYTES_MAX
    {
        return Err(StewardError::Malformed("advert name, description or group node too long"));
    }
    if a.open != policy.open {
        return Err(StewardError::Malformed("advert's open flag differs from the group policy"));
    }
    if !policy.is_admin(&a.admin_key) {
        return Err(StewardError::NotAllowed("the advert is not signed by an admin".into()));
    }
    identity::verify(&a.admin_key, &identity::group_advert_bytes(a), &a.sig).map_err(|_| StewardError::BadSignature)
}
