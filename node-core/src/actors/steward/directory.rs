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

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use nymstr_proto::wire::Sig;

    fn advert(key: &SigningKey, group_node: Vec<u8>) -> GroupAdvert {
        let mut a = GroupAdvert {
            group_id: [7; 16],
            name: "g".into(),
            description: String::new(),
            open: true,
            group_node,
            issued_at_us: 1,
            admin_key: key.verifying_key().to_bytes(),
            sig: Sig([0; 64]),
            host: nymstr_proto::federation::NodeId([0; 32]),
            host_sig: nymstr_proto::wire::Sig([0; 64]),
        };
        a.sig = identity::sign(key, &identity::group_advert_bytes(&a));
        a
    }

    /// One bound for every transport address (`limits::ADDRESS_BYTES_MAX`): a Nym address
    /// (134 bytes of text) is a valid group node, which the old 128-byte bound refused.
    #[test]
    fn a_nym_address_fits_and_the_bound_holds() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let policy = GroupPolicy { admins: vec![key.verifying_key().to_bytes()], open: true };
        let nym = format!("{}.{}@{}", "A".repeat(44), "B".repeat(44), "C".repeat(44)).into_bytes();
        assert_eq!(nym.len(), 134);
        let gid = [7; 16];
        assert!(check_advert(&advert(&key, nym), &gid, &policy).is_ok());
        let at_bound = vec![b'a'; ADDRESS_BYTES_MAX];
        assert!(check_advert(&advert(&key, at_bound), &gid, &policy).is_ok());
        let over = vec![b'a'; ADDRESS_BYTES_MAX + 1];
        assert!(matches!(check_advert(&advert(&key, over), &gid, &policy), Err(StewardError::Malformed(_))));
    }
}
