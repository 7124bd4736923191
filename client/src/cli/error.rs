//! Typed CLI errors and the exit codes they map to (documented in `--help` and README).

use std::path::PathBuf;
use std::process::ExitCode;

use nymstr_proto::wire::ErrorCode;

use crate::net::NetError;
use crate::persist::PersistError;
use nymstr_client_core::core::ClientError;
use nymstr_client_core::group::GroupError;

/// Exit codes: part of the CLI's interface, never renumbered.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_READY: u8 = 3;
    pub const KEY_CHANGED: u8 = 4;
    pub const BUSY: u8 = 5;
    pub const QUEUED: u8 = 6;
    pub const INTERRUPTED: u8 = 130;
}

/// The exit-code table printed by `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    failure: node unreachable, request refused by the node, no answer in time
  2    usage: bad arguments, invalid username, message too large
  3    not ready: home not initialised (`nymstr init`) or not registered (`nymstr register`)
  4    a contact's account key changed (possible impersonation): verify it, then `nymstr trust`
  5    the home is in use by another nymstr process (a running `nymstr listen` takes
       `send`'s messages instead)
  6    queued: the message (or group change) was handed over but not acknowledged or
       applied in time; it is stored and sent again by the next command that connects
       (send, inbox, listen, group ...)
  130  interrupted (Ctrl-C); unacknowledged messages are sent again next time";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0} is not initialised: run `nymstr init` first")]
    NotInitialised(PathBuf),
    #[error("not registered yet: run `nymstr register NAME --node HOST:PORT` first")]
    NotRegistered,
    #[error("already registered as {username}")]
    AlreadyRegistered { username: String },
    #[error("{0} is in use by another nymstr process (is `nymstr listen` running?)")]
    Busy(PathBuf),
    #[error("node {0}")]
    Node(NetError),
    #[error("{0}")]
    Net(NetError),
    #[error(
        "the account key of {username} changed: pinned {pinned}, the node now offers {offered}. \
         This may be an impersonation. Verify the new key with {username} out of band, then run \
         `nymstr trust {username} --key <KEY>`"
    )]
    KeyChanged { username: String, pinned: String, offered: String },
    #[error("{what} refused by the node: {reason}")]
    Refused { what: String, reason: String },
    #[error("no answer from node {node} in {secs} s while waiting for {what}")]
    Timeout { node: String, secs: u64, what: String },
    #[error(
        "{to} has not acknowledged message {msg_id} in {secs} s; it is stored and will be sent again \
         by the next `nymstr send`, `inbox` or `listen`"
    )]
    Queued { to: String, msg_id: String, secs: u64 },
    /// A group operation was stored and handed over, but not confirmed in time.
    #[error(
        "{what} is not confirmed after {secs} s; it is stored and goes on with the next command that connects to the group node ({hint})"
    )]
    GroupPending { what: String, secs: u64, hint: String },
    /// The group core refused an operation locally.
    #[error("{group}: {message}")]
    Group { group: String, source: GroupError, message: String },
    #[error("interrupted")]
    Interrupted,
    /// An error reported by the `listen` process a message was handed to.
    #[error("{message}")]
    Remote { kind: String, message: String, exit_code: u8 },
    #[error(transparent)]
    Persist(PersistError),
    #[error("{0}")]
    Client(ClientError),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::NotInitialised(_) | CliError::NotRegistered => exit::NOT_READY,
            CliError::KeyChanged { .. } => exit::KEY_CHANGED,
            CliError::Busy(_) => exit::BUSY,
            CliError::Queued { .. } | CliError::GroupPending { .. } => exit::QUEUED,
            CliError::Group {
                source:
                    GroupError::UnknownGroup
                    | GroupError::UnknownMember
                    | GroupError::AmbiguousMember
                    | GroupError::AlreadyMember
                    | GroupError::TooLarge { .. },
                ..
            } => exit::USAGE,
            CliError::Interrupted => exit::INTERRUPTED,
            CliError::Remote { exit_code, .. } => *exit_code,
            CliError::Client(e) => match e {
                ClientError::Username(_) | ClientError::TooLarge { .. } => exit::USAGE,
                ClientError::NotRegistered => exit::NOT_READY,
                _ => exit::FAILURE,
            },
            CliError::Persist(PersistError::NotInitialised(_)) => exit::NOT_READY,
            CliError::Persist(PersistError::Locked(_)) => exit::BUSY,
            _ => exit::FAILURE,
        }
    }

    pub fn exit(&self) -> ExitCode {
        ExitCode::from(self.exit_code())
    }

    /// A short stable name for JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            CliError::Usage(_) => "usage",
            CliError::NotInitialised(_) => "not_initialised",
            CliError::NotRegistered => "not_registered",
            CliError::AlreadyRegistered { .. } => "already_registered",
            CliError::Busy(_) => "busy",
            CliError::Node(_) => "node_unreachable",
            CliError::Net(_) => "network",
            CliError::KeyChanged { .. } => "key_changed",
            CliError::Refused { .. } => "refused",
            CliError::Timeout { .. } => "timeout",
            CliError::Queued { .. } | CliError::GroupPending { .. } => "queued",
            CliError::Group { source, .. } => match source {
                GroupError::UnknownGroup => "unknown_group",
                GroupError::AlreadyMember => "already_member",
                GroupError::NotMember => "not_member",
                GroupError::NotAdmin => "not_admin",
                GroupError::UnknownMember => "unknown_member",
                GroupError::AmbiguousMember => "ambiguous_member",
                GroupError::LastAdmin => "last_admin",
                GroupError::TooLarge { .. } => "usage",
                GroupError::Backlog => "backlog",
                GroupError::Mls(_) => "group",
            },
            CliError::Interrupted => "interrupted",
            CliError::Remote { .. } => "remote",
            CliError::Persist(PersistError::NotInitialised(_)) => "not_initialised",
            CliError::Persist(PersistError::Locked(_)) => "busy",
            CliError::Persist(_) => "storage",
            CliError::Client(_) => "client",
        }
    }
}

