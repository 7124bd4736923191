//! End-to-end direct-message encryption (normative text: `specs/relay.md`).
//!
//! Per message and per recipient installation: a fresh X25519 ephemeral key agrees with
//! the installation's DH key; `blake3` in derive-key mode turns
//! `eph_pub || recipient_dh || shared` into a ChaCha20-Poly1305 key and nonce; the AEAD's
//! associated data binds the ciphertext to `(from, to_installation, msg_id)` as routed by
//! the node. Inside, the sender's installation signs the message (inner signature), and
//! carries its certificate so the recipient can check it against the account key it pinned.
//! The inner signature covers both names qualified with their node (`user@<node id>`, see
//! [`signed_name`]), so a node cannot relabel a sender as a namesake of another namespace.

use chacha20poly1305::aead::Aead;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use ed25519_dalek::SigningKey;
use nymstr_proto::codec;
use nymstr_proto::federation::NodeId;
use nymstr_proto::federation::descriptor::QualifiedName;
use nymstr_proto::identity::{self, signing_bytes};
use nymstr_proto::wire::{DhPublicKey, InstallationCert, InstallationId, MsgId, PublicKey};
use rand_core::Rng;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};

pub const LABEL_SEAL_KEY: &str = "nymstr/v1/dm-seal";
pub const LABEL_DM_INNER: &str = "nymstr/v1/dm-inner";

/// What travels as `InstallationPayload::sealed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedDm {
    pub eph_pub: DhPublicKey,
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// The plaintext inside a sealed DM. `from_username` and `to_username` are the names as
/// signed: qualified with their node (`signed_name`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmInner {
    pub from_username: String,
    pub from_cert: InstallationCert,
    pub to_username: String,
    pub to_installation: InstallationId,
    pub msg_id: MsgId,
    pub sent_at_us: u64,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub sig: nymstr_proto::wire::Sig,
}

/// What `DmInner::body` holds: `codec(DmContent)` (normative text: `specs/direct.md` §3).
/// Variant order is part of the format: append, never reorder.
// A `GroupInvite` (with its bound token) is the large variant; these are short-lived
// values, one per DM, so boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DmContent {
    /// An application message (the CLI sends UTF-8 text).
    Text {
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// "Reach this installation of mine directly at `addr`; tell me yours."
    DirectOffer { addr: DirectAddress },
    /// "Reach this installation of mine directly at `addr`" (the answer to an offer).
    DirectAccept { addr: DirectAddress },
    /// "Stop sending to this installation directly; use the relay."
    DirectWithdraw,
    /// An invitation to a group (`specs/groups.md`): the admin-signed token, where the
    /// group is hosted, and its current name and description (which the steward never
    /// sees), so the invitee can join and show the group at once.
    GroupInvite(GroupInvite),
}

/// What an invitation carries, end-to-end encrypted to the invitee.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInvite {
    pub token: nymstr_proto::wire::InviteToken,
    /// Transport address of the group node (as the inviter reaches it, e.g. `host:port`).
    #[serde(with = "serde_bytes")]
    pub group_node: Vec<u8>,
    pub name: String,
    pub description: String,
}

/// A transport address an installation reveals, end-to-end encrypted, to one contact.
/// Variant order is part of the format: append, never reorder.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DirectAddress {
    /// `host:port` of a TCP listener speaking length-prefixed frames (`specs/direct.md`).
    Tcp(String),
}

impl DirectAddress {
    /// Checks the bounds every received address must meet (`specs/direct.md` §3).
    pub fn is_valid(&self) -> bool {
        match self {
            DirectAddress::Tcp(a) => {
                !a.is_empty()
                    && a.len() <= nymstr_proto::limits::ADDRESS_BYTES_MAX
                    && a.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            }
        }
    }
}

impl std::fmt::Display for DirectAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirectAddress::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// A verified, decrypted direct message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedDm {
    pub from_username: String,
    pub from_account_key: PublicKey,
    pub from_installation: InstallationId,
    pub msg_id: MsgId,
    pub sent_at_us: u64,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed payload does not decode")]
    Malformed,
    #[error("decryption failed (wrong key, tampered ciphertext or mis-routed message)")]
    Decrypt,
    #[error("routing fields disagree with the encrypted ones")]
    Mismatch,
    #[error("sender certificate is not signed by the sender's pinned account key")]
    BadCertificate,
    #[error("inner signature does not verify")]
    BadSignature,
    #[error("ephemeral key is of low order (no shared secret)")]
    WeakKey,
    #[error("message content does not decode (unknown content type?)")]
    Content,
}

