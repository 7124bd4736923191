//! Sans-IO actor cores. Each core is a deterministic state machine: the host feeds it
//! `(now, input)` and takes [`Output`]s; time, randomness and storage come from the host.
//!
//! `NodeCore` is the shape a host sees (quinn-proto style): `handle_frame`,
//! `handle_timeout`, `poll_timeout`, `drain_outputs`. It routes each message to the core
//! that owns it: [`registry`] (accounts, challenges, tag bindings), [`relay`] (direct
//! messages, offline queues, deliveries), [`steward`] (MLS groups: logs, commits,
//! subscriptions, pushes, directory) and, on a node started with an identity,
//! [`federation`] (peering, gossip, the transparency log, forwarding). This file holds
//! `NodeCore` and its router; the values the cores share (peers, outputs, configuration,
//! the step context) are in `types`, re-exported here.

pub mod federation;
mod quota;
pub mod registry;
pub mod relay;
pub mod steward;
mod types;

use rand_chacha::ChaCha20Rng;

use crate::store::{Store, StoreError};
use nymstr_proto::codec::{self, CodecError};
use nymstr_proto::federation::NodeId;
use nymstr_proto::wire::{Body, Envelope, ErrorCode, GossipItem};

pub use nymstr_proto::time::TimeUs;
pub use types::{Address, CodedError, Ctx, NodeConfig, NodeStats, Output, Peer, SenderTag, load};

/// The step context over a node's own store, generator, configuration and outputs.
macro_rules! step_ctx {
    ($node:expr, $now:expr) => {
        Ctx {
            now: $now,
            node: $node.node_id,
            store: &mut $node.store,
            rng: &mut $node.rng,
            config: &$node.config,
            out: &mut $node.out,
        }
    };
}

/// One node: the registry, relay and steward cores over one store.
pub struct NodeCore<S: Store> {
    store: S,
    rng: ChaCha20Rng,
    config: NodeConfig,
    registry: registry::Registry,
    relay: relay::Relay,
    steward: steward::Steward,
    federation: Option<federation::Federation>,
    /// What challenges name (see [`Ctx::node`]).
    node_id: NodeId,
    out: Vec<Output>,
    next_sweep_us: TimeUs,
    pub stats: NodeStats,
}

