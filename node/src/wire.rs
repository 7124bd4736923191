//! Wire types: one versioned envelope, every message a typed enum variant.
//!
//! Normative description and test vectors: `specs/wire.md`. Encoding lives only in
//! [`crate::codec`]. Variant order is part of the wire format: append, never reorder.

use serde::{Deserialize, Serialize};
use serde_big_array::BigArray;

use crate::limits::{ACK_IDS_MAX, INSTALLATIONS_PER_ACCOUNT_MAX};

/// Wire protocol version carried as the first byte of every frame.
pub const WIRE_VERSION: u8 = 1;

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

/// One frame: `version byte || bincode(Envelope)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Chosen by the requester, echoed by the answer; 0 for unsolicited node messages.
    pub request_id: u64,
    pub body: Body,
}

/// The end-to-end sealed payload for one recipient installation. Opaque to the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationPayload {
    pub installation: InstallationId,
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

/// A direct message as sent by a client, signed by the sender installation (outer signature).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendDm {
    pub from: InstallationId,
    pub to: String,
    pub msg_id: MsgId,
    #[serde(deserialize_with = "bounded::vec::<_, _, INSTALLATIONS_PER_ACCOUNT_MAX>")]
    pub payloads: Vec<InstallationPayload>,
    /// Signature by the sender installation over `identity::send_dm_signing_bytes`.
    pub sig: Sig,
}

/// Every message of protocol v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    // --- registry ---
    /// Client asks to register `username` for `account_key` with a first installation.
    RegisterRequest {
        username: String,
        cert: InstallationCert,
    },
    /// Node answers a register or login request with a single-use, expiring nonce.
    Challenge {
        nonce: Nonce,
        expires_at_us: u64,
    },
    /// Client proves possession of both the account and the installation key.
    RegisterResponse {
        nonce: Nonce,
        account_sig: Sig,
        installation_sig: Sig,
    },
    /// Registration is durable; the sending tag is bound to the installation.
    Registered {
        username: String,
        installation: InstallationId,
    },
    /// A registered installation asks to (re-)attach its current sender tag.
    LoginRequest {
        installation: InstallationId,
    },
    /// Client proves possession of the installation key.
    LoginResponse {
        nonce: Nonce,
        installation_sig: Sig,
    },
    /// The tag is bound; `queued` messages wait for this installation.
    LoggedIn {
        installation: InstallationId,
        queued: u32,
    },
    /// Anyone may look up a username.
    Lookup {
        username: String,
    },
    /// The account's key and its current installation certificates.
    LookupResult {
        username: String,
        account_key: PublicKey,
        #[serde(deserialize_with = "bounded::vec::<_, _, INSTALLATIONS_PER_ACCOUNT_MAX>")]
        installations: Vec<InstallationCert>,
    },

    // --- relay ---
    SendDm(SendDm),
    /// The node holds the message durably for every targeted installation.
    SendAck {
        msg_id: MsgId,
    },
    /// The node delivers a queued message to a bound installation.
    Deliver {
        delivery_id: u64,
        from_username: String,
        from: InstallationId,
        msg_id: MsgId,
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// The recipient acknowledges deliveries; the node deletes them.
    AckDelivery {
        #[serde(deserialize_with = "bounded::vec::<_, _, ACK_IDS_MAX>")]
        delivery_ids: Vec<u64>,
    },

    // --- errors ---
    Error {
        code: ErrorCode,
        detail: String,
    },
}

impl Body {
    /// Short stable name used in traces and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::RegisterRequest { .. } => "register_request",
            Body::Challenge { .. } => "challenge",
            Body::RegisterResponse { .. } => "register_response",
            Body::Registered { .. } => "registered",
            Body::LoginRequest { .. } => "login_request",
            Body::LoginResponse { .. } => "login_response",
            Body::LoggedIn { .. } => "logged_in",
            Body::Lookup { .. } => "lookup",
            Body::LookupResult { .. } => "lookup_result",
            Body::SendDm(_) => "send_dm",
            Body::SendAck { .. } => "send_ack",
            Body::Deliver { .. } => "deliver",
            Body::AckDelivery { .. } => "ack_delivery",
            Body::Error { .. } => "error",
        }
    }
}

/// Error codes on the wire, encoded as their `u16` number (stable; see `specs/wire.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame did not decode.
    Malformed = 1,
    /// The frame's version byte is not supported.
    UnsupportedVersion = 2,
    /// The frame exceeds `FRAME_BYTES_MAX`.
    FrameTooLarge = 3,
    /// The message is valid but not accepted from this kind of peer.
    UnexpectedMessage = 4,
    UsernameInvalid = 10,
    UsernameReserved = 11,
    UsernameTaken = 12,
    BadCertificate = 13,
    UnknownChallenge = 14,
    ChallengeExpired = 15,
    BadSignature = 16,
    /// The account already holds `INSTALLATIONS_PER_ACCOUNT_MAX` installations.
    InstallationLimit = 17,
    UnknownUser = 20,
    UnknownInstallation = 21,
    NotLoggedIn = 22,
    /// A `SendDm`'s payloads do not cover exactly the recipient's current installations
    /// (one is gone, or one is missing): look the recipient up again.
    StaleRecipient = 23,
    QueueFull = 30,
    PayloadTooLarge = 31,
    /// A bounded table (e.g. pending challenges) is full; retry later.
    Busy = 32,
    /// The node failed internally (storage); nothing was acknowledged.
    Internal = 99,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 20] = [
        ErrorCode::Malformed,
        ErrorCode::UnsupportedVersion,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnexpectedMessage,
        ErrorCode::UsernameInvalid,
        ErrorCode::UsernameReserved,
        ErrorCode::UsernameTaken,
        ErrorCode::BadCertificate,
        ErrorCode::UnknownChallenge,
        ErrorCode::ChallengeExpired,
        ErrorCode::BadSignature,
        ErrorCode::InstallationLimit,
        ErrorCode::UnknownUser,
        ErrorCode::UnknownInstallation,
        ErrorCode::NotLoggedIn,
        ErrorCode::StaleRecipient,
        ErrorCode::QueueFull,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Busy,
        ErrorCode::Internal,
    ];

    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| *c as u16 == code)
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(*self as u16)
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(d)?;
        ErrorCode::from_u16(code).ok_or_else(|| serde::de::Error::custom(format_args!("unknown error code {code}")))
    }
}

/// Sequences with a protocol bound, decoded without trusting the declared length: at most
/// `MAX` elements, and never more capacity reserved than that. (serde's own `Vec` reserves
/// up to 1 MiB from the declared length before it finds the bytes missing.)
pub mod bounded {
    use std::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

    pub fn vec<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        struct V<T, const MAX: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for V<T, MAX> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a sequence of at most {MAX} elements")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let declared = seq.size_hint().unwrap_or(0);
                if declared > MAX {
                    return Err(A::Error::custom(format_args!("{declared} elements exceed the limit of {MAX}")));
                }
                let mut out = Vec::with_capacity(declared);
                while let Some(item) = seq.next_element()? {
                    if out.len() == MAX {
                        return Err(A::Error::custom(format_args!("more than {MAX} elements")));
                    }
                    out.push(item);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V::<T, MAX>(PhantomData))
    }
}
