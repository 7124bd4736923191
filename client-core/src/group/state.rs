//! Per-group state: what a member wants (`Intent`), its uploads and queued messages, the
//! phase of a group, the persisted record (`GroupRecord`) and its live wrapper (`Group`),
//! the exported state and deltas, and the records of requests in flight (`Step`, `Pending`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{Body, GroupAdvert, GroupEntry, GroupId, InviteToken, MsgId, PublicKey, UploadId};
use openmls::prelude::MlsGroup;
use serde::{Deserialize, Serialize};

use super::events::{GroupStats, MemberInfo};
use crate::sync::CausalRef;

/// Own messages whose acknowledgements (peers' bloom filters) are tracked, per group.
pub const ACKS_TRACKED: usize = 64;

/// A group's name and description (encrypted application state, `SyncBody::SetMeta`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    pub name: String,
    pub description: String,
    /// Raised by one on every rename; a `SetMeta` applies if its version is at least ours.
    pub version: u64,
}

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
pub(super) struct IntentState {
    pub(super) intent: Intent,
    /// Epoch of the last proposal made for it.
    pub(super) proposed_epoch: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum UploadKind {
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
pub(super) struct Upload {
    pub(super) kind: UploadKind,
    pub(super) mls: Vec<u8>,
    pub(super) group_info: Vec<u8>,
    pub(super) invite: Option<InviteToken>,
    /// Seq of the acknowledgement, once received.
    pub(super) acked_seq: Option<u64>,
    /// An application message's place in our send order (`GroupRecord::sent`): restores
    /// re-queue in-flight messages in this order.
    #[serde(default)]
    pub(super) order: u64,
    /// The intent a proposal is for: a refusal resets (or drops) that intent only.
    #[serde(default)]
    pub(super) intent: Option<Intent>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct OutMsg {
    pub(super) msg_id: MsgId,
    pub(super) plaintext: Vec<u8>,
    /// Set once it was uploaded: kept across re-encryptions and restores, so the steward
    /// dedupes a copy it already accepted.
    pub(super) upload_id: Option<UploadId>,
    /// Its place in our send order (`GroupRecord::sent`).
    #[serde(default)]
    pub(super) order: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MissingRef {
    pub(super) sender: PublicKey,
    pub(super) seq: u64,
    pub(super) deadline_us: TimeUs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Phase {
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
    pub(super) id: GroupId,
    pub(super) group_node: Vec<u8>,
    pub(super) phase: Phase,
    /// Next log seq to apply.
    pub(super) next_seq: u64,
    /// Seq of our join (0 for the creator): causal references at or below it are not ours
    /// to miss.
    pub(super) join_seq: u64,
    /// Epoch our join commit created (0 for the creator).
    #[serde(default)]
    pub(super) join_epoch: u64,
    /// Seqs after our join carrying application messages of an epoch before it (the
    /// steward accepts the previous epoch): never ours to read, so never missing.
    #[serde(default)]
    pub(super) pre_join: BTreeSet<u64>,
    /// The steward's next seq as last heard.
    pub(super) known_next_seq: u64,
    pub(super) meta: GroupMeta,
    pub(super) lamport: u64,
    pub(super) history: VecDeque<CausalRef>,
    /// Last `BLOOM_WINDOW` message ids received (ours included): the bloom filter we send.
    pub(super) window: VecDeque<MsgId>,
    /// Delivered messages by (sender, id): another sender's message reusing an id does
    /// not pre-empt the first (`specs/sync.md` §4 step 3).
    pub(super) seen: BTreeMap<(PublicKey, MsgId), u64>,
    pub(super) seen_order: VecDeque<(u64, PublicKey, MsgId)>,
    /// Causal references below this seq are not checked (their ids were forgotten).
    pub(super) seen_floor: u64,
    /// Seqs of entries that did not process.
    pub(super) failed: BTreeSet<u64>,
    /// Log ranges `from..to` the steward pruned before we had them (skipped).
    pub(super) pruned: BTreeMap<u64, u64>,
    pub(super) missing: BTreeMap<(PublicKey, MsgId), MissingRef>,
    pub(super) outbox: VecDeque<OutMsg>,
    pub(super) uploads: BTreeMap<UploadId, Upload>,
    pub(super) intents: Vec<IntentState>,
    /// Our recent messages and the members whose bloom filter shows they have them.
    pub(super) acks: VecDeque<(MsgId, BTreeSet<PublicKey>)>,
    /// Application messages queued so far (the next one's `OutMsg::order`).
    #[serde(default)]
    pub(super) sent: u64,
}

pub(super) struct Group {
    pub(super) rec: GroupRecord,
    pub(super) mls: Option<MlsGroup>,
    pub(super) buffered: BTreeMap<u64, GroupEntry>,
    pub(super) subscribed: bool,
    /// The current epoch's members (from the MLS tree; credentials verified once).
    pub(super) roster: Vec<MemberInfo>,
    /// When we noticed that the next entry is missing.
    pub(super) gap_since: Option<TimeUs>,
    pub(super) catching_up: bool,
    /// When the group's node last sent us anything for this group.
    pub(super) last_heard: TimeUs,
    /// When the current epoch began, as observed locally, and when its first proposal
    /// was applied: the steward rounds count from the later of the two.
    pub(super) epoch_started_at: TimeUs,
    pub(super) proposals_since: Option<TimeUs>,
    /// No commit of ours before this (set when one was refused).
    pub(super) commit_hold_until: TimeUs,
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
pub(super) enum Step {
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
pub(super) struct Pending {
    pub(super) group: GroupId,
    pub(super) step: Step,
    pub(super) body: Body,
    pub(super) retry_at_us: TimeUs,
    pub(super) backoff_us: TimeUs,
}

impl Group {
    pub(super) fn new(id: GroupId, group_node: Vec<u8>, phase: Phase) -> Self {
        Self::from_record(
            GroupRecord {
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
            None,
            Vec::new(),
        )
    }

    /// A group as it starts on this client (new, or restored from its record): not yet
    /// subscribed, nothing buffered, no timers running.
    pub(super) fn from_record(rec: GroupRecord, mls: Option<MlsGroup>, roster: Vec<MemberInfo>) -> Self {
        Self {
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
        }
    }
}
