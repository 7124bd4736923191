//! Key transparency (`specs/trust.md`): lookups of `user@node` verified by the client
//! itself (node key, freshness, witnesses, pins), the node descriptors it learns as
//! witnesses, and fork evidence from the home node.

use nymstr_proto::federation::NodeId;
use nymstr_proto::federation::descriptor::{self, QualifiedName};
use nymstr_proto::federation::verify::{Outcome, Verifier};
use nymstr_proto::federation::{LookupProof, NodeDescriptor};
use nymstr_proto::wire::{Body, Envelope, ErrorCode, GossipItem};

use super::{ClientCore, Event, Operation, Pending, Step, TimeUs, WITNESS_WAITS_MAX};

impl ClientCore {
    /// Asks the home node for the node descriptors it knows and learns their keys, never
    /// as witnesses (`specs/trust.md` §5: the witness set is only what the client's
    /// configuration or its user names; the home node, or a sybil's gossip behind it,
    /// must not choose whose cosignatures count).
    pub fn fetch_nodes(&mut self, now: TimeUs) {
        self.request(now, Step::Nodes, Body::NodesRequest);
    }

    /// Adds a witness the user or operator named (a node descriptor obtained out of band,
    /// e.g. the node's `descriptor.json`): its cosignatures count from now on.
    pub fn add_witness(&mut self, d: &NodeDescriptor) -> Result<(), descriptor::DescriptorError> {
        self.verifier.learn_node(d)
    }

    /// The transparency verifier (pins, accepted heads, distrusted nodes).
    pub fn transparency(&self) -> &Verifier {
        &self.verifier
    }

    /// A transparency lookup answer for `user@node`: verified by the client itself
    /// (the home node that relayed it cannot forge the remote node's signature).
    pub(super) fn on_kt_result(&mut self, now: TimeUs, rid: u64, descriptor: NodeDescriptor, proof: LookupProof) {
        let Some(Pending { step: Step::Lookup(asked), .. }) = self.pending.get(&rid).cloned() else { return };
        let Ok(q) = QualifiedName::parse(&asked) else { return };
        if descriptor.node_id != q.node {
            self.pending.remove(&rid);
            self.lookups.remove(&asked);
            self.transparency_failed(&asked, "unknown_node", "the answer came from another node".into());
            return;
        }
        if self.verifier.node_key(&q.node).is_none() {
            let _ = self.verifier.learn_serving_node(&descriptor);
        }
        // Freshness: a node keeps signing a head every epoch; one much older than that is a
        // replay (or a node that stopped), never the current state.
        let age = now.saturating_sub(proof.head.head.issued_at_us);
        let max_age = descriptor
            .epoch_us
            .saturating_mul(self.config.head_max_age_epochs)
            .saturating_add(self.config.head_age_slack_us);
        if nymstr_proto::federation::descriptor::verify(&descriptor).is_ok() && age > max_age {
            self.pending.remove(&rid);
            self.lookups.remove(&asked);
            let detail = format!("head of epoch {} is {} s old", proof.head.head.epoch, age / 1_000_000);
            self.transparency_failed(&asked, "rollback", detail);
            return;
        }
        // Report the head we were shown, so nodes can compare what each client saw.
        self.transmits.push(Envelope {
            request_id: 0,
            body: Body::Gossip {
                items: vec![GossipItem::Head { head: proof.head.clone(), cosignatures: proof.cosignatures.clone() }],
            },
        });
        match self.verifier.check_lookup(&q.node, &q.username, &proof) {
            // Monitoring our own entry: a key we never had means the node (or whoever
            // holds its key) put another key under our name.
            Outcome::Verified(entry)
                if Some(q.username.as_str()) == self.username.as_deref()
                    && self.identity.as_ref().is_some_and(|id| id.cert.account_key != entry.account_key) =>
            {
                self.pending.remove(&rid);
                self.lookups.remove(&asked);
                self.transparency_failed(&asked, "impersonated", "our own name maps to a key we do not hold".into());
            }
            Outcome::Verified(entry) => {
                self.witness_waits.remove(&asked);
                self.on_lookup_result(now, rid, asked, entry.account_key, entry.installations)
            }
            Outcome::KeyChanged { old, new, .. } => {
                self.pending.remove(&rid);
                self.lookups.remove(&asked);
                self.events.push_back(Event::KeyChanged { username: asked.clone(), pinned: old, offered: new });
                self.transparency_failed(&asked, "key_changed", "account key differs from the pinned one".into());
            }
            // Two lookups of one node crossed: ask again from the head accepted since.
            Outcome::Stale => {
                self.pending.remove(&rid);
                self.lookups.remove(&asked);
                self.start_lookup(now, asked);
            }
            // Too few cosignatures from our witnesses may be transient (the head was served
            // before ours cosigned it): the request stays pending and is asked again at its
            // deadline, up to `WITNESS_WAITS_MAX` times, then it fails for good.
            Outcome::NotEnoughWitnesses { .. }
                if {
                    let waits = self.witness_waits.entry(asked.clone()).or_insert(0);
                    *waits += 1;
                    *waits <= WITNESS_WAITS_MAX
                } => {}
            other => {
                self.witness_waits.remove(&asked);
                self.pending.remove(&rid);
                self.lookups.remove(&asked);
                let detail = format!("{other:?}");
                self.transparency_failed(&asked, other.name(), detail);
            }
        }
    }

