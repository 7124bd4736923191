//! `listen`: stay connected, show messages and group lines as they arrive, take commands
//! typed on standard input and messages handed over by `nymstr send`, offer and accept
//! direct delivery; on Ctrl-C withdraw the direct address and stop.

use std::path::Path;
use std::time::Duration;

use nymstr_proto::identity;
use nymstr_proto::wire::MsgId;
use serde_json::json;
use tokio::time::Instant;

use crate::cli::clock::{deadline_after, monotonic, now_us};
use crate::cli::common::{
    group_error_notice, key_changed, login_failed, require_registered, resolve, session, show, show_group_line,
    show_invite, show_new_invite,
};
use crate::cli::error::{CliError, describe_code};
use crate::cli::output::{Printer, hex, via_name};
use crate::cli::session::{Flow, Goal, Session};
use crate::persist::{GroupLine, HistoryEntry, Status};
use nymstr_client_core::core::{BODY_BYTES_MAX, Event, Operation, contact_name};
use nymstr_client_core::group::GroupEvent;
use nymstr_client_core::seal::DirectAddress;

pub async fn listen(
    dir: &Path,
    mut out: Printer,
    direct: Option<String>,
    advertise: Option<String>,
    offer: Vec<String>,
    node: Option<String>,
    timeout: Duration,
) -> Result<(), CliError> {
    out.events_on_stdout = true;
    let offer = offer
        .iter()
        .map(|n| identity::normalize_username(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let mut s = session(dir, out, node, timeout)?;
    require_registered(&s)?;
    let direct_addr = match &direct {
        Some(bind) => {
            let local = s.listen_direct(bind).await?;
            let advertised = match advertise {
                Some(a) => a,
                None if local.ip().is_unspecified() => {
                    return Err(CliError::Usage(format!(
                        "listening on {local}: pass --advertise HOST:PORT, the address contacts should connect to"
                    )));
                }
                None => local.to_string(),
            };
            let addr = DirectAddress::Tcp(advertised);
            if !addr.is_valid() {
                return Err(CliError::Usage(format!("{addr} is not a valid HOST:PORT")));
            }
            Some(addr)
        }
        None => None,
    };
    s.enable_groups(true)?;
    s.connect().await?;
    s.keep_connected = true;
    s.core.login(now_us())?;
    s.read_stdin();
    s.serve_control()?;

    struct ListenGoal {
        direct: Option<DirectAddress>,
        offer: Vec<String>,
        started: bool,
        /// Peer for plain lines (`/to NAME`).
        to: Option<String>,
        stopping_until: Option<Instant>,
        /// Messages handed over by `nymstr send`, answered when acknowledged.
        #[cfg(unix)]
        handoffs: std::collections::BTreeMap<MsgId, (String, tokio::sync::oneshot::Sender<serde_json::Value>)>,
    }
    impl ListenGoal {
        fn send(&mut self, s: &mut Session, to: &str, text: &str) -> Result<MsgId, CliError> {
            let now = now_us();
            let to = contact_name(to).map_err(|e| CliError::Usage(format!("{to}: {e}")))?;
            if s.core.username() == Some(to.as_str()) {
                return Err(CliError::Usage("you cannot send a message to yourself".into()));
            }
            let msg_id = s.core.send_dm(now, &to, text.as_bytes())?;
            s.record_outgoing(&to, msg_id, text.as_bytes(), now)?;
            s.out.notice(
                "queued",
                &format!("sending to {to}"),
                json!({ "to": to, "msg_id": hex(&msg_id), "text": text }),
            );
            Ok(msg_id)
        }

        fn send_typed(&mut self, s: &mut Session, to: &str, text: &str) {
            if let Err(e) = self.send(s, to, text) {
                s.out.notice("error", &e.to_string(), json!({ "message": e.to_string() }));
            }
        }

        /// Answers `nymstr send` processes waiting for this event, if any.
        #[cfg(unix)]
        fn answer_handoffs(&mut self, ev: &Event, entry: Option<&HistoryEntry>) {
            use crate::cli::control::failure;
            match ev {
                Event::SendAcked { msg_id, .. } | Event::Failed { what: Operation::Send { msg_id, .. }, .. } => {
                    let Some((to, reply)) = self.handoffs.remove(msg_id) else { return };
                    let answer = match (ev, entry.map(|e| &e.status)) {
                        (Event::Failed { code, detail, .. }, _) => {
                            let e = CliError::Refused {
                                what: format!("message to {to}"),
                                reason: describe_code(*code, detail),
                            };
                            failure(e.kind(), &e.to_string(), e.exit_code())
                        }
                        (_, status) => json!({
                            "ok": true,
                            "to": to,
                            "msg_id": hex(msg_id),
                            "via": if status == Some(&Status::Delivered) { "direct" } else { "relay" },
                        }),
                    };
                    let _ = reply.send(answer);
                }
                Event::KeyChanged { username, .. } => {
                    let Some(e) = key_changed(ev, username) else { return };
                    let ids: Vec<MsgId> =
                        self.handoffs.iter().filter(|(_, (to, _))| to == username).map(|(id, _)| *id).collect();
                    for id in ids {
                        if let Some((_, reply)) = self.handoffs.remove(&id) {
                            let _ = reply.send(failure(e.kind(), &e.to_string(), e.exit_code()));
                        }
                    }
                }
                _ => {}
            }
        }
        fn stop(&mut self, s: &mut Session) -> Flow {
            if self.stopping_until.is_some() || !s.is_connected() {
                return Flow::Done(Ok(()));
            }
            // Tell contacts our direct address is gone, if the node takes it in time.
            match s.core.withdraw_direct(now_us()) {
                Ok(ids) if !ids.is_empty() => {
                    self.stopping_until = Some(deadline_after(Duration::from_secs(3)));
                    Flow::Continue
                }
                _ => Flow::Done(Ok(())),
            }
        }
    }
    impl Goal for ListenGoal {
        fn on_event(&mut self, s: &mut Session, ev: &Event, entry: Option<&HistoryEntry>) -> Flow {
            if let Some(e) = login_failed(ev) {
                return Flow::Done(Err(e));
            }
            #[cfg(unix)]
            self.answer_handoffs(ev, entry);
            match (ev, entry) {
                (Event::LoggedIn { queued }, _) if !self.started => {
                    self.started = true;
                    let now = now_us();
                    if let Err(e) = s.core.set_direct_address(now, self.direct.clone()) {
                        return Flow::Done(Err(e.into()));
                    }
                    for peer in std::mem::take(&mut self.offer) {
                        if let Err(e) = s.core.offer_direct(now, &peer) {
                            return Flow::Done(Err(e.into()));
                        }
                    }
                    let me = s.me();
                    let direct = self.direct.as_ref().map(|a| a.to_string());
                    s.out.notice(
                        "ready",
                        &format!(
                            "listening as {me} ({queued} queued){}; type /help for commands, Ctrl-C to stop",
                            direct.as_ref().map(|d| format!(", direct at {d}")).unwrap_or_default()
                        ),
                        json!({ "username": me, "queued": queued, "direct": direct }),
                    );
                    // Group lines and invitations an earlier command received.
                    let unread = s.home.group_unread().and_then(|l| Ok((l, s.home.invites()?)));
                    match unread {
                        Ok((lines, invites)) => {
                            for l in lines {
                                if let Err(e) = show_group_line(s, &l) {
                                    return Flow::Done(Err(e));
                                }
                            }
                            for r in invites.into_iter().filter(|r| !r.shown) {
                                if let Err(e) = show_invite(s, &r) {
                                    return Flow::Done(Err(e));
                                }
                            }
                        }
                        Err(e) => return Flow::Done(Err(e.into())),
                    }
                }
                (Event::GroupInvited { .. }, _) => {
                    if let Err(e) = show_new_invite(s, ev) {
                        return Flow::Done(Err(e));
                    }
                }
                (Event::Received { .. }, Some(e)) => {
                    if let Err(err) = show(s, e) {
                        return Flow::Done(Err(err));
                    }
                }
                (Event::SendAcked { .. } | Event::Failed { what: Operation::Send { .. }, .. }, Some(e)) => {
                    let (to, id, via, status) = (e.peer.clone(), hex(&e.msg_id), e.via, e.status.clone());
                    let text = match &status {
                        Status::Failed(reason) => format!("message to {to} failed: {reason}"),
                        Status::Delivered => format!("delivered to {to} directly"),
                        _ => format!("sent to {to}"),
                    };
                    let mut fields = json!({ "to": to, "msg_id": id, "via": via_name(via), "status": status.name() });
                    if let Status::Failed(reason) = &status {
                        fields["reason"] = json!(reason);
                    }
                    s.out.notice(if matches!(status, Status::Failed(_)) { "failed" } else { "sent" }, &text, fields);
                }
                _ => {}
            }
            Flow::Continue
        }
        fn on_group_event(&mut self, s: &mut Session, ev: &GroupEvent, lines: &[GroupLine]) -> Flow {
            for l in lines {
                let result = if l.read {
                    // Our own message, now in the group's log.
                    if let crate::persist::GroupLineKind::Message { msg_id, log_seq, .. } = &l.kind {
                        s.out.notice(
                            "group_sent",
                            &format!("sent to [{}] (#{log_seq})", l.group_name),
                            json!({ "group": hex(&l.group), "group_name": l.group_name, "msg_id": hex(msg_id), "seq": log_seq }),
                        );
                    }
                    Ok(())
                } else {
                    show_group_line(s, l)
                };
                if let Err(e) = result {
                    return Flow::Done(Err(e));
                }
            }
            group_error_notice(s, ev);
            Flow::Continue
        }
        fn check(&mut self, s: &mut Session) -> Flow {
            match self.stopping_until {
                Some(until) if monotonic() >= until || s.core.unacked_sends() == 0 => Flow::Done(Ok(())),
                _ => Flow::Continue,
            }
        }
        fn wake_at(&self) -> Option<Instant> {
            self.stopping_until
        }
        fn on_deadline(&mut self, _s: &mut Session) -> Result<(), CliError> {
            Ok(())
        }
        fn on_line(&mut self, s: &mut Session, line: &str) -> Flow {
            let line = line.trim();
            if line.is_empty() {
                return Flow::Continue;
            }
            let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            let usage = |s: &Session, text: &str| s.out.notice("usage", text, json!({ "message": text }));
            match cmd {
                "/msg" | "/m" | "/send" => match rest.split_once(char::is_whitespace) {
                    Some((to, text)) if !text.trim().is_empty() => self.send_typed(s, to, text.trim()),
                    _ => usage(s, "usage: /msg NAME TEXT"),
                },
                "/to" if !rest.is_empty() => {
                    self.to = Some(rest.to_string());
                    s.out.notice("to", &format!("plain lines now go to {rest}"), json!({ "to": rest }));
                }
                "/direct" if !rest.is_empty() => {
                    if let Err(e) = s.core.offer_direct(now_us(), rest) {
                        usage(s, &format!("/direct {rest}: {e} (start with `listen --direct HOST:PORT`)"));
                    }
                }
                "/direct-off" if !rest.is_empty() => {
                    if let Err(e) = s.core.disable_direct(now_us(), rest) {
                        usage(s, &format!("/direct-off {rest}: {e}"));
                    }
                }
                "/g" | "/group" => match rest.split_once(char::is_whitespace) {
                    Some((group, text)) if !text.trim().is_empty() => {
                        let sent = resolve(s, group).and_then(|g| {
                            let name = s.group_name(&g);
                            s.gcore()
                                .send(now_us(), &g, text.trim())
                                .map(|id| (g, id, name.clone()))
                                .map_err(|e| CliError::Usage(format!("[{name}] {e}")))
                        });
                        match sent {
                            Ok((g, id, name)) => s.out.notice(
                                "group_queued",
                                &format!("sending to [{name}]"),
                                json!({ "group": hex(&g), "group_name": name, "msg_id": hex(&id), "text": text.trim() }),
                            ),
                            Err(e) => usage(s, &e.to_string()),
                        }
                    }
                    _ => usage(s, "usage: /g GROUP TEXT"),
                },
                "/quit" | "/exit" => return self.stop(s),
                "/help" | "/?" => usage(
                    s,
                    "commands: /msg NAME TEXT, /to NAME (then type plain lines), /g GROUP TEXT, /direct NAME, /direct-off NAME, \
                     /quit",
                ),
                _ if !line.starts_with('/') => match self.to.clone() {
                    Some(to) => self.send_typed(s, &to, line),
                    None => usage(s, "who to? use /msg NAME TEXT, or /to NAME first"),
                },
                _ => usage(s, &format!("unknown command {cmd}; /help lists them")),
            }
            Flow::Continue
        }
        fn on_interrupt(&mut self, s: &mut Session) -> Flow {
            self.stop(s)
        }
        #[cfg(unix)]
        fn on_control(&mut self, s: &mut Session, req: crate::cli::control::ControlRequest) {
            use crate::cli::control::failure;
            if self.stopping_until.is_some() {
                let _ = req.reply.send(failure("busy", "the listening process is stopping", 5));
                return;
            }
            let result = if req.text.is_empty() || req.text.len() > BODY_BYTES_MAX {
                Err(CliError::Usage(format!("the message must have 1 to {BODY_BYTES_MAX} bytes")))
            } else {
                self.send(s, &req.to, &req.text)
            };
            match result {
                Ok(msg_id) => {
                    let to = contact_name(&req.to).unwrap_or_default();
                    self.handoffs.insert(msg_id, (to, req.reply));
                }
                Err(e) => {
                    let _ = req.reply.send(failure(e.kind(), &e.to_string(), e.exit_code()));
                }
            }
        }
    }
    let mut goal = ListenGoal {
        direct: direct_addr,
        offer,
        started: false,
        to: None,
        stopping_until: None,
        #[cfg(unix)]
        handoffs: Default::default(),
    };
    s.drive(&mut goal, None).await
}
