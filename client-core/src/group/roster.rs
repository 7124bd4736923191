//! Who is in a group: its normalized policy, leaf keys and indexes, the verified member
//! list of the current epoch and a processed message's sender, with the cache of verified
//! credentials.

use std::collections::BTreeMap;

use nymstr_mls::{GroupPolicy, MemberIdentity};
use nymstr_proto::codec;
use nymstr_proto::wire::PublicKey;
use openmls::prelude::{BasicCredential, LeafNodeIndex, MlsGroup, ProcessedMessage, Sender};

use super::events::MemberInfo;

pub(super) fn key32(bytes: &[u8]) -> Option<PublicKey> {
    bytes.try_into().ok()
}

/// The group's policy, normalized (admins sorted and deduplicated: `is_admin` searches
/// them by bisection, and an extension written by another implementation need not be).
pub(super) fn policy_of(mls: &MlsGroup) -> GroupPolicy {
    GroupPolicy::from_extensions(mls.extensions())
        .unwrap_or(GroupPolicy { admins: Vec::new(), open: false })
        .normalized()
}

pub(super) fn member_key_of(mls: &MlsGroup, index: LeafNodeIndex) -> Option<PublicKey> {
    mls.public_group().leaf(index).and_then(|l| key32(l.signature_key().as_slice()))
}

pub(super) fn member_index_of(mls: &MlsGroup, key: &PublicKey) -> Option<LeafNodeIndex> {
    mls.members().find(|m| m.signature_key.as_slice() == key).map(|m| m.index)
}

/// Verified credentials by (leaf key, credential digest): a certificate is checked once,
/// not on every commit and message.
pub(super) type IdentityCache = BTreeMap<(PublicKey, [u8; 32]), Option<(String, PublicKey)>>;

/// Entries of the identity cache before it is emptied.
pub(super) const IDENTITY_CACHE_MAX: usize = 100_000;

/// The member list of the current epoch, sorted by key.
pub(super) fn roster_of(mls: &MlsGroup, cache: &mut IdentityCache) -> Vec<MemberInfo> {
    if cache.len() > IDENTITY_CACHE_MAX {
        cache.clear();
    }
    let policy = policy_of(mls);
    let mut out: Vec<MemberInfo> = mls
        .members()
        .filter_map(|m| {
            let key = key32(&m.signature_key)?;
            let digest = *blake3::hash(m.credential.serialized_content()).as_bytes();
            let id = cache
                .entry((key, digest))
                .or_insert_with(|| {
                    MemberIdentity::verify(&m.credential, &m.signature_key)
                        .ok()
                        .map(|i| (i.username, i.cert.account_key))
                })
                .clone();
            Some(MemberInfo {
                verified: id.is_some(),
                account_key: id.as_ref().map(|(_, a)| *a),
                username: id.map(|(u, _)| u).unwrap_or_default(),
                key,
                admin: policy.is_admin(&key),
            })
        })
        .collect();
    out.sort_by_key(|m| m.key);
    out
}

/// Key and username of a processed message's sender, from the credential openmls
/// resolved in the message's own epoch (a late or repaired entry of a past epoch: the
/// leaf may hold someone else now). Every leaf's credential names its signature key
/// (the steward refuses any other, `BadCertificate`), so the certified key is the
/// sender's; the username is empty if the certificate does not verify (as in the
/// roster). A credential that does not decode falls back to the tree, in the current
/// epoch only.
pub(super) fn sender_of(
    mls: &MlsGroup,
    processed: &ProcessedMessage,
    roster: &[MemberInfo],
    cache: &mut IdentityCache,
) -> Option<(PublicKey, String)> {
    let Sender::Member(index) = processed.sender() else { return None };
    let credential = processed.credential();
    let identity = BasicCredential::try_from(credential.clone())
        .ok()
        .and_then(|b| codec::decode::<MemberIdentity>(b.identity()).ok());
    let Some(identity) = identity else {
        if processed.epoch() != mls.epoch() {
            return None;
        }
        let key = member_key_of(mls, *index)?;
        return Some((key, username_in(roster, &key)));
    };
    let key = identity.cert.signing_key;
    if cache.len() > IDENTITY_CACHE_MAX {
        cache.clear();
    }
    let digest = *blake3::hash(credential.serialized_content()).as_bytes();
    let id = cache
        .entry((key, digest))
        .or_insert_with(|| MemberIdentity::verify(credential, &key).ok().map(|i| (i.username, i.cert.account_key)))
        .clone();
    Some((key, id.map(|(u, _)| u).unwrap_or_default()))
}

pub(super) fn username_in(roster: &[MemberInfo], key: &PublicKey) -> String {
    roster.binary_search_by_key(key, |m| m.key).map(|i| roster[i].username.clone()).unwrap_or_default()
}
