//! Wire types: one versioned envelope, every message a typed enum variant.
//!
//! Normative description and test vectors: `specs/wire.md`. Encoding lives only in
//! [`crate::codec`]. Variant order is part of the wire format: append, never reorder.

use serde::{Deserialize, Serialize};

use crate::federation::{
    COSIGNATURES_MAX, Cosignature, ForkCertificate, Hash, LookupProof, NodeDescriptor, NodeId, PROOF_HASHES_MAX,
    Promise, SignedHead,
};
use crate::limits::{
    ACK_IDS_MAX, DESCRIPTORS_MAX, DIRECTORY_ADVERTS_MAX, GOSSIP_ITEMS_MAX, GROUP_FETCH_MAX,
    INSTALLATIONS_PER_ACCOUNT_MAX,
};

/// Wire protocol version carried as the first byte of every frame.
pub const WIRE_VERSION: u8 = 3;

pub use crate::ids::{DhPublicKey, GroupId, InstallationCert, InstallationId, MsgId, Nonce, PublicKey, Sig, UploadId};

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

/// A group's public advert, signed twice: by an admin's member key over what the group is
/// (`identity::group_advert_bytes`: every field up to `admin_key`), and by the node hosting
/// it over the whole advert (`identity::group_advert_host_bytes`: the admin's fields, `sig`
/// and `host`), which peers verify against `host`'s descriptor. Listed by discovery nodes
/// for public groups; never sent for hidden ones. A client's `GroupCreate` carries `host`
/// and `host_sig` as zeros: the hosting node fills them in (`specs/groups.md` §3.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAdvert {
    pub group_id: GroupId,
    pub name: String,
    pub description: String,
    /// Anyone may join by external commit (`true`), or only with an invite token.
    pub open: bool,
    /// Transport address of the group node hosting the steward (empty: the node listing it).
    #[serde(with = "serde_bytes")]
    pub group_node: Vec<u8>,
    pub issued_at_us: u64,
    pub admin_key: PublicKey,
    pub sig: Sig,
    /// The node hosting the group (zeros until that node signs).
    pub host: crate::federation::NodeId,
    /// The hosting node's signature over `identity::group_advert_host_bytes`.
    pub host_sig: Sig,
}

/// An admin-signed, expiring, single-use invitation to an invite-only group, redeemed by
/// attaching it to an external commit (`GroupUpload::invite`). Sent to the invitee inside
/// an end-to-end sealed DM; the steward sees it only when it is redeemed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteToken {
    pub group_id: GroupId,
    pub token_id: [u8; 16],
    pub expires_at_us: u64,
    /// A member key in the group's admin set when the token is redeemed.
    pub admin_key: PublicKey,
    /// The account key of the invitee: only a joiner whose leaf credential is certified by
    /// this account key may redeem the token (the steward and every member check it).
    /// `None`: a bearer code, redeemable by whoever holds it (`specs/groups.md` §3.1).
    pub invitee: Option<PublicKey>,
    /// Signature by `admin_key` over `identity::invite_token_bytes`.
    pub sig: Sig,
}

