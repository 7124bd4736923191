//! Node identity and descriptors (`specs/trust.md` §1): the node id, the signed
//! self-description a node publishes, newest-wins replacement, and qualified names
//! (`alice@<node id>`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::SigningKey;

use super::{NodeDescriptor, NodeId, Roles};
use crate::identity::{self, UsernameError};
use crate::ids::PublicKey;

pub const LABEL_NODE_ID: &str = "nymstr/v1/node-id";
pub const LABEL_DESCRIPTOR: &str = "nymstr/v1/node-descriptor";

pub use crate::limits::{ADDRESS_BYTES_MAX, POLICY_BYTES_MAX};

/// `blake3::derive_key(LABEL_NODE_ID, key)`.
pub fn node_id(key: &PublicKey) -> NodeId {
    NodeId(blake3::derive_key(LABEL_NODE_ID, key))
}

/// `LABEL_DESCRIPTOR || 0x00 || codec((node_id, key, address, roles, policy, epoch_us,
/// issued_at_us))`: every field but the signature, in declaration order.
pub fn signing_bytes(d: &NodeDescriptor) -> Vec<u8> {
    fields_bytes(&d.node_id, &d.key, &d.address, &d.roles, &d.policy, d.epoch_us, d.issued_at_us)
}

fn fields_bytes(
    node_id: &NodeId,
    key: &PublicKey,
    address: &[u8],
    roles: &Roles,
    policy: &str,
    epoch_us: u64,
    issued_at_us: u64,
) -> Vec<u8> {
    identity::signing_bytes(
        LABEL_DESCRIPTOR,
        &(node_id, key, serde_bytes::Bytes::new(address), roles, policy, epoch_us, issued_at_us),
    )
}

/// Builds and signs the descriptor of the node holding `key`.
pub fn sign(
    key: &SigningKey,
    address: Vec<u8>,
    roles: Roles,
    policy: String,
    epoch_us: u64,
    issued_at_us: u64,
) -> NodeDescriptor {
    let public = key.verifying_key().to_bytes();
    let id = node_id(&public);
    let sig = identity::sign(key, &fields_bytes(&id, &public, &address, &roles, &policy, epoch_us, issued_at_us));
    NodeDescriptor { node_id: id, key: public, address, roles, policy, epoch_us, issued_at_us, sig }
}

/// Why a descriptor is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    #[error("node id is not derived from the descriptor's key")]
    NodeIdMismatch,
    #[error("address is empty")]
    EmptyAddress,
    #[error("address of {0} bytes exceeds {ADDRESS_BYTES_MAX}")]
    AddressTooLong(usize),
    #[error("policy of {0} bytes exceeds {POLICY_BYTES_MAX}")]
    PolicyTooLong(usize),
    #[error("epoch length is zero")]
    ZeroEpoch,
    #[error("descriptor key is not a valid ed25519 point")]
    BadKey,
    #[error("descriptor signature does not verify")]
    BadSignature,
    /// A verifier knows `KT_NODES_MAX` nodes already; a new one is not learnt.
    #[error("{0} nodes known already; no room for another")]
    TooManyNodes(usize),
}

/// Checks a descriptor: derived id, field bounds, strict signature by its own key.
pub fn verify(d: &NodeDescriptor) -> Result<(), DescriptorError> {
    if d.node_id != node_id(&d.key) {
        return Err(DescriptorError::NodeIdMismatch);
    }
    if d.address.is_empty() {
        return Err(DescriptorError::EmptyAddress);
    }
    if d.address.len() > ADDRESS_BYTES_MAX {
        return Err(DescriptorError::AddressTooLong(d.address.len()));
    }
    if d.policy.len() > POLICY_BYTES_MAX {
        return Err(DescriptorError::PolicyTooLong(d.policy.len()));
    }
    if d.epoch_us == 0 {
        return Err(DescriptorError::ZeroEpoch);
    }
    identity::verify(&d.key, &signing_bytes(d), &d.sig).map_err(|e| match e {
        identity::VerifyError::BadKey => DescriptorError::BadKey,
        identity::VerifyError::BadSignature => DescriptorError::BadSignature,
    })
}

/// True iff `candidate` replaces `held`: same node id and strictly newer `issued_at_us`.
/// Both are assumed verified; equal times keep the one held.
pub fn newer(held: &NodeDescriptor, candidate: &NodeDescriptor) -> bool {
    held.node_id == candidate.node_id && candidate.issued_at_us > held.issued_at_us
}

/// `username@node`: a user served by a particular node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedName {
    /// Folded with `identity::normalize_username`.
    pub username: String,
    pub node: NodeId,
}

/// Why a qualified name does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QualifiedNameError {
    #[error("qualified name has no '@'")]
    MissingAt,
    #[error("username: {0}")]
    Username(#[from] UsernameError),
    #[error("node id must be 64 hex characters, got {0}")]
    NodeIdLength(usize),
    #[error("node id is not hex")]
    NodeIdHex,
    #[error("unknown node alias {0:?}")]
    UnknownAlias(String),
}

impl QualifiedName {
    /// Parses `username@<64 hex>`.
    pub fn parse(s: &str) -> Result<Self, QualifiedNameError> {
        let (user, node) = s.split_once('@').ok_or(QualifiedNameError::MissingAt)?;
        let username = identity::normalize_username(user)?;
        Ok(QualifiedName { username, node: parse_node_id(node)? })
    }

    /// Parses `username@<64 hex>` or `username@alias` where `aliases` maps the alias to a
    /// node id (the id is what every later check uses). A 64-hex suffix is always an id.
    pub fn parse_with_aliases(s: &str, aliases: &BTreeMap<String, NodeId>) -> Result<Self, QualifiedNameError> {
        let (user, node) = s.split_once('@').ok_or(QualifiedNameError::MissingAt)?;
        let username = identity::normalize_username(user)?;
        let node = match NodeId::from_hex(node) {
            Some(id) => id,
            None => *aliases.get(node).ok_or_else(|| QualifiedNameError::UnknownAlias(node.to_string()))?,
        };
        Ok(QualifiedName { username, node })
    }
}

fn parse_node_id(s: &str) -> Result<NodeId, QualifiedNameError> {
    if s.len() != 64 {
        return Err(QualifiedNameError::NodeIdLength(s.len()));
    }
    NodeId::from_hex(s).ok_or(QualifiedNameError::NodeIdHex)
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.username, self.node.to_hex())
    }
}

impl FromStr for QualifiedName {
    type Err = QualifiedNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
