//! Signed tree heads, witness cosignatures, fork certificates and inclusion promises
//! (`specs/trust.md` §2–§3), and the check a witness runs before cosigning a head.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use super::descriptor::node_id;
use super::merkle;
use super::{Cosignature, ForkCertificate, Hash, NodeId, Promise, SignedHead, TreeHead};
use crate::codec;
use crate::identity::{self, VerifyError};
use crate::ids::{PublicKey, Sig};

/// Hash label of a tree head.
pub const LABEL_HEAD: &str = "nymstr/v1/kt/head";
/// Signature label of a tree head (STH).
pub const LABEL_STH: &str = "nymstr/v1/kt/sth";
/// Signature label of a witness cosignature.
pub const LABEL_COSIGN: &str = "nymstr/v1/kt/cosign";
/// Signature label of an inclusion promise.
pub const LABEL_PROMISE: &str = "nymstr/v1/kt/promise";

pub use crate::limits::WITNESS_RECENT_HEADS;

/// Why a piece of evidence is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("signer key is not a valid ed25519 point")]
    BadKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("evidence names a node other than the key's")]
    WrongNode,
    #[error("cosignature names a witness other than the key's")]
    WrongWitness,
    #[error("cosignature is for another epoch or head")]
    HeadMismatch,
    #[error("fork certificate heads are for different nodes or epochs")]
    NotSameEpoch,
    #[error("fork certificate heads are identical")]
    SameHead,
}

impl From<VerifyError> for EvidenceError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::BadKey => EvidenceError::BadKey,
            VerifyError::BadSignature => EvidenceError::BadSignature,
        }
    }
}

/// `merkle::hash(LABEL_HEAD, codec(head))`.
pub fn head_hash(head: &TreeHead) -> Hash {
    merkle::hash(LABEL_HEAD, &[&codec::encode(head)])
}

/// `LABEL_STH || 0x00 || codec(head)`.
pub fn head_signing_bytes(head: &TreeHead) -> Vec<u8> {
    identity::signing_bytes(LABEL_STH, head)
}

/// Signs `head` with the node key (the caller sets `head.node_id` to the key's id).
pub fn sign_head(key: &SigningKey, head: TreeHead) -> SignedHead {
    let sig = identity::sign(key, &head_signing_bytes(&head));
    SignedHead { head, sig }
}

/// Checks that `node_key` signed the head and that the head names that key's node.
pub fn verify_head(head: &SignedHead, node_key: &PublicKey) -> Result<(), EvidenceError> {
    if head.head.node_id != node_id(node_key) {
        return Err(EvidenceError::WrongNode);
    }
    identity::verify(node_key, &head_signing_bytes(&head.head), &head.sig)?;
    Ok(())
}

/// `LABEL_COSIGN || 0x00 || codec((witness, node, epoch, head_hash))`.
pub fn cosign_signing_bytes(witness: &NodeId, node: &NodeId, epoch: u64, head_hash: &Hash) -> Vec<u8> {
    identity::signing_bytes(LABEL_COSIGN, &(witness, node, epoch, head_hash))
}

/// The witness holding `witness_key` cosigns `head` (run [`WitnessView::check`] first).
pub fn cosign(witness_key: &SigningKey, head: &SignedHead) -> Cosignature {
    let witness = node_id(&witness_key.verifying_key().to_bytes());
    let hh = head_hash(&head.head);
    let sig = identity::sign(witness_key, &cosign_signing_bytes(&witness, &head.head.node_id, head.head.epoch, &hh));
    Cosignature { witness, node_id: head.head.node_id, epoch: head.head.epoch, head_hash: hh, sig: sig.0 }
}

/// Checks a cosignature of `head` by the witness holding `witness_key`.
pub fn verify_cosignature(c: &Cosignature, witness_key: &PublicKey, head: &TreeHead) -> Result<(), EvidenceError> {
    if c.witness != node_id(witness_key) {
        return Err(EvidenceError::WrongWitness);
    }
    if c.node_id != head.node_id || c.epoch != head.epoch || c.head_hash != head_hash(head) {
        return Err(EvidenceError::HeadMismatch);
    }
    let bytes = cosign_signing_bytes(&c.witness, &c.node_id, c.epoch, &c.head_hash);
    identity::verify(witness_key, &bytes, &Sig(c.sig))?;
    Ok(())
}

