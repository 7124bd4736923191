//! What the application sees of a group member: members as this core sees them, the
//! envelopes to deliver (`GroupTransmit`), the events, the errors of operations and the
//! counters of dropped input.

use nymstr_proto::wire::{Envelope, ErrorCode, GroupId, MsgId, PublicKey};
use serde::{Deserialize, Serialize};

/// One member as this core sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub username: String,
    /// Installation signing key = MLS leaf signature key.
    pub key: PublicKey,
    pub admin: bool,
    /// False if the leaf's credential does not bind it to a certified installation.
    /// The username is self-asserted either way: show it as the user's only if
    /// [`MemberInfo::vouched`] (its account key is the one the viewer pinned).
    pub verified: bool,
    /// The account key that certified the leaf's installation (`None` if `!verified`).
    pub account_key: Option<PublicKey>,
}

impl MemberInfo {
    /// Whether the viewer may show this member under its username: the credential is
    /// valid and its account key is `pinned`, the key the viewer verified for that name.
    pub fn vouched(&self, pinned: Option<&PublicKey>) -> bool {
        self.verified && self.account_key.is_some() && self.account_key.as_ref() == pinned
    }
}

/// The one member `who` addresses: a leaf key given as hex (at least 8 digits, a unique
/// prefix), else the single leaf claiming the username `who`, else, among several leaves
/// claiming it, the single one `vouched` (pinned account key). Never several leaves.
pub fn resolve_member(members: &[MemberInfo], who: &str, pinned: Option<&PublicKey>) -> Result<PublicKey, GroupError> {
    // A key as `group members` prints it (grouped hex) or plain.
    let hex: String = who.chars().filter(|c| !c.is_whitespace() && *c != ':').collect::<String>().to_ascii_lowercase();
    if hex.len() >= 8 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let by_key: Vec<&MemberInfo> = members
            .iter()
            .filter(|m| m.key.iter().map(|b| format!("{b:02x}")).collect::<String>().starts_with(&hex))
            .collect();
        match by_key.as_slice() {
            [m] => return Ok(m.key),
            [] => {}
            _ => return Err(GroupError::AmbiguousMember),
        }
    }
    let named: Vec<&MemberInfo> = members.iter().filter(|m| m.username == who).collect();
    match named.as_slice() {
        [] => Err(GroupError::UnknownMember),
        [m] => Ok(m.key),
        several => {
            let vouched: Vec<&&MemberInfo> = several.iter().filter(|m| m.vouched(pinned)).collect();
            match vouched.as_slice() {
                [m] => Ok(m.key),
                _ => Err(GroupError::AmbiguousMember),
            }
        }
    }
}

/// An envelope for the host to deliver to the group node `group_node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupTransmit {
    pub group_node: Vec<u8>,
    pub group: GroupId,
    pub envelope: Envelope,
}

/// What the application learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupEvent {
    /// The group node hosts our new group.
    Created {
        group: GroupId,
    },
    /// Our external commit is in the log; we are a member from `epoch`.
    Joined {
        group: GroupId,
        epoch: u64,
    },
    /// An application message, in log order (our own too, when the log carries it).
    Message {
        group: GroupId,
        msg_id: MsgId,
        sender_username: String,
        sender_key: PublicKey,
        text: String,
        lamport: u64,
        seq: u64,
    },
    /// A message another member saw (causal history) never reached us; it is being fetched.
    Missing {
        group: GroupId,
        msg_id: MsgId,
        sender: PublicKey,
        seq: u64,
    },
    /// A `Missing` message was not repaired within `repair_timeout_us`.
    Lost {
        group: GroupId,
        msg_id: MsgId,
        sender: PublicKey,
        seq: u64,
    },
    /// A `Missing` message arrived after all (its `Message` event precedes this).
    Repaired {
        group: GroupId,
        msg_id: MsgId,
        sender: PublicKey,
        seq: u64,
    },
    /// The steward no longer holds log entries `from_seq..to_seq` (history pruned).
    HistoryGap {
        group: GroupId,
        from_seq: u64,
        to_seq: u64,
    },
    /// Membership or admin set changed (see `members`).
    MembersChanged {
        group: GroupId,
    },
    EpochChanged {
        group: GroupId,
        epoch: u64,
    },
    MetaChanged {
        group: GroupId,
        name: String,
        description: String,
    },
    /// We are no longer a member (removed, or our leave was committed).
    Removed {
        group: GroupId,
    },
    /// Something failed; `code` is the node's error or, for local failures, the closest.
    Error {
        group: GroupId,
        code: ErrorCode,
        detail: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("no such group")]
    UnknownGroup,
    #[error("already a member of (or joining) this group")]
    AlreadyMember,
    #[error("not (yet) a member of this group")]
    NotMember,
    #[error("only an admin may do this")]
    NotAdmin,
    #[error("no member with this key")]
    UnknownMember,
    #[error("several members answer to this name; name one by its key")]
    AmbiguousMember,
    #[error("the last admin cannot leave while others remain; promote someone first")]
    LastAdmin,
    #[error("{what} of {len} bytes exceeds {max}")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("too many messages waiting")]
    Backlog,
    #[error("mls: {0}")]
    Mls(String),
}

/// Counters of dropped input.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStats {
    /// Sync headers whose sender is not the MLS sender.
    pub wrong_sender: u64,
    /// Application plaintexts that are not sync messages.
    pub malformed: u64,
    /// Log entries that did not process (decrypt, verify, epoch).
    pub unprocessable: u64,
    /// `SetMeta` from a member who is not an admin.
    pub meta_not_admin: u64,
    /// Application messages (texts and `SetMeta`s) this member wrote.
    #[serde(default)]
    pub app_messages: u64,
    /// Copies encrypted again: after `WrongEpoch`/`NotSubscribed`, or overtaken by a commit.
    #[serde(default)]
    pub app_reencryptions: u64,
    /// Commits from the log refused because they break the group policy (skipped).
    #[serde(default)]
    pub refused_commits: u64,
}
