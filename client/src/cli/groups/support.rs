//! Helpers the group commands share: the session with its group member, group errors
//! in words, the group's node, the text of a group message.

use std::path::Path;
use std::time::Duration;

use nymstr_proto::wire::GroupId;
use serde_json::json;

use crate::cli::common::session;
use crate::cli::error::CliError;
use crate::cli::input::message_text;
use crate::cli::output::Printer;
use crate::cli::session::Session;
use nymstr_client_core::group::GroupError;

/// Opens the home with the group member restored (`active`: it subscribes and sends).
pub(super) fn group_session(dir: &Path, out: Printer, timeout: Duration, active: bool) -> Result<Session, CliError> {
    let mut s = session(dir, out, None, timeout)?;
    if !s.core.is_registered() {
        return Err(CliError::NotRegistered);
    }
    s.enable_groups(active)?;
    Ok(s)
}

pub(super) fn group_error(s: &Session, group: Option<&GroupId>, e: GroupError) -> CliError {
    let name = group.map(|g| s.group_name(g)).unwrap_or_default();
    let message = match &e {
        GroupError::NotAdmin => format!("only an admin of \"{name}\" may do this"),
        GroupError::NotMember => format!("you are not (or not yet) a member of \"{name}\""),
        GroupError::AlreadyMember => format!("you are already a member of \"{name}\" (or joining it)"),
        other => other.to_string(),
    };
    CliError::Group { group: if name.is_empty() { "group".into() } else { name }, source: e, message }
}

/// A full group id: 32 hex digits.
pub(super) fn parse_group_id(h: &str) -> Option<GroupId> {
    let h = h.trim().trim_start_matches('#');
    hex::decode(h).ok()?.try_into().ok()
}

pub(super) fn node_of(s: &Session, group: &GroupId) -> String {
    s.groups
        .as_ref()
        .and_then(|c| c.group_node(group))
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .unwrap_or_default()
}

pub(super) fn note_unread_lines(s: &Session, count: usize) {
    if count > 0 {
        s.out.notice(
            "unread",
            &format!("{count} new group line{} arrived; `nymstr inbox` shows them", if count == 1 { "" } else { "s" }),
            json!({ "count": count }),
        );
    }
}

/// The group text of a command line (words joined; "-" reads standard input).
pub(super) fn group_text(text: Vec<String>) -> Result<String, CliError> {
    let body = message_text(text, nymstr_client_core::sync::TEXT_BYTES_MAX)?;
    String::from_utf8(body).map_err(|_| CliError::Usage("the message is not UTF-8 text".into()))
}
