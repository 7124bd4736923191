//! Federation core (`SPECv1.md` §9): the node's identity and descriptor, peering with
//! a mutual challenge, gossip of descriptors, signed heads, fork certificates and public
//! group adverts (bounded fan-out, de-duplicated), the node's transparency log (epochs,
//! promises, lookups with proofs), witnessing peers' heads, and cross-node forwarding of
//! lookups and direct messages with the SURB contract intact: a client only ever talks to
//! its home node, and a remote node learns the home node, never the client.
//!
//! Everything is sans-IO: time, randomness and storage come through [`Ctx`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ed25519_dalek::SigningKey;
use rand_core::Rng;
use serde::{Deserialize, Serialize};

use super::registry::{Account, Registry};
use super::relay::Relay;
use super::{Address, CodedError, Ctx, NodeStats, Peer, SenderTag, TimeUs, load};
use crate::store::{Store, StoreError, Table};
use crate::transparency_log::TransparencyLog;
use nymstr_proto::codec;
use nymstr_proto::federation::descriptor::{self, QualifiedName};
use nymstr_proto::federation::evidence::{self, WitnessVerdict, WitnessView};
use nymstr_proto::federation::{
    Cosignature, DirEntry, EntryStatus, ForkCertificate, Hash, NodeDescriptor, NodeId, Roles, SignedHead, merkle,
};
use nymstr_proto::identity;
use nymstr_proto::limits::{
    ADDRESS_BYTES_MAX, DESCRIPTORS_MAX, GOSSIP_ITEMS_MAX, GROUP_DESCRIPTION_BYTES_MAX, GROUP_NAME_BYTES_MAX, PEERS_MAX,
};
use nymstr_proto::wire::{Body, ErrorCode, GossipItem, GroupAdvert, GroupId, InstallationCert, Nonce, SendDm};

/// Tunables of the federation core (part of [`super::NodeConfig`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Length of one transparency-log epoch: pending directory changes are sealed into a
    /// new signed head this often.
    pub epoch_us: u64,
    /// Peers each gossip item is pushed to (fork certificates go to every peer).
    pub gossip_fanout: usize,
    /// Peers asked to cosign each new head.
    pub witnesses_wanted: usize,
    /// Cosignatures the newest head needs before lookups are answered from it...
    pub serve_quorum: usize,
    /// ...or this long after it was issued, whichever comes first.
    pub serve_grace_us: u64,
    /// How long a forwarded lookup or DM waits for the remote node before the client is
    /// told `Unreachable`.
    pub forward_timeout_us: u64,
    /// Period of the peering retry: unanswered hellos to known nodes are sent again.
    pub peer_retry_us: u64,
    /// Authenticated peers kept; hellos beyond this are refused.
    pub peers_max: usize,
    /// Gossip item hashes remembered for de-duplication.
    pub gossip_seen_max: usize,
    /// Heads remembered per other node (by epoch) to detect equivocation.
    pub heads_kept_per_node: usize,
    /// The trust policy text announced in the descriptor.
    pub policy: String,
}

impl FederationConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            epoch_us: 30_000_000,
            gossip_fanout: 3,
            witnesses_wanted: 5,
            serve_quorum: 3,
            serve_grace_us: 10_000_000,
            forward_timeout_us: 20_000_000,
            peer_retry_us: 30_000_000,
            peers_max: 64,
            gossip_seen_max: 8_192,
            heads_kept_per_node: 64,
            policy: "witness-quorum:3".to_string(),
        }
    }
}

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
    pub forwards_timed_out: u64,
    pub peers_rejected: u64,
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
            FederationError::Unexpected(_) => ErrorCode::UnexpectedMessage,
            FederationError::NoHead | FederationError::Store(_) => ErrorCode::Internal,
            FederationError::NotYetPeered(_) => ErrorCode::Unreachable,
        }
    }
}

/// Both directions of a peering may run at once (two nodes that say hello to each other
/// at the same time); each completes on its own and either authenticates the peer.
#[derive(Clone, Debug, Default)]
struct Handshake {
    /// We sent `PeerHello` with this nonce.
    hello: Option<Nonce>,
    /// We answered their hello with `PeerWelcome` carrying this nonce.
    welcome: Option<(Nonce, NodeDescriptor)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingKind {
    Lookup,
    Dm,
}

#[derive(Clone, Debug)]
struct Pending {
    peer: NodeId,
    client: SenderTag,
    client_rid: u64,
    deadline: TimeUs,
    kind: PendingKind,
}

const KEY_WITNESS: &[u8] = b"witness-view";
/// Lookups and DMs forwarded to peers and not yet answered, at most.
pub const FORWARDS_PENDING_MAX: usize = 10_000;
/// Encoded items per catch-up `Gossip` (the frame limit is 64 KiB).
const GOSSIP_CHUNK_BYTES_MAX: usize = 48 * 1024;
const PREFIX_FORK: &[u8] = b"fork/";
const PREFIX_WSIZE: &[u8] = b"wsize/";

fn prefixed(prefix: &[u8], id: &NodeId) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.0);
    k
}

