//! What the host sees of the client core: the events it drains, the operation a failure
//! refers to, and the errors of requests and of restoring a persisted state.

use nymstr_proto::identity::UsernameError;
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{ErrorCode, MsgId, PublicKey};
use serde::{Deserialize, Serialize};

use crate::seal::{self, DirectAddress, OpenError};

/// What the application learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Registered {
        username: String,
    },
    LoggedIn {
        queued: u32,
    },
    LookedUp {
        username: String,
    },
    /// The node holds the message durably.
    SendAcked {
        to: String,
        msg_id: MsgId,
    },
    Received {
        from: String,
        msg_id: MsgId,
        sent_at_us: TimeUs,
        body: Vec<u8>,
        via: Via,
    },
    /// A delivery failed verification and was discarded (and acknowledged so the node
    /// stops redelivering it).
    Rejected {
        from: String,
        msg_id: MsgId,
        reason: OpenError,
    },
    /// A lookup answered with an account key other than the one pinned for that user:
    /// the answer is refused, and messages to or from the user wait no longer.
    KeyChanged {
        username: String,
        pinned: PublicKey,
        offered: PublicKey,
    },
    /// A transparency lookup of `username` (`user@node`) did not verify, or showed a
    /// change the user must see: `outcome` is the verifier's outcome name (`key_changed`,
    /// `rollback`, `inconsistent`, `revoked`, `migrated`, `absent`, `forked`,
    /// `not_enough_witnesses`, `not_allowed`, `unknown_node`). Sends to and deliveries from
    /// the user fail.
    Transparency {
        username: String,
        outcome: &'static str,
        detail: String,
    },
    /// A request failed for good.
    Failed {
        what: Operation,
        code: ErrorCode,
        detail: String,
    },
    /// A contact invited us to a group (the token is not yet redeemed).
    GroupInvited {
        from: String,
        msg_id: MsgId,
        invite: seal::GroupInvite,
    },
    /// Someone the user has not approved for direct delivery offered it: nothing was
    /// answered and the address is not kept. `offer_direct` approves it (and offers).
    DirectOffered {
        peer: String,
        addr: DirectAddress,
    },
    /// Messages to `peer` may now go directly to `addr`.
    DirectReady {
        peer: String,
        addr: DirectAddress,
    },
    /// `peer` withdrew a direct address: messages to it go through the relay.
    DirectWithdrawn {
        peer: String,
    },
    /// One installation of `to` acknowledged the message directly.
    DirectDelivered {
        to: String,
        msg_id: MsgId,
    },
    /// A direct attempt failed; the message goes through the relay.
    DirectFailed {
        to: String,
        msg_id: MsgId,
        addr: DirectAddress,
        reason: String,
    },
}

/// How a message reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Via {
    Relay,
    Direct,
}

/// The request an error refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Register,
    Login,
    Lookup(String),
    Send { to: String, msg_id: MsgId },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Username(#[from] UsernameError),
    #[error("not registered yet")]
    NotRegistered,
    #[error("already registered or registering")]
    AlreadyRegistered,
    #[error("message body of {len} bytes exceeds {max}")]
    TooLarge { len: usize, max: usize },
    #[error("too many messages waiting for {0}")]
    Backlog(String),
    #[error("direct mode is off: no direct address of our own to offer")]
    NoDirectAddress,
    #[error("no address of {0} is known")]
    NoRoute(String),
    #[error("bad name: {0}")]
    BadName(String),
}

/// Why a persisted state cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("identity keys do not match their certificate")]
    IdentityMismatch,
    #[error("registered state without an identity or username")]
    Incomplete,
}
