//! The simulated federation (`FedSim`): node identities, the partition fault, the adversaries
//! (`specs/sim.md` §10) and the bookkeeping behind the `federation.*` report.
//!
//! Adversaries are the honest node code plus the few things a malicious operator holding
//! the node's key can do on top of it: sign a second head for an epoch (equivocate, and
//! have sybil nodes cosign it), put another key under a user's name through the
//! operator's override (substitute_key), drop or delay what peers forward to it
//! (drop_forwarded), answer lookups from an old head (replay_head), or seal a tree that
//! holds a user twice and show each side its own leaf (split_view). Everything they
//! forge is built with the same `merkle`/`evidence` code honest nodes use.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use nymstr_node_core::actors::federation::FederationConfig;
use nymstr_proto::federation::merkle::DirTree;
use nymstr_proto::federation::verify::TrustPolicy;
use nymstr_proto::federation::{
    Cosignature, DirEntry, LookupProof, NodeDescriptor, NodeId, Roles, SignedHead, TreeHead, descriptor, evidence,
};
use nymstr_proto::identity;
use nymstr_proto::wire::InstallationCert;
use rand_chacha::ChaCha20Rng;

use crate::mixnet::Us;
use crate::scenario::{Adversary, AdversaryKind, Federation as FedScenario, Trust};

/// One adversary as it runs.
#[derive(Clone, Debug)]
pub struct Attack {
    pub spec: Adversary,
    /// When it started (its `at`), once it has.
    pub started_at: Option<Us>,
    /// When it first did something harmful (a forged answer, a dropped forward...).
    pub acted_at: Option<Us>,
    /// When an honest node or client first noticed.
    pub detected_at: Option<Us>,
    /// substitute_key: the victim client and the key put in its place.
    pub victim: Option<(u32, [u8; 32])>,
    /// replay_head: the head (and directory) the node keeps serving.
    pub frozen: Option<Frozen>,
    /// equivocate / sybil: answers given so far (every other one is forged).
    pub answers: u64,
    /// split_view: the second leaf the node hides in its tree.
    pub split: Option<Split>,
    /// advert_hijack: the group listed by the real host, and the flood's node ids.
    pub hijack: Option<Hijack>,
}

/// advert_hijack: the public group the honest `host` listed, and the descriptors flooded.
#[derive(Clone, Debug)]
pub struct Hijack {
    pub group_id: [u8; 16],
    pub host: u32,
    pub flood: BTreeSet<NodeId>,
}

/// split_view: the victim, whose own lookups see the real leaf, and the substitute entry
/// (the attacker's key under the victim's name) hidden under `key` in every sealed tree.
#[derive(Clone, Debug)]
pub struct Split {
    pub victim: u32,
    pub username: String,
    pub key: String,
    pub entry: DirEntry,
}

#[derive(Clone, Debug)]
pub struct Frozen {
    pub head: SignedHead,
    pub cosignatures: Vec<Cosignature>,
    pub entries: BTreeMap<String, DirEntry>,
    pub tree: DirTree,
}

/// The federation side of the world.
pub struct FedSim {
    pub scenario: FedScenario,
    /// Identity keys of every federated node (discovery nodes, then sybils), by node index.
    pub keys: BTreeMap<u32, SigningKey>,
    pub ids: BTreeMap<u32, NodeId>,
    /// Node index of each sybil.
    pub sybils: Vec<u32>,
    pub attacks: Vec<Attack>,
    /// Node index -> partition group while a partition lasts.
    pub partition: Option<BTreeMap<u32, usize>>,
    pub partitions_scheduled: bool,
    /// The key an attacker holds for every forged installation.
    pub attacker: SigningKey,
    pub lookups: u64,
    pub cross_node_dm: u64,
    pub cross_node_delivered: u64,
    pub false_alarms: u64,
    /// Clients that accepted a forged key (a contact whose key is not the user's).
    pub forged_accepted: BTreeSet<u32>,
    /// What each alarm was, for the report and debugging.
    pub alarms: Vec<String>,
}

impl FedSim {
    pub fn new(scenario: FedScenario, attacker: SigningKey) -> Self {
        Self {
            scenario,
            keys: BTreeMap::new(),
            ids: BTreeMap::new(),
            sybils: Vec::new(),
            attacks: Vec::new(),
            partition: None,
            partitions_scheduled: false,
            attacker,
            lookups: 0,
            cross_node_dm: 0,
            cross_node_delivered: 0,
            false_alarms: 0,
            forged_accepted: BTreeSet::new(),
            alarms: Vec::new(),
        }
    }

    pub fn add_node(&mut self, node: u32, rng: &mut ChaCha20Rng) {
        let key = identity::generate_signing_key(rng);
        self.ids.insert(node, descriptor::node_id(&key.verifying_key().to_bytes()));
        self.keys.insert(node, key);
    }

    pub fn node_of_id(&self, id: &NodeId) -> Option<u32> {
        self.ids.iter().find(|(_, v)| *v == id).map(|(k, _)| *k)
    }

    /// The federation tunables every simulated node runs with.
    pub fn node_config(&self, peers: u32) -> FederationConfig {
        let required = self.scenario.witnesses_required as usize;
        FederationConfig {
            epoch_us: self.scenario.epoch.us(),
            gossip_fanout: self.scenario.gossip_fanout as usize,
            witnesses_wanted: (peers as usize).clamp(1, 16),
            serve_quorum: match self.scenario.trust {
                Trust::WitnessQuorum => required,
                _ => 1,
            },
            policy: format!("{}:{required}", self.scenario.trust.name()),
            ..FederationConfig::default()
        }
    }

