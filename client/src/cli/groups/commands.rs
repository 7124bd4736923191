//! The group commands: `create`, `join`, `send`, `members`, `leave`, `remove`, `rename`
//! and `describe` drive a `GroupGoal`; `list` and `history` read the home (no network).

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::cli::clock::now_us;
use crate::cli::common::resolve;
use crate::cli::error::CliError;
use crate::cli::groups::directory::{advert_is_valid, fetch_directory};
use crate::cli::groups::goal::{GroupGoal, Op, run_goal};
use crate::cli::groups::invite::{INVITE_CODE_PREFIX, parse_invite_code};
use crate::cli::groups::support::{group_error, group_session, group_text, node_of, parse_group_id};
use crate::cli::input::check_node_addr;
use crate::cli::output::{Printer, group_line_json, group_line_text, hex, invite_json, invite_text, short_id};
use crate::persist::InviteRecord;
use nymstr_client_core::core::contact_name;
use nymstr_client_core::group::{GroupError, GroupMeta};

#[allow(clippy::too_many_arguments)]
pub async fn create(
    dir: &Path,
    out: Printer,
    name: &str,
    description: Option<String>,
    public: bool,
    open: bool,
    node: Option<String>,
    timeout: Duration,
) -> Result<(), CliError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(CliError::Usage("the group needs a name".into()));
    }
    if let Some(n) = &node {
        check_node_addr(n)?;
    }
    let mut s = group_session(dir, out, timeout, true)?;
    let node = match node {
        Some(n) => n,
        None => s.node_addr.clone(),
    };
    s.connect_group_node(&node).await?;
    let description = description.unwrap_or_default();
    let g = s
        .gcore()
        .create(now_us(), name, &description, public, open, node.as_bytes().to_vec())
        .map_err(|e| group_error(&s, None, e))?;
    run_goal(s, GroupGoal::new(g, node, Op::Create)).await
}

/// Accepts a pending invitation (named by its group id, an id prefix, or the group's
/// name), or joins an open group by its id at `--node` (default: the home node).
pub async fn join(
    dir: &Path,
    out: Printer,
    handle: &str,
    node: Option<String>,
    timeout: Duration,
) -> Result<(), CliError> {
    if let Some(n) = &node {
        check_node_addr(n)?;
    }
    let mut s = group_session(dir, out, timeout, true)?;
    let h = handle.trim();
    let lower = h.trim_start_matches('#').to_ascii_lowercase();
    let mut invites = s.home.invites()?;
    if h.starts_with(INVITE_CODE_PREFIX) {
        invites = vec![InviteRecord {
            from: String::new(),
            msg_id: [0; 16],
            received_at_us: now_us(),
            invite: parse_invite_code(h)?,
            shown: true,
        }];
    }
    let by_code = h.starts_with(INVITE_CODE_PREFIX);
    let matched: Vec<&InviteRecord> = invites
        .iter()
        .filter(|r| {
            let id = hex(&r.invite.token.group_id);
            by_code
                || r.invite.name == h
                || (lower.len() >= 4 && lower.chars().all(|c| c.is_ascii_hexdigit()) && id.starts_with(&lower))
        })
        .collect();
    let (g, addr, token, meta, from_invite) = match matched.as_slice() {
        [r] => {
            let i = &r.invite;
            let addr = node.clone().unwrap_or_else(|| String::from_utf8_lossy(&i.group_node).into_owned());
            // Version 0: the admins' next SetMeta replaces what the invitation said.
            let meta = GroupMeta { name: i.name.clone(), description: i.description.clone(), version: 0 };
            (i.token.group_id, addr, Some(i.token.clone()), Some(meta), !by_code)
        }
        [_, _, ..] => {
            return Err(CliError::Usage(format!(
                "several invitations match \"{h}\": give the group id (`nymstr group list` shows them)"
            )));
        }
        [] => {
            let Some(g) = parse_group_id(h) else {
                return Err(CliError::Usage(format!(
                    "\"{h}\" is neither a pending invitation (`nymstr inbox` and `nymstr group list` show them), \
                     an invitation code ({INVITE_CODE_PREFIX}...) nor a group id (32 hex digits, from \
                     `nymstr directory`)"
                )));
            };
            let addr = node.clone().unwrap_or_else(|| s.node_addr.clone());
            (g, addr, None, None, false)
        }
    };
    if s.gcore().groups().contains(&g) {
        if from_invite {
            s.home.remove_invite(&g)?;
            s.home.flush()?;
        }
        return Err(group_error(&s, Some(&g), GroupError::AlreadyMember));
    }
    check_node_addr(&addr)?;
    s.connect_group_node(&addr).await?;
    if !s.gcore().pending_groups().contains(&g) {
        // Joining by id: the node's directory may say what the group is called.
        let meta = match meta {
            Some(m) => Some(m),
            None => fetch_directory(&addr, s.timeout)
                .await
                .ok()
                .and_then(|ads| ads.into_iter().find(|a| a.group_id == g && advert_is_valid(a)))
                .map(|a| GroupMeta { name: a.name, description: a.description, version: 0 }),
        };
        s.gcore().join(now_us(), addr.as_bytes().to_vec(), g, token, meta).map_err(|e| group_error(&s, Some(&g), e))?;
    }
    run_goal(s, GroupGoal::new(g, addr, Op::Join { invite: from_invite })).await
}

