//! `group invite`: an invitation sent as a sealed DM through the home node, or printed as
//! a single-use code; and the parsing of such a code (`group join CODE`).

use std::path::Path;
use std::time::Duration;

use nymstr_proto::identity;
use nymstr_proto::wire::{GroupId, MsgId};
use serde_json::json;

use crate::cli::clock::{deadline_after, now_us};
use crate::cli::common::{key_changed, login_failed, resolve};
use crate::cli::error::{CliError, describe_code};
use crate::cli::groups::support::{group_error, group_session};
use crate::cli::input::invite_is_valid;
use crate::cli::output::{Printer, hex};
use crate::cli::session::{Flow, Goal, Session};
use crate::persist::HistoryEntry;
use nymstr_client_core::core::{Event, Operation};
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
    let deadline = deadline_after(timeout);
    s.drive(&mut InviteGoal { to: user, msg_id, group: g, name }, Some(deadline)).await
}
