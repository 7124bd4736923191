//! Direct messages: `send` (through the node, a direct peer, or a running `listen`),
//! `inbox` (fetch and show, then exit) and `history` (offline).

use std::path::Path;
use std::time::Duration;

use nymstr_proto::wire::MsgId;
use serde_json::json;
use tokio::time::Instant;

use crate::cli::clock::{deadline_after, monotonic, now_us};
use crate::cli::common::{
    group_error_notice, key_changed, login_failed, node_timeout, open_home, require_registered, session, show,
    show_group_line, show_invite, show_new_invite,
};
use crate::cli::error::{CliError, describe_code};
use crate::cli::input::message_text;
use crate::cli::output::{Printer, entry_json, entry_line, hex, via_name};
use crate::cli::session::{Flow, Goal, Session};
use crate::persist::{Direction, GroupLine, HistoryEntry};
use nymstr_client_core::core::{BODY_BYTES_MAX, Event, Operation, contact_name};
use nymstr_client_core::group::GroupEvent;

pub fn history(dir: &Path, out: &Printer, name: Option<String>, limit: usize) -> Result<(), CliError> {
    let home = open_home(dir)?;
    let name = name.map(|n| contact_name(&n)).transpose().map_err(|e| CliError::Usage(e.to_string()))?;
    let me = home.state().username.unwrap_or_default();
    let entries = home.history(name.as_deref(), limit)?;
    if entries.is_empty() {
        out.human("no messages");
    }
    for e in &entries {
        out.data(|| entry_line(e), || entry_json(e, &me));
        if e.direction == Direction::In && !e.read {
            home.mark_read(e)?;
        }
    }
    home.flush()?;
    Ok(())
}

/// Notes received messages a non-interactive command consumed (they stay unread).
fn note_unread(s: &Session, count: usize) {
    if count > 0 {
        s.out.notice(
            "unread",
            &format!("{count} new message{} arrived; `nymstr inbox` shows them", if count == 1 { "" } else { "s" }),
            json!({ "count": count }),
        );
    }
}

pub async fn send(
    dir: &Path,
    out: Printer,
    name: &str,
    text: Vec<String>,
    node: Option<String>,
    timeout: Duration,
) -> Result<(), CliError> {
    let to = contact_name(name).map_err(|e| CliError::Usage(e.to_string()))?;
    let body = message_text(text, BODY_BYTES_MAX)?;
    let mut s = match session(dir, Printer::new(out.json), node, timeout) {
        Err(CliError::Busy(home)) => return send_through_listen(&home, &out, &to, body, timeout).await,
        other => other?,
    };
    require_registered(&s)?;
    if Some(to.as_str()) == s.core.username() {
        return Err(CliError::Usage("you cannot send a message to yourself".into()));
    }
    // Connect before anything is stored: an unreachable node means nothing was sent.
    s.connect().await?;
    let now = now_us();
    s.core.login(now)?;
    let msg_id = s.core.send_dm(now, &to, &body)?;
    s.record_outgoing(&to, msg_id, &body, now)?;

    struct SendGoal {
        to: String,
        msg_id: MsgId,
        acked: bool,
        received: usize,
    }
    impl Goal for SendGoal {
        fn on_event(&mut self, s: &mut Session, ev: &Event, entry: Option<&HistoryEntry>) -> Flow {
            if let Some(e) = login_failed(ev).or_else(|| key_changed(ev, &self.to)) {
                return Flow::Done(Err(e));
            }
            match ev {
                Event::SendAcked { msg_id, .. } if *msg_id == self.msg_id => {
                    self.acked = true;
                    let via = entry.and_then(|e| e.via);
                    let (to, id) = (self.to.clone(), hex(msg_id));
                    s.out.data(
                        || match via {
                            Some(nymstr_client_core::core::Via::Direct) => format!("delivered to {to} directly"),
                            _ => format!("sent to {to} (the node holds it for them)"),
                        },
                        || json!({ "type": "sent", "to": to, "msg_id": id, "via": via_name(via).to_string() }),
                    );
                }
                Event::Failed { what: Operation::Send { msg_id, .. }, code, detail } if *msg_id == self.msg_id => {
                    return Flow::Done(Err(CliError::Refused {
                        what: format!("message to {}", self.to),
                        reason: describe_code(*code, detail),
                    }));
                }
                Event::Received { .. } => self.received += 1,
                _ => {}
            }
            Flow::Continue
        }
        fn check(&mut self, s: &mut Session) -> Flow {
            // Messages left over from earlier runs go too: wait for them while there is time.
            if self.acked && s.core.unacked_sends() == 0 {
                note_unread(s, self.received);
                return Flow::Done(Ok(()));
            }
            Flow::Continue
        }
        fn on_deadline(&mut self, s: &mut Session) -> Result<(), CliError> {
            note_unread(s, self.received);
            if self.acked {
                return Ok(());
            }
            Err(CliError::Queued { to: self.to.clone(), msg_id: hex(&self.msg_id), secs: s.timeout.as_secs() })
        }
    }
    let deadline = deadline_after(timeout);
    s.drive(&mut SendGoal { to, msg_id, acked: false, received: 0 }, Some(deadline)).await
}

