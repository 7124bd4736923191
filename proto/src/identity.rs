//! Identity model: account keys, installation keys and certificates, usernames, and the
//! exact bytes every signature covers. Normative text: `specs/registry.md`.
//!
//! Every signed message is `label || 0x00 || codec(fields)`; labels are distinct so a
//! signature for one purpose can never be replayed as another.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::Rng;
use serde::Serialize;

use crate::codec;
use crate::federation::NodeId;
use crate::limits::{USERNAME_BYTES_MAX, USERNAME_BYTES_MIN};
use crate::wire::{DhPublicKey, GroupId, InstallationCert, InstallationId, MsgId, Nonce, PublicKey, SendDm, Sig};

pub const LABEL_CERT: &str = "nymstr/v1/installation-cert";
pub const LABEL_INSTALLATION_ID: &str = "nymstr/v1/installation-id";
pub const LABEL_REGISTER_ACCOUNT: &str = "nymstr/v1/register/account";
pub const LABEL_REGISTER_INSTALLATION: &str = "nymstr/v1/register/installation";
pub const LABEL_LOGIN: &str = "nymstr/v1/login";
pub const LABEL_SEND_DM: &str = "nymstr/v1/send-dm";
pub const LABEL_GROUP_SUBSCRIBE: &str = "nymstr/v1/group/subscribe";
pub const LABEL_GROUP_INVITE: &str = "nymstr/v1/group/invite";
pub const LABEL_GROUP_ADVERT: &str = "nymstr/v1/group/advert";
pub const LABEL_GROUP_ADVERT_HOST: &str = "nymstr/v1/group/advert-host";
pub const LABEL_PEER_CHALLENGE: &str = "nymstr/v1/peer-challenge";
pub const LABEL_FORWARD_DM: &str = "nymstr/v1/forward-dm";

/// Names nobody may register: they would impersonate the service or its operators.
pub const RESERVED_USERNAMES: &[&str] = &[
    "admin",
    "administrator",
    "root",
    "system",
    "node",
    "nymstr",
    "nym",
    "support",
    "help",
    "abuse",
    "postmaster",
    "security",
    "steward",
    "relay",
    "registry",
    "federation",
    "everyone",
    "all",
    "null",
    "anonymous",
    "operator",
    "moderator",
];

/// Why a username is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    #[error("username must be {USERNAME_BYTES_MIN} to {USERNAME_BYTES_MAX} characters")]
    Length,
    #[error("username may hold only a-z, 0-9 and '_' and must start with a letter")]
    Charset,
    #[error("username is reserved")]
    Reserved,
}

/// Case-folds and validates a username (rules in `specs/registry.md`).
pub fn normalize_username(raw: &str) -> Result<String, UsernameError> {
    if raw.len() < USERNAME_BYTES_MIN || raw.len() > USERNAME_BYTES_MAX {
        return Err(UsernameError::Length);
    }
    if !raw.is_ascii() {
        return Err(UsernameError::Charset);
    }
    let folded = raw.to_ascii_lowercase();
    let mut chars = folded.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(UsernameError::Charset);
    }
    if RESERVED_USERNAMES.contains(&folded.as_str()) {
        return Err(UsernameError::Reserved);
    }
    Ok(folded)
}

/// `label || 0x00 || codec(fields)`.
pub fn signing_bytes<T: Serialize>(label: &str, fields: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + 96);
    out.extend_from_slice(label.as_bytes());
    out.push(0);
    out.extend_from_slice(&codec::encode(fields));
    out
}

pub fn sign(key: &SigningKey, message: &[u8]) -> Sig {
    Sig(key.sign(message).to_bytes())
}

/// Why a signature or certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("public key is not a valid ed25519 point")]
    BadKey,
    #[error("signature does not verify")]
    BadSignature,
}

/// Strict ed25519 verification (rejects small-order keys and malleable signatures).
pub fn verify(key: &PublicKey, message: &[u8], sig: &Sig) -> Result<(), VerifyError> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| VerifyError::BadKey)?;
    let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
    key.verify_strict(message, &sig).map_err(|_| VerifyError::BadSignature)
}

/// Draws a fresh ed25519 key from the caller's (seeded) generator.
pub fn generate_signing_key(rng: &mut impl Rng) -> SigningKey {
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    SigningKey::from_bytes(&secret)
}