    /// Evidence from the home node (a fork certificate against the node of a lookup).
    pub(super) fn on_evidence(&mut self, rid: u64, items: Vec<GossipItem>) {
        for item in items {
            if let GossipItem::Fork(cert) = item {
                self.verifier.on_fork_certificate(&cert);
            }
        }
        if let Some(Pending { step: Step::Lookup(asked), .. }) = self.pending.get(&rid).cloned()
            && let Ok(q) = QualifiedName::parse(&asked)
            && self.verifier.is_distrusted(&q.node)
        {
            self.pending.remove(&rid);
            self.lookups.remove(&asked);
            self.transparency_failed(&asked, "forked", "the node signed two heads for one epoch".into());
        }
    }

    fn transparency_failed(&mut self, name: &str, outcome: &'static str, detail: String) {
        self.events.push_back(Event::Transparency { username: name.to_string(), outcome, detail: detail.clone() });
        self.fail_contact(name, ErrorCode::BadCertificate, &detail);
    }

    /// The home node's id, if known (set by the host or learnt from `Nodes`).
    pub fn home_node(&self) -> Option<&NodeId> {
        self.home.as_ref()
    }

    /// The host knows the id of the home node (e.g. from its configuration): it is kept,
    /// unless one is known already.
    pub fn set_home_node(&mut self, node: NodeId) {
        self.home.get_or_insert(node);
    }

    /// A `Nodes` answer: the home's own descriptor comes first and, the first time, gives
    /// the home id (trust on first use, like a pin); for `fetch_nodes` the descriptors'
    /// keys are learnt (not as witnesses). Messages waiting for the home id go out.
    pub(super) fn on_nodes(&mut self, now: TimeUs, rid: u64, descriptors: &[NodeDescriptor]) {
        let Some(p) = self.pending.remove(&rid) else { return };
        if self.home.is_none()
            && let Some(d) = descriptors.first().filter(|d| descriptor::verify(d).is_ok())
        {
            self.home = Some(d.node_id);
        }
        if matches!(p.step, Step::Nodes) {
            for d in descriptors {
                let _ = self.verifier.learn_serving_node(d);
            }
        }
        if self.home.is_none() {
            self.home_unknown(ErrorCode::Malformed, "the home node did not name itself");
            return;
        }
        let ready: Vec<String> = self.outbox.keys().filter(|n| self.contacts.contains_key(*n)).cloned().collect();
        for name in ready {
            for dm in self.outbox.remove(&name).unwrap_or_default() {
                self.transmit_dm(now, dm);
            }
        }
    }

    /// The home id could not be learnt: messages to users of other nodes fail.
    pub(super) fn home_unknown(&mut self, code: ErrorCode, detail: &str) {
        let names: Vec<String> = self.outbox.keys().filter(|n| n.contains('@')).cloned().collect();
        for name in names {
            if !self.contacts.contains_key(&name) {
                continue;
            }
            for dm in self.outbox.remove(&name).unwrap_or_default() {
                self.events.push_back(Event::Failed {
                    what: Operation::Send { to: dm.to, msg_id: dm.msg_id },
                    code,
                    detail: detail.to_string(),
                });
            }
        }
    }
}