/// The home is locked by another process: hand the message to its `listen`, if that is
/// what holds it.
#[cfg(unix)]
async fn send_through_listen(
    home: &Path,
    out: &Printer,
    to: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), CliError> {
    use crate::cli::control::{self, Handoff};
    let text = String::from_utf8(body).map_err(|_| CliError::Usage("the message is not UTF-8 text".into()))?;
    match control::send(home, to, &text, timeout).await? {
        Handoff::NoListener => Err(CliError::Busy(home.to_path_buf())),
        Handoff::Lost => Err(CliError::Remote {
            kind: "handoff".into(),
            message: "the running `nymstr listen` stopped before answering; `nymstr history` shows whether it \
                      kept the message"
                .into(),
            exit_code: 1,
        }),
        Handoff::TimedOut => {
            Err(CliError::Queued { to: to.to_string(), msg_id: "(handed to listen)".into(), secs: timeout.as_secs() })
        }
        Handoff::Answer(v) if v["ok"] == true => {
            let via = v["via"].as_str().unwrap_or("").to_string();
            let id = v["msg_id"].as_str().unwrap_or("").to_string();
            out.data(
                || match via.as_str() {
                    "direct" => format!("delivered to {to} directly (through the running `nymstr listen`)"),
                    _ => format!("sent to {to} (through the running `nymstr listen`)"),
                },
                || json!({ "type": "sent", "to": to, "msg_id": id, "via": via }),
            );
            Ok(())
        }
        Handoff::Answer(v) => Err(CliError::Remote {
            kind: v["error"].as_str().unwrap_or("remote").to_string(),
            message: v["message"].as_str().unwrap_or("the running `nymstr listen` refused the message").to_string(),
            exit_code: v["exit_code"].as_u64().and_then(|c| u8::try_from(c).ok()).unwrap_or(1),
        }),
    }
}

#[cfg(not(unix))]
async fn send_through_listen(home: &Path, _: &Printer, _: &str, _: Vec<u8>, _: Duration) -> Result<(), CliError> {
    Err(CliError::Busy(home.to_path_buf()))
}

pub async fn inbox(
    dir: &Path,
    out: Printer,
    wait: Option<u64>,
    node: Option<String>,
    timeout: Duration,
) -> Result<(), CliError> {
    let mut s = session(dir, out, node, timeout)?;
    require_registered(&s)?;
    s.enable_groups(true)?;
    // Messages an earlier command received and nobody has seen yet come first.
    let mut shown = 0usize;
    for e in s.home.unread()? {
        show(&s, &e)?;
        shown += 1;
    }
    for l in s.home.group_unread()? {
        show_group_line(&s, &l)?;
        shown += 1;
    }
    for r in s.home.invites()?.into_iter().filter(|r| !r.shown) {
        show_invite(&s, &r)?;
        shown += 1;
    }
    s.home.flush()?;
    s.connect().await?;
    s.core.login(now_us())?;

    struct InboxGoal {
        key_changed: Option<CliError>,
        queued: Option<u64>,
        wait: Option<Duration>,
        listen_until: Option<Instant>,
        shown: usize,
    }
    impl Goal for InboxGoal {
        fn on_event(&mut self, s: &mut Session, ev: &Event, entry: Option<&HistoryEntry>) -> Flow {
            if let Some(e) = login_failed(ev) {
                return Flow::Done(Err(e));
            }
            if let Event::KeyChanged { username, .. } = ev {
                self.key_changed = key_changed(ev, username);
            }
            match (ev, entry) {
                (Event::LoggedIn { queued }, _) => self.queued = Some(u64::from(*queued)),
                (Event::Received { .. }, Some(e)) => {
                    if let Err(err) = show(s, e) {
                        return Flow::Done(Err(err));
                    }
                    self.shown += 1;
                }
                (Event::GroupInvited { .. }, _) => match show_new_invite(s, ev) {
                    Ok(n) => self.shown += n,
                    Err(err) => return Flow::Done(Err(err)),
                },
                _ => {}
            }
            Flow::Continue
        }
        fn on_group_event(&mut self, s: &mut Session, ev: &GroupEvent, lines: &[GroupLine]) -> Flow {
            for l in lines.iter().filter(|l| !l.read) {
                if let Err(err) = show_group_line(s, l) {
                    return Flow::Done(Err(err));
                }
                self.shown += 1;
            }
            group_error_notice(s, ev);
            Flow::Continue
        }
        fn check(&mut self, s: &mut Session) -> Flow {
            let Some(queued) = self.queued else { return Flow::Continue };
            let drained = s.core.deliveries_handled() >= queued && s.core.is_idle() && s.groups_settled();
            if !drained {
                return Flow::Continue;
            }
            match (self.wait, self.listen_until) {
                (Some(wait), None) => {
                    self.listen_until = Some(deadline_after(wait));
                    Flow::Continue
                }
                (Some(_), Some(until)) if monotonic() < until => Flow::Continue,
                _ => {
                    if self.shown == 0 {
                        s.out.human("no new messages");
                    }
                    // Messages were shown; a changed key is still the news to exit with.
                    Flow::Done(self.key_changed.take().map_or(Ok(()), Err))
                }
            }
        }
        fn wake_at(&self) -> Option<Instant> {
            self.listen_until
        }
        fn on_deadline(&mut self, s: &mut Session) -> Result<(), CliError> {
            match self.queued {
                None => Err(node_timeout(s, "the login")),
                Some(queued) => {
                    let missing = queued.saturating_sub(s.core.deliveries_handled());
                    if missing > 0 {
                        s.out.notice(
                            "incomplete",
                            &format!("{missing} queued message(s) did not arrive in time; run `nymstr inbox` again"),
                            json!({ "missing": missing }),
                        );
                    }
                    self.key_changed.take().map_or(Ok(()), Err)
                }
            }
        }
    }
    let wait = wait.map(Duration::from_secs);
    // The drain gets `--timeout`; `--wait` adds its listening time on top.
    let deadline = deadline_after(timeout) + wait.unwrap_or_default();
    let mut goal = InboxGoal { key_changed: None, queued: None, wait, listen_until: None, shown };
    s.drive(&mut goal, Some(deadline)).await
}
