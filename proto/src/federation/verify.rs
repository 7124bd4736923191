//! The client's key-transparency verifier (`specs/trust.md` §4–§5): which node keys it
//! knows, the last head it accepted per node, its pins of account keys, the nodes it
//! distrusts with their fork certificates, and the trust policy that decides how much
//! witness evidence a head needs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::descriptor::{self, DescriptorError};
use super::evidence;
use super::merkle;
use super::{DirEntry, EntryStatus, ForkCertificate, Hash, LookupProof, NodeDescriptor, NodeId, SignedHead};
use crate::identity;
use crate::ids::PublicKey;
use crate::limits::{KT_NODES_MAX, KT_PINS_MAX};

/// How much evidence a head needs before the client believes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrustPolicy {
    /// Trust on first use: any validly signed head; pins catch later changes.
    Tofu,
    /// A head needs cosignatures by at least `required` distinct known witnesses.
    WitnessQuorum { required: usize },
    /// Only heads of the listed nodes are accepted.
    Allowlist { nodes: BTreeSet<NodeId> },
}

/// Why a policy text does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown trust policy {0:?} (tofu, witness-quorum:<k>, allowlist:<hex>,…)")]
    Unknown(String),
    #[error("witness quorum must be a positive integer")]
    BadQuorum,
    #[error("allowlist entry {0:?} is not a 64-hex node id")]
    BadNodeId(String),
}

impl FromStr for TrustPolicy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "tofu" {
            return Ok(TrustPolicy::Tofu);
        }
        if let Some(k) = s.strip_prefix("witness-quorum:") {
            let required: usize = k.parse().map_err(|_| PolicyError::BadQuorum)?;
            if required == 0 {
                return Err(PolicyError::BadQuorum);
            }
            return Ok(TrustPolicy::WitnessQuorum { required });
        }
        if s == "allowlist" {
            return Ok(TrustPolicy::Allowlist { nodes: BTreeSet::new() });
        }
        if let Some(list) = s.strip_prefix("allowlist:") {
            let mut nodes = BTreeSet::new();
            for part in list.split(',').filter(|p| !p.is_empty()) {
                nodes.insert(NodeId::from_hex(part).ok_or_else(|| PolicyError::BadNodeId(part.to_string()))?);
            }
            return Ok(TrustPolicy::Allowlist { nodes });
        }
        Err(PolicyError::Unknown(s.to_string()))
    }
}

impl fmt::Display for TrustPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustPolicy::Tofu => f.write_str("tofu"),
            TrustPolicy::WitnessQuorum { required } => write!(f, "witness-quorum:{required}"),
            TrustPolicy::Allowlist { nodes } => {
                f.write_str("allowlist:")?;
                for (i, n) in nodes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(&n.to_hex())?;
                }
                Ok(())
            }
        }
    }
}

/// What the client believes about one account: the key, the entry version and the epoch
/// it was seen in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub account_key: PublicKey,
    pub seq: u64,
    pub epoch: u64,
}

/// The last head accepted from a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedHead {
    pub epoch: u64,
    pub log_root: Hash,
    pub head_hash: Hash,
    /// Kept whole so a later conflicting head makes a fork certificate.
    pub signed: SignedHead,
}

impl AcceptedHead {
    /// Size of the head log this head commits to.
    pub fn log_size(&self) -> u64 {
        self.epoch.saturating_add(1)
    }
}

/// The verdict on one lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The entry is proven and matches (or now sets) the pin.
    Verified(DirEntry),
    /// The entry is proven but its key differs from the pin; the pin is unchanged until
    /// [`Verifier::accept_key_change`].
    KeyChanged { old: PublicKey, new: PublicKey, entry: DirEntry },
    /// An older head than one accepted, or an older entry version than the pin.
    Rollback,
    /// A signature, proof or consistency check failed.
    Inconsistent(String),
    /// The owner revoked the account.
    Revoked,
    /// The account moved; look it up on `to`.
    Migrated { to: NodeId },
    /// The name is proven absent.
    Absent,
    /// The node is distrusted: it signed two heads for one epoch.
    Forked,
    /// Too few distinct known witnesses cosigned the head.
    NotEnoughWitnesses { have: usize, need: usize },
    /// The policy is an allowlist that does not list the node.
    NotAllowed,
    /// The node's key is not known (learn its descriptor first).
    UnknownNode,
    /// The answer proves consistency from a log size other than the one accepted since
    /// the question was asked (two lookups crossed): ask again. Nothing was learnt.
    Stale,
}

