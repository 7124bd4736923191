//! Gossip: random fan-out, de-duplication, and what is accepted and passed on:
//! descriptors, public group adverts, signed heads (and the equivocation they reveal) and
//! fork certificates, which end a peering.

use super::state::{Federation, FederationError, PREFIX_FORK, prefixed, sample};
use crate::actors::types::{Address, Ctx, Peer};
use crate::store::{Store, StoreError, Table};

use nymstr_proto::codec;
use nymstr_proto::federation::descriptor;
use nymstr_proto::federation::evidence;
use nymstr_proto::federation::{Cosignature, ForkCertificate, NodeId, SignedHead, merkle};
use nymstr_proto::identity;
use nymstr_proto::limits::{
    ADDRESS_BYTES_MAX, ADVERT_CLOCK_SKEW_US, ADVERTS_MAX, ADVERTS_PER_HOST_MAX, GROUP_DESCRIPTION_BYTES_MAX,
    GROUP_NAME_BYTES_MAX, HELLOS_PER_ROUND_MAX, PEERS_MAX,
};
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{Body, GossipItem, GroupAdvert};

impl Federation {
    /// Up to `n` authenticated peers other than `except`, chosen at random.
    pub(super) fn pick_peers<S: Store>(&self, ctx: &mut Ctx<'_, S>, n: usize, except: Option<NodeId>) -> Vec<NodeId> {
        let ids: Vec<NodeId> = self.peers.keys().copied().filter(|p| Some(*p) != except).collect();
        sample(ctx, ids, n)
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
    pub(super) fn gossip<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, item: GossipItem, from: Option<NodeId>) {
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
        let mut learnt = false;
        for item in items {
            self.stats.gossip_in += 1;
            if !self.first_sight(ctx, &item) {
                continue;
            }
            let forward = match &item {
                GossipItem::Descriptor(d) => {
                    from.is_some() && descriptor::verify(d).is_ok() && self.learn_descriptor(ctx, d.clone(), from)?
                }
                GossipItem::Head { head, cosignatures } => self.on_head(ctx, head, cosignatures)?,
                GossipItem::Fork(cert) => self.on_fork(ctx, cert.clone())?,
                GossipItem::Advert(a) => from.is_some() && self.learn_advert(ctx, a),
            };
            learnt |= forward && matches!(item, GossipItem::Descriptor(_));
            if forward {
                self.gossip(ctx, item, from);
            }
        }
        // New descriptors may be nodes to peer with: a few at a time, chosen at random.
        if learnt && self.peers.len() < ctx.config.federation.peers_max.min(PEERS_MAX) {
            let fresh: Vec<Address> = self
                .known
                .values()
                .filter(|d| !self.peers.contains_key(&d.node_id) && !self.forks.contains_key(&d.node_id))
                .map(|d| Address(d.address.clone()))
                .filter(|a| !self.handshakes.contains_key(a))
                .collect();
            for addr in sample(ctx, fresh, HELLOS_PER_ROUND_MAX) {
                self.hello(ctx, addr);
            }
        }
        Ok(())
    }

    /// A head seen in gossip. Returns whether to pass it on.
    pub(super) fn on_head<S: Store>(
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
        // Verified: cosigned by this node or by a node it keeps (a seed or a peer). A head a
        // node merely signed itself proves nothing about it.
        if valid.iter().any(|c| c.witness == self.id || self.is_kept(&c.witness))
            && let Some(s) = self.standing.get_mut(&node)
        {
            s.verified_at = Some(ctx.now);
        }
        if newer {
            self.heads.insert(node, (head.clone(), valid));
        }
        Ok(newer)
    }

    /// A fork certificate: verified against the accused node's key, kept, and it ends the
    /// peering with that node. Returns whether it was new.
    pub(super) fn on_fork<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        cert: ForkCertificate,
    ) -> Result<bool, StoreError> {
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

    /// A public group created here: its advert is gossiped so every discovery node's
    /// directory lists it.
    pub fn announce_advert<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, advert: GroupAdvert) {
        self.gossip(ctx, GossipItem::Advert(advert), None);
    }

    /// Vouches for an advert of a group hosted here: sets `host` to this node and signs
    /// it (`identity::group_advert_host_bytes`). Refused if it is dated more than
    /// `ADVERT_CLOCK_SKEW_US` ahead of `now` (peers would refuse it).
    pub fn host_advert(&self, now: TimeUs, advert: &mut GroupAdvert) -> Result<(), FederationError> {
        if advert.issued_at_us > now.saturating_add(ADVERT_CLOCK_SKEW_US) {
            return Err(FederationError::BadAdvert("dated in the future".into()));
        }
        advert.host = self.id;
        advert.host_sig = identity::sign(&self.key, &identity::group_advert_host_bytes(advert));
        Ok(())
    }

    /// An advert from a peer's gossip. Kept (and passed on) if its texts fit, it is not
    /// dated more than `ADVERT_CLOCK_SKEW_US` ahead, its admin signature verifies and its
    /// host's does against the host's known descriptor, and either no advert of that
    /// group is held or the held one has the same host and an older date. Room: at most
    /// `ADVERTS_PER_HOST_MAX` per host, `ADVERTS_MAX` in all (a host that is not kept
    /// takes no room from a full table; otherwise the oldest-issued advert of a host that
    /// is not kept makes room).
    pub(super) fn learn_advert<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, a: &GroupAdvert) -> bool {
        let ok = self.check_advert(ctx.now, a);
        if !ok {
            self.stats.adverts_refused += 1;
        }
        ok && {
            self.adverts.insert(a.group_id, a.clone());
            true
        }
    }

    fn check_advert(&mut self, now: TimeUs, a: &GroupAdvert) -> bool {
        if a.name.len() > GROUP_NAME_BYTES_MAX
            || a.description.len() > GROUP_DESCRIPTION_BYTES_MAX
            || a.group_node.len() > ADDRESS_BYTES_MAX
            || a.issued_at_us > now.saturating_add(ADVERT_CLOCK_SKEW_US)
            || a.host == self.id
            || self.forks.contains_key(&a.host)
        {
            return false;
        }
        let Some(host_key) = self.known.get(&a.host).map(|d| d.key) else { return false };
        if let Some(held) = self.adverts.get(&a.group_id)
            && (held.host != a.host || held.issued_at_us >= a.issued_at_us)
        {
            return false;
        }
        if identity::verify(&a.admin_key, &identity::group_advert_bytes(a), &a.sig).is_err()
            || identity::verify(&host_key, &identity::group_advert_host_bytes(a), &a.host_sig).is_err()
        {
            return false;
        }
        if self.adverts.contains_key(&a.group_id) {
            return true;
        }
        if self.adverts.values().filter(|h| h.host == a.host).count() >= ADVERTS_PER_HOST_MAX {
            return false;
        }
        if self.adverts.len() >= ADVERTS_MAX {
            if !self.is_kept(&a.host) {
                return false;
            }
            let victim = self
                .adverts
                .values()
                .filter(|h| !self.is_kept(&h.host))
                .min_by_key(|h| (h.issued_at_us, h.group_id))
                .map(|h| h.group_id);
            let Some(victim) = victim else { return false };
            self.adverts.remove(&victim);
        }
        true
    }
}
