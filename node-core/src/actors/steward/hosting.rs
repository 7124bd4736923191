//! A group's life on this node: created from its founder's epoch-0 GroupInfo, rebuilt from
//! the store after a restart, swept of expired challenges and invite records, and deleted
//! once abandoned (no upload, subscription or fetch for `group_idle_expiry_us`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use openmls::prelude::{GroupId as MlsGroupId, ProposalStore, PublicGroup};
use openmls_traits::OpenMlsProvider;
use rand_core::Rng;

use super::activity::{META_GROUP_ACTIVE, meta_key, touch};
use super::directory::check_advert;
use super::log::load_index;
use super::policy::{is_normalized, member_keys, parse_group_info, read_policy};
use super::storage::{storage_from, sync_mls};
use super::subscriptions::load_subs;
use super::{GroupRecord, Hosted, Steward, StewardError, bad_mls, corrupt, seed};
use crate::actors::{Ctx, Peer, SenderTag, TimeUs, load};
use crate::store::{Store, StoreError, Table};
use nymstr_mls::{GroupPolicy, MemberIdentity, NymstrProvider, SUPPORTED_CIPHERSUITES};
use nymstr_proto::limits::{GROUP_MEMBERS_MAX, GROUP_MLS_BYTES_MAX};
use nymstr_proto::wire::{Body, GroupAdvert, GroupId};

/// Meta key prefix of an expired group whose rows are still being deleted.
const META_GROUP_PURGE: &[u8] = b"group_purge/";
/// Rows of expired groups deleted per sweep, at most (the rest at the next sweeps).
const PURGE_ROWS_PER_SWEEP: usize = 512;
/// The tables holding a group's rows, each keyed by group id || ….
const GROUP_ROW_TABLES: [Table; 6] =
    [Table::GroupLog, Table::GroupSeqs, Table::GroupUploads, Table::GroupSubs, Table::GroupInvites, Table::GroupMls];

impl Steward {
    /// Rebuilds every hosted group from the store.
    pub fn recover<S: Store>(store: &S, rng: &mut impl Rng) -> Result<Self, StoreError> {
        let mut steward = Steward::default();
        for (k, _) in store.scan_prefix(Table::Meta, META_GROUP_PURGE)? {
            let id = k.get(META_GROUP_PURGE.len()..).and_then(|id| GroupId::try_from(id).ok());
            steward.purging.insert(id.ok_or_else(|| corrupt(Table::Meta, "group purge key"))?);
        }
        for (k, v) in store.scan_prefix(Table::Groups, &[])? {
            let group_id: GroupId = k.as_slice().try_into().map_err(|_| corrupt(Table::Groups, "key length"))?;
            // Expired, though a crash kept its record: the purge resumes (§8.1).
            if steward.purging.contains(&group_id) {
                continue;
            }
            let record: GroupRecord =
                nymstr_proto::codec::decode_record(&v).map_err(|e| corrupt(Table::Groups, e.to_string()))?;
            let mut mirror = BTreeMap::new();
            let mut records = Vec::new();
            for (k, v) in store.scan_prefix(Table::GroupMls, &group_id)? {
                let key = k.get(16..).unwrap_or_default().to_vec();
                mirror.insert(key.clone(), *blake3::hash(&v).as_bytes());
                records.push((key, v));
            }
            let storage = storage_from(records);
            let mls_id = MlsGroupId::from_slice(&group_id);
            let public = PublicGroup::load(&storage, &mls_id)
                .map_err(|e| corrupt(Table::GroupMls, format!("{e:?}")))?
                .ok_or_else(|| corrupt(Table::GroupMls, "group state missing"))?;
            let pending_proposals =
                public.queued_proposals(&storage).map_err(|e| corrupt(Table::GroupMls, format!("{e:?}")))?.len();
            // Every accepted policy is normalized; normalizing here only tolerates state
            // written before that was checked.
            let policy = read_policy(&public)
                .map(GroupPolicy::normalized)
                .ok_or_else(|| corrupt(Table::GroupMls, "group policy missing"))?;
            let members = member_keys(&public);
            let (app_seqs, handshake_seqs, next_seq) = load_index(store, &group_id)?;
            let (subs, sub_by_key) = load_subs(store, &group_id)?;
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            // Groups stored before activity was recorded count from their last epoch.
            let active_bound_us = load::<TimeUs, _>(store, Table::Meta, &meta_key(META_GROUP_ACTIVE, &group_id))?
                .unwrap_or(record.epoch_started_at_us);
            let hosted = Hosted {
                provider: NymstrProvider::with_storage(seed, storage),
                public,
                mirror,
                record,
                policy,
                members,
                next_seq,
                app_seqs,
                handshake_seqs,
                subs,
                sub_by_key,
                pending_proposals,
                active_us: active_bound_us,
                active_bound_us,
            };
            steward.groups.insert(group_id, hosted);
        }
        steward.recover_invites(store)?;
        for (k, v) in store.scan_prefix(Table::GroupChallenges, &[])? {
            // A record that does not decode is not counted; the next sweep deletes it.
            if let (Ok(nonce), Ok(c)) = (
                nymstr_proto::wire::Nonce::try_from(k.as_slice()),
                nymstr_proto::codec::decode_record::<super::subscriptions::PendingSubscribe>(&v),
            ) {
                steward.challenges.admit(c.tag, c.expires_at_us, nonce, usize::MAX);
            }
        }
        Ok(steward)
    }

