//! `nymstr group ...` and `nymstr directory`: group chats hosted by a group node
//! (`specs/groups.md`), through the session's `GroupCore`.
//!
//! A group is named on the command line by its name (if no other group of ours has it)
//! or by its id in hex (a unique prefix of at least 4 digits will do). Commands that
//! change a group first catch up with its log (so they act on the current members and
//! admins), then wait until their change is in the log and applied here; if that takes
//! longer than `--timeout` they exit 6: the change is stored and goes on with the next
//! command that connects to the group node.

mod commands;
mod directory;
mod goal;
mod invite;
mod support;

pub use commands::{create, history, join, leave, list, members, remove, send, set_meta};
pub use directory::directory;
pub use invite::invite;