/// Why a node could not start from its store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<S: Store> NodeCore<S> {
    /// Starts (or restarts) a node over `store`, recovering in-memory indexes from it and
    /// re-sending every queued message to installations whose tag binding survived.
    pub fn start(now: TimeUs, store: S, rng: ChaCha20Rng, config: NodeConfig) -> Result<Self, StartError> {
        Self::start_inner(now, store, rng, config, None)
    }

    /// Starts a node that takes part in a federation under `identity`: it keeps a
    /// transparency log, peers with other nodes, witnesses their heads and forwards
    /// lookups and direct messages across nodes.
    pub fn start_federated(
        now: TimeUs,
        store: S,
        rng: ChaCha20Rng,
        config: NodeConfig,
        identity: federation::NodeIdentity,
    ) -> Result<Self, StartError> {
        Self::start_inner(now, store, rng, config, Some(identity))
    }

    fn start_inner(
        now: TimeUs,
        mut store: S,
        mut rng: ChaCha20Rng,
        config: NodeConfig,
        identity: Option<federation::NodeIdentity>,
    ) -> Result<Self, StartError> {
        let registry = registry::Registry::recover(&store)?;
        let relay = relay::Relay::recover(&store)?;
        let steward = steward::Steward::recover(&store, &mut rng)?;
        let node_id = match &identity {
            Some(identity) => nymstr_proto::federation::descriptor::node_id(&identity.key.verifying_key().to_bytes()),
            None => standalone_node_id(&mut store, &mut rng)?,
        };
        let mut node = Self {
            store,
            rng,
            config,
            registry,
            relay,
            steward,
            federation: None,
            node_id,
            out: Vec::new(),
            next_sweep_us: now,
            stats: NodeStats::default(),
        };
        let bound: Vec<_> = node.registry.bound_installations().collect();
        let mut ctx = step_ctx!(node, now);
        if let Some(identity) = identity {
            node.federation = Some(federation::Federation::start(&mut ctx, identity)?);
        }
        for (installation, tag) in bound {
            node.relay.deliver_pending(&mut ctx, &installation, tag, &mut node.stats)?;
        }
        Ok(node)
    }

    /// Feeds one inbound frame from `from`. Never panics on any bytes.
    pub fn handle_frame(&mut self, now: TimeUs, from: Peer, bytes: &[u8]) {
        self.stats.frames_in += 1;
        let envelope = match codec::decode_frame(bytes) {
            Ok(envelope) => envelope,
            Err(e) => {
                self.stats.frames_rejected += 1;
                let code = match e {
                    CodecError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                    CodecError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
                    _ => ErrorCode::Malformed,
                };
                step_ctx!(self, now).send_error(from, codec::peek_request_id(bytes), code, e.to_string());
                return;
            }
        };
        match from {
            Peer::Tag(tag) => self.route_client(now, tag, envelope),
            Peer::Address(addr) => self.route_node(now, addr, envelope),
        }
    }

    /// A frame from another node's address: the federation core's, refused if this node
    /// does not federate.
    fn route_node(&mut self, now: TimeUs, addr: Address, envelope: Envelope) {
        let rid = envelope.request_id;
        let is_error = matches!(envelope.body, Body::Error { .. });
        let mut ctx = step_ctx!(self, now);
        let Some(fed) = self.federation.as_mut() else {
            self.stats.frames_rejected += 1;
            if !is_error {
                ctx.send_error(Peer::Address(addr), rid, ErrorCode::UnexpectedMessage, "this node does not federate");
            }
            return;
        };
        // Errors from peers may answer something forwarded for a client.
        let r = fed.on_peer_frame(
            &mut ctx,
            addr.clone(),
            rid,
            envelope.body,
            &mut self.relay,
            &self.registry,
            &mut self.stats,
        );
        if let Err((code, detail)) = r {
            self.stats.frames_rejected += 1;
            // An error is never answered, or two peers could bounce errors forever.
            if !is_error {
                ctx.send_error(Peer::Address(addr), rid, code, detail);
            }
        }
    }

    /// A frame from a client (an anonymous tag): each request goes to the role that owns
    /// it; a refusal is answered to the tag.
    fn route_client(&mut self, now: TimeUs, tag: SenderTag, envelope: Envelope) {
        let rid = envelope.request_id;
        // An error is never answered, or two peers could bounce errors forever.
        if matches!(envelope.body, Body::Error { .. }) {
            self.stats.frames_rejected += 1;
            return;
        }
        let result = match envelope.body {
            body @ (Body::RegisterRequest { .. }
            | Body::RegisterResponse { .. }
            | Body::LoginRequest { .. }
            | Body::LoginResponse { .. }
            | Body::Lookup { .. }) => self.route_registry(now, tag, rid, body),
            body @ (Body::SendDm(_) | Body::AckDelivery { .. }) => self.route_relay(now, tag, rid, body),
            body @ (Body::GroupCreate { .. }
            | Body::GroupSubscribe { .. }
            | Body::GroupSubscribeProof { .. }
            | Body::GroupUpload { .. }
            | Body::GroupFetch { .. }
            | Body::GroupInfoRequest { .. }
            | Body::DirectoryRequest
            | Body::GroupUnsubscribe { .. }) => self.route_steward(now, tag, rid, body),
            body @ (Body::KtLookup { .. } | Body::NodesRequest | Body::Gossip { .. }) => {
                self.route_federation(now, tag, rid, body)
            }
            other => Err(not_a_request(&other)),
        };
        if let Err((code, detail)) = result {
            self.stats.frames_rejected += 1;
            step_ctx!(self, now).send_error(Peer::Tag(tag), rid, code, detail);
        }
    }

    /// Accounts (the registry): registration, login, lookups; a new binding then gets what
    /// waits for its installation, and a registration its promise of inclusion.
    fn route_registry(&mut self, now: TimeUs, tag: SenderTag, rid: u64, body: Body) -> Result<(), (ErrorCode, String)> {
        let mut ctx = step_ctx!(self, now);
        match body {
            Body::RegisterRequest { username, cert } => {
                self.registry.on_register_request(&mut ctx, tag, rid, &username, cert).map_err(err)
            }
            Body::RegisterResponse { nonce, account_sig, installation_sig } => {
                match self.registry.on_register_response(&mut ctx, tag, rid, nonce, account_sig, installation_sig) {
                    Ok(installation) => {
                        self.stats.registrations += 1;
                        // The registration bound `tag`: what waits for the installation
                        // (a re-registration from a fresh tag) goes there, as on login.
                        let r = self.relay.on_bound(&mut ctx, &installation, tag, &mut self.stats).map_err(err);
                        match (r, self.federation.as_mut()) {
                            (Ok(()), Some(fed)) => {
                                promise_inclusion(&mut ctx, fed, &self.registry, tag, rid, &installation)
                            }
                            (r, _) => r,
                        }
                    }
                    Err(e) => Err(err(e)),
                }
            }
            Body::LoginRequest { installation } => {
                self.registry.on_login_request(&mut ctx, tag, rid, installation).map_err(err)
            }
            Body::LoginResponse { nonce, installation_sig } => {
                let relay = &self.relay;
                match self.registry.on_login_response(&mut ctx, rid, tag, nonce, installation_sig, |i| relay.queued(i))
                {
                    Ok(installation) => {
                        self.stats.logins += 1;
                        self.relay.on_bound(&mut ctx, &installation, tag, &mut self.stats).map_err(err)
                    }
                    Err(e) => Err(err(e)),
                }
            }
            Body::Lookup { username } => {
                self.stats.lookups += 1;
                self.registry.on_lookup(&mut ctx, tag, rid, &username).map_err(err)
            }
            other => Err(not_a_request(&other)),
        }
    }

    /// Direct messages (the relay): sends, local or to `user@node`, and acknowledgements.
    fn route_relay(&mut self, now: TimeUs, tag: SenderTag, rid: u64, body: Body) -> Result<(), (ErrorCode, String)> {
        let mut ctx = step_ctx!(self, now);
        match body {
            Body::SendDm(dm) if dm.to.contains('@') => {
                let r = send_qualified(
                    &mut ctx,
                    self.federation.as_mut(),
                    &mut self.relay,
                    &self.registry,
                    tag,
                    rid,
                    dm,
                    &mut self.stats,
                );
                match &r {
                    Ok(()) => self.stats.dms_accepted += 1,
                    Err(_) => self.stats.dms_rejected += 1,
                }
                r
            }
            Body::SendDm(dm) => {
                let r = self.relay.on_send(&mut ctx, &self.registry, tag, rid, dm, &mut self.stats);
                match &r {
                    Ok(()) => self.stats.dms_accepted += 1,
                    Err(_) => self.stats.dms_rejected += 1,
                }
                r.map_err(err)
            }
            Body::AckDelivery { delivery_ids } => {
                self.stats.acks += 1;
                self.relay.on_ack(&mut ctx, &self.registry, tag, rid, &delivery_ids, &mut self.stats).map_err(err)
            }
            other => Err(not_a_request(&other)),
        }
    }

    /// Groups (the steward): creation (a public group's advert is gossiped), subscriptions,
    /// uploads, fetches, group info and the directory (with adverts learnt from peers).
    fn route_steward(&mut self, now: TimeUs, tag: SenderTag, rid: u64, body: Body) -> Result<(), (ErrorCode, String)> {
        let mut ctx = step_ctx!(self, now);
        match body {
            Body::GroupCreate { group_id, group_info, mut advert } => {
                // A federated node vouches for the adverts of the groups it hosts: peers
                // list an advert only under its host's signature.
                if let (Some(fed), Some(a)) = (self.federation.as_ref(), advert.as_mut()) {
                    fed.host_advert(now, a).map_err(err)?;
                }
                let r = self.steward.on_create(&mut ctx, tag, rid, group_id, group_info, advert.clone()).map_err(err);
                if let (Ok(()), Some(fed), Some(advert)) = (&r, self.federation.as_mut(), advert) {
                    fed.announce_advert(&mut ctx, advert);
                }
                r
            }
            Body::GroupSubscribe { group_id, member_key, from_seq } => {
                self.steward.on_subscribe(&mut ctx, tag, rid, group_id, member_key, from_seq).map_err(err)
            }
            Body::GroupSubscribeProof { group_id, nonce, sig } => {
                self.steward.on_subscribe_proof(&mut ctx, tag, rid, group_id, nonce, sig).map_err(err)
            }
            Body::GroupUpload { group_id, upload_id, mls, group_info, invite } => {
                let r = self.steward.on_upload(&mut ctx, tag, rid, group_id, upload_id, mls, group_info, invite);
                if r.is_err() {
                    self.steward.stats.group_uploads_rejected += 1;
                }
                r.map_err(err)
            }
            Body::GroupFetch { group_id, from_seq, max } => {
                self.steward.on_fetch(&mut ctx, tag, rid, group_id, from_seq, max).map_err(err)
            }
            Body::GroupInfoRequest { group_id } => {
                self.steward.on_group_info_request(&mut ctx, tag, rid, group_id).map_err(err)
            }
            Body::DirectoryRequest => {
                let remote: Vec<_> =
                    self.federation.as_ref().map(|f| f.remote_adverts().cloned().collect()).unwrap_or_default();
                self.steward.on_directory_request(&mut ctx, tag, rid, &remote);
                Ok(())
            }
            Body::GroupUnsubscribe { group_id } => self.steward.on_unsubscribe(&mut ctx, tag, group_id).map_err(err),
            other => Err(not_a_request(&other)),
        }
    }

    /// A client's federation requests: transparency lookups, the nodes known, and the heads
    /// (and fork certificates) it was shown.
    fn route_federation(
        &mut self,
        now: TimeUs,
        tag: SenderTag,
        rid: u64,
        body: Body,
    ) -> Result<(), (ErrorCode, String)> {
        let mut ctx = step_ctx!(self, now);
        let Some(fed) = self.federation.as_mut() else {
            return Err((ErrorCode::UnexpectedMessage, "this node does not federate".to_string()));
        };
        match body {
            Body::KtLookup { name, from_log_size } => {
                self.stats.lookups += 1;
                fed.on_client_lookup(&mut ctx, tag, rid, &name, from_log_size).map_err(err)
            }
            Body::NodesRequest => {
                fed.on_nodes_request(&mut ctx, Peer::Tag(tag), rid);
                Ok(())
            }
            // Clients report the heads (and fork certificates) they were shown.
            Body::Gossip { items } => {
                let items =
                    items.into_iter().filter(|i| matches!(i, GossipItem::Head { .. } | GossipItem::Fork(_))).collect();
                fed.on_gossip(&mut ctx, None, items).map_err(|e| (ErrorCode::Internal, e.to_string()))
            }
            other => Err(not_a_request(&other)),
        }
    }

    /// The next instant `handle_timeout` wants to run.
    pub fn poll_timeout(&self) -> Option<TimeUs> {
        let sweep = Some(self.next_sweep_us);
        let fed = self.federation.as_ref().map(|f| f.next_timeout());
        [sweep, self.relay.next_timeout(), fed].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: TimeUs) {
        let mut ctx = step_ctx!(self, now);
        // Storage failures here are retried at the next timeout; nothing is acknowledged.
        let _ = self.relay.on_timeout(&mut ctx, &self.registry, &mut self.stats);
        if let Some(fed) = self.federation.as_mut() {
            let _ = fed.on_timeout(&mut ctx);
        }
        if now >= self.next_sweep_us {
            let _ = self.registry.sweep(&mut ctx);
            let _ = self.relay.sweep(&mut ctx);
            let _ = self.steward.sweep(&mut ctx);
            self.next_sweep_us = now + self.config.sweep_every_us;
        }
    }

    /// Takes every output produced so far.
    pub fn drain_outputs(&mut self) -> std::vec::Drain<'_, Output> {
        self.out.drain(..)
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Stops the core, handing back its store (a crash or a shutdown).
    pub fn into_store(self) -> S {
        self.store
    }

    /// The id this node's challenges name (its federation id, if it federates).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The steward core (read-only: hosted groups, epochs, subscriptions).
    pub fn steward(&self) -> &steward::Steward {
        &self.steward
    }

    /// The steward's counters (kept apart from [`NodeStats`], which hosts sum field by field).
    /// Buggify for the simulator: see [`steward::Steward::buggify_admit_any_join`].
    #[doc(hidden)]
    pub fn buggify_steward_admits_any_join(&mut self) {
        self.steward.buggify_admit_any_join();
    }

    pub fn group_stats(&self) -> &steward::StewardStats {
        &self.steward.stats
    }

    /// An operator's override of a directory entry (account recovery, a court order, a
    /// compromise): staged for the next epoch like any change, so the transparency log
    /// shows it to everyone who looks, the account's owner first. The simulator's
    /// `substitute_key` adversary is exactly this.
    pub fn operator_stage_entry(
        &mut self,
        now: TimeUs,
        entry: nymstr_proto::federation::DirEntry,
    ) -> Result<Option<nymstr_proto::federation::Promise>, StoreError> {
        let Some(fed) = self.federation.as_mut() else { return Ok(None) };
        let mut ctx = step_ctx!(self, now);
        let username = entry.username.clone();
        fed.stage_entry(&mut ctx, &username, entry).map(Some)
    }

    /// The federation core, if the node was started with an identity.
    pub fn federation(&self) -> Option<&federation::Federation> {
        self.federation.as_ref()
    }

    /// The federation core, to misbehave with (the simulator's adversaries only).
    pub fn federation_mut(&mut self) -> Option<&mut federation::Federation> {
        self.federation.as_mut()
    }

    /// Messages currently queued across all installations.
    pub fn queued_total(&self) -> u64 {
        self.relay.queued_total()
    }
}

