//! Subscriptions: a member signs a nonce challenge with its leaf key to bind its tag to the
//! group (one tag per member key) and to get what it missed; accepted entries are pushed to
//! the subscribed tags (one upload in, N pushes out); expired challenges are swept.

use std::collections::BTreeMap;

use rand_core::Rng;
use serde::{Deserialize, Serialize};

use super::log::collect_entries;
use super::{Steward, StewardError, StewardStats, corrupt, key2};
use crate::actors::{Ctx, Peer, SenderTag, TimeUs};
use crate::store::{Store, StoreError, Table};
use nymstr_proto::identity;
use nymstr_proto::limits::GROUP_FETCH_MAX;
use nymstr_proto::wire::{Body, GroupEntry, GroupId, Nonce, PublicKey, Sig};

/// tag -> member key, and its inverse.
type Subs = (BTreeMap<SenderTag, PublicKey>, BTreeMap<PublicKey, SenderTag>);

/// A subscribe challenge waiting for its proof (table `GroupChallenges`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PendingSubscribe {
    group_id: GroupId,
    member_key: PublicKey,
    pub(super) tag: SenderTag,
    from_seq: u64,
    pub(super) expires_at_us: TimeUs,
}

impl Steward {
    pub fn on_subscribe<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        group_id: GroupId,
        member_key: PublicKey,
        from_seq: u64,
    ) -> Result<(), StewardError> {
        let g = self.groups.get(&group_id).ok_or(StewardError::UnknownGroup)?;
        if !g.members.contains(&member_key) {
            return Err(StewardError::NotMember);
        }
        // As in the registry: a tag at its share replaces its own oldest challenge.
        let per_tag_max = ctx.config.challenges_per_tag_max;
        if self.challenges.held(&tag) < per_tag_max && self.challenges.total() >= ctx.config.challenges_pending_max {
            return Err(StewardError::Busy("too many pending subscribe challenges"));
        }
        let mut nonce: Nonce = [0u8; 32];
        ctx.rng.fill_bytes(&mut nonce);
        let expires_at_us = ctx.now + ctx.config.challenge_ttl_us;
        let pending = PendingSubscribe { group_id, member_key, tag, from_seq, expires_at_us };
        ctx.save(Table::GroupChallenges, &nonce, &pending)?;
        if let Some(evicted) = self.challenges.admit(tag, expires_at_us, nonce, per_tag_max) {
            ctx.store.delete(Table::GroupChallenges, &evicted)?;
        }
        // Like registry challenges: not durable on purpose (a lost one makes the member retry).
        ctx.send(Peer::Tag(tag), rid, Body::Challenge { nonce, expires_at_us, node: ctx.node });
        Ok(())
    }

    pub fn on_subscribe_proof<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        group_id: GroupId,
        nonce: Nonce,
        sig: Sig,
    ) -> Result<(), StewardError> {
        let pending: PendingSubscribe =
            ctx.load(Table::GroupChallenges, &nonce)?.ok_or(StewardError::UnknownChallenge)?;
        // An answer from any other tag (or for another group) is refused as if the
        // challenge did not exist and leaves it in place, as registration and login do: a
        // proof captured and replayed first from elsewhere neither subscribes that tag nor
        // spends the member's challenge. Answered by its own tag, it is single use.
        if pending.tag != tag || pending.group_id != group_id {
            return Err(StewardError::UnknownChallenge);
        }
        ctx.store.delete(Table::GroupChallenges, &nonce)?;
        self.challenges.forget(&pending.tag, &nonce);
        if pending.expires_at_us <= ctx.now {
            return Err(StewardError::ChallengeExpired);
        }
        identity::verify(&pending.member_key, &identity::group_subscribe_bytes(&group_id, &nonce), &sig)
            .map_err(|_| StewardError::BadSignature)?;
        let g = self.groups.get_mut(&group_id).ok_or(StewardError::UnknownGroup)?;
        let key = pending.member_key;
        if !g.members.contains(&key) {
            return Err(StewardError::NotMember);
        }
        // One tag per member key: the member's newest connection replaces the old one.
        if let Some(old_tag) = g.sub_by_key.get(&key).copied()
            && old_tag != tag
        {
            g.subs.remove(&old_tag);
            ctx.store.delete(Table::GroupSubs, &key2(&group_id, &old_tag.0))?;
        }
        if let Some(old_key) = g.subs.get(&tag).copied()
            && old_key != key
        {
            g.sub_by_key.remove(&old_key);
        }
        g.subs.insert(tag, key);
        g.sub_by_key.insert(key, tag);
        ctx.save(Table::GroupSubs, &key2(&group_id, &tag.0), &key)?;
        super::activity::touch(ctx, &group_id, g)?;
        self.stats.group_subscriptions += 1;
        let next_seq = g.next_seq;
        ctx.send_durable(Peer::Tag(tag), rid, Body::GroupSubscribed { group_id, epoch: g.epoch(), next_seq });
        if pending.from_seq < next_seq {
            let entries = collect_entries(&*ctx.store, &group_id, g, pending.from_seq, GROUP_FETCH_MAX)?;
            ctx.send_durable(Peer::Tag(tag), 0, Body::GroupEntries { group_id, entries, next_seq });
        }
        Ok(())
    }

    pub fn on_unsubscribe<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        group_id: GroupId,
    ) -> Result<(), StewardError> {
        let g = self.groups.get_mut(&group_id).ok_or(StewardError::UnknownGroup)?;
        if let Some(key) = g.subs.remove(&tag) {
            if g.sub_by_key.get(&key) == Some(&tag) {
                g.sub_by_key.remove(&key);
            }
            ctx.store.delete(Table::GroupSubs, &key2(&group_id, &tag.0))?;
        }
        Ok(())
    }

    /// Deletes expired subscribe challenges.
    pub(super) fn sweep_challenges<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), StoreError> {
        if self.challenges.total() > 0 {
            for (k, v) in ctx.store.scan_prefix(Table::GroupChallenges, &[])? {
                match nymstr_proto::codec::decode_record::<PendingSubscribe>(&v) {
                    Ok(c) if c.expires_at_us > ctx.now => {}
                    Ok(c) => {
                        ctx.store.delete(Table::GroupChallenges, &k)?;
                        if let Ok(nonce) = Nonce::try_from(k.as_slice()) {
                            self.challenges.forget(&c.tag, &nonce);
                        }
                    }
                    Err(_) => ctx.store.delete(Table::GroupChallenges, &k)?,
                }
            }
        }
        Ok(())
    }
}

pub(super) fn push<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group_id: &GroupId,
    entry: &GroupEntry,
    targets: &[SenderTag],
    stats: &mut StewardStats,
) {
    for t in targets {
        ctx.send_durable(Peer::Tag(*t), 0, Body::GroupPush { group_id: *group_id, entry: entry.clone() });
        stats.group_pushes += 1;
    }
}

/// A group's subscriptions as stored (table `GroupSubs`): tag -> member key, and its inverse.
pub(super) fn load_subs<S: Store>(store: &S, group_id: &GroupId) -> Result<Subs, StoreError> {
    let mut subs = BTreeMap::new();
    let mut sub_by_key = BTreeMap::new();
    for (k, v) in store.scan_prefix(Table::GroupSubs, group_id)? {
        let tag = SenderTag(
            k.get(16..).and_then(|t| t.try_into().ok()).ok_or_else(|| corrupt(Table::GroupSubs, "key length"))?,
        );
        let key: PublicKey =
            nymstr_proto::codec::decode_record(&v).map_err(|e| corrupt(Table::GroupSubs, e.to_string()))?;
        subs.insert(tag, key);
        sub_by_key.insert(key, tag);
    }
    Ok((subs, sub_by_key))
}