/// A fork certificate iff the two heads are for the same node and epoch and differ in
/// content; `a` is the head with the smaller head hash, so the certificate is canonical.
/// Signatures are not checked here ([`verify_fork`]).
pub fn fork_certificate(a: &SignedHead, b: &SignedHead) -> Option<ForkCertificate> {
    if a.head.node_id != b.head.node_id || a.head.epoch != b.head.epoch || a.head == b.head {
        return None;
    }
    let (a, b) = if head_hash(&a.head) <= head_hash(&b.head) { (a, b) } else { (b, a) };
    Some(ForkCertificate { a: a.clone(), b: b.clone() })
}

/// Checks that `node_key` signed both heads of the certificate, for one epoch, and that
/// they differ.
pub fn verify_fork(cert: &ForkCertificate, node_key: &PublicKey) -> Result<(), EvidenceError> {
    if cert.a.head.node_id != cert.b.head.node_id || cert.a.head.epoch != cert.b.head.epoch {
        return Err(EvidenceError::NotSameEpoch);
    }
    if cert.a.head == cert.b.head {
        return Err(EvidenceError::SameHead);
    }
    verify_head(&cert.a, node_key)?;
    verify_head(&cert.b, node_key)
}

/// `LABEL_PROMISE || 0x00 || codec((node_id, username, entry_hash, seq, deadline_epoch))`.
pub fn promise_signing_bytes(
    node: &NodeId,
    username: &str,
    entry_hash: &Hash,
    seq: u64,
    deadline_epoch: u64,
) -> Vec<u8> {
    identity::signing_bytes(LABEL_PROMISE, &(node, username, entry_hash, seq, deadline_epoch))
}

/// The node holding `key` promises to include the entry version by `deadline_epoch`.
pub fn sign_promise(
    key: &SigningKey,
    username: impl Into<String>,
    entry_hash: Hash,
    seq: u64,
    deadline_epoch: u64,
) -> Promise {
    let username = username.into();
    let node = node_id(&key.verifying_key().to_bytes());
    let sig = identity::sign(key, &promise_signing_bytes(&node, &username, &entry_hash, seq, deadline_epoch));
    Promise { node_id: node, username, entry_hash, seq, deadline_epoch, sig }
}

/// Checks that `node_key`'s node signed the promise.
pub fn verify_promise(p: &Promise, node_key: &PublicKey) -> Result<(), EvidenceError> {
    if p.node_id != node_id(node_key) {
        return Err(EvidenceError::WrongNode);
    }
    let bytes = promise_signing_bytes(&p.node_id, &p.username, &p.entry_hash, p.seq, p.deadline_epoch);
    identity::verify(node_key, &bytes, &p.sig)?;
    Ok(())
}

/// What a witness should do with a head it was asked to cosign.
// A verdict is consumed at once; boxing the certificate would only cost its users.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WitnessVerdict {
    /// Valid and consistent with everything seen: cosign it (the view recorded it).
    Cosign,
    /// Identical to the last head cosigned for the node: cosign again if asked.
    AlreadyCosigned,
    /// The node signed two different heads for one epoch: gossip the certificate.
    Fork(ForkCertificate),
    /// Older than the last head cosigned for the node (and not provably a fork).
    Stale,
    /// The consistency proof from the last cosigned head does not verify.
    Inconsistent,
}

/// A witness's memory of the heads it cosigned: per observed node the most recent
/// [`WITNESS_RECENT_HEADS`] heads by epoch, and any fork found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessView {
    recent: BTreeMap<NodeId, BTreeMap<u64, SignedHead>>,
    forks: BTreeMap<NodeId, ForkCertificate>,
}