impl Outcome {
    /// snake_case name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Verified(_) => "verified",
            Outcome::KeyChanged { .. } => "key_changed",
            Outcome::Rollback => "rollback",
            Outcome::Inconsistent(_) => "inconsistent",
            Outcome::Revoked => "revoked",
            Outcome::Migrated { .. } => "migrated",
            Outcome::Absent => "absent",
            Outcome::Forked => "forked",
            Outcome::NotEnoughWitnesses { .. } => "not_enough_witnesses",
            Outcome::NotAllowed => "not_allowed",
            Outcome::UnknownNode => "unknown_node",
            Outcome::Stale => "stale",
        }
    }
}

/// The client's transparency state. It grows with every node met and every name pinned:
/// a host stores it one row per item (`nodes`, `heads`, `pins`, ... and `from_parts`),
/// not as one record; `KT_NODES_MAX` and `KT_PINS_MAX` bound it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verifier {
    policy: TrustPolicy,
    nodes: BTreeMap<NodeId, PublicKey>,
    heads: BTreeMap<NodeId, AcceptedHead>,
    pins: BTreeMap<(NodeId, String), Pin>,
    distrusted: BTreeMap<NodeId, ForkCertificate>,
    /// The nodes whose cosignatures count: learnt at set-up (`learn_node`) or configured,
    /// never added by merely meeting a node (`learn_serving_node`), so sybils that turn
    /// up later do not become witnesses.
    #[serde(default)]
    witnesses: BTreeSet<NodeId>,
}

impl Verifier {
    pub fn new(policy: TrustPolicy) -> Self {
        Verifier {
            policy,
            nodes: BTreeMap::new(),
            heads: BTreeMap::new(),
            pins: BTreeMap::new(),
            distrusted: BTreeMap::new(),
            witnesses: BTreeSet::new(),
        }
    }

    pub fn policy(&self) -> &TrustPolicy {
        &self.policy
    }

    /// Learns a node key from a descriptor after verifying it, as a witness (set-up:
    /// the nodes the home node lists, or an operator's configuration).
    pub fn learn_node(&mut self, d: &NodeDescriptor) -> Result<(), DescriptorError> {
        descriptor::verify(d)?;
        self.room_for(&d.node_id)?;
        self.nodes.insert(d.node_id, d.key);
        self.witnesses.insert(d.node_id);
        Ok(())
    }

    /// Learns the key of a node met as the server of a lookup: its heads can be checked,
    /// but its cosignatures do not count for other nodes.
    pub fn learn_serving_node(&mut self, d: &NodeDescriptor) -> Result<(), DescriptorError> {
        descriptor::verify(d)?;
        self.room_for(&d.node_id)?;
        self.nodes.insert(d.node_id, d.key);
        Ok(())
    }

    /// A known node, or room for one more (`KT_NODES_MAX`; nothing is evicted).
    fn room_for(&self, node: &NodeId) -> Result<(), DescriptorError> {
        if self.nodes.len() >= KT_NODES_MAX && !self.nodes.contains_key(node) {
            return Err(DescriptorError::TooManyNodes(self.nodes.len()));
        }
        Ok(())
    }

    /// Rebuilds a verifier from its stored tables (`from_parts(v.policy(), v.nodes(), ...)`
    /// is `v`): hosts store it one row per item, never as one growing record.
    pub fn from_parts(
        policy: TrustPolicy,
        nodes: BTreeMap<NodeId, PublicKey>,
        witnesses: BTreeSet<NodeId>,
        heads: BTreeMap<NodeId, AcceptedHead>,
        pins: BTreeMap<(NodeId, String), Pin>,
        distrusted: BTreeMap<NodeId, ForkCertificate>,
    ) -> Self {
        Verifier { policy, nodes, heads, pins, distrusted, witnesses }
    }