/// Meta key of the id a node that does not federate names in its challenges.
const META_STANDALONE_NODE_ID: &[u8] = b"standalone_node_id";

/// The id a node without a federation identity names in its challenges: drawn once, kept.
fn standalone_node_id<S: Store>(store: &mut S, rng: &mut ChaCha20Rng) -> Result<NodeId, StoreError> {
    if let Some(id) = load::<NodeId, _>(&*store, crate::store::Table::Meta, META_STANDALONE_NODE_ID)? {
        return Ok(id);
    }
    let mut id = [0u8; 32];
    rand_core::Rng::fill_bytes(rng, &mut id);
    store.put(crate::store::Table::Meta, META_STANDALONE_NODE_ID, &codec::encode(&NodeId(id)))?;
    Ok(NodeId(id))
}

/// After a registration: stage the account's directory entry and send the signed promise
/// to include it (after the `Registered` answer, once durable).
fn promise_inclusion<S: Store>(
    ctx: &mut Ctx<'_, S>,
    fed: &mut federation::Federation,
    registry: &registry::Registry,
    tag: SenderTag,
    rid: u64,
    installation: &nymstr_proto::wire::InstallationId,
) -> Result<(), (ErrorCode, String)> {
    let store_err = |e: StoreError| (ErrorCode::Internal, e.to_string());
    let Some((account, _)) = registry.installation(&*ctx.store, installation).map_err(store_err)? else {
        return Ok(());
    };
    let promise = fed.on_account_changed(ctx, &account).map_err(store_err)?;
    ctx.send_durable(Peer::Tag(tag), rid, Body::IncludePromise { promise });
    Ok(())
}

