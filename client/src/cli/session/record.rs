//! What the core's events become: history entries and invitations kept in the home,
//! group history lines, and notices the user should see.

use serde_json::json;

use crate::cli::clock::now_us;
use crate::cli::error::{CliError, describe_code};
use crate::cli::input::invite_is_valid;
use crate::cli::output::{display_name, hex, unverified_name};
use crate::cli::session::Session;
use crate::persist::{Direction, GroupLine, GroupLineKind, HistoryEntry, InviteRecord, Status};
use nymstr_client_core::core::{Event, Operation, Via};
use nymstr_client_core::group::{GroupEvent, MemberInfo};
use nymstr_proto::wire::PublicKey;

impl Session {
    /// How this user names a group member: `(name, verified)`. `verified`: the member is
    /// us, or the account key that certified its leaf is pinned under a name whose local
    /// part is the username its credential claims; `name` is then that pin's name (`alice`
    /// for a user of our node, `alice@<node id>` for another node's), so namesakes on two
    /// nodes are told apart. Otherwise `name` is the claimed username (anyone can claim
    /// any name): show it marked (`output::unverified_name`).
    pub(crate) fn member_name(
        &self,
        username: &str,
        key: &PublicKey,
        account_key: Option<&PublicKey>,
    ) -> (String, bool) {
        let me = self.groups.as_ref().is_some_and(|g| g.member_key() == *key);
        if me {
            return (self.core.username().unwrap_or(username).to_string(), true);
        }
        let pinned = account_key.and_then(|a| {
            self.core
                .pins()
                .filter(|(name, k)| *k == a && name.split('@').next() == Some(username))
                .map(|(name, _)| name.to_string())
                .min_by_key(|n| n.contains('@'))
        });
        match pinned {
            Some(name) if !username.is_empty() => (name, true),
            _ => (username.to_string(), false),
        }
    }

    /// A member's name as shown in a line of text: verified, or marked with its key.
    pub(crate) fn member_label(&self, m: &MemberInfo) -> String {
        match self.member_name(&m.username, &m.key, m.account_key.as_ref().filter(|_| m.verified)) {
            (name, true) => name,
            (claimed, false) => unverified_name(&claimed, &m.key),
        }
    }

    /// Keeps the history in step with the core's events and tells the user what they
    /// should know. Returns the history entry an event created or changed.
    pub(super) fn record(&mut self, ev: &Event) -> Result<Option<HistoryEntry>, CliError> {
        let now = now_us();
        let entry = match ev {
            Event::Received { from, msg_id, sent_at_us, body, via } => Some(self.home.record(HistoryEntry {
                seq: 0,
                at_us: now,
                peer: from.clone(),
                direction: Direction::In,
                msg_id: *msg_id,
                sent_at_us: *sent_at_us,
                body: body.clone(),
                status: Status::Received,
                via: Some(*via),
                read: false,
            })?),
            Event::SendAcked { to, msg_id } => self.home.update_outgoing(to, msg_id, |e| {
                if e.status != Status::Delivered {
                    e.status = Status::Sent;
                    e.via = Some(Via::Relay);
                }
            })?,
            Event::DirectDelivered { to, msg_id } => self.home.update_outgoing(to, msg_id, |e| {
                e.status = Status::Delivered;
                e.via = Some(Via::Direct);
            })?,
            Event::Failed { what: Operation::Send { to, msg_id }, code, detail } => {
                let reason = describe_code(*code, detail);
                self.home.update_outgoing(to, msg_id, |e| e.status = Status::Failed(reason))?
            }
            _ => None,
        };
        let out = &self.out;
        match ev {
            Event::Rejected { from, msg_id, reason } => out.notice(
                "rejected",
                &format!("discarded a message claiming to be from {from}: {reason}"),
                json!({ "from": from, "msg_id": hex(msg_id), "reason": reason.to_string() }),
            ),
            Event::KeyChanged { username, pinned, offered } => out.notice(
                "key_changed",
                &format!(
                    "the account key of {username} changed (pinned {}, offered {}); messages to and from \
                     {username} are refused until you run `nymstr trust {username} --key <KEY>`",
                    hex(pinned),
                    hex(offered)
                ),
                json!({ "username": username, "pinned": hex(pinned), "offered": hex(offered) }),
            ),
            Event::Transparency { username, outcome, detail } => out.notice(
                "transparency",
                &format!(
                    "the transparency check of {username} failed ({outcome}: {detail}); messages to and from \
                     {username} are refused"
                ),
                json!({ "username": username, "outcome": outcome, "detail": detail }),
            ),
            Event::DirectOffered { peer, addr } => out.notice(
                "direct_offered",
                &format!(
                    "{peer} offers direct delivery (not answered: you have not approved {peer}); to accept, type \
                     `/direct {peer}` while listening directly, or run `nymstr listen --direct HOST:PORT --offer \
                     {peer}` (it reveals your address to {peer})"
                ),
                json!({ "peer": peer, "addr": addr.to_string() }),
            ),
            Event::DirectReady { peer, addr } => out.notice(
                "direct_ready",
                &format!("direct delivery with {peer} is on ({addr})"),
                json!({ "peer": peer, "addr": addr.to_string() }),
            ),
            Event::DirectWithdrawn { peer } => out.notice(
                "direct_withdrawn",
                &format!("{peer} stopped direct delivery; messages to {peer} go through the node"),
                json!({ "peer": peer }),
            ),
            Event::GroupInvited { from, msg_id, invite } => {
                if !invite_is_valid(invite) {
                    out.notice(
                        "invite_rejected",
                        &format!("discarded an invalid group invitation from {from}"),
                        json!({ "from": from, "msg_id": hex(msg_id) }),
                    );
                } else {
                    self.home.record_invite(&InviteRecord {
                        from: from.clone(),
                        msg_id: *msg_id,
                        received_at_us: now,
                        invite: invite.clone(),
                        shown: false,
                    })?;
                }
            }
            Event::DirectFailed { to, msg_id, addr, reason } => out.notice(
                "direct_failed",
                &format!("direct delivery to {to} at {addr} failed ({reason}); sending through the node"),
                json!({ "to": to, "msg_id": hex(msg_id), "addr": addr.to_string(), "reason": reason }),
            ),
            _ => {}
        }
        Ok(entry)
    }