pub fn cert_signing_bytes(
    account_key: &PublicKey,
    signing_key: &PublicKey,
    dh_key: &DhPublicKey,
    created_at_us: u64,
) -> Vec<u8> {
    signing_bytes(LABEL_CERT, &(account_key, signing_key, dh_key, created_at_us))
}

/// Issues a certificate for an installation, signed by the account key.
pub fn issue_cert(
    account: &SigningKey,
    installation_key: &PublicKey,
    dh_key: &DhPublicKey,
    created_at_us: u64,
) -> InstallationCert {
    let account_key = account.verifying_key().to_bytes();
    let sig = sign(account, &cert_signing_bytes(&account_key, installation_key, dh_key, created_at_us));
    InstallationCert { account_key, signing_key: *installation_key, dh_key: *dh_key, created_at_us, sig }
}

/// Checks that the account key signed this certificate.
pub fn verify_cert(cert: &InstallationCert) -> Result<(), VerifyError> {
    let bytes = cert_signing_bytes(&cert.account_key, &cert.signing_key, &cert.dh_key, cert.created_at_us);
    verify(&cert.account_key, &bytes, &cert.sig)
}

/// False for X25519 public keys of small order, which agree on an all-zero secret with
/// anyone: a certificate carrying one is refused (registration and lookups).
pub fn dh_key_is_usable(key: &DhPublicKey) -> bool {
    let probe = x25519_dalek::StaticSecret::from([0x5a; 32]);
    probe.diffie_hellman(&x25519_dalek::PublicKey::from(*key)).was_contributory()
}

/// Installation id: `blake3::derive_key(LABEL_INSTALLATION_ID, signing_key)`.
pub fn installation_id(signing_key: &PublicKey) -> InstallationId {
    blake3::derive_key(LABEL_INSTALLATION_ID, signing_key)
}

/// Bytes signed by the account key to complete a registration at `node` (the id its
/// `Challenge` names): an answer is worthless at any other node.
pub fn register_account_bytes(nonce: &Nonce, node: &NodeId, username: &str, installation: &InstallationId) -> Vec<u8> {
    signing_bytes(LABEL_REGISTER_ACCOUNT, &(nonce, node, username, installation))
}

/// Bytes signed by the installation key to complete a registration at `node`.
pub fn register_installation_bytes(
    nonce: &Nonce,
    node: &NodeId,
    username: &str,
    installation: &InstallationId,
) -> Vec<u8> {
    signing_bytes(LABEL_REGISTER_INSTALLATION, &(nonce, node, username, installation))
}

/// Bytes signed by the installation key to log in at `node`.
pub fn login_bytes(nonce: &Nonce, node: &NodeId, installation: &InstallationId) -> Vec<u8> {
    signing_bytes(LABEL_LOGIN, &(nonce, node, installation))
}

/// What a node signs to answer a peer's challenge: the nonce, the challenger's node id
/// and its own (so an answer cannot be relayed to a third node).
pub fn peer_challenge_bytes(
    nonce: &Nonce,
    challenger: &crate::federation::NodeId,
    responder: &crate::federation::NodeId,
) -> Vec<u8> {
    signing_bytes(LABEL_PEER_CHALLENGE, &(nonce, challenger, responder))
}

/// What a node signs when it forwards a DM to a peer (`Body::ForwardDm`): the sender's
/// qualified name, the receiving node, the forwarding time, and the DM's sender, id and
/// outer signature (which covers the rest of the DM).
pub fn forward_dm_bytes(
    from_username: &str,
    to_node: &crate::federation::NodeId,
    sent_at_us: u64,
    dm: &SendDm,
) -> Vec<u8> {
    signing_bytes(LABEL_FORWARD_DM, &(from_username, to_node, sent_at_us, &dm.from, &dm.msg_id, &dm.sig))
}

/// Bytes of a `SendDm` covered by its outer signature (everything but the signature).
pub fn send_dm_signing_bytes(dm: &SendDm) -> Vec<u8> {
    send_dm_fields_bytes(&dm.from, &dm.to, &dm.msg_id, &dm.payloads)
}

pub fn send_dm_fields_bytes(
    from: &InstallationId,
    to: &str,
    msg_id: &MsgId,
    payloads: &[crate::wire::InstallationPayload],
) -> Vec<u8> {
    signing_bytes(LABEL_SEND_DM, &(from, to, msg_id, payloads))
}