/// One entry of a group's ordered log at the steward: an accepted handshake message or an
/// application ciphertext, exactly as uploaded (`mls` is a TLS-encoded `MlsMessageOut`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEntry {
    /// Position in the group's log, from 1, without gaps.
    pub seq: u64,
    /// Epoch the message was sent in.
    pub epoch: u64,
    #[serde(with = "serde_bytes")]
    pub mls: Vec<u8>,
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
    /// Node answers a register or login request with a single-use, expiring nonce, bound
    /// to the asking tag, and names itself: the answer signs `node` (see `identity`), so
    /// it is worthless at any other node.
    Challenge {
        nonce: Nonce,
        expires_at_us: u64,
        node: NodeId,
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

    // --- groups (steward, `specs/groups.md`) ---
    /// The creator hosts a new group: its epoch-0 `GroupInfo` with the ratchet tree
    /// extension (TLS-encoded `MlsMessageOut`), and an advert if the group is public.
    GroupCreate {
        group_id: GroupId,
        #[serde(with = "serde_bytes")]
        group_info: Vec<u8>,
        advert: Option<GroupAdvert>,
    },
    /// The group is hosted durably.
    GroupCreated {
        group_id: GroupId,
        epoch: u64,
    },
    /// A member (by its leaf's signature key = installation signing key) asks to receive
    /// the group's log from `from_seq` on this tag. Answered with a `Challenge`.
    GroupSubscribe {
        group_id: GroupId,
        member_key: PublicKey,
        from_seq: u64,
    },
    /// Proof of the member key: signature over `identity::group_subscribe_bytes`.
    GroupSubscribeProof {
        group_id: GroupId,
        nonce: Nonce,
        sig: Sig,
    },
    /// The tag now receives `GroupPush`es; entries from the requested seq follow.
    GroupSubscribed {
        group_id: GroupId,
        epoch: u64,
        next_seq: u64,
    },
    /// One MLS message for the group: a proposal or commit (`PublicMessage`) or an
    /// application message (`PrivateMessage`). Commits carry the new epoch's `GroupInfo`;
    /// external commits to an invite-only group carry an invite token. One network message
    /// per group message whatever the group size (P1).
    GroupUpload {
        group_id: GroupId,
        upload_id: UploadId,
        #[serde(with = "serde_bytes")]
        mls: Vec<u8>,
        #[serde(with = "serde_bytes")]
        group_info: Vec<u8>,
        invite: Option<InviteToken>,
    },
    /// The upload is in the log durably at `seq`.
    GroupUploadAck {
        group_id: GroupId,
        upload_id: UploadId,
        seq: u64,
        epoch: u64,
    },
    /// The steward pushes a new log entry to every subscribed member tag.
    GroupPush {
        group_id: GroupId,
        entry: GroupEntry,
    },
    /// A member asks for log entries from `from_seq` (repair, catch-up).
    GroupFetch {
        group_id: GroupId,
        from_seq: u64,
        max: u32,
    },
    /// Entries in order from the requested seq (fewer if history was pruned: then the
    /// first entry's seq is above `from_seq`); `next_seq` is the seq the next entry gets.
    GroupEntries {
        group_id: GroupId,
        #[serde(deserialize_with = "bounded::vec::<_, _, GROUP_FETCH_MAX>")]
        entries: Vec<GroupEntry>,
        next_seq: u64,
    },
    /// Anyone may ask for the current `GroupInfo` (for an external join).
    GroupInfoRequest {
        group_id: GroupId,
    },
    GroupInfoReply {
        group_id: GroupId,
        epoch: u64,
        open: bool,
        #[serde(with = "serde_bytes")]
        group_info: Vec<u8>,
    },
    /// Anyone may ask a node for the public groups it lists.
    DirectoryRequest,
    Directory {
        #[serde(deserialize_with = "bounded::vec::<_, _, DIRECTORY_ADVERTS_MAX>")]
        adverts: Vec<GroupAdvert>,
    },
    /// A member stops receiving pushes on this tag.
    GroupUnsubscribe {
        group_id: GroupId,
    },

    // --- federation (`SPECv1.md` §9) ---
    /// Node to node: the first message on a peering. Carries the sender's descriptor and a
    /// fresh challenge the receiver must sign (`identity::peer_challenge_bytes`).
    PeerHello {
        descriptor: NodeDescriptor,
        nonce: Nonce,
    },
    /// Answer to `PeerHello`: the receiver's descriptor, its signature over the hello's
    /// nonce, and its own challenge to the hello's sender.
    PeerWelcome {
        descriptor: NodeDescriptor,
        answer: Sig,
        nonce: Nonce,
    },
    /// Completes the mutual challenge: the hello sender's signature over the welcome's nonce.
    PeerProof {
        answer: Sig,
    },
    /// Gossip between authenticated peers: descriptors, signed heads with cosignatures,
    /// fork certificates and public-group adverts. Each item is forwarded at most once per
    /// node, to at most `gossip_fanout` peers.
    Gossip {
        #[serde(deserialize_with = "bounded::vec::<_, _, GOSSIP_ITEMS_MAX>")]
        items: Vec<GossipItem>,
    },
    /// A node asks a peer to witness its new head: the consistency proof runs from the last
    /// head of this node the witness cosigned (`from_log_size`, 0: none).
    CosignRequest {
        head: SignedHead,
        from_log_size: u64,
        #[serde(deserialize_with = "bounded::vec::<_, _, PROOF_HASHES_MAX>")]
        consistency: Vec<Hash>,
    },
    /// The witness's cosignature of the head.
    Cosigned {
        cosignature: Cosignature,
    },
    /// Transparency lookup. From a client to its home node: `name` is `user` (this node) or
    /// `user@nodeid` (resolved through the home node). From a node to a peer: `user` only.
    /// `from_log_size` is the head-log size the asker last accepted from the serving node.
    KtLookup {
        name: String,
        from_log_size: u64,
    },
    /// The serving node's descriptor and its signed proof: the entry or its absence in the
    /// directory of its latest head, with cosignatures and a consistency proof.
    KtLookupResult {
        descriptor: NodeDescriptor,
        proof: Box<LookupProof>,
    },
    /// A direct message for a user homed on the receiving node, forwarded by the sender's
    /// home node. `from_username` is the sender's qualified name `user@nodeid`; `cert` is
    /// the sender installation's certificate (the DM's outer signature verifies under it).
    /// Answered with `SendAck` once durable. `sent_at_us` is the forwarding node's clock
    /// when it forwarded; `sig` is the forwarding node's signature over
    /// `identity::forward_dm_bytes` (freshness: a captured forward cannot be replayed once
    /// it is older than the receiver's window, `limits::FORWARD_FRESHNESS_US`).
    ForwardDm {
        from_username: String,
        cert: InstallationCert,
        dm: SendDm,
        sent_at_us: u64,
        sig: Sig,
    },
    /// A node's signed promise to include a registration or change by a deadline epoch;
    /// sent after `Registered`.
    IncludePromise {
        promise: Promise,
    },
    /// Anyone may ask a node for the node descriptors it knows (its own first).
    NodesRequest,
    Nodes {
        #[serde(deserialize_with = "bounded::vec::<_, _, DESCRIPTORS_MAX>")]
        descriptors: Vec<NodeDescriptor>,
    },
    /// A witness's answer to a `CosignRequest` whose proof starts from another size than
    /// the last head of the requester it cosigned: send the proof from `log_size`.
    CosignFrom {
        log_size: u64,
    },
}

