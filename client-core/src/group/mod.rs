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
//!
//! Layout: the types at the bottom (`config`, `events`, `state`), free helpers over
//! openmls (`roster`, `mls_util`); `GroupCore` and its accessors here, its other methods by
//! concern: `ops` (user operations), `host` (timers, inbound envelopes), `requests`
//! (requests, retries, refusals), `answers`, `log`, `app`, `send`, `commits`, `persist`.

use std::collections::{BTreeMap, VecDeque};

use nymstr_mls::{InstallationSigner, MemberIdentity, NymstrProvider};
use nymstr_proto::wire::{GroupId, MsgId, PublicKey};
use openmls::prelude::{CredentialWithKey, MlsGroup, SenderRatchetConfiguration};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

mod answers;
mod app;
mod commits;
mod config;
mod events;
mod host;
mod log;
mod mls_util;
mod ops;
mod persist;
mod policy;
mod requests;
mod roster;
mod send;
mod state;

pub use nymstr_proto::time::TimeUs;

use self::config::seeds;
pub use self::config::{GroupConfig, LABEL_SEED_CORE, LABEL_SEED_PROVIDER, LifetimeMode, MemberKeys};
pub use self::events::{GroupError, GroupEvent, GroupStats, GroupTransmit, MemberInfo, resolve_member};
pub use self::policy::CommitRefusal;
use self::roster::{IdentityCache, policy_of};
pub use self::state::{ACKS_TRACKED, GroupMeta, GroupRecord, GroupState, GroupStateDelta, Intent, RestoreError};
use self::state::{Group, Pending, Phase, Step};

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
    /// Tests only: join whatever GroupInfo the node serves (an attacker's client).
    skip_join_checks: bool,
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
            skip_join_checks: false,
        }
    }

    /// For tests of members: this core joins by external commit without checking the
    /// node's GroupInfo against the invitation (plays a dishonest joiner).
    #[doc(hidden)]
    pub fn skip_join_checks(&mut self) {
        self.skip_join_checks = true;
    }

    pub fn member_key(&self) -> PublicKey {
        self.keys.member_key()
    }

    pub fn username(&self) -> &str {
        &self.keys.username
    }

    /// The account key that certified our installation (what an invitation for us names).
    pub fn account_key(&self) -> PublicKey {
        self.keys.cert.account_key
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

    fn credential(&self) -> CredentialWithKey {
        let id = MemberIdentity { username: self.keys.username.clone(), cert: self.keys.cert.clone() };
        CredentialWithKey { credential: id.credential(), signature_key: self.member_key().to_vec().into() }
    }

    fn ratchet_config(&self) -> SenderRatchetConfiguration {
        SenderRatchetConfiguration::new(self.config.out_of_order_tolerance, 1_000)
    }
}