    /// Every node key known.
    pub fn nodes(&self) -> &BTreeMap<NodeId, PublicKey> {
        &self.nodes
    }

    /// The nodes whose cosignatures count.
    pub fn witnesses(&self) -> &BTreeSet<NodeId> {
        &self.witnesses
    }

    /// The last head accepted from each node.
    pub fn heads(&self) -> &BTreeMap<NodeId, AcceptedHead> {
        &self.heads
    }

    /// Every pin, by (node, folded username).
    pub fn pins(&self) -> &BTreeMap<(NodeId, String), Pin> {
        &self.pins
    }

    /// The distrusted nodes and their fork certificates.
    pub fn distrusted(&self) -> &BTreeMap<NodeId, ForkCertificate> {
        &self.distrusted
    }

    /// Pins `slot` unless the table is full and the slot new (`KT_PINS_MAX`: a full table
    /// takes no new pins and evicts none).
    fn set_pin(&mut self, slot: (NodeId, String), pin: Pin) {
        if self.pins.len() < KT_PINS_MAX || self.pins.contains_key(&slot) {
            self.pins.insert(slot, pin);
        }
    }

    pub fn node_key(&self, node: &NodeId) -> Option<&PublicKey> {
        self.nodes.get(node)
    }

    /// The last head accepted from `node`.
    pub fn accepted_head(&self, node: &NodeId) -> Option<&AcceptedHead> {
        self.heads.get(node)
    }

    /// What to put in a lookup request: the accepted head's log size, 0 if none.
    pub fn known_log_size(&self, node: &NodeId) -> u64 {
        self.heads.get(node).map_or(0, AcceptedHead::log_size)
    }

    /// The pin of `username` (folded) at `node`.
    pub fn pin(&self, node: &NodeId, username: &str) -> Option<&Pin> {
        let name = identity::normalize_username(username).ok()?;
        self.pins.get(&(*node, name))
    }

    pub fn is_distrusted(&self, node: &NodeId) -> bool {
        self.distrusted.contains_key(node)
    }

    /// The fork certificate that made `node` distrusted.
    pub fn fork_certificate(&self, node: &NodeId) -> Option<&ForkCertificate> {
        self.distrusted.get(node)
    }

    /// Replaces the pin with the entry of a [`Outcome::KeyChanged`] the user accepted.
    /// Refused (false) for an invalid username, or an entry older than the pin.
    pub fn accept_key_change(&mut self, node: &NodeId, username: &str, entry: &DirEntry) -> bool {
        let Ok(name) = identity::normalize_username(username) else { return false };
        let slot = (*node, name);
        if self.pins.get(&slot).is_some_and(|p| entry.seq < p.seq) {
            return false;
        }
        self.set_pin(slot, Pin { account_key: entry.account_key, seq: entry.seq, epoch: entry.epoch });
        true
    }

    /// A fork certificate from gossip: verified against the node's known key; on success
    /// the node is distrusted. True iff the node was not distrusted before.
    pub fn on_fork_certificate(&mut self, cert: &ForkCertificate) -> bool {
        let node = cert.a.head.node_id;
        let Some(key) = self.nodes.get(&node) else { return false };
        if evidence::verify_fork(cert, key).is_err() || self.distrusted.contains_key(&node) {
            return false;
        }
        self.distrusted.insert(node, cert.clone());
        true
    }

