//! The records of the home's histories: direct messages (`HistoryEntry`), group
//! invitations (`InviteRecord`) and group history lines (`GroupLine`).

use nymstr_proto::wire::{GroupId, MsgId, PublicKey};
use serde::{Deserialize, Serialize};

use nymstr_client_core::core::Via;
use nymstr_client_core::seal::GroupInvite;

/// Which way a message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    In,
    Out,
}

/// Where a message stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Handed to the node or the peer, not acknowledged yet (retried on the next run).
    Pending,
    /// The node holds it durably for the recipient.
    Sent,
    /// The recipient's installation acknowledged it directly.
    Delivered,
    /// Refused for good.
    Failed(String),
    /// Received and verified.
    Received,
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Failed(_) => "failed",
            Status::Received => "received",
        }
    }
}

/// One message in the local history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub seq: u64,
    /// Local clock when recorded (sent or received), µs since the epoch.
    pub at_us: u64,
    pub peer: String,
    pub direction: Direction,
    pub msg_id: MsgId,
    /// The sender's clock (claimed by the sender for received messages).
    pub sent_at_us: u64,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub status: Status,
    pub via: Option<Via>,
    /// Received messages start unread; `inbox` and `listen` mark what they print.
    pub read: bool,
}

/// An invitation to a group, received in a sealed DM and not yet accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    pub from: String,
    pub msg_id: MsgId,
    pub received_at_us: u64,
    pub invite: GroupInvite,
    /// `inbox` or `listen` printed it.
    pub shown: bool,
}

/// What a line of group history says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupLineKind {
    /// A text message as format 2 recorded it (its sender's name unchecked).
    LegacyMessage { from: String, sender_key: PublicKey, msg_id: MsgId, text: String, log_seq: u64 },
    /// Something that happened in the group: `kind` is a short stable name (`joined`,
    /// `left`, `renamed`, `missing`, ...), `who` the member it concerns, if any.
    Notice { kind: String, who: Option<String>, text: String },
    /// A text message (ours too, recorded as read). `from` is the name its sender's account
    /// key was pinned under when it arrived (`alice`, or `alice@<node id>` for a user of
    /// another node) if `verified`; else the name the sender's credential claims (anyone
    /// can claim any name). `account_key`: the key that certified the sender's leaf.
    Message {
        from: String,
        verified: bool,
        account_key: Option<PublicKey>,
        sender_key: PublicKey,
        msg_id: MsgId,
        text: String,
        log_seq: u64,
    },
}

/// One line of group history: a message or a notice, in the order this device saw them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLine {
    pub seq: u64,
    /// Local clock when recorded, µs since the epoch.
    pub at_us: u64,
    pub group: GroupId,
    /// The group's name when recorded.
    pub group_name: String,
    pub kind: GroupLineKind,
    pub read: bool,
}