pub async fn send(dir: &Path, out: Printer, group: &str, text: Vec<String>, timeout: Duration) -> Result<(), CliError> {
    let text = group_text(text)?;
    let mut s = group_session(dir, out, timeout, true)?;
    let g = resolve(&s, group)?;
    let node = node_of(&s, &g);
    s.connect_group_node(&node).await?;
    // Stored in the core's outbox before anything is sent.
    let msg_id = s.gcore().send(now_us(), &g, &text).map_err(|e| group_error(&s, Some(&g), e))?;
    run_goal(s, GroupGoal::new(g, node, Op::Send { msg_id })).await
}

pub async fn members(dir: &Path, out: Printer, group: &str, timeout: Duration) -> Result<(), CliError> {
    let s = group_session(dir, out, timeout, true)?;
    let g = resolve(&s, group)?;
    let node = node_of(&s, &g);
    run_goal(s, GroupGoal::new(g, node, Op::Members)).await
}

pub async fn leave(dir: &Path, out: Printer, group: &str, timeout: Duration) -> Result<(), CliError> {
    let s = group_session(dir, out, timeout, true)?;
    let g = resolve(&s, group)?;
    let node = node_of(&s, &g);
    run_goal(s, GroupGoal::new(g, node, Op::Leave)).await
}

pub async fn remove(dir: &Path, out: Printer, group: &str, user: &str, timeout: Duration) -> Result<(), CliError> {
    // `user`, `user@<node id>`, or a member key (hex prefix).
    let user = contact_name(user).map_err(|e| CliError::Usage(format!("{user}: {e}")))?;
    let s = group_session(dir, out, timeout, true)?;
    let g = resolve(&s, group)?;
    let node = node_of(&s, &g);
    run_goal(s, GroupGoal::new(g, node, Op::Remove { user, keys: Vec::new() })).await
}

/// `rename` (Some name) or `describe` (Some description).
pub async fn set_meta(
    dir: &Path,
    out: Printer,
    group: &str,
    name: Option<String>,
    description: Option<String>,
    timeout: Duration,
) -> Result<(), CliError> {
    if name.as_ref().is_some_and(|n| n.trim().is_empty()) {
        return Err(CliError::Usage("the new name is empty".into()));
    }
    let s = group_session(dir, out, timeout, true)?;
    let g = resolve(&s, group)?;
    let node = node_of(&s, &g);
    let name = name.map(|n| n.trim().to_string());
    run_goal(s, GroupGoal::new(g, node, Op::SetMeta { name, description, version: 0 })).await
}

/// Our groups, groups being joined or created, and pending invitations (no network).
pub fn list(dir: &Path, out: &Printer) -> Result<(), CliError> {
    let mut s = group_session(dir, Printer::new(out.json), Duration::from_secs(1), false)?;
    let invites = s.home.invites()?;
    let core = s.gcore();
    let me = core.member_key();
    let mut rows = Vec::new();
    for g in core.groups() {
        let meta = core.meta(&g).cloned().unwrap_or_default();
        let members = core.members(&g);
        let admin = members.iter().any(|m| m.key == me && m.admin);
        let node = core.group_node(&g).map(|n| String::from_utf8_lossy(n).into_owned()).unwrap_or_default();
        rows.push((g, meta, members.len(), admin, node, "member", core.is_open(&g).unwrap_or(false)));
    }
    for g in core.pending_groups() {
        let meta = core.meta(&g).cloned().unwrap_or_default();
        let node = core.group_node(&g).map(|n| String::from_utf8_lossy(n).into_owned()).unwrap_or_default();
        rows.push((g, meta, 0, false, node, "pending", false));
    }
    if rows.is_empty() && invites.is_empty() {
        out.human("no groups yet: `nymstr group create NAME`, or join one (`nymstr directory` lists public ones)");
        return Ok(());
    }
    for (g, meta, count, admin, node, state, open) in rows {
        let name = if meta.name.is_empty() { short_id(&g) } else { meta.name.clone() };
        out.data(
            || {
                let what = if state == "pending" {
                    "joining or being created".to_string()
                } else {
                    format!(
                        "{count} member{}{}{}",
                        if count == 1 { "" } else { "s" },
                        if admin { ", you are an admin" } else { "" },
                        if open { ", open" } else { "" }
                    )
                };
                let mut t = format!("{name}  (id {})\n  {what}; node {node}", hex(&g));
                if !meta.description.is_empty() {
                    t.push_str(&format!("\n  {}", meta.description));
                }
                t
            },
            || {
                json!({
                    "type": "group",
                    "group": hex(&g),
                    "name": meta.name,
                    "description": meta.description,
                    "node": node,
                    "state": state,
                    "members": count,
                    "admin": admin,
                    "open": open,
                })
            },
        );
    }
    for r in &invites {
        out.data(|| invite_text(r), || invite_json(r));
    }
    Ok(())
}

/// The group history (messages and notices) of one group, or all.
pub fn history(dir: &Path, out: &Printer, group: Option<String>, limit: usize) -> Result<(), CliError> {
    let s = group_session(dir, Printer::new(out.json), Duration::from_secs(1), false)?;
    let g = group.map(|h| resolve(&s, &h)).transpose()?;
    let lines = s.home.group_lines(g.as_ref(), limit)?;
    if lines.is_empty() {
        out.human("no group messages");
    }
    for l in &lines {
        out.data(|| group_line_text(l), || group_line_json(l));
        if !l.read {
            s.home.mark_group_read(l)?;
        }
    }
    s.home.flush()?;
    Ok(())
}
