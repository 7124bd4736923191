//! `nymstr group ...` and `nymstr directory`: group chats hosted by a group node
//! (`specs/groups.md`), through the session's `GroupCore`.
//!
//! A group is named on the command line by its name (if no other group of ours has it)
//! or by its id in hex (a unique prefix of at least 4 digits will do). Commands that
//! change a group first catch up with its log (so they act on the current members and
//! admins), then wait until their change is in the log and applied here; if that takes
//! longer than `--timeout` they exit 6: the change is stored and goes on with the next
//! command that connects to the group node.

use std::path::Path;
use std::time::Duration;

use nymstr_proto::identity;
use nymstr_proto::wire::{Body, Envelope, GroupAdvert, GroupId, MsgId, PublicKey};
use serde_json::json;
use tokio::time::Instant;

use crate::cli::commands::{check_node_addr, key_changed, login_failed, message_text, session};
use crate::cli::error::{CliError, describe_code};
use crate::cli::output::{Printer, fingerprint, group_line_json, group_line_text, hex, invite_json, invite_text};
use crate::cli::session::{Flow, Goal, Session, now_us, short_id};
use crate::net::{self, Connection};
use crate::persist::{GroupLine, HistoryEntry, InviteRecord};
use nymstr_client_core::core::{Event, Operation};
use nymstr_client_core::group::{GroupError, GroupEvent, GroupMeta};
use nymstr_client_core::seal::GroupInvite;

// --- shared helpers ---

/// Opens the home with the group member restored (`active`: it subscribes and sends).
fn group_session(dir: &Path, out: Printer, timeout: Duration, active: bool) -> Result<Session, CliError> {
    let mut s = session(dir, out, None, timeout)?;
    if !s.core.is_registered() {
        return Err(CliError::NotRegistered);
    }
    s.enable_groups(active)?;
    Ok(s)
}