/// The federation core of one node.
pub struct Federation {
    key: SigningKey,
    id: NodeId,
    descriptor: NodeDescriptor,
    bootstrap: Vec<Address>,
    log: TransparencyLog,
    /// Every valid descriptor known (newest wins), this node's excluded.
    known: BTreeMap<NodeId, NodeDescriptor>,
    /// Authenticated peers by address, and back.
    peer_by_address: BTreeMap<Address, NodeId>,
    peers: BTreeMap<NodeId, Address>,
    handshakes: BTreeMap<Address, Handshake>,
    /// Newest head seen from each other node, with the cosignatures seen with it.
    heads: BTreeMap<NodeId, (SignedHead, Vec<Cosignature>)>,
    /// Recent heads by (node, epoch): evidence for fork certificates.
    recent: BTreeMap<(NodeId, u64), SignedHead>,
    forks: BTreeMap<NodeId, ForkCertificate>,
    witness: WitnessView,
    /// Head-log size each witness last cosigned for this node.
    witness_sizes: BTreeMap<NodeId, u64>,
    seen: BTreeSet<Hash>,
    seen_order: VecDeque<Hash>,
    pending: BTreeMap<u64, Pending>,
    /// Public group adverts learnt from peers, by group.
    adverts: BTreeMap<GroupId, GroupAdvert>,
    /// A head signed but not yet sent to witnesses and peers (waits for durability).
    unannounced: bool,
    next_seal_us: TimeUs,
    next_retry_us: TimeUs,
    pub stats: FederationStats,
}

impl Federation {
    /// Starts the federation core: recovers the log, peers, evidence and witness view;
    /// seals epoch 0 if the log is empty; says hello to bootstrap and known peers.
    pub fn start<S: Store>(ctx: &mut Ctx<'_, S>, identity: NodeIdentity) -> Result<Self, StoreError> {
        let cfg = &ctx.config.federation;
        let public = identity.key.verifying_key().to_bytes();
        let id = descriptor::node_id(&public);
        let descriptor = descriptor::sign(
            &identity.key,
            identity.address.clone(),
            identity.roles,
            cfg.policy.clone(),
            cfg.epoch_us,
            ctx.now,
        );
        let log = TransparencyLog::recover(ctx.store, id)?;
        let mut known = BTreeMap::new();
        for (_, v) in ctx.store.scan_prefix(Table::FedPeers, &[])? {
            if let Ok(d) = codec::decode::<NodeDescriptor>(&v)
                && descriptor::verify(&d).is_ok()
                && d.node_id != id
            {
                known.insert(d.node_id, d);
            }
        }
        let mut forks = BTreeMap::new();
        for (_, v) in ctx.store.scan_prefix(Table::FedState, PREFIX_FORK)? {
            if let Ok(c) = codec::decode::<ForkCertificate>(&v) {
                forks.insert(c.a.head.node_id, c);
            }
        }
        let mut witness_sizes = BTreeMap::new();
        for (k, v) in ctx.store.scan_prefix(Table::FedState, PREFIX_WSIZE)? {
            if let (Ok(arr), Ok(size)) = (<[u8; 32]>::try_from(&k[PREFIX_WSIZE.len()..]), codec::decode::<u64>(&v)) {
                witness_sizes.insert(NodeId(arr), size);
            }
        }
        let witness: WitnessView = load(&*ctx.store, Table::FedState, KEY_WITNESS)?.unwrap_or_default();
        let mut me = Self {
            key: identity.key,
            id,
            descriptor,
            bootstrap: identity.bootstrap,
            log,
            known,
            peer_by_address: BTreeMap::new(),
            peers: BTreeMap::new(),
            handshakes: BTreeMap::new(),
            heads: BTreeMap::new(),
            recent: BTreeMap::new(),
            forks,
            witness,
            witness_sizes,
            seen: BTreeSet::new(),
            seen_order: VecDeque::new(),
            pending: BTreeMap::new(),
            adverts: BTreeMap::new(),
            unannounced: false,
            next_seal_us: ctx.now + cfg.epoch_us,
            next_retry_us: ctx.now + cfg.peer_retry_us,
            stats: FederationStats::default(),
        };
        // The registry is the source of truth for accounts: a crash between a registry
        // write and its directory staging must not leave an account out of the log.
        let mut stale = Vec::new();
        for (_, v) in ctx.store.scan_prefix(Table::Accounts, &[])? {
            let Ok(account) = codec::decode::<Account>(&v) else { continue };
            let current = me.log.newest_entry(&account.username).is_some_and(|e| {
                e.account_key == account.account_key
                    && e.installations == account.installations
                    && e.status == EntryStatus::Active
            });
            if !current {
                stale.push(account);
            }
        }
        for account in stale {
            me.on_account_changed(ctx, &account)?;
        }
        if me.log.latest().is_none() {
            me.seal(ctx)?;
        }
        me.say_hello_to_all(ctx);
        Ok(me)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn descriptor(&self) -> &NodeDescriptor {
        &self.descriptor
    }

    pub fn log(&self) -> &TransparencyLog {
        &self.log
    }

    /// Authenticated peers, in id order.
    pub fn peers(&self) -> impl Iterator<Item = (&NodeId, &Address)> {
        self.peers.iter()
    }

    /// Every other node's descriptor known here.
    pub fn known(&self) -> impl Iterator<Item = &NodeDescriptor> {
        self.known.values()
    }

    /// The newest head seen from `node` (with its cosignatures).
    pub fn head_of(&self, node: &NodeId) -> Option<&(SignedHead, Vec<Cosignature>)> {
        self.heads.get(node)
    }

    /// Nodes this node holds a fork certificate against.
    pub fn forks(&self) -> impl Iterator<Item = &ForkCertificate> {
        self.forks.values()
    }

    /// Public group adverts learnt from peers.
    pub fn remote_adverts(&self) -> impl Iterator<Item = &GroupAdvert> {
        self.adverts.values()
    }

    pub fn next_timeout(&self) -> TimeUs {
        let mut t = self.next_seal_us.min(self.next_retry_us);
        if let Some(d) = self.pending.values().map(|p| p.deadline).min() {
            t = t.min(d);
        }
        t
    }

    // --- timers ---

    pub fn on_timeout<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), StoreError> {
        if ctx.now >= self.next_seal_us {
            self.next_seal_us = ctx.now + ctx.config.federation.epoch_us;
            self.seal(ctx)?;
        }
        if ctx.now >= self.next_retry_us {
            self.next_retry_us = ctx.now + ctx.config.federation.peer_retry_us;
            self.say_hello_to_all(ctx);
        }
        let expired: Vec<u64> = self.pending.iter().filter(|(_, p)| p.deadline <= ctx.now).map(|(r, _)| *r).collect();
        for rid in expired {
            if let Some(p) = self.pending.remove(&rid) {
                self.stats.forwards_timed_out += 1;
                ctx.send_error(
                    Peer::Tag(p.client),
                    p.client_rid,
                    ErrorCode::Unreachable,
                    format!("node {} did not answer", short(&p.peer)),
                );
            }
        }
        Ok(())
    }

