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
//!
//! Files: this one holds the steward's state (hosted groups, records, errors, counters);
//! `hosting` creates, recovers and sweeps groups, `uploads` routes each upload to
//! `commits` (proposals, commits, merge) and appends it to the `log`, whence
//! `subscriptions` push it; `invites`, `directory`, `policy` and `storage` serve
//! them. Dependencies go one way: the submodules use this file, this file uses none of them.

mod activity;
mod commits;
mod directory;
mod hosting;
mod invites;
mod log;
mod policy;
mod storage;
mod subscriptions;
mod uploads;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use openmls::prelude::{GroupId as MlsGroupId, PublicGroup};
use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::actors::{CodedError, Ctx, SenderTag, TimeUs};
use crate::store::{Store, StoreError, Table};
use nymstr_mls::{GroupPolicy, NymstrProvider};
use nymstr_proto::wire::{ErrorCode, GroupAdvert, GroupId, PublicKey};

/// Encoded size budget of the entries in one `GroupEntries` (the frame limit is 64 KiB;
/// the rest is the envelope and per-entry framing).
pub const GROUP_ENTRIES_BYTES_MAX: usize = 56 * 1024;

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
    /// The last activity (upload, subscription, fetch), and the bound on it last stored
    /// (see `activity::touch`).
    active_us: TimeUs,
    active_bound_us: TimeUs,
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
    /// Pending subscribe challenges, per tag.
    challenges: crate::actors::quota::TagShares,
    /// (expiry, group, token id) of every redeemed invite still remembered (sweep index).
    used_invites: BTreeSet<(TimeUs, GroupId, [u8; 16])>,
    /// Expired groups whose rows are still being deleted, a page per sweep.
    purging: BTreeSet<GroupId>,
    /// Buggify (simulator): admit every external commit, invitation or not, as a group
    /// node that joins its own groups would (`specs/sim.md`, `inject_join`).
    admit_any_join: bool,
}

impl std::fmt::Debug for Steward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steward").field("groups", &self.groups.len()).finish_non_exhaustive()
    }
}

impl Steward {
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

    /// Buggify for the simulator: from now on this steward admits external commits to
    /// invite-only groups without checking any invitation (members must refuse them).
    #[doc(hidden)]
    pub fn buggify_admit_any_join(&mut self) {
        self.admit_any_join = true;
    }

    /// Tags subscribed to a group (including members removed by the last commit, whose
    /// subscription is kept one epoch so their uploads get `NotMember`).
    pub fn subscribed_tags(&self, group_id: &GroupId) -> Vec<SenderTag> {
        self.groups.get(group_id).map(|g| g.subs.keys().copied().collect()).unwrap_or_default()
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

fn seed(ctx: &mut Ctx<'_, impl Store>) -> [u8; 32] {
    let mut s = [0u8; 32];
    ctx.rng.fill_bytes(&mut s);
    s
}