fn aad(from: &InstallationId, to_installation: &InstallationId, msg_id: &MsgId) -> Vec<u8> {
    codec::encode(&(from, to_installation, msg_id))
}

fn derive(eph_pub: &DhPublicKey, recipient_dh: &DhPublicKey, shared: &[u8; 32]) -> ([u8; 32], [u8; 12]) {
    let mut h = blake3::Hasher::new_derive_key(LABEL_SEAL_KEY);
    h.update(eph_pub);
    h.update(recipient_dh);
    h.update(shared);
    let mut okm = [0u8; 44];
    h.finalize_xof().fill(&mut okm);
    let mut key = [0u8; 32];
    let mut nonce = [0u8; 12];
    key.copy_from_slice(&okm[..32]);
    nonce.copy_from_slice(&okm[32..]);
    (key, nonce)
}

#[allow(clippy::too_many_arguments)]
fn inner_signing_bytes(
    eph_pub: &DhPublicKey,
    from_username: &str,
    to_username: &str,
    to_installation: &InstallationId,
    msg_id: &MsgId,
    sent_at_us: u64,
    body: &[u8],
) -> Vec<u8> {
    signing_bytes(LABEL_DM_INNER, &(eph_pub, from_username, to_username, to_installation, msg_id, sent_at_us, body))
}

/// The name a seal signs for `name` as seen by a client whose home node is `home`: a
/// qualified name (`user@<node id>`) stays as it is, a name of the home node is qualified
/// with the home's id, and stays bare only when the client knows no home id (a node that
/// does not federate has one namespace).
pub fn signed_name(name: &str, home: Option<&NodeId>) -> String {
    match home {
        Some(node) if !name.contains('@') => QualifiedName { username: name.to_string(), node: *node }.to_string(),
        _ => name.to_string(),
    }
}

/// Whether the names a sender signed fit the delivery (`specs/relay.md` §7, opening step
/// 5): `routed_from` is the sender's name as the recipient's node routed it (`user` of
/// the same node, or `user@<node id>`), `own` the recipient's username and `home` its home
/// node's id if it knows it.
///
/// * The signed recipient is `own`, qualified with a node that is `home` when both are
///   known.
/// * A sender routed as `user@X` signed exactly `user@X`, and a qualified recipient: a
///   sender of another node always knows its own node.
/// * A sender routed as a user of the recipient's node signed that user with the same
///   node as the recipient (both qualified with one node id, or both bare): a message
///   signed `alice@X` to `bob@B` cannot be shown as from a local `alice`, and one signed
///   `carol@B` cannot be shown as from `carol@Y`.
pub fn names_fit(routed_from: &str, own: &str, home: Option<&NodeId>, signed_from: &str, signed_to: &str) -> bool {
    fn split(name: &str) -> (&str, Option<&str>) {
        match name.split_once('@') {
            Some((user, node)) => (user, Some(node)),
            None => (name, None),
        }
    }
    let (to_user, to_node) = split(signed_to);
    let home_hex = home.map(NodeId::to_hex);
    if to_user != own || (home_hex.is_some() && to_node.is_some() && to_node != home_hex.as_deref()) {
        return false;
    }
    if routed_from.contains('@') {
        return signed_from == routed_from && to_node.is_some();
    }
    let (from_user, from_node) = split(signed_from);
    from_user == routed_from && from_node == to_node
}

/// Who is sending: the installation's signing key and certificate, and the name to sign
/// (`signed_name` of its username).
pub struct Sender<'a> {
    pub username: &'a str,
    pub key: &'a SigningKey,
    pub cert: &'a InstallationCert,
}