impl WitnessView {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last head cosigned for `node`.
    pub fn last(&self, node: &NodeId) -> Option<&SignedHead> {
        self.recent.get(node).and_then(|m| m.values().next_back())
    }

    /// Size of the head log of the last head cosigned for `node` (its epoch + 1; 0: none).
    pub fn last_size(&self, node: &NodeId) -> u64 {
        self.last(node).map_or(0, |h| h.head.epoch.saturating_add(1))
    }

    /// The fork found for `node`, if any.
    pub fn fork(&self, node: &NodeId) -> Option<&ForkCertificate> {
        self.forks.get(node)
    }

    /// Number of nodes with heads in the view (a host bounds it: `WITNESS_NODES_MAX`).
    pub fn node_count(&self) -> usize {
        self.recent.len()
    }

    /// Whether the view holds any head of `node`.
    pub fn knows(&self, node: &NodeId) -> bool {
        self.recent.contains_key(node)
    }

    /// The epochs of the heads kept for `node`, oldest first.
    pub fn epochs(&self, node: &NodeId) -> Vec<u64> {
        self.recent.get(node).map(|m| m.keys().copied().collect()).unwrap_or_default()
    }

    /// Every head kept, by node then epoch (to store the view one row per head).
    pub fn heads(&self) -> impl Iterator<Item = &SignedHead> {
        self.recent.values().flat_map(BTreeMap::values)
    }

    /// Puts back a head read from storage (a head this witness checked before), keeping
    /// the most recent [`WITNESS_RECENT_HEADS`] of its node.
    pub fn restore(&mut self, head: &SignedHead) {
        self.record(head);
    }

    /// Puts back a fork certificate known for `cert`'s node (verified before it was stored).
    pub fn restore_fork(&mut self, cert: ForkCertificate) {
        self.forks.insert(cert.a.head.node_id, cert);
    }

    /// Forgets every head of `node` (a host evicting an idle node to bound the view); a
    /// fork found for it is kept.
    pub fn forget(&mut self, node: &NodeId) {
        self.recent.remove(node);
    }

    /// Checks `head` (signed by `node_key`) against the heads this witness cosigned before;
    /// `consistency` proves the head log of the last cosigned head a prefix of this one's.
    /// A `Cosign` verdict records the head. Errors: the head's signature or node id.
    pub fn check(
        &mut self,
        head: &SignedHead,
        node_key: &PublicKey,
        consistency: &[Hash],
    ) -> Result<WitnessVerdict, EvidenceError> {
        verify_head(head, node_key)?;
        let node = head.head.node_id;
        if let Some(cert) = self.forks.get(&node) {
            return Ok(WitnessVerdict::Fork(cert.clone()));
        }
        let Some(last) = self.last(&node) else {
            self.record(head);
            return Ok(WitnessVerdict::Cosign);
        };
        let (last_epoch, last_root) = (last.head.epoch, last.head.log_root);
        if head.head.epoch <= last_epoch {
            let kept = self.recent.get(&node).and_then(|m| m.get(&head.head.epoch));
            if let Some(cert) = kept.and_then(|k| fork_certificate(k, head)) {
                self.forks.insert(node, cert.clone());
                return Ok(WitnessVerdict::Fork(cert));
            }
            return Ok(if head.head.epoch == last_epoch {
                WitnessVerdict::AlreadyCosigned
            } else {
                WitnessVerdict::Stale
            });
        }
        let (Some(old_size), Some(new_size)) = (last_epoch.checked_add(1), head.head.epoch.checked_add(1)) else {
            return Ok(WitnessVerdict::Inconsistent);
        };
        if merkle::verify_consistency(old_size, &last_root, new_size, &head.head.log_root, consistency).is_err() {
            return Ok(WitnessVerdict::Inconsistent);
        }
        self.record(head);
        Ok(WitnessVerdict::Cosign)
    }

    fn record(&mut self, head: &SignedHead) {
        let heads = self.recent.entry(head.head.node_id).or_default();
        heads.insert(head.head.epoch, head.clone());
        while heads.len() > WITNESS_RECENT_HEADS {
            heads.pop_first();
        }
    }
}