/// What a member signs to subscribe a tag to a group: the steward's nonce and the group.
pub fn group_subscribe_bytes(group_id: &GroupId, nonce: &Nonce) -> Vec<u8> {
    signing_bytes(LABEL_GROUP_SUBSCRIBE, &(group_id, nonce))
}

/// What an admin signs to invite: every field of the token but the signature.
pub fn invite_token_bytes(
    group_id: &GroupId,
    token_id: &[u8; 16],
    expires_at_us: u64,
    admin_key: &PublicKey,
    invitee: &Option<PublicKey>,
) -> Vec<u8> {
    signing_bytes(LABEL_GROUP_INVITE, &(group_id, token_id, expires_at_us, admin_key, invitee))
}

/// Whether `t`'s signature verifies under the admin key it names (not whether that key
/// is an admin of the group: the group's policy says that).
pub fn verify_invite_token(t: &crate::wire::InviteToken) -> Result<(), VerifyError> {
    verify(
        &t.admin_key,
        &invite_token_bytes(&t.group_id, &t.token_id, t.expires_at_us, &t.admin_key, &t.invitee),
        &t.sig,
    )
}

/// What an admin signs to advertise a public group: every field but the signature.
pub fn group_advert_bytes(a: &crate::wire::GroupAdvert) -> Vec<u8> {
    signing_bytes(
        LABEL_GROUP_ADVERT,
        &(&a.group_id, &a.name, &a.description, a.open, &a.group_node, a.issued_at_us, &a.admin_key),
    )
}

/// What the hosting node signs to vouch that it hosts a public group: the admin's fields,
/// the admin's signature and the host's node id (every field but `host_sig`).
pub fn group_advert_host_bytes(a: &crate::wire::GroupAdvert) -> Vec<u8> {
    signing_bytes(
        LABEL_GROUP_ADVERT_HOST,
        &(&a.group_id, &a.name, &a.description, a.open, &a.group_node, a.issued_at_us, &a.admin_key, &a.sig, &a.host),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn usernames_fold_and_reject() {
        assert_eq!(normalize_username("Alice_01").unwrap(), "alice_01");
        assert_eq!(normalize_username("ab"), Err(UsernameError::Length));
        assert_eq!(normalize_username(&"a".repeat(33)), Err(UsernameError::Length));
        assert_eq!(normalize_username("1alice"), Err(UsernameError::Charset));
        assert_eq!(normalize_username("al ice"), Err(UsernameError::Charset));
        assert_eq!(normalize_username("alicé"), Err(UsernameError::Charset));
        assert_eq!(normalize_username("ADMIN"), Err(UsernameError::Reserved));
    }

    #[test]
    fn cert_verifies_and_forgery_fails() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let account = generate_signing_key(&mut rng);
        let inst = generate_signing_key(&mut rng).verifying_key().to_bytes();
        let mut cert = issue_cert(&account, &inst, &[9; 32], 5);
        assert_eq!(verify_cert(&cert), Ok(()));
        cert.dh_key[0] ^= 1;
        assert_eq!(verify_cert(&cert), Err(VerifyError::BadSignature));
        let other = generate_signing_key(&mut rng);
        let forged = issue_cert(&other, &inst, &[9; 32], 5);
        let mut swapped = forged.clone();
        swapped.account_key = account.verifying_key().to_bytes();
        assert_eq!(verify_cert(&swapped), Err(VerifyError::BadSignature));
    }

    #[test]
    fn low_order_dh_keys_are_unusable() {
        let mut order8 = [0u8; 32];
        order8[0] = 1;
        assert!(!dh_key_is_usable(&[0; 32]));
        assert!(!dh_key_is_usable(&order8));
        let good = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([7; 32])).to_bytes();
        assert!(dh_key_is_usable(&good));
    }

    #[test]
    fn labels_separate_purposes() {
        let nonce = [1; 32];
        let inst = [2; 32];
        let node = NodeId([3; 32]);
        assert_ne!(
            register_installation_bytes(&nonce, &node, "bob", &inst),
            register_account_bytes(&nonce, &node, "bob", &inst)
        );
        assert_ne!(login_bytes(&nonce, &node, &inst), login_bytes(&nonce, &NodeId([4; 32]), &inst));
    }
}