/// A DM to `user@nodeid`: local if the id is this node's, else forwarded to that node.
#[allow(clippy::too_many_arguments)]
fn send_qualified<S: Store>(
    ctx: &mut Ctx<'_, S>,
    fed: Option<&mut federation::Federation>,
    relay: &mut relay::Relay,
    registry: &registry::Registry,
    tag: SenderTag,
    rid: u64,
    dm: nymstr_proto::wire::SendDm,
    stats: &mut NodeStats,
) -> Result<(), (ErrorCode, String)> {
    let q = nymstr_proto::federation::descriptor::QualifiedName::parse(&dm.to)
        .map_err(|e| (ErrorCode::UnknownUser, e.to_string()))?;
    let (sender, cert) = relay.authenticate(ctx, registry, tag, &dm).map_err(err)?;
    match fed {
        Some(fed) if q.node != fed.id() => fed.forward_dm(ctx, tag, rid, q.node, &sender, cert, dm).map_err(err),
        Some(_) => {
            relay.enqueue(ctx, registry, Peer::Tag(tag), rid, sender.username, &q.username, dm, stats).map_err(err)
        }
        None => Err((ErrorCode::UnknownNode, "this node does not federate".to_string())),
    }
}

fn err<E: CodedError>(e: E) -> (ErrorCode, String) {
    (e.code(), e.to_string())
}

fn not_a_request(body: &Body) -> (ErrorCode, String) {
    (ErrorCode::UnexpectedMessage, format!("{} is not a request", body.kind()))
}