/// Seals `body` for one recipient installation; `to_username` is the recipient's name as
/// signed (`signed_name`).
pub fn seal(
    rng: &mut impl Rng,
    sender: &Sender<'_>,
    to_username: &str,
    to: &InstallationCert,
    msg_id: &MsgId,
    sent_at_us: u64,
    body: &[u8],
) -> Vec<u8> {
    let mut eph_bytes = [0u8; 32];
    rng.fill_bytes(&mut eph_bytes);
    let eph = StaticSecret::from(eph_bytes);
    let eph_pub = XPublic::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&XPublic::from(to.dh_key)).to_bytes();
    let (key, nonce) = derive(&eph_pub, &to.dh_key, &shared);
    let to_installation = identity::installation_id(&to.signing_key);
    let from_installation = identity::installation_id(&sender.cert.signing_key);
    let sig = identity::sign(
        sender.key,
        &inner_signing_bytes(&eph_pub, sender.username, to_username, &to_installation, msg_id, sent_at_us, body),
    );
    let inner = DmInner {
        from_username: sender.username.to_string(),
        from_cert: sender.cert.clone(),
        to_username: to_username.to_string(),
        to_installation,
        msg_id: *msg_id,
        sent_at_us,
        body: body.to_vec(),
        sig,
    };
    let cipher = ChaCha20Poly1305::new(&key.into());
    let ciphertext = cipher
        .encrypt(
            &Nonce::from(nonce),
            chacha20poly1305::aead::Payload {
                msg: &codec::encode(&inner),
                aad: &aad(&from_installation, &to_installation, msg_id),
            },
        )
        .expect("ChaCha20-Poly1305 encrypts any message within the frame limit");
    codec::encode(&SealedDm { eph_pub, ciphertext })
}

/// What the recipient knows when it opens a delivery: its username (bare) and, if it
/// knows it, its home node's id.
pub struct Recipient<'a> {
    pub username: &'a str,
    pub home: Option<&'a NodeId>,
    pub installation: InstallationId,
    pub dh_secret: &'a StaticSecret,
}