fn group_error(s: &Session, group: Option<&GroupId>, e: GroupError) -> CliError {
    let name = group.map(|g| s.group_name(g)).unwrap_or_default();
    let message = match &e {
        GroupError::NotAdmin => format!("only an admin of \"{name}\" may do this"),
        GroupError::NotMember => format!("you are not (or not yet) a member of \"{name}\""),
        GroupError::AlreadyMember => format!("you are already a member of \"{name}\" (or joining it)"),
        other => other.to_string(),
    };
    CliError::Group { group: if name.is_empty() { "group".into() } else { name }, source: e, message }
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

/// A full group id: 32 hex digits.
fn parse_group_id(h: &str) -> Option<GroupId> {
    let h = h.trim().trim_start_matches('#');
    hex::decode(h).ok()?.try_into().ok()
}

fn node_of(s: &Session, group: &GroupId) -> String {
    s.groups
        .as_ref()
        .and_then(|c| c.group_node(group))
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .unwrap_or_default()
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

fn note_unread_lines(s: &Session, count: usize) {
    if count > 0 {
        s.out.notice(
            "unread",
            &format!("{count} new group line{} arrived; `nymstr inbox` shows them", if count == 1 { "" } else { "s" }),
            json!({ "count": count }),
        );
    }
}

/// The group text of a command line (words joined; "-" reads standard input).
fn group_text(text: Vec<String>) -> Result<String, CliError> {
    let body = message_text(text, nymstr_client_core::sync::TEXT_BYTES_MAX)?;
    String::from_utf8(body).map_err(|_| CliError::Usage("the message is not UTF-8 text".into()))
}

// --- the goal shared by the group commands ---

enum Op {
    Create,
    /// `invite`: the invitation accepted (forgotten once used or refused).
    Join {
        invite: bool,
    },
    Send {
        msg_id: MsgId,
    },
    Members,
    Remove {
        user: String,
        keys: Vec<PublicKey>,
    },
    Leave,
    SetMeta {
        name: Option<String>,
        description: Option<String>,
        version: u64,
    },
}

struct GroupGoal {
    group: GroupId,
    node: String,
    op: Op,
    /// The operation is under way (ops that first catch up with the log).
    acted: bool,
    unread: usize,
}

impl GroupGoal {
    fn new(group: GroupId, node: String, op: Op) -> Self {
        let acted = matches!(op, Op::Create | Op::Join { .. } | Op::Send { .. });
        Self { group, node, op, acted, unread: 0 }
    }

    fn what(&self, s: &Session) -> String {
        let name = s.group_name(&self.group);
        match &self.op {
            Op::Create => format!("the creation of \"{name}\""),
            Op::Join { .. } => format!("joining \"{name}\""),
            Op::Send { .. } => format!("the message to \"{name}\""),
            Op::Members => format!("the member list of \"{name}\""),
            Op::Remove { user, .. } => format!("the removal of {user} from \"{name}\""),
            Op::Leave => format!("leaving \"{name}\""),
            Op::SetMeta { .. } => format!("the change to \"{name}\""),
        }
    }

    /// Acts once the group is caught up (members, remove, leave, rename, describe).
    fn act(&mut self, s: &mut Session) -> Flow {
        let now = now_us();
        let g = self.group;
        let me = s.gcore().member_key();
        let result = match &mut self.op {
            Op::Members => {
                print_members(s, &g);
                return Flow::Done(Ok(()));
            }
            Op::Remove { user, keys } => {
                let members = s.gcore().members(&g);
                *keys = members.iter().filter(|m| m.username == *user).map(|m| m.key).collect();
                if keys.contains(&me) {
                    return Flow::Done(Err(CliError::Usage(
                        "to remove yourself, use `nymstr group leave GROUP`".into(),
                    )));
                }
                if keys.is_empty() {
                    let name = s.group_name(&g);
                    return Flow::Done(Err(CliError::Group {
                        group: name.clone(),
                        source: GroupError::UnknownMember,
                        message: format!("{user} is not a member of \"{name}\""),
                    }));
                }
                let keys = keys.clone();
                keys.iter().try_for_each(|k| s.gcore().remove(now, &g, k))
            }
            Op::Leave => s.gcore().leave(now, &g),
            Op::SetMeta { name, description, version } => {
                *version = s.gcore().meta(&g).map_or(0, |m| m.version) + 1;
                match (name.clone(), description.clone()) {
                    (Some(n), _) => s.gcore().rename(now, &g, &n).map(|_| ()),
                    (None, Some(d)) => s.gcore().describe(now, &g, &d).map(|_| ()),
                    (None, None) => Ok(()),
                }
            }
            Op::Create | Op::Join { .. } | Op::Send { .. } => Ok(()),
        };
        self.acted = true;
        match result {
            Ok(()) => Flow::Continue,
            Err(e) => Flow::Done(Err(group_error(s, Some(&g), e))),
        }
    }
}

impl Goal for GroupGoal {
    fn on_event(&mut self, _s: &mut Session, _ev: &Event, _entry: Option<&HistoryEntry>) -> Flow {
        Flow::Continue
    }

    fn on_group_event(&mut self, s: &mut Session, ev: &GroupEvent, lines: &[GroupLine]) -> Flow {
        self.unread += lines.iter().filter(|l| !l.read).count();
        let g = self.group;
        match ev {
            GroupEvent::Error { group, code, detail } if *group == g => {
                // A member without a valid certificate is news, not a failure of ours.
                if *code == nymstr_proto::wire::ErrorCode::BadCertificate && !matches!(self.op, Op::Join { .. }) {
                    s.out.notice(
                        "group_error",
                        &format!("[{}] {detail}", s.group_name(&g)),
                        json!({ "detail": detail }),
                    );
                    return Flow::Continue;
                }
                if let Op::Join { invite: true } = self.op
                    && let Err(e) = s.home.remove_invite(&g)
                {
                    return Flow::Done(Err(e.into()));
                }
                let what = self.what(s);
                Flow::Done(Err(CliError::Refused { what, reason: describe_code(*code, detail) }))
            }
            GroupEvent::Removed { group } if *group == g => {
                let name = s.group_name(&g);
                if let Op::Leave = self.op {
                    s.out.data(
                        || format!("you left \"{name}\""),
                        || json!({ "type": "group_left", "group": hex(&g), "name": name }),
                    );
                    return Flow::Done(Ok(()));
                }
                Flow::Done(Err(CliError::Group {
                    group: name,
                    source: GroupError::NotMember,
                    message: "you are no longer a member of this group".into(),
                }))
            }
            GroupEvent::Created { group } if *group == g && matches!(self.op, Op::Create) => {
                let (name, node) = (s.group_name(&g), self.node.clone());
                let core = s.gcore();
                let open = core.is_open(&g).unwrap_or(false);
                s.out.data(
                    || {
                        format!(
                            "created the group \"{name}\" (id {}) at node {node}\nnext: nymstr group invite \"{name}\" USER",
                            hex(&g)
                        )
                    },
                    || json!({ "type": "group_created", "group": hex(&g), "name": name, "node": node, "open": open }),
                );
                Flow::Done(Ok(()))
            }
            GroupEvent::Joined { group, .. } if *group == g && matches!(self.op, Op::Join { .. }) => {
                if let Err(e) = s.home.remove_invite(&g) {
                    return Flow::Done(Err(e.into()));
                }
                let (name, node) = (s.group_name(&g), self.node.clone());
                let members = s.gcore().members(&g);
                let names: Vec<String> = members.iter().map(|m| m.username.clone()).collect();
                s.out.data(
                    || format!("joined \"{name}\" (id {}) at node {node}; members: {}", hex(&g), names.join(", ")),
                    || {
                        json!({ "type": "group_joined", "group": hex(&g), "name": name, "node": node, "members": names })
                    },
                );
                Flow::Done(Ok(()))
            }
            GroupEvent::Message { group, msg_id, seq, .. } if *group == g => {
                if let Op::Send { msg_id: mine } = self.op
                    && *msg_id == mine
                {
                    let name = s.group_name(&g);
                    s.out.data(
                        || format!("sent to \"{name}\" (#{seq} in its log)"),
                        || json!({ "type": "group_sent", "group": hex(&g), "name": name, "msg_id": hex(msg_id), "seq": seq }),
                    );
                    return Flow::Done(Ok(()));
                }
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }

    fn check(&mut self, s: &mut Session) -> Flow {
        let g = self.group;
        if !self.acted {
            if s.group_settled(&g) {
                return self.act(s);
            }
            return Flow::Continue;
        }
        match &self.op {
            Op::Remove { user, keys } if s.group_settled(&g) => {
                let members = s.gcore().members(&g);
                if keys.iter().all(|k| !members.iter().any(|m| m.key == *k)) {
                    let (name, user) = (s.group_name(&g), user.clone());
                    s.out.data(
                        || format!("removed {user} from \"{name}\""),
                        || json!({ "type": "group_removed", "group": hex(&g), "name": name, "user": user }),
                    );
                    note_unread_lines(s, self.unread);
                    return Flow::Done(Ok(()));
                }
                Flow::Continue
            }
            Op::SetMeta { name, description, version } if s.group_settled(&g) => {
                let Some(meta) = s.gcore().meta(&g).cloned() else { return Flow::Continue };
                let applied = meta.version >= *version
                    && name.as_ref().is_none_or(|n| *n == meta.name)
                    && description.as_ref().is_none_or(|d| *d == meta.description);
                if applied {
                    let gname = s.group_name(&g);
                    s.out.data(
                        || match name {
                            Some(n) => format!("the group is now called \"{n}\""),
                            None => format!("new description of \"{gname}\": {}", meta.description),
                        },
                        || {
                            json!({
                                "type": "group_meta",
                                "group": hex(&g),
                                "name": meta.name,
                                "description": meta.description,
                            })
                        },
                    );
                    note_unread_lines(s, self.unread);
                    return Flow::Done(Ok(()));
                }
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }

    fn on_group_link_lost(&mut self, _s: &mut Session, addr: &str, error: &net::NetError) -> Flow {
        if addr == self.node { Flow::Done(Err(CliError::Node(error.clone()))) } else { Flow::Continue }
    }

    fn on_deadline(&mut self, s: &mut Session) -> Result<(), CliError> {
        note_unread_lines(s, self.unread);
        let secs = s.timeout.as_secs();
        let what = self.what(s);
        if !self.acted || matches!(self.op, Op::Members) {
            return Err(CliError::Timeout {
                node: self.node.clone(),
                secs,
                what: format!("{what} (catching up with the group's log)"),
            });
        }
        let hint = match self.op {
            Op::Remove { .. } | Op::Leave => "it takes effect once an admin's client commits it",
            Op::Join { .. } => "the join is retried",
            _ => "it is sent again if needed",
        };
        Err(CliError::GroupPending { what, secs, hint: hint.into() })
    }
}

fn print_members(s: &mut Session, g: &GroupId) {
    let me = s.gcore().member_key();
    let members = s.gcore().members(g);
    let name = s.group_name(g);
    for m in &members {
        let you = m.key == me;
        s.out.data(
            || {
                let mut tags = Vec::new();
                if m.admin {
                    tags.push("admin");
                }
                if you {
                    tags.push("you");
                }
                if !m.verified {
                    tags.push("UNVERIFIED");
                }
                let tags = if tags.is_empty() { String::new() } else { format!(" ({})", tags.join(", ")) };
                let short: String = fingerprint(&m.key).chars().take(19).collect();
                format!("{}{tags}  key {short}…", if m.username.is_empty() { "?" } else { &m.username })
            },
            || {
                json!({
                    "type": "member",
                    "group": hex(g),
                    "group_name": name,
                    "username": m.username,
                    "key": hex(&m.key),
                    "admin": m.admin,
                    "you": you,
                    "verified": m.verified,
                })
            },
        );
    }
}

// --- commands ---

/// Runs a group goal: connects to the group's node first (so an unreachable node fails
/// before anything is attempted), then drives until done or `--timeout`.
async fn run_goal(mut s: Session, mut goal: GroupGoal) -> Result<(), CliError> {
    s.connect_group_node(&goal.node.clone()).await?;
    let deadline = Instant::now() + s.timeout;
    s.drive(&mut goal, Some(deadline)).await
}

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

/// Prefix of an invitation code (`group invite --code`): then the hex of
/// `codec(GroupInvite)`.
pub const INVITE_CODE_PREFIX: &str = "nymstr-invite:";

/// An invitation code's invitation, checked as a received DM invitation is.
fn parse_invite_code(code: &str) -> Result<GroupInvite, CliError> {
    let malformed = |why: &str| CliError::Usage(format!("malformed invitation code: {why}"));
    let hex_part = code.trim().strip_prefix(INVITE_CODE_PREFIX).ok_or_else(|| malformed("no prefix"))?;
    let bytes = hex::decode(hex_part).map_err(|_| malformed("not hex"))?;
    let invite: GroupInvite = nymstr_proto::codec::decode(&bytes).map_err(|e| malformed(&e.to_string()))?;
    if !invite_is_valid(&invite) {
        return Err(CliError::Usage(
            "the invitation code is not valid: its signature does not verify or its group node is not HOST:PORT".into(),
        ));
    }
    Ok(invite)
}

/// The token is signed by the admin key it names, and the node address is `HOST:PORT`.
pub(super) fn invite_is_valid(invite: &GroupInvite) -> bool {
    let t = &invite.token;
    identity::verify(
        &t.admin_key,
        &identity::invite_token_bytes(&t.group_id, &t.token_id, t.expires_at_us, &t.admin_key),
        &t.sig,
    )
    .is_ok()
        && std::str::from_utf8(&invite.group_node).is_ok_and(|a| check_node_addr(a).is_ok())
}

/// `group invite GROUP USER` (a sealed DM) or `group invite GROUP --code` (printed).
pub async fn invite(
    dir: &Path,
    out: Printer,
    group: &str,
    user: Option<String>,
    code: bool,
    timeout: Duration,
) -> Result<(), CliError> {
    let user =
        user.map(|u| identity::normalize_username(&u).map_err(|e| CliError::Usage(e.to_string()))).transpose()?;
    let mut s = group_session(dir, out, timeout, false)?;
    if user.is_some() && s.core.username() == user.as_deref() {
        return Err(CliError::Usage("you cannot invite yourself".into()));
    }
    let g = resolve(&s, group)?;
    let now = now_us();
    let token = s.gcore().invite(now, &g).map_err(|e| group_error(&s, Some(&g), e))?;
    let core = s.gcore();
    let meta = core.meta(&g).cloned().unwrap_or_default();
    let invite = GroupInvite {
        token,
        group_node: core.group_node(&g).unwrap_or_default().to_vec(),
        name: meta.name.clone(),
        description: meta.description,
    };
    let Some(user) = user.filter(|_| !code) else {
        // Whoever holds the code can join (once): it is the user's to pass on privately.
        let text = format!("{INVITE_CODE_PREFIX}{}", hex(&nymstr_proto::codec::encode(&invite)));
        let name = s.group_name(&g);
        s.out.data(
            || text.clone(),
            || json!({ "type": "group_invite_code", "group": hex(&g), "name": name, "code": text }),
        );
        return Ok(());
    };
    // The invitation travels as a sealed DM through the home node.
    s.connect().await?;
    s.core.login(now)?;
    let msg_id = s.core.send_group_invite(now, &user, invite)?;
    let name = s.group_name(&g);
    s.record_outgoing(&user, msg_id, format!("(invitation to the group \"{name}\")").as_bytes(), now)?;

    struct InviteGoal {
        to: String,
        msg_id: MsgId,
        group: GroupId,
        name: String,
    }
    impl Goal for InviteGoal {
        fn on_event(&mut self, s: &mut Session, ev: &Event, _: Option<&HistoryEntry>) -> Flow {
            if let Some(e) = login_failed(ev).or_else(|| key_changed(ev, &self.to)) {
                return Flow::Done(Err(e));
            }
            match ev {
                Event::SendAcked { msg_id, .. } if *msg_id == self.msg_id => {
                    let (to, name, g) = (self.to.clone(), self.name.clone(), self.group);
                    s.out.data(
                        || format!("invited {to} to \"{name}\" (they accept with `nymstr group join {}`)", hex(&g)),
                        || json!({ "type": "group_invited", "to": to, "group": hex(&g), "name": name, "msg_id": hex(msg_id) }),
                    );
                    Flow::Done(Ok(()))
                }
                Event::Failed { what, code, detail }
                    if matches!(what, Operation::Send { msg_id, .. } if *msg_id == self.msg_id)
                        || matches!(what, Operation::Lookup(n) if *n == self.to) =>
                {
                    Flow::Done(Err(CliError::Refused {
                        what: format!("the invitation of {}", self.to),
                        reason: describe_code(*code, detail),
                    }))
                }
                _ => Flow::Continue,
            }
        }
        fn on_deadline(&mut self, s: &mut Session) -> Result<(), CliError> {
            Err(CliError::Queued { to: self.to.clone(), msg_id: hex(&self.msg_id), secs: s.timeout.as_secs() })
        }
    }
    let deadline = Instant::now() + timeout;
    s.drive(&mut InviteGoal { to: user, msg_id, group: g, name }, Some(deadline)).await
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
    let user = identity::normalize_username(user).map_err(|e| CliError::Usage(e.to_string()))?;
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

// --- the directory ---

fn advert_is_valid(a: &GroupAdvert) -> bool {
    identity::verify(&a.admin_key, &identity::group_advert_bytes(a), &a.sig).is_ok()
}

/// Asks `node` for its directory of public groups (one request on its own connection).
async fn fetch_directory(node: &str, timeout: Duration) -> Result<Vec<GroupAdvert>, CliError> {
    let mut conn = Connection::connect(node, net::CONNECT_TIMEOUT).await.map_err(CliError::Node)?;
    conn.send(&Envelope { request_id: 1, body: Body::DirectoryRequest }).await.map_err(CliError::Node)?;
    let work = async {
        loop {
            let bytes = conn.recv().await.map_err(CliError::Node)?;
            let Ok(env) = nymstr_proto::codec::decode_frame(&bytes) else { continue };
            if env.request_id != 1 {
                continue;
            }
            match env.body {
                Body::Directory { adverts } => return Ok(adverts),
                Body::Error { code, detail } => {
                    return Err(CliError::Refused {
                        what: "the directory".into(),
                        reason: describe_code(code, &detail),
                    });
                }
                _ => {}
            }
        }
    };
    let r = tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| {
        Err(CliError::Timeout { node: node.to_string(), secs: timeout.as_secs(), what: "the directory".into() })
    });
    conn.close().await;
    r
}

/// `nymstr directory`: the public groups a node lists.
pub async fn directory(dir: &Path, out: &Printer, node: Option<String>, timeout: Duration) -> Result<(), CliError> {
    let node = match node {
        Some(n) => {
            check_node_addr(&n)?;
            n
        }
        None => {
            let home = crate::persist::Home::open(dir)?;
            home.node_addr()?.ok_or(CliError::NotRegistered)?
        }
    };
    let adverts = fetch_directory(&node, timeout).await?;
    let (valid, invalid): (Vec<GroupAdvert>, Vec<GroupAdvert>) = adverts.into_iter().partition(advert_is_valid);
    if !invalid.is_empty() {
        out.notice(
            "invalid_adverts",
            &format!("{} advert(s) with a bad signature were left out", invalid.len()),
            json!({ "count": invalid.len() }),
        );
    }
    if valid.is_empty() {
        out.human(&format!("no public groups at node {node}"));
    }
    for a in &valid {
        let host =
            if a.group_node.is_empty() { node.clone() } else { String::from_utf8_lossy(&a.group_node).into_owned() };
        out.data(
            || {
                let mut t = format!(
                    "{}  (id {}){}\n  node {host}",
                    a.name,
                    hex(&a.group_id),
                    if a.open { ", open" } else { ", invite-only" }
                );
                if !a.description.is_empty() {
                    t.push_str(&format!("\n  {}", a.description));
                }
                if a.open {
                    t.push_str(&format!("\n  join: nymstr group join {} --node {host}", hex(&a.group_id)));
                }
                t
            },
            || {
                json!({
                    "type": "group_advert",
                    "group": hex(&a.group_id),
                    "name": a.name,
                    "description": a.description,
                    "open": a.open,
                    "node": host,
                    "admin_key": hex(&a.admin_key),
                    "issued_at_us": a.issued_at_us,
                })
            },
        );
    }
    Ok(())
}