    /// Records a group event as history (messages, and notices people should see) and
    /// keeps the names and member lists current. Returns the lines it recorded.
    pub(super) fn record_group(&mut self, ev: &GroupEvent) -> Result<Vec<GroupLine>, CliError> {
        let now = now_us();
        let Some(core) = self.groups.as_ref() else { return Ok(Vec::new()) };
        let me = core.member_key();
        let group = match ev {
            GroupEvent::Created { group }
            | GroupEvent::Joined { group, .. }
            | GroupEvent::Message { group, .. }
            | GroupEvent::Missing { group, .. }
            | GroupEvent::Lost { group, .. }
            | GroupEvent::Repaired { group, .. }
            | GroupEvent::HistoryGap { group, .. }
            | GroupEvent::MembersChanged { group }
            | GroupEvent::EpochChanged { group, .. }
            | GroupEvent::MetaChanged { group, .. }
            | GroupEvent::Removed { group }
            | GroupEvent::Error { group, .. } => *group,
        };
        let old_name = self.names.get(&group).cloned().unwrap_or_else(|| display_name(core, &group));
        let current = core.members(&group);
        let known = |key: &[u8; 32]| -> Option<MemberInfo> {
            self.members.get(&group).into_iter().flatten().chain(current.iter()).find(|m| m.key == *key).cloned()
        };
        let who = |key: &[u8; 32]| -> String {
            known(key)
                .filter(|m| !m.username.is_empty())
                .map(|m| self.member_label(&m))
                .unwrap_or_else(|| format!("member {}", hex(&key[..4])))
        };
        let mut notices: Vec<(String, Option<String>, String)> = Vec::new();
        let mut message = None;
        match ev {
            GroupEvent::Message { msg_id, sender_username, sender_key, text, seq, .. } => {
                // Named as we verified it: a pinned name, else the claim, marked.
                let info = known(sender_key);
                let claimed = if sender_username.is_empty() {
                    info.as_ref().map(|m| m.username.clone()).unwrap_or_default()
                } else {
                    sender_username.clone()
                };
                let account_key = info.as_ref().filter(|m| m.verified).and_then(|m| m.account_key);
                let (from, verified) = self.member_name(&claimed, sender_key, account_key.as_ref());
                message = Some((
                    GroupLineKind::Message {
                        from,
                        verified,
                        account_key,
                        sender_key: *sender_key,
                        msg_id: *msg_id,
                        text: text.clone(),
                        log_seq: *seq,
                    },
                    *sender_key == me,
                ));
            }
            GroupEvent::Missing { sender, seq, .. } => {
                let w = who(sender);
                notices.push((
                    "missing".into(),
                    Some(w.clone()),
                    format!("a message from {w} (#{seq}) did not reach us; fetching it from the group node"),
                ));
            }
            GroupEvent::Lost { sender, seq, .. } => {
                let w = who(sender);
                notices.push(("lost".into(), Some(w.clone()), format!("a message from {w} (#{seq}) is lost")));
            }
            GroupEvent::Repaired { sender, seq, .. } => {
                let w = who(sender);
                notices.push((
                    "repaired".into(),
                    Some(w.clone()),
                    format!("the missing message from {w} (#{seq}) arrived after all"),
                ));
            }
            GroupEvent::HistoryGap { from_seq, to_seq, .. } => notices.push((
                "history_gap".into(),
                None,
                format!("messages #{from_seq} to #{} are no longer kept by the group node", to_seq.saturating_sub(1)),
            )),
            GroupEvent::MembersChanged { .. } => {
                let after = core.members(&group);
                if let Some(before) = self.members.get(&group) {
                    let name = |m: &MemberInfo| {
                        if m.username.is_empty() {
                            format!("member {}", hex(&m.key[..4]))
                        } else {
                            self.member_label(m)
                        }
                    };
                    let mut after_sorted: Vec<&MemberInfo> = after.iter().collect();
                    after_sorted.sort_by(|a, b| a.username.cmp(&b.username));
                    let mut before_sorted: Vec<&MemberInfo> = before.iter().collect();
                    before_sorted.sort_by(|a, b| a.username.cmp(&b.username));
                    for m in after_sorted.iter().filter(|m| !before.iter().any(|b| b.key == m.key)) {
                        let n = name(m);
                        let text = if m.key == me { "you joined".to_string() } else { format!("{n} joined") };
                        notices.push(("joined".into(), Some(n), text));
                    }
                    for m in before_sorted.iter().filter(|b| !after.iter().any(|m| m.key == b.key)) {
                        let n = name(m);
                        notices.push(("left".into(), Some(n.clone()), format!("{n} is no longer a member")));
                    }
                    for m in after.iter().filter(|m| m.admin && before.iter().any(|b| b.key == m.key && !b.admin)) {
                        let n = name(m);
                        notices.push(("promoted".into(), Some(n.clone()), format!("{n} is now an admin")));
                    }
                    if !after.iter().all(|m| m.verified) {
                        notices.push((
                            "unverified".into(),
                            None,
                            "a member has no valid installation certificate".into(),
                        ));
                    }
                }
                self.members.insert(group, after);
            }
            GroupEvent::MetaChanged { name, description, .. } => {
                if *name != old_name && !name.is_empty() {
                    notices.push(("renamed".into(), None, format!("the group is now called \"{name}\"")));
                } else {
                    notices.push(("described".into(), None, format!("new description: {description}")));
                }
            }
            GroupEvent::Removed { .. } => {
                notices.push(("removed".into(), None, "you are no longer a member of this group".into()));
                self.members.remove(&group);
            }
            GroupEvent::Joined { .. } | GroupEvent::Created { .. } => {
                self.members.insert(group, core.members(&group));
            }
            GroupEvent::Error { code: nymstr_proto::wire::ErrorCode::UnknownGroup, .. } => {
                self.unhosted.insert(group);
            }
            GroupEvent::EpochChanged { .. } | GroupEvent::Error { .. } => {}
        }
        let new_name = display_name(core, &group);
        if !new_name.starts_with('#') {
            self.names.insert(group, new_name);
        }
        let mut lines = Vec::new();
        if let Some((kind, own)) = message {
            let line = GroupLine { seq: 0, at_us: now, group, group_name: old_name.clone(), kind, read: own };
            lines.push(self.home.record_group_line(line)?);
        }
        for (kind, who, text) in notices {
            let line = GroupLine {
                seq: 0,
                at_us: now,
                group,
                group_name: old_name.clone(),
                kind: GroupLineKind::Notice { kind, who, text },
                read: false,
            };
            lines.push(self.home.record_group_line(line)?);
        }
        Ok(lines)
    }
}
