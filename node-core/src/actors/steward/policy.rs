//! What the steward reads out of MLS state and checks in it: leaf signature keys, member
//! credentials, the group policy extension, and the parsing of an uploaded GroupInfo.

use std::collections::BTreeSet;

use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{LeafNode, LeafNodeIndex, MlsMessageBodyIn, MlsMessageIn, PublicGroup};
use tls_codec::DeserializeBytes;

use super::{StewardError, bad_mls};
use nymstr_mls::{GroupPolicy, MemberIdentity};
use nymstr_proto::wire::PublicKey;

/// A 32-byte ed25519 key from a leaf's signature key bytes.
pub(super) fn as_key(bytes: &[u8]) -> Option<PublicKey> {
    bytes.try_into().ok()
}

pub(super) fn leaf_key(public: &PublicGroup, index: LeafNodeIndex) -> Option<PublicKey> {
    public.leaf(index).and_then(|l| as_key(l.signature_key().as_slice()))
}

pub(super) fn member_keys(public: &PublicGroup) -> BTreeSet<PublicKey> {
    public.members().filter_map(|m| as_key(&m.signature_key)).collect()
}

/// The group policy as the group context carries it (not normalized: members binary-search
/// `admins` as written, so the steward checks it with [`is_normalized`] before accepting it).
pub(super) fn read_policy(public: &PublicGroup) -> Option<GroupPolicy> {
    GroupPolicy::from_extensions(public.group_context().extensions())
}

/// Whether a policy's `admins` are sorted and without duplicates, as members assume.
pub(super) fn is_normalized(policy: &GroupPolicy) -> bool {
    policy.admins.windows(2).all(|w| w[0] < w[1])
}

/// A leaf's credential must bind it to a certified installation whose signing key is
/// the leaf's signature key.
pub(super) fn verify_leaf(leaf: &LeafNode) -> Result<MemberIdentity, StewardError> {
    MemberIdentity::verify(leaf.credential(), leaf.signature_key().as_slice())
        .map_err(|e| StewardError::BadCredential(e.to_string()))
}

/// A policy is acceptable if its admins are normalized (sorted, distinct: members look
/// them up by binary search) and it has an admin who is a member.
pub(super) fn check_policy(policy: &GroupPolicy, members: &BTreeSet<PublicKey>) -> Result<(), StewardError> {
    if !is_normalized(policy) {
        return Err(StewardError::NotAllowed("the group policy's admins must be sorted and distinct".into()));
    }
    if !policy.admins.iter().any(|a| members.contains(a)) {
        return Err(StewardError::NotAllowed("the group policy must keep an admin who is a member".into()));
    }
    Ok(())
}

/// Parses a TLS `MlsMessageOut(GroupInfo)`.
pub(super) fn parse_group_info(bytes: &[u8]) -> Result<VerifiableGroupInfo, StewardError> {
    let msg = MlsMessageIn::tls_deserialize_exact_bytes(bytes).map_err(|e| bad_mls("group_info does not parse", e))?;
    match msg.extract() {
        MlsMessageBodyIn::GroupInfo(gi) => Ok(gi),
        _ => Err(StewardError::BadMls("group_info is not a GroupInfo message".into())),
    }
}
