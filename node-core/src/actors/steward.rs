//! Steward core: the delivery service of a group node. It hosts MLS groups as openmls
//! `PublicGroup`s (it never holds a key that decrypts application messages), keeps each
//! group's ordered log, accepts at most one commit per epoch from the designated steward
//! (an admin, in de-MLS round order) or from an external joiner (open group, or a valid
//! single-use invite), enforces the group policy on proposals, fans each accepted upload
//! out to every subscribed member tag (one upload in, N pushes out: P1), and serves
//! catch-up fetches, GroupInfo and the public directory. Normative text: `specs/groups.md`.
//!
//! openmls reads the wall clock in exactly two places the steward reaches: leaf-node
//! (key package) lifetime checks in `PublicGroup::from_external` and when an Add is
//! committed. That is accepted and documented (`specs/groups.md` §9); nothing else here
//! reads time except `ctx.now`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use openmls::ciphersuite::signable::Verifiable;
use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{
    ContentType, GroupId as MlsGroupId, LeafNode, LeafNodeIndex, MlsMessageBodyIn, MlsMessageIn,
    OpenMlsSignaturePublicKey, ProcessedMessageContent, Proposal, ProposalOrRefType, ProposalStore, PublicGroup,
    PublicMessageIn, Sender, SignatureScheme, StagedCommit,
};
use openmls_memory_storage::MemoryStorage;
use openmls_traits::OpenMlsProvider;
use rand_core::Rng;
use serde::{Deserialize, Serialize};
use tls_codec::{DeserializeBytes, Serialize as _};

use super::{CodedError, Ctx, Peer, SenderTag, TimeUs, load};
use crate::store::{Store, StoreError, Table};
use nymstr_mls::{GroupPolicy, MemberIdentity, NymstrProvider, SUPPORTED_CIPHERSUITES, may_commit};
use nymstr_proto::identity;
use nymstr_proto::limits::{
    ADDRESS_BYTES_MAX, DIRECTORY_ADVERTS_MAX, GROUP_DESCRIPTION_BYTES_MAX, GROUP_FETCH_MAX, GROUP_MEMBERS_MAX,
    GROUP_MLS_BYTES_MAX, GROUP_NAME_BYTES_MAX,
};
use nymstr_proto::wire::{
    Body, ErrorCode, GroupAdvert, GroupEntry, GroupId, InviteToken, Nonce, PublicKey, Sig, UploadId,
};

/// Encoded size budget of the entries in one `GroupEntries` (the frame limit is 64 KiB;
/// the rest is the envelope and per-entry framing).
pub const GROUP_ENTRIES_BYTES_MAX: usize = 56 * 1024;
/// Per-entry framing counted against [`GROUP_ENTRIES_BYTES_MAX`] (seq, epoch, length).
const ENTRY_OVERHEAD_BYTES: usize = 32;
/// openmls' `MemoryStorage` label of queued proposals. `clear_proposal_queue` in
/// openmls_memory_storage 0.6 deletes these records under the wrong key, so the steward
/// purges them itself after every merge (the queue is empty then by definition).
const QUEUED_PROPOSAL_LABEL: &[u8] = b"QueuedProposal";

/// What the steward keeps about a hosted group besides its MLS state (table `Groups`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub created_at_us: TimeUs,
    /// When the current epoch began (creation, or the merge of its commit): the origin of
    /// the steward rounds.
    pub epoch_started_at_us: TimeUs,
    /// The current epoch's GroupInfo (TLS `MlsMessageOut`, with the ratchet tree), as
    /// uploaded by the committer; served by `GroupInfoRequest`.
    #[serde(with = "serde_bytes")]
    pub group_info: Vec<u8>,
    /// Listed by `DirectoryRequest` if present.
    pub advert: Option<GroupAdvert>,
}

/// Index record of one log entry (table `GroupSeqs`): application entries are pruned
/// beyond the history bound, handshake entries never.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SeqIndex {
    application: bool,
    upload_id: UploadId,
}

/// Dedupe record of an accepted upload (table `GroupUploads`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct UploadRecord {
    seq: u64,
    epoch: u64,
}