/// Decrypts and verifies a sealed DM routed as `(from, msg_id)`. `pinned_account_key`
/// is the account key the recipient holds for `from_username` (from a lookup).
pub fn open(
    recipient: &Recipient<'_>,
    from_username: &str,
    from: &InstallationId,
    msg_id: &MsgId,
    pinned_account_key: &PublicKey,
    sealed: &[u8],
) -> Result<OpenedDm, OpenError> {
    let sealed: SealedDm = codec::decode(sealed).map_err(|_| OpenError::Malformed)?;
    let my_dh = XPublic::from(recipient.dh_secret).to_bytes();
    let shared = recipient.dh_secret.diffie_hellman(&XPublic::from(sealed.eph_pub));
    if !shared.was_contributory() {
        return Err(OpenError::WeakKey);
    }
    let shared = shared.to_bytes();
    let (key, nonce) = derive(&sealed.eph_pub, &my_dh, &shared);
    let cipher = ChaCha20Poly1305::new(&key.into());
    let plain = cipher
        .decrypt(
            &Nonce::from(nonce),
            chacha20poly1305::aead::Payload {
                msg: &sealed.ciphertext,
                aad: &aad(from, &recipient.installation, msg_id),
            },
        )
        .map_err(|_| OpenError::Decrypt)?;
    let inner: DmInner = codec::decode(&plain).map_err(|_| OpenError::Malformed)?;
    if inner.msg_id != *msg_id
        || !names_fit(from_username, recipient.username, recipient.home, &inner.from_username, &inner.to_username)
        || identity::installation_id(&inner.from_cert.signing_key) != *from
        || inner.to_installation != recipient.installation
    {
        return Err(OpenError::Mismatch);
    }
    if inner.from_cert.account_key != *pinned_account_key || identity::verify_cert(&inner.from_cert).is_err() {
        return Err(OpenError::BadCertificate);
    }
    let signed = inner_signing_bytes(
        &sealed.eph_pub,
        &inner.from_username,
        &inner.to_username,
        &inner.to_installation,
        &inner.msg_id,
        inner.sent_at_us,
        &inner.body,
    );
    identity::verify(&inner.from_cert.signing_key, &signed, &inner.sig).map_err(|_| OpenError::BadSignature)?;
    Ok(OpenedDm {
        from_username: from_username.to_string(),
        from_account_key: inner.from_cert.account_key,
        from_installation: *from,
        msg_id: inner.msg_id,
        sent_at_us: inner.sent_at_us,
        body: inner.body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INNER_VECTOR: &str = concat!(
        "6e796d7374722f76312f646d2d696e6e6572000101010101010101010101010101010101010101010101010101010101",
        "01010146616c696365403131313131313131313131313131313131313131313131313131313131313131313131313131",
        "313131313131313131313131313131313131313131313131313144626f62403232323232323232323232323232323232",
        "323232323232323232323232323232323232323232323232323232323232323232323232323232323232323232323203",
        "030303030303030303030303030303030303030303030303030303030303030404040404040404040404040404040405",
        "026869",
    );

    /// The vectors of `specs/direct.md` §3.
    #[test]
    fn content_encodings_match_the_spec() {
        let addr = DirectAddress::Tcp("127.0.0.1:7001".into());
        let cases = [
            (DmContent::Text { body: b"hi".to_vec() }, "00026869"),
            (DmContent::DirectOffer { addr: addr.clone() }, "01000e3132372e302e302e313a37303031"),
            (DmContent::DirectAccept { addr }, "02000e3132372e302e302e313a37303031"),
            (DmContent::DirectWithdraw, "03"),
        ];
        for (content, hex) in cases {
            let bytes = codec::encode(&content);
            let got: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, hex, "{content:?}");
            assert_eq!(codec::decode::<DmContent>(&bytes).unwrap(), content);
        }
        // A group invitation: variant 4, then the token, node, name and description.
        let invite = DmContent::GroupInvite(GroupInvite {
            token: nymstr_proto::wire::InviteToken {
                group_id: [1; 16],
                token_id: [2; 16],
                expires_at_us: 3,
                admin_key: [4; 32],
                invitee: Some([6; 32]),
                sig: nymstr_proto::wire::Sig([5; 64]),
            },
            group_node: b"127.0.0.1:7001".to_vec(),
            name: "g".into(),
            description: String::new(),
        });
        let bytes = codec::encode(&invite);
        assert_eq!(bytes[0], 4);
        assert_eq!(codec::decode::<DmContent>(&bytes).unwrap(), invite);
        assert!(codec::decode::<DmContent>(&[5]).is_err(), "unknown content types do not decode");
    }

    /// The vector of `specs/relay.md` §7: the inner signature covers qualified names.
    #[test]
    fn inner_signing_bytes_match_the_spec() {
        let from = signed_name("alice", Some(&NodeId([0x11; 32])));
        let to = signed_name(&format!("bob@{}", NodeId([0x22; 32]).to_hex()), Some(&NodeId([0x11; 32])));
        let bytes = inner_signing_bytes(&[1; 32], &from, &to, &[3; 32], &[4; 16], 5, b"hi");
        let got: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, INNER_VECTOR);
    }

    #[test]
    fn direct_addresses_are_checked() {
        let ok = |a: &str| DirectAddress::Tcp(a.into()).is_valid();
        assert!(ok("127.0.0.1:7001") && ok("[::1]:7001") && ok("example.org:1"));
        assert!(!ok("") && !ok("127.0.0.1") && !ok(":7001") && !ok("host:99999") && !ok(&"a".repeat(200)));
    }

    #[test]
    fn low_order_keys_are_refused() {
        // The identity and a point of order 8 on Curve25519.
        let low_order: [[u8; 32]; 2] = [[0; 32], {
            let mut p = [0u8; 32];
            p[0] = 1;
            p
        }];
        for key in low_order {
            assert!(!identity::dh_key_is_usable(&key));
        }
        assert!(identity::dh_key_is_usable(&XPublic::from(&StaticSecret::from([7; 32])).to_bytes()));

        let secret = StaticSecret::from([9; 32]);
        let recipient = Recipient { username: "bob", home: None, installation: [1; 32], dh_secret: &secret };
        let sealed = codec::encode(&SealedDm { eph_pub: [0; 32], ciphertext: vec![0; 64] });
        assert_eq!(open(&recipient, "alice", &[2; 32], &[3; 16], &[4; 32], &sealed), Err(OpenError::WeakKey));
    }
}
