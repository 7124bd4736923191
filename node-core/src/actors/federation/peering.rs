//! Peering: hellos to bootstrap and known nodes, the mutual challenge (hello, welcome,
//! proof), authenticating a peer and catching it up, descriptors learnt, and peer
//! exchange (`Nodes`).

use std::collections::BTreeSet;

use rand_core::Rng;

use super::state::{Federation, FederationError, GOSSIP_CHUNK_BYTES_MAX, short};
use crate::actors::types::{Address, Ctx, Peer};
use crate::store::{Store, StoreError, Table};

use nymstr_proto::codec;
use nymstr_proto::federation::NodeDescriptor;
use nymstr_proto::federation::descriptor;
use nymstr_proto::identity;
use nymstr_proto::limits::{DESCRIPTORS_MAX, GOSSIP_ITEMS_MAX, PEERS_MAX};
use nymstr_proto::wire::{Body, GossipItem, Nonce};

impl Federation {
    pub(super) fn say_hello_to_all<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) {
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

    pub(super) fn hello<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, addr: Address) {
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
    pub(super) fn learn_descriptor<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        d: NodeDescriptor,
    ) -> Result<bool, StoreError> {
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

    /// `Nodes`: this node's descriptor first, then the others it knows.
    pub fn on_nodes_request<S: Store>(&self, ctx: &mut Ctx<'_, S>, to: Peer, rid: u64) {
        let mut descriptors = vec![self.descriptor.clone()];
        descriptors.extend(self.known.values().filter(|d| !self.forks.contains_key(&d.node_id)).cloned());
        descriptors.truncate(DESCRIPTORS_MAX);
        ctx.send(to, rid, Body::Nodes { descriptors });
    }
}
