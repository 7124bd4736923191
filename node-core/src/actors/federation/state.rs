//! The federation core's state: the identity a node starts with, its counters and errors,
//! the [`Federation`] struct, and the store keys, request ids and helpers every concern
//! shares. Uses none of its sibling modules.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ed25519_dalek::SigningKey;
use rand_core::Rng;
use serde::Serialize;

use crate::actors::types::{Address, CodedError, Ctx, SenderTag};
use crate::store::{Store, StoreError};
use crate::transparency_log::TransparencyLog;

use nymstr_proto::federation::evidence::WitnessView;
use nymstr_proto::federation::{Cosignature, ForkCertificate, Hash, NodeDescriptor, NodeId, Roles, SignedHead};
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{ErrorCode, GroupAdvert, GroupId, Nonce};

/// What a node is in the federation: its key, where it is reached, what it does, and the
/// peers it first contacts.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub key: SigningKey,
    pub address: Vec<u8>,
    pub roles: Roles,
    pub bootstrap: Vec<Address>,
}

/// Counters for reports and `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FederationStats {
    pub heads_signed: u64,
    pub cosignatures_given: u64,
    pub cosignatures_received: u64,
    pub fork_certificates: u64,
    pub gossip_in: u64,
    pub gossip_out: u64,
    pub lookups_served: u64,
    pub lookups_forwarded: u64,
    pub dms_forwarded: u64,
    pub dms_received: u64,
    /// Forwarded DMs refused as stale (outside the freshness window).
    pub forwards_stale: u64,
    pub forwards_timed_out: u64,
    pub peers_rejected: u64,
    /// Descriptors refused: over a peer's introduction share, or a full table.
    pub descriptors_refused: u64,
    /// Descriptors evicted to make room for another.
    pub descriptors_evicted: u64,
    /// Adverts refused: bad host signature, unknown host, dated in the future, another
    /// host's group, or no room.
    pub adverts_refused: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    #[error("no peering with this address (complete the challenge first)")]
    NotPeer,
    #[error("unknown node {0}")]
    UnknownNode(String),
    #[error("node {0} is distrusted: a fork certificate against it is known")]
    Distrusted(String),
    #[error("descriptor refused: {0}")]
    BadDescriptor(String),
    #[error("peer challenge answer does not verify")]
    BadAnswer,
    #[error("no challenge outstanding for this peer")]
    NoHandshake,
    #[error("too many at once ({0}); try again")]
    Busy(usize),
    #[error("head refused: {0}")]
    Inconsistent(String),
    #[error("advert refused: {0}")]
    BadAdvert(String),
    #[error("bad name: {0}")]
    BadName(String),
    #[error("forwarded message refused: {0}")]
    BadForward(String),
    #[error("not yet peered with node {0}; try again")]
    NotYetPeered(String),
    #[error("{0} is not a federation request")]
    Unexpected(&'static str),
    #[error("this node has no transparency log yet")]
    NoHead,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CodedError for FederationError {
    fn code(&self) -> ErrorCode {
        match self {
            FederationError::NotPeer | FederationError::NoHandshake => ErrorCode::NotPeer,
            FederationError::UnknownNode(_) => ErrorCode::UnknownNode,
            FederationError::Distrusted(_) => ErrorCode::Distrusted,
            FederationError::BadDescriptor(_) | FederationError::BadAnswer => ErrorCode::BadSignature,
            FederationError::Busy(_) => ErrorCode::Busy,
            FederationError::Inconsistent(_) => ErrorCode::Inconsistent,
            FederationError::BadName(_) => ErrorCode::UnknownUser,
            FederationError::BadForward(_) => ErrorCode::BadSignature,
            FederationError::BadAdvert(_) => ErrorCode::Malformed,
            FederationError::Unexpected(_) => ErrorCode::UnexpectedMessage,
            FederationError::NoHead | FederationError::Store(_) => ErrorCode::Internal,
            FederationError::NotYetPeered(_) => ErrorCode::Unreachable,
        }
    }
}

/// Both directions of a peering may run at once (two nodes that say hello to each other
/// at the same time); each completes on its own and either authenticates the peer.
#[derive(Clone, Debug, Default)]
pub(super) struct Handshake {
    /// When it started (local time): a handshake unanswered for `HANDSHAKE_TIMEOUT_US` is
    /// dropped at the next peering retry.
    pub(super) at: TimeUs,
    /// We sent `PeerHello` with this nonce.
    pub(super) hello: Option<Nonce>,
    /// We answered their hello with `PeerWelcome` carrying this nonce.
    pub(super) welcome: Option<(Nonce, NodeDescriptor)>,
}

/// How a descriptor in `known` stands: the eviction order of a full table
/// (`KNOWN_NODES_MAX`) and the introduction share of the peer that gossiped it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Standing {
    /// Local time it was first learnt (or reloaded at start).
    pub(super) learnt_at: TimeUs,
    /// Local time a head of this node was last seen cosigned by this node or by a kept
    /// node (a seed or a peer): a node that merely signs its own heads is not verified.
    pub(super) verified_at: Option<TimeUs>,
    /// The peer whose gossip introduced it (none: learnt from the node itself).
    pub(super) introducer: Option<NodeId>,
}

