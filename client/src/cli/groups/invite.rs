//! `group invite`: an invitation sent as a sealed DM through the home node, or printed as
//! a single-use code; and the parsing of such a code (`group join CODE`).

use std::path::Path;
use std::time::Duration;

use nymstr_proto::wire::{GroupId, MsgId, PublicKey};
use serde_json::json;

use crate::cli::clock::{deadline_after, now_us};
use crate::cli::common::{key_changed, login_failed, node_timeout, resolve};
use crate::cli::error::{CliError, describe_code};
use crate::cli::groups::support::{group_error, group_session};
use crate::cli::input::invite_is_valid;
use crate::cli::output::{Printer, hex};
use crate::cli::session::{Flow, Goal, Session};
use crate::persist::HistoryEntry;
use nymstr_client_core::core::{Event, Operation, contact_name};
use nymstr_client_core::seal::GroupInvite;

/// Prefix of an invitation code (`group invite --code`): then the hex of
/// `codec(GroupInvite)`.
pub const INVITE_CODE_PREFIX: &str = "nymstr-invite:";

/// An invitation code's invitation, checked as a received DM invitation is.
pub(super) fn parse_invite_code(code: &str) -> Result<GroupInvite, CliError> {
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

/// The invitation of `g` for `account_key`, signed now.
fn make_invite(s: &mut Session, g: &GroupId, invitee: Option<PublicKey>) -> Result<GroupInvite, CliError> {
    let token = s.gcore().invite(now_us(), g, invitee).map_err(|e| group_error(s, Some(g), e))?;
    let core = s.gcore();
    let meta = core.meta(g).cloned().unwrap_or_default();
    Ok(GroupInvite {
        token,
        group_node: core.group_node(g).unwrap_or_default().to_vec(),
        name: meta.name,
        description: meta.description,
    })
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
    // `user` or `user@<node id>`.
    let user = user.map(|u| contact_name(&u).map_err(|e| CliError::Usage(format!("{u}: {e}")))).transpose()?;
    let mut s = group_session(dir, out, timeout, false)?;
    if user.is_some() && s.core.username() == user.as_deref() {
        return Err(CliError::Usage("you cannot invite yourself".into()));
    }
    let g = resolve(&s, group)?;
    let Some(user) = user.filter(|_| !code) else {
        // A bearer token (specs/groups.md §3): whoever holds the code can join (once),
        // for any key; it is the user's to pass on privately.
        let invite = make_invite(&mut s, &g, None)?;
        let text = format!("{INVITE_CODE_PREFIX}{}", hex(&nymstr_proto::codec::encode(&invite)));
        let name = s.group_name(&g);
        s.out.data(
            || text.clone(),
            || json!({ "type": "group_invite_code", "group": hex(&g), "name": name, "code": text }),
        );
        return Ok(());
    };
    // The invitation travels as a sealed DM through the home node and names the
    // invitee's account key (the one it is sealed to, as looked up and pinned): only that
    // account can redeem it, not the group node that sees it redeemed.
    s.connect().await?;
    let now = now_us();
    s.core.login(now)?;
    let name = s.group_name(&g);
    let mut goal = InviteGoal { to: user.clone(), msg_id: None, group: g, name };
    match s.core.contact(&user).map(|c| c.account_key) {
        Some(key) => goal.send(&mut s, key)?,
        None => s.core.lookup(now, &user)?,
    }
    let deadline = deadline_after(timeout);
    s.drive(&mut goal, Some(deadline)).await
}

struct InviteGoal {
    to: String,
    /// The invitation's DM, once the invitee's account key is known.
    msg_id: Option<MsgId>,
    group: GroupId,
    name: String,
}

impl InviteGoal {
    fn send(&mut self, s: &mut Session, invitee: PublicKey) -> Result<(), CliError> {
        let invite = make_invite(s, &self.group, Some(invitee))?;
        let now = now_us();
        let msg_id = s.core.send_group_invite(now, &self.to, invite)?;
        s.record_outgoing(&self.to, msg_id, format!("(invitation to the group \"{}\")", self.name).as_bytes(), now)?;
        self.msg_id = Some(msg_id);
        Ok(())
    }
}

impl Goal for InviteGoal {
    fn on_event(&mut self, s: &mut Session, ev: &Event, _: Option<&HistoryEntry>) -> Flow {
        if let Some(e) = login_failed(ev).or_else(|| key_changed(ev, &self.to)) {
            return Flow::Done(Err(e));
        }
        match ev {
            Event::LookedUp { username } if *username == self.to && self.msg_id.is_none() => {
                let Some(key) = s.core.contact(username).map(|c| c.account_key) else { return Flow::Continue };
                match self.send(s, key) {
                    Ok(()) => Flow::Continue,
                    Err(e) => Flow::Done(Err(e)),
                }
            }
            Event::SendAcked { msg_id, .. } if Some(*msg_id) == self.msg_id => {
                let (to, name, g) = (self.to.clone(), self.name.clone(), self.group);
                s.out.data(
                    || format!("invited {to} to \"{name}\" (they accept with `nymstr group join {}`)", hex(&g)),
                    || json!({ "type": "group_invited", "to": to, "group": hex(&g), "name": name, "msg_id": hex(msg_id) }),
                );
                Flow::Done(Ok(()))
            }
            Event::Failed { what, code, detail }
                if matches!(what, Operation::Send { msg_id, .. } if Some(*msg_id) == self.msg_id)
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
        match self.msg_id {
            Some(m) => Err(CliError::Queued { to: self.to.clone(), msg_id: hex(&m), secs: s.timeout.as_secs() }),
            None => Err(node_timeout(s, "the lookup of the invitee")),
        }
    }
}