    /// Checks the answer `proof` to a lookup of `username` at `node` (`specs/trust.md` §4.2
    /// gives the order of the checks).
    pub fn check_lookup(&mut self, node: &NodeId, username: &str, proof: &LookupProof) -> Outcome {
        let Some(key) = self.nodes.get(node).copied() else { return Outcome::UnknownNode };
        if self.distrusted.contains_key(node) {
            return Outcome::Forked;
        }
        if let TrustPolicy::Allowlist { nodes } = &self.policy
            && !nodes.contains(node)
        {
            return Outcome::NotAllowed;
        }
        let signed = &proof.head;
        let head = &signed.head;
        if head.node_id != *node {
            return Outcome::Inconsistent("head is for another node".into());
        }
        if let Err(e) = evidence::verify_head(signed, &key) {
            return Outcome::Inconsistent(format!("head: {e}"));
        }
        // A second validly signed head for an epoch already accepted is evidence on its
        // own signature, whatever cosignatures it carries: checked before the quorum so
        // an equivocation without witnesses is still caught (and kept).
        let head_hash = evidence::head_hash(head);
        if let Some(prev) = self.heads.get(node)
            && head.epoch == prev.epoch
            && head_hash != prev.head_hash
        {
            if let Some(cert) = evidence::fork_certificate(&prev.signed, signed) {
                self.distrusted.insert(*node, cert);
            }
            return Outcome::Forked;
        }
        if let TrustPolicy::WitnessQuorum { required } = self.policy {
            let have = self.count_witnesses(node, proof);
            if have < required {
                return Outcome::NotEnoughWitnesses { have, need: required };
            }
        }
        if let Some(prev) = self.heads.get(node) {
            if head.epoch == prev.epoch {
                // The same head again.
            } else if head.epoch < prev.epoch {
                return Outcome::Rollback;
            } else {
                if proof.from_log_size != prev.log_size() {
                    // Smaller: asked before another answer moved the accepted head on.
                    // Larger: a size never accepted here, which no honest node answers.
                    if proof.from_log_size < prev.log_size() {
                        return Outcome::Stale;
                    }
                    return Outcome::Inconsistent(format!(
                        "consistency proof from log size {}, accepted size is {}",
                        proof.from_log_size,
                        prev.log_size()
                    ));
                }
                let Some(new_size) = head.epoch.checked_add(1) else {
                    return Outcome::Inconsistent("epoch out of range".into());
                };
                if let Err(e) = merkle::verify_consistency(
                    prev.log_size(),
                    &prev.log_root,
                    new_size,
                    &head.log_root,
                    &proof.consistency,
                ) {
                    return Outcome::Inconsistent(format!("consistency: {e}"));
                }
            }
        }
        let name = match identity::normalize_username(username) {
            Ok(n) => n,
            Err(e) => return Outcome::Inconsistent(format!("username: {e}")),
        };
        let value = proof.entry.as_ref().map(merkle::entry_hash);
        if let Some(e) = &proof.entry
            && e.username != name
        {
            return Outcome::Inconsistent("entry is for another username".into());
        }
        if let Err(e) = merkle::verify_dir(&head.dir_root, name.as_bytes(), value.as_ref(), &proof.dir_proof) {
            return Outcome::Inconsistent(format!("directory proof: {e}"));
        }
        // Head and proofs hold: the head is the newest accepted whatever the entry says.
        self.heads.insert(
            *node,
            AcceptedHead { epoch: head.epoch, log_root: head.log_root, head_hash, signed: signed.clone() },
        );
        let Some(entry) = &proof.entry else { return Outcome::Absent };
        match entry.status {
            EntryStatus::Revoked => return Outcome::Revoked,
            EntryStatus::Migrated { to } => return Outcome::Migrated { to },
            EntryStatus::Active => {}
        }
        let slot = (*node, name);
        if let Some(pin) = self.pins.get(&slot) {
            if entry.seq < pin.seq {
                return Outcome::Rollback;
            }
            if entry.account_key != pin.account_key {
                return Outcome::KeyChanged { old: pin.account_key, new: entry.account_key, entry: entry.clone() };
            }
        }
        self.set_pin(slot, Pin { account_key: entry.account_key, seq: entry.seq, epoch: entry.epoch });
        Outcome::Verified(entry.clone())
    }

    /// Distinct witnesses other than `node`, with a known key, not distrusted, whose
    /// cosignature of this head verifies.
    fn count_witnesses(&self, node: &NodeId, proof: &LookupProof) -> usize {
        let mut seen = BTreeSet::new();
        for c in &proof.cosignatures {
            if c.witness == *node
                || seen.contains(&c.witness)
                || self.distrusted.contains_key(&c.witness)
                || !self.witnesses.contains(&c.witness)
            {
                continue;
            }
            let Some(wkey) = self.nodes.get(&c.witness) else { continue };
            if evidence::verify_cosignature(c, wkey, &proof.head.head).is_ok() {
                seen.insert(c.witness);
            }
        }
        seen.len()
    }
}
