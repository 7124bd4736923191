//! Peering: hellos to bootstrap and known nodes, the mutual challenge (hello, welcome,
//! proof), authenticating a peer and catching it up, descriptors learnt, and peer
//! exchange (`Nodes`).

use std::collections::BTreeSet;

use rand_core::Rng;

use super::state::{Federation, FederationError, GOSSIP_CHUNK_BYTES_MAX, Standing, sample, short};
use crate::actors::types::{Address, Ctx, Peer};
use crate::store::{Store, StoreError, Table};

use nymstr_proto::codec;
use nymstr_proto::federation::descriptor;
use nymstr_proto::federation::{NodeDescriptor, NodeId};
use nymstr_proto::identity;
use nymstr_proto::limits::{
    DESCRIPTORS_MAX, GOSSIP_ITEMS_MAX, HANDSHAKE_TIMEOUT_US, HANDSHAKES_MAX, HELLOS_PER_ROUND_MAX, KNOWN_NODES_MAX,
    KNOWN_PER_INTRODUCER_MAX, PEERS_MAX,
};
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{Body, GossipItem, Nonce};

impl Federation {
    /// The peering retry: configured, kept and verified nodes are greeted again, and up to
    /// `HELLOS_PER_ROUND_MAX` other known nodes chosen at random (a table full of
    /// descriptors is not dialled all at once).
    pub(super) fn say_hello_to_all<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) {
        let timeout = HANDSHAKE_TIMEOUT_US;
        self.handshakes.retain(|_, h| ctx.now.saturating_sub(h.at) < timeout);
        let own = Address(self.descriptor.address.clone());
        let mut first: BTreeSet<Address> = self.bootstrap.iter().cloned().collect();
        let mut others = Vec::new();
        for d in self.known.values() {
            if self.forks.contains_key(&d.node_id) {
                continue;
            }
            let addr = Address(d.address.clone());
            if self.is_kept(&d.node_id) || self.is_verified(&d.node_id) {
                first.insert(addr);
            } else if !first.contains(&addr) && !self.peer_by_address.contains_key(&addr) {
                others.push(addr);
            }
        }
        let mut targets: Vec<Address> = first.into_iter().collect();
        targets.extend(sample(ctx, others, HELLOS_PER_ROUND_MAX));
        for addr in targets {
            if addr == own
                || self.peer_by_address.contains_key(&addr)
                || self.peers.len() >= ctx.config.federation.peers_max.min(PEERS_MAX)
            {
                continue;
            }
            self.hello(ctx, addr);
        }
    }

    /// Says hello to `addr`, unless `HANDSHAKES_MAX` handshakes are under way already.
    pub(super) fn hello<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, addr: Address) {
        if !self.handshakes.contains_key(&addr) && self.handshakes.len() >= HANDSHAKES_MAX {
            return;
        }
        let mut nonce = [0u8; 32];
        ctx.rng.fill_bytes(&mut nonce);
        let h = self.handshakes.entry(addr.clone()).or_default();
        h.hello = Some(nonce);
        h.at = ctx.now;
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

    pub(super) fn on_hello<S: Store>(
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
        if !self.handshakes.contains_key(&from) && self.handshakes.len() >= HANDSHAKES_MAX {
            self.stats.peers_rejected += 1;
            return Err(FederationError::Busy(self.handshakes.len()));
        }
        let answer = identity::sign(&self.key, &identity::peer_challenge_bytes(&nonce, &descriptor.node_id, &self.id));
        let mut mine = [0u8; 32];
        ctx.rng.fill_bytes(&mut mine);
        let h = self.handshakes.entry(from.clone()).or_default();
        h.welcome = Some((mine, descriptor));
        h.at = ctx.now;
        ctx.send(
            Peer::Address(from),
            rid,
            Body::PeerWelcome { descriptor: self.descriptor.clone(), answer, nonce: mine },
        );
        Ok(())
    }

    pub(super) fn on_welcome<S: Store>(
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

    pub(super) fn on_proof<S: Store>(
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
        if self.bootstrap.contains(&from) {
            self.seeds.insert(id);
        }
        self.learn_descriptor(ctx, descriptor, None)?;
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

    /// Whether `node` is never evicted from `known`: a configured node (it authenticated
    /// from a bootstrap address) or an authenticated peer.
    pub(super) fn is_kept(&self, node: &NodeId) -> bool {
        self.seeds.contains(node) || self.peers.contains_key(node)
    }

    fn is_verified(&self, node: &NodeId) -> bool {
        self.standing.get(node).is_some_and(|s| s.verified_at.is_some())
    }

    /// Stores a verified descriptor if it is new or newer. Returns true if it changed.
    ///
    /// `via` is the peer whose gossip carried it. A new descriptor it introduces is
    /// refused past `KNOWN_PER_INTRODUCER_MAX` of its introductions that are neither kept
    /// nor verified. A full table (`KNOWN_NODES_MAX`) makes room by evicting the
    /// unverified, not kept descriptor learnt the longest ago; configured nodes, peers and
    /// nodes whose heads were verified are never evicted, so a new descriptor finding
    /// only those is refused. Node ids play no part in the choice.
    pub(super) fn learn_descriptor<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        d: NodeDescriptor,
        via: Option<NodeId>,
    ) -> Result<bool, StoreError> {
        let id = d.node_id;
        if id == self.id {
            return Ok(false);
        }
        if let Some(held) = self.known.get(&id) {
            if !descriptor::newer(held, &d) {
                return Ok(false);
            }
        } else {
            if let Some(p) = via
                && !self.is_kept(&id)
            {
                let share = self
                    .standing
                    .iter()
                    .filter(|(n, s)| s.introducer == Some(p) && s.verified_at.is_none() && !self.is_kept(n))
                    .count();
                if share >= KNOWN_PER_INTRODUCER_MAX {
                    self.stats.descriptors_refused += 1;
                    return Ok(false);
                }
            }
            let kept = self.is_kept(&id);
            if self.known.len() >= KNOWN_NODES_MAX && !self.evict_descriptor(ctx, kept)? {
                self.stats.descriptors_refused += 1;
                return Ok(false);
            }
            self.standing.insert(id, Standing { learnt_at: ctx.now, verified_at: None, introducer: via });
        }
        ctx.save(Table::FedPeers, &id.0, &d)?;
        self.known.insert(id, d);
        Ok(true)
    }

    /// Evicts the unverified, not kept descriptor learnt the longest ago, with what hangs
    /// on it (heads, adverts it hosts); for a kept node (a new peer), the not kept
    /// descriptor verified the longest ago if every other one is verified. False if there
    /// is none.
    fn evict_descriptor<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, for_kept: bool) -> Result<bool, StoreError> {
        let rank = |n: &NodeId| {
            let s = self.standing.get(n);
            let verified = s.and_then(|s| s.verified_at);
            (verified.is_some(), verified.unwrap_or_else(|| s.map_or(0, |s| s.learnt_at)), *n)
        };
        let victim = self
            .known
            .keys()
            .filter(|n| !self.is_kept(n) && (for_kept || !self.is_verified(n)))
            .min_by_key(|n| rank(n))
            .copied();
        let Some(victim) = victim else { return Ok(false) };
        ctx.store.delete(Table::FedPeers, &victim.0)?;
        self.known.remove(&victim);
        self.standing.remove(&victim);
        self.heads.remove(&victim);
        let stale: Vec<(NodeId, u64)> = self.recent.range((victim, 0)..=(victim, u64::MAX)).map(|(k, _)| *k).collect();
        for k in stale {
            self.recent.remove(&k);
        }
        self.adverts.retain(|_, a| a.host != victim);
        self.stats.descriptors_evicted += 1;
        Ok(true)
    }

    /// `Nodes`: this node's descriptor first, then the others it knows, best first:
    /// configured nodes and peers, then nodes verified most recently, then the newest
    /// learnt. Never by node id, so cheap low ids do not win the `DESCRIPTORS_MAX` cut.
    pub fn on_nodes_request<S: Store>(&self, ctx: &mut Ctx<'_, S>, to: Peer, rid: u64) {
        let mut ranked: Vec<(bool, TimeUs, TimeUs, &NodeDescriptor)> = self
            .known
            .values()
            .filter(|d| !self.forks.contains_key(&d.node_id))
            .map(|d| {
                let s = self.standing.get(&d.node_id);
                let verified = s.and_then(|s| s.verified_at).unwrap_or(0);
                (self.is_kept(&d.node_id), verified, s.map_or(0, |s| s.learnt_at), d)
            })
            .collect();
        ranked.sort_by_key(|r| std::cmp::Reverse((r.0, r.1, r.2)));
        let mut descriptors = vec![self.descriptor.clone()];
        descriptors.extend(ranked.into_iter().map(|(_, _, _, d)| d.clone()));
        descriptors.truncate(DESCRIPTORS_MAX);
        ctx.send(to, rid, Body::Nodes { descriptors });
    }
}