    // --- GroupCreate ---

    pub fn on_create<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        group_id: GroupId,
        group_info: Vec<u8>,
        advert: Option<GroupAdvert>,
    ) -> Result<(), StewardError> {
        if group_info.len() > GROUP_MLS_BYTES_MAX {
            return Err(StewardError::PayloadTooLarge {
                what: "group_info",
                len: group_info.len(),
                max: GROUP_MLS_BYTES_MAX,
            });
        }
        if let Some(existing) = self.groups.get(&group_id) {
            // A retry by the creator (its GroupCreated was lost) is answered again.
            if existing.record.group_info == group_info && existing.record.advert == advert && existing.epoch() == 0 {
                ctx.send_durable(Peer::Tag(tag), rid, Body::GroupCreated { group_id, epoch: 0 });
                return Ok(());
            }
            return Err(StewardError::GroupExists);
        }
        if self.purging.contains(&group_id) {
            return Err(StewardError::Busy("a group with this id is being deleted"));
        }
        if self.groups.len() >= ctx.config.groups_max {
            return Err(StewardError::Busy("this node hosts its maximum of groups"));
        }
        let vgi = parse_group_info(&group_info)?;
        if vgi.group_id().as_slice() != group_id {
            return Err(StewardError::BadMls("group_info is for another group id".into()));
        }
        if !SUPPORTED_CIPHERSUITES.contains(&vgi.ciphersuite()) {
            return Err(StewardError::BadMls(format!("unsupported ciphersuite {:?}", vgi.ciphersuite())));
        }
        if vgi.epoch().as_u64() != 0 {
            return Err(StewardError::BadMls("a new group starts at epoch 0".into()));
        }
        let tree = vgi
            .extensions()
            .ratchet_tree()
            .ok_or_else(|| StewardError::BadMls("group_info lacks the ratchet tree extension".into()))?
            .ratchet_tree()
            .clone();
        let provider = NymstrProvider::new(seed(ctx));
        let (public, _) =
            PublicGroup::from_external(provider.crypto(), provider.storage(), tree, vgi, ProposalStore::new())
                .map_err(|e| bad_mls("group_info does not validate", e))?;
        let policy = read_policy(&public)
            .ok_or_else(|| StewardError::BadMls("the group context lacks a valid group policy extension".into()))?;
        if !is_normalized(&policy) {
            return Err(StewardError::BadMls("the group policy's admins are not sorted and distinct".into()));
        }
        let members = member_keys(&public);
        if members.len() > GROUP_MEMBERS_MAX {
            return Err(StewardError::NotAllowed(format!("more than {GROUP_MEMBERS_MAX} members")));
        }
        if public.members().count() != members.len() {
            return Err(StewardError::BadMls("leaf signature keys must be ed25519 keys".into()));
        }
        for m in public.members() {
            MemberIdentity::verify(&m.credential, &m.signature_key)
                .map_err(|e| StewardError::BadCredential(e.to_string()))?;
        }
        if policy.admins.is_empty() {
            return Err(StewardError::NotAllowed("the group policy names no admin".into()));
        }
        if !policy.admins.iter().all(|a| members.contains(a)) {
            return Err(StewardError::NotAllowed("every admin must be a member".into()));
        }
        if let Some(a) = &advert {
            check_advert(a, &group_id, &policy)?;
        }
        let record = GroupRecord { created_at_us: ctx.now, epoch_started_at_us: ctx.now, group_info, advert };
        ctx.save(Table::Groups, &group_id, &record)?;
        let mut hosted = Hosted {
            provider,
            public,
            mirror: BTreeMap::new(),
            record,
            policy,
            members,
            next_seq: 1,
            app_seqs: VecDeque::new(),
            handshake_seqs: BTreeSet::new(),
            subs: BTreeMap::new(),
            sub_by_key: BTreeMap::new(),
            pending_proposals: 0,
            active_us: ctx.now,
            active_bound_us: 0,
        };
        touch(ctx, &group_id, &mut hosted)?;
        sync_mls(ctx, &group_id, &mut hosted)?;
        self.groups.insert(group_id, hosted);
        self.stats.groups_created += 1;
        ctx.send_durable(Peer::Tag(tag), rid, Body::GroupCreated { group_id, epoch: 0 });
        Ok(())
    }

    // --- housekeeping ---

    /// Deletes expired subscribe challenges, redeemed invites past their expiry (an
    /// expired token is refused as expired, so its record is no longer needed), and
    /// abandoned groups (a page of their rows per sweep).
    pub fn sweep<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), StoreError> {
        self.sweep_challenges(ctx)?;
        self.sweep_invites(ctx)?;
        self.expire_idle_groups(ctx)?;
        self.purge_page(ctx)?;
        Ok(())
    }

    /// Groups idle for `group_idle_expiry_us` stop being hosted at once: their record and
    /// activity bound go (so a restart does not bring them back) and a purge marker is
    /// stored; their rows are deleted by [`Self::purge_page`].
    fn expire_idle_groups<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), StoreError> {
        let expiry = ctx.config.group_idle_expiry_us;
        let idle: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.active_us.saturating_add(expiry) <= ctx.now)
            .map(|(id, _)| *id)
            .collect();
        for group_id in idle {
            ctx.store.put(Table::Meta, &meta_key(META_GROUP_PURGE, &group_id), &[])?;
            ctx.store.delete(Table::Groups, &group_id)?;
            ctx.store.delete(Table::Meta, &meta_key(META_GROUP_ACTIVE, &group_id))?;
            self.groups.remove(&group_id);
            self.used_invites.retain(|(_, g, _)| *g != group_id);
            self.purging.insert(group_id);
        }
        Ok(())
    }

    /// Deletes up to [`PURGE_ROWS_PER_SWEEP`] rows of expired groups (log, index, upload
    /// records, subscriptions, redeemed invites, MLS state); a group whose rows are all
    /// gone loses its purge marker, and its id may be created again.
    fn purge_page<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), StoreError> {
        let mut budget = PURGE_ROWS_PER_SWEEP;
        while let Some(&group_id) = self.purging.first() {
            for table in GROUP_ROW_TABLES {
                let rows = ctx.store.scan_page(table, &group_id, None, budget)?;
                budget -= rows.len();
                for (k, _) in rows {
                    ctx.store.delete(table, &k)?;
                }
                if budget == 0 {
                    return Ok(());
                }
            }
            // A record a crash kept after the marker was written (§8.1) goes last.
            ctx.store.delete(Table::Groups, &group_id)?;
            ctx.store.delete(Table::Meta, &meta_key(META_GROUP_ACTIVE, &group_id))?;
            ctx.store.delete(Table::Meta, &meta_key(META_GROUP_PURGE, &group_id))?;
            self.purging.pop_first();
        }
        Ok(())
    }
}
