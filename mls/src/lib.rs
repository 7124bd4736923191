//! MLS (RFC 9420) pieces shared by group members (client) and the steward (node):
//! the seeded provider, the signer over an installation key, the member credential, the
//! group policy extension and the steward order. Normative: `specs/groups.md`.

pub mod provider;

use openmls::prelude::{
    BasicCredential, Credential, Extension, Extensions, Lifetime, SignatureScheme, UnknownExtension,
};
use openmls_traits::signatures::{Signer, SignerError};
use serde::{Deserialize, Serialize};

pub use provider::{DEFAULT_CIPHERSUITE, NymstrProvider, SUPPORTED_CIPHERSUITES};

use nymstr_proto::codec;
use nymstr_proto::identity;
use nymstr_proto::wire::{GroupId, InstallationCert, PublicKey};

/// Private-use GroupContext extension carrying the [`GroupPolicy`] (RFC 9420 §17.3:
/// 0xF000-0xFFFF are reserved for private use). Readable by the steward.
pub const POLICY_EXTENSION_TYPE: u16 = 0xF0A1;

/// Domain-separation label of the commit order (the string predates the name "designated
/// committer" and stays: it is in every rank ever computed).
pub const LABEL_COMMIT_ORDER: &str = "nymstr/v1/group/steward-order";

/// An MLS signer over an installation's ed25519 signing key: a member's leaf signature
/// key is its installation signing key (the credential binds them, see [`MemberIdentity`]).
pub struct InstallationSigner(pub ed25519_dalek::SigningKey);

impl Signer for InstallationSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        use ed25519_dalek::Signer as _;
        Ok(self.0.sign(payload).to_bytes().to_vec())
    }
    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

impl InstallationSigner {
    pub fn public_key(&self) -> PublicKey {
        self.0.verifying_key().to_bytes()
    }
}

/// The identity inside a member's MLS `BasicCredential`: who the member is in the
/// identity model. Valid only if `cert` verifies under its account key and
/// `cert.signing_key` is the leaf's signature key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberIdentity {
    pub username: String,
    pub cert: InstallationCert,
}

/// Why a credential does not bind a leaf to an installation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("credential is not a basic credential")]
    NotBasic,
    #[error("credential identity does not decode")]
    Malformed,
    #[error("installation certificate does not verify")]
    BadCert,
    #[error("leaf signature key is not the certified installation key")]
    KeyMismatch,
}

impl MemberIdentity {
    pub fn credential(&self) -> Credential {
        BasicCredential::new(codec::encode(self)).into()
    }

    /// Decodes and checks the credential of a leaf whose signature key is `leaf_key`.
    pub fn verify(credential: &Credential, leaf_key: &[u8]) -> Result<MemberIdentity, CredentialError> {
        let basic = BasicCredential::try_from(credential.clone()).map_err(|_| CredentialError::NotBasic)?;
        let id: MemberIdentity = codec::decode(basic.identity()).map_err(|_| CredentialError::Malformed)?;
        identity::verify_cert(&id.cert).map_err(|_| CredentialError::BadCert)?;
        if id.cert.signing_key.as_slice() != leaf_key {
            return Err(CredentialError::KeyMismatch);
        }
        Ok(id)
    }
}

/// Who may commit, and how the group is joined. Lives in a GroupContext extension, so
/// it changes only by commit and every member and the steward agree on it per epoch.
/// Name and description are not here: they are encrypted application state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPolicy {
    /// Member (installation signing) keys of the admins, who are also the stewards
    /// allowed to commit. Sorted, without duplicates.
    pub admins: Vec<PublicKey>,
    /// Anyone may join by external commit; otherwise only with an invite token.
    pub open: bool,
}

impl GroupPolicy {
    pub fn normalized(mut self) -> Self {
        self.admins.sort_unstable();
        self.admins.dedup();
        self
    }

    pub fn extension(&self) -> Extension {
        Extension::Unknown(POLICY_EXTENSION_TYPE, UnknownExtension(codec::encode(self)))
    }

    /// Reads the policy from a group context's extensions.
    pub fn from_extensions<T: openmls::extensions::ExtensionValidator>(
        extensions: &Extensions<T>,
    ) -> Option<GroupPolicy> {
        extensions.unknown(POLICY_EXTENSION_TYPE).and_then(|UnknownExtension(bytes)| codec::decode(bytes).ok())
    }

    pub fn is_admin(&self, key: &PublicKey) -> bool {
        self.admins.binary_search(key).is_ok()
    }
}

/// The designated committer of `epoch` in retry `round` (de-MLS style): the admin with the
/// smallest `blake3::derive_key(LABEL_COMMIT_ORDER, epoch ‖ round ‖ member ‖ group)`.
/// Both u64s are big-endian. `None` if there are no admins.
pub fn designated_committer(group_id: &GroupId, epoch: u64, round: u64, admins: &[PublicKey]) -> Option<PublicKey> {
    admins.iter().min_by_key(|k| committer_rank(group_id, epoch, round, k)).copied()
}

/// The rank hash of one admin for (epoch, round).
pub fn committer_rank(group_id: &GroupId, epoch: u64, round: u64, member: &PublicKey) -> [u8; 32] {
    let mut input = Vec::with_capacity(8 + 8 + 32 + 16);
    input.extend_from_slice(&epoch.to_be_bytes());
    input.extend_from_slice(&round.to_be_bytes());
    input.extend_from_slice(member);
    input.extend_from_slice(group_id);
    blake3::derive_key(LABEL_COMMIT_ORDER, &input)
}

/// Length of one commit round (SPECv1 §6, `specs/groups.md` §6.4): the admin designated
/// for round `r` of an epoch may commit once `r` rounds have passed since the epoch began.
/// A protocol constant, not a setting: the steward and every member must count rounds
/// alike, and a node's config cannot reach its members.
pub const COMMIT_ROUND_US: u64 = 30_000_000;

/// The retry round of an epoch that began at `epoch_started_at_us`, at `now_us`.
pub fn commit_round(epoch_started_at_us: u64, now_us: u64) -> u64 {
    now_us.saturating_sub(epoch_started_at_us) / COMMIT_ROUND_US
}

/// The last round in which a designation is looked for: after as many rounds as there are
/// admins (plus slack) every admin has had a turn with overwhelming probability, so a huge
/// round costs nothing.
pub fn round_cap(admins: usize) -> u64 {
    4 * admins as u64 + 8
}

/// Whether `member` may commit to `epoch` at retry round `round_now`: it is the
/// designated steward of some round `0..=round_now`.
pub fn may_commit(group_id: &GroupId, epoch: u64, round_now: u64, admins: &[PublicKey], member: &PublicKey) -> bool {
    let rounds = round_now.min(round_cap(admins.len()));
    (0..=rounds).any(|r| designated_committer(group_id, epoch, r, admins).as_ref() == Some(member))
}

/// Key package / leaf lifetime from the host's clock, in seconds since the Unix epoch.
/// openmls validates lifetimes against the wall clock (`Lifetime::validate`), so the
/// simulator, whose clock is virtual, uses [`unbounded_lifetime`] instead.
pub fn lifetime_from(now_s: u64, valid_for_s: u64) -> Lifetime {
    Lifetime::init(now_s.saturating_sub(3600), now_s.saturating_add(valid_for_s))
}

/// A lifetime valid at every wall-clock time (simulator only).
pub fn unbounded_lifetime() -> Lifetime {
    Lifetime::init(0, u64::MAX)
}
