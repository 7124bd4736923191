//! What the host and the cores share: peers and addresses ([`SenderTag`], [`Address`],
//! [`Peer`]), what a core asks of its host ([`Output`]), the node's configuration and
//! statistics, the step context ([`Ctx`]) with its record codec, and [`CodedError`].

use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::federation::config::FederationConfig;
use crate::store::{Store, StoreError};
use nymstr_proto::codec;
use nymstr_proto::federation::NodeId;
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{Body, Envelope, ErrorCode};

/// A 16-byte single-use-reply-block tag (Nym's `AnonymousSenderTag`): an anonymous peer
/// the node can reply to without learning its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SenderTag(pub [u8; 16]);

/// A transport address of a known node. Never a client's: clients only appear as tags.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Address(pub Vec<u8>);

/// Who a message came from or goes to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Address(Address),
    Tag(SenderTag),
}

/// What a core asks its host to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `envelope` to `to` once the store's durable sequence reaches
    /// `durable_after` (0: send now). This is how "ack only after the write is durable"
    /// is expressed without the core doing I/O.
    Send { to: Peer, envelope: Envelope, durable_after: u64 },
}

/// Every tunable of a node core, with defaults a researcher would start from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// How long a registration or login challenge stays valid.
    pub challenge_ttl_us: u64,
    /// Pending challenges held at once; beyond this new requests get `Busy`.
    pub challenges_pending_max: usize,
    /// Pending challenges one tag may hold (registration and login together; subscribe
    /// challenges apart): past it, the tag's oldest is replaced, so a few tags never fill
    /// the table every client needs.
    pub challenges_per_tag_max: usize,
    /// Pending login challenges for one account, whichever tags asked: past it the
    /// account's oldest is replaced, so many tags naming one account hold only a few.
    pub login_challenges_per_account_max: usize,
    /// Messages queued for one installation; beyond this sends get `QueueFull`.
    pub queue_depth_max: u32,
    /// Messages one sender (account, `user@node` for a remote one) may have queued for one
    /// installation; beyond this its sends get `QueueFull`, while others still get through.
    pub queue_per_sender_max: u32,
    /// Deliveries sent and not yet acknowledged, per installation.
    pub deliveries_inflight_max: usize,
    /// First redelivery of an unacknowledged delivery; doubles up to the max.
    pub redeliver_after_us: u64,
    pub redeliver_after_max_us: u64,
    /// How long a (sender, msg id) pair is remembered so a retried send is not queued twice.
    pub seen_send_ttl_us: u64,
    /// Period of the housekeeping sweep (expired challenges and dedupe entries).
    pub sweep_every_us: u64,
    /// Application messages kept per group log; older ones are pruned (handshake
    /// messages are kept).
    pub group_history_max: usize,
    /// Groups one node hosts; beyond this `GroupCreate` gets `Busy`.
    pub groups_max: usize,
    /// A group with no activity (upload, subscription, fetch) for this long is deleted
    /// with its log, subscriptions and redeemed invites (`specs/groups.md` §8.1).
    pub group_idle_expiry_us: u64,
    /// Proposals accepted per group and epoch; beyond this uploads get `Busy`.
    pub group_proposals_per_epoch_max: usize,
    /// Federation: epochs, gossip, witnessing, forwarding (used when the node is started
    /// with an identity, [`NodeCore::start_federated`](super::NodeCore::start_federated)).
    /// Not serialised when default, so configurations (and the simulator's scenario
    /// hashes) from before it are unchanged.
    #[serde(skip_serializing_if = "FederationConfig::is_default")]
    pub federation: FederationConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            challenge_ttl_us: 60_000_000,
            challenges_pending_max: 10_000,
            challenges_per_tag_max: 4,
            login_challenges_per_account_max: 8,
            queue_depth_max: 1_000,
            queue_per_sender_max: 100,
            deliveries_inflight_max: 32,
            redeliver_after_us: 30_000_000,
            redeliver_after_max_us: 300_000_000,
            seen_send_ttl_us: 24 * 3_600_000_000,
            sweep_every_us: 10_000_000,
            group_history_max: 10_000,
            groups_max: 10_000,
            group_idle_expiry_us: 90 * 24 * 3_600_000_000,
            group_proposals_per_epoch_max: 256,
            federation: FederationConfig::default(),
        }
    }
}

/// What a core reads and writes during one step.
pub struct Ctx<'a, S: Store> {
    pub now: TimeUs,
    /// The id this node names in its challenges, which clients sign (`specs/registry.md`):
    /// its federation id, or a random id kept in its store for a node that does not federate.
    pub node: NodeId,
    pub store: &'a mut S,
    pub rng: &'a mut ChaCha20Rng,
    pub config: &'a NodeConfig,
    pub out: &'a mut Vec<Output>,
}

impl<S: Store> Ctx<'_, S> {
    /// Queues a reply that waits for nothing.
    pub fn send(&mut self, to: Peer, request_id: u64, body: Body) {
        self.out.push(Output::Send { to, envelope: Envelope { request_id, body }, durable_after: 0 });
    }

    /// Queues a reply that waits until every write made so far is durable.
    pub fn send_durable(&mut self, to: Peer, request_id: u64, body: Body) {
        let durable_after = self.store.write_seq();
        self.out.push(Output::Send { to, envelope: Envelope { request_id, body }, durable_after });
    }

    pub fn send_error(&mut self, to: Peer, request_id: u64, code: ErrorCode, detail: impl Into<String>) {
        let mut detail = detail.into();
        truncate_utf8(&mut detail, nymstr_proto::limits::ERROR_DETAIL_BYTES_MAX);
        self.send(to, request_id, Body::Error { code, detail });
    }

    pub fn load<T: serde::de::DeserializeOwned>(
        &self,
        table: crate::store::Table,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        load(&*self.store, table, key)
    }

    pub fn save<T: Serialize>(&mut self, table: crate::store::Table, key: &[u8], value: &T) -> Result<(), StoreError> {
        self.store.put(table, key, &codec::encode(value))
    }
}

/// Reads and decodes one record.
pub fn load<T: serde::de::DeserializeOwned, S: Store + ?Sized>(
    store: &S,
    table: crate::store::Table,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match store.get(table, key)? {
        None => Ok(None),
        Some(bytes) => codec::decode_record(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt { table: table.name(), detail: e.to_string() }),
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Statistics a host can print (node `info`, simulator report).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeStats {
    pub frames_in: u64,
    pub frames_rejected: u64,
    pub registrations: u64,
    pub logins: u64,
    pub lookups: u64,
    pub dms_accepted: u64,
    pub dms_rejected: u64,
    pub deliveries: u64,
    pub redeliveries: u64,
    pub acks: u64,
}

/// An error that maps to a wire error code.
pub trait CodedError: std::fmt::Display {
    fn code(&self) -> ErrorCode;
}