    fn seal<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), StoreError> {
        let head = self.log.seal(ctx.store, &self.key, ctx.now)?;
        self.stats.heads_signed += 1;
        self.unannounced = false;
        // Witnesses and peers hear of the head only once it is durable: a crash before
        // that must not leave two different signed heads for one epoch in the world.
        let witnesses = self.pick_peers(ctx, ctx.config.federation.witnesses_wanted, None);
        for w in witnesses {
            let from = self.witness_sizes.get(&w).copied().unwrap_or(0);
            let size = head.head.epoch + 1;
            let from = if from > 0 && from <= size { from } else { 0 };
            let consistency = if from > 0 { self.log.consistency(from, size) } else { Vec::new() };
            let rid = self.fresh_rid(ctx);
            if let Some(addr) = self.peers.get(&w).cloned() {
                ctx.send_durable(
                    Peer::Address(addr),
                    rid,
                    Body::CosignRequest { head: head.clone(), from_log_size: from, consistency },
                );
            }
        }
        self.gossip(ctx, GossipItem::Head { head, cosignatures: Vec::new() }, None);
        Ok(())
    }

    // --- peering ---

    fn say_hello_to_all<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) {
        let mut targets: BTreeSet<Address> = self.bootstrap.iter().cloned().collect();
        for d in self.known.values() {
            if !self.forks.contains_key(&d.node_id) {
                targets.insert(Address(d.address.clone()));
            }
        }
        targets.remove(&Address(self.descriptor.address.clone()));
        for addr in targets {
            if self.peer_by_address.contains_key(&addr)
                || self.peers.len() >= ctx.config.federation.peers_max.min(PEERS_MAX)
            {
                continue;
            }
            self.hello(ctx, addr);
        }
    }

    fn hello<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, addr: Address) {
        let mut nonce = [0u8; 32];
        ctx.rng.fill_bytes(&mut nonce);
        self.handshakes.entry(addr.clone()).or_default().hello = Some(nonce);
        ctx.send(Peer::Address(addr), 0, Body::PeerHello { descriptor: self.descriptor.clone(), nonce });
    }

    fn check_descriptor(&self, d: &NodeDescriptor, from: &Address) -> Result<(), FederationError> {
        descriptor::verify(d).map_err(|e| FederationError::BadDescriptor(e.to_string()))?;
        if d.address != from.0 {
            return Err(FederationError::BadDescriptor("its address is not the one it came from".into()));
        }
        if d.node_id == self.id {
            return Err(FederationError::BadDescriptor("it is this node's own id".into()));
        }
        if self.forks.contains_key(&d.node_id) {
            return Err(FederationError::Distrusted(short(&d.node_id)));
        }
        Ok(())
    }

    fn on_hello<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: Address,
        rid: u64,
        descriptor: NodeDescriptor,
        nonce: Nonce,
    ) -> Result<(), FederationError> {
        self.check_descriptor(&descriptor, &from)?;
        let already = self.peer_by_address.contains_key(&from);
        if !already && self.peers.len() >= ctx.config.federation.peers_max.min(PEERS_MAX) {
            self.stats.peers_rejected += 1;
            return Err(FederationError::Busy(self.peers.len()));
        }
        let answer = identity::sign(&self.key, &identity::peer_challenge_bytes(&nonce, &descriptor.node_id, &self.id));
        let mut mine = [0u8; 32];
        ctx.rng.fill_bytes(&mut mine);
        self.handshakes.entry(from.clone()).or_default().welcome = Some((mine, descriptor));
        ctx.send(
            Peer::Address(from),
            rid,
            Body::PeerWelcome { descriptor: self.descriptor.clone(), answer, nonce: mine },
        );
        Ok(())
    }

    fn on_welcome<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: Address,
        rid: u64,
        descriptor: NodeDescriptor,
        answer: nymstr_proto::wire::Sig,
        nonce: Nonce,
    ) -> Result<(), FederationError> {
        let Some(sent) = self.handshakes.get(&from).and_then(|h| h.hello) else {
            return Err(FederationError::NoHandshake);
        };
        self.check_descriptor(&descriptor, &from)?;
        identity::verify(
            &descriptor.key,
            &identity::peer_challenge_bytes(&sent, &self.id, &descriptor.node_id),
            &answer,
        )
        .map_err(|_| FederationError::BadAnswer)?;
        let proof = identity::sign(&self.key, &identity::peer_challenge_bytes(&nonce, &descriptor.node_id, &self.id));
        ctx.send(Peer::Address(from.clone()), rid, Body::PeerProof { answer: proof });
        self.authenticate(ctx, from, descriptor)?;
        Ok(())
    }

    fn on_proof<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: Address,
        answer: nymstr_proto::wire::Sig,
    ) -> Result<(), FederationError> {
        let Some((nonce, descriptor)) = self.handshakes.get(&from).and_then(|h| h.welcome.clone()) else {
            return Err(FederationError::NoHandshake);
        };
        identity::verify(
            &descriptor.key,
            &identity::peer_challenge_bytes(&nonce, &self.id, &descriptor.node_id),
            &answer,
        )
        .map_err(|_| FederationError::BadAnswer)?;
        self.authenticate(ctx, from, descriptor)?;
        Ok(())
    }

    /// Both sides proved their keys: record the peer and bring it up to date.
    fn authenticate<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: Address,
        descriptor: NodeDescriptor,
    ) -> Result<(), FederationError> {
        self.handshakes.remove(&from);
        let id = descriptor.node_id;
        // A node that moved drops its old address.
        if let Some(old) = self.peers.insert(id, from.clone())
            && old != from
        {
            self.peer_by_address.remove(&old);
        }
        self.peer_by_address.insert(from.clone(), id);
        self.learn_descriptor(ctx, descriptor)?;
        // Catch the new peer up: our descriptor and head, every descriptor and fork we know.
        let mut items = vec![GossipItem::Descriptor(self.descriptor.clone())];
        if let Some(head) = self.log.latest() {
            items.push(GossipItem::Head { head: head.clone(), cosignatures: self.log.latest_cosignatures() });
        }
        items.extend(self.known.values().filter(|d| d.node_id != id).cloned().map(GossipItem::Descriptor));
        items.extend(self.forks.values().cloned().map(GossipItem::Fork));
        for (head, cosignatures) in self.heads.values() {
            items.push(GossipItem::Head { head: head.clone(), cosignatures: cosignatures.clone() });
        }
        // Chunks bounded by count and by encoded size, so each fits one frame.
        let mut chunk: Vec<GossipItem> = Vec::new();
        let mut bytes = 0usize;
        for item in items {
            let len = codec::encode(&item).len();
            if !chunk.is_empty() && (chunk.len() == GOSSIP_ITEMS_MAX || bytes + len > GOSSIP_CHUNK_BYTES_MAX) {
                self.stats.gossip_out += 1;
                ctx.send_durable(Peer::Address(from.clone()), 0, Body::Gossip { items: std::mem::take(&mut chunk) });
                bytes = 0;
            }
            bytes += len;
            chunk.push(item);
        }
        if !chunk.is_empty() {
            self.stats.gossip_out += 1;
            ctx.send_durable(Peer::Address(from.clone()), 0, Body::Gossip { items: chunk });
        }
        Ok(())
    }

    /// Stores a verified descriptor if it is new or newer. Returns true if it changed.
    fn learn_descriptor<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, d: NodeDescriptor) -> Result<bool, StoreError> {
        if d.node_id == self.id {
            return Ok(false);
        }
        if let Some(held) = self.known.get(&d.node_id)
            && !descriptor::newer(held, &d)
        {
            return Ok(false);
        }
        ctx.save(Table::FedPeers, &d.node_id.0, &d)?;
        self.known.insert(d.node_id, d);
        Ok(true)
    }

    // --- gossip ---

    fn fresh_rid<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> u64 {
        loop {
            let rid = ctx.rng.next_u64() | 1;
            if !self.pending.contains_key(&rid) {
                return rid;
            }
        }
    }

    /// Up to `n` authenticated peers other than `except`, chosen at random.
    fn pick_peers<S: Store>(&self, ctx: &mut Ctx<'_, S>, n: usize, except: Option<NodeId>) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.peers.keys().copied().filter(|p| Some(*p) != except).collect();
        // Partial Fisher-Yates on the seeded generator.
        let take = n.min(ids.len());
        for i in 0..take {
            let j = i + (ctx.rng.next_u64() % (ids.len() - i) as u64) as usize;
            ids.swap(i, j);
        }
        ids.truncate(take);
        ids
    }

    /// Remembers an item; false if it was seen already.
    fn first_sight<S: Store>(&mut self, ctx: &Ctx<'_, S>, item: &GossipItem) -> bool {
        let h = merkle::hash("nymstr/v1/gossip-item", &[&codec::encode(item)]);
        if !self.seen.insert(h) {
            return false;
        }
        self.seen_order.push_back(h);
        while self.seen_order.len() > ctx.config.federation.gossip_seen_max {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// Sends an item on: fork certificates to every peer, the rest to `gossip_fanout`.
    fn gossip<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, item: GossipItem, from: Option<NodeId>) {
        self.first_sight(ctx, &item);
        let n = match item {
            GossipItem::Fork(_) => usize::MAX,
            _ => ctx.config.federation.gossip_fanout,
        };
        for p in self.pick_peers(ctx, n, from) {
            if let Some(addr) = self.peers.get(&p).cloned() {
                self.stats.gossip_out += 1;
                ctx.send_durable(Peer::Address(addr), 0, Body::Gossip { items: vec![item.clone()] });
            }
        }
    }

    /// Handles gossip from a peer (`from` = its id) or a client (`None`: clients report the
    /// heads they were shown, so an equivocating node is caught by comparison).
    pub fn on_gossip<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: Option<NodeId>,
        items: Vec<GossipItem>,
    ) -> Result<(), StoreError> {
        for item in items {
            self.stats.gossip_in += 1;
            if !self.first_sight(ctx, &item) {
                continue;
            }
            let forward = match &item {
                GossipItem::Descriptor(d) => {
                    from.is_some() && descriptor::verify(d).is_ok() && self.learn_descriptor(ctx, d.clone())?
                }
                GossipItem::Head { head, cosignatures } => self.on_head(ctx, head, cosignatures)?,
                GossipItem::Fork(cert) => self.on_fork(ctx, cert.clone())?,
                GossipItem::Advert(a) => {
                    let fresh = from.is_some()
                        && a.name.len() <= GROUP_NAME_BYTES_MAX
                        && a.description.len() <= GROUP_DESCRIPTION_BYTES_MAX
                        && a.group_node.len() <= ADDRESS_BYTES_MAX
                        && identity::verify(&a.admin_key, &identity::group_advert_bytes(a), &a.sig).is_ok()
                        && self.adverts.get(&a.group_id).is_none_or(|held| held.issued_at_us < a.issued_at_us);
                    if fresh {
                        self.adverts.insert(a.group_id, a.clone());
                    }
                    fresh
                }
            };
            if forward {
                self.gossip(ctx, item, from);
            }
        }
        // New descriptors may be nodes to peer with.
        if self.peers.len() < ctx.config.federation.peers_max.min(PEERS_MAX) {
            let fresh: Vec<Address> = self
                .known
                .values()
                .filter(|d| !self.peers.contains_key(&d.node_id) && !self.forks.contains_key(&d.node_id))
                .map(|d| Address(d.address.clone()))
                .filter(|a| !self.handshakes.contains_key(a))
                .collect();
            for addr in fresh {
                self.hello(ctx, addr);
            }
        }
        Ok(())
    }

    /// A head seen in gossip. Returns whether to pass it on.
    fn on_head<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        head: &SignedHead,
        cosignatures: &[Cosignature],
    ) -> Result<bool, StoreError> {
        let node = head.head.node_id;
        if node == self.id {
            // Our own head coming back: a different one for one of our epochs would mean
            // our key signed it elsewhere; nothing here can repair that, so it is dropped.
            return Ok(false);
        }
        let Some(key) = self.known.get(&node).map(|d| d.key) else { return Ok(false) };
        if evidence::verify_head(head, &key).is_err() {
            return Ok(false);
        }
        let epoch = head.head.epoch;
        if let Some(held) = self.recent.get(&(node, epoch)).cloned()
            && held != *head
        {
            if let Some(cert) = evidence::fork_certificate(&held, head) {
                self.on_fork(ctx, cert.clone())?;
                self.gossip(ctx, GossipItem::Fork(cert), None);
            }
            return Ok(false);
        }
        self.recent.insert((node, epoch), head.clone());
        let kept = ctx.config.federation.heads_kept_per_node as u64;
        if epoch >= kept {
            let cutoff = epoch - kept;
            let stale: Vec<(NodeId, u64)> = self.recent.range((node, 0)..(node, cutoff)).map(|(k, _)| *k).collect();
            for k in stale {
                self.recent.remove(&k);
            }
        }
        let valid: Vec<Cosignature> = cosignatures
            .iter()
            .filter(|c| {
                self.known.get(&c.witness).is_some_and(|w| evidence::verify_cosignature(c, &w.key, &head.head).is_ok())
            })
            .cloned()
            .collect();
        let newer = match self.heads.get(&node) {
            None => true,
            Some((h, cs)) => h.head.epoch < epoch || (h.head.epoch == epoch && cs.len() < valid.len()),
        };
        if newer {
            self.heads.insert(node, (head.clone(), valid));
        }
        Ok(newer)
    }

    /// A fork certificate: verified against the accused node's key, kept, and it ends the
    /// peering with that node. Returns whether it was new.
    fn on_fork<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, cert: ForkCertificate) -> Result<bool, StoreError> {
        let node = cert.a.head.node_id;
        if node == self.id || self.forks.contains_key(&node) {
            return Ok(false);
        }
        let Some(key) = self.known.get(&node).map(|d| d.key) else { return Ok(false) };
        if evidence::verify_fork(&cert, &key).is_err() {
            return Ok(false);
        }
        ctx.save(Table::FedState, &prefixed(PREFIX_FORK, &node), &cert)?;
        self.forks.insert(node, cert);
        self.stats.fork_certificates += 1;
        if let Some(addr) = self.peers.remove(&node) {
            self.peer_by_address.remove(&addr);
        }
        Ok(true)
    }

    // --- witnessing ---

    fn on_cosign_request<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: NodeId,
        rid: u64,
        head: SignedHead,
        from_log_size: u64,
        consistency: Vec<Hash>,
    ) -> Result<(), FederationError> {
        if head.head.node_id != from {
            return Err(FederationError::Inconsistent("a node asks to cosign only its own heads".into()));
        }
        let key = self.known.get(&from).map(|d| d.key).ok_or_else(|| FederationError::UnknownNode(short(&from)))?;
        // The proof must start where this witness left off; if the requester lost track
        // (a lost `Cosigned`, a restart), say where.
        let last = self.witness.last_size(&from);
        if last > 0 && from_log_size != last && head.head.epoch.saturating_add(1) > last {
            ctx.send(Peer::Address(self.peers[&from].clone()), rid, Body::CosignFrom { log_size: last });
            return Ok(());
        }
        let verdict =
            self.witness.check(&head, &key, &consistency).map_err(|e| FederationError::Inconsistent(e.to_string()))?;
        ctx.save(Table::FedState, KEY_WITNESS, &self.witness)?;
        match verdict {
            WitnessVerdict::Cosign | WitnessVerdict::AlreadyCosigned => {
                let cosignature = evidence::cosign(&self.key, &head);
                self.stats.cosignatures_given += 1;
                ctx.send_durable(
                    Peer::Address(self.peers[&from].clone()),
                    rid,
                    Body::Cosigned { cosignature: cosignature.clone() },
                );
                // What a witness cosigned is gossiped, so two witnesses shown different
                // heads for one epoch find out.
                let _ = self.on_head(ctx, &head, std::slice::from_ref(&cosignature))?;
                self.gossip(ctx, GossipItem::Head { head, cosignatures: vec![cosignature] }, Some(from));
                Ok(())
            }
            WitnessVerdict::Fork(cert) => {
                self.on_fork(ctx, cert.clone())?;
                self.gossip(ctx, GossipItem::Fork(cert), None);
                Err(FederationError::Distrusted(short(&from)))
            }
            WitnessVerdict::Stale => Err(FederationError::Inconsistent("older than a head already cosigned".into())),
            WitnessVerdict::Inconsistent => {
                let last = self.witness.last_size(&from);
                Err(FederationError::Inconsistent(format!("not consistent with log size {last} cosigned before")))
            }
        }
    }

    fn on_cosigned<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: NodeId,
        cosig: Cosignature,
    ) -> Result<(), FederationError> {
        let key = self.known.get(&from).map(|d| d.key).ok_or_else(|| FederationError::UnknownNode(short(&from)))?;
        if cosig.witness != from {
            return Err(FederationError::Inconsistent("cosignature names another witness".into()));
        }
        let Some(head) = self.log.latest().cloned() else { return Err(FederationError::NoHead) };
        // It may be for the head before the newest (a slow witness); the log checks.
        let target = if head.head.epoch == cosig.epoch {
            head
        } else {
            match crate::transparency_log::stored_head(&*ctx.store, cosig.epoch)? {
                Some(h) => h,
                None => return Err(FederationError::Inconsistent("no such epoch".into())),
            }
        };
        evidence::verify_cosignature(&cosig, &key, &target.head)
            .map_err(|e| FederationError::Inconsistent(e.to_string()))?;
        let size = cosig.epoch + 1;
        if self.witness_sizes.get(&from).is_none_or(|s| *s < size) {
            ctx.save(Table::FedState, &prefixed(PREFIX_WSIZE, &from), &size)?;
            self.witness_sizes.insert(from, size);
        }
        if self.log.add_cosignature(ctx.store, cosig)? {
            self.stats.cosignatures_received += 1;
            let latest = self.log.latest().cloned().expect("a head exists");
            let cosignatures = self.log.latest_cosignatures();
            if cosignatures.len() == ctx.config.federation.serve_quorum {
                // Re-announce the head once it carries a quorum.
                self.gossip(ctx, GossipItem::Head { head: latest, cosignatures }, None);
            }
        }
        Ok(())
    }

    /// A witness asks for the proof from the size it last cosigned: ask again from there.
    fn on_cosign_from<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: NodeId,
        log_size: u64,
    ) -> Result<(), FederationError> {
        let Some(head) = self.log.latest().cloned() else { return Err(FederationError::NoHead) };
        let size = head.head.epoch + 1;
        if log_size == 0 || log_size > size {
            return Err(FederationError::Inconsistent(format!("this log has no size {log_size}")));
        }
        ctx.save(Table::FedState, &prefixed(PREFIX_WSIZE, &from), &log_size)?;
        self.witness_sizes.insert(from, log_size);
        let consistency = self.log.consistency(log_size, size);
        let rid = self.fresh_rid(ctx);
        let addr = self.peers[&from].clone();
        ctx.send_durable(Peer::Address(addr), rid, Body::CosignRequest { head, from_log_size: log_size, consistency });
        Ok(())
    }

    // --- lookups ---

    fn local_lookup<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        to: Peer,
        rid: u64,
        username: &str,
        from_log_size: u64,
    ) -> Result<(), FederationError> {
        let cfg = &ctx.config.federation;
        let folded = identity::normalize_username(username).map_err(|e| FederationError::BadName(e.to_string()))?;
        let proof = self
            .log
            .lookup(&folded, from_log_size, ctx.now, cfg.serve_quorum, cfg.serve_grace_us)
            .ok_or(FederationError::NoHead)?;
        self.stats.lookups_served += 1;
        ctx.send_durable(to, rid, Body::KtLookupResult { descriptor: self.descriptor.clone(), proof: Box::new(proof) });
        Ok(())
    }

    /// A client's transparency lookup: answered here for local names, else forwarded to
    /// the named node (which learns only this node).
    pub fn on_client_lookup<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        name: &str,
        from_log_size: u64,
    ) -> Result<(), FederationError> {
        match name.split_once('@') {
            None => self.local_lookup(ctx, Peer::Tag(tag), rid, name, from_log_size),
            Some(_) => {
                let q = QualifiedName::parse(name).map_err(|e| FederationError::BadName(e.to_string()))?;
                if q.node == self.id {
                    return self.local_lookup(ctx, Peer::Tag(tag), rid, &q.username, from_log_size);
                }
                if let Some(cert) = self.forks.get(&q.node) {
                    // The client checks the evidence itself.
                    ctx.send(Peer::Tag(tag), rid, Body::Gossip { items: vec![GossipItem::Fork(cert.clone())] });
                    return Ok(());
                }
                self.forward_slot()?;
                let addr = self.peer_address(ctx, &q.node)?;
                let fwd = self.fresh_rid(ctx);
                let deadline = ctx.now + ctx.config.federation.forward_timeout_us;
                self.pending.insert(
                    fwd,
                    Pending { peer: q.node, client: tag, client_rid: rid, deadline, kind: PendingKind::Lookup },
                );
                self.stats.lookups_forwarded += 1;
                ctx.send(Peer::Address(addr), fwd, Body::KtLookup { name: q.username, from_log_size });
                Ok(())
            }
        }
    }

    /// Refuses a new forward while `FORWARDS_PENDING_MAX` wait for their peers (a client
    /// flooding remote lookups gets `Busy`, nothing else is affected).
    fn forward_slot(&self) -> Result<(), FederationError> {
        if self.pending.len() >= FORWARDS_PENDING_MAX {
            return Err(FederationError::Busy(self.pending.len()));
        }
        Ok(())
    }

    /// The address of an authenticated peer. A node known only by its descriptor is
    /// greeted and the caller told `Unreachable` (transient: the client retries); a node
    /// not known at all is `UnknownNode`.
    fn peer_address<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, node: &NodeId) -> Result<Address, FederationError> {
        if let Some(addr) = self.peers.get(node) {
            return Ok(addr.clone());
        }
        let Some(d) = self.known.get(node) else { return Err(FederationError::UnknownNode(short(node))) };
        let addr = Address(d.address.clone());
        if self.handshakes.get(&addr).is_none_or(|h| h.hello.is_none()) {
            self.hello(ctx, addr);
        }
        Err(FederationError::NotYetPeered(short(node)))
    }

    /// `Nodes`: this node's descriptor first, then the others it knows.
    pub fn on_nodes_request<S: Store>(&self, ctx: &mut Ctx<'_, S>, to: Peer, rid: u64) {
        let mut descriptors = vec![self.descriptor.clone()];
        descriptors.extend(self.known.values().filter(|d| !self.forks.contains_key(&d.node_id)).cloned());
        descriptors.truncate(DESCRIPTORS_MAX);
        ctx.send(to, rid, Body::Nodes { descriptors });
    }

    // --- direct messages across nodes ---

    /// Forwards an authenticated local sender's DM to the recipient's home node.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_dm<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        to_node: NodeId,
        sender: &Account,
        cert: InstallationCert,
        dm: SendDm,
    ) -> Result<(), FederationError> {
        if self.forks.contains_key(&to_node) {
            return Err(FederationError::Distrusted(short(&to_node)));
        }
        self.forward_slot()?;
        let addr = self.peer_address(ctx, &to_node)?;
        let fwd = self.fresh_rid(ctx);
        let deadline = ctx.now + ctx.config.federation.forward_timeout_us;
        self.pending
            .insert(fwd, Pending { peer: to_node, client: tag, client_rid: rid, deadline, kind: PendingKind::Dm });
        self.stats.dms_forwarded += 1;
        let from_username = QualifiedName { username: sender.username.clone(), node: self.id }.to_string();
        ctx.send(Peer::Address(addr), fwd, Body::ForwardDm { from_username, cert, dm });
        Ok(())
    }

    /// A DM forwarded by a peer for one of our users: checked, then queued as if sent here.
    #[allow(clippy::too_many_arguments)]
    fn on_forward_dm<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: NodeId,
        rid: u64,
        from_username: String,
        cert: InstallationCert,
        dm: SendDm,
        relay: &mut Relay,
        registry: &Registry,
        stats: &mut NodeStats,
    ) -> Result<(), (ErrorCode, String)> {
        let q = QualifiedName::parse(&from_username).map_err(|e| fe(FederationError::BadName(e.to_string())))?;
        if q.node != from {
            return Err(fe(FederationError::BadForward("the sender is not a user of the forwarding node".into())));
        }
        identity::verify_cert(&cert).map_err(|_| fe(FederationError::BadForward("certificate".into())))?;
        if identity::installation_id(&cert.signing_key) != dm.from {
            return Err(fe(FederationError::BadForward("certificate is not the sender installation's".into())));
        }
        identity::verify(&cert.signing_key, &identity::send_dm_signing_bytes(&dm), &dm.sig)
            .map_err(|_| fe(FederationError::BadForward("outer signature".into())))?;
        let local = match dm.to.split_once('@') {
            None => dm.to.clone(),
            Some((user, node)) => {
                if NodeId::from_hex(node) != Some(self.id) {
                    return Err(fe(FederationError::BadForward("recipient is not homed here".into())));
                }
                user.to_string()
            }
        };
        self.stats.dms_received += 1;
        let addr = self.peers[&from].clone();
        relay
            .enqueue(ctx, registry, Peer::Address(addr), rid, from_username, &local, dm, stats)
            .map_err(|e| (e.code(), e.to_string()))
    }

    /// An answer from a peer to something forwarded: passed back to the waiting client.
    fn on_peer_answer<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, from: NodeId, rid: u64, body: Body) -> bool {
        let Some(p) = self.pending.get(&rid) else { return false };
        if p.peer != from {
            return false;
        }
        let ok = matches!(
            (&body, p.kind),
            (Body::KtLookupResult { .. } | Body::Error { .. } | Body::Gossip { .. }, PendingKind::Lookup)
                | (Body::SendAck { .. } | Body::Error { .. }, PendingKind::Dm)
        );
        if !ok {
            return false;
        }
        let p = self.pending.remove(&rid).expect("present");
        let body = match body {
            // The peer no longer knows us (it restarted, or a handshake was lost): peer
            // again; for the client it is a transient failure.
            Body::Error { code: ErrorCode::NotPeer, .. } => {
                if let Some(addr) = self.peers.remove(&from) {
                    self.peer_by_address.remove(&addr);
                    self.hello(ctx, addr);
                }
                Body::Error { code: ErrorCode::Unreachable, detail: format!("re-peering with {}", short(&from)) }
            }
            other => other,
        };
        ctx.send(Peer::Tag(p.client), p.client_rid, body);
        true
    }

    /// A public group created here: its advert is gossiped so every discovery node's
    /// directory lists it.
    pub fn announce_advert<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, advert: GroupAdvert) {
        self.gossip(ctx, GossipItem::Advert(advert), None);
    }

    // --- registry hook ---

    /// A registration or installation change is durable in the registry: stage the new
    /// directory entry and promise the client its inclusion.
    pub fn on_account_changed<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        account: &Account,
    ) -> Result<nymstr_proto::federation::Promise, StoreError> {
        let entry = DirEntry {
            username: account.username.clone(),
            account_key: account.account_key,
            installations: account.installations.clone(),
            status: EntryStatus::Active,
            seq: 0,
            epoch: 0,
        };
        self.log.stage(ctx.store, &self.key, &account.username, entry)
    }

    /// Stages a directory entry as given (an operator's override; see
    /// `NodeCore::operator_stage_entry`).
    pub fn stage_entry<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        username: &str,
        entry: DirEntry,
    ) -> Result<nymstr_proto::federation::Promise, StoreError> {
        self.log.stage(ctx.store, &self.key, username, entry)
    }

    // --- dispatch ---

    /// A frame from another node's address. Errors are answered to the address by the
    /// caller; errors from peers are routed to whoever waits for them.
    #[allow(clippy::too_many_arguments)]
    pub fn on_peer_frame<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: Address,
        rid: u64,
        body: Body,
        relay: &mut Relay,
        registry: &Registry,
        stats: &mut NodeStats,
    ) -> Result<(), (ErrorCode, String)> {
        match body {
            Body::PeerHello { descriptor, nonce } => {
                return self.on_hello(ctx, from, rid, descriptor, nonce).map_err(fe);
            }
            Body::PeerWelcome { descriptor, answer, nonce } => {
                return self.on_welcome(ctx, from, rid, descriptor, answer, nonce).map_err(fe);
            }
            Body::PeerProof { answer } => return self.on_proof(ctx, from, answer).map_err(fe),
            Body::NodesRequest => {
                self.on_nodes_request(ctx, Peer::Address(from), rid);
                return Ok(());
            }
            _ => {}
        }
        let Some(peer) = self.peer_by_address.get(&from).copied() else {
            if matches!(body, Body::Error { .. }) {
                return Ok(());
            }
            return Err(fe(FederationError::NotPeer));
        };
        if rid != 0 && self.pending.contains_key(&rid) && self.on_peer_answer(ctx, peer, rid, body.clone()) {
            return Ok(());
        }
        match body {
            Body::Error { .. } | Body::SendAck { .. } | Body::KtLookupResult { .. } => Ok(()),
            Body::Gossip { items } => self.on_gossip(ctx, Some(peer), items).map_err(|e| fe(e.into())),
            Body::CosignRequest { head, from_log_size, consistency } => {
                self.on_cosign_request(ctx, peer, rid, head, from_log_size, consistency).map_err(fe)
            }
            Body::CosignFrom { log_size } => self.on_cosign_from(ctx, peer, log_size).map_err(fe),
            Body::Cosigned { cosignature } => self.on_cosigned(ctx, peer, cosignature).map_err(fe),
            Body::KtLookup { name, from_log_size } => {
                if name.contains('@') {
                    return Err(fe(FederationError::BadName("peers look up local names only".into())));
                }
                self.local_lookup(ctx, Peer::Address(from), rid, &name, from_log_size).map_err(fe)
            }
            Body::ForwardDm { from_username, cert, dm } => {
                self.on_forward_dm(ctx, peer, rid, from_username, cert, dm, relay, registry, stats)
            }
            other => Err(fe(FederationError::Unexpected(other.kind()))),
        }
    }
}

fn fe(e: FederationError) -> (ErrorCode, String) {
    (e.code(), e.to_string())
}

fn short(id: &NodeId) -> String {
    id.to_hex()[..12].to_string()
}