/// One gossiped item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipItem {
    Descriptor(NodeDescriptor),
    Head {
        head: SignedHead,
        #[serde(deserialize_with = "bounded::vec::<_, _, COSIGNATURES_MAX>")]
        cosignatures: Vec<Cosignature>,
    },
    Fork(ForkCertificate),
    Advert(GroupAdvert),
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
            Body::GroupCreate { .. } => "group_create",
            Body::GroupCreated { .. } => "group_created",
            Body::GroupSubscribe { .. } => "group_subscribe",
            Body::GroupSubscribeProof { .. } => "group_subscribe_proof",
            Body::GroupSubscribed { .. } => "group_subscribed",
            Body::GroupUpload { .. } => "group_upload",
            Body::GroupUploadAck { .. } => "group_upload_ack",
            Body::GroupPush { .. } => "group_push",
            Body::GroupFetch { .. } => "group_fetch",
            Body::GroupEntries { .. } => "group_entries",
            Body::GroupInfoRequest { .. } => "group_info_request",
            Body::GroupInfoReply { .. } => "group_info_reply",
            Body::DirectoryRequest => "directory_request",
            Body::Directory { .. } => "directory",
            Body::GroupUnsubscribe { .. } => "group_unsubscribe",
            Body::PeerHello { .. } => "peer_hello",
            Body::PeerWelcome { .. } => "peer_welcome",
            Body::PeerProof { .. } => "peer_proof",
            Body::Gossip { .. } => "gossip",
            Body::CosignRequest { .. } => "cosign_request",
            Body::Cosigned { .. } => "cosigned",
            Body::KtLookup { .. } => "kt_lookup",
            Body::KtLookupResult { .. } => "kt_lookup_result",
            Body::ForwardDm { .. } => "forward_dm",
            Body::IncludePromise { .. } => "include_promise",
            Body::NodesRequest => "nodes_request",
            Body::Nodes { .. } => "nodes",
            Body::CosignFrom { .. } => "cosign_from",
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
    // --- groups ---
    /// No group with this id is hosted here.
    UnknownGroup = 40,
    /// A group with this id already exists.
    GroupExists = 41,
    /// The MLS message or GroupInfo did not parse or did not validate (signature, tree,
    /// membership tag, proposal contents).
    BadMlsMessage = 42,
    /// The message is for another epoch; the detail names the current one
    /// (`current epoch N`). Fetch the log and retry.
    WrongEpoch = 43,
    /// The sender is not (or no longer) a member of the group.
    NotMember = 44,
    /// A commit from a member who is not the designated steward for this epoch and round.
    NotSteward = 45,
    /// The proposal type or target is not allowed for this sender by the group's policy.
    NotAllowed = 46,
    /// An external join to an invite-only group without an invite token.
    InviteRequired = 47,
    /// The invite token's signature or admin key is not valid for this group.
    BadInvite = 48,
    /// The invite token was already redeemed.
    InviteUsed = 49,
    InviteExpired = 50,
    /// The tag has not subscribed to this group as a member (uploads of application
    /// messages come only from a subscribed member's tag).
    NotSubscribed = 51,
    // --- federation ---
    /// No descriptor is known for the node id named (or it is this node's own id where a
    /// peer was expected).
    UnknownNode = 60,
    /// A node-to-node message from an address that has not completed the mutual challenge.
    NotPeer = 61,
    /// The node named is distrusted: a fork certificate against it is known.
    Distrusted = 62,
    /// A head or proof is not consistent with what the receiver saw before (witness check).
    Inconsistent = 63,
    /// The peer forwarding to did not answer in time; nothing was acknowledged.
    Unreachable = 64,
    /// The node failed internally (storage); nothing was acknowledged.
    Internal = 99,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 37] = [
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
        ErrorCode::UnknownGroup,
        ErrorCode::GroupExists,
        ErrorCode::BadMlsMessage,
        ErrorCode::WrongEpoch,
        ErrorCode::NotMember,
        ErrorCode::NotSteward,
        ErrorCode::NotAllowed,
        ErrorCode::InviteRequired,
        ErrorCode::BadInvite,
        ErrorCode::InviteUsed,
        ErrorCode::InviteExpired,
        ErrorCode::NotSubscribed,
        ErrorCode::UnknownNode,
        ErrorCode::NotPeer,
        ErrorCode::Distrusted,
        ErrorCode::Inconsistent,
        ErrorCode::Unreachable,
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

pub use crate::bounded;
