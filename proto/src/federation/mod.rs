//! Federation, pure part (`SPECv1.md` §9, `specs/transparency.md`): node identity and
//! descriptors, the per-node transparency log (a sparse Merkle tree of the directory and a
//! Merkle log of epoch heads), signed tree heads, witness cosignatures, fork certificates,
//! and the client-side verifier with its pins and trust policies.
//!
//! Nothing here does I/O, reads the clock or draws randomness: the actor core
//! (`actors::federation`) and the client feed it values.
//!
//! Every hash is `blake3` in key-derivation mode with a distinct label
//! ([`merkle::hash`]); every signature covers `label || 0x00 || codec(fields)`
//! (`identity::signing_bytes`).

pub mod descriptor;
pub mod evidence;
pub mod merkle;
pub mod verify;

use serde::{Deserialize, Serialize};
use serde_big_array::BigArray;

use crate::ids::{InstallationCert, PublicKey, Sig};
use crate::limits::INSTALLATIONS_PER_ACCOUNT_MAX;

/// A 32-byte blake3 output.
pub type Hash = [u8; 32];

/// `blake3::derive_key("nymstr/v1/node-id", node_key)`: what a node is called everywhere.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeId({})", &self.to_hex()[..12])
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl NodeId {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses exactly 64 hex characters (either case).
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return None;
        }
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(NodeId(out))
    }
}

/// The roles a node announces in its descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// Registers users, keeps a transparency log, relays direct messages.
    pub discovery: bool,
    /// Hosts MLS groups (the steward).
    pub group: bool,
}

/// A node's signed self-description. The newest valid descriptor (highest `issued_at_us`)
/// for a node id wins; equal times keep the one already held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescriptor {
    /// Must equal `node_id(&key)`; verifiers recompute it.
    pub node_id: NodeId,
    /// The node's ed25519 key.
    pub key: PublicKey,
    /// Transport address peers and clients reach the node at (a Nym address or `host:port`).
    #[serde(with = "serde_bytes")]
    pub address: Vec<u8>,
    pub roles: Roles,
    /// The node's trust policy and registration policy, as text (`tofu`, `witness-quorum:3`,
    /// `allowlist`; informative for peers).
    pub policy: String,
    /// Length of one transparency-log epoch, microseconds.
    pub epoch_us: u64,
    pub issued_at_us: u64,
    /// Signature by `key` over `descriptor::signing_bytes`.
    pub sig: Sig,
}

/// What a directory entry says about a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryStatus {
    /// The name is served here.
    Active,
    /// The account moved to another node; look it up there.
    Migrated { to: NodeId },
    /// The account was revoked by its owner; no key is valid for it.
    Revoked,
}

/// One entry of a discovery node's directory (the value under a folded username).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub username: String,
    pub account_key: PublicKey,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, INSTALLATIONS_PER_ACCOUNT_MAX>")]
    pub installations: Vec<InstallationCert>,
    pub status: EntryStatus,
    /// Version of this entry: 1 at registration, +1 on every mutation. Never goes down.
    pub seq: u64,
    /// Epoch in which this version entered the directory.
    pub epoch: u64,
}

/// The unsigned content of an epoch head: the directory root at the end of `epoch` and the
/// root of the log of all epoch heads `0..=epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeHead {
    pub node_id: NodeId,
    pub epoch: u64,
    /// Root of the sparse directory tree ([`merkle::DirTree`]) after the epoch's mutations.
    pub dir_root: Hash,
    /// Entries in the directory tree.
    pub dir_size: u64,
    /// Root of the head log ([`merkle::LogTree`]) of size `epoch + 1` whose leaf `i` is
    /// `merkle::log_leaf_hash(&EpochLeaf)` of epoch `i`.
    pub log_root: Hash,
    pub issued_at_us: u64,
}

/// The leaf the head log keeps for one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochLeaf {
    pub epoch: u64,
    pub dir_root: Hash,
    pub dir_size: u64,
}

/// A tree head signed by its node (a signed tree head, STH).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub head: TreeHead,
    /// Signature by the node key over `evidence::head_signing_bytes(&head)`.
    pub sig: Sig,
}

/// A witness's statement that it saw `head_hash` as node `node_id`'s head for `epoch` and
/// that it was consistent with every earlier head of that node the witness had seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cosignature {
    pub witness: NodeId,
    pub node_id: NodeId,
    pub epoch: u64,
    /// `evidence::head_hash(&head)`.
    pub head_hash: Hash,
    /// Signature by the witness key over `evidence::cosign_signing_bytes`.
    #[serde(with = "BigArray")]
    pub sig: [u8; 64],
}

/// Proof that a node signed two different heads for one epoch. Self-verifying given the
/// node's key: anyone may check and gossip it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkCertificate {
    pub a: SignedHead,
    pub b: SignedHead,
}

/// A node's signed promise to include a mutation in its directory by `deadline_epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    pub node_id: NodeId,
    pub username: String,
    /// `merkle::entry_hash` of the promised entry version.
    pub entry_hash: Hash,
    pub seq: u64,
    pub deadline_epoch: u64,
    pub sig: Sig,
}

/// The answer to a transparency lookup: the head, the entry (if present) with its proof,
/// and a consistency proof from the head size the client said it last saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupProof {
    pub head: SignedHead,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, COSIGNATURES_MAX>")]
    pub cosignatures: Vec<Cosignature>,
    /// `Some` with a presence proof, or `None` with an absence proof in `dir_proof`.
    pub entry: Option<DirEntry>,
    pub dir_proof: merkle::DirProof,
    /// Log size the consistency proof starts from (0: none asked or none possible).
    pub from_log_size: u64,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, PROOF_HASHES_MAX>")]
    pub consistency: Vec<Hash>,
}

pub use crate::limits::{COSIGNATURES_MAX, PROOF_HASHES_MAX};
