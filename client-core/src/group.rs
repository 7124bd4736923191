//! `GroupCore`: the sans-IO MLS group member (create, join, send, receive, remove, leave,
//! promote, rename), separate from `ClientCore` because a group lives on a *group node*
//! (the steward's host) that may differ from the member's home node.
//!
//! Shape (quinn-proto style, like `ClientCore`): the host calls the operations, feeds
//! envelopes from a group node with `handle_envelope(now, group_node, envelope)`, runs
//! `handle_timeout` at `poll_timeout`, drains `drain_transmits()` (each a
//! [`GroupTransmit`] naming the group node to deliver it to) and `poll_event()`. Time is
//! always an argument; randomness comes from one seed (the MLS provider's and ours).
//!
//! Ordering: the steward's log is a total order. Entries are applied strictly in seq
//! order; a gap is filled with `GroupFetch`. Our own uploads are recognised when their
//! entry comes back (same bytes, or the seq of the upload's acknowledgement): an own commit
//! is merged then, never earlier. Proposals stay out of the MLS proposal store until the
//! log carries them, so a committing admin only ever commits logged proposals.
//!
//! Application messages carry a sync header (`crate::sync`, `specs/sync.md`) for
//! missing-message detection: a causal reference we never decrypted is reported
//! (`Missing`), fetched again from the log, and either `Repaired` or `Lost`.
//!
//! A host persists the core with `export_state()` (openmls' storage records plus the
//! per-group state) and restarts it with `restore()`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ed25519_dalek::SigningKey;
use nymstr_mls::{
    self as nmls, DEFAULT_CIPHERSUITE, GroupPolicy, InstallationSigner, MemberIdentity, NymstrProvider,
    POLICY_EXTENSION_TYPE,
};
use nymstr_proto::limits::{
    FRAME_BYTES_MAX, GROUP_DESCRIPTION_BYTES_MAX, GROUP_FETCH_MAX, GROUP_MLS_BYTES_MAX, GROUP_NAME_BYTES_MAX,
};
use nymstr_proto::wire::{
    Body, Envelope, ErrorCode, GroupAdvert, GroupEntry, GroupId, InstallationCert, InviteToken, MsgId, PublicKey, Sig,
    UploadId,
};
use nymstr_proto::{codec, identity};
use openmls::ciphersuite::hash_ref::ProposalRef;
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialWithKey, Extension, ExtensionType, Extensions, GroupContext,
    LeafNodeIndex, LeafNodeParameters, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupJoinConfig,
    MlsMessageBodyIn, MlsMessageIn, ProcessedMessage, ProcessedMessageContent, Proposal, QueuedProposal,
    RequiredCapabilitiesExtension, Sender, SenderRatchetConfiguration, StagedCommit,
};
use openmls_memory_storage::MemoryStorage;
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::StorageProvider as _;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tls_codec::{DeserializeBytes, Serialize as _};

use crate::sync::{self, BloomFilter, CausalRef, HISTORY_MAX, SyncBody, SyncMessage};

pub use nymstr_proto::time::TimeUs;

/// Own messages whose acknowledgements (peers' bloom filters) are tracked, per group.
pub const ACKS_TRACKED: usize = 64;

/// Domain-separation labels deriving the core's two random streams from the host's seed.
pub const LABEL_SEED_PROVIDER: &str = "nymstr/v1/group-core/provider";
pub const LABEL_SEED_CORE: &str = "nymstr/v1/group-core/rng";

/// The member's identity pieces: its installation key (the MLS leaf signature key), the
/// installation's certificate and its username.
pub struct MemberKeys {
    pub installation: SigningKey,
    pub cert: InstallationCert,
    pub username: String,
}

impl MemberKeys {
    pub fn member_key(&self) -> PublicKey {
        self.installation.verifying_key().to_bytes()
    }
}

/// Leaf lifetimes: openmls checks them against the wall clock, which the simulator does
/// not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LifetimeMode {
    /// `lifetime_from(now_s, valid_for_s)` (real clients).
    WallClock { valid_for_s: u64 },
    /// `unbounded_lifetime()` (the simulator, whose clock is virtual).
    Unbounded,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// First retry of an unanswered request; doubles up to the max.
    pub retry_after_us: TimeUs,
    pub retry_after_max_us: TimeUs,
    /// Length of one steward round: an admin designated for round `r` of an epoch commits
    /// pending proposals once `r` rounds have passed (`nymstr_mls::may_commit`).
    pub commit_timeout_us: TimeUs,
    /// A message reported `Missing` and not repaired within this is reported `Lost`.
    pub repair_timeout_us: TimeUs,
    /// A seq gap in pushes is fetched after waiting this long for the missing push.
    pub gap_wait_us: TimeUs,
    /// A subscribed group that heard nothing from its node for this long fetches from its
    /// next seq (a lost last push is otherwise only noticed with the next one).
    pub sync_every_us: TimeUs,
    /// Invite tokens expire after this long.
    pub invite_ttl_us: TimeUs,
    pub lifetime: LifetimeMode,
    pub ciphersuite: Ciphersuite,
    /// Past epochs whose message keys are kept (late and repaired messages decrypt).
    pub max_past_epochs: usize,
    /// How many generations behind a sender's newest a message may still decrypt
    /// (openmls' default of 5 is too few when retries reorder a sender's uploads).
    pub out_of_order_tolerance: u32,
    /// Message ids remembered per group (de-duplication, causal checks).
    pub seen_max: usize,
    /// Application uploads in flight per group (within MLS' out-of-order tolerance of 5).
    pub uploads_in_flight_max: usize,
    /// Messages waiting to be sent, per group.
    pub outbox_max: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            retry_after_us: 10_000_000,
            retry_after_max_us: 60_000_000,
            commit_timeout_us: 30_000_000,
            repair_timeout_us: 60_000_000,
            gap_wait_us: 2_000_000,
            sync_every_us: 300_000_000,
            invite_ttl_us: 7 * 24 * 3600 * 1_000_000,
            lifetime: LifetimeMode::WallClock { valid_for_s: 28 * 24 * 3600 },
            ciphersuite: DEFAULT_CIPHERSUITE,
            max_past_epochs: 8,
            out_of_order_tolerance: 32,
            seen_max: 10_000,
            uploads_in_flight_max: 4,
            outbox_max: 1_000,
        }
    }
}

/// A group's name and description (encrypted application state, `SyncBody::SetMeta`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    pub name: String,
    pub description: String,
    /// Raised by one on every rename; a `SetMeta` applies if its version is at least ours.
    pub version: u64,
}

/// One member as this core sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub username: String,
    /// Installation signing key = MLS leaf signature key.
    pub key: PublicKey,
    pub admin: bool,
    /// False if the leaf's credential does not bind it to a certified installation.
    pub verified: bool,
}

/// An envelope for the host to deliver to the group node `group_node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupTransmit {
    pub group_node: Vec<u8>,
    pub group: GroupId,
    pub envelope: Envelope,
}

/// What the application learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupEvent {
    /// The group node hosts our new group.
    Created {
        group: GroupId,
    },
    /// Our external commit is in the log; we are a member from `epoch`.
    Joined {
        group: GroupId,
        epoch: u64,
    },
    /// An application message, in log order (our own too, when the log carries it).
    Message {
        group: GroupId,
        msg_id: MsgId,
        sender_username: String,
        sender_key: PublicKey,
        text: String,
        lamport: u64,
        seq: u64,
    },
    /// A message another member saw (causal history) never reached us; it is being fetched.
    Missing {
        group: GroupId,
        msg_id: MsgId,
        sender: PublicKey,
        seq: u64,
    },
    /// A `Missing` message was not repaired within `repair_timeout_us`.
    Lost {
        group: GroupId,
        msg_id: MsgId,
        sender: PublicKey,
        seq: u64,
    },
    /// A `Missing` message arrived after all (its `Message` event precedes this).
    Repaired {
        group: GroupId,
        msg_id: MsgId,
        sender: PublicKey,
        seq: u64,
    },
    /// The steward no longer holds log entries `from_seq..to_seq` (history pruned).
    HistoryGap {
        group: GroupId,
        from_seq: u64,
        to_seq: u64,
    },
    /// Membership or admin set changed (see `members`).
    MembersChanged {
        group: GroupId,
    },
    EpochChanged {
        group: GroupId,
        epoch: u64,
    },
    MetaChanged {
        group: GroupId,
        name: String,
        description: String,
    },
    /// We are no longer a member (removed, or our leave was committed).
    Removed {
        group: GroupId,
    },
    /// Something failed; `code` is the node's error or, for local failures, the closest.
    Error {
        group: GroupId,
        code: ErrorCode,
        detail: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("no such group")]
    UnknownGroup,
    #[error("already a member of (or joining) this group")]
    AlreadyMember,
    #[error("not (yet) a member of this group")]
    NotMember,
    #[error("only an admin may do this")]
    NotAdmin,
    #[error("no member with this key")]
    UnknownMember,
    #[error("the last admin cannot leave while others remain; promote someone first")]
    LastAdmin,
    #[error("{what} of {len} bytes exceeds {max}")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("too many messages waiting")]
    Backlog,
    #[error("mls: {0}")]
    Mls(String),
}

/// Counters of dropped input.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStats {
    /// Sync headers whose sender is not the MLS sender.
    pub wrong_sender: u64,
    /// Application plaintexts that are not sync messages.
    pub malformed: u64,
    /// Log entries that did not process (decrypt, verify, epoch).
    pub unprocessable: u64,
    /// `SetMeta` from a member who is not an admin.
    pub meta_not_admin: u64,
    /// Application messages (texts and `SetMeta`s) this member wrote.
    #[serde(default)]
    pub app_messages: u64,
    /// Copies encrypted again: after `WrongEpoch`/`NotSubscribed`, or overtaken by a commit.
    #[serde(default)]
    pub app_reencryptions: u64,
}

// ---------------------------------------------------------------------------------------
// Per-group state.

