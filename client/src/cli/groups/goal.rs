//! The goal shared by the group commands (`GroupGoal`): catch up with the group's log,
//! act (members, remove, leave, rename, describe), then wait until the change is in the
//! log and applied here.

use nymstr_proto::wire::{GroupId, MsgId, PublicKey};
use serde_json::json;

use crate::cli::clock::{deadline_after, now_us};
use crate::cli::error::{CliError, describe_code};
use crate::cli::groups::support::{group_error, note_unread_lines};
use crate::cli::output::{fingerprint, hex};
use crate::cli::session::{Flow, Goal, Session};
use crate::net;
use crate::persist::{GroupLine, HistoryEntry};
use nymstr_client_core::core::Event;
use nymstr_client_core::group::{GroupError, GroupEvent, MemberInfo, resolve_member};

pub(super) enum Op {
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

pub(super) struct GroupGoal {
    group: GroupId,
    node: String,
    op: Op,
    /// The operation is under way (ops that first catch up with the log).
    acted: bool,
    unread: usize,
}

impl GroupGoal {
    pub(super) fn new(group: GroupId, node: String, op: Op) -> Self {
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
                // One leaf, never every leaf that claims the name (the username in a
                // credential is self-asserted): a key, or the one leaf vouched by our pin.
                match resolve_user(s, &members, user) {
                    Ok(k) => *keys = vec![k],
                    Err(source) => {
                        let name = s.group_name(&g);
                        let local = user.split('@').next().unwrap_or(user);
                        let message = match source {
                            GroupError::AmbiguousMember => {
                                let mut candidates: Vec<String> =
                                    members.iter().filter(|m| m.username == local).map(|m| s.member_label(m)).collect();
                                candidates.sort();
                                format!(
                                    "several members of \"{name}\" claim to be {user}: {}; name one as user@<node id> \
                                     (once its account key is pinned: `nymstr lookup` or `nymstr trust`) or by its key \
                                     (`nymstr group members`)",
                                    candidates.join(", ")
                                )
                            }
                            _ if user.contains('@') && s.core.pinned(user).is_none() => format!(
                                "no account key is pinned for {user}: run `nymstr lookup {user}` (or `nymstr trust`) first"
                            ),
                            _ => format!("{user} is not a member of \"{name}\""),
                        };
                        return Flow::Done(Err(CliError::Group { group: name, source, message }));
                    }
                }
                if keys.contains(&me) {
                    return Flow::Done(Err(CliError::Usage(
                        "to remove yourself, use `nymstr group leave GROUP`".into(),
                    )));
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

/// The one member `user` names: `user@<node id>` by the account key pinned for that
/// qualified name (the credential carries only the local name); otherwise as
/// `resolve_member` does (a key prefix, the sole claimant, or the sole claimant our pin
/// for the bare name vouches for).
fn resolve_user(s: &Session, members: &[MemberInfo], user: &str) -> Result<PublicKey, GroupError> {
    let Some((local, _)) = user.split_once('@') else {
        return resolve_member(members, user, s.core.pinned(user));
    };
    let pinned = s.core.pinned(user);
    let vouched: Vec<&MemberInfo> = members.iter().filter(|m| m.username == local && m.vouched(pinned)).collect();
    match vouched.as_slice() {
        [m] => Ok(m.key),
        [] => Err(GroupError::UnknownMember),
        _ => Err(GroupError::AmbiguousMember),
    }
}

fn print_members(s: &mut Session, g: &GroupId) {
    let me = s.gcore().member_key();
    let members = s.gcore().members(g);
    let name = s.group_name(g);
    for m in &members {
        let you = m.key == me;
        // Shown under its name only if that name's pinned account key certified it (the
        // pin's name: `alice@<node id>` for another node's user).
        let (shown, vouched) = s.member_name(&m.username, &m.key, m.account_key.as_ref().filter(|_| m.verified));
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
                } else if !vouched {
                    tags.push("name not verified");
                }
                let tags = if tags.is_empty() { String::new() } else { format!(" ({})", tags.join(", ")) };
                let short: String = fingerprint(&m.key).chars().take(19).collect();
                format!("{}{tags}  key {short}…", if shown.is_empty() { "?" } else { &shown })
            },
            || {
                json!({
                    "type": "member",
                    "group": hex(g),
                    "group_name": name,
                    "username": m.username,
                    "name": shown,
                    "key": hex(&m.key),
                    "admin": m.admin,
                    "you": you,
                    "verified": vouched,
                    "credential_valid": m.verified,
                    "account_key": m.account_key.map(|k| hex(&k)),
                })
            },
        );
    }
}

/// Runs a group goal: connects to the group's node first (so an unreachable node fails
/// before anything is attempted), then drives until done or `--timeout`.
pub(super) async fn run_goal(mut s: Session, mut goal: GroupGoal) -> Result<(), CliError> {
    s.connect_group_node(&goal.node.clone()).await?;
    let deadline = deadline_after(s.timeout);
    s.drive(&mut goal, Some(deadline)).await
}
