//! openmls plumbing shared by the group member: group ids, the policy extension and leaf
//! capabilities, message bytes, error mapping, and the purge of proposal records that
//! openmls' memory storage leaves behind after a merge.

use nymstr_mls::{GroupPolicy, NymstrProvider, POLICY_EXTENSION_TYPE};
use nymstr_proto::wire::GroupId;
use openmls::ciphersuite::hash_ref::ProposalRef;
use openmls::prelude::{
    Capabilities, Ciphersuite, Extension, ExtensionType, Extensions, GroupContext, MlsGroup,
    RequiredCapabilitiesExtension,
};
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::StorageProvider as _;
use tls_codec::Serialize as _;

use super::events::GroupError;

pub(super) fn mls_id(id: &GroupId) -> openmls::prelude::GroupId {
    openmls::prelude::GroupId::from_slice(id)
}

pub(super) fn required_extensions(policy: &GroupPolicy) -> Result<Extensions<GroupContext>, GroupError> {
    let required = RequiredCapabilitiesExtension::new(&[ExtensionType::Unknown(POLICY_EXTENSION_TYPE)], &[], &[]);
    Extensions::from_vec(vec![Extension::RequiredCapabilities(required), policy.extension()])
        .map_err(|e| GroupError::Mls(e.to_string()))
}

pub(super) fn leaf_capabilities(cs: Ciphersuite) -> Capabilities {
    Capabilities::new(None, Some(&[cs]), Some(&[ExtensionType::Unknown(POLICY_EXTENSION_TYPE)]), None, None)
}

pub(super) fn mls_bytes(m: &openmls::prelude::MlsMessageOut) -> Result<Vec<u8>, GroupError> {
    m.tls_serialize_detached().map_err(|e| GroupError::Mls(e.to_string()))
}

pub(super) fn err<E: std::fmt::Debug>(e: E) -> GroupError {
    GroupError::Mls(format!("{e:?}"))
}

pub(super) fn pending_refs(mls: &MlsGroup) -> Vec<ProposalRef> {
    mls.pending_proposals().map(|p| p.proposal_reference_ref().clone()).collect()
}

/// openmls_memory_storage 0.6 clears a proposal queue under the wrong keys and leaves the
/// proposal records behind; remove them one by one after a merge.
pub(super) fn purge_proposals(provider: &NymstrProvider, mls: &MlsGroup, refs: Vec<ProposalRef>) {
    for r in refs {
        let _ = provider.storage().remove_proposal(mls.group_id(), &r);
    }
}