/// A subscribe challenge waiting for its proof (table `GroupChallenges`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PendingSubscribe {
    group_id: GroupId,
    member_key: PublicKey,
    tag: SenderTag,
    from_seq: u64,
    expires_at_us: TimeUs,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StewardError {
    #[error("no group with this id is hosted here")]
    UnknownGroup,
    #[error("a group with this id already exists")]
    GroupExists,
    #[error("{what} of {len} bytes exceeds {max}")]
    PayloadTooLarge { what: &'static str, len: usize, max: usize },
    #[error("bad MLS message: {0}")]
    BadMls(String),
    #[error("member credential refused: {0}")]
    BadCredential(String),
    /// The detail is exactly `current epoch N` (clients parse it).
    #[error("current epoch {current}")]
    WrongEpoch { current: u64 },
    #[error("not a member of the group")]
    NotMember,
    #[error("not the designated steward of epoch {epoch} at round {round}")]
    NotSteward { epoch: u64, round: u64 },
    #[error("not allowed: {0}")]
    NotAllowed(String),
    #[error("this group is joined only with an invite token")]
    InviteRequired,
    #[error("invite refused: {0}")]
    BadInvite(&'static str),
    #[error("invite already redeemed")]
    InviteUsed,
    #[error("invite expired")]
    InviteExpired,
    #[error("this tag has not subscribed to the group")]
    NotSubscribed,
    #[error("no such challenge (never issued, already used, for another tag, or lost in a restart)")]
    UnknownChallenge,
    #[error("challenge expired")]
    ChallengeExpired,
    #[error("signature does not verify")]
    BadSignature,
    #[error("{0}; retry later")]
    Busy(&'static str),
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// The steward's own MLS state failed (storage records); nothing was accepted.
    #[error("group state: {0}")]
    State(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CodedError for StewardError {
    fn code(&self) -> ErrorCode {
        match self {
            StewardError::UnknownGroup => ErrorCode::UnknownGroup,
            StewardError::GroupExists => ErrorCode::GroupExists,
            StewardError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            StewardError::BadMls(_) => ErrorCode::BadMlsMessage,
            StewardError::BadCredential(_) => ErrorCode::BadCertificate,
            StewardError::WrongEpoch { .. } => ErrorCode::WrongEpoch,
            StewardError::NotMember => ErrorCode::NotMember,
            StewardError::NotSteward { .. } => ErrorCode::NotSteward,
            StewardError::NotAllowed(_) => ErrorCode::NotAllowed,
            StewardError::InviteRequired => ErrorCode::InviteRequired,
            StewardError::BadInvite(_) => ErrorCode::BadInvite,
            StewardError::InviteUsed => ErrorCode::InviteUsed,
            StewardError::InviteExpired => ErrorCode::InviteExpired,
            StewardError::NotSubscribed => ErrorCode::NotSubscribed,
            StewardError::UnknownChallenge => ErrorCode::UnknownChallenge,
            StewardError::ChallengeExpired => ErrorCode::ChallengeExpired,
            StewardError::BadSignature => ErrorCode::BadSignature,
            StewardError::Busy(_) => ErrorCode::Busy,
            StewardError::Malformed(_) => ErrorCode::Malformed,
            StewardError::State(_) | StewardError::Store(_) => ErrorCode::Internal,
        }
    }
}

/// Counters of the steward, for hosts (node `info`, simulator report).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StewardStats {
    pub groups_created: u64,
    pub group_subscriptions: u64,
    pub group_uploads_accepted: u64,
    pub group_uploads_rejected: u64,
    pub group_application_messages: u64,
    pub group_proposals: u64,
    pub group_commits: u64,
    pub group_pushes: u64,
    pub group_fetches: u64,
}

/// One hosted group in memory. The store is the source of truth; this is rebuilt by
/// [`Steward::recover`].
struct Hosted {
    /// Crypto for verification and the `MemoryStorage` holding the public group's records.
    provider: NymstrProvider,
    public: PublicGroup,
    /// Hash of every MLS storage record as last written to `Table::GroupMls`.
    mirror: BTreeMap<Vec<u8>, [u8; 32]>,
    record: GroupRecord,
    /// The current epoch's policy (admins sorted).
    policy: GroupPolicy,
    /// Signature keys of the current leaves.
    members: BTreeSet<PublicKey>,
    next_seq: u64,
    /// Application entries still in the log, oldest first.
    app_seqs: VecDeque<u64>,
    /// Handshake entries (kept forever).
    handshake_seqs: BTreeSet<u64>,
    /// tag -> member key, and its inverse (one tag per member key).
    subs: BTreeMap<SenderTag, PublicKey>,
    sub_by_key: BTreeMap<PublicKey, SenderTag>,
    /// Proposals accepted in the current epoch.
    pending_proposals: usize,
}

impl Hosted {
    fn epoch(&self) -> u64 {
        self.public.group_context().epoch().as_u64()
    }

    fn mls_group_id(&self) -> MlsGroupId {
        self.public.group_id().clone()
    }
}

/// The steward: every group hosted by this node.
#[derive(Default)]
pub struct Steward {
    pub stats: StewardStats,
    groups: BTreeMap<GroupId, Hosted>,
    challenges_pending: usize,
    /// (expiry, group, token id) of every redeemed invite still remembered (sweep index).
    used_invites: BTreeSet<(TimeUs, GroupId, [u8; 16])>,
}

impl std::fmt::Debug for Steward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steward").field("groups", &self.groups.len()).finish_non_exhaustive()
    }
}

fn key2(a: &[u8], b: &[u8]) -> Vec<u8> {
    [a, b].concat()
}

fn seq_key(group_id: &GroupId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(group_id);
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn corrupt(table: Table, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt { table: table.name(), detail: detail.into() }
}

fn state_err(e: impl std::fmt::Display) -> StewardError {
    StewardError::State(e.to_string())
}

fn bad_mls(what: &str, e: impl std::fmt::Debug) -> StewardError {
    StewardError::BadMls(format!("{what}: {e:?}"))
}

/// A 32-byte ed25519 key from a leaf's signature key bytes.
fn as_key(bytes: &[u8]) -> Option<PublicKey> {
    bytes.try_into().ok()
}

fn leaf_key(public: &PublicGroup, index: LeafNodeIndex) -> Option<PublicKey> {
    public.leaf(index).and_then(|l| as_key(l.signature_key().as_slice()))
}

fn member_keys(public: &PublicGroup) -> BTreeSet<PublicKey> {
    public.members().filter_map(|m| as_key(&m.signature_key)).collect()
}

/// The group policy as the group context carries it (not normalized: members binary-search
/// `admins` as written, so the steward checks it with [`is_normalized`] before accepting it).
fn read_policy(public: &PublicGroup) -> Option<GroupPolicy> {
    GroupPolicy::from_extensions(public.group_context().extensions())
}

/// Whether a policy's `admins` are sorted and without duplicates, as members assume.
fn is_normalized(policy: &GroupPolicy) -> bool {
    policy.admins.windows(2).all(|w| w[0] < w[1])
}

/// A leaf's credential must bind it to a certified installation whose signing key is
/// the leaf's signature key.
fn verify_leaf(leaf: &LeafNode) -> Result<MemberIdentity, StewardError> {
    MemberIdentity::verify(leaf.credential(), leaf.signature_key().as_slice())
        .map_err(|e| StewardError::BadCredential(e.to_string()))
}

/// A policy is acceptable if its admins are normalized (sorted, distinct: members look
/// them up by binary search) and it has an admin who is a member.
fn check_policy(policy: &GroupPolicy, members: &BTreeSet<PublicKey>) -> Result<(), StewardError> {
    if !is_normalized(policy) {
        return Err(StewardError::NotAllowed("the group policy's admins must be sorted and distinct".into()));
    }
    if !policy.admins.iter().any(|a| members.contains(a)) {
        return Err(StewardError::NotAllowed("the group policy must keep an admin who is a member".into()));
    }
    Ok(())
}

/// Every record of a `MemoryStorage`, in key order.
fn storage_records(storage: &MemoryStorage) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let values = storage.values.read().unwrap_or_else(|p| p.into_inner());
    values.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn storage_from(records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> MemoryStorage {
    let storage = MemoryStorage::default();
    {
        let mut values = storage.values.write().unwrap_or_else(|p| p.into_inner());
        for (k, v) in records {
            values.insert(k, v);
        }
    }
    storage
}

fn purge_queued_proposals(storage: &MemoryStorage) {
    let mut values = storage.values.write().unwrap_or_else(|p| p.into_inner());
    values.retain(|k, _| !k.starts_with(QUEUED_PROPOSAL_LABEL));
}

/// Parses a TLS `MlsMessageOut(GroupInfo)`.
fn parse_group_info(bytes: &[u8]) -> Result<VerifiableGroupInfo, StewardError> {
    let msg = MlsMessageIn::tls_deserialize_exact_bytes(bytes).map_err(|e| bad_mls("group_info does not parse", e))?;
    match msg.extract() {
        MlsMessageBodyIn::GroupInfo(gi) => Ok(gi),
        _ => Err(StewardError::BadMls("group_info is not a GroupInfo message".into())),
    }
}

fn seed(ctx: &mut Ctx<'_, impl Store>) -> [u8; 32] {
    let mut s = [0u8; 32];
    ctx.rng.fill_bytes(&mut s);
    s
}

/// What kind of handshake an upload carried, once accepted.
enum Accepted {
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

impl Steward {
    /// Rebuilds every hosted group from the store.
    pub fn recover<S: Store>(store: &S, rng: &mut impl Rng) -> Result<Self, StoreError> {
        let mut steward = Steward::default();
        for (k, v) in store.scan_prefix(Table::Groups, &[])? {
            let group_id: GroupId = k.as_slice().try_into().map_err(|_| corrupt(Table::Groups, "key length"))?;
            let record: GroupRecord =
                nymstr_proto::codec::decode(&v).map_err(|e| corrupt(Table::Groups, e.to_string()))?;
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
            let mut app_seqs = VecDeque::new();
            let mut handshake_seqs = BTreeSet::new();
            let mut next_seq = 1;
            for (k, v) in store.scan_prefix(Table::GroupSeqs, &group_id)? {
                let seq = u64::from_be_bytes(
                    k.get(16..24).and_then(|s| s.try_into().ok()).ok_or_else(|| corrupt(Table::GroupSeqs, "key"))?,
                );
                let idx: SeqIndex =
                    nymstr_proto::codec::decode(&v).map_err(|e| corrupt(Table::GroupSeqs, e.to_string()))?;
                if idx.application {
                    app_seqs.push_back(seq);
                } else {
                    handshake_seqs.insert(seq);
                }
                next_seq = next_seq.max(seq + 1);
            }
            let mut subs = BTreeMap::new();
            let mut sub_by_key = BTreeMap::new();
            for (k, v) in store.scan_prefix(Table::GroupSubs, &group_id)? {
                let tag = SenderTag(
                    k.get(16..)
                        .and_then(|t| t.try_into().ok())
                        .ok_or_else(|| corrupt(Table::GroupSubs, "key length"))?,
                );
                let key: PublicKey =
                    nymstr_proto::codec::decode(&v).map_err(|e| corrupt(Table::GroupSubs, e.to_string()))?;
                subs.insert(tag, key);
                sub_by_key.insert(key, tag);
            }
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
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
            };
            steward.groups.insert(group_id, hosted);
        }
        for (k, v) in store.scan_prefix(Table::GroupInvites, &[])? {
            if k.len() != 32 {
                return Err(corrupt(Table::GroupInvites, "key length"));
            }
            let expires: TimeUs =
                nymstr_proto::codec::decode(&v).map_err(|e| corrupt(Table::GroupInvites, e.to_string()))?;
            let group_id: GroupId = k[..16].try_into().expect("16 bytes");
            let token: [u8; 16] = k[16..].try_into().expect("16 bytes");
            steward.used_invites.insert((expires, group_id, token));
        }
        steward.challenges_pending = store.scan_prefix(Table::GroupChallenges, &[])?.len();
        Ok(steward)
    }

    /// Number of groups hosted.
    pub fn groups_hosted(&self) -> usize {
        self.groups.len()
    }

    /// The current epoch of a hosted group.
    pub fn epoch(&self, group_id: &GroupId) -> Option<u64> {
        self.groups.get(group_id).map(Hosted::epoch)
    }

    /// Signature keys of a hosted group's current leaves (its members this epoch).
    pub fn members(&self, group_id: &GroupId) -> Option<Vec<PublicKey>> {
        self.groups.get(group_id).map(|g| g.members.iter().copied().collect())
    }

    /// The seq the next entry of a hosted group will get.
    pub fn next_seq(&self, group_id: &GroupId) -> Option<u64> {
        self.groups.get(group_id).map(|g| g.next_seq)
    }

    /// Tags subscribed to a group (including members removed by the last commit, whose
    /// subscription is kept one epoch so their uploads get `NotMember`).
    pub fn subscribed_tags(&self, group_id: &GroupId) -> Vec<SenderTag> {
        self.groups.get(group_id).map(|g| g.subs.keys().copied().collect()).unwrap_or_default()
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
        };
        sync_mls(ctx, &group_id, &mut hosted)?;
        self.groups.insert(group_id, hosted);
        self.stats.groups_created += 1;
        ctx.send_durable(Peer::Tag(tag), rid, Body::GroupCreated { group_id, epoch: 0 });
        Ok(())
    }

    // --- subscriptions ---

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
        if self.challenges_pending >= ctx.config.challenges_pending_max {
            return Err(StewardError::Busy("too many pending subscribe challenges"));
        }
        let mut nonce: Nonce = [0u8; 32];
        ctx.rng.fill_bytes(&mut nonce);
        let expires_at_us = ctx.now + ctx.config.challenge_ttl_us;
        let pending = PendingSubscribe { group_id, member_key, tag, from_seq, expires_at_us };
        ctx.save(Table::GroupChallenges, &nonce, &pending)?;
        self.challenges_pending += 1;
        // Like registry challenges: not durable on purpose (a lost one makes the member retry).
        ctx.send(Peer::Tag(tag), rid, Body::Challenge { nonce, expires_at_us });
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
        ctx.store.delete(Table::GroupChallenges, &nonce)?;
        self.challenges_pending = self.challenges_pending.saturating_sub(1);
        if pending.tag != tag || pending.group_id != group_id {
            return Err(StewardError::UnknownChallenge);
        }
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

    // --- reads ---

    pub fn on_fetch<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        group_id: GroupId,
        from_seq: u64,
        max: u32,
    ) -> Result<(), StewardError> {
        let g = self.groups.get(&group_id).ok_or(StewardError::UnknownGroup)?;
        let key = g.subs.get(&tag).ok_or(StewardError::NotSubscribed)?;
        if !g.members.contains(key) {
            return Err(StewardError::NotMember);
        }
        let max = (max as usize).min(GROUP_FETCH_MAX);
        let entries = collect_entries(&*ctx.store, &group_id, g, from_seq, max)?;
        self.stats.group_fetches += 1;
        ctx.send_durable(Peer::Tag(tag), rid, Body::GroupEntries { group_id, entries, next_seq: g.next_seq });
        Ok(())
    }

    pub fn on_group_info_request<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        group_id: GroupId,
    ) -> Result<(), StewardError> {
        let g = self.groups.get(&group_id).ok_or(StewardError::UnknownGroup)?;
        let body = Body::GroupInfoReply {
            group_id,
            epoch: g.epoch(),
            open: g.policy.open,
            group_info: g.record.group_info.clone(),
        };
        ctx.send_durable(Peer::Tag(tag), rid, body);
        Ok(())
    }

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

    // --- uploads ---

    #[allow(clippy::too_many_arguments)]
    pub fn on_upload<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        group_id: GroupId,
        upload_id: UploadId,
        mls: Vec<u8>,
        group_info: Vec<u8>,
        invite: Option<InviteToken>,
    ) -> Result<(), StewardError> {
        let r = self.upload(ctx, tag, rid, group_id, upload_id, mls, group_info, invite);
        if r.is_err() {
            self.stats.group_uploads_rejected += 1;
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn upload<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        group_id: GroupId,
        upload_id: UploadId,
        mls: Vec<u8>,
        group_info: Vec<u8>,
        invite: Option<InviteToken>,
    ) -> Result<(), StewardError> {
        let stats = &mut self.stats;
        let g = self.groups.get_mut(&group_id).ok_or(StewardError::UnknownGroup)?;
        for (what, len) in [("mls", mls.len()), ("group_info", group_info.len())] {
            if len > GROUP_MLS_BYTES_MAX {
                return Err(StewardError::PayloadTooLarge { what, len, max: GROUP_MLS_BYTES_MAX });
            }
        }
        if let Some(done) = load::<UploadRecord, _>(&*ctx.store, Table::GroupUploads, &key2(&group_id, &upload_id))? {
            // A retried upload: acknowledge again once the first one is durable.
            let ack = Body::GroupUploadAck { group_id, upload_id, seq: done.seq, epoch: done.epoch };
            ctx.send_durable(Peer::Tag(tag), rid, ack);
            return Ok(());
        }
        let msg = MlsMessageIn::tls_deserialize_exact_bytes(&mls).map_err(|e| bad_mls("mls does not parse", e))?;
        let current = g.epoch();
        let accepted = match msg.extract() {
            MlsMessageBodyIn::PrivateMessage(pm) => {
                if pm.group_id().as_slice() != group_id {
                    return Err(StewardError::BadMls("message is for another group".into()));
                }
                if pm.content_type() != ContentType::Application {
                    return Err(StewardError::BadMls("handshake messages must be sent as PublicMessage".into()));
                }
                let key = g.subs.get(&tag).ok_or(StewardError::NotSubscribed)?;
                if !g.members.contains(key) {
                    return Err(StewardError::NotMember);
                }
                let epoch = pm.epoch().as_u64();
                if epoch != current && epoch.saturating_add(1) != current {
                    return Err(StewardError::WrongEpoch { current });
                }
                Accepted::Application { epoch }
            }
            MlsMessageBodyIn::PublicMessage(pm) => {
                if pm.group_id().as_slice() != group_id {
                    return Err(StewardError::BadMls("message is for another group".into()));
                }
                if pm.epoch().as_u64() != current {
                    return Err(StewardError::WrongEpoch { current });
                }
                match (pm.content_type(), pm.sender().clone()) {
                    (ContentType::Proposal, Sender::Member(index)) => on_proposal(ctx, &group_id, g, index, pm)?,
                    (ContentType::Commit, Sender::Member(index)) => {
                        on_member_commit(ctx, &group_id, g, index, pm, &group_info)?
                    }
                    (ContentType::Commit, Sender::NewMemberCommit) => {
                        let token = check_invite(ctx.now, &group_id, g, invite.as_ref(), &*ctx.store)?;
                        let accepted = on_external_commit(ctx, &group_id, g, pm, &group_info)?;
                        if let Some(t) = token {
                            ctx.save(Table::GroupInvites, &key2(&group_id, &t.token_id), &t.expires_at_us)?;
                            self.used_invites.insert((t.expires_at_us, group_id, t.token_id));
                        }
                        accepted
                    }
                    (ContentType::Application, _) => {
                        return Err(StewardError::BadMls("application messages must be encrypted".into()));
                    }
                    (_, sender) => {
                        return Err(StewardError::NotAllowed(format!("{sender:?} may not send this message")));
                    }
                }
            }
            _ => return Err(StewardError::BadMls("not a PublicMessage or PrivateMessage".into())),
        };
        let (epoch, application) = match &accepted {
            Accepted::Application { epoch } => (*epoch, true),
            Accepted::Proposal { epoch } | Accepted::Commit { epoch, .. } => (*epoch, false),
        };
        let entry = append(ctx, &group_id, g, epoch, mls, application, upload_id)?;
        ctx.send_durable(
            Peer::Tag(tag),
            rid,
            Body::GroupUploadAck { group_id, upload_id, seq: entry.seq, epoch: entry.epoch },
        );
        stats.group_uploads_accepted += 1;
        match accepted {
            Accepted::Application { .. } => {
                stats.group_application_messages += 1;
                let targets: Vec<SenderTag> =
                    g.subs.iter().filter(|(t, k)| **t != tag && g.members.contains(*k)).map(|(t, _)| *t).collect();
                push(ctx, &group_id, &entry, &targets, stats);
            }
            Accepted::Proposal { .. } => {
                stats.group_proposals += 1;
                let targets: Vec<SenderTag> =
                    g.subs.iter().filter(|(t, k)| **t != tag && g.members.contains(*k)).map(|(t, _)| *t).collect();
                push(ctx, &group_id, &entry, &targets, stats);
            }
            Accepted::Commit { before, .. } => {
                stats.group_commits += 1;
                // Everyone who was or now is a member hears the commit (a removed member
                // learns it is out); then subscriptions stale since before this commit go.
                let targets: Vec<SenderTag> = g
                    .subs
                    .iter()
                    .filter(|(t, k)| **t != tag && (g.members.contains(*k) || before.contains(*k)))
                    .map(|(t, _)| *t)
                    .collect();
                push(ctx, &group_id, &entry, &targets, stats);
                let stale: Vec<(SenderTag, PublicKey)> = g
                    .subs
                    .iter()
                    .filter(|(_, k)| !g.members.contains(*k) && !before.contains(*k))
                    .map(|(t, k)| (*t, *k))
                    .collect();
                for (t, k) in stale {
                    g.subs.remove(&t);
                    if g.sub_by_key.get(&k) == Some(&t) {
                        g.sub_by_key.remove(&k);
                    }
                    ctx.store.delete(Table::GroupSubs, &key2(&group_id, &t.0))?;
                }
            }
        }
        Ok(())
    }

    // --- housekeeping ---

    /// Deletes expired subscribe challenges and redeemed invites past their expiry (an
    /// expired token is refused as expired, so its record is no longer needed).
    pub fn sweep<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), StoreError> {
        if self.challenges_pending > 0 {
            for (k, v) in ctx.store.scan_prefix(Table::GroupChallenges, &[])? {
                let expired =
                    nymstr_proto::codec::decode::<PendingSubscribe>(&v).map_or(true, |c| c.expires_at_us <= ctx.now);
                if expired {
                    ctx.store.delete(Table::GroupChallenges, &k)?;
                    self.challenges_pending = self.challenges_pending.saturating_sub(1);
                }
            }
        }
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

fn check_advert(a: &GroupAdvert, group_id: &GroupId, policy: &GroupPolicy) -> Result<(), StewardError> {
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

/// For an invite-only group, the token attached to an external commit (returned so it is
/// recorded as redeemed once the commit is accepted). `None` for an open group.
fn check_invite(
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
    identity::verify(
        &t.admin_key,
        &identity::invite_token_bytes(&t.group_id, &t.token_id, t.expires_at_us, &t.admin_key),
        &t.sig,
    )
    .map_err(|_| StewardError::BadInvite("the token's signature does not verify"))?;
    if t.expires_at_us <= now {
        return Err(StewardError::InviteExpired);
    }
    if store.get(Table::GroupInvites, &key2(group_id, &t.token_id))?.is_some() {
        return Err(StewardError::InviteUsed);
    }
    Ok(Some(t.clone()))
}

fn on_proposal<S: Store>(
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

fn on_member_commit<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group_id: &GroupId,
    g: &mut Hosted,
    index: LeafNodeIndex,
    pm: PublicMessageIn,
    group_info: &[u8],
) -> Result<Accepted, StewardError> {
    let epoch = g.epoch();
    let committer = leaf_key(&g.public, index).ok_or(StewardError::NotMember)?;
    let timeout = ctx.config.group_commit_timeout_us.max(1);
    let round = ctx.now.saturating_sub(g.record.epoch_started_at_us) / timeout;
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

fn on_external_commit<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group_id: &GroupId,
    g: &mut Hosted,
    pm: PublicMessageIn,
    group_info: &[u8],
) -> Result<Accepted, StewardError> {
    let processed = g
        .public
        .process_message(g.provider.crypto(), pm)
        .map_err(|e| bad_mls("external commit does not validate", e))?;
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err(StewardError::BadMls("not a commit".into()));
    };
    let leaf = staged
        .update_path_leaf_node()
        .ok_or_else(|| StewardError::BadMls("an external commit must carry a path".into()))?;
    verify_leaf(leaf)?;
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

/// Writes the MLS storage records that changed since the last sync.
fn sync_mls<S: Store>(ctx: &mut Ctx<'_, S>, group_id: &GroupId, g: &mut Hosted) -> Result<(), StoreError> {
    let now = storage_records(g.provider.storage());
    let mut mirror = BTreeMap::new();
    for (k, v) in &now {
        let h = *blake3::hash(v).as_bytes();
        if g.mirror.get(k) != Some(&h) {
            ctx.store.put(Table::GroupMls, &key2(group_id, k), v)?;
        }
        mirror.insert(k.clone(), h);
    }
    for k in g.mirror.keys() {
        if !now.contains_key(k) {
            ctx.store.delete(Table::GroupMls, &key2(group_id, k))?;
        }
    }
    g.mirror = mirror;
    Ok(())
}

/// Appends an accepted message to the log (and prunes application history).
fn append<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group_id: &GroupId,
    g: &mut Hosted,
    epoch: u64,
    mls: Vec<u8>,
    application: bool,
    upload_id: UploadId,
) -> Result<GroupEntry, StoreError> {
    let seq = g.next_seq;
    let entry = GroupEntry { seq, epoch, mls };
    ctx.save(Table::GroupLog, &seq_key(group_id, seq), &entry)?;
    ctx.save(Table::GroupSeqs, &seq_key(group_id, seq), &SeqIndex { application, upload_id })?;
    ctx.save(Table::GroupUploads, &key2(group_id, &upload_id), &UploadRecord { seq, epoch })?;
    g.next_seq += 1;
    if application {
        g.app_seqs.push_back(seq);
        let keep = ctx.config.group_history_max.max(1);
        while g.app_seqs.len() > keep {
            let Some(old) = g.app_seqs.pop_front() else { break };
            let k = seq_key(group_id, old);
            if let Some(idx) = ctx.load::<SeqIndex>(Table::GroupSeqs, &k)? {
                ctx.store.delete(Table::GroupUploads, &key2(group_id, &idx.upload_id))?;
            }
            ctx.store.delete(Table::GroupSeqs, &k)?;
            ctx.store.delete(Table::GroupLog, &k)?;
        }
    } else {
        g.handshake_seqs.insert(seq);
    }
    Ok(entry)
}

fn push<S: Store>(
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

/// Entries with seq ≥ `from_seq`, in order, at most `max` and within
/// [`GROUP_ENTRIES_BYTES_MAX`] (always at least one if any remain and `max` > 0).
fn collect_entries<S: Store>(
    store: &S,
    group_id: &GroupId,
    g: &Hosted,
    from_seq: u64,
    max: usize,
) -> Result<Vec<GroupEntry>, StoreError> {
    let mut handshakes = g.handshake_seqs.range(from_seq..).copied().peekable();
    let start = g.app_seqs.partition_point(|&s| s < from_seq);
    let mut apps = g.app_seqs.range(start..).copied().peekable();
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while out.len() < max {
        let next = match (handshakes.peek(), apps.peek()) {
            (Some(&h), Some(&a)) if h < a => handshakes.next(),
            (Some(_), Some(_)) | (None, Some(_)) => apps.next(),
            (Some(_), None) => handshakes.next(),
            (None, None) => None,
        };
        let Some(seq) = next else { break };
        let Some(entry) = load::<GroupEntry, _>(store, Table::GroupLog, &seq_key(group_id, seq))? else {
            return Err(corrupt(Table::GroupLog, format!("entry {seq} missing")));
        };
        let size = entry.mls.len() + ENTRY_OVERHEAD_BYTES;
        if !out.is_empty() && bytes + size > GROUP_ENTRIES_BYTES_MAX {
            break;
        }
        bytes += size;
        out.push(entry);
    }
    Ok(out)
}
