//! Federation core (`SPECv1.md` §9): the node's identity and descriptor, peering with
//! a mutual challenge, gossip of descriptors, signed heads, fork certificates and public
//! group adverts (bounded fan-out, de-duplicated), the node's transparency log (epochs,
//! promises, lookups with proofs), witnessing peers' heads, and cross-node forwarding of
//! lookups and direct messages with the SURB contract intact: a client only ever talks to
//! its home node, and a remote node learns the home node, never the client.
//!
//! Everything is sans-IO: time, randomness and storage come through [`Ctx`].
//!
//! Layout, dependencies going one way: `config` and `state` use no sibling; `peering` uses
//! `state`; `gossip` uses `peering`; `witnessing` uses `gossip`; `forwards` uses
//! `peering`; `directory` uses `forwards`. This file (start, accessors, timers, the
//! peer-frame dispatch) uses them all and is used by none.

pub(super) mod config;
mod directory;
mod forwards;
mod gossip;
mod peering;
mod state;
mod witnessing;

pub use config::FederationConfig;
pub use state::{FORWARDS_PENDING_MAX, Federation, FederationError, FederationStats, NodeIdentity};

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::actors::registry::Registry;
use crate::actors::relay::Relay;
use crate::actors::types::{Address, Ctx, NodeStats, Peer, load};
use crate::store::{Store, StoreError, Table};
use crate::transparency_log::TransparencyLog;
use state::{KEY_WITNESS_LEGACY, PREFIX_FORK, PREFIX_WHEAD, PREFIX_WSIZE, Standing, fe, whead_key};

use nymstr_proto::codec;
use nymstr_proto::federation::descriptor;
use nymstr_proto::federation::evidence::WitnessView;
use nymstr_proto::federation::{Cosignature, ForkCertificate, NodeDescriptor, NodeId, SignedHead};
use nymstr_proto::limits::KNOWN_NODES_MAX;
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{Body, ErrorCode, GroupAdvert};

/// The witness view from its rows (`whead/` || node || epoch), forks included. A store
/// of the previous layout (the whole view as one record) is rewritten as rows once.
fn recover_witness_view<S: Store>(
    ctx: &mut Ctx<'_, S>,
    forks: &BTreeMap<NodeId, ForkCertificate>,
) -> Result<(WitnessView, BTreeMap<NodeId, TimeUs>), StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt { table: Table::FedState.name(), detail: detail.into() };
    if let Some(old) = load::<WitnessView, _>(&*ctx.store, Table::FedState, KEY_WITNESS_LEGACY)? {
        for head in old.heads() {
            ctx.save(Table::FedState, &whead_key(&head.head.node_id, head.head.epoch), &(ctx.now, head))?;
        }
        ctx.store.delete(Table::FedState, KEY_WITNESS_LEGACY)?;
    }
    let mut witness = WitnessView::new();
    let mut seen = BTreeMap::new();
    for (k, v) in ctx.store.scan_prefix(Table::FedState, PREFIX_WHEAD)? {
        let node = k
            .get(PREFIX_WHEAD.len()..PREFIX_WHEAD.len() + 32)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(NodeId)
            .ok_or_else(|| corrupt("witness view key"))?;
        let (at, head): (TimeUs, SignedHead) =
            codec::decode_record(&v).map_err(|e| corrupt(&format!("witnessed head: {e}")))?;
        if head.head.node_id != node {
            return Err(corrupt("witnessed head stored under another node"));
        }
        witness.restore(&head);
        let last = seen.entry(node).or_insert(at);
        *last = (*last).max(at);
    }
    for cert in forks.values() {
        witness.restore_fork(cert.clone());
    }
    Ok((witness, seen))
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
        let mut standing = BTreeMap::new();
        for (_, v) in ctx.store.scan_prefix(Table::FedPeers, &[])? {
            if let Ok(d) = codec::decode_record::<NodeDescriptor>(&v)
                && descriptor::verify(&d).is_ok()
                && d.node_id != id
                && known.len() < KNOWN_NODES_MAX
            {
                standing.insert(d.node_id, Standing { learnt_at: ctx.now, verified_at: None, introducer: None });
                known.insert(d.node_id, d);
            }
        }
        let mut forks = BTreeMap::new();
        for (_, v) in ctx.store.scan_prefix(Table::FedState, PREFIX_FORK)? {
            if let Ok(c) = codec::decode_record::<ForkCertificate>(&v) {
                forks.insert(c.a.head.node_id, c);
            }
        }
        let mut witness_sizes = BTreeMap::new();
        for (k, v) in ctx.store.scan_prefix(Table::FedState, PREFIX_WSIZE)? {
            let row = codec::decode_record::<(u64, TimeUs)>(&v)
                .or_else(|_| codec::decode_record::<u64>(&v).map(|size| (size, ctx.now)));
            if let (Ok(arr), Ok(row)) = (<[u8; 32]>::try_from(&k[PREFIX_WSIZE.len()..]), row) {
                witness_sizes.insert(NodeId(arr), row);
            }
        }
        let (witness, witness_seen) = recover_witness_view(ctx, &forks)?;
        // Nodes this node witnessed, or that witnessed it, were peers that proved their
        // keys: verified again from the start (greeted at once, not evicted by a flood).
        for (node, s) in standing.iter_mut() {
            if witness.knows(node) || witness_sizes.contains_key(node) {
                s.verified_at = Some(ctx.now);
            }
        }
        let mut me = Self {
            key: identity.key,
            id,
            descriptor,
            bootstrap: identity.bootstrap,
            log,
            known,
            standing,
            seeds: BTreeSet::new(),
            peer_by_address: BTreeMap::new(),
            peers: BTreeMap::new(),
            handshakes: BTreeMap::new(),
            heads: BTreeMap::new(),
            recent: BTreeMap::new(),
            forks,
            witness,
            witness_seen,
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
        me.reconcile_registry(ctx)?;
        // An empty log gets epoch 0; a log whose newest head predates the sparse directory
        // tree gets a new epoch at once, so every proof served is against a current root.
        if me.log.latest().is_none() || me.log.sealed_under_old_tree() {
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

    /// The log, to misbehave with (the simulator's adversaries only).
    pub fn log_mut(&mut self) -> &mut TransparencyLog {
        &mut self.log
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
        self.expire_forwards(ctx);
        Ok(())
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
            Body::ForwardDm { from_username, cert, dm, sent_at_us, sig } => {
                self.on_forward_dm(ctx, peer, rid, from_username, cert, dm, sent_at_us, sig, relay, registry, stats)
            }
            other => Err(fe(FederationError::Unexpected(other.kind()))),
        }
    }
}