/// What a member asked for with a proposal; re-proposed every epoch until fulfilled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Intent {
    Remove(PublicKey),
    Leave,
    Promote(PublicKey),
    /// Drop an admin from the policy (before its removal or departure, so that no one who
    /// is gone stays a designated steward).
    Demote(PublicKey),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct IntentState {
    intent: Intent,
    /// Epoch of the last proposal made for it.
    proposed_epoch: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum UploadKind {
    /// `plaintext` is the encoded sync message (kept to re-encrypt after `WrongEpoch`).
    App {
        msg_id: MsgId,
        plaintext: Vec<u8>,
    },
    Proposal,
    Commit,
    /// Our external commit (joining).
    Join,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Upload {
    kind: UploadKind,
    mls: Vec<u8>,
    group_info: Vec<u8>,
    invite: Option<InviteToken>,
    /// Seq of the acknowledgement, once received.
    acked_seq: Option<u64>,
    /// An application message's place in our send order (`GroupRecord::sent`): restores
    /// re-queue in-flight messages in this order.
    #[serde(default)]
    order: u64,
    /// The intent a proposal is for: a refusal resets (or drops) that intent only.
    #[serde(default)]
    intent: Option<Intent>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct OutMsg {
    msg_id: MsgId,
    plaintext: Vec<u8>,
    /// Set once it was uploaded: kept across re-encryptions and restores, so the steward
    /// dedupes a copy it already accepted.
    upload_id: Option<UploadId>,
    /// Its place in our send order (`GroupRecord::sent`).
    #[serde(default)]
    order: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct MissingRef {
    sender: PublicKey,
    seq: u64,
    deadline_us: TimeUs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    /// `GroupCreate` sent, not yet confirmed.
    Creating {
        group_info: Vec<u8>,
        advert: Option<GroupAdvert>,
    },
    /// Asking for the GroupInfo, or our external commit is in flight.
    Joining {
        invite: Option<InviteToken>,
        backoff_us: TimeUs,
        retry_at_us: Option<TimeUs>,
    },
    Member,
}

/// Everything kept per group, persisted as is (the MLS group itself lives in the
/// provider's storage).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    id: GroupId,
    group_node: Vec<u8>,
    phase: Phase,
    /// Next log seq to apply.
    next_seq: u64,
    /// Seq of our join (0 for the creator): causal references at or below it are not ours
    /// to miss.
    join_seq: u64,
    /// Epoch our join commit created (0 for the creator).
    #[serde(default)]
    join_epoch: u64,
    /// Seqs after our join carrying application messages of an epoch before it (the
    /// steward accepts the previous epoch): never ours to read, so never missing.
    #[serde(default)]
    pre_join: BTreeSet<u64>,
    /// The steward's next seq as last heard.
    known_next_seq: u64,
    meta: GroupMeta,
    lamport: u64,
    history: VecDeque<CausalRef>,
    /// Last `BLOOM_WINDOW` message ids received (ours included): the bloom filter we send.
    window: VecDeque<MsgId>,
    seen: BTreeMap<MsgId, u64>,
    seen_order: VecDeque<(u64, MsgId)>,
    /// Causal references below this seq are not checked (their ids were forgotten).
    seen_floor: u64,
    /// Seqs of entries that did not process.
    failed: BTreeSet<u64>,
    /// Log ranges `from..to` the steward pruned before we had them (skipped).
    pruned: BTreeMap<u64, u64>,
    missing: BTreeMap<MsgId, MissingRef>,
    outbox: VecDeque<OutMsg>,
    uploads: BTreeMap<UploadId, Upload>,
    intents: Vec<IntentState>,
    /// Our recent messages and the members whose bloom filter shows they have them.
    acks: VecDeque<(MsgId, BTreeSet<PublicKey>)>,
    /// Application messages queued so far (the next one's `OutMsg::order`).
    #[serde(default)]
    sent: u64,
}

struct Group {
    rec: GroupRecord,
    mls: Option<MlsGroup>,
    buffered: BTreeMap<u64, GroupEntry>,
    subscribed: bool,
    /// The current epoch's members (from the MLS tree; credentials verified once).
    roster: Vec<MemberInfo>,
    /// When we noticed that the next entry is missing.
    gap_since: Option<TimeUs>,
    catching_up: bool,
    /// When the group's node last sent us anything for this group.
    last_heard: TimeUs,
    /// When the current epoch began, as observed locally, and when its first proposal
    /// was applied: the steward rounds count from the later of the two.
    epoch_started_at: TimeUs,
    proposals_since: Option<TimeUs>,
    /// No commit of ours before this (set when one was refused).
    commit_hold_until: TimeUs,
}

/// Everything `restore` needs: openmls' storage records (sorted) and per-group state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub storage: BTreeMap<Vec<u8>, Vec<u8>>,
    pub groups: Vec<GroupRecord>,
    pub stats: GroupStats,
}

/// What changed since the previous `export_changes` (or since start / restore).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStateDelta {
    pub upserts: BTreeMap<Vec<u8>, Vec<u8>>,
    pub deletes: Vec<Vec<u8>>,
    /// Every group's record (small; always complete).
    pub groups: Vec<GroupRecord>,
    pub stats: GroupStats,
}

impl GroupStateDelta {
    /// Applies this delta to a full state.
    pub fn apply_to(self, state: &mut GroupState) {
        for k in self.deletes {
            state.storage.remove(&k);
        }
        state.storage.extend(self.upserts);
        state.groups = self.groups;
        state.stats = self.stats;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("group {0:02x?} has no MLS state in storage")]
    MissingMls(GroupId),
}

#[derive(Clone, Debug)]
enum Step {
    Create,
    Info,
    Subscribe,
    /// Retried as is until the challenge expires, then the subscription starts over.
    SubscribeProof {
        expires_at_us: TimeUs,
    },
    Upload(UploadId),
    /// Catch-up from `from_seq` (gap detection applies) or repair of one seq.
    Fetch {
        from_seq: u64,
        repair: bool,
    },
}

#[derive(Clone, Debug)]
struct Pending {
    group: GroupId,
    step: Step,
    body: Body,
    retry_at_us: TimeUs,
    backoff_us: TimeUs,
}

// ---------------------------------------------------------------------------------------

pub struct GroupCore {
    config: GroupConfig,
    keys: MemberKeys,
    signer: InstallationSigner,
    provider: NymstrProvider,
    rng: ChaCha20Rng,
    groups: BTreeMap<GroupId, Group>,
    next_rid: u64,
    pending: BTreeMap<u64, Pending>,
    transmits: Vec<GroupTransmit>,
    events: VecDeque<GroupEvent>,
    stats: GroupStats,
    /// Restored groups subscribe at the first `handle_timeout`.
    resubscribe: bool,
    /// Digests of the storage records at the last `export_changes`.
    exported: BTreeMap<Vec<u8>, [u8; 32]>,
    identities: IdentityCache,
}

fn seeds(seed: [u8; 32]) -> ([u8; 32], [u8; 32]) {
    (blake3::derive_key(LABEL_SEED_PROVIDER, &seed), blake3::derive_key(LABEL_SEED_CORE, &seed))
}

fn mls_id(id: &GroupId) -> openmls::prelude::GroupId {
    openmls::prelude::GroupId::from_slice(id)
}

fn key32(bytes: &[u8]) -> Option<PublicKey> {
    bytes.try_into().ok()
}

/// The group's policy, normalized (admins sorted and deduplicated: `is_admin` searches
/// them by bisection, and an extension written by another implementation need not be).
fn policy_of(mls: &MlsGroup) -> GroupPolicy {
    GroupPolicy::from_extensions(mls.extensions())
        .unwrap_or(GroupPolicy { admins: Vec::new(), open: false })
        .normalized()
}

fn member_key_of(mls: &MlsGroup, index: LeafNodeIndex) -> Option<PublicKey> {
    mls.public_group().leaf(index).and_then(|l| key32(l.signature_key().as_slice()))
}

fn member_index_of(mls: &MlsGroup, key: &PublicKey) -> Option<LeafNodeIndex> {
    mls.members().find(|m| m.signature_key.as_slice() == key).map(|m| m.index)
}

/// Verified credentials by (leaf key, credential digest): a certificate is checked once,
/// not on every commit and message.
type IdentityCache = BTreeMap<(PublicKey, [u8; 32]), Option<String>>;

/// Entries of the identity cache before it is emptied.
const IDENTITY_CACHE_MAX: usize = 100_000;

/// The member list of the current epoch, sorted by key.
fn roster_of(mls: &MlsGroup, cache: &mut IdentityCache) -> Vec<MemberInfo> {
    if cache.len() > IDENTITY_CACHE_MAX {
        cache.clear();
    }
    let policy = policy_of(mls);
    let mut out: Vec<MemberInfo> = mls
        .members()
        .filter_map(|m| {
            let key = key32(&m.signature_key)?;
            let digest = *blake3::hash(m.credential.serialized_content()).as_bytes();
            let username = cache
                .entry((key, digest))
                .or_insert_with(|| MemberIdentity::verify(&m.credential, &m.signature_key).ok().map(|i| i.username))
                .clone();
            Some(MemberInfo {
                verified: username.is_some(),
                username: username.unwrap_or_default(),
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
fn sender_of(
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
    let username = cache
        .entry((key, digest))
        .or_insert_with(|| MemberIdentity::verify(credential, &key).ok().map(|i| i.username))
        .clone();
    Some((key, username.unwrap_or_default()))
}

fn username_in(roster: &[MemberInfo], key: &PublicKey) -> String {
    roster.binary_search_by_key(key, |m| m.key).map(|i| roster[i].username.clone()).unwrap_or_default()
}

fn required_extensions(policy: &GroupPolicy) -> Result<Extensions<GroupContext>, GroupError> {
    let required = RequiredCapabilitiesExtension::new(&[ExtensionType::Unknown(POLICY_EXTENSION_TYPE)], &[], &[]);
    Extensions::from_vec(vec![Extension::RequiredCapabilities(required), policy.extension()])
        .map_err(|e| GroupError::Mls(e.to_string()))
}

fn leaf_capabilities(cs: Ciphersuite) -> Capabilities {
    Capabilities::new(None, Some(&[cs]), Some(&[ExtensionType::Unknown(POLICY_EXTENSION_TYPE)]), None, None)
}

fn mls_bytes(m: &openmls::prelude::MlsMessageOut) -> Result<Vec<u8>, GroupError> {
    m.tls_serialize_detached().map_err(|e| GroupError::Mls(e.to_string()))
}

fn err<E: std::fmt::Debug>(e: E) -> GroupError {
    GroupError::Mls(format!("{e:?}"))
}

impl GroupCore {
    /// A core with no groups. `seed` seeds every random draw (MLS and ours): the
    /// simulator passes a per-entity stream, the CLI OS entropy.
    pub fn new(keys: MemberKeys, seed: [u8; 32], config: GroupConfig) -> Self {
        let (provider_seed, core_seed) = seeds(seed);
        let signer = InstallationSigner(keys.installation.clone());
        Self {
            config,
            keys,
            signer,
            provider: NymstrProvider::new(provider_seed),
            rng: ChaCha20Rng::from_seed(core_seed),
            groups: BTreeMap::new(),
            next_rid: 1,
            pending: BTreeMap::new(),
            transmits: Vec::new(),
            events: VecDeque::new(),
            stats: GroupStats::default(),
            resubscribe: false,
            exported: BTreeMap::new(),
            identities: BTreeMap::new(),
        }
    }

    /// Restarts a core from an exported state (with a fresh seed). Member groups
    /// resubscribe at the first `handle_timeout` (`poll_timeout` is then due at once);
    /// requests in flight start over: creates and joins are re-sent, unconfirmed messages
    /// re-encrypted, proposals re-proposed, an unconfirmed commit of ours dropped.
    pub fn restore(
        keys: MemberKeys,
        seed: [u8; 32],
        config: GroupConfig,
        state: GroupState,
    ) -> Result<Self, RestoreError> {
        let mut core = Self::new(keys, seed, config);
        let (provider_seed, _) = seeds(seed);
        core.exported = state.storage.iter().map(|(k, v)| (k.clone(), *blake3::hash(v).as_bytes())).collect();
        let storage = MemoryStorage { values: std::sync::RwLock::new(state.storage.into_iter().collect()) };
        core.provider = NymstrProvider::with_storage(provider_seed, storage);
        core.stats = state.stats;
        for mut rec in state.groups {
            let mut mls = MlsGroup::load(core.provider.storage(), &mls_id(&rec.id)).ok().flatten();
            match &mut rec.phase {
                Phase::Member => {
                    let Some(m) = mls.as_mut() else { return Err(RestoreError::MissingMls(rec.id)) };
                    if m.pending_commit().is_some() {
                        let _ = m.clear_pending_commit(core.provider.storage());
                    }
                }
                Phase::Joining { retry_at_us, .. } => {
                    if let Some(mut m) = mls.take() {
                        let _ = m.delete(core.provider.storage());
                    }
                    *retry_at_us = Some(0);
                }
                Phase::Creating { .. } => {
                    if mls.is_none() {
                        return Err(RestoreError::MissingMls(rec.id));
                    }
                }
            }
            // Unconfirmed uploads start over.
            let uploads = std::mem::take(&mut rec.uploads);
            // In-flight messages go first, in the order they were sent (upload ids are
            // random); a stable sort keeps states saved before `order` existed as they were.
            let mut requeue = Vec::new();
            for (upload_id, up) in uploads {
                if let UploadKind::App { msg_id, plaintext } = up.kind {
                    requeue.push(OutMsg { msg_id, plaintext, upload_id: Some(upload_id), order: up.order });
                }
            }
            requeue.extend(rec.outbox.drain(..));
            requeue.sort_by_key(|m| m.order);
            rec.outbox = requeue.into();
            for i in &mut rec.intents {
                i.proposed_epoch = None;
            }
            let roster = mls.as_ref().map(|m| roster_of(m, &mut core.identities)).unwrap_or_default();
            let group = Group {
                rec,
                mls,
                buffered: BTreeMap::new(),
                subscribed: false,
                roster,
                gap_since: None,
                catching_up: false,
                last_heard: 0,
                epoch_started_at: 0,
                proposals_since: None,
                commit_hold_until: 0,
            };
            core.groups.insert(group.rec.id, group);
        }
        core.resubscribe = true;
        Ok(core)
    }

    /// A snapshot of everything `restore` needs.
    pub fn export_state(&self) -> GroupState {
        GroupState { storage: self.storage_records(), groups: self.records(), stats: self.stats.clone() }
    }

    /// The storage records changed since the last call (or start / restore), and every
    /// group record. `GroupStateDelta::apply_to` brings a saved full state up to date.
    pub fn export_changes(&mut self) -> GroupStateDelta {
        let now = self.storage_records();
        let mut delta = GroupStateDelta { groups: self.records(), stats: self.stats.clone(), ..Default::default() };
        let mut digests = BTreeMap::new();
        for (k, v) in now {
            let d = *blake3::hash(&v).as_bytes();
            if self.exported.get(&k) != Some(&d) {
                delta.upserts.insert(k.clone(), v);
            }
            digests.insert(k, d);
        }
        delta.deletes = self.exported.keys().filter(|k| !digests.contains_key(*k)).cloned().collect();
        self.exported = digests;
        delta
    }

    fn storage_records(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let values = self.provider.storage().values.read().unwrap_or_else(|p| p.into_inner());
        values.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn records(&self) -> Vec<GroupRecord> {
        self.groups
            .values()
            .map(|g| {
                let mut rec = g.rec.clone();
                // In-flight handshake uploads are not resumable as such (see `restore`).
                rec.uploads.retain(|_, u| matches!(u.kind, UploadKind::App { .. }));
                rec
            })
            .collect()
    }

    // --- accessors ---

    pub fn member_key(&self) -> PublicKey {
        self.keys.member_key()
    }

    pub fn username(&self) -> &str {
        &self.keys.username
    }

    /// Groups we are a member of.
    pub fn groups(&self) -> Vec<GroupId> {
        self.groups.iter().filter(|(_, g)| matches!(g.rec.phase, Phase::Member)).map(|(id, _)| *id).collect()
    }

    /// Groups being created or joined.
    pub fn pending_groups(&self) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(_, g)| matches!(g.rec.phase, Phase::Creating { .. } | Phase::Joining { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn group_node(&self, group: &GroupId) -> Option<&[u8]> {
        self.groups.get(group).map(|g| g.rec.group_node.as_slice())
    }

    pub fn members(&self, group: &GroupId) -> Vec<MemberInfo> {
        match self.groups.get(group) {
            Some(g) if matches!(g.rec.phase, Phase::Member) => g.roster.clone(),
            _ => Vec::new(),
        }
    }

    pub fn epoch(&self, group: &GroupId) -> Option<u64> {
        self.member_mls(group).map(|m| m.epoch().as_u64())
    }

    pub fn meta(&self, group: &GroupId) -> Option<&GroupMeta> {
        self.groups.get(group).map(|g| &g.rec.meta)
    }

    pub fn name(&self, group: &GroupId) -> Option<&str> {
        self.meta(group).map(|m| m.name.as_str())
    }

    pub fn description(&self, group: &GroupId) -> Option<&str> {
        self.meta(group).map(|m| m.description.as_str())
    }

    pub fn is_admin(&self, group: &GroupId) -> bool {
        self.member_mls(group).is_some_and(|m| policy_of(m).is_admin(&self.member_key()))
    }

    pub fn is_open(&self, group: &GroupId) -> Option<bool> {
        self.member_mls(group).map(|m| policy_of(m).open)
    }

    /// Next log seq this member will apply.
    pub fn next_seq(&self, group: &GroupId) -> Option<u64> {
        self.groups.get(group).map(|g| g.rec.next_seq)
    }

    /// Members whose bloom filter shows they received our message `msg_id` (SDS
    /// acknowledgement; only our recent messages are tracked).
    pub fn acked_by(&self, group: &GroupId, msg_id: &MsgId) -> Option<Vec<PublicKey>> {
        let g = self.groups.get(group)?;
        g.rec.acks.iter().find(|(id, _)| id == msg_id).map(|(_, s)| s.iter().copied().collect())
    }

    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }

    /// True when nothing waits for an answer, a commit, a send or a repair.
    pub fn is_idle(&self) -> bool {
        // A routine sync of a group that is not behind does not count.
        let routine = |p: &Pending| {
            matches!(p.step, Step::Fetch { repair: false, .. })
                && self
                    .groups
                    .get(&p.group)
                    .is_some_and(|g| g.buffered.is_empty() && g.rec.known_next_seq <= g.rec.next_seq)
        };
        self.pending.values().all(routine)
            && self.groups.values().all(|g| {
                g.rec.outbox.is_empty()
                    && g.rec.uploads.is_empty()
                    && g.rec.missing.is_empty()
                    && g.buffered.is_empty()
                    && g.mls.as_ref().is_none_or(|m| !m.has_pending_proposals())
            })
    }

    /// A one-line summary of what is in flight (diagnostics).
    pub fn debug_summary(&self) -> String {
        let pending: Vec<String> = self.pending.values().map(|p| format!("{:?}@{}", p.step, p.retry_at_us)).collect();
        let groups: Vec<String> = self
            .groups
            .values()
            .map(|g| {
                format!(
                    "next_seq {} known {} buffered {:?} outbox {} uploads {} missing {} proposals {} subscribed {} catching_up {} gap_since {:?} failed {:?}",
                    g.rec.next_seq,
                    g.rec.known_next_seq,
                    g.buffered.keys().collect::<Vec<_>>(),
                    g.rec.outbox.len(),
                    g.rec.uploads.len(),
                    g.rec.missing.len(),
                    g.mls.as_ref().map_or(0, |m| m.pending_proposals().count()),
                    g.subscribed,
                    g.catching_up,
                    g.gap_since,
                    g.rec.failed,
                )
            })
            .collect();
        format!("pending {pending:?}; groups {groups:?}")
    }

    fn member_mls(&self, group: &GroupId) -> Option<&MlsGroup> {
        self.groups.get(group).filter(|g| matches!(g.rec.phase, Phase::Member)).and_then(|g| g.mls.as_ref())
    }

    // --- operations ---

    /// Creates a group hosted at `group_node`, with us as its only member and admin.
    /// `public` sends a signed advert (name, description, open) for the node's directory.
    pub fn create(
        &mut self,
        now: TimeUs,
        name: &str,
        description: &str,
        public: bool,
        open: bool,
        group_node: Vec<u8>,
    ) -> Result<GroupId, GroupError> {
        check_meta(name, description)?;
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        let me = self.member_key();
        let policy = GroupPolicy { admins: vec![me], open }.normalized();
        let cs = self.config.ciphersuite;
        let lifetime = match self.config.lifetime {
            LifetimeMode::WallClock { valid_for_s } => nmls::lifetime_from(now / 1_000_000, valid_for_s),
            LifetimeMode::Unbounded => nmls::unbounded_lifetime(),
        };
        let mls = MlsGroup::builder()
            .with_group_id(mls_id(&id))
            .ciphersuite(cs)
            .use_ratchet_tree_extension(true)
            .with_wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(self.config.max_past_epochs)
            .sender_ratchet_configuration(self.ratchet_config())
            .lifetime(lifetime)
            .with_group_context_extensions(required_extensions(&policy)?)
            .with_capabilities(leaf_capabilities(cs))
            .build(&self.provider, &self.signer, self.credential())
            .map_err(err)?;
        let group_info = mls_bytes(&mls.export_group_info(self.provider.crypto(), &self.signer, true).map_err(err)?)?;
        let advert = public.then(|| {
            let mut a = GroupAdvert {
                group_id: id,
                name: name.to_string(),
                description: description.to_string(),
                open,
                group_node: group_node.clone(),
                issued_at_us: now,
                admin_key: me,
                sig: Sig([0; 64]),
            };
            a.sig = identity::sign(&self.keys.installation, &identity::group_advert_bytes(&a));
            a
        });
        let meta = GroupMeta { name: name.to_string(), description: description.to_string(), version: 1 };
        let mut g =
            Group::new(id, group_node, Phase::Creating { group_info: group_info.clone(), advert: advert.clone() });
        g.rec.meta = meta;
        g.roster = roster_of(&mls, &mut self.identities);
        g.mls = Some(mls);
        self.groups.insert(id, g);
        self.request(now, id, Step::Create, Body::GroupCreate { group_id: id, group_info, advert });
        Ok(id)
    }

    /// An invitation to `group` (admins only), valid for `invite_ttl_us`. The host sends
    /// it to the invitee inside a sealed DM, with the group node and current meta.
    pub fn invite(&mut self, now: TimeUs, group: &GroupId) -> Result<InviteToken, GroupError> {
        if !self.is_admin(group) {
            return Err(if self.member_mls(group).is_some() { GroupError::NotAdmin } else { GroupError::NotMember });
        }
        let mut token_id = [0u8; 16];
        self.rng.fill_bytes(&mut token_id);
        let expires_at_us = now.saturating_add(self.config.invite_ttl_us);
        let admin_key = self.member_key();
        let sig = identity::sign(
            &self.keys.installation,
            &identity::invite_token_bytes(group, &token_id, expires_at_us, &admin_key),
        );
        Ok(InviteToken { group_id: *group, token_id, expires_at_us, admin_key, sig })
    }

    /// Joins `group_id` hosted at `group_node` by external commit: with `invite` for an
    /// invite-only group. `meta` is where the name and description start (from the DM
    /// invite or the directory advert) until a `SetMeta` arrives.
    pub fn join(
        &mut self,
        now: TimeUs,
        group_node: Vec<u8>,
        group_id: GroupId,
        invite: Option<InviteToken>,
        meta: Option<GroupMeta>,
    ) -> Result<(), GroupError> {
        if self.groups.contains_key(&group_id) {
            return Err(GroupError::AlreadyMember);
        }
        let backoff_us = self.config.retry_after_us;
        let mut g = Group::new(group_id, group_node, Phase::Joining { invite, backoff_us, retry_at_us: None });
        if let Some(meta) = meta {
            g.rec.meta = meta;
        }
        self.groups.insert(group_id, g);
        self.request(now, group_id, Step::Info, Body::GroupInfoRequest { group_id });
        Ok(())
    }

    /// Sends a text message; returns its id. It reaches the log once no proposal is
    /// pending (MLS forbids application messages between a proposal and its commit).
    pub fn send(&mut self, now: TimeUs, group: &GroupId, text: &str) -> Result<MsgId, GroupError> {
        if text.len() > sync::TEXT_BYTES_MAX {
            return Err(GroupError::TooLarge { what: "text", len: text.len(), max: sync::TEXT_BYTES_MAX });
        }
        self.send_body(now, group, SyncBody::Text { text: text.to_string() })
    }

    /// Renames the group (admins only): a `SetMeta` with the next version.
    pub fn rename(&mut self, now: TimeUs, group: &GroupId, name: &str) -> Result<MsgId, GroupError> {
        let meta = self.meta(group).cloned().ok_or(GroupError::UnknownGroup)?;
        self.set_meta(now, group, name, &meta.description)
    }

    /// Changes the description (admins only).
    pub fn describe(&mut self, now: TimeUs, group: &GroupId, description: &str) -> Result<MsgId, GroupError> {
        let meta = self.meta(group).cloned().ok_or(GroupError::UnknownGroup)?;
        self.set_meta(now, group, &meta.name, description)
    }

    fn set_meta(&mut self, now: TimeUs, group: &GroupId, name: &str, description: &str) -> Result<MsgId, GroupError> {
        check_meta(name, description)?;
        if !self.is_admin(group) {
            return Err(if self.member_mls(group).is_some() { GroupError::NotAdmin } else { GroupError::NotMember });
        }
        let version = self.groups[group].rec.meta.version + 1;
        self.send_body(
            now,
            group,
            SyncBody::SetMeta { name: name.to_string(), description: description.to_string(), version },
        )
    }

    /// Proposes removing the member with `member_key` (admins only).
    pub fn remove(&mut self, now: TimeUs, group: &GroupId, member_key: &PublicKey) -> Result<(), GroupError> {
        let mls = self.member_mls(group).ok_or(GroupError::NotMember)?;
        if !policy_of(mls).is_admin(&self.member_key()) {
            return Err(GroupError::NotAdmin);
        }
        if member_index_of(mls, member_key).is_none() {
            return Err(GroupError::UnknownMember);
        }
        if *member_key == self.member_key() {
            return self.leave(now, group);
        }
        if policy_of(mls).is_admin(member_key) {
            self.add_intent(now, group, Intent::Demote(*member_key));
        }
        self.add_intent(now, group, Intent::Remove(*member_key));
        Ok(())
    }

    /// Proposes our own removal; an admin commits it (`Removed` follows).
    pub fn leave(&mut self, now: TimeUs, group: &GroupId) -> Result<(), GroupError> {
        let mls = self.member_mls(group).ok_or(GroupError::NotMember)?;
        let policy = policy_of(mls);
        let me = self.member_key();
        let others = mls.members().count() > 1;
        if others && policy.is_admin(&me) && policy.admins.iter().all(|a| *a == me) {
            return Err(GroupError::LastAdmin);
        }
        if !others {
            // Alone: nobody could commit our removal. Forget the group.
            self.drop_group(group, true);
            self.events.push_back(GroupEvent::Removed { group: *group });
            return Ok(());
        }
        if policy.is_admin(&me) {
            self.add_intent(now, group, Intent::Demote(me));
        }
        self.add_intent(now, group, Intent::Leave);
        Ok(())
    }

    /// Proposes making `member_key` an admin (admins only).
    pub fn promote(&mut self, now: TimeUs, group: &GroupId, member_key: &PublicKey) -> Result<(), GroupError> {
        let mls = self.member_mls(group).ok_or(GroupError::NotMember)?;
        if !policy_of(mls).is_admin(&self.member_key()) {
            return Err(GroupError::NotAdmin);
        }
        if member_index_of(mls, member_key).is_none() {
            return Err(GroupError::UnknownMember);
        }
        self.add_intent(now, group, Intent::Promote(*member_key));
        Ok(())
    }

    /// Proposes dropping `member_key` from the admins (admins only; not the last one).
    pub fn demote(&mut self, now: TimeUs, group: &GroupId, member_key: &PublicKey) -> Result<(), GroupError> {
        let mls = self.member_mls(group).ok_or(GroupError::NotMember)?;
        let policy = policy_of(mls);
        if !policy.is_admin(&self.member_key()) {
            return Err(GroupError::NotAdmin);
        }
        if !policy.is_admin(member_key) {
            return Err(GroupError::UnknownMember);
        }
        if policy.admins.len() == 1 {
            return Err(GroupError::LastAdmin);
        }
        self.add_intent(now, group, Intent::Demote(*member_key));
        Ok(())
    }

    /// For tests of receivers: queues `message` as is (any sender, id or history).
    #[doc(hidden)]
    pub fn send_sync_unchecked(
        &mut self,
        now: TimeUs,
        group: &GroupId,
        message: SyncMessage,
    ) -> Result<(), GroupError> {
        let g = self.groups.get_mut(group).ok_or(GroupError::UnknownGroup)?;
        g.rec.sent += 1;
        let order = g.rec.sent;
        g.rec.outbox.push_back(OutMsg { msg_id: message.msg_id, plaintext: message.encode(), upload_id: None, order });
        self.pump(now, group);
        Ok(())
    }

    fn send_body(&mut self, now: TimeUs, group: &GroupId, body: SyncBody) -> Result<MsgId, GroupError> {
        let me = self.member_key();
        let outbox_max = self.config.outbox_max;
        let mut msg_id = [0u8; 16];
        self.rng.fill_bytes(&mut msg_id);
        let g = self.groups.get_mut(group).ok_or(GroupError::UnknownGroup)?;
        if !matches!(g.rec.phase, Phase::Member) {
            return Err(GroupError::NotMember);
        }
        if g.rec.outbox.len() >= outbox_max {
            return Err(GroupError::Backlog);
        }
        g.rec.lamport += 1;
        let message = SyncMessage {
            version: sync::SYNC_VERSION,
            lamport: g.rec.lamport,
            sender: me,
            msg_id,
            history: g.rec.history.iter().copied().collect(),
            bloom: BloomFilter::from_ids(g.rec.window.iter()).into_bytes(),
            body,
        };
        g.rec.sent += 1;
        let order = g.rec.sent;
        g.rec.outbox.push_back(OutMsg { msg_id, plaintext: message.encode(), upload_id: None, order });
        self.stats.app_messages += 1;
        self.pump(now, group);
        Ok(msg_id)
    }

    fn add_intent(&mut self, now: TimeUs, group: &GroupId, intent: Intent) {
        let g = self.groups.get_mut(group).expect("checked by caller");
        if !g.rec.intents.iter().any(|i| i.intent == intent) {
            g.rec.intents.push(IntentState { intent, proposed_epoch: None });
        }
        self.pump(now, group);
    }

    /// The transport to the group nodes was replaced (new sender tag): every group
    /// subscribes again from its next seq, and every request goes again now.
    pub fn reconnected(&mut self, now: TimeUs) {
        for p in self.pending.values_mut() {
            p.retry_at_us = now;
            p.backoff_us = self.config.retry_after_us / 2;
        }
        let ids: Vec<GroupId> = self.groups.keys().copied().collect();
        for id in ids {
            let g = self.groups.get_mut(&id).expect("listed");
            g.subscribed = false;
            if matches!(g.rec.phase, Phase::Member) {
                self.subscribe(now, id);
            }
        }
        self.handle_timeout(now);
    }

    /// Stops receiving a group's pushes on this tag (the group stays; `reconnected`
    /// subscribes again).
    pub fn unsubscribe(&mut self, group: &GroupId) {
        if let Some(g) = self.groups.get_mut(group) {
            g.subscribed = false;
            let (node, id) = (g.rec.group_node.clone(), *group);
            self.pending
                .retain(|_, p| !(p.group == id && matches!(p.step, Step::Subscribe | Step::SubscribeProof { .. })));
            self.emit(node, id, 0, Body::GroupUnsubscribe { group_id: id });
        }
    }

    // --- host interface ---

    pub fn poll_timeout(&self) -> Option<TimeUs> {
        let mut next = self.pending.values().map(|p| p.retry_at_us).min();
        let mut consider = |t: Option<TimeUs>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if self.resubscribe {
            consider(Some(0));
        }
        for g in self.groups.values() {
            consider(g.rec.missing.values().map(|m| m.deadline_us).min());
            if !g.catching_up && g.subscribed {
                consider(g.gap_since.map(|t| t + self.config.gap_wait_us));
                consider(Some(g.last_heard.saturating_add(self.config.sync_every_us)));
            }
            if let Phase::Joining { retry_at_us, .. } = g.rec.phase {
                consider(retry_at_us);
            }
            consider(self.next_commit_at(g));
        }
        next
    }

    pub fn handle_timeout(&mut self, now: TimeUs) {
        if std::mem::take(&mut self.resubscribe) {
            let ids: Vec<GroupId> = self.groups.keys().copied().collect();
            for id in ids {
                let g = self.groups.get_mut(&id).expect("listed");
                g.epoch_started_at = now;
                match g.rec.phase {
                    Phase::Member => self.subscribe(now, id),
                    Phase::Creating { ref group_info, ref advert } => {
                        let body =
                            Body::GroupCreate { group_id: id, group_info: group_info.clone(), advert: advert.clone() };
                        self.request(now, id, Step::Create, body);
                    }
                    _ => {}
                }
            }
        }
        // Requests overdue.
        let due: Vec<u64> = self.pending.iter().filter(|(_, p)| p.retry_at_us <= now).map(|(r, _)| *r).collect();
        for rid in due {
            let Some(mut p) = self.pending.remove(&rid) else { continue };
            let backoff = (p.backoff_us.saturating_mul(2)).min(self.config.retry_after_max_us);
            match p.step {
                Step::SubscribeProof { expires_at_us } if expires_at_us <= now + backoff => {
                    // The challenge expires before another retry could answer: start over.
                    self.request_with(now, p.group, Step::Subscribe, self.subscribe_body(&p.group), backoff);
                }
                _ => {
                    let Some(g) = self.groups.get(&p.group) else { continue };
                    p.retry_at_us = now + backoff;
                    p.backoff_us = backoff;
                    let node = g.rec.group_node.clone();
                    self.emit(node, p.group, rid, p.body.clone());
                    self.pending.insert(rid, p);
                }
            }
        }
        let ids: Vec<GroupId> = self.groups.keys().copied().collect();
        for id in ids {
            let Some(g) = self.groups.get_mut(&id) else { continue };
            // Joins waiting to try again.
            if let Phase::Joining { retry_at_us: Some(t), .. } = g.rec.phase
                && t <= now
            {
                if let Phase::Joining { retry_at_us, .. } = &mut g.rec.phase {
                    *retry_at_us = None;
                }
                self.request(now, id, Step::Info, Body::GroupInfoRequest { group_id: id });
                continue;
            }
            // Repairs out of time.
            let lost: Vec<(MsgId, MissingRef)> =
                g.rec.missing.iter().filter(|(_, m)| m.deadline_us <= now).map(|(k, m)| (*k, m.clone())).collect();
            for (msg_id, m) in lost {
                g.rec.missing.remove(&msg_id);
                self.events.push_back(GroupEvent::Lost { group: id, msg_id, sender: m.sender, seq: m.seq });
            }
            let g = self.groups.get_mut(&id).expect("present");
            let quiet = g.last_heard.saturating_add(self.config.sync_every_us) <= now;
            if !g.catching_up
                && g.subscribed
                && (quiet || g.gap_since.is_some_and(|t| t + self.config.gap_wait_us <= now))
            {
                g.last_heard = now;
                let from = g.rec.next_seq;
                self.fetch(now, id, from, false);
            }
            self.maybe_commit(now, &id);
            self.pump(now, &id);
        }
    }

    /// Envelopes for the group nodes, in order.
    pub fn drain_transmits(&mut self) -> Vec<GroupTransmit> {
        std::mem::take(&mut self.transmits)
    }

    pub fn poll_event(&mut self) -> Option<GroupEvent> {
        self.events.pop_front()
    }

    /// Feeds one frame received from `group_node`.
    pub fn handle_frame(&mut self, now: TimeUs, group_node: &[u8], bytes: &[u8]) {
        if let Ok(envelope) = nymstr_proto::codec::decode_frame(bytes) {
            self.handle_envelope(now, group_node, envelope);
        }
    }

    /// Feeds one envelope received from `group_node`. Answers are matched to requests by
    /// `request_id`; pushes by group id (and must come from the group's node, unless the
    /// host passes an empty `group_node`, meaning "unknown").
    pub fn handle_envelope(&mut self, now: TimeUs, group_node: &[u8], envelope: Envelope) {
        let rid = envelope.request_id;
        let step = (rid != 0).then(|| self.pending.get(&rid).map(|p| (p.group, p.step.clone()))).flatten();
        let about = step.as_ref().map(|(g, _)| *g).or(match &envelope.body {
            Body::GroupPush { group_id, .. } | Body::GroupEntries { group_id, .. } => Some(*group_id),
            _ => None,
        });
        if let Some(g) = about.and_then(|id| self.groups.get_mut(&id))
            && (group_node.is_empty() || g.rec.group_node == group_node)
        {
            g.last_heard = now;
        }
        match envelope.body {
            Body::GroupPush { group_id, entry } if self.is_from_group_node(&group_id, group_node) => {
                self.on_entry(now, &group_id, entry);
                self.after_entries(now, &group_id);
            }
            Body::Challenge { nonce, expires_at_us } => {
                let Some((group, Step::Subscribe)) = step else { return };
                self.pending.remove(&rid);
                let sig = identity::sign(&self.keys.installation, &identity::group_subscribe_bytes(&group, &nonce));
                self.request(
                    now,
                    group,
                    Step::SubscribeProof { expires_at_us },
                    Body::GroupSubscribeProof { group_id: group, nonce, sig },
                );
            }
            Body::GroupSubscribed { group_id, next_seq, .. } => {
                if !matches!(step, Some((g, Step::SubscribeProof { .. })) if g == group_id) {
                    return;
                }
                self.pending.remove(&rid);
                let Some(g) = self.groups.get_mut(&group_id) else { return };
                g.subscribed = true;
                g.rec.known_next_seq = g.rec.known_next_seq.max(next_seq);
                self.after_entries(now, &group_id);
            }
            Body::GroupCreated { group_id, .. } => {
                if !matches!(step, Some((g, Step::Create)) if g == group_id) {
                    return;
                }
                self.pending.remove(&rid);
                self.on_created(now, &group_id);
            }
            Body::GroupInfoReply { group_id, open, group_info, .. } => {
                if !matches!(step, Some((g, Step::Info)) if g == group_id) {
                    return;
                }
                self.pending.remove(&rid);
                self.on_group_info(now, &group_id, open, &group_info);
            }
            Body::GroupUploadAck { group_id, upload_id, seq, epoch } => {
                if !matches!(step, Some((g, Step::Upload(u))) if g == group_id && u == upload_id) {
                    return;
                }
                self.pending.remove(&rid);
                self.on_upload_ack(now, &group_id, &upload_id, seq, epoch);
            }
            Body::GroupEntries { group_id, entries, next_seq } => {
                let fetch = match step {
                    Some((g, Step::Fetch { from_seq, repair })) if g == group_id => {
                        self.pending.remove(&rid);
                        Some((from_seq, repair))
                    }
                    _ if self.is_from_group_node(&group_id, group_node) => None,
                    _ => return,
                };
                self.on_entries(now, &group_id, entries, next_seq, fetch);
            }
            Body::Error { code, detail } => {
                let Some((group, step)) = step else { return };
                self.pending.remove(&rid);
                self.on_error(now, &group, step, code, detail);
            }
            _ => {}
        }
    }

    fn is_from_group_node(&self, group: &GroupId, group_node: &[u8]) -> bool {
        self.groups.get(group).is_some_and(|g| group_node.is_empty() || g.rec.group_node == group_node)
    }

    // --- requests ---

    fn credential(&self) -> CredentialWithKey {
        let id = MemberIdentity { username: self.keys.username.clone(), cert: self.keys.cert.clone() };
        CredentialWithKey { credential: id.credential(), signature_key: self.member_key().to_vec().into() }
    }

    fn emit(&mut self, group_node: Vec<u8>, group: GroupId, request_id: u64, body: Body) {
        self.transmits.push(GroupTransmit { group_node, group, envelope: Envelope { request_id, body } });
    }

    fn request(&mut self, now: TimeUs, group: GroupId, step: Step, body: Body) {
        let backoff = self.config.retry_after_us;
        self.request_with(now, group, step, body, backoff);
    }

    fn request_with(&mut self, now: TimeUs, group: GroupId, step: Step, body: Body, backoff_us: TimeUs) {
        let Some(g) = self.groups.get(&group) else { return };
        let node = g.rec.group_node.clone();
        let rid = self.next_rid;
        self.next_rid += 1;
        self.pending
            .insert(rid, Pending { group, step, body: body.clone(), retry_at_us: now + backoff_us, backoff_us });
        self.emit(node, group, rid, body);
    }

    /// Queues a request to go out at the first retry (`retry_after_us` from now), without
    /// sending it now: the answer to a `Busy` or `Internal`.
    fn defer(&mut self, now: TimeUs, group: GroupId, step: Step, body: Body) {
        let backoff_us = self.config.retry_after_us;
        let rid = self.next_rid;
        self.next_rid += 1;
        self.pending.insert(rid, Pending { group, step, body, retry_at_us: now + backoff_us, backoff_us });
    }

    fn subscribe_body(&self, group: &GroupId) -> Body {
        let from_seq = self.groups.get(group).map_or(1, |g| g.rec.next_seq);
        Body::GroupSubscribe { group_id: *group, member_key: self.member_key(), from_seq }
    }

    fn subscribe(&mut self, now: TimeUs, group: GroupId) {
        self.pending
            .retain(|_, p| !(p.group == group && matches!(p.step, Step::Subscribe | Step::SubscribeProof { .. })));
        let body = self.subscribe_body(&group);
        self.request(now, group, Step::Subscribe, body);
    }

    fn fetch(&mut self, now: TimeUs, group: GroupId, from_seq: u64, repair: bool) {
        if !repair {
            let Some(g) = self.groups.get_mut(&group) else { return };
            if g.catching_up {
                return;
            }
            g.catching_up = true;
        } else if self
            .pending
            .values()
            .any(|p| p.group == group && matches!(p.step, Step::Fetch { from_seq: f, repair: true } if f == from_seq))
        {
            return;
        }
        let max = if repair { 1 } else { GROUP_FETCH_MAX as u32 };
        self.request(now, group, Step::Fetch { from_seq, repair }, Body::GroupFetch { group_id: group, from_seq, max });
    }

    fn upload(&mut self, now: TimeUs, group: &GroupId, up: Upload) {
        let mut upload_id = [0u8; 16];
        self.rng.fill_bytes(&mut upload_id);
        self.upload_with_id(now, group, upload_id, up);
    }

    fn upload_with_id(&mut self, now: TimeUs, group: &GroupId, upload_id: UploadId, up: Upload) {
        let body = Body::GroupUpload {
            group_id: *group,
            upload_id,
            mls: up.mls.clone(),
            group_info: up.group_info.clone(),
            invite: up.invite.clone(),
        };
        let Some(g) = self.groups.get_mut(group) else { return };
        let too_large = upload_too_large(&up, &body);
        g.rec.uploads.insert(upload_id, up);
        self.pending.retain(|_, p| !matches!(p.step, Step::Upload(u) if u == upload_id));
        if let Some(detail) = too_large {
            // The steward would refuse it (or the frame would not even encode): refused
            // here, as it would be there, and never sent.
            self.on_upload_error(now, group, upload_id, ErrorCode::PayloadTooLarge, detail);
            return;
        }
        self.request(now, *group, Step::Upload(upload_id), body);
    }

    fn forget_upload(&mut self, group: &GroupId, upload_id: &UploadId) -> Option<Upload> {
        self.pending.retain(|_, p| !matches!(p.step, Step::Upload(u) if u == *upload_id));
        self.groups.get_mut(group)?.rec.uploads.remove(upload_id)
    }

    fn drop_group(&mut self, group: &GroupId, unsubscribe: bool) {
        self.pending.retain(|_, p| p.group != *group);
        if let Some(mut g) = self.groups.remove(group) {
            if unsubscribe {
                self.emit(g.rec.group_node.clone(), *group, 0, Body::GroupUnsubscribe { group_id: *group });
            }
            if let Some(m) = g.mls.as_mut() {
                let _ = m.delete(self.provider.storage());
            }
        }
    }

    fn error_event(&mut self, group: GroupId, code: ErrorCode, detail: impl Into<String>) {
        self.events.push_back(GroupEvent::Error { group, code, detail: detail.into() });
    }

    // --- answers ---

    fn on_created(&mut self, now: TimeUs, group: &GroupId) {
        let Some(g) = self.groups.get_mut(group) else { return };
        if !matches!(g.rec.phase, Phase::Creating { .. }) {
            return;
        }
        g.rec.phase = Phase::Member;
        g.rec.next_seq = 1;
        g.rec.join_seq = 0;
        g.rec.seen_floor = 1;
        g.epoch_started_at = now;
        self.events.push_back(GroupEvent::Created { group: *group });
        self.subscribe(now, *group);
    }

    fn on_group_info(&mut self, now: TimeUs, group: &GroupId, open: bool, group_info: &[u8]) {
        let Some(g) = self.groups.get(group) else { return };
        let Phase::Joining { invite, .. } = &g.rec.phase else { return };
        let invite = invite.clone();
        if !open && invite.is_none() {
            self.error_event(*group, ErrorCode::InviteRequired, "the group is invite-only");
            self.drop_group(group, false);
            return;
        }
        match self.external_commit(group_info) {
            Ok((mls, commit, new_info)) => {
                let g = self.groups.get_mut(group).expect("present");
                g.mls = Some(mls);
                let up = Upload {
                    kind: UploadKind::Join,
                    mls: commit,
                    group_info: new_info,
                    invite,
                    acked_seq: None,
                    order: 0,
                    intent: None,
                };
                self.upload(now, group, up);
            }
            Err(e) => {
                self.error_event(*group, ErrorCode::BadMlsMessage, format!("cannot join: {e}"));
                self.drop_group(group, false);
            }
        }
    }

    fn external_commit(&self, group_info: &[u8]) -> Result<(MlsGroup, Vec<u8>, Vec<u8>), GroupError> {
        let msg = MlsMessageIn::tls_deserialize_exact_bytes(group_info).map_err(err)?;
        let MlsMessageBodyIn::GroupInfo(vgi) = msg.extract() else {
            return Err(GroupError::Mls("not a GroupInfo".into()));
        };
        let join_config = self.join_config();
        let (mls, bundle) = MlsGroup::external_commit_builder()
            .with_config(join_config)
            .build_group(&self.provider, vgi, self.credential())
            .map_err(err)?
            .leaf_node_parameters(
                LeafNodeParameters::builder().with_capabilities(leaf_capabilities(self.config.ciphersuite)).build(),
            )
            .load_psks(self.provider.storage())
            .map_err(err)?
            .build(self.provider.rand(), self.provider.crypto(), &self.signer, |_| true)
            .map_err(err)?
            .finalize(&self.provider)
            .map_err(err)?;
        let (commit, _, info) = bundle.into_messages();
        let info = info.ok_or_else(|| GroupError::Mls("external commit without GroupInfo".into()))?;
        Ok((mls, mls_bytes(&commit)?, mls_bytes(&info)?))
    }

    fn ratchet_config(&self) -> SenderRatchetConfiguration {
        SenderRatchetConfiguration::new(self.config.out_of_order_tolerance, 1_000)
    }

    fn join_config(&self) -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(self.config.max_past_epochs)
            .sender_ratchet_configuration(self.ratchet_config())
            .build()
    }

    fn on_upload_ack(&mut self, now: TimeUs, group: &GroupId, upload_id: &UploadId, seq: u64, epoch: u64) {
        let Some(g) = self.groups.get_mut(group) else { return };
        let Some(up) = g.rec.uploads.get_mut(upload_id) else { return };
        up.acked_seq = Some(seq);
        match up.kind {
            UploadKind::Join => {
                self.forget_upload(group, upload_id);
                let g = self.groups.get_mut(group).expect("present");
                let Some(mls) = g.mls.as_mut() else { return };
                if let Err(e) = mls.merge_pending_commit(&self.provider) {
                    self.error_event(*group, ErrorCode::BadMlsMessage, format!("merging our join: {e:?}"));
                    self.drop_group(group, false);
                    return;
                }
                let epoch = mls.epoch().as_u64();
                g.roster = roster_of(mls, &mut self.identities);
                g.rec.phase = Phase::Member;
                g.rec.next_seq = seq + 1;
                g.rec.join_seq = seq;
                g.rec.join_epoch = epoch;
                g.rec.seen_floor = seq + 1;
                g.rec.known_next_seq = g.rec.known_next_seq.max(seq + 1);
                g.epoch_started_at = now;
                g.proposals_since = None;
                self.events.push_back(GroupEvent::Joined { group: *group, epoch });
                self.events.push_back(GroupEvent::MembersChanged { group: *group });
                self.subscribe(now, *group);
            }
            UploadKind::App { .. } | UploadKind::Proposal | UploadKind::Commit => {
                // The steward does not push our own upload back to us: its entry is what
                // we sent, at the acknowledged seq, applied when its turn comes.
                if seq >= g.rec.next_seq {
                    let entry = GroupEntry { seq, epoch, mls: up.mls.clone() };
                    g.rec.known_next_seq = g.rec.known_next_seq.max(seq + 1);
                    g.buffered.insert(seq, entry);
                    self.after_entries(now, group);
                } else if matches!(up.kind, UploadKind::App { .. }) {
                    // Applied before this ack without being recognised (re-encrypted after
                    // a restore): it is ours.
                    let up = self.forget_upload(group, upload_id).expect("present");
                    self.own_app_applied(group, up, seq);
                }
            }
        }
    }

    /// Entries from a fetch (`fetch` = its `from_seq` and whether it was a repair) or sent
    /// unsolicited after a subscription (from our next seq). Entries come in seq order;
    /// a seq the reply skips was pruned by the steward (only application entries are).
    fn on_entries(
        &mut self,
        now: TimeUs,
        group: &GroupId,
        entries: Vec<GroupEntry>,
        next_seq: u64,
        fetch: Option<(u64, bool)>,
    ) {
        let Some(g) = self.groups.get_mut(group) else { return };
        if !matches!(g.rec.phase, Phase::Member) {
            return;
        }
        g.rec.known_next_seq = g.rec.known_next_seq.max(next_seq);
        match fetch {
            Some((from_seq, true)) => {
                // A repair: if the reply skips the seq we asked for, it is gone for good.
                let gone = entries.first().map_or(next_seq > from_seq, |e| e.seq > from_seq);
                if gone {
                    let lost: Vec<(MsgId, MissingRef)> =
                        g.rec.missing.iter().filter(|(_, m)| m.seq == from_seq).map(|(k, m)| (*k, m.clone())).collect();
                    for (msg_id, m) in lost {
                        g.rec.missing.remove(&msg_id);
                        self.events.push_back(GroupEvent::Lost { group: *group, msg_id, sender: m.sender, seq: m.seq });
                    }
                }
            }
            _ => {
                if matches!(fetch, Some((_, false))) {
                    g.catching_up = false;
                    // Still behind after this reply: the next catch-up waits its turn.
                    g.gap_since = Some(now);
                }
                let mut expect = fetch.map_or(g.rec.next_seq, |(f, _)| f);
                let upto = entries.last().map_or(next_seq, |e| e.seq);
                let mut holes = Vec::new();
                for seq in entries.iter().map(|e| e.seq).chain((upto == next_seq).then_some(next_seq)) {
                    if seq > expect {
                        holes.push((expect, seq));
                    }
                    expect = expect.max(seq + 1);
                }
                for (from, to) in holes {
                    let from = from.max(g.rec.next_seq);
                    if from >= to {
                        continue;
                    }
                    // Not in the buffer either (a push may have raced the reply).
                    if (from..to).any(|s| g.buffered.contains_key(&s)) {
                        continue;
                    }
                    g.rec.pruned.insert(from, to);
                    self.events.push_back(GroupEvent::HistoryGap { group: *group, from_seq: from, to_seq: to });
                }
            }
        }
        for e in entries {
            self.on_entry(now, group, e);
        }
        self.after_entries(now, group);
        // More to catch up on.
        if let Some(g) = self.groups.get(group)
            && !matches!(fetch, Some((_, true)))
            && g.rec.known_next_seq > g.rec.next_seq
            && !g.buffered.contains_key(&g.rec.next_seq)
            && g.subscribed
        {
            let from = g.rec.next_seq;
            self.fetch(now, *group, from, false);
        }
    }

    fn on_error(&mut self, now: TimeUs, group: &GroupId, step: Step, code: ErrorCode, detail: String) {
        match step {
            Step::Create => {
                if matches!(code, ErrorCode::Busy | ErrorCode::Internal) {
                    if let Some(Phase::Creating { group_info, advert }) =
                        self.groups.get(group).map(|g| g.rec.phase.clone())
                    {
                        let body = Body::GroupCreate { group_id: *group, group_info, advert };
                        self.defer(now, *group, Step::Create, body);
                    }
                } else if code == ErrorCode::GroupExists {
                    // Our own earlier attempt (ids are random): created.
                    self.on_created(now, group);
                } else {
                    self.error_event(*group, code, detail);
                    self.drop_group(group, false);
                }
            }
            Step::Info => {
                if matches!(code, ErrorCode::Busy | ErrorCode::Internal) {
                    self.retry_join(now, group);
                } else {
                    self.error_event(*group, code, detail);
                    self.drop_group(group, false);
                }
            }
            Step::Subscribe | Step::SubscribeProof { .. } => match code {
                // A lost or expired challenge: start over at once.
                ErrorCode::UnknownChallenge | ErrorCode::ChallengeExpired => {
                    let backoff = self.config.retry_after_us;
                    let body = self.subscribe_body(group);
                    self.request_with(now, *group, Step::Subscribe, body, backoff);
                }
                // The steward is full or failing: ask again after a pause, not at once.
                ErrorCode::Busy | ErrorCode::Internal => {
                    let body = self.subscribe_body(group);
                    self.defer(now, *group, Step::Subscribe, body);
                }
                ErrorCode::NotMember => self.removed(group),
                _ => self.error_event(*group, code, detail),
            },
            Step::Fetch { repair, .. } => {
                if !repair && let Some(g) = self.groups.get_mut(group) {
                    g.catching_up = false;
                }
                if code == ErrorCode::NotSubscribed {
                    if let Some(g) = self.groups.get_mut(group) {
                        g.subscribed = false;
                    }
                    self.subscribe(now, *group);
                } else if code == ErrorCode::NotMember {
                    self.removed(group);
                } else if !matches!(code, ErrorCode::Busy | ErrorCode::Internal) {
                    self.error_event(*group, code, detail);
                }
            }
            Step::Upload(upload_id) => self.on_upload_error(now, group, upload_id, code, detail),
        }
    }

    fn on_upload_error(&mut self, now: TimeUs, group: &GroupId, upload_id: UploadId, code: ErrorCode, detail: String) {
        let Some(up) = self.forget_upload(group, &upload_id) else { return };
        if matches!(code, ErrorCode::Busy | ErrorCode::Internal) {
            // Same upload again after a pause (the steward dedupes by upload id).
            let backoff = self.config.retry_after_us;
            let body = Body::GroupUpload {
                group_id: *group,
                upload_id,
                mls: up.mls.clone(),
                group_info: up.group_info.clone(),
                invite: up.invite.clone(),
            };
            if let Some(g) = self.groups.get_mut(group) {
                g.rec.uploads.insert(upload_id, up);
            }
            self.pending.insert(
                self.next_rid,
                Pending {
                    group: *group,
                    step: Step::Upload(upload_id),
                    body,
                    retry_at_us: now + backoff,
                    backoff_us: backoff,
                },
            );
            self.next_rid += 1;
            return;
        }
        let Some(g) = self.groups.get_mut(group) else { return };
        match up.kind {
            UploadKind::Join => {
                if let Some(mut m) = g.mls.take() {
                    let _ = m.delete(self.provider.storage());
                }
                if matches!(code, ErrorCode::WrongEpoch | ErrorCode::NotSteward) {
                    self.retry_join(now, group);
                } else {
                    self.error_event(*group, code, detail);
                    self.drop_group(group, false);
                }
            }
            UploadKind::App { msg_id, plaintext } => match code {
                ErrorCode::WrongEpoch | ErrorCode::NotSubscribed => {
                    // Encrypt again once we have caught up (or subscribed).
                    g.rec.outbox.push_front(OutMsg { msg_id, plaintext, upload_id: Some(upload_id), order: up.order });
                    self.stats.app_reencryptions += 1;
                    if code == ErrorCode::NotSubscribed {
                        g.subscribed = false;
                        self.subscribe(now, *group);
                    } else {
                        let from = g.rec.next_seq;
                        self.fetch(now, *group, from, false);
                    }
                }
                ErrorCode::NotMember => {
                    // Probably removed by a commit we have not applied yet: catch up.
                    let from = g.rec.next_seq;
                    self.fetch(now, *group, from, false);
                }
                _ => self.error_event(*group, code, format!("message {msg_id:02x?} refused: {detail}")),
            },
            UploadKind::Proposal => {
                // Only the intent this proposal was for is affected.
                let idx = up.intent.as_ref().and_then(|want| g.rec.intents.iter().position(|i| i.intent == *want));
                if let Some(i) = idx {
                    g.rec.intents[i].proposed_epoch = None;
                }
                match code {
                    ErrorCode::WrongEpoch => {
                        let from = g.rec.next_seq;
                        self.fetch(now, *group, from, false);
                    }
                    ErrorCode::NotSubscribed => {
                        g.subscribed = false;
                        self.subscribe(now, *group);
                    }
                    _ => {
                        // Refused for good: forget that intent (the others stay).
                        if let Some(i) = idx {
                            g.rec.intents.remove(i);
                        }
                        self.error_event(*group, code, format!("proposal refused: {detail}"));
                    }
                }
            }
            UploadKind::Commit => {
                if let Some(m) = g.mls.as_mut() {
                    let _ = m.clear_pending_commit(self.provider.storage());
                }
                // Not again before the next round (a refused commit must not spin).
                g.commit_hold_until = now + self.config.commit_timeout_us;
                match code {
                    ErrorCode::WrongEpoch | ErrorCode::NotSteward => {
                        let from = g.rec.next_seq;
                        self.fetch(now, *group, from, false);
                    }
                    _ => self.error_event(*group, code, format!("commit refused: {detail}")),
                }
            }
        }
        self.pump(now, group);
    }

    /// The steward says we are no longer a member (we missed the commit that removed us).
    fn removed(&mut self, group: &GroupId) {
        if self.groups.get(group).is_some_and(|g| matches!(g.rec.phase, Phase::Member)) {
            self.drop_group(group, true);
            self.events.push_back(GroupEvent::Removed { group: *group });
        }
    }

    fn retry_join(&mut self, now: TimeUs, group: &GroupId) {
        let max = self.config.retry_after_max_us;
        let Some(g) = self.groups.get_mut(group) else { return };
        if let Phase::Joining { backoff_us, retry_at_us, .. } = &mut g.rec.phase {
            *retry_at_us = Some(now + *backoff_us);
            *backoff_us = (*backoff_us * 2).min(max);
        }
    }

    // --- the log ---

    /// Takes one entry (pushed or fetched): applies it when its turn comes.
    fn on_entry(&mut self, now: TimeUs, group: &GroupId, entry: GroupEntry) {
        let Some(g) = self.groups.get_mut(group) else { return };
        if !matches!(g.rec.phase, Phase::Member) {
            return;
        }
        g.rec.known_next_seq = g.rec.known_next_seq.max(entry.seq + 1);
        if entry.seq < g.rec.next_seq {
            self.late_entry(now, group, entry);
        } else {
            g.buffered.insert(entry.seq, entry);
        }
    }

    /// Applies buffered entries in order, notes gaps, and sends what may now go.
    fn after_entries(&mut self, now: TimeUs, group: &GroupId) {
        loop {
            let Some(g) = self.groups.get_mut(group) else { return };
            if !matches!(g.rec.phase, Phase::Member) {
                return;
            }
            if let Some((_, to)) = g.rec.pruned.range(..=g.rec.next_seq).next_back().map(|(f, t)| (*f, *t))
                && to > g.rec.next_seq
            {
                g.rec.next_seq = to;
                continue;
            }
            let Some(entry) = g.buffered.remove(&g.rec.next_seq) else { break };
            g.rec.next_seq += 1;
            self.apply(now, group, entry);
        }
        let Some(g) = self.groups.get_mut(group) else { return };
        let behind = !g.buffered.is_empty() || g.rec.known_next_seq > g.rec.next_seq;
        if !behind {
            g.gap_since = None;
        } else if g.gap_since.is_none() {
            g.gap_since = Some(now);
        }
        self.maybe_commit(now, group);
        self.pump(now, group);
    }

    fn apply(&mut self, now: TimeUs, group: &GroupId, entry: GroupEntry) {
        let g = self.groups.get_mut(group).expect("present");
        // Ours?
        let own =
            g.rec.uploads.iter().find(|(_, u)| u.mls == entry.mls || u.acked_seq == Some(entry.seq)).map(|(id, _)| *id);
        if let Some(upload_id) = own {
            let up = self.forget_upload(group, &upload_id).expect("present");
            match up.kind {
                UploadKind::App { msg_id, ref plaintext } => {
                    // Overtaken by a commit (the steward accepts the previous epoch): who
                    // joined in it cannot read this copy, so it goes again in the current
                    // epoch (members who read the first copy drop the second by its id).
                    let g = self.groups.get_mut(group).expect("present");
                    if g.mls.as_ref().is_some_and(|m| m.epoch().as_u64() > entry.epoch) {
                        g.rec.outbox.push_front(OutMsg {
                            msg_id,
                            plaintext: plaintext.clone(),
                            upload_id: None,
                            order: up.order,
                        });
                        self.stats.app_reencryptions += 1;
                    }
                    self.own_app_applied(group, up, entry.seq);
                }
                UploadKind::Commit => {
                    let g = self.groups.get_mut(group).expect("present");
                    let Some(mls) = g.mls.as_mut() else { return };
                    let before = g.roster.clone();
                    let refs = pending_refs(mls);
                    if let Err(e) = mls.merge_pending_commit(&self.provider) {
                        self.error_event(*group, ErrorCode::BadMlsMessage, format!("merging our commit: {e:?}"));
                        return;
                    }
                    purge_proposals(&self.provider, mls, refs);
                    self.on_new_epoch(now, group, before);
                }
                UploadKind::Proposal => self.process(now, group, entry),
                UploadKind::Join => {}
            }
            return;
        }
        self.process(now, group, entry);
    }

    /// Runs one log entry through MLS.
    fn process(&mut self, now: TimeUs, group: &GroupId, entry: GroupEntry) {
        let g = self.groups.get_mut(group).expect("present");
        if entry.epoch < g.rec.join_epoch {
            // Sent before we joined, logged after: not for us (and it cannot decrypt).
            // The sender re-sends it in the new epoch (overtaken message).
            g.rec.pre_join.insert(entry.seq);
            while g.rec.pre_join.len() > 64 {
                g.rec.pre_join.pop_first();
            }
            return;
        }
        let Some(mls) = g.mls.as_mut() else { return };
        let message =
            MlsMessageIn::tls_deserialize_exact_bytes(&entry.mls).ok().and_then(|m| m.try_into_protocol_message().ok());
        let Some(message) = message else {
            self.stats.unprocessable += 1;
            g.rec.failed.insert(entry.seq);
            return;
        };
        let processed = match mls.process_message(&self.provider, message) {
            Ok(p) => p,
            Err(_) => {
                self.stats.unprocessable += 1;
                g.rec.failed.insert(entry.seq);
                return;
            }
        };
        let sender = processed.sender().clone();
        let app = matches!(processed.content(), ProcessedMessageContent::ApplicationMessage(_));
        let from = if app { sender_of(mls, &processed, &g.roster, &mut self.identities) } else { None };
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                if !matches!(sender, Sender::Member(_)) {
                    return;
                }
                let Some((key, username)) = from else { return };
                self.on_app(now, group, entry.seq, key, username, &app.into_bytes());
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                let stored = mls.store_pending_proposal(self.provider.storage(), *p).is_ok();
                if stored && g.proposals_since.is_none() {
                    g.proposals_since = Some(now);
                }
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => self.on_commit(now, group, *staged),
            _ => {}
        }
    }

    fn on_commit(&mut self, now: TimeUs, group: &GroupId, staged: StagedCommit) {
        let g = self.groups.get_mut(group).expect("present");
        let Some(mls) = g.mls.as_mut() else { return };
        let removed = staged.self_removed();
        let before = g.roster.clone();
        let refs = pending_refs(mls);
        if let Err(e) = mls.merge_staged_commit(&self.provider, staged) {
            self.error_event(*group, ErrorCode::BadMlsMessage, format!("merging a commit: {e:?}"));
            return;
        }
        purge_proposals(&self.provider, mls, refs);
        if removed {
            self.drop_group(group, true);
            self.events.push_back(GroupEvent::Removed { group: *group });
            return;
        }
        self.on_new_epoch(now, group, before);
    }

    fn on_new_epoch(&mut self, now: TimeUs, group: &GroupId, before: Vec<MemberInfo>) {
        let me = self.member_key();
        let g = self.groups.get_mut(group).expect("present");
        let Some(mls) = g.mls.as_ref() else { return };
        let epoch = mls.epoch().as_u64();
        let after = roster_of(mls, &mut self.identities);
        g.roster = after.clone();
        let policy = policy_of(mls);
        g.epoch_started_at = now;
        g.proposals_since = None;
        // Intents: fulfilled ones go; the others are proposed again (`pump`).
        g.rec.intents.retain(|i| match &i.intent {
            Intent::Remove(k) => member_index_of(mls, k).is_some(),
            Intent::Leave => true,
            Intent::Promote(k) => member_index_of(mls, k).is_some() && !policy.is_admin(k),
            Intent::Demote(k) => policy.is_admin(k),
        });
        let joined = after.iter().any(|m| !before.iter().any(|b| b.key == m.key));
        let resend_meta = joined
            && policy.is_admin(&me)
            && nmls::designated_steward(group, epoch, 0, &policy.admins) == Some(me)
            && g.rec.meta.version > 0;
        let meta = g.rec.meta.clone();
        for m in after.iter().filter(|m| !m.verified) {
            self.events.push_back(GroupEvent::Error {
                group: *group,
                code: ErrorCode::BadCertificate,
                detail: format!("member {:02x?} has no valid installation credential", &m.key[..4]),
            });
        }
        self.events.push_back(GroupEvent::EpochChanged { group: *group, epoch });
        if before != after {
            self.events.push_back(GroupEvent::MembersChanged { group: *group });
        }
        if resend_meta {
            let _ = self.send_body(
                now,
                group,
                SyncBody::SetMeta { name: meta.name, description: meta.description, version: meta.version },
            );
        }
    }

    fn own_app_applied(&mut self, group: &GroupId, up: Upload, seq: u64) {
        let UploadKind::App { plaintext, .. } = up.kind else { return };
        let Ok(m) = SyncMessage::decode(&plaintext) else { return };
        let me = self.member_key();
        let username = self.keys.username.clone();
        self.deliver(group, seq, me, username, m, true);
    }

    fn on_app(&mut self, now: TimeUs, group: &GroupId, seq: u64, sender: PublicKey, username: String, bytes: &[u8]) {
        let Ok(m) = SyncMessage::decode(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        if m.sender != sender {
            self.stats.wrong_sender += 1;
            return;
        }
        let history = m.history.clone();
        if !self.deliver(group, seq, sender, username, m, false) {
            return;
        }
        // Causal check: what the sender saw and we did not.
        let repair_timeout = self.config.repair_timeout_us;
        let g = self.groups.get_mut(group).expect("present");
        let mut fetches = Vec::new();
        for r in history {
            if r.seq > g.rec.join_seq
                && r.seq < seq
                && !g.rec.pre_join.contains(&r.seq)
                && r.seq >= g.rec.seen_floor
                && !g.rec.seen.contains_key(&r.msg_id)
                && !g.rec.missing.contains_key(&r.msg_id)
            {
                g.rec
                    .missing
                    .insert(r.msg_id, MissingRef { sender: r.sender, seq: r.seq, deadline_us: now + repair_timeout });
                self.events.push_back(GroupEvent::Missing {
                    group: *group,
                    msg_id: r.msg_id,
                    sender: r.sender,
                    seq: r.seq,
                });
                fetches.push(r.seq);
            }
        }
        for s in fetches {
            self.fetch(now, *group, s, true);
        }
    }

    /// Records and reports a decrypted (or own) application message; false if a duplicate.
    fn deliver(
        &mut self,
        group: &GroupId,
        seq: u64,
        sender: PublicKey,
        username: String,
        m: SyncMessage,
        own: bool,
    ) -> bool {
        let seen_max = self.config.seen_max;
        let g = self.groups.get_mut(group).expect("present");
        if g.rec.seen.contains_key(&m.msg_id) {
            return false;
        }
        g.rec.lamport = g.rec.lamport.max(m.lamport);
        g.rec.seen.insert(m.msg_id, seq);
        g.rec.seen_order.push_back((seq, m.msg_id));
        while g.rec.seen_order.len() > seen_max {
            if let Some((s, id)) = g.rec.seen_order.pop_front() {
                g.rec.seen.remove(&id);
                g.rec.seen_floor = g.rec.seen_floor.max(s + 1);
            }
        }
        g.rec.history.push_back(CausalRef { msg_id: m.msg_id, sender, seq });
        while g.rec.history.len() > HISTORY_MAX {
            g.rec.history.pop_front();
        }
        g.rec.window.push_back(m.msg_id);
        while g.rec.window.len() > sync::BLOOM_WINDOW {
            g.rec.window.pop_front();
        }
        g.rec.failed.remove(&seq);
        if own {
            g.rec.acks.push_back((m.msg_id, BTreeSet::new()));
            while g.rec.acks.len() > ACKS_TRACKED {
                g.rec.acks.pop_front();
            }
        } else if let Some(filter) = m.filter() {
            for (id, by) in g.rec.acks.iter_mut() {
                if filter.contains(id) {
                    by.insert(sender);
                }
            }
        }
        let repaired = g.rec.missing.remove(&m.msg_id);
        match m.body {
            SyncBody::Text { text } => {
                self.events.push_back(GroupEvent::Message {
                    group: *group,
                    msg_id: m.msg_id,
                    sender_username: username,
                    sender_key: sender,
                    text,
                    lamport: m.lamport,
                    seq,
                });
            }
            SyncBody::SetMeta { name, description, version } => {
                // The same rule for everyone, our own messages included (F4): an admin when the
                // message is applied, else ignored by every member.
                let admin = g.mls.as_ref().is_some_and(|mls| policy_of(mls).is_admin(&sender));
                if !admin {
                    self.stats.meta_not_admin += 1;
                } else if version >= g.rec.meta.version {
                    let changed = g.rec.meta.name != name || g.rec.meta.description != description;
                    g.rec.meta = GroupMeta { name: name.clone(), description: description.clone(), version };
                    if changed {
                        self.events.push_back(GroupEvent::MetaChanged { group: *group, name, description });
                    }
                }
            }
        }
        if let Some(r) = repaired {
            self.events.push_back(GroupEvent::Repaired {
                group: *group,
                msg_id: m.msg_id,
                sender: r.sender,
                seq: r.seq,
            });
        }
        true
    }

    /// An entry below our next seq: only a repair (an application message we missed or
    /// could not process) is of interest.
    fn late_entry(&mut self, now: TimeUs, group: &GroupId, entry: GroupEntry) {
        let g = self.groups.get_mut(group).expect("present");
        let wanted = g.rec.failed.contains(&entry.seq) || g.rec.missing.values().any(|m| m.seq == entry.seq);
        if !wanted {
            return;
        }
        let Some(mls) = g.mls.as_mut() else { return };
        let message =
            MlsMessageIn::tls_deserialize_exact_bytes(&entry.mls).ok().and_then(|m| m.try_into_protocol_message().ok());
        let Some(message) = message else { return };
        let Ok(processed) = mls.process_message(&self.provider, message) else { return };
        let sender = processed.sender().clone();
        let app = matches!(processed.content(), ProcessedMessageContent::ApplicationMessage(_));
        let from = if app { sender_of(mls, &processed, &g.roster, &mut self.identities) } else { None };
        if let ProcessedMessageContent::ApplicationMessage(app) = processed.into_content() {
            if !matches!(sender, Sender::Member(_)) {
                return;
            }
            let Some((key, username)) = from else { return };
            self.on_app(now, group, entry.seq, key, username, &app.into_bytes());
        }
    }

    // --- sending ---

    /// Sends what may go now: proposals for our intents, then application messages.
    fn pump(&mut self, now: TimeUs, group: &GroupId) {
        let me = self.member_key();
        let Some(g) = self.groups.get_mut(group) else { return };
        if !matches!(g.rec.phase, Phase::Member) || !g.subscribed {
            return;
        }
        let Some(mls) = g.mls.as_mut() else { return };
        let epoch = mls.epoch().as_u64();
        // Proposals (one at a time; not while catching up: the epoch is probably stale and
        // the proposal would be refused, or made again, once we are current).
        let proposing = g.rec.uploads.values().any(|u| matches!(u.kind, UploadKind::Proposal | UploadKind::Commit));
        if !proposing && !g.catching_up && mls.pending_commit().is_none() {
            let next = g.rec.intents.iter().position(|i| i.proposed_epoch != Some(epoch));
            if let Some(idx) = next {
                let intent = g.rec.intents[idx].intent.clone();
                let made = match &intent {
                    Intent::Remove(k) => match member_index_of(mls, k) {
                        Some(i) => mls.propose_remove_member(&self.provider, &self.signer, i).map_err(err),
                        None => Err(GroupError::UnknownMember),
                    },
                    Intent::Leave => match member_index_of(mls, &me) {
                        Some(i) => mls.propose_remove_member(&self.provider, &self.signer, i).map_err(err),
                        None => Err(GroupError::UnknownMember),
                    },
                    Intent::Promote(k) | Intent::Demote(k) => {
                        let mut policy = policy_of(mls);
                        if matches!(intent, Intent::Promote(_)) {
                            policy.admins.push(*k);
                        } else {
                            policy.admins.retain(|a| a != k);
                        }
                        let policy = policy.normalized();
                        if policy.admins.is_empty() {
                            Err(GroupError::LastAdmin)
                        } else {
                            required_extensions(&policy).and_then(|ext| {
                                mls.propose_group_context_extensions(&self.provider, ext, &self.signer).map_err(err)
                            })
                        }
                    }
                };
                match made {
                    Ok((msg, proposal_ref)) => {
                        // Out of our store until the log carries it.
                        let _ = mls.remove_pending_proposal(self.provider.storage(), &proposal_ref);
                        g.rec.intents[idx].proposed_epoch = Some(epoch);
                        match mls_bytes(&msg) {
                            Ok(bytes) => {
                                let up = Upload {
                                    kind: UploadKind::Proposal,
                                    mls: bytes,
                                    group_info: Vec::new(),
                                    invite: None,
                                    acked_seq: None,
                                    order: 0,
                                    intent: Some(intent),
                                };
                                self.upload(now, group, up);
                            }
                            Err(e) => self.error_event(*group, ErrorCode::BadMlsMessage, e.to_string()),
                        }
                    }
                    Err(e) => {
                        g.rec.intents.remove(idx);
                        self.error_event(*group, ErrorCode::NotAllowed, format!("cannot propose {intent:?}: {e}"));
                    }
                }
            }
        }
        // Application messages.
        loop {
            let max = self.config.uploads_in_flight_max;
            let Some(g) = self.groups.get_mut(group) else { return };
            let Some(mls) = g.mls.as_mut() else { return };
            let in_flight = g.rec.uploads.values().filter(|u| matches!(u.kind, UploadKind::App { .. })).count();
            // Not while catching up (after `WrongEpoch`, or fetching a gap): we would encrypt
            // in a stale epoch. A short gap alone does not stop sending (pushes and acks
            // overtake each other all the time; an overtaken message is re-sent, §2.6).
            let behind = g.catching_up;
            if in_flight >= max
                || behind
                || g.rec.outbox.is_empty()
                || mls.has_pending_proposals()
                || mls.pending_commit().is_some()
            {
                return;
            }
            let m = g.rec.outbox.pop_front().expect("non-empty");
            match mls
                .create_message(&self.provider, &self.signer, &m.plaintext)
                .map_err(err)
                .and_then(|c| mls_bytes(&c))
            {
                Ok(bytes) => {
                    let up = Upload {
                        kind: UploadKind::App { msg_id: m.msg_id, plaintext: m.plaintext },
                        mls: bytes,
                        group_info: Vec::new(),
                        invite: None,
                        acked_seq: None,
                        order: m.order,
                        intent: None,
                    };
                    match m.upload_id {
                        Some(id) => self.upload_with_id(now, group, id, up),
                        None => self.upload(now, group, up),
                    }
                }
                Err(e) => {
                    self.error_event(*group, ErrorCode::BadMlsMessage, format!("cannot encrypt: {e}"));
                    return;
                }
            }
        }
    }

    /// When the steward rounds of the current epoch make us a committer (admins with
    /// pending proposals only).
    fn next_commit_at(&self, g: &Group) -> Option<TimeUs> {
        let mls = g.mls.as_ref()?;
        if !matches!(g.rec.phase, Phase::Member) || !g.subscribed || !mls.has_pending_proposals() {
            return None;
        }
        if mls.pending_commit().is_some() || g.rec.uploads.values().any(|u| matches!(u.kind, UploadKind::Commit)) {
            return None;
        }
        let policy = policy_of(mls);
        let me = self.member_key();
        if !policy.is_admin(&me) || self.own_removal_pending(mls) {
            return None;
        }
        let origin = g.epoch_started_at.max(g.proposals_since.unwrap_or(0));
        let epoch = mls.epoch().as_u64();
        let cap = 4 * policy.admins.len() as u64 + 8;
        (0..=cap)
            .find(|r| nmls::designated_steward(&g.rec.id, epoch, *r, &policy.admins) == Some(me))
            .map(|r| (origin + r * self.config.commit_timeout_us.max(1)).max(g.commit_hold_until))
    }

    fn own_removal_pending(&self, mls: &MlsGroup) -> bool {
        let own = mls.own_leaf_index();
        mls.pending_proposals()
            .any(|p: &QueuedProposal| matches!(p.proposal(), Proposal::Remove(r) if r.removed() == own))
    }

    /// Commits pending proposals if this admin's steward round has come.
    fn maybe_commit(&mut self, now: TimeUs, group: &GroupId) {
        let Some(g) = self.groups.get(group) else { return };
        let Some(at) = self.next_commit_at(g) else { return };
        if at > now {
            return;
        }
        let g = self.groups.get_mut(group).expect("present");
        let mls = g.mls.as_mut().expect("checked");
        let made = mls
            .commit_builder()
            .consume_proposal_store(true)
            .load_psks(self.provider.storage())
            .map_err(err)
            .and_then(|b| {
                // At most one GroupContextExtensions proposal per commit (RFC 9420 §12.2):
                // the first in log order; the others are proposed again next epoch.
                let mut gce = false;
                let first_gce_only = |p: &QueuedProposal| {
                    if !matches!(p.proposal(), Proposal::GroupContextExtensions(_)) {
                        return true;
                    }
                    !std::mem::replace(&mut gce, true)
                };
                b.build(self.provider.rand(), self.provider.crypto(), &self.signer, first_gce_only).map_err(err)
            })
            .and_then(|b| b.stage_commit(&self.provider).map_err(err));
        match made {
            Ok(bundle) => {
                let (commit, _, info) = bundle.into_messages();
                let bytes = mls_bytes(&commit).and_then(|c| {
                    let i = info.ok_or_else(|| GroupError::Mls("commit without GroupInfo".into()))?;
                    Ok((c, mls_bytes(&i)?))
                });
                match bytes {
                    Ok((c, i)) => {
                        let up = Upload {
                            kind: UploadKind::Commit,
                            mls: c,
                            group_info: i,
                            invite: None,
                            acked_seq: None,
                            order: 0,
                            intent: None,
                        };
                        self.upload(now, group, up);
                    }
                    Err(e) => {
                        let _ = mls.clear_pending_commit(self.provider.storage());
                        self.error_event(*group, ErrorCode::BadMlsMessage, e.to_string());
                    }
                }
            }
            Err(e) => {
                // A proposal we cannot commit: drop them all; their proposers propose again.
                let _ = mls.clear_pending_proposals(self.provider.storage());
                g.proposals_since = None;
                g.commit_hold_until = now + self.config.commit_timeout_us;
                self.error_event(*group, ErrorCode::BadMlsMessage, format!("cannot commit: {e}"));
            }
        }
    }
}

impl Group {
    fn new(id: GroupId, group_node: Vec<u8>, phase: Phase) -> Self {
        Self {
            rec: GroupRecord {
                id,
                group_node,
                phase,
                next_seq: 1,
                join_seq: 0,
                join_epoch: 0,
                pre_join: BTreeSet::new(),
                known_next_seq: 0,
                meta: GroupMeta::default(),
                lamport: 0,
                history: VecDeque::new(),
                window: VecDeque::new(),
                seen: BTreeMap::new(),
                seen_order: VecDeque::new(),
                seen_floor: 0,
                failed: BTreeSet::new(),
                pruned: BTreeMap::new(),
                missing: BTreeMap::new(),
                outbox: VecDeque::new(),
                uploads: BTreeMap::new(),
                intents: Vec::new(),
                acks: VecDeque::new(),
                sent: 0,
            },
            mls: None,
            buffered: BTreeMap::new(),
            subscribed: false,
            roster: Vec::new(),
            gap_since: None,
            catching_up: false,
            last_heard: 0,
            epoch_started_at: 0,
            proposals_since: None,
            commit_hold_until: 0,
        }
    }
}

fn pending_refs(mls: &MlsGroup) -> Vec<ProposalRef> {
    mls.pending_proposals().map(|p| p.proposal_reference_ref().clone()).collect()
}

/// openmls_memory_storage 0.6 clears a proposal queue under the wrong keys and leaves the
/// proposal records behind; remove them one by one after a merge.
fn purge_proposals(provider: &NymstrProvider, mls: &MlsGroup, refs: Vec<ProposalRef>) {
    for r in refs {
        let _ = provider.storage().remove_proposal(mls.group_id(), &r);
    }
}

/// Why an upload cannot go to the steward: its MLS message or GroupInfo exceeds
/// `GROUP_MLS_BYTES_MAX`, or its frame would exceed `FRAME_BYTES_MAX`.
fn upload_too_large(up: &Upload, body: &Body) -> Option<String> {
    for (what, len) in [("mls message", up.mls.len()), ("group info", up.group_info.len())] {
        if len > GROUP_MLS_BYTES_MAX {
            return Some(format!("{what} of {len} bytes exceeds {GROUP_MLS_BYTES_MAX}"));
        }
    }
    // The largest request id: the frame as it would be sent, at worst.
    let envelope = Envelope { request_id: u64::MAX, body: body.clone() };
    match codec::encode_frame(&envelope) {
        Ok(frame) if frame.len() <= FRAME_BYTES_MAX => None,
        Ok(frame) => Some(format!("frame of {} bytes exceeds {FRAME_BYTES_MAX}", frame.len())),
        Err(e) => Some(format!("frame does not encode: {e}")),
    }
}

fn check_meta(name: &str, description: &str) -> Result<(), GroupError> {
    if name.len() > GROUP_NAME_BYTES_MAX {
        return Err(GroupError::TooLarge { what: "name", len: name.len(), max: GROUP_NAME_BYTES_MAX });
    }
    if description.len() > GROUP_DESCRIPTION_BYTES_MAX {
        return Err(GroupError::TooLarge {
            what: "description",
            len: description.len(),
            max: GROUP_DESCRIPTION_BYTES_MAX,
        });
    }
    Ok(())
}