/// Up to `n` of `items`, chosen at random (a partial Fisher-Yates on the seeded generator).
pub(super) fn sample<T, S: Store>(ctx: &mut Ctx<'_, S>, mut items: Vec<T>, n: usize) -> Vec<T> {
    let take = n.min(items.len());
    for i in 0..take {
        let j = i + (ctx.rng.next_u64() % (items.len() - i) as u64) as usize;
        items.swap(i, j);
    }
    items.truncate(take);
    items
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PendingKind {
    Lookup,
    Dm,
}

#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub(super) peer: NodeId,
    pub(super) client: SenderTag,
    pub(super) client_rid: u64,
    pub(super) deadline: TimeUs,
    pub(super) kind: PendingKind,
}

/// The witness view as one record: the layout before rows, read once at start-up to be
/// rewritten as `PREFIX_WHEAD` rows, then deleted (it outgrew the 64 KiB decode limit).
pub(super) const KEY_WITNESS_LEGACY: &[u8] = b"witness-view";
/// The witness view, one row a head: `whead/` || node id || epoch (u64 BE) ->
/// (local time it was recorded, `SignedHead`).
pub(super) const PREFIX_WHEAD: &[u8] = b"whead/";
/// Lookups and DMs forwarded to peers and not yet answered, at most.
pub const FORWARDS_PENDING_MAX: usize = 10_000;
/// Encoded items per catch-up `Gossip` (the frame limit is 64 KiB).
pub(super) const GOSSIP_CHUNK_BYTES_MAX: usize = 48 * 1024;
pub(super) const PREFIX_FORK: &[u8] = b"fork/";
/// How far each witness cosigned this node's log: `wsize/` || node id -> (size, local time
/// it was recorded); a row of the earlier layout holds the size alone.
pub(super) const PREFIX_WSIZE: &[u8] = b"wsize/";

pub(super) fn prefixed(prefix: &[u8], id: &NodeId) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.0);
    k
}

/// The key of one head of the witness view.
pub(super) fn whead_key(node: &NodeId, epoch: u64) -> Vec<u8> {
    let mut k = prefixed(PREFIX_WHEAD, node);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

/// The federation core of one node.
pub struct Federation {
    pub(super) key: SigningKey,
    pub(super) id: NodeId,
    pub(super) descriptor: NodeDescriptor,
    pub(super) bootstrap: Vec<Address>,
    pub(super) log: TransparencyLog,
    /// Every valid descriptor known (newest wins), this node's excluded; at most
    /// `KNOWN_NODES_MAX` (see `Federation::learn_descriptor` for what is kept).
    pub(super) known: BTreeMap<NodeId, NodeDescriptor>,
    /// What this node knows of each descriptor in `known`: when it was learnt, when a
    /// head of the node was last verified with a witness this node trusts, who introduced it.
    pub(super) standing: BTreeMap<NodeId, Standing>,
    /// Nodes that authenticated from a configured (bootstrap) address: kept.
    pub(super) seeds: BTreeSet<NodeId>,
    /// Authenticated peers by address, and back.
    pub(super) peer_by_address: BTreeMap<Address, NodeId>,
    pub(super) peers: BTreeMap<NodeId, Address>,
    /// Peering handshakes under way, at most `HANDSHAKES_MAX`.
    pub(super) handshakes: BTreeMap<Address, Handshake>,
    /// Newest head seen from each other node, with the cosignatures seen with it.
    pub(super) heads: BTreeMap<NodeId, (SignedHead, Vec<Cosignature>)>,
    /// Recent heads by (node, epoch): evidence for fork certificates.
    pub(super) recent: BTreeMap<(NodeId, u64), SignedHead>,
    pub(super) forks: BTreeMap<NodeId, ForkCertificate>,
    pub(super) witness: WitnessView,
    /// When each node in the witness view last had a new head recorded (local time): the
    /// eviction order of a full view (`WITNESS_NODES_MAX`).
    pub(super) witness_seen: BTreeMap<NodeId, TimeUs>,
    /// Head-log size each witness last cosigned for this node, and when (local time) it
    /// last changed: the eviction order once `WITNESS_NODES_MAX` witnesses are kept.
    pub(super) witness_sizes: BTreeMap<NodeId, (u64, TimeUs)>,
    pub(super) seen: BTreeSet<Hash>,
    pub(super) seen_order: VecDeque<Hash>,
    pub(super) pending: BTreeMap<u64, Pending>,
    /// Public group adverts learnt from peers, by group: at most `ADVERTS_MAX`, and
    /// `ADVERTS_PER_HOST_MAX` per hosting node; only the host that first listed a group
    /// may replace its advert.
    pub(super) adverts: BTreeMap<GroupId, GroupAdvert>,
    /// A head signed but not yet sent to witnesses and peers (waits for durability).
    pub(super) unannounced: bool,
    pub(super) next_seal_us: TimeUs,
    pub(super) next_retry_us: TimeUs,
    pub stats: FederationStats,
}

impl Federation {
    /// A request id for a message to a peer: odd (0 is a peer's unsolicited frame), and not
    /// one a forward waits on.
    pub(super) fn fresh_rid<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> u64 {
        loop {
            let rid = ctx.rng.next_u64() | 1;
            if !self.pending.contains_key(&rid) {
                return rid;
            }
        }
    }
}

/// A federation error as the (code, detail) a caller answers with.
pub(super) fn fe(e: FederationError) -> (ErrorCode, String) {
    (e.code(), e.to_string())
}

/// A node id as it appears in error details.
pub(super) fn short(id: &NodeId) -> String {
    id.to_hex()[..12].to_string()
}