impl From<PersistError> for CliError {
    fn from(e: PersistError) -> Self {
        match e {
            PersistError::NotInitialised(dir) => CliError::NotInitialised(dir),
            PersistError::Locked(dir) => CliError::Busy(dir),
            other => CliError::Persist(other),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::NotRegistered => CliError::NotRegistered,
            other => CliError::Client(other),
        }
    }
}

/// What a node's error code means to a user.
pub fn describe_code(code: ErrorCode, detail: &str) -> String {
    let what = match code {
        ErrorCode::UsernameTaken => "the username is taken",
        ErrorCode::UsernameInvalid => "the username is invalid",
        ErrorCode::UsernameReserved => "the username is reserved",
        ErrorCode::UnknownUser => "no such user",
        ErrorCode::UnknownInstallation => "this installation is not registered on the node",
        ErrorCode::BadCertificate => "no valid key",
        ErrorCode::BadSignature => "bad signature",
        ErrorCode::InstallationLimit => "the account has too many installations",
        ErrorCode::QueueFull => "the recipient's queue is full",
        ErrorCode::PayloadTooLarge | ErrorCode::FrameTooLarge => "the message is too large",
        ErrorCode::NotLoggedIn => "not logged in",
        ErrorCode::Busy => "the node is busy",
        ErrorCode::Internal => "the node failed internally",
        ErrorCode::UnknownGroup => "the node hosts no group with this id",
        ErrorCode::GroupExists => "a group with this id exists",
        ErrorCode::BadMlsMessage => "the group node refused the MLS message",
        ErrorCode::WrongEpoch => "the group moved on meanwhile",
        ErrorCode::NotMember => "not a member of the group",
        ErrorCode::NotSteward => "not this admin's turn to commit",
        ErrorCode::NotAllowed => "the group's policy does not allow it",
        ErrorCode::InviteRequired => "the group is invite-only: an admin must invite you (`nymstr group invite`)",
        ErrorCode::BadInvite => "the invitation is not valid for this group",
        ErrorCode::InviteUsed => "the invitation was already used",
        ErrorCode::InviteExpired => "the invitation has expired",
        ErrorCode::NotSubscribed => "not subscribed to the group",
        _ => "",
    };
    match (what.is_empty(), detail.is_empty()) {
        (true, true) => format!("{code:?}"),
        (true, false) => format!("{code:?}: {detail}"),
        (false, true) => what.to_string(),
        (false, false) => format!("{what} ({detail})"),
    }
}
