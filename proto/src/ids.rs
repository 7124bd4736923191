//! The identifiers and key types every other module of the protocol names: keys,
//! signatures, ids, and the installation certificate. A leaf: it imports nothing of ours.

use serde::{Deserialize, Serialize};
use serde_big_array::BigArray;

/// An ed25519 public key (account or installation signing key).
pub type PublicKey = [u8; 32];
/// An X25519 public key used to encrypt direct messages to an installation.
pub type DhPublicKey = [u8; 32];
/// `blake3` derived identifier of an installation (see `identity::installation_id`).
pub type InstallationId = [u8; 32];
/// Sender-chosen random message identifier.
pub type MsgId = [u8; 16];
/// Single-use registration / login challenge.
pub type Nonce = [u8; 32];
/// Creator-chosen random group identifier (also the MLS `GroupId`).
pub type GroupId = [u8; 16];
/// Creator-chosen random identifier of one upload to a group (dedupe of retries).
pub type UploadId = [u8; 16];

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sig(#[serde(with = "BigArray")] pub [u8; 64]);

impl std::fmt::Debug for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sig({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// An installation (device) key pair's public half, endorsed by the account key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationCert {
    pub account_key: PublicKey,
    pub signing_key: PublicKey,
    pub dh_key: DhPublicKey,
    /// Microseconds since the Unix epoch, as claimed by the creating client.
    pub created_at_us: u64,
    /// Signature by `account_key` over `identity::cert_signing_bytes`.
    pub sig: Sig,
}