    /// The witnesses clients are configured with (`ClientConfig::witnesses`): the
    /// descriptors of the scenario's discovery nodes, as an operator would hand them out
    /// at set-up. Never sybils: nodes met later (`fetch_nodes`, gossip) are not witnesses.
    pub fn client_witnesses(&self, discovery: u32, now: Us, address: impl Fn(u32) -> Vec<u8>) -> Vec<NodeDescriptor> {
        let cfg = self.node_config(0);
        let roles = Roles { discovery: true, group: false };
        (0..discovery)
            .filter_map(|i| self.keys.get(&i).map(|k| (i, k)))
            .map(|(i, k)| descriptor::sign(k, address(i), roles, cfg.policy.clone(), cfg.epoch_us, now))
            .collect()
    }

    /// The trust policy clients run with: witnesses are configured at set-up
    /// (`client_witnesses`); an allowlist pins the discovery nodes of the scenario (never
    /// sybils).
    pub fn client_policy(&self, discovery: u32) -> TrustPolicy {
        match self.scenario.trust {
            Trust::Tofu => TrustPolicy::Tofu,
            Trust::WitnessQuorum => TrustPolicy::WitnessQuorum { required: self.scenario.witnesses_required as usize },
            Trust::Allowlist => {
                TrustPolicy::Allowlist { nodes: (0..discovery).filter_map(|i| self.ids.get(&i).copied()).collect() }
            }
        }
    }

    /// The running attack of `kind` by `node`, if any.
    pub fn active(&self, node: u32, kinds: &[AdversaryKind]) -> Option<usize> {
        self.attacks.iter().position(|a| a.spec.node == node && a.started_at.is_some() && kinds.contains(&a.spec.kind))
    }

    pub fn is_adversary(&self, node: u32) -> bool {
        // The node sybils vouch for equivocates with their cosignatures: it misbehaves too.
        self.attacks.iter().any(|a| a.spec.node == node && a.started_at.is_some()) || self.sybils.contains(&node)
    }

    /// Records a detection of misbehaviour by `node`; an alarm about an honest node is
    /// a false alarm.
    pub fn detected(&mut self, now: Us, node: u32, what: String) {
        let mut any = false;
        for a in &mut self.attacks {
            let target = a.spec.node;
            if target == node && a.acted_at.is_some() {
                any = true;
                if a.detected_at.is_none() {
                    a.detected_at = Some(now);
                }
            }
        }
        if !any && !self.is_adversary(node) {
            self.false_alarms += 1;
        }
        if self.alarms.len() < 64 {
            self.alarms.push(what);
        }
    }

    /// Drops node-to-node traffic across partition groups.
    pub fn partitioned(&self, a: u32, b: u32) -> bool {
        let Some(p) = &self.partition else { return false };
        // Nodes not listed form one more group together (`specs/sim.md` §10).
        let ga = p.get(&a).copied().unwrap_or(usize::MAX);
        let gb = p.get(&b).copied().unwrap_or(usize::MAX);
        ga != gb
    }

    /// A second head for the epoch of `proof`, over a directory in which the looked-up
    /// user (if present) has the attacker's key: what an equivocating node shows some
    /// clients. Cosigned by `cosigners` (sybils), else carrying no cosignature.
    pub fn forge(
        &self,
        node: u32,
        entries: &BTreeMap<String, DirEntry>,
        username: &str,
        proof: &LookupProof,
        cosigners: &[u32],
    ) -> Option<LookupProof> {
        let key = self.keys.get(&node)?;
        let mut forged = entries.clone();
        // Only a present user's key is worth forging (an absent one is answered honestly).
        let e = forged.get_mut(username)?;
        e.account_key = self.attacker.verifying_key().to_bytes();
        e.installations = vec![self.attacker_cert(e.installations.first()?)];
        let tree = nymstr_node_core::transparency_log::tree_of(&forged);
        let head = TreeHead { dir_root: tree.root(), dir_size: tree.len(), ..proof.head.head.clone() };
        let signed = evidence::sign_head(key, head);
        let cosignatures =
            cosigners.iter().filter_map(|s| self.keys.get(s)).map(|k| evidence::cosign(k, &signed)).collect();
        Some(LookupProof {
            head: signed,
            cosignatures,
            entry: forged.get(username).cloned(),
            dir_proof: tree.prove(username.as_bytes()),
            from_log_size: proof.from_log_size,
            consistency: proof.consistency.clone(),
        })
    }

    /// An installation certificate of the attacker's, in the shape of `like`.
    pub fn attacker_cert(&self, like: &InstallationCert) -> InstallationCert {
        identity::issue_cert(&self.attacker, &like.signing_key, &like.dh_key, like.created_at_us)
    }

    /// The answer a replaying node gives: the frozen head's proof for `username`.
    pub fn replay(frozen: &Frozen, username: &str) -> LookupProof {
        LookupProof {
            head: frozen.head.clone(),
            cosignatures: frozen.cosignatures.clone(),
            entry: frozen.entries.get(username).cloned(),
            dir_proof: frozen.tree.prove(username.as_bytes()),
            from_log_size: 0,
            consistency: Vec::new(),
        }
    }
}
