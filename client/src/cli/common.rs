//! Helpers the command modules share, on top of the session: opening it, reading the
//! core's failures, resolving a group handle, and showing messages, group lines and
//! invitations as they arrive.

use std::path::Path;
use std::time::Duration;

use nymstr_proto::wire::GroupId;
use serde_json::json;

use crate::cli::error::{CliError, describe_code};
use crate::cli::input::check_node_addr;
use crate::cli::output::{
    Printer, entry_json, entry_line, group_line_json, group_line_text, hex, invite_json, invite_text,
};
use crate::cli::session::Session;
use crate::persist::{GroupLine, HistoryEntry, Home, InviteRecord};
use nymstr_client_core::core::{Event, Operation};
use nymstr_client_core::group::{GroupError, GroupEvent};

pub(super) fn open_home(dir: &Path) -> Result<Home, CliError> {
    Ok(Home::open(dir)?)
}

/// Opens the home for a network command: the node is `--node`, else the saved one.
pub(super) fn session(dir: &Path, out: Printer, node: Option<String>, timeout: Duration) -> Result<Session, CliError> {
    if let Some(node) = &node {
        check_node_addr(node)?;
    }
    let home = open_home(dir)?;
    let node = match node {
        Some(n) => n,
        None => home.node_addr()?.ok_or(CliError::NotRegistered)?,
    };
    Session::open(home, out, node, timeout)
}

pub(super) fn require_registered(s: &Session) -> Result<(), CliError> {
    if s.core.is_registered() { Ok(()) } else { Err(CliError::NotRegistered) }
}

pub(super) fn node_timeout(s: &Session, what: &str) -> CliError {
    CliError::Timeout { node: s.node_addr.clone(), secs: s.timeout.as_secs(), what: what.to_string() }
}

pub(super) fn login_failed(ev: &Event) -> Option<CliError> {
    match ev {
        Event::Failed { what: Operation::Login, code, detail } => {
            Some(CliError::Refused { what: "login".into(), reason: describe_code(*code, detail) })
        }
        _ => None,
    }
}

pub(super) fn key_changed(ev: &Event, name: &str) -> Option<CliError> {
    match ev {
        Event::KeyChanged { username, pinned, offered } if username == name => {
            Some(CliError::KeyChanged { username: username.clone(), pinned: hex(pinned), offered: hex(offered) })
        }
        _ => None,
    }
}

/// Prints a received message and marks it read.
pub(super) fn show(s: &Session, e: &HistoryEntry) -> Result<(), CliError> {
    let me = s.me();
    s.out.data(|| entry_line(e), || entry_json(e, &me));
    s.home.mark_read(e)?;
    Ok(())
}

/// Tells the user about a group failure nobody waits for (`inbox`, `listen`).
pub(super) fn group_error_notice(s: &Session, ev: &GroupEvent) {
    if let GroupEvent::Error { group, code, detail } = ev {
        let name = s.group_name(group);
        let text = format!("[{name}] {}", describe_code(*code, detail));
        s.out.notice(
            "group_error",
            &text,
            json!({ "group": hex(group), "group_name": name, "code": *code as u32, "detail": detail }),
        );
    }
}

/// The group a handle names: one of ours by exact name, else by id (or id prefix).
pub(super) fn resolve(s: &Session, handle: &str) -> Result<GroupId, CliError> {
    let core = s.groups.as_ref().expect("groups enabled");
    let all: Vec<GroupId> = core.groups().into_iter().chain(core.pending_groups()).collect();
    let h = handle.trim();
    let named: Vec<&GroupId> = all.iter().filter(|g| core.name(g) == Some(h)).collect();
    match named.len() {
        1 => return Ok(*named[0]),
        0 => {}
        _ => {
            return Err(CliError::Usage(format!(
                "several of your groups are called \"{h}\": name it by its id (`nymstr group list` shows them)"
            )));
        }
    }
    let lower = h.trim_start_matches('#').to_ascii_lowercase();
    if lower.len() >= 4 && lower.chars().all(|c| c.is_ascii_hexdigit()) {
        let hits: Vec<&GroupId> = all.iter().filter(|g| hex(&g[..]).starts_with(&lower)).collect();
        match hits.len() {
            1 => return Ok(*hits[0]),
            0 => {}
            _ => {
                return Err(CliError::Usage(format!(
                    "several of your groups' ids start with {lower}: give more digits"
                )));
            }
        }
    }
    Err(CliError::Group {
        group: h.to_string(),
        source: GroupError::UnknownGroup,
        message: "you are in no group with this name or id (`nymstr group list` shows yours)".into(),
    })
}

/// Prints a group history line and marks it read.
pub(super) fn show_group_line(s: &Session, l: &GroupLine) -> Result<(), CliError> {
    s.out.data(|| group_line_text(l), || group_line_json(l));
    s.home.mark_group_read(l)?;
    Ok(())
}

/// Prints an invitation (once).
pub(super) fn show_invite(s: &Session, r: &InviteRecord) -> Result<(), CliError> {
    s.out.data(|| invite_text(r), || invite_json(r));
    s.home.mark_invite_shown(&r.invite.token.group_id)?;
    Ok(())
}

/// Shows an invitation that just arrived, if it was kept and not shown yet.
pub(super) fn show_new_invite(s: &Session, ev: &Event) -> Result<usize, CliError> {
    if let Event::GroupInvited { invite, .. } = ev
        && let Some(r) = s.home.invite(&invite.token.group_id)?
        && !r.shown
    {
        show_invite(s, &r)?;
        return Ok(1);
    }
    Ok(0)
}
